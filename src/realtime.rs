//! Realtime routes: negotiation, the channels a request may use, resume
//! positions, and the [`Session`] every transport drives: one bounded queue
//! subscribed to the hub, released when the session ends.
//!
//! Wire formats live in the transport modules (`sse`, `ws`, `longpoll`).

pub mod cursor;
pub mod deliver;
pub mod longpoll;
pub mod negotiate;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::callback::{Ask, Callbacks};
use crate::auth::{self, Access, Denial, Grant};
use crate::backplane::Backplane;
use crate::config::{AuthSettings, ClientPublish, RealtimeRoute, RealtimeSettings};
use crate::error::{Body, ErrorCode, HttpError, json_response};
use crate::hub::Hub;
use crate::hub::message::{ChannelName, Position};
use crate::hub::queue::{LagPolicy, Queue};
use crate::limits::{ConnPermit, Limiter};
use crate::listener::{ConnInfo, RawIo};
use crate::metrics::{AuthFailureLabels, Metrics, TransportLabels};
use crate::realtime::negotiate::Transport;
use crate::router::pattern::{self, Captures};
use crate::shutdown::Shutdown;

use self::negotiate::Choice;

/// Most channels one connection may hold, so ids stay under 512 bytes.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 24;

/// Shared by every realtime request.
pub struct Realtime {
    pub hub: Arc<Hub>,
    pub backplane: Arc<dyn Backplane>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// The auth callback's client and answer cache (SPEC §8).
    pub callbacks: Callbacks,
    /// Per-address and per-token limits (SPEC §9).
    pub limiter: Arc<Limiter>,
    /// This node's presence (docs/presence.md).
    pub presence: Arc<crate::presence::Registry>,
    /// Presence across nodes; `None` with the memory backplane.
    pub presence_store: Option<Arc<dyn crate::presence::PresenceStore>>,
    /// Lifecycle webhooks (`hooks:`).
    pub hooks: Option<Arc<crate::hooks::Hooks>>,
}

/// What a connection may do, from its route and path captures, narrowed
/// by its token's (or the callback's) grant when the route has `auth:`.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Channels from the route's templates.
    route_channels: Vec<ChannelName>,
    /// `query_channels: true`: any valid channel may be subscribed.
    any_channel: bool,
    publish: ClientPublish,
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

/// A request's parsed query string.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let decode = |s: &str| pattern::percent_decode(&s.replace('+', " "));
                Some((decode(k)?, decode(v)?))
            })
            .collect();
        Self { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A realtime request, validated and ready to become a session.
pub struct Plan {
    pub transport: Transport,
    pub channels: Vec<ChannelName>,
    pub since: Option<Vec<Position>>,
    pub grants: Grants,
    pub settings: RealtimeSettings,
    /// Where the request stands with the route's auth.
    pub access: Access,
    /// The request's share of the per-address connection cap.
    pub permit: Option<ConnPermit>,
}

/// What a realtime request asks for.
// Short-lived and moved once or twice per request: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    /// `?transport=info`.
    Info(Response<Body>),
    Session(Plan),
}

impl Realtime {
    /// Negotiates the transport and resolves channels, grants, auth and
    /// the resume position, without side effects.
    pub fn prepare(
        &self,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        route: &RealtimeRoute,
        captures: &Captures,
    ) -> Result<Prepared, HttpError> {
        self.prepare_checked(headers, uri, route, captures)
            .map_err(|r| match r {
                Refusal::Http(e) => e,
                Refusal::Auth(_, d) => d.into_error(),
            })
    }

