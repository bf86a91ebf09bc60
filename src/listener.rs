//! Accept loops: sockets, optional TLS, HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge and ALPN h2) with upgrades, header size and time limits, the
//! connection cap, the handler's accept-time refusal (connect rate), and
//! per-connection drain on shutdown.
//!
//! This module does not look at routes, channels or credentials: it hands
//! each request to a [`Handler`].

pub mod prefixed;
pub mod reserve;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{Body, ErrorCode, HttpError};
use crate::shutdown::Shutdown;

use self::prefixed::Prefixed;

/// Sockets bound before starting, so tests can bind port 0 and read the
/// real addresses.
pub struct Listeners {
    pub http: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub internal: TcpListener,
}

/// An address of the config that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("bind {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The accept queue asked of the kernel for every listener. Linux caps it
/// at `net.core.somaxconn` (4096 by default since 5.4), so raising that
/// sysctl deepens the queue; tokio's own `bind` asks for 128 (std's
/// value), and a connect burst beyond the queue waits for SYN
/// retransmits (1 s, 3 s).
pub const BACKLOG: u32 = 65_535;

/// Binds `addr` as `TcpListener::bind` does (`SO_REUSEADDR` on Unix) but
/// with [`BACKLOG`].
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Listeners {
    /// Binds every address `config` names.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
            bind_tcp(addr).map_err(|source| BindError { addr, source })
        }
        let mut http = Vec::new();
        for a in &config.listen_http {
            http.push(bind(*a).await?);
        }
        let mut https = Vec::new();
        for a in &config.listen_https {
            https.push(bind(*a).await?);
        }
        let internal = bind(config.internal.listen).await?;
        Ok(Self {
            http,
            https,
            internal,
        })
    }
}

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
    /// `None`: over `max_connections`.
    _permit: Option<OwnedSemaphorePermit>,
    gauge: Gauge,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A raw client connection (plain or TLS).
pub trait RawIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> RawIo for T {}

/// Serves requests of one kind of listener (public or internal).
pub trait Handler: Send + Sync + 'static {
    /// What `claim` hands to `serve_claimed`.
    type Claim: Send + 'static;

    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;

    /// Called once per new connection, before its TLS handshake or any
    /// HTTP parsing: `Some` refuses it (per-address connect rate), and
    /// every request on it is answered with that error, then it closes.
    fn accept(&self, _remote: SocketAddr) -> Option<HttpError> {
        None
    }

    /// Whether to serve the first HTTP/1 request of a connection on the raw
    /// socket instead of through hyper. Long-lived streams (SSE,
    /// WebSocket) are claimed so an idle subscriber keeps no HTTP buffers.
    fn claim(&self, head: &Request<()>, conn: &ConnInfo) -> Option<Self::Claim>;

    /// Serves a claimed request; owns the connection until it ends, or
    /// hands it back (`Some`) for hyper to serve the next requests.
    fn serve_claimed<IO: RawIo>(
        self: Arc<Self>,
        claim: Self::Claim,
        io: IO,
        conn: ConnInfo,
    ) -> impl Future<Output = HandBack<IO>> + Send + 'static;
}

/// A claimed connection given back after its response, kept alive: the
/// bytes already read past that request, and the connection.
pub type HandBack<IO> = Option<(Vec<u8>, IO)>;

/// Request head limits, swapped on reload: each connection uses the
/// limits current when it was accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadLimits {
    pub max_header: usize,
    pub header_read_timeout: Duration,
}

