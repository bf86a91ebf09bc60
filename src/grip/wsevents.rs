//! WebSocket-over-HTTP (Pushpin's `application/websocket-events`) for
//! routes with `ws_events: true`: pushgate keeps the client's WebSocket
//! and talks to a stateless backend in HTTP POSTs, one batch of events
//! per request.
//!
//! * Events: `OPEN`, `TEXT`, `BINARY`, `PING`, `PONG`, `CLOSE` (2-byte
//!   code), `DISCONNECT`; framing `NAME HEXLEN\r\nPAYLOAD\r\n`, or
//!   `NAME\r\n` without content.
//! * The handshake is accepted only when the backend answers the first
//!   request (`OPEN`) with `OPEN`; its other status codes reach the client.
//! * Every request carries the handshake's headers (client `Meta-*`
//!   removed), `Connection-Id`, the `Meta-*` the backend set with
//!   `Set-Meta-*`, and a fresh `Grip-Sig` when the upstream has a key.
//!   `Keep-Alive-Interval: N` asks for a request every N seconds.
//! * `TEXT` events starting with `c:` are control messages:
//!   `{"type":"subscribe"|"unsubscribe","channel":C}` and `detach` (no more
//!   requests; published messages still reach the client).
//! * When the `OPEN` answer carries `Sec-WebSocket-Extensions: grip`
//!   (Pushpin's GRIP extension), `TEXT` and `BINARY` events must start with
//!   the message prefix (`m:`, or the `message-prefix` parameter, which may
//!   be empty): it is removed, and an event without it is dropped. Without
//!   the extension they reach the client unchanged.
//! * `ws-message` items published to a subscribed channel are written to
//!   the client; `action: close` closes it with `code`/`reason`.
//!
//! One request is in flight at a time; what arrives meanwhile waits in
//! bounded places (the hub queue, the socket). Shutdown closes with 1001.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tracing::debug;

use super::hold::Holds;
use super::sig::Signer;
use crate::error::{Body, ErrorCode, HttpError};
use crate::hub::grip::{WsMessage, WsType};
use crate::hub::message::ChannelName;
use crate::hub::queue::{Item, Queue};

/// The content type of both directions.
pub const CONTENT_TYPE: &str = "application/websocket-events";
/// The largest backend answer read.
const MAX_ANSWER: usize = 1 << 20;
/// Shortest `Keep-Alive-Interval` honoured.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// One event of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub name: Box<str>,
    pub content: Option<Bytes>,
}

impl Event {
    fn new(name: &str, content: Option<Bytes>) -> Self {
        Self {
            name: name.into(),
            content,
        }
    }
}

/// `NAME HEXLEN\r\nPAYLOAD\r\n` for each event, `NAME\r\n` without content.
pub fn encode(events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    for e in events {
        out.put_slice(e.name.as_bytes());
        match &e.content {
            Some(c) => {
                out.put_slice(format!(" {:X}\r\n", c.len()).as_bytes());
                out.put_slice(c);
                out.put_slice(b"\r\n");
            }
            None => out.put_slice(b"\r\n"),
        }
    }
    out.freeze()
}

/// Parses a backend's events; an error is the backend's fault.
pub fn decode(mut body: &[u8]) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("event line without CRLF")?;
        let line = std::str::from_utf8(&body[..line_end]).map_err(|_| "event line is not UTF-8")?;
        body = &body[line_end + 2..];
        let (name, content) = match line.split_once(' ') {
            None => (line, None),
            Some((name, len)) => {
                let len = usize::from_str_radix(len.trim(), 16)
                    .map_err(|_| format!("bad length in event line {line:?}"))?;
                if body.len() < len + 2 || &body[len..len + 2] != b"\r\n" {
                    return Err(format!("event {name} is shorter than its length"));
                }
                let content = Bytes::copy_from_slice(&body[..len]);
                body = &body[len + 2..];
                (name, Some(content))
            }
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("bad event name {name:?}"));
        }
        out.push(Event::new(name, content));
    }
    Ok(out)
}

/// Where and how to send a connection's requests.
pub struct Backend {
    pub client: Client<HttpConnector, Body>,
    pub uri: Uri,
    /// The handshake's headers, cleaned (see the module docs).
    pub headers: HeaderMap,
    pub signer: Option<Signer>,
    pub timeout: Duration,
    pub upstream: String,
}

