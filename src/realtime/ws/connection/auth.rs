//! Subscriber auth on an open connection (SPEC §8): the first-frame
//! `{"type":"auth","token":T}` of a connection that came without a token,
//! `{"type":"refresh","token":T}` under `on_expiry: refresh`, and what
//! happens when the token (or the wait for the `auth` frame) runs out.

use std::sync::Arc;

use bytes::Bytes;

use super::{Connection, Next};
use crate::auth::{self, Denial, Reason};
use crate::config::OnExpiry;
use crate::error::ErrorCode;
use crate::realtime::EndReason;
use crate::realtime::negotiate::Transport;
use crate::realtime::ws::protocol::{ClientFrame, error_json, parse_client_frame};

impl Connection {
    /// The first frame of a connection that came without a token: it must
    /// be `{"type":"auth","token":T}`; then the route's channels open.
    pub(super) fn first_frame(&mut self, text: &str) -> Next {
        let Ok(ClientFrame::Auth { token: Some(token) }) = parse_client_frame(text) else {
            let d = Denial::from(Reason::Missing);
            self.grants.count_failure(&self.realtime.metrics, &d);
            return Next::Refuse(error_json(
                d.reason.code(),
                "the first frame must be {\"type\":\"auth\",\"token\":T}",
            ));
        };
        let verified = match self.grants.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
            Some(jwt) => auth::verify(jwt, &token),
            None => Err(Denial::from(Reason::Missing)),
        };
        let grant = match verified {
            Ok(g) => Arc::new(g),
            Err(d) => {
                self.grants.count_failure(&self.realtime.metrics, &d);
                return Next::Refuse(error_json(d.reason.code(), &d.message));
            }
        };
        self.grants.claims = Some(grant);
        let Some((channels, since)) = self.pending.take().map(|p| *p) else {
            return Next::Continue;
        };
        if let Some(c) = self.grants.uncovered(&channels) {
            let d = Denial::forbidden(format!("the token does not grant channel {c}"));
            self.grants.count_failure(&self.realtime.metrics, &d);
            return Next::Refuse(error_json(d.reason.code(), &d.message));
        }
        self.expires = self.grants.expiry();
        self.realtime.track(
            &mut self.session,
            Transport::Websocket,
            self.presence,
            &self.grants,
        );
        for (i, channel) in channels.into_iter().enumerate() {
            let from = since.as_ref().and_then(|s| s.get(i).copied());
            self.session.subscribe(channel, from);
        }
        Next::Continue
    }

    /// `{"type":"refresh","token":T}` under `on_expiry: refresh`: a token
    /// for the same subject with a later `exp` moves the expiry.
    pub(super) fn refresh(&mut self, token: Option<&str>) {
        let Some(auth) = self.grants.auth.clone() else {
            return self.reply(error_json(
                ErrorCode::InvalidRequest,
                "this route has no auth",
            ));
        };
        let (OnExpiry::Refresh, Some(jwt)) = (auth.on_expiry, auth.jwt.as_ref()) else {
            return self.reply(error_json(
                ErrorCode::RefreshNotAllowed,
                "this route closes connections at token expiry",
            ));
        };
        let Some(token) = token else {
            return self.reply(error_json(ErrorCode::InvalidRequest, "missing \"token\""));
        };
        let grant = match auth::verify(jwt, token) {
            Ok(g) => g,
            Err(d) => {
                self.grants.count_failure(&self.realtime.metrics, &d);
                return self.reply(error_json(d.reason.code(), &d.message));
            }
        };
        let old = self.grants.claims.as_deref();
        if old.is_some_and(|o| o.sub.is_some() && o.sub != grant.sub) {
            return self.reply(error_json(
                ErrorCode::Unauthorized,
                "the new token is for another subject",
            ));
        }
        if old.is_some_and(|o| o.expires_at >= grant.expires_at) {
            return self.reply(error_json(
                ErrorCode::Unauthorized,
                "the new token must expire later than the current one",
            ));
        }
        let exp = grant
            .expires_at
            .unwrap_or(0)
            .saturating_sub(jwt.leeway.as_secs());
        self.grants.claims = Some(Arc::new(grant));
        self.expires = self.grants.expiry();
        let reply = serde_json::json!({"type": "refreshed", "exp": exp});
        self.reply(Bytes::from(reply.to_string()));
    }

    /// The deadline passed: the token's expiry, or before the `auth` frame
    /// its deadline (an `error` frame, then the close).
    pub(super) fn expired(&mut self) -> (EndReason, Option<Bytes>) {
        if self.pending.is_none() {
            return (EndReason::Expired, None);
        }
        let d = Denial::from(Reason::Missing);
        self.grants.count_failure(&self.realtime.metrics, &d);
        let json = error_json(d.reason.code(), "no auth frame within 5s");
        (EndReason::AuthTimeout, Some(json))
    }
}