/// Per-listener settings.
#[derive(Clone)]
pub struct Options {
    /// Metric label and log name: `http`, `https` or `internal`.
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    pub head: Arc<ArcSwap<HeadLimits>>,
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
    let mut head = options.head.load_full();
    let mut builder = Arc::new(self::builder(&head));
    let addr = listener.local_addr().ok();
    let mut reserve = reserve::Reserve::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // At the fd limit: answer the waiting connection 503
                    // with the reserve descriptor. Otherwise (or without a
                    // reserve) back off briefly instead of spinning.
                    if reserve::Reserve::is_fd_limit(&error)
                        && reserve.shed(&listener, options.tls.is_none()).await
                    {
                        debug!(listener = options.name, "At the fd limit: a new connection was answered 503.");
                        continue;
                    }
                    warn!(%error, listener = options.name, "Accept failed.");
                    tokio::time::sleep(reserve::BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let permit = options.connections.clone().try_acquire_owned().ok();
        let current = options.head.load();
        if !Arc::ptr_eq(&current, &head) {
            // Reloaded: new connections get the new limits.
            head = arc_swap::Guard::into_inner(current);
            builder = Arc::new(self::builder(&head));
        }
        let connection = Connection {
            options: options.clone(),
            head: *head,
            builder: builder.clone(),
            handler: handler.clone(),
            remote,
            permit,
            tracker: shutdown.tracker.clone(),
        };
        let watcher = graceful.watcher();
        shutdown.tracker.spawn(connection.run(stream, watcher));
    }
    drop(listener);
    info!(listener = options.name, addr = ?addr, "Stopped accepting.");
    graceful.shutdown().await;
}

fn builder(options: &HeadLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header.max(8192))
        .keep_alive(true);
    // HTTP/2 limits set on purpose, not left to hyper's and h2's defaults
    // (which may change between releases); see docs/hardening.md.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        // Rapid reset (CVE-2023-44487): streams the client opens and resets
        // before they are answered; past this, GOAWAY.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        // Streams we reset because the client misbehaved (RUSTSEC-2024-0003).
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_frame_size(16 << 10)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_send_buf_size(400 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Streams one HTTP/2 connection may have open at once.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Client-reset streams awaiting accept before the connection is closed.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for protocol errors before closing.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

struct Connection<H> {
    options: Options,
    head: HeadLimits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    remote: SocketAddr,
    /// `None`: over `max_connections`; every request is answered 503.
    permit: Option<OwnedSemaphorePermit>,
    tracker: tokio_util::task::TaskTracker,
}

impl<H: Handler> Connection<H> {
    async fn run(mut self, stream: TcpStream, watcher: Watcher) {
        // Counted before the handshake, so refusing costs no parsing; the
        // answer still needs HTTP (and TLS) to be read.
        let refused = self.handler.accept(self.remote);
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        self.options.open_connections.inc();
        let info = ConnInfo {
            remote: self.remote,
            scheme,
            slot: Arc::new(ConnSlot {
                _permit: self.permit.take(),
                gauge: self.options.open_connections.clone(),
            }),
        };
        match self.options.tls.clone() {
            // Boxed: the task keeps only what the connection's kind needs
            // (no TLS state on plain connections, and the reverse).
            None => Box::pin(self.serve(stream, info, watcher, false, refused)).await,
            Some(acceptor) => {
                // The handshake counts against the header read timeout, so a
                // client cannot hold a socket by stalling TLS.
                let handshake =
                    tokio::time::timeout(self.head.header_read_timeout, acceptor.accept(stream))
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
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Box::pin(self.serve(tls, info, watcher, h2, refused)).await;
            }
        }
    }

    /// Reads the first request head; a claimed request is served on the raw
    /// connection, anything else (HTTP/2, other requests, bad heads) by
    /// hyper with the bytes already read replayed first.
    async fn serve<IO: RawIo>(
        self,
        mut io: IO,
        info: ConnInfo,
        watcher: Watcher,
        h2: bool,
        refused: Option<HttpError>,
    ) {
        let refused = refused.or_else(|| {
            info.slot._permit.is_none().then(|| {
                HttpError::new(
                    ErrorCode::TooManyConnections,
                    "connection limit reached; retry later",
                )
            })
        });
        let mut prefix = Vec::new();
        if !h2 && refused.is_none() {
            match read_head(&mut io, self.head.max_header, self.head.header_read_timeout).await {
                FirstHead::Complete {
                    buf,
                    head_len,
                    head,
                } => {
                    if let Some(claim) = self.handler.claim(&head, &info) {
                        let rest = buf[head_len..].to_vec();
                        drop(buf);
                        // A task of its own, and this one ends: an idle
                        // stream then holds only its session's state, not
                        // the accept path's (TLS handshake, head parsing,
                        // hyper's connection future). A connection handed
                        // back goes on with hyper in that task.
                        let handler = self.handler.clone();
                        let tracker = self.tracker.clone();
                        tracker.spawn(async move {
                            let served =
                                handler.serve_claimed(claim, Prefixed::new(rest, io), info.clone());
                            if let Some((rest, io)) = served.await {
                                self.serve_hyper(io, rest, info, watcher, None).await;
                            }
                        });
                        return;
                    }
                    prefix = buf;
                }
                FirstHead::Other(buf) => prefix = buf,
                FirstHead::UriTooLong => return uri_too_long(io, self.head.max_header).await,
                FirstHead::Closed => return,
            }
        }
        self.serve_hyper(io, prefix, info, watcher, refused).await;
    }

    /// Serves the connection with hyper, `prefix` read first; when
    /// `refused`, every request is answered with that error and `close`.
    async fn serve_hyper<IO: RawIo>(
        self,
        io: IO,
        prefix: Vec<u8>,
        info: ConnInfo,
        watcher: Watcher,
        refused: Option<HttpError>,
    ) {
        let handler = self.handler;
        let service = service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let info = info.clone();
            let refused = refused.clone();
            async move {
                if let Some(refused) = refused {
                    let mut response = refused.into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    return Ok::<_, Infallible>(response);
                }
                Ok(handler.handle(request, info).await)
            }
        });
        let io = TokioIo::new(Prefixed::new(prefix, io));
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let result = Box::pin(watcher.watch(conn.into_owned())).await;
        if let Err(error) = result {
            debug!(error = %error, remote = %self.remote, listener = self.options.name, "Connection ended with an error.");
        }
    }
}

