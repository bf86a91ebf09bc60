//! WebSocket (SPEC §3.4) with fastwebsockets: a reader task and a writer
//! loop over split halves (`read_frame` is not cancel-safe, so only the
//! reader calls it and it is only cancelled when the socket is abandoned),
//! the JSON frame protocol, client publish, pings and close codes.
//!
//! Fragmented messages are reassembled here with our own size cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{
    Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Grants, Plan, Realtime, Session, cursor};
use crate::config::{RealtimeSettings, Transport};
use crate::error::{Body, HttpError};
use crate::hub::message::{
    ChannelName, EventName, Message, Payload as MessagePayload, Position, Publication,
};
use crate::hub::queue::{Closed, Item};
use crate::listener::{ConnInfo, ConnSlot, RawIo};

/// Cache slot of a message's WebSocket frame payload in `Message`.
pub const ENCODING_SLOT: usize = 1;

/// Close codes (SPEC §3.4).
pub const CLOSE_SHUTDOWN: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_BAD_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_LAGGED: u16 = 1013;

pub fn respond(
    realtime: &Arc<Realtime>,
    request: &mut Request<Incoming>,
    plan: Plan,
    conn: ConnInfo,
) -> Response<Body> {
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut *request) {
        Ok(pair) => pair,
        Err(error) => {
            return HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_upgrade",
                format!("invalid WebSocket upgrade: {error}"),
            )
            .into_response();
        }
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
        run(realtime, ws, plan, conn.slot).await;
    });
    response.map(|_| crate::error::empty())
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
pub async fn serve_raw<IO: RawIo>(
    realtime: &Arc<Realtime>,
    plan: Plan,
    key: &http::HeaderValue,
    mut io: IO,
    conn: ConnInfo,
) {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    if io.write_all(response.as_bytes()).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let ws = WebSocket::after_handshake(io, Role::Server);
    run(realtime.clone(), ws, plan, conn.slot).await;
}

async fn run<S: RawIo>(realtime: Arc<Realtime>, ws: WebSocket<S>, plan: Plan, slot: Arc<ConnSlot>) {
    let (reader, writer) = ws.split(tokio::io::split);
    let settings = plan.settings;
    let session = realtime.open(
        Transport::Websocket,
        plan.channels,
        plan.since,
        &settings,
        settings.on_lag,
    );
    Connection {
        realtime,
        session: Arc::new(Mutex::new(session)),
        grants: plan.grants,
        settings,
        last_seen: Arc::new(AtomicU64::new(0)),
        started: Instant::now(),
        _slot: slot,
    }
    .run(reader, writer)
    .await;
}

