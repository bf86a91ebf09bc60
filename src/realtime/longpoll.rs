//! Long polling (SPEC §3.5): answer at once from history, else hold until a
//! message, the timeout or shutdown. Every answer carries `last_id`, so the
//! next poll resumes exactly where this one ended.

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use super::deliver::Encoder;
use super::{Plan, Realtime, Session};
use crate::auth::{Denial, Reason};
use crate::error::Body;
use crate::hub::message::{ChannelName, Message};
use crate::hub::queue::LagPolicy;
use crate::realtime::negotiate::Transport;

pub async fn respond(realtime: &Arc<Realtime>, plan: Plan) -> Response<Body> {
    let settings = plan.settings;
    let (channels, since) = (plan.channels, plan.since);
    let permit = plan.permit;
    // A poll answers as soon as anything is queued, so overflow only means
    // "answer now"; the rest is read from history by the next poll.
    let mut session = realtime.open(
        Transport::Longpoll,
        channels,
        since,
        &settings,
        LagPolicy::Disconnect,
    );
    session.hold(permit);
    let expires = plan.grants.expiry();
    let deadline = tokio::time::Instant::now() + settings.longpoll_timeout;
    let deadline = expires.map_or(deadline, |e| e.min(deadline));
    let mut answer = Answer::default();
    let mut turn = None;
    loop {
        let closed = session.deliver(&realtime.metrics, &mut answer).is_err();
        if closed || !answer.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = realtime.shutdown.turn(&mut turn) => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = session.queue.ready() => {}
        }
    }
    if answer.is_empty() && expires.is_some_and(|e| tokio::time::Instant::now() >= e) {
        // The token ran out while the poll was held.
        let denial = Denial::from(Reason::Expired);
        plan.grants.count_failure(&realtime.metrics, &denial);
        return denial.into_error().into_response();
    }
    answer.into_response(&session)
}

#[derive(Default)]
struct Answer {
    messages: Vec<(Arc<Message>, String)>,
    gaps: Vec<ChannelName>,
}

impl Answer {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.gaps.is_empty()
    }

    fn into_response(self, session: &Session) -> Response<Body> {
        // Written by hand so each payload is copied, not re-parsed.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = String::from("{\"messages\":[");
        for (i, (m, id)) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"channel\":");
            out.push_str(&quote(m.channel.as_str()));
            out.push_str(",\"id\":");
            out.push_str(&quote(id));
            if let Some(e) = &m.event {
                out.push_str(",\"event\":");
                out.push_str(&quote(e.as_str()));
            }
            // Compact JSON produced by serde at publish time (a binary
            // message's: its base64 as a JSON string).
            out.push_str(if m.payload.is_binary() {
                ",\"data_base64\":"
            } else {
                ",\"data\":"
            });
            out.push_str(std::str::from_utf8(m.payload.json()).unwrap_or("null"));
            out.push('}');
        }
        out.push_str("],\"last_id\":");
        out.push_str(&quote(&session.cursor()));
        if !self.gaps.is_empty() {
            let gaps: Vec<&str> = self.gaps.iter().map(ChannelName::as_str).collect();
            out.push_str(",\"gap\":");
            out.push_str(&serde_json::to_string(&gaps).unwrap_or_default());
        }
        out.push('}');
        let mut response = Response::new(crate::error::full(out));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        response
    }
}

impl Encoder for Answer {
    fn message(&mut self, session: &Session, m: &Arc<Message>) {
        self.messages.push((m.clone(), session.cursor()));
    }

    fn gap(&mut self, channel: &ChannelName) {
        if !self.gaps.contains(channel) {
            self.gaps.push(channel.clone());
        }
    }
}