/// What the first bytes of a connection turned out to be.
#[allow(clippy::large_enum_variant)] // built once per connection, never stored
enum FirstHead {
    /// A complete HTTP/1 request head of `head_len` bytes at the start of `buf`.
    Complete {
        buf: Vec<u8>,
        head_len: usize,
        head: Request<()>,
    },
    /// Anything else, for hyper to serve or refuse: HTTP/2, a malformed or
    /// oversize head.
    Other(Vec<u8>),
    /// The request line alone is longer than the head may be (RFC 9112
    /// §3: 414, where hyper would answer 431 for the whole head).
    UriTooLong,
    /// The client left, or did not finish its head in time.
    Closed,
}

/// Answers 414 on the raw connection and closes it. The rest of the
/// client's request is read and dropped for a moment (at most 1 MiB or
/// 2 s) so that closing with unread bytes does not reset the connection
/// before the client has read the answer.
async fn uri_too_long<IO: RawIo>(mut io: IO, max: usize) {
    use tokio::io::AsyncWriteExt;
    let code = ErrorCode::UriTooLong;
    let body = serde_json::json!({"error": {
        "code": code.as_str(),
        "message": format!("the request line is longer than {max} bytes"),
    }})
    .to_string();
    let head = format!(
        "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if io
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = io.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut left = 1usize << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while left > 0 {
        match tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

async fn read_head<IO: RawIo>(io: &mut IO, max: usize, timeout: Duration) -> FirstHead {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= max.max(8192) {
                if !buf.contains(&b'\n') {
                    return FirstHead::UriTooLong;
                }
                return FirstHead::Other(buf);
            }
            buf.reserve(buf.len());
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return FirstHead::Closed,
            Ok(Ok(_)) => {}
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            if n == H2_PREFACE.len() {
                return FirstHead::Other(buf);
            }
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                return match to_request(&parsed) {
                    Some(head) => FirstHead::Complete {
                        buf,
                        head_len,
                        head,
                    },
                    None => FirstHead::Other(buf),
                };
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return FirstHead::Other(buf),
        }
    }
}

fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let mut request = Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        request = request.header(h.name, h.value);
    }
    request.body(()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept queue is the kernel's cap (`somaxconn`), not std's 128:
    /// `ss` shows a listener's queue size in its Send-Q column.
    #[tokio::test]
    async fn listeners_ask_for_the_deep_accept_queue() {
        let Ok(cap) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
            return; // not Linux
        };
        let cap: u32 = cap.trim().parse().unwrap();
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: u32 = text
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("ss printed {text:?}"))
            .parse()
            .unwrap();
        assert_eq!(send_q, cap.min(BACKLOG));
    }
}
