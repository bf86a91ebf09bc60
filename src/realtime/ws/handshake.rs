//! The WebSocket handshake: through hyper's upgrade, or answered on the
//! claimed raw connection (`Sec-WebSocket-Accept`).

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use tracing::debug;

use super::connection::run;
use crate::error::{Body, ErrorCode, HttpError};
use crate::listener::{ConnInfo, RawIo};
use crate::realtime::{Plan, Realtime};

pub fn respond(
    realtime: &Arc<Realtime>,
    request: &mut Request<Incoming>,
    plan: Plan,
    conn: ConnInfo,
) -> Response<Body> {
    let (response, upgrade) = match upgrade(request) {
        Ok(pair) => pair,
        Err(e) => return e.into_response(),
    };
    let realtime = realtime.clone();
    let tracker = realtime.shutdown.tracker.clone();
    tracker.spawn(async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(error) => {
                debug!(%error, "WebSocket upgrade did not complete.");
                return;
            }
        };
        // Nothing has been read past the handshake: the stream is clean.
        run(realtime, ws.into_inner(), plan, conn.slot, None);
    });
    response.map(|_| crate::error::empty())
}

/// Accepts a WebSocket upgrade through hyper: the 101 and the socket to
/// come, or `invalid_upgrade` (realtime routes and WebSocket-over-HTTP).
pub fn upgrade(
    request: &mut Request<Incoming>,
) -> Result<(Response<Empty<Bytes>>, UpgradeFut), HttpError> {
    fastwebsockets::upgrade::upgrade(request).map_err(|error| {
        HttpError::new(
            ErrorCode::InvalidUpgrade,
            format!("invalid WebSocket upgrade: {error}"),
        )
    })
}

/// Whether a request head is a WebSocket handshake we can answer.
pub fn is_handshake(head: &Request<()>) -> bool {
    let h = head.headers();
    head.method() == http::Method::GET
        && head.version() == http::Version::HTTP_11
        && h.get("sec-websocket-key").is_some()
        && h.get("sec-websocket-version").is_some_and(|v| v == "13")
        && h.get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The `Sec-WebSocket-Accept` value for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Answers the handshake on the raw connection and runs the session there,
/// with no HTTP buffers left behind.
/// The 101 goes out in the connection's first write, together with the
/// `subscribed` frames (one write, not two, per handshake).
pub fn serve_raw<IO: RawIo>(
    realtime: &Arc<Realtime>,
    plan: Plan,
    key: &http::HeaderValue,
    io: IO,
    conn: ConnInfo,
) {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    run(
        realtime.clone(),
        io,
        plan,
        conn.slot,
        Some(Bytes::from(response)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
