//! Serves the internal listener: health, readiness, metrics and the
//! publish API. Never mounted on a public listener.
//!
//! * `GET /healthz` -- the process is alive.
//! * `GET /readyz` -- listeners bound, backplane connected, not draining.
//! * `GET /metrics` -- Prometheus text.
//! * `POST /publish` -- the publish webhook (`publish`).
//! * `POST /admin/reload` -- reload the config file (`reload`); takes the
//!   publish tokens when they are set.
//! * `GET /admin` -- the status page (`admin/page.html`, no external assets).
//! * `GET /admin/stats` -- its figures as JSON (`stats`).
//! * `POST /publish/` -- Pushpin's GRIP publish (`grip::publish`).
//! * `GET /presence/{channel}` -- who is subscribed (docs/presence.md);
//!   takes the publish tokens when they are set.

pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::backplane::Backplane;
use crate::error::{Body, ErrorCode, HttpError, full, json_response};
use crate::listener::{ConnInfo, Handler, RawIo};
use crate::metrics::Metrics;
use crate::publish::{self, Publisher};

use self::stats::Stats;

/// What `POST /admin/reload` asks of whoever owns the config (the
/// reload module's `Control`, which builds the `Admin`): reload the config
/// file, all or nothing, and answer with the outcome (`200` and what
/// changed, or `400` and why it was refused). Admin names no module above
/// it; the owner hands itself in as a `Weak<dyn Reload>`.
pub trait Reload: Send + Sync {
    fn respond(&self) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>>;
}

pub struct Admin {
    pub ready: Arc<AtomicBool>,
    pub backplane: Arc<dyn Backplane>,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
    /// Gone once pushgate stops: `/admin/reload` then answers 503.
    pub(crate) control: Weak<dyn Reload>,
    pub stats: Arc<Stats>,
    /// The serving config's routes, for `/admin/stats`.
    pub routes: serde_json::Value,
    /// Presence (`GET /presence/{channel}`).
    pub realtime: Arc<crate::realtime::Realtime>,
}

/// The status page: one file, inline CSS and JavaScript.
const PAGE: &str = include_str!("admin/page.html");

impl Handler for Admin {
    /// The internal listener serves no long-lived streams.
    type Claim = std::convert::Infallible;

    fn claim(&self, _head: &Request<()>, _conn: &ConnInfo) -> Option<Self::Claim> {
        None
    }

    async fn serve_claimed<IO: RawIo>(
        self: Arc<Self>,
        claim: Self::Claim,
        _io: IO,
        _conn: ConnInfo,
    ) -> crate::listener::HandBack<IO> {
        match claim {}
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (&Method::GET | &Method::HEAD, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(full(self.metrics.encode()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (&Method::POST, "/publish" | "/publish/") => {
                let mut response = if path == "/publish/" {
                    crate::grip::publish::handle(&self.publisher, request).await
                } else {
                    self.publisher.handle(request).await
                };
                if response.status() == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, publish::challenge());
                }
                response
            }
            (&Method::GET | &Method::HEAD, "/admin" | "/admin/") => page(),
            (&Method::GET, "/admin/stats") => {
                let ready = self.ready.load(Ordering::Acquire);
                let mut response =
                    json_response(StatusCode::OK, &self.stats.snapshot(&self.routes, ready));
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            (&Method::POST, "/admin/reload") => {
                if let Some(refused) = self.refusal(&request) {
                    return refused;
                }
                match self.control.upgrade() {
                    Some(control) => control.respond().await,
                    None => {
                        HttpError::new(ErrorCode::Stopping, "pushgate is stopping").into_response()
                    }
                }
            }
            (&Method::GET, p) if p.starts_with("/presence/") => {
                if let Some(refused) = self.refusal(&request) {
                    return refused;
                }
                self.presence(&request).await
            }
            (_, p) if p.starts_with("/presence/") => {
                HttpError::new(ErrorCode::MethodNotAllowed, "method not allowed").into_response()
            }
            (
                _,
                "/publish" | "/publish/" | "/healthz" | "/readyz" | "/metrics" | "/admin/reload"
                | "/admin" | "/admin/stats",
            ) => HttpError::new(ErrorCode::MethodNotAllowed, "method not allowed").into_response(),
            _ => HttpError::new(ErrorCode::NotFound, format!("no internal endpoint {path}"))
                .into_response(),
        }
    }
}

fn page() -> Response<Body> {
    let mut response = Response::new(full(PAGE));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Nothing but this page and its own origin's /admin/stats.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    response
}

impl Admin {
    /// The internal tokens' check for `/admin/reload` and `/presence/`:
    /// `Some` answer when refused, with the `WWW-Authenticate` challenge.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        self.publisher.authorize(request.headers()).err().map(|e| {
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, publish::challenge());
            response
        })
    }

    /// `GET /presence/{channel}[?count=1]`.
    async fn presence(&self, request: &Request<Incoming>) -> Response<Body> {
        let raw = request.uri().path().trim_start_matches("/presence/");
        let channel = crate::router::pattern::percent_decode(raw)
            .ok_or_else(|| "not percent-encoded UTF-8".to_owned())
            .and_then(|name| {
                crate::hub::message::ChannelName::parse(&name).map_err(|e| e.to_string())
            });
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                return HttpError::new(
                    ErrorCode::InvalidChannel,
                    format!("invalid channel {raw:?}: {e}"),
                )
                .into_response();
            }
        };
        let query = crate::realtime::Query::parse(request.uri().query());
        let count = matches!(query.get("count"), Some("1" | "true"));
        match self.realtime.presence_of(&channel).await {
            Ok(snapshot) => {
                let mut response =
                    json_response(StatusCode::OK, &snapshot.to_json(&channel, count));
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(e) => {
                HttpError::new(ErrorCode::BackplaneUnavailable, e.to_string()).into_response()
            }
        }
    }

    fn readiness(&self) -> Response<Body> {
        let listeners = self.ready.load(Ordering::Acquire);
        let backplane = self.backplane.is_ready();
        let status = if listeners && backplane {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &serde_json::json!({
                "ready": listeners && backplane,
                "listeners": listeners,
                "backplane": {
                    "type": self.backplane.name(),
                    "connected": backplane,
                    "state": self.backplane.state().as_str(),
                },
            }),
        )
    }
}
