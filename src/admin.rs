//! Serves the internal listener: health, readiness, metrics and the
//! publish API. Never mounted on a public listener.
//!
//! * `GET /healthz` -- the process is alive.
//! * `GET /readyz` -- listeners bound, backplane connected, not draining.
//! * `GET /metrics` -- Prometheus text.
//! * `POST /publish` -- the publish webhook (`publish`).
//! * `POST /publish/` -- Pushpin's GRIP publish (`grip::publish`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::backplane::Backplane;
use crate::error::{Body, HttpError, full, json_response};
use crate::listener::{ConnInfo, Handler, RawIo};
use crate::metrics::Metrics;
use crate::publish::{self, Publisher};

pub struct Admin {
    pub ready: Arc<AtomicBool>,
    pub backplane: Arc<dyn Backplane>,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
}

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
    ) {
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
            (_, "/publish" | "/publish/" | "/healthz" | "/readyz" | "/metrics") => HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
            .into_response(),
            _ => HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no internal endpoint {path}"),
            )
            .into_response(),
        }
    }
}

impl Admin {
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
                "backplane": { "type": self.backplane.name(), "connected": backplane },
            }),
        )
    }
}
