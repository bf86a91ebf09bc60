//! Upstream HTTP/1.1 connections driven by the task of the request that
//! uses them: no connection task, no channel hop between tasks and no
//! spawn per request (hyper-util's pooled client costs all three).
//!
//! A request checks a connection out of its target's idle stack (LIFO, so
//! a busy pool keeps few sockets warm), polls it beside its response and
//! then beside the response body, and puts it back when the body has been
//! read to its end. Nothing polls an idle connection: one the upstream has
//! closed is found dead when it is checked out, when it reaches the bottom
//! of the stack, or when it is older than the idle timeout. A response
//! dropped before its end takes its connection with it.
//!
//! Upgrades (WebSocket pass-through) and the GRIP and hook requests use
//! the upstream's hyper-util client instead: they are rare, long or
//! fire-and-forget, where a connection task is the right shape.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::Body;

/// Idle connections kept per target; past this, a returned one is closed.
pub const MAX_IDLE: usize = 256;

/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One target's idle connections.
pub struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    /// Oldest at the front; checked out and returned at the back.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One upstream connection: the request half and the IO half, which
/// whoever uses the connection must poll. Always boxed: it is large
/// (hyper's buffers and state) and moves on every checkout and return.
struct Conn {
    sender: http1::SendRequest<Body>,
    io: http1::Connection<TokioIo<TcpStream>, Body>,
    /// The IO half has completed (closed or failed): never poll it again.
    ended: bool,
}

impl Conn {
    /// Drives the IO half; returns false once the connection has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended && Pin::new(&mut self.io).poll(cx).is_ready() {
            self.ended = true;
        }
        !self.ended
    }

    /// Whether the connection can take another request now. Polls with a
    /// no-op waker: the readiness the reactor has recorded shows an
    /// upstream's close without anyone waiting on the socket.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && self.sender.is_ready()
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (or not within `connect_timeout`).
    Connect(std::io::Error),
    /// The connection failed after the request was (maybe) sent.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Request(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(e),
        }
    }
}

impl Pool {
    pub fn new(authority: Authority, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            authority,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) and returns the
    /// response head; its body keeps the connection going. A request a
    /// reused connection refused before writing it (the upstream had
    /// closed it) is sent again on another. One the upstream closed while
    /// it was being written fails, as with any keep-alive client.
    pub fn send(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + 'static {
        // A named `Send` future: rustc cannot prove an `async fn` holding
        // hyper's connection `Send` from the callers' generic contexts.
        let pool = self.clone();
        async move { pool.send_inner(request).await }
    }

    async fn send_inner(
        self: Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare and its future large.
                None => (Box::pin(self.connect()).await?, false),
            };
            let sent = exchange(&mut conn, request).await;
            match sent {
                Ok(response) => {
                    return Ok(response.map(|body| PooledBody {
                        body,
                        conn: Some(conn),
                        pool: self.clone(),
                        done: false,
                    }));
                }
                // Refused before a byte was written: always safe to resend.
                Err(mut e) if reused && e.message().is_some() => {
                    request = e.take_message().expect("checked above");
                }
                Err(e) => return Err(SendError::Request(e.into_error())),
            }
        }
    }

    fn checkout(&self) -> Option<Box<Conn>> {
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(mut entry) = idle.pop_back() {
                if entry.since.elapsed() < IDLE_TIMEOUT && entry.conn.reusable() {
                    found = Some(entry.conn);
                    break;
                }
                dead.push(entry);
            }
            found
        };
        drop(dead); // closes sockets outside the lock
        found
    }

    fn checkin(&self, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Sweep one stale connection from the bottom per return, so a
        // stack that stays deep does not keep closed sockets forever.
        let stale = idle
            .front_mut()
            .is_some_and(|e| e.since.elapsed() >= IDLE_TIMEOUT || !e.conn.reusable());
        let swept = if stale { idle.pop_front() } else { None };
        let evicted = if idle.len() >= MAX_IDLE {
            idle.pop_front()
        } else {
            None
        };
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        drop((swept, evicted));
    }

    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| {
                SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Request)?;
        Ok(Box::new(Conn {
            sender,
            io,
            ended: false,
        }))
    }
}

/// A request's error, keeping the request when it was never written.
type TrySendError = hyper::client::conn::TrySendError<Request<Body>>;

/// Sends `request` on `conn`, driving the connection until the response
/// head arrives.
fn exchange(
    conn: &mut Conn,
    request: Request<Body>,
) -> impl Future<Output = Result<Response<Incoming>, TrySendError>> + Send + '_ {
    let response = conn.sender.try_send_request(request);
    async move {
        let mut response = pin!(response);
        poll_fn(|cx| {
            conn.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// A response body that drives its connection and returns it to the pool
/// once read to the end.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
    /// The body reported its end.
    done: bool,
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && (self.done || self.body.is_end_stream())
        {
            self.pool.checkin(conn);
        }
    }
}
