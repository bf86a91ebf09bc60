//! Forwards a request to its route's upstream and streams the answer back:
//! header hygiene, round robin with passive health, `connect_timeout` → 502,
//! `timeout` → 504, and WebSocket (any `Upgrade`) pass-through.
//!
//! It knows no channels: the upstream response is returned unchanged but
//! for hop-by-hop headers.

mod client_body;
pub mod headers;
pub mod pool;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::histogram::Histogram;
use tracing::{debug, warn};

use crate::config::{RouteSettings, UpstreamSettings};
use crate::error::{Body, ErrorCode, HttpError, error_chain};
use crate::listener::ConnInfo;
use crate::metrics::{Metrics, UpstreamLabels};
use crate::shutdown::Shutdown;

use self::upstream::{Target, Upstream};

pub struct Proxy {
    /// Each upstream with its latency histogram, looked up once here
    /// instead of by label on every request.
    upstreams: HashMap<String, (Upstream, Histogram)>,
    shutdown: Shutdown,
    /// Reads `grip: true` routes' answers (holds); set by the app.
    grip: Option<Arc<crate::grip::Grip>>,
}

/// At most this many targets are tried for one request whose body is empty
/// (a request with a body is sent once: its body cannot be replayed).
const MAX_ATTEMPTS: usize = 3;

impl Proxy {
    pub fn new(
        upstreams: &std::collections::BTreeMap<String, UpstreamSettings>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        let upstreams = upstreams
            .iter()
            .map(|(name, s)| {
                let latency = metrics
                    .upstream_latency
                    .get_or_create(&UpstreamLabels {
                        upstream: name.clone(),
                    })
                    .clone();
                (name.clone(), (Upstream::new(name, s), latency))
            })
            .collect();
        Self {
            upstreams,
            shutdown,
            grip: None,
        }
    }

    /// Serves `grip: true` routes' holds with `grip`.
    pub fn with_grip(mut self, grip: Arc<crate::grip::Grip>) -> Self {
        self.grip = Some(grip);
        self
    }