/// Frames only the writer may send, asked for by the reader.
#[derive(Debug)]
enum Control {
    Pong(Vec<u8>),
    Close(u16, &'static str),
}

struct Connection {
    realtime: Arc<Realtime>,
    /// Locked briefly by the reader to (un)subscribe; never across `.await`.
    session: Arc<Mutex<Session>>,
    grants: Grants,
    settings: RealtimeSettings,
    /// Milliseconds since `started` when the peer last sent a frame.
    last_seen: Arc<AtomicU64>,
    started: Instant,
    _slot: Arc<ConnSlot>,
}

impl Connection {
    async fn run<S: RawIo>(
        self,
        reader: WebSocketRead<ReadHalf<S>>,
        mut writer: WebSocketWrite<WriteHalf<S>>,
    ) {
        // Control frames from the reader; the reader waits when 16 are
        // pending (a peer cannot make us buffer pongs without bound).
        let (control_tx, mut control_rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let reader_task = Reader {
            realtime: self.realtime.clone(),
            session: self.session.clone(),
            grants: self.grants.clone(),
            max_message: self.settings.max_message,
            last_seen: self.last_seen.clone(),
            started: self.started,
            control: control_tx,
        };
        self.realtime
            .shutdown
            .tracker
            .spawn(reader_task.run(reader, stop.clone()));

        let queue = lock(&self.session).queue.clone();
        let token = self.realtime.shutdown.token.clone();
        let metrics = self.realtime.metrics.clone();
        let mut items = Vec::new();
        let mut next_ping = tokio::time::Instant::now() + self.settings.heartbeat;
        let close = loop {
            items.clear();
            let drained = queue.drain(&mut items);
            if !items.is_empty() {
                let now = Instant::now();
                let mut failed = false;
                for item in &items {
                    let bytes = match item {
                        Item::Message(m) => {
                            metrics.delivery_latency.observe(
                                now.saturating_duration_since(m.published_at).as_secs_f64(),
                            );
                            metrics.delivered.inc();
                            m.encoded(ENCODING_SLOT, message_frame)
                        }
                        Item::Subscribed { channel, position } => {
                            subscribed_frame(channel, *position)
                        }
                        Item::Gap(channel) => gap_frame(channel),
                        Item::Reply(bytes) => bytes.clone(),
                    };
                    if writer
                        .write_frame(Frame::text(Payload::Borrowed(&bytes)))
                        .await
                        .is_err()
                    {
                        failed = true;
                        break;
                    }
                }
                if failed || writer.flush().await.is_err() {
                    break None;
                }
            }
            if let Err(Closed::Lagged) = drained {
                break Some((CLOSE_LAGGED, "lagged"));
            }
            let silent_until = self.started
                + Duration::from_millis(self.last_seen.load(Ordering::Relaxed))
                + self.settings.pong_timeout;
            tokio::select! {
                biased;
                _ = token.cancelled() => break Some((CLOSE_SHUTDOWN, "shutdown")),
                control = control_rx.recv() => match control {
                    Some(Control::Pong(payload)) => {
                        let frame = Frame::pong(Payload::Owned(payload));
                        if writer.write_frame(frame).await.is_err() || writer.flush().await.is_err() {
                            break None;
                        }
                    }
                    Some(Control::Close(code, reason)) => break Some((code, reason)),
                    // The reader ended: the peer is gone.
                    None => break None,
                },
                _ = queue.ready() => {}
                _ = tokio::time::sleep_until(silent_until.into()) => {
                    let seen = self.started + Duration::from_millis(self.last_seen.load(Ordering::Relaxed));
                    if seen.elapsed() >= self.settings.pong_timeout {
                        debug!("WebSocket peer silent past pong_timeout; closing.");
                        break Some((CLOSE_SHUTDOWN, "pong timeout"));
                    }
                }
                _ = tokio::time::sleep_until(next_ping) => {
                    next_ping = tokio::time::Instant::now() + self.settings.heartbeat;
                    let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]));
                    if writer.write_frame(ping).await.is_err() || writer.flush().await.is_err() {
                        break None;
                    }
                }
            }
        };
        if let Some((code, reason)) = close {
            let _ = writer
                .write_frame(Frame::close(code, reason.as_bytes()))
                .await;
            let _ = writer.flush().await;
        }
        stop.cancel();
    }
}

struct Reader {
    realtime: Arc<Realtime>,
    session: Arc<Mutex<Session>>,
    grants: Grants,
    max_message: usize,
    last_seen: Arc<AtomicU64>,
    started: Instant,
    control: mpsc::Sender<Control>,
}

/// A message being reassembled from fragments.
struct Partial {
    opcode: OpCode,
    data: Vec<u8>,
}

