//! Realtime routes: negotiation, the channels a request may use, resume
//! positions, and the [`Session`] every transport drives: one bounded queue
//! subscribed to the hub, released when the session ends.
//!
//! Wire formats live in the transport modules (`sse`, `ws`, `longpoll`).

pub mod cursor;
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

use crate::backplane::Backplane;
use crate::config::{ClientPublish, LagPolicy, RealtimeRoute, RealtimeSettings, Transport};
use crate::error::{Body, HttpError, json_response};
use crate::hub::Hub;
use crate::hub::message::{ChannelName, Position};
use crate::hub::queue::{self, Queue};
use crate::listener::{ConnInfo, RawIo};
use crate::metrics::{Metrics, TransportLabels};
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
}

/// What a connection may do, from its route and path captures.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Channels from the route's templates.
    route_channels: Vec<ChannelName>,
    /// `query_channels: true`: any valid channel may be subscribed.
    any_channel: bool,
    publish: ClientPublish,
    captures: Captures,
}

impl Grants {
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.any_channel || self.route_channels.contains(channel)
    }

    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        match &self.publish {
            ClientPublish::Denied => false,
            ClientPublish::Granted => self.may_subscribe(channel),
            ClientPublish::Patterns(patterns) => patterns.iter().any(|p| {
                pattern::render(p, &self.captures)
                    .is_some_and(|p| pattern::glob(&p, channel.as_str()))
            }),
        }
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
}

/// What a realtime request asks for.
pub enum Prepared {
    /// `?transport=info`.
    Info(Response<Body>),
    Session(Plan),
}

impl Realtime {
    /// Negotiates the transport and resolves channels, grants and the
    /// resume position, without side effects.
    pub fn prepare(
        &self,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        route: &RealtimeRoute,
        captures: &Captures,
    ) -> Result<Prepared, HttpError> {
        let query = Query::parse(uri.query());
        let transport = match negotiate::choose(headers, query.get("transport"), &route.transports)?
        {
            Choice::Info => return Ok(Prepared::Info(info(route))),
            Choice::Transport(t) => t,
        };
        let (channels, grants) = resolve_channels(route, captures, &query)?;
        let header_id = match headers.get("last-event-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_id",
                    "invalid resume id: Last-Event-ID is not ASCII",
                ));
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
                    StatusCode::BAD_REQUEST,
                    "bad_id",
                    format!("invalid resume id: {e}"),
                ));
            }
        };
        if channels.is_empty() && transport != Transport::Websocket {
            // A WebSocket may subscribe later; a stream or poll needs a channel now.
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "no_channel",
                "name at least one channel with ?channel=",
            ));
        }
        Ok(Prepared::Session(Plan {
            transport,
            channels,
            since,
            grants,
            settings: route.settings,
        }))
    }

    /// Serves a realtime request through hyper.
    pub async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        route: &RealtimeRoute,
        captures: Captures,
        conn: ConnInfo,
    ) -> Response<Body> {
        let plan = match self.prepare(request.headers(), request.uri(), route, &captures) {
            Ok(Prepared::Info(response)) => return response,
            Ok(Prepared::Session(plan)) => plan,
            Err(e) => return e.into_response(),
        };
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

    /// Opens a session subscribed to `channels` (resuming from `since`).
    pub fn open(
        &self,
        transport: Transport,
        channels: Vec<ChannelName>,
        since: Option<Vec<Position>>,
        settings: &RealtimeSettings,
        policy: LagPolicy,
    ) -> Session {
        let queue = self.hub.queue(settings.queue, lag_policy(policy));
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
        }
    }
}

pub(crate) fn lag_policy(p: LagPolicy) -> queue::LagPolicy {
    match p {
        LagPolicy::Disconnect => queue::LagPolicy::Disconnect,
        LagPolicy::DropOldest => queue::LagPolicy::DropOldest,
        LagPolicy::KeepLatest => queue::LagPolicy::KeepLatest,
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
            StatusCode::BAD_REQUEST,
            "bad_channel",
            format!("invalid channel {name:?}: {e}"),
        )
    };
    let mut route_channels = Vec::new();
    for template in &route.channels {
        let name = pattern::render(template, captures).ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_channel",
                "channel template has no value",
            )
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
            StatusCode::BAD_REQUEST,
            "too_many_channels",
            format!("at most {MAX_CHANNELS_PER_CONNECTION} channels per connection"),
        ));
    }
    let grants = Grants {
        route_channels,
        any_channel: route.query_channels,
        publish: route.client_publish.clone(),
        captures: captures.clone(),
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
}

impl Session {
    /// Records that `position` of `channel` was delivered.
    pub fn advance(&mut self, channel: &ChannelName, position: Position) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.positions[i] = position;
        }
    }

    /// The id covering every channel at the current positions.
    pub fn cursor(&self) -> String {
        cursor::encode(&self.positions)
    }

    pub fn subscribe(&mut self, channel: ChannelName, since: Option<Position>) {
        if let Some(i) = self.channels.iter().position(|c| *c == channel) {
            // Re-subscribing replays from `since`: drop the old registration.
            self.hub.unsubscribe(&self.queue, &channel);
            self.channels.remove(i);
            self.positions.remove(i);
        }
        let position = self.hub.subscribe(&self.queue, &channel, since);
        self.channels.push(channel);
        self.positions.push(position);
    }

    pub fn unsubscribe(&mut self, channel: &ChannelName) -> bool {
        match self.channels.iter().position(|c| c == channel) {
            Some(i) => {
                self.hub.unsubscribe(&self.queue, channel);
                self.channels.remove(i);
                self.positions.remove(i);
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