    /// A WebSocket handshake on a `ws_events: true` route: the socket stays
    /// here and the upstream hears WebSocket-over-HTTP (`grip::wsevents`).
    pub async fn ws_events(
        &self,
        request: Request<Incoming>,
        route: &RouteSettings,
        upstream: &str,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let (Some(grip), Some((upstream, _))) = (&self.grip, self.upstreams.get(upstream)) else {
            return HttpError::new(ErrorCode::NoUpstream, "route names no known upstream")
                .into_response();
        };
        let path = match rewrite_path(request.uri(), route.strip_prefix.as_deref()) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let Some(target) = upstream.pick() else {
            return HttpError::new(ErrorCode::UpstreamUnreachable, "upstream has no targets")
                .into_response();
        };
        let Ok(uri) = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path)
            .build()
        else {
            return HttpError::new(
                ErrorCode::InvalidRequest,
                "request path cannot be forwarded",
            )
            .into_response();
        };
        let mut headers = request.headers().clone();
        let host = headers.get(header::HOST).cloned();
        headers::remove_hop_by_hop(&mut headers);
        crate::grip::wsevents::clean_headers(&mut headers);
        headers::set_forwarded(
            &mut headers,
            conn.remote.ip(),
            conn.scheme,
            host.as_ref(),
            request.version(),
        );
        for (name, value) in &route.add_headers {
            headers.insert(name.clone(), value.clone());
        }
        let backend = crate::grip::wsevents::Backend {
            client: upstream.client.clone(),
            uri,
            headers,
            signer: upstream.grip_sig.clone(),
            timeout: upstream.timeout,
            upstream: upstream.name.clone(),
        };
        crate::grip::wsevents::open(&grip.holds, backend, request, conn.slot.clone()).await
    }

    pub async fn forward<B>(
        &self,
        request: Request<B>,
        route: &RouteSettings,
        upstream: &str,
        conn: &ConnInfo,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        let Some((upstream, latency)) = self.upstreams.get(upstream) else {
            return HttpError::new(ErrorCode::NoUpstream, "route names no known upstream")
                .into_response();
        };
        // Done before the first await, so the request itself is not kept in
        // this future (which hyper moves on every request): only what the
        // attempts need.
        match Outgoing::prepare(request, route, upstream, conn) {
            Ok(mut outgoing) => {
                let span = crate::telemetry::proxy(
                    &mut outgoing.headers,
                    &outgoing.method,
                    &route.name,
                    &upstream.name,
                );
                let sending = self.send(outgoing, route, upstream, latency, conn);
                crate::telemetry::respond(span, sending).await
            }
            Err(response) => response,
        }
    }

    async fn send(
        &self,
        outgoing: Outgoing,
        route: &RouteSettings,
        upstream: &Upstream,
        latency: &Histogram,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let Outgoing {
            method,
            path,
            mut headers,
            body,
            replayable,
            downstream_upgrade,
            client_failed,
        } = outgoing;
        let attempts = if replayable {
            upstream.target_count().clamp(1, MAX_ATTEMPTS)
        } else {
            1
        };
        let mut body = body;
        let mut last_error = None;
        for attempt in 1..=attempts {
            let Some(target) = upstream.pick() else { break };
            let sent_headers = if attempt == attempts {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            // A stale GRIP response hold asks the origin again (body-less
            // requests only): keep what it takes. Boxed: it is large and
            // GRIP routes are the rare case.
            let replay = match (route.grip && replayable).then(|| absolute(target, &path)) {
                Some(Ok(uri)) => Some(Box::new(crate::grip::Replay {
                    client: upstream.client.clone(),
                    method: method.clone(),
                    uri,
                    headers: sent_headers.clone(),
                    signer: upstream.grip_sig.clone(),
                    timeout: upstream.timeout,
                })),
                _ => None,
            };
            let body = body.take().unwrap_or_else(crate::error::empty);
            let started = Instant::now();
            let sent = forward(
                upstream,
                target,
                &method,
                &path,
                sent_headers,
                body,
                downstream_upgrade.is_some(),
            )
            .await;
            let response = match sent {
                Ok(response) => response,
                Err(Failure::Connect(error)) => {
                    warn!(upstream = %upstream.name, target = %target.authority, %error, "Upstream target unreachable; skipping it for a while.");
                    upstream.mark_down(target);
                    last_error = Some(error);
                    continue;
                }
                Err(failure) => {
                    return failure.into_response(upstream, target, client_failed.get());
                }
            };
            latency.observe(started.elapsed().as_secs_f64());
            return self
                .answer(response, downstream_upgrade, route, replay, upstream, conn)
                .await;
        }
        let message = match last_error {
            Some(e) => format!(
                "upstream {} is unreachable: {}",
                upstream.name,
                error_chain(&*e)
            ),
            None => format!("upstream {} has no targets", upstream.name),
        };
        HttpError::new(ErrorCode::UpstreamUnreachable, message).into_response()
    }

    /// The client's answer to an upstream response: a tunnel on `101` to
    /// an upgrade, a GRIP instruction on a GRIP route, else the response
    /// with hop-by-hop headers removed and `Via` added.
    async fn answer(
        &self,
        mut response: Response<UpstreamBody>,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
        route: &RouteSettings,
        replay: Option<Box<crate::grip::Replay>>,
        upstream: &Upstream,
        conn: &ConnInfo,
    ) -> Response<Body> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream_upgrade
        {
            let upstream_side = hyper::upgrade::on(&mut response);
            self.shutdown
                .tracker
                .spawn(tunnel(downstream, upstream_side, conn.slot.clone()));
            let (mut parts, _) = response.into_parts();
            parts
                .headers
                .append(header::VIA, headers::via_value(Version::HTTP_11));
            return Response::from_parts(parts, crate::error::empty());
        }
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::append_list(
            &mut parts.headers,
            header::VIA,
            headers::via_value(Version::HTTP_11),
        );
        if route.grip
            && let Some(grip) = &self.grip
        {
            // Boxed: a GRIP answer's future is large and rare.
            return Box::pin(grip.respond(parts, body, &upstream.name, replay.map(|r| *r))).await;
        }
        Response::from_parts(parts, boxed(body))
    }
}

/// An upstream response body as the listener's body type.
fn boxed(body: UpstreamBody) -> Body {
    body.map_err(|e| -> crate::error::BoxError { Box::new(e) })
        .boxed_unsync()
}

