//! What a connection may do ([`Grants`]): its route's channels and client
//! publish patterns, narrowed by the token's or the callback's grant.

use std::sync::Arc;

use crate::auth::{self, Access, Denial, Grant};
use crate::config::{AuthSettings, ClientPublish, RealtimeRoute};
use crate::error::{ErrorCode, HttpError};
use crate::hub::message::ChannelName;
use crate::metrics::{AuthFailureLabels, Metrics};
use crate::router::pattern::{self, Captures};

use super::{MAX_CHANNELS_PER_CONNECTION, Query};

/// What a connection may do, from its route and path captures, narrowed
/// by its token's (or the callback's) grant when the route has `auth:`.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Channels from the route's templates. Boxed slices here and below:
    /// a WebSocket connection keeps its grants for its whole life.
    route_channels: Box<[ChannelName]>,
    /// `query_channels: true`: any valid channel may be subscribed.
    any_channel: bool,
    publish: ClientPublish,
    /// The path captures, kept only for `client_publish` patterns that
    /// name them.
    captures: Captures,
    /// The route's auth settings; with them, nothing is allowed until
    /// `claims` is set.
    pub auth: Option<Arc<AuthSettings>>,
    pub claims: Option<Arc<Grant>>,
    /// The route's name (metric label, callback body).
    pub route: Arc<str>,
}

impl Grants {
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        (self.any_channel || self.route_channels.contains(channel))
            && self.claims_allow(|g| g.channels.matches(channel.as_str()))
    }

    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        let route = match &self.publish {
            ClientPublish::Denied => false,
            ClientPublish::Granted => self.may_subscribe(channel),
            ClientPublish::Patterns(patterns) => patterns.iter().any(|p| {
                p.render(&self.captures)
                    .is_some_and(|p| pattern::glob(&p, channel.as_str()))
            }),
        };
        route && self.claims_allow(|g| g.publish.matches(channel.as_str()))
    }

    fn claims_allow(&self, check: impl Fn(&Grant) -> bool) -> bool {
        match (&self.auth, &self.claims) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(g)) => check(g),
        }
    }

    /// The first of `channels` the grant does not cover.
    pub fn uncovered<'a>(&self, channels: &'a [ChannelName]) -> Option<&'a ChannelName> {
        channels.iter().find(|c| !self.may_subscribe(c))
    }

    /// When the connection's grant ends, as a timer deadline.
    pub fn expiry(&self) -> Option<tokio::time::Instant> {
        let left = self.claims.as_ref()?.remaining(auth::now_unix())?;
        Some(tokio::time::Instant::now() + left)
    }

    /// Counts a refusal by its reason; the token itself is never logged.
    pub fn count_failure(&self, metrics: &Metrics, denial: &Denial) {
        count_failure(metrics, &self.route, denial);
    }

    pub fn publish_enabled(&self) -> bool {
        self.publish != ClientPublish::Denied
    }
}

pub(super) fn count_failure(metrics: &Metrics, route: &str, denial: &Denial) {
    tracing::debug!(
        route,
        reason = denial.reason.as_str(),
        "realtime auth refused"
    );
    metrics
        .auth_failures
        .get_or_create(&AuthFailureLabels {
            route: route.to_owned(),
            reason: denial.reason.as_str(),
        })
        .inc();
}

/// Applies a grant to `grants`; a grant that does not cover every one of
/// `channels` becomes a `forbidden` refusal.
pub(super) fn grant(grants: &mut Grants, access: Access, channels: &[ChannelName]) -> Access {
    let Access::Granted(g) = access else {
        return access;
    };
    grants.claims = Some(g.clone());
    match grants.uncovered(channels) {
        Some(c) => Access::Denied(Denial::forbidden(format!(
            "the token does not grant channel {c}"
        ))),
        None => Access::Granted(g),
    }
}

/// The connection's channels (route templates, then `?channel=` when
/// allowed), sorted and unique so composite ids are stable.
pub(super) fn resolve_channels(
    route: &RealtimeRoute,
    captures: &Captures,
    query: &Query,
) -> Result<(Vec<ChannelName>, Grants), HttpError> {
    let bad = |name: &str, e: &dyn std::fmt::Display| {
        HttpError::new(
            ErrorCode::InvalidChannel,
            format!("invalid channel {name:?}: {e}"),
        )
    };
    let mut route_channels = Vec::new();
    for template in &route.channels {
        let name = template.render(captures).ok_or_else(|| {
            HttpError::new(ErrorCode::InvalidChannel, "channel template has no value")
        })?;
        route_channels.push(ChannelName::parse(&name).map_err(|e| bad(&name, &e))?);
    }
    let mut channels = route_channels.clone();
    let route_channels = route_channels.into_boxed_slice();
    if route.query_channels {
        for name in query.all("channel") {
            channels.push(ChannelName::parse(name).map_err(|e| bad(name, &e))?);
        }
    }
    channels.sort();
    channels.dedup();
    if channels.len() > MAX_CHANNELS_PER_CONNECTION {
        return Err(HttpError::new(
            ErrorCode::TooManySubscriptions,
            format!("at most {MAX_CHANNELS_PER_CONNECTION} channels per connection"),
        ));
    }
    let grants = Grants {
        route_channels,
        any_channel: route.query_channels,
        publish: route.client_publish.clone(),
        captures: match route.client_publish {
            ClientPublish::Patterns(_) => captures.clone(),
            _ => Captures::new(),
        },
        auth: route.auth.clone(),
        claims: None,
        route: route.name.clone(),
    };
    Ok((channels, grants))
}
