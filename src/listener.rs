//! Accept loops: sockets, optional TLS, HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge and ALPN h2) with upgrades, header size and time limits, the
//! connection cap, and per-connection drain on shutdown.
//!
//! This module does not look at routes, channels or credentials: it hands
//! each request to a [`Handler`].

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::error::{Body, HttpError};
use crate::shutdown::Shutdown;

/// What a request handler knows about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `"http"` or `"https"`: the scheme the client used.
    pub scheme: &'static str,
    /// Held by whoever owns the socket: the connection task, then an
    /// upgraded WebSocket session, so both count against the limits.
    pub slot: Arc<ConnSlot>,
}

/// One open connection's share of `max_connections` and the open
/// connections gauge; released when the last holder drops it.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: Option<OwnedSemaphorePermit>,
    gauge: Gauge,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves requests of one kind of listener (public or internal).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;
}

/// Per-listener settings.
#[derive(Clone)]
pub struct Options {
    /// Metric label and log name: `http`, `https` or `internal`.
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    pub max_header: usize,
    pub header_read_timeout: Duration,
    /// Shared by every public listener: `limits.max_connections`.
    pub connections: Arc<Semaphore>,
    pub open_connections: Gauge,
}

/// Accepts on `listener` until `shutdown` starts, then stops accepting
/// (closing the socket, so new connections are refused) and lets open
/// connections finish their in-flight requests.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    options: Options,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&options));
    let addr = listener.local_addr().ok();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(%error, listener = options.name, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let permit = options.connections.clone().try_acquire_owned().ok();
        let connection = Connection {
            options: options.clone(),
            builder: builder.clone(),
            handler: handler.clone(),
            remote,
            permit,
        };
        let watcher = graceful.watcher();
        shutdown.tracker.spawn(connection.run(stream, watcher));
    }
    drop(listener);
    info!(listener = options.name, addr = ?addr, "Stopped accepting.");
    graceful.shutdown().await;
}

fn builder(options: &Options) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

struct Connection<H> {
    options: Options,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    remote: SocketAddr,
    /// `None`: over `max_connections`; every request is answered 503.
    permit: Option<OwnedSemaphorePermit>,
}

impl<H: Handler> Connection<H> {
    async fn run(self, stream: TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let over_limit = self.permit.is_none();
        self.options.open_connections.inc();
        let info = ConnInfo {
            remote: self.remote,
            scheme,
            slot: Arc::new(ConnSlot {
                _permit: self.permit,
                gauge: self.options.open_connections.clone(),
            }),
        };
        let handler = self.handler;
        let service = service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let info = info.clone();
            async move {
                if over_limit {
                    let mut response = HttpError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too_many_connections",
                        "connection limit reached; retry later",
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    return Ok::<_, Infallible>(response);
                }
                Ok(handler.handle(request, info).await)
            }
        });
        let result = match &self.options.tls {
            None => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            }
            Some(acceptor) => {
                // The handshake counts against the header read timeout, so a
                // client cannot hold a socket by stalling TLS.
                let handshake =
                    tokio::time::timeout(self.options.header_read_timeout, acceptor.accept(stream))
                        .await;
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        debug!(%error, remote = %self.remote, "TLS handshake failed.");
                        return;
                    }
                    Err(_) => {
                        debug!(remote = %self.remote, "TLS handshake timed out.");
                        return;
                    }
                };
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service);
                watcher.watch(conn.into_owned()).await
            }
        };
        if let Err(error) = result {
            debug!(error = %error, remote = %self.remote, listener = self.options.name, "Connection ended with an error.");
        }
    }
}