/// A response body from either client: a pooled connection's, or the
/// hyper-util client's (upgrades).
enum UpstreamBody {
    Pooled(pool::PooledBody),
    Direct(Incoming),
}

impl hyper::body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpstreamBody::Direct(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(b) => b.is_end_stream(),
            UpstreamBody::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpstreamBody::Pooled(b) => b.size_hint(),
            UpstreamBody::Direct(b) => b.size_hint(),
        }
    }
}

/// Why an upstream request got no response head.
enum Failure {
    /// No head within the upstream's `timeout`.
    Timeout,
    /// The target could not be reached: try another.
    Connect(crate::error::BoxError),
    /// The request failed on an open connection.
    Request(crate::error::BoxError),
    /// The path makes no absolute URI (an upgrade needs one).
    Unforwardable,
}

/// `path` on `target` as an absolute URI.
fn absolute(target: &Target, path: &PathAndQuery) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(target.scheme.clone());
    uri.authority = Some(target.authority.clone());
    uri.path_and_query = Some(path.clone());
    Uri::from_parts(uri)
}

/// Sends one request to `target` and waits for the response head, within
/// the upstream's `timeout`. An upgrade goes through the pooled client,
/// whose connection task can hand the connection over; everything else
/// through the target's own connections (`pool`).
async fn forward(
    upstream: &Upstream,
    target: &Target,
    method: &http::Method,
    path: &PathAndQuery,
    headers: http::HeaderMap,
    body: Body,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, Failure> {
    if upgrade {
        let uri = absolute(target, path).map_err(|_| Failure::Unforwardable)?;
        let sent = upstream.client.request(build(method, uri, headers, body));
        return match tokio::time::timeout(upstream.timeout, sent).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) if e.is_connect() => Err(Failure::Connect(e.into())),
            Ok(Err(e)) => Err(Failure::Request(e.into())),
            Ok(Ok(r)) => Ok(r.map(UpstreamBody::Direct)),
        };
    }
    let sent = target
        .pool
        .send(build(method, Uri::from(path.clone()), headers, body));
    match tokio::time::timeout(upstream.timeout, sent).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(pool::SendError::Connect(e))) => Err(Failure::Connect(e.into())),
        Ok(Err(e)) => Err(Failure::Request(e.into())),
        Ok(Ok(r)) => Ok(r.map(UpstreamBody::Pooled)),
    }
}

impl Failure {
    /// The answer to a failure no other target can mend (`Connect` is
    /// retried by the caller). `client_failed`: the client's own body
    /// broke, which hyper reports as a failed upstream request.
    fn into_response(
        self,
        upstream: &Upstream,
        target: &Target,
        client_failed: bool,
    ) -> Response<Body> {
        match self {
            Failure::Unforwardable => HttpError::new(
                ErrorCode::InvalidRequest,
                "request path cannot be forwarded",
            )
            .into_response(),
            Failure::Timeout => {
                warn!(upstream = %upstream.name, target = %target.authority, "Upstream timed out before response headers.");
                HttpError::new(
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "upstream {} did not answer within {:?}",
                        upstream.name, upstream.timeout
                    ),
                )
                .into_response()
            }
            Failure::Request(error) if client_failed => {
                // The client's body broke (RFC 9112 §7.1: e.g. a chunk size
                // that overflows); hyper has aborted the upstream request.
                debug!(upstream = %upstream.name, error = %error_chain(&*error), "Client request body failed; upstream request aborted.");
                HttpError::new(ErrorCode::InvalidBody, "the request body is malformed")
                    .into_response()
            }
            Failure::Request(error) | Failure::Connect(error) => {
                warn!(upstream = %upstream.name, target = %target.authority, error = %error_chain(&*error), "Upstream request failed.");
                HttpError::new(
                    ErrorCode::UpstreamError,
                    format!("upstream {} failed to answer", upstream.name),
                )
                .into_response()
            }
        }
    }
}

/// The upstream request of one attempt.
fn build(method: &http::Method, uri: Uri, headers: http::HeaderMap, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    request
}