/// What a backend answer asks for.
#[derive(Debug, Default)]
struct Answer {
    events: Vec<Event>,
    set_meta: Vec<(String, String)>,
    keep_alive: Option<Duration>,
    /// The message prefix, when the answer negotiates the grip extension.
    grip_prefix: Option<Bytes>,
}

/// Connection state that outlives one request.
struct Link {
    backend: Backend,
    connection_id: String,
    meta: BTreeMap<String, String>,
}

impl Link {
    async fn post(&mut self, events: &[Event]) -> Result<Answer, String> {
        let mut request = Request::new(crate::error::full(encode(events)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.backend.uri.clone();
        let headers = request.headers_mut();
        *headers = self.backend.headers.clone();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::ACCEPT, HeaderValue::from_static(CONTENT_TYPE));
        if let Ok(v) = HeaderValue::from_str(&self.connection_id) {
            headers.insert("connection-id", v);
        }
        for (k, v) in &self.meta {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(format!("meta-{k}").as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        if let Some(signer) = &self.backend.signer {
            signer.sign(headers);
        }
        let sent = tokio::time::timeout(self.backend.timeout, self.backend.client.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.backend.timeout))?
            .map_err(|e| format!("request failed: {}", crate::error::error_chain(&e)))?;
        let (parts, body) = sent.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| "answer unreadable or larger than 1 MiB".to_owned())?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(format!("answered {}", parts.status));
        }
        let mut answer = Answer {
            events: decode(&body)?,
            ..Answer::default()
        };
        for (name, value) in &parts.headers {
            if let Some(key) = name.as_str().strip_prefix("set-meta-")
                && let Ok(v) = value.to_str()
            {
                answer.set_meta.push((key.to_owned(), v.to_owned()));
            }
        }
        answer.keep_alive = parts
            .headers
            .get("keep-alive-interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).max(MIN_KEEP_ALIVE));
        answer.grip_prefix = grip_message_prefix(&parts.headers);
        for (k, v) in &answer.set_meta {
            if v.is_empty() {
                self.meta.remove(k);
            } else {
                self.meta.insert(k.clone(), v.clone());
            }
        }
        Ok(answer)
    }
}

/// The message prefix of the `grip` WebSocket extension in `headers`
/// (`Sec-WebSocket-Extensions: grip; message-prefix="..."`), `m:` when the
/// parameter is absent; `None` without the extension or when its
/// parameters do not parse (Pushpin ignores it then too).
fn grip_message_prefix(headers: &HeaderMap) -> Option<Bytes> {
    headers
        .get_all("sec-websocket-extensions")
        .iter()
        .flat_map(|v| split_unquoted(v.as_bytes(), b','))
        .find_map(|ext| {
            let mut parts = split_unquoted(ext, b';').into_iter();
            if !parts.next()?.trim_ascii().eq_ignore_ascii_case(b"grip") {
                return None;
            }
            let mut prefix = Bytes::from_static(b"m:");
            for param in parts {
                let (key, value) = match param.iter().position(|&b| b == b'=') {
                    Some(i) => (&param[..i], param_value(&param[i + 1..])?),
                    None => (param, Vec::new()),
                };
                if key.trim_ascii().eq_ignore_ascii_case(b"message-prefix") {
                    prefix = Bytes::from(value);
                }
            }
            Some(prefix)
        })
}

/// `s` split at each `sep` that is not inside double quotes.
fn split_unquoted(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A parameter value: a token, or a quoted string with `\` escapes.
fn param_value(raw: &[u8]) -> Option<Vec<u8>> {
    let raw = raw.trim_ascii();
    let Some(inner) = raw.strip_prefix(b"\"") else {
        return Some(raw.to_vec());
    };
    let (mut out, mut bytes) = (Vec::new(), inner.iter());
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => return bytes.all(u8::is_ascii_whitespace).then_some(out),
            _ => out.push(b),
        }
    }
    None
}

/// A WebSocket handshake that a `ws_events` route turns into events.
pub fn is_upgrade(request: &Request<Incoming>) -> bool {
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Removes what must not reach the backend from the handshake's headers.
pub fn clean_headers(headers: &mut HeaderMap) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("meta-") || k.starts_with("sec-websocket-")
        })
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(crate::grip::sig::GRIP_SIG);
}

/// Answers a WebSocket handshake on a `ws_events` route: `OPEN` to the
/// backend first, then the 101 and the connection's task.
pub async fn open(
    holds: &Holds,
    backend: Backend,
    mut request: Request<Incoming>,
    slot: Arc<crate::listener::ConnSlot>,
) -> Response<Body> {
    let (response, upgrade) = match crate::realtime::ws::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => return e.into_response(),
    };
    let upstream = backend.upstream.clone();
    let mut link = Link {
        backend,
        connection_id: connection_id(),
        meta: BTreeMap::new(),
    };
    let first = match link.post(&[Event::new("OPEN", None)]).await {
        Ok(answer) if answer.events.first().is_some_and(|e| &*e.name == "OPEN") => answer,
        Ok(_) => {
            return HttpError::new(
                ErrorCode::WebsocketRefused,
                format!("upstream {upstream} did not accept the WebSocket (no OPEN)"),
            )
            .into_response();
        }
        Err(reason) => {
            debug!(upstream, %reason, "WebSocket-over-HTTP OPEN failed.");
            return HttpError::new(
                ErrorCode::WebsocketOpenFailed,
                format!("upstream {upstream} refused the WebSocket: {reason}"),
            )
            .into_response();
        }
    };
    let queue = Queue::new_grip(holds.queue, holds.on_lag);
    let session = Session {
        hub: holds.hub.clone(),
        queue,
        channels: Vec::new(),
        message_prefix: first.grip_prefix.clone(),
    };
    let token = holds.shutdown.token.clone();
    holds.shutdown.tracker.spawn(async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(error) => {
                debug!(%error, "WebSocket upgrade did not complete.");
                return;
            }
        };
        // The upgraded socket keeps counting against max_connections.
        let _slot = slot;
        run(ws, link, session, first, token).await;
    });
    response.map(|_| crate::error::empty())
}

fn connection_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("pg-{:016x}", h.finish())
}

/// The connection's hub subscriptions; unsubscribed when dropped.
struct Session {
    hub: Arc<crate::hub::Hub>,
    queue: Arc<Queue>,
    channels: Vec<ChannelName>,
    /// The grip extension's message prefix, when the `OPEN` answer
    /// negotiated it.
    message_prefix: Option<Bytes>,
}

impl Session {
    fn subscribe(&mut self, name: ChannelName) {
        if !self.channels.contains(&name) {
            self.hub.subscribe(&self.queue, &name, None);
            self.channels.push(name);
        }
    }

    fn unsubscribe(&mut self, name: &ChannelName) {
        if let Some(i) = self.channels.iter().position(|c| c == name) {
            self.hub.unsubscribe(&self.queue, name);
            self.channels.remove(i);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in &self.channels {
            self.hub.unsubscribe(&self.queue, c);
        }
    }
}

/// A client frame, as the reader task hands it over.
enum FromClient {
    Message(OpCode, Bytes),
    Close(Bytes),
    Gone,
}

/// What the connection does next.
enum Flow {
    Continue,
    /// Write a close frame (code, reason) and end.
    Close(u16, Bytes),
    /// End without a close frame.
    Drop,
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

async fn run(
    ws: fastwebsockets::WebSocket<Io>,
    mut link: Link,
    mut session: Session,
    first: Answer,
    token: tokio_util::sync::CancellationToken,
) {
    let (read, mut write) = ws.split(tokio::io::split);
    let (tx, mut rx) = mpsc::channel(8);
    let reader = tokio::spawn(read_frames(read, tx));
    let mut detached = false;
    let mut keep_alive = first.keep_alive;
    let mut flow = apply(first, &mut session, &mut write, &mut detached).await;
    let mut items = VecDeque::new();
    let mut next_keep_alive = keep_alive.map(|k| tokio::time::Instant::now() + k);
    while matches!(flow, Flow::Continue) {
        let timer = async {
            match next_keep_alive {
                Some(at) if !detached => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let mut events = Vec::new();
        tokio::select! {
            biased;
            _ = token.cancelled() => {
                flow = Flow::Close(1001, Bytes::from_static(b"shutdown"));
            }
            _ = session.queue.ready() => {
                if session.queue.drain(&mut items).is_err() {
                    flow = Flow::Close(1013, Bytes::from_static(b"lagged"));
                }
                if let Some(ended) = send_items(&mut items, &mut write).await {
                    flow = ended;
                }
            }
            received = rx.recv() => match received.unwrap_or(FromClient::Gone) {
                FromClient::Message(OpCode::Text, b) => events.push(Event::new("TEXT", Some(b))),
                FromClient::Message(OpCode::Binary, b) => events.push(Event::new("BINARY", Some(b))),
                FromClient::Message(OpCode::Ping, b) => {
                    let _ = write.write_frame(Frame::pong(Payload::Bytes(BytesMut::from(&b[..])))).await;
                    events.push(Event::new("PING", (!b.is_empty()).then_some(b)));
                }
                FromClient::Message(OpCode::Pong, b) => {
                    events.push(Event::new("PONG", (!b.is_empty()).then_some(b)));
                }
                FromClient::Message(_, _) => {}
                FromClient::Close(payload) => {
                    let code = payload.get(..2).map_or(1000, |c| u16::from_be_bytes([c[0], c[1]]));
                    if !detached {
                        let _ = link.post(&[Event::new("CLOSE", Some(Bytes::copy_from_slice(&code.to_be_bytes())))]).await;
                    }
                    flow = Flow::Close(code, Bytes::new());
                }
                FromClient::Gone => {
                    if !detached {
                        let _ = link.post(&[Event::new("DISCONNECT", None)]).await;
                    }
                    flow = Flow::Drop;
                }
            },
            _ = timer => {
                // A request without events: the backend asked to be polled.
                match link.post(&[]).await {
                    Ok(answer) => {
                        keep_alive = answer.keep_alive.or(keep_alive);
                        flow = apply(answer, &mut session, &mut write, &mut detached).await;
                    }
                    Err(_) => flow = Flow::Close(1011, Bytes::new()),
                }
                next_keep_alive = keep_alive.map(|k| tokio::time::Instant::now() + k);
            }
        }
        if !events.is_empty() && !detached && matches!(flow, Flow::Continue) {
            match link.post(&events).await {
                Ok(answer) => {
                    if answer.keep_alive.is_some() {
                        keep_alive = answer.keep_alive;
                    }
                    next_keep_alive = keep_alive.map(|k| tokio::time::Instant::now() + k);
                    flow = apply(answer, &mut session, &mut write, &mut detached).await;
                }
                Err(reason) => {
                    debug!(%reason, "WebSocket-over-HTTP request failed; closing.");
                    flow = Flow::Close(1011, Bytes::new());
                }
            }
        }
    }
    if let Flow::Close(code, reason) = flow {
        let _ = write.write_frame(Frame::close(code, &reason)).await;
    }
    reader.abort();
}

/// Writes the published WebSocket messages among `items` (GRIP
/// `ws-message` formats) to the client, in order; stops at a published
/// close or a failed write and says so.
async fn send_items(
    items: &mut VecDeque<Item>,
    write: &mut fastwebsockets::WebSocketWrite<tokio::io::WriteHalf<Io>>,
) -> Option<Flow> {
    while let Some(item) = items.pop_front() {
        let Item::Message(m) = item else { continue };
        let Some(msg) = m.payload.grip().and_then(|f| f.ws_message.as_ref()) else {
            continue;
        };
        match msg {
            WsMessage::Send { kind, content } => {
                if write.write_frame(frame(*kind, content)).await.is_err() {
                    return Some(Flow::Drop);
                }
            }
            WsMessage::Close { code, reason } => {
                return Some(Flow::Close(code.unwrap_or(1000), reason.clone()));
            }
        }
    }
    None
}

async fn read_frames(
    read: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Io>>,
    tx: mpsc::Sender<FromClient>,
) {
    let mut read = read;
    // Pongs and closes are written by the connection itself.
    read.set_auto_pong(false);
    read.set_auto_close(false);
    read.set_max_message_size(MAX_ANSWER);
    let mut read = fastwebsockets::FragmentCollectorRead::new(read);
    let mut no_obligated_send = |_| async { Ok::<(), WebSocketError>(()) };
    loop {
        let frame = match read.read_frame(&mut no_obligated_send).await {
            Ok(frame) => frame,
            Err(_) => {
                let _ = tx.send(FromClient::Gone).await;
                return;
            }
        };
        let payload = Bytes::copy_from_slice(&frame.payload);
        let message = if frame.opcode == OpCode::Close {
            FromClient::Close(payload)
        } else {
            FromClient::Message(frame.opcode, payload)
        };
        let closing = matches!(message, FromClient::Close(_));
        if tx.send(message).await.is_err() || closing {
            return;
        }
    }
}

fn frame(kind: WsType, content: &Bytes) -> Frame<'static> {
    let payload = Payload::Bytes(BytesMut::from(&content[..]));
    match kind {
        WsType::Text => Frame::text(payload),
        WsType::Binary => Frame::binary(payload),
        WsType::Ping => Frame::new(true, OpCode::Ping, None, payload),
        WsType::Pong => Frame::pong(payload),
    }
}

/// Carries out a backend answer: frames to the client, control messages.
async fn apply(
    answer: Answer,
    session: &mut Session,
    write: &mut fastwebsockets::WebSocketWrite<tokio::io::WriteHalf<Io>>,
    detached: &mut bool,
) -> Flow {
    for event in answer.events {
        let content = event.content.unwrap_or_default();
        let written = match &*event.name {
            "TEXT" if content.starts_with(b"c:") => {
                control_message(&content[2..], session, detached);
                continue;
            }
            name @ ("TEXT" | "BINARY") => {
                let kind = if name == "TEXT" {
                    WsType::Text
                } else {
                    WsType::Binary
                };
                let content = match &session.message_prefix {
                    None => content,
                    Some(prefix) if content.starts_with(prefix) => content.slice(prefix.len()..),
                    Some(_) => {
                        debug!("Dropping a WebSocket-over-HTTP message without the grip prefix.");
                        continue;
                    }
                };
                write.write_frame(frame(kind, &content)).await
            }
            "PING" => write.write_frame(frame(WsType::Ping, &content)).await,
            "PONG" => write.write_frame(frame(WsType::Pong, &content)).await,
            "CLOSE" => {
                let code = content
                    .get(..2)
                    .map_or(1000, |c| u16::from_be_bytes([c[0], c[1]]));
                return Flow::Close(code, content.slice(content.len().min(2)..));
            }
            "DISCONNECT" => return Flow::Drop,
            _ => continue,
        };
        if written.is_err() {
            return Flow::Drop;
        }
    }
    Flow::Continue
}

fn control_message(json: &[u8], session: &mut Session, detached: &mut bool) {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(json) else {
        debug!("Ignoring a malformed WebSocket-over-HTTP control message.");
        return;
    };
    let channel = m
        .get("channel")
        .and_then(|c| c.as_str())
        .and_then(|c| ChannelName::parse(c).ok());
    match (m.get("type").and_then(|t| t.as_str()), channel) {
        (Some("subscribe"), Some(c)) => session.subscribe(c),
        (Some("unsubscribe"), Some(c)) => session.unsubscribe(&c),
        (Some("detach"), _) => *detached = true,
        _ => debug!("Ignoring an unknown WebSocket-over-HTTP control message."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_in_pushpins_framing() {
        let events = vec![
            Event::new("OPEN", None),
            Event::new("TEXT", Some(Bytes::from_static(b"hello world"))),
            Event::new("CLOSE", Some(Bytes::from_static(&[0x03, 0xe8]))),
        ];
        let wire = encode(&events);
        assert_eq!(
            &wire[..],
            b"OPEN\r\nTEXT B\r\nhello world\r\nCLOSE 2\r\n\x03\xe8\r\n"
        );
        assert_eq!(decode(&wire).unwrap(), events);
        assert!(decode(b"TEXT 5\r\nab\r\n").is_err());
        assert!(decode(b"TEXT").is_err());
        assert!(decode(b"text\r\n").is_err());
    }
}