    fn prepare_checked(
        &self,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        route: &RealtimeRoute,
        captures: &Captures,
    ) -> Result<Prepared, Refusal> {
        let query = Query::parse(uri.query());
        let transport = match negotiate::choose(headers, query.get("transport"), &route.transports)?
        {
            Choice::Info => return Ok(Prepared::Info(info(route))),
            Choice::Transport(t) => t,
        };
        if transport != Transport::Longpoll {
            check_origin(headers, route.allowed_origins.as_deref())?;
        }
        let (channels, mut grants) = resolve_channels(route, captures, &query)?;
        let max = self.limiter.settings().max_subscriptions;
        let max = if transport == Transport::Websocket {
            max
        } else {
            max.min(MAX_CHANNELS_PER_CONNECTION)
        };
        if channels.len() > max {
            return Err(HttpError::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} channels per connection"),
            )
            .into());
        }
        let header_id = match headers.get("last-event-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidId,
                    "invalid resume id: Last-Event-ID is not ASCII",
                )
                .into());
            }
        };
        let since = header_id
            .or_else(|| query.get("since"))
            .or_else(|| query.get("lastEventId"))
            .filter(|s| !s.is_empty());
        let since = match since.map(|id| cursor::decode(id, channels.len())) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidId,
                    format!("invalid resume id: {e}"),
                )
                .into());
            }
        };
        if channels.is_empty() && transport != Transport::Websocket {
            // A WebSocket may subscribe later; a stream or poll needs a channel now.
            return Err(HttpError::new(
                ErrorCode::NoChannel,
                "name at least one channel with ?channel=",
            )
            .into());
        }
        let websocket = transport == Transport::Websocket;
        let access = match &route.auth {
            None => Access::Open,
            Some(a) => auth::decide(a, headers, query.get("token"), websocket),
        };
        let access = grant(&mut grants, access, &channels);
        if let (Access::Denied(d), false) = (&access, websocket) {
            // A WebSocket is told on the socket (a browser cannot read a
            // refused handshake).
            return Err(Refusal::Auth(grants.route.clone(), d.clone()));
        }
        Ok(Prepared::Session(Plan {
            transport,
            channels,
            since,
            grants,
            settings: route.settings,
            access,
            permit: None,
        }))
    }

    /// Admits a realtime connection under the per-address limits.
    pub fn admit(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
    ) -> Result<ConnPermit, HttpError> {
        let ip = self.limiter.client_ip(conn.remote, headers);
        self.limiter.admit(ip).map_err(|r| r.into_error())
    }

    /// Serves a realtime request through hyper.
    pub async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        route: &RealtimeRoute,
        captures: Captures,
        conn: ConnInfo,
    ) -> Response<Body> {
        let mut plan =
            match self.prepare_checked(request.headers(), request.uri(), route, &captures) {
                Ok(Prepared::Info(response)) => return response,
                Ok(Prepared::Session(plan)) => plan,
                Err(Refusal::Http(e)) => return e.into_response(),
                Err(Refusal::Auth(route, d)) => {
                    count_failure(&self.metrics, &route, &d);
                    return d.into_error().into_response();
                }
            };
        if let (Access::Callback, Some(settings)) = (
            &plan.access,
            route.auth.as_ref().and_then(|a| a.callback.as_ref()),
        ) {
            let ask = Ask {
                route: &plan.grants.route,
                channels: &plan.channels,
                transport: plan.transport,
                headers: request.headers(),
            };
            let access = match self.callbacks.authorize(settings, ask).await {
                Ok(g) => Access::Granted(g),
                Err(d) => Access::Denied(d),
            };
            plan.access = grant(&mut plan.grants, access, &plan.channels);
            if let (Access::Denied(d), false) =
                (&plan.access, plan.transport == Transport::Websocket)
            {
                count_failure(&self.metrics, &plan.grants.route, d);
                return d.clone().into_error().into_response();
            }
        }
        match self.admit(request.headers(), &conn) {
            Ok(permit) => plan.permit = Some(permit),
            Err(e) => return e.into_response(),
        }
        match plan.transport {
            Transport::Sse => sse::respond(self, plan, conn),
            Transport::Longpoll => longpoll::respond(self, plan).await,
            Transport::Websocket => ws::respond(self, &mut request, plan, conn),
        }
    }

    /// Starts a claimed SSE or WebSocket request on the raw connection, in
    /// a task of its own that holds only the stream's state.
    pub fn serve_raw<IO: RawIo>(
        self: &Arc<Self>,
        plan: Plan,
        ws_key: Option<http::HeaderValue>,
        io: IO,
        conn: ConnInfo,
    ) {
        match (plan.transport, ws_key) {
            (Transport::Sse, _) => sse::serve_raw(self, plan, io, conn),
            (Transport::Websocket, Some(key)) => ws::serve_raw(self, plan, &key, io, conn),
            _ => {}
        }
    }

    /// Opens `plan`'s session under its route's lag policy, holding its
    /// connection permit; hands back the grants and settings left.
    pub fn open_plan(&self, plan: Plan) -> (Session, Grants, RealtimeSettings) {
        let settings = plan.settings;
        let mut session = self.open(
            plan.transport,
            plan.channels,
            plan.since,
            &settings,
            settings.on_lag,
        );
        session.hold(plan.permit);
        self.track(
            &mut session,
            plan.transport,
            settings.presence,
            &plan.grants,
        );
        (session, plan.grants, settings)
    }

    /// What `GET /presence/{channel}` and the WebSocket `presence` frame
    /// answer: every node's members with a store, else this node's.
    pub async fn presence_of(
        &self,
        channel: &ChannelName,
    ) -> Result<crate::presence::Snapshot, crate::backplane::Error> {
        match &self.presence_store {
            Some(store) => store.snapshot(channel).await,
            None => Ok(self.presence.snapshot(channel)),
        }
    }

    /// Counts `session` in presence (on `presence:` routes) and reports it
    /// to the lifecycle webhooks, from its current channels on.
    pub fn track(
        &self,
        session: &mut Session,
        transport: Transport,
        presence: crate::config::PresenceSettings,
        grants: &Grants,
    ) {
        if !presence.enabled && self.hooks.is_none() {
            return;
        }
        let sub = grants.claims.as_ref().and_then(|g| g.sub.as_deref());
        let tracker = crate::presence::Tracker::new(
            self.presence.clone(),
            presence,
            self.hooks.clone(),
            sub,
            transport,
        );
        tracker.connect(&session.channels);
        session.tracker = Some(Box::new(tracker));
    }

    /// Opens a session subscribed to `channels` (resuming from `since`).
    pub fn open(
        &self,
        transport: Transport,
        channels: Vec<ChannelName>,
        since: Option<Vec<Position>>,
        settings: &RealtimeSettings,
        policy: LagPolicy,
    ) -> Session {
        let queue = self.hub.queue(settings.queue, policy);
        let positions = channels
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                let from = since.as_ref().and_then(|s| s.get(i).copied());
                self.hub.subscribe(&queue, ch, from)
            })
            .collect();
        let gauge = self.metrics.sessions.get_or_create(&TransportLabels {
            transport: transport.as_str(),
        });
        gauge.inc();
        Session {
            hub: self.hub.clone(),
            queue,
            channels,
            positions,
            gauge: gauge.clone(),
            permit: None,
            tracker: None,
        }
    }
}