/// A request ready for upstream: hop-by-hop headers gone, forwarding
/// headers set, the body watched for client errors.
struct Outgoing {
    method: http::Method,
    path: PathAndQuery,
    headers: http::HeaderMap,
    /// `None`: the request has no body (so it may go to another target).
    body: Option<Body>,
    replayable: bool,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    client_failed: client_body::Failed,
}

impl Outgoing {
    #[allow(clippy::result_large_err)] // the error is the answer itself
    fn prepare<B>(
        mut request: Request<B>,
        route: &RouteSettings,
        upstream: &Upstream,
        conn: &ConnInfo,
    ) -> Result<Self, Response<Body>>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        let upgrade = request
            .headers()
            .get(header::UPGRADE)
            .filter(|_| request.version() == Version::HTTP_11)
            .cloned();
        let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let replayable = body.is_end_stream();
        let path = rewrite_path(&parts.uri, route.strip_prefix.as_deref())
            .map_err(HttpError::into_response)?;
        let mut headers = parts.headers;
        // HTTP/2 clients send :authority, HTTP/1.1 upstreams need Host.
        let host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::remove_hop_by_hop(&mut headers);
        headers::set_forwarded(
            &mut headers,
            conn.remote.ip(),
            conn.scheme,
            host.as_ref(),
            parts.version,
        );
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
        for (name, value) in &route.add_headers {
            headers.insert(name.clone(), value.clone());
        }
        // Only pushgate signs Grip-Sig: a client's own never reaches a backend.
        headers.remove(crate::grip::sig::GRIP_SIG);
        if (route.grip || route.ws_events)
            && let Some(signer) = &upstream.grip_sig
        {
            signer.sign(&mut headers);
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        // A body-less request is sent as an empty body: nothing to watch,
        // and it can be sent to another target after a connect failure.
        let client_failed = client_body::Failed::default();
        let body = if replayable {
            None
        } else {
            let body = body.map_err(Into::into).boxed_unsync();
            Some(client_body::Watched::new(body, client_failed.clone()).boxed_unsync())
        };
        Ok(Self {
            method: parts.method,
            path,
            headers,
            body,
            replayable,
            downstream_upgrade,
            client_failed,
        })
    }
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _slot: Arc<crate::listener::ConnSlot>,
) {
    let (Ok(downstream), Ok(upstream)) = tokio::join!(downstream, upstream) else {
        debug!("Upgrade pass-through failed to complete.");
        return;
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        debug!(%error, "Upgrade pass-through ended with an error.");
    }
}

/// The upstream path and query: `strip_prefix` removed, always starting
/// with `/`.
fn rewrite_path(uri: &Uri, strip_prefix: Option<&str>) -> Result<PathAndQuery, HttpError> {
    let path = uri.path();
    let stripped = match strip_prefix {
        Some(prefix) => match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        },
        None => path,
    };
    let stripped = if stripped.is_empty() { "/" } else { stripped };
    // Unchanged (no prefix stripped): the request's own, shared, not copied.
    if stripped.len() == path.len()
        && let Some(pq) = uri.path_and_query()
        && pq.path() == stripped
    {
        return Ok(pq.clone());
    }
    let full = match uri.query() {
        Some(q) => format!("{stripped}?{q}"),
        None => stripped.to_owned(),
    };
    full.parse()
        .map_err(|_| HttpError::new(ErrorCode::InvalidRequest, "invalid request path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_query_and_leading_slash() {
        let uri: Uri = "/svc/a/b?x=1".parse().unwrap();
        assert_eq!(
            rewrite_path(&uri, Some("/svc")).unwrap().as_str(),
            "/a/b?x=1"
        );
        assert_eq!(
            rewrite_path(&uri, Some("/svc/")).unwrap().as_str(),
            "/a/b?x=1"
        );
        let uri: Uri = "/svc".parse().unwrap();
        assert_eq!(rewrite_path(&uri, Some("/svc")).unwrap().as_str(), "/");
        let uri: Uri = "/svcx/a".parse().unwrap();
        assert_eq!(
            rewrite_path(&uri, Some("/svc")).unwrap().as_str(),
            "/svcx/a"
        );
        assert_eq!(rewrite_path(&uri, None).unwrap().as_str(), "/svcx/a");
    }
}
