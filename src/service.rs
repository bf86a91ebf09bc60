//! The public request entry: finds the route and dispatches to the proxy,
//! a realtime session or static files; counts requests by route and status.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::config::RouteAction;
use crate::error::{Body, ErrorCode, HttpError};
use crate::files;
use crate::listener::{ConnInfo, HandBack, Handler, RawIo};
use crate::metrics::{Metrics, RequestLabels};
use crate::proxy::Proxy;
use crate::realtime::negotiate::Transport;
use crate::realtime::{Plan, Prepared, Realtime};
use crate::router::Router;

/// The browser client, served by every public listener.
pub const CLIENT_PATH: &str = "/_pushgate/client.js";

/// The client's source, embedded so it always matches this server.
pub const CLIENT_JS: &str = include_str!("../clients/js/pushgate.js");

fn client_js(request: &Request<Incoming>) -> Response<Body> {
    use http::HeaderValue;
    const ETAG: &str = concat!("\"pushgate-client-", env!("CARGO_PKG_VERSION"), "\"");
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return HttpError::new(ErrorCode::MethodNotAllowed, "GET the client").into_response();
    }
    let cached = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == ETAG.as_bytes());
    let mut response = if cached {
        let mut r = Response::new(crate::error::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if request.method() == http::Method::HEAD {
        Response::new(crate::error::empty())
    } else {
        Response::new(crate::error::full(CLIENT_JS))
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, HeaderValue::from_static(ETAG));
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

pub struct Service {
    pub router: Router,
    pub proxy: Proxy,
    pub realtime: Arc<Realtime>,
    pub metrics: Arc<Metrics>,
}

/// A first request served on the raw connection: a realtime session, or
/// a `grip: true` route's request (its answer may be a held stream).
#[allow(clippy::large_enum_variant)] // built once per connection, never stored
pub enum Claimed {
    Realtime(RealtimeClaim),
    Grip(crate::grip::raw::Claim),
}

/// An SSE stream or a WebSocket session.
pub struct RealtimeClaim {
    route: Arc<str>,
    plan: Plan,
    /// `Sec-WebSocket-Key` of a WebSocket handshake.
    ws_key: Option<http::HeaderValue>,
    /// Refused by a limit: answered on the raw socket, so the attempt is
    /// counted once.
    refused: Option<HttpError>,
}

impl Handler for Service {
    type Claim = Claimed;

    /// `limits.per_ip.connect_rate` counts every new connection, whatever
    /// its route (SPEC §9).
    fn accept(&self, remote: std::net::SocketAddr) -> Option<HttpError> {
        self.realtime
            .limiter
            .accept(remote)
            .err()
            .map(|r| r.into_error())
    }

    fn claim(&self, head: &Request<()>, conn: &ConnInfo) -> Option<Claimed> {
        if head.method() != http::Method::GET {
            return None;
        }
        let host = head
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let matched = self.router.route(host, head.method(), head.uri().path())?;
        let rt = match &matched.route.action {
            RouteAction::Realtime(rt) => rt,
            RouteAction::Upstream(upstream) => {
                return crate::grip::raw::claim(head, matched.route, upstream).map(Claimed::Grip);
            }
            RouteAction::Static(_) => return None,
        };
        // Anything else, including every error, is answered through hyper.
        let Ok(Prepared::Session(mut plan)) =
            self.realtime
                .prepare(head.headers(), head.uri(), rt, &matched.captures)
        else {
            return None;
        };
        let claim = match plan.transport {
            Transport::Sse => true,
            Transport::Websocket => crate::realtime::ws::is_handshake(head),
            Transport::Longpoll => false,
        };
        // The auth callback is asked through hyper (it is asynchronous).
        if !claim || matches!(plan.access, crate::auth::Access::Callback) {
            return None;
        }
        let refused = match self.realtime.admit(head.headers(), conn) {
            Ok(permit) => {
                plan.permit = Some(permit);
                None
            }
            Err(e) => Some(e),
        };
        Some(Claimed::Realtime(RealtimeClaim {
            route: matched.label.clone(),
            plan,
            ws_key: head.headers().get("sec-websocket-key").cloned(),
            refused,
        }))
    }

    async fn serve_claimed<IO: RawIo>(
        self: Arc<Self>,
        claim: Claimed,
        mut io: IO,
        conn: ConnInfo,
    ) -> HandBack<IO> {
        let claim = match claim {
            Claimed::Realtime(c) => c,
            Claimed::Grip(c) => {
                let route = Arc::from(c.route.name.as_str());
                let response = self
                    .proxy
                    .forward(c.request(), &c.route, &c.upstream, &conn)
                    .await;
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route,
                        status: response.status().as_u16(),
                    })
                    .inc();
                return crate::grip::raw::write(response, &c, io).await;
            }
        };
        if let Some(e) = claim.refused {
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: claim.route,
                    status: e.status.as_u16(),
                })
                .inc();
            let _ = crate::realtime::send(&mut io, &e.into_http1()).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            return None;
        }
        let status = if claim.plan.transport == Transport::Websocket {
            101
        } else {
            200
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: claim.route,
                status,
            })
            .inc();
        self.realtime.serve_raw(claim.plan, claim.ws_key, io, conn);
        None
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let (route_name, response) = self.dispatch(request, conn).await;
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: route_name,
                status: response.status().as_u16(),
            })
            .inc();
        response
    }
}

impl Service {
    async fn dispatch(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> (Arc<str>, Response<Body>) {
        if request.uri().path() == CLIENT_PATH {
            return (Arc::from("_pushgate"), client_js(&request));
        }
        let host = match request.headers().get(header::HOST) {
            Some(h) => h.to_str().ok(),
            None => request.uri().authority().map(|a| a.as_str()),
        };
        let Some(matched) = self
            .router
            .route(host, request.method(), request.uri().path())
        else {
            let message = format!("no route for {}", request.uri().path());
            let response = HttpError::new(ErrorCode::NoRoute, message).into_response();
            return (Arc::from(""), response);
        };
        let (route, label) = (matched.route.clone(), matched.label.clone());
        // Only the proxy's future is kept inline: the others are boxed, so
        // this future (moved into hyper's connection on every request)
        // stays as small as the hot path needs.
        let response = match &route.action {
            RouteAction::Upstream(upstream)
                if route.ws_events && crate::grip::wsevents::is_upgrade(&request) =>
            {
                Box::pin(self.proxy.ws_events(request, &route, upstream, &conn)).await
            }
            RouteAction::Upstream(upstream) => {
                self.proxy.forward(request, &route, upstream, &conn).await
            }
            RouteAction::Realtime(rt) => {
                Box::pin(self.realtime.handle(request, rt, matched.captures, conn)).await
            }
            RouteAction::Static(settings) => {
                let path = request.uri().path();
                let relative = match route.strip_prefix.as_deref() {
                    Some(prefix) => path
                        .strip_prefix(prefix.trim_end_matches('/'))
                        .unwrap_or(path),
                    None => path,
                };
                Box::pin(files::serve(
                    settings,
                    request.method(),
                    relative,
                    request.headers(),
                ))
                .await
            }
        };
        (label, response)
    }
}