/// Why `prepare` refused a request.
enum Refusal {
    Http(HttpError),
    /// Refused by auth on this route: counted by reason where answered.
    Auth(Arc<str>, Denial),
}

impl From<HttpError> for Refusal {
    fn from(e: HttpError) -> Self {
        Refusal::Http(e)
    }
}

fn count_failure(metrics: &Metrics, route: &str, denial: &Denial) {
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
fn grant(grants: &mut Grants, access: Access, channels: &[ChannelName]) -> Access {
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

/// `realtime.allowed_origins`: a listed `Origin` (or `*`) passes; a request
/// without one (not a browser, or a same-origin stream) passes too, since
/// cross-site WebSocket hijacking always carries the attacker's `Origin`.
fn check_origin(headers: &http::HeaderMap, allowed: Option<&[String]>) -> Result<(), HttpError> {
    let (Some(allowed), Some(origin)) = (allowed, headers.get(header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let listed = allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if listed {
        Ok(())
    } else {
        Err(HttpError::new(
            ErrorCode::OriginNotAllowed,
            format!("origin {origin:?} is not allowed on this route"),
        ))
    }
}

/// `?transport=info`: what a client needs to pick a transport.
fn info(route: &RealtimeRoute) -> Response<Body> {
    let body = serde_json::json!({
        "transports": route.transports.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "heartbeat_ms": route.settings.heartbeat.as_millis() as u64,
        "longpoll_timeout_ms": route.settings.longpoll_timeout.as_millis() as u64,
        "client_publish": route.client_publish != ClientPublish::Denied,
    });
    let mut response = json_response(StatusCode::OK, &body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// The connection's channels (route templates, then `?channel=` when
/// allowed), sorted and unique so composite ids are stable.
fn resolve_channels(
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
        captures: captures.clone(),
        auth: route.auth.clone(),
        claims: None,
        route: route.name.clone(),
    };
    Ok((channels, grants))
}

/// One subscriber: its queue, channels and positions. Dropping it
/// unsubscribes from every channel.
pub struct Session {
    hub: Arc<Hub>,
    pub queue: Arc<Queue>,
    /// Subscribed channels; `positions[i]` is the last position delivered
    /// (or resumed from) on `channels[i]`.
    pub channels: Vec<ChannelName>,
    pub positions: Vec<Position>,
    gauge: Gauge,
    /// The connection's share of the per-address cap, released with it.
    permit: Option<ConnPermit>,
    /// Presence and webhooks (`Realtime::track`); `None` when neither is on.
    pub tracker: Option<Box<crate::presence::Tracker>>,
}

impl Session {
    /// Keeps the connection's limit permit for as long as the session.
    pub fn hold(&mut self, permit: Option<ConnPermit>) {
        self.permit = permit;
    }

    /// Records that `position` of `channel` was delivered.
    pub fn advance(&mut self, channel: &ChannelName, position: Position) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.positions[i] = position;
        }
    }

    /// The position last delivered (or resumed from) on `channel`.
    pub fn position(&self, channel: &ChannelName) -> Option<Position> {
        let i = self.channels.iter().position(|c| c == channel)?;
        self.positions.get(i).copied()
    }

    /// The id covering every channel at the current positions.
    pub fn cursor(&self) -> String {
        cursor::encode(&self.positions)
    }

    pub fn subscribe(&mut self, channel: ChannelName, since: Option<Position>) {
        let again = self.channels.contains(&channel);
        if let Some(i) = self.channels.iter().position(|c| *c == channel) {
            // Re-subscribing replays from `since`: drop the old registration.
            self.hub.unsubscribe(&self.queue, &channel);
            self.channels.remove(i);
            self.positions.remove(i);
        }
        let position = self.hub.subscribe(&self.queue, &channel, since);
        if let Some(t) = &self.tracker
            && !again
        {
            t.subscribe(&channel);
        }
        self.channels.push(channel);
        self.positions.push(position);
    }

    pub fn unsubscribe(&mut self, channel: &ChannelName) -> bool {
        match self.channels.iter().position(|c| c == channel) {
            Some(i) => {
                self.hub.unsubscribe(&self.queue, channel);
                self.channels.remove(i);
                self.positions.remove(i);
                if let Some(t) = &self.tracker {
                    t.unsubscribe(channel, "client");
                }
                true
            }
            None => false,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in &self.channels {
            self.hub.unsubscribe(&self.queue, channel);
        }
        if let Some(t) = &self.tracker {
            t.disconnect(&self.channels);
        }
        self.gauge.dec();
    }
}

/// Writes and flushes (a TLS stream holds bytes until flushed).
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Joins encoded items into one buffer for one write, without copying
/// (or allocating) when there is a single item, the common case.
#[derive(Default)]
pub struct Coalesce {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl Coalesce {
    pub fn push(&mut self, bytes: Bytes) {
        if let Some(joined) = &mut self.joined {
            joined.extend_from_slice(&bytes);
            return;
        }
        match self.first.take() {
            None => self.first = Some(bytes),
            Some(first) => {
                let mut joined = BytesMut::with_capacity(2 * (first.len() + bytes.len()));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&bytes);
                self.joined = Some(joined);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.joined.is_none()
    }

    pub fn finish(self) -> Bytes {
        match self.joined {
            Some(joined) => joined.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_joins_in_order_and_keeps_a_lone_chunk() {
        let lone = Bytes::from_static(b"abc");
        let mut c = Coalesce::default();
        c.push(lone.clone());
        let out = c.finish();
        assert_eq!(out.as_ptr(), lone.as_ptr(), "a lone chunk is not copied");
        let mut c = Coalesce::default();
        for part in ["a", "bc", "", "def"] {
            c.push(Bytes::from(part));
        }
        assert!(!c.is_empty(), "joined chunks are not empty");
        assert_eq!(&c.finish()[..], b"abcdef");
        assert!(Coalesce::default().is_empty());
        assert!(Coalesce::default().finish().is_empty());
    }

    #[test]
    fn query_parsing_decodes_and_repeats() {
        let q = Query::parse(Some("channel=a&channel=b%3Ac&since=1-2&x=a+b&bad=%zz"));
        assert_eq!(q.all("channel").collect::<Vec<_>>(), ["a", "b:c"]);
        assert_eq!(q.get("since"), Some("1-2"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("bad"), None);
    }
}
