//! At the file-descriptor limit: answer new connections `503` instead of
//! leaving them in the listen backlog.
//!
//! Each accept loop keeps one descriptor in reserve (`/dev/null`). When
//! `accept` fails with `EMFILE`/`ENFILE` it closes the reserve, accepts the
//! waiting connection with the freed descriptor, answers it `503
//! too_many_connections` (plain HTTP; a TLS listener just closes it, as a
//! handshake would hold the descriptor far longer), closes it and opens the
//! reserve again. Existing connections are untouched. While the reserve
//! cannot be reopened (another task took the descriptor) the loop backs off
//! instead of spinning.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::error::ErrorCode;

/// `EMFILE` (process limit) and `ENFILE` (system limit), the same on Linux
/// and the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// How long the loop waits when it cannot shed (no reserve, or an accept
/// error other than the descriptor limit).
pub const BACKOFF: Duration = Duration::from_millis(50);

/// How long a shed connection may take to send its request head, so the
/// answer is not reset by unread bytes. Bounds the accept loop's stall.
const REQUEST_WAIT: Duration = Duration::from_millis(20);

/// One descriptor kept for answering at the limit.
pub struct Reserve {
    file: Option<std::fs::File>,
}

impl Default for Reserve {
    fn default() -> Self {
        Self::new()
    }
}

impl Reserve {
    pub fn new() -> Self {
        Self {
            file: std::fs::File::open("/dev/null").ok(),
        }
    }

    /// Whether `error` (from `accept`) is the descriptor limit.
    pub fn is_fd_limit(error: &std::io::Error) -> bool {
        matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
    }

    /// Answers one waiting connection with the reserve descriptor. Returns
    /// whether it did (false: no reserve to spend, or nothing waiting); the
    /// caller backs off when not.
    pub async fn shed(&mut self, listener: &TcpListener, plain_http: bool) -> bool {
        if self.file.take().is_none() {
            self.file = std::fs::File::open("/dev/null").ok();
            return false;
        }
        let accepted = poll_fn(|cx| {
            Poll::Ready(match listener.poll_accept(cx) {
                Poll::Ready(result) => result.ok(),
                Poll::Pending => None,
            })
        })
        .await;
        let shed = match accepted {
            Some((stream, _)) => {
                if plain_http {
                    answer_overloaded(&stream).await;
                }
                true
            }
            None => false,
        };
        // The connection is closed by now: its descriptor is the reserve's.
        self.file = std::fs::File::open("/dev/null").ok();
        if self.file.is_none() {
            warn!(
                "The reserve descriptor could not be reopened; at the fd limit new connections wait."
            );
        }
        shed
    }
}

/// Writes `503 too_many_connections` on a fresh connection, after taking
/// what it sent of its request (so closing does not reset the answer).
/// Never waits on the peer longer than [`REQUEST_WAIT`].
async fn answer_overloaded(stream: &TcpStream) {
    let _ = tokio::time::timeout(REQUEST_WAIT, stream.readable()).await;
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::json!({"error": {
        "code": code.as_str(),
        "message": "the server is out of file descriptors; retry later",
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes this at once.
    let _ = stream.try_write(answer.as_bytes());
}
