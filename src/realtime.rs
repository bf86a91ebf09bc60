//! Realtime routes: negotiation, the channels a request may use, resume
//! positions, and the [`Session`] every transport drives: one bounded queue
//! subscribed to the hub, released when the session ends.
//!
//! Wire formats live in the transport modules (`sse`, `ws`, `longpoll`).

mod coalesce;
pub mod cursor;
pub mod deliver;
mod grants;
pub mod longpoll;
pub mod negotiate;
mod plan;
mod query;
mod session;
pub mod sse;
pub mod ws;

pub use self::coalesce::{Coalesce, send, send_within};
pub use self::grants::Grants;
pub use self::plan::{Plan, Prepared};
pub use self::query::Query;
pub use self::session::{EndReason, Session};

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::auth::callback::{Ask, Callbacks};
use crate::auth::{self, Access, Denial};
use crate::backplane::Backplane;
use crate::config::{ClientPublish, RealtimeRoute};
use crate::error::{Body, ErrorCode, HttpError, json_response};
use crate::hub::Hub;
use crate::limits::{ConnPermit, Limiter};
use crate::listener::{ConnInfo, RawIo};
use crate::metrics::Metrics;
use crate::realtime::negotiate::Transport;
use crate::router::pattern::Captures;
use crate::shutdown::Shutdown;

use self::grants::{count_failure, grant, resolve_channels};
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
        let binary_frames = match query.get("binary") {
            None | Some("base64") => false,
            Some("frames") => true,
            Some(other) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid ?binary={other:?}: frames or base64"),
                )
                .into());
            }
        };
        let publish_to = match query.get("publish") {
            None => None,
            Some(c) => Some(crate::publish::channel(c)?),
        };
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
            binary_frames,
            publish_to,
        }))
    }

    /// Admits a realtime connection under the per-address limits.
    pub fn admit(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
    ) -> Result<ConnPermit, HttpError> {
        let ip = self.limiter.client_ip(conn.remote, headers);
        // A direct peer's connection was counted against the connect rate
        // when it was accepted; a trusted proxy's client is counted here.
        let count_rate = self.limiter.is_trusted_proxy(conn.remote);
        self.limiter
            .admit(ip, count_rate)
            .map_err(|r| r.into_error())
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