impl Reader {
    async fn run<S: RawIo>(self, mut reader: WebSocketRead<ReadHalf<S>>, stop: CancellationToken) {
        reader.set_auto_close(false);
        reader.set_auto_pong(false);
        reader.set_max_message_size(self.max_message.max(125));
        let mut partial: Option<Partial> = None;
        // Pongs and closes are sent by the writer; nothing is obligated here.
        let mut no_obligated_send = |_| async { Ok::<(), WebSocketError>(()) };
        let close = loop {
            let frame = tokio::select! {
                // Abandoning the socket: a half-read frame does not matter.
                _ = stop.cancelled() => return,
                frame = reader.read_frame(&mut no_obligated_send) => frame,
            };
            self.last_seen
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let frame = match frame {
                Ok(frame) => frame,
                Err(WebSocketError::FrameTooLarge) => {
                    break Some((CLOSE_TOO_BIG, "message too big"));
                }
                Err(
                    WebSocketError::ConnectionClosed
                    | WebSocketError::UnexpectedEOF
                    | WebSocketError::IoError(_),
                ) => {
                    break None;
                }
                Err(error) => {
                    debug!(%error, "WebSocket protocol error.");
                    break Some((CLOSE_PROTOCOL, "protocol error"));
                }
            };
            let complete = match frame.opcode {
                OpCode::Close => break Some((1000, "")),
                OpCode::Ping => {
                    if self
                        .control
                        .send(Control::Pong(frame.payload.to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        break Some((CLOSE_PROTOCOL, "new message inside a fragmented one"));
                    }
                    if frame.fin {
                        Partial {
                            opcode: frame.opcode,
                            data: frame.payload.to_vec(),
                        }
                    } else {
                        partial = Some(Partial {
                            opcode: frame.opcode,
                            data: frame.payload.to_vec(),
                        });
                        continue;
                    }
                }
                OpCode::Continuation => {
                    let Some(p) = partial.as_mut() else {
                        break Some((CLOSE_PROTOCOL, "continuation without a message"));
                    };
                    if p.data.len() + frame.payload.len() > self.max_message {
                        break Some((CLOSE_TOO_BIG, "message too big"));
                    }
                    p.data.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        continue;
                    }
                    match partial.take() {
                        Some(p) => p,
                        None => continue,
                    }
                }
            };
            if complete.data.len() > self.max_message {
                break Some((CLOSE_TOO_BIG, "message too big"));
            }
            if complete.opcode == OpCode::Binary {
                self.reply(error_frame("binary_not_supported", "send JSON text frames"));
                continue;
            }
            match String::from_utf8(complete.data) {
                Ok(text) => self.handle_text(&text).await,
                Err(_) => break Some((CLOSE_BAD_DATA, "invalid UTF-8")),
            }
        };
        if let Some((code, reason)) = close {
            let _ = self.control.send(Control::Close(code, reason)).await;
        }
    }

    fn reply(&self, frame: Bytes) {
        lock(&self.session).queue.push(Item::Reply(frame));
    }

    async fn handle_text(&self, text: &str) {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return self.reply(error_frame("bad_json", &format!("invalid JSON frame: {e}")));
            }
        };
        let channel = match frame.kind.as_str() {
            "ping" => return self.reply(Bytes::from_static(br#"{"type":"pong"}"#)),
            "subscribe" | "unsubscribe" | "publish" => {
                match frame.channel.as_deref().map(ChannelName::parse) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        return self
                            .reply(error_frame("bad_channel", &format!("invalid channel: {e}")));
                    }
                    None => return self.reply(error_frame("bad_request", "missing \"channel\"")),
                }
            }
            other => {
                return self.reply(error_frame(
                    "unknown_type",
                    &format!("unknown frame type {other:?}: expected subscribe, unsubscribe, publish or ping"),
                ));
            }
        };
        match frame.kind.as_str() {
            "subscribe" => {
                if !self.grants.may_subscribe(&channel) {
                    return self.reply(error_frame(
                        "forbidden",
                        &format!("channel {channel} is not granted on this route"),
                    ));
                }
                let since = match frame
                    .since
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(cursor::decode_one)
                {
                    None => None,
                    Some(Ok(p)) => Some(p),
                    Some(Err(e)) => {
                        return self.reply(error_frame("bad_id", &format!("invalid since: {e}")));
                    }
                };
                let mut session = lock(&self.session);
                if session.channels.len() >= super::MAX_CHANNELS_PER_CONNECTION
                    && !session.channels.contains(&channel)
                {
                    drop(session);
                    return self.reply(error_frame(
                        "too_many_channels",
                        "channel limit per connection reached",
                    ));
                }
                session.subscribe(channel, since);
            }
            "unsubscribe" => {
                let mut session = lock(&self.session);
                if session.unsubscribe(&channel) {
                    session
                        .queue
                        .push(Item::Reply(unsubscribed_frame(&channel)));
                } else {
                    drop(session);
                    self.reply(error_frame(
                        "not_subscribed",
                        &format!("not subscribed to {channel}"),
                    ));
                }
            }
            _ => self.publish(channel, frame).await,
        }
    }

    async fn publish(&self, channel: ChannelName, frame: ClientFrame) {
        if !self.grants.may_publish(&channel) {
            let why = if self.grants.publish_enabled() {
                format!("publishing to {channel} is not allowed on this route")
            } else {
                "client publish is disabled on this route".to_owned()
            };
            return self.reply(error_frame("forbidden", &why));
        }
        let Some(data) = frame.data else {
            return self.reply(error_frame("bad_request", "missing \"data\""));
        };
        let event = match frame.event.as_deref().map(EventName::parse) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                return self.reply(error_frame("bad_event", &format!("invalid event: {e}")));
            }
        };
        let publication = Publication {
            channel: channel.clone(),
            event,
            payload: MessagePayload::from_json(&data),
            idempotency_key: None,
            accepted_at: Instant::now(),
        };
        match self.realtime.backplane.publish(vec![publication]).await {
            Ok(receipts) => {
                if let Some(r) = receipts.first() {
                    let reply = serde_json::json!({
                        "type": "published",
                        "channel": r.channel.as_str(),
                        "id": cursor::encode_one(r.position),
                    });
                    self.reply(Bytes::from(reply.to_string()));
                }
            }
            Err(e) => self.reply(error_frame("unavailable", &e.to_string())),
        }
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    event: Option<String>,
}

fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

fn quoted(out: &mut BytesMut, s: &str) {
    // Channel and event names and ids are ASCII without quotes or
    // backslashes (validated), but quote properly anyway.
    out.put_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

/// `{"type":"message","channel":C,"id":ID,"event":E,"data":D}`
pub fn message_frame(m: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(m.payload.json().len() + 96);
    out.put_slice(br#"{"type":"message","channel":"#);
    quoted(&mut out, m.channel.as_str());
    out.put_slice(br#","id":""#);
    cursor_into(&mut out, m.position);
    out.put_u8(b'"');
    if let Some(event) = &m.event {
        out.put_slice(br#","event":"#);
        quoted(&mut out, event.as_str());
    }
    out.put_slice(br#","data":"#);
    out.put_slice(m.payload.json());
    out.put_u8(b'}');
    out.freeze()
}

fn cursor_into(out: &mut BytesMut, position: Position) {
    let mut s = String::with_capacity(16);
    cursor::push_one(&mut s, position);
    out.put_slice(s.as_bytes());
}

fn subscribed_frame(channel: &ChannelName, position: Position) -> Bytes {
    let v = serde_json::json!({"type": "subscribed", "channel": channel.as_str(), "id": cursor::encode_one(position)});
    Bytes::from(v.to_string())
}

fn unsubscribed_frame(channel: &ChannelName) -> Bytes {
    Bytes::from(
        serde_json::json!({"type": "unsubscribed", "channel": channel.as_str()}).to_string(),
    )
}

fn gap_frame(channel: &ChannelName) -> Bytes {
    Bytes::from(serde_json::json!({"type": "gap", "channel": channel.as_str()}).to_string())
}

fn error_frame(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"type": "error", "code": code, "message": message}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_is_the_spec_json() {
        let m = Message::new(
            ChannelName::parse("news").unwrap(),
            Position { epoch: 35, seq: 36 },
            Some(EventName::parse("update").unwrap()),
            MessagePayload::from_json(&serde_json::json!({"a": 1})),
            Instant::now(),
        );
        let v: serde_json::Value = serde_json::from_slice(&message_frame(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"news","id":"z-10","event":"update","data":{"a":1}})
        );
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn close_codes_match_the_spec() {
        assert_eq!(
            [
                CLOSE_SHUTDOWN,
                CLOSE_PROTOCOL,
                CLOSE_BAD_DATA,
                CLOSE_TOO_BIG,
                CLOSE_LAGGED
            ],
            [1001, 1002, 1007, 1009, 1013]
        );
    }
}
