//! `grip: true` routes' first HTTP/1 request of a connection, served on
//! the raw socket (like native SSE) instead of through hyper: a held
//! stream is written as it is delivered, one write per wake-up, without
//! hyper's dispatcher in between. Whatever the answer is (a held stream,
//! a held or plain response, an error), this writes the head itself --
//! the upstream's status and headers, `Grip-*` already stripped -- and
//! the body with a `Content-Length` when its size is known, else chunked
//! (HTTP/1.1) or delimited by the connection's end (HTTP/1.0), as Pushpin
//! does. A kept-alive connection goes back to hyper for its next request.
//!
//! Only body-less `GET`s without `Upgrade` are claimed; HTTP/2 and every
//! other request take the hyper path (`hold` serves both).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RouteSettings;
use crate::error::Body;
use crate::listener::{HandBack, RawIo};

/// A client that takes none of a write for this long is not reading: its
/// connection is closed.
const STALL: Duration = Duration::from_secs(60);

/// Bytes a client may send while its response is written (a pipelined
/// request) before it is dropped.
const MAX_EXTRA: usize = 64 << 10;

/// A claimed request: its head, and the route it matched.
pub struct Claim {
    pub route: Arc<RouteSettings>,
    pub upstream: String,
    head: http::request::Parts,
    /// The client keeps the connection after this response.
    keep_alive: bool,
}

/// Claims `head` when `route` is a `grip: true` proxied route and the
/// request is a body-less GET without `Upgrade`.
pub fn claim(head: &Request<()>, route: &Arc<RouteSettings>, upstream: &str) -> Option<Claim> {
    let h = head.headers();
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v != "0");
    if !route.grip
        || head.method() != http::Method::GET
        || has_body
        || h.contains_key(header::UPGRADE)
    {
        return None;
    }
    let connection = |token: &str| {
        h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let keep_alive = match head.version() {
        Version::HTTP_11 => !connection("close"),
        _ => false,
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = head.method().clone();
    parts.uri = head.uri().clone();
    parts.version = head.version();
    parts.headers = h.clone();
    Some(Claim {
        route: route.clone(),
        upstream: upstream.to_owned(),
        head: parts,
        keep_alive,
    })
}

impl Claim {
    /// The request to forward (no body).
    pub fn request(&self) -> Request<Empty<Bytes>> {
        Request::from_parts(self.head.clone(), Empty::new())
    }
}

enum Framing {
    None,
    Length,
    Chunked,
    Close,
}

/// Writes `response` on `io`. Returns the connection when it stays open.
pub async fn write<IO: RawIo>(response: Response<Body>, claim: &Claim, io: IO) -> HandBack<IO> {
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    let h = &mut parts.headers;
    h.remove(header::TRANSFER_ENCODING);
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        h.remove(header::CONTENT_LENGTH);
        Framing::None
    } else if h.contains_key(header::CONTENT_LENGTH) {
        Framing::Length
    } else if let Some(n) = hyper::body::Body::size_hint(&body).exact() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Length
    } else if claim.head.version == Version::HTTP_11 {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Framing::Chunked
    } else {
        Framing::Close
    };
    let keep_alive = claim.keep_alive && !matches!(framing, Framing::Close);
    h.remove(header::CONNECTION);
    if !keep_alive {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = head_bytes(status, h);

    let (mut reader, mut writer) = tokio::io::split(io);
    let mut extra = Vec::new();
    let mut probe = [0u8; 512];
    let mut ended = matches!(framing, Framing::None);
    // The head goes out with whatever the body has at once (a held
    // stream's initial body), in one write.
    if !ended {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    frame_into(&mut out, &framing, &data);
                }
            }
            Some(Some(Err(_))) => return None,
            Some(None) => ended = true,
            None => {}
        }
        if ended && matches!(framing, Framing::Chunked) {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    loop {
        if !out.is_empty() {
            if send(&mut writer, &out).await.is_err() {
                return None;
            }
            out.clear();
        }
        if ended {
            break;
        }
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        frame_into(&mut out, &framing, &data);
                    }
                }
                // The body broke: the client must not see it complete.
                Some(Err(_)) => return None,
                None => ended = true,
            },
            read = reader.read(&mut probe) => match read {
                Ok(0) | Err(_) => return None,
                // A pipelined request: kept for hyper.
                Ok(n) if extra.len() + n <= MAX_EXTRA => extra.extend_from_slice(&probe[..n]),
                Ok(_) => return None,
            },
        }
        if ended && matches!(framing, Framing::Chunked) {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let mut io = reader.unsplit(writer);
    if keep_alive {
        Some((extra, io))
    } else {
        let _ = io.shutdown().await;
        None
    }
}

/// `send`, given up after [`STALL`].
async fn send<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    match tokio::time::timeout(STALL, crate::realtime::send(writer, bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn frame_into(out: &mut BytesMut, framing: &Framing, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    match framing {
        Framing::Chunked => {
            out.reserve(data.len() + 20);
            put_hex(out, data.len());
            out.put_slice(b"\r\n");
            out.put_slice(data);
            out.put_slice(b"\r\n");
        }
        Framing::Length | Framing::Close => out.put_slice(data),
        Framing::None => {}
    }
}

/// `n` in lower-case hex (a chunk size), without `format!`'s machinery:
/// this runs once per delivery.
fn put_hex(out: &mut BytesMut, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

fn head_bytes(status: StatusCode, headers: &http::HeaderMap) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_chunks() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let head = head_bytes(StatusCode::OK, &h);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
        );
        let mut out = BytesMut::new();
        frame_into(&mut out, &Framing::Chunked, b"hello, world!!!!!");
        frame_into(&mut out, &Framing::Chunked, b"");
        assert_eq!(&out[..], b"11\r\nhello, world!!!!!\r\n");
        for n in [0usize, 1, 15, 16, 255, 4096, usize::MAX] {
            let mut out = BytesMut::new();
            put_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }
}
