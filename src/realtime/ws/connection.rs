//! One WebSocket connection's task: the split reader and writer, the
//! loop over peer frames, deliveries, pings and timers, the client
//! protocol's requests (subscribe, publish, auth) and the close handshake.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncWriteExt, ReadHalf};
use tracing::debug;

use super::encode::{WsEncoder, frame_bytes, text_frame};
use super::protocol::{ClientFrame, error_json, parse_client_frame, unsubscribed_json};
use super::{
    CLOSE_BAD_DATA, CLOSE_LAGGED, CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL, CLOSE_SHUTDOWN, CLOSE_TOO_BIG,
};
use crate::auth::{self, Access, Denial, FIRST_FRAME_TIMEOUT, Reason};
use crate::config::OnExpiry;
use crate::error::ErrorCode;
use crate::hub::message::{ChannelName, Position};
use crate::hub::queue::{Closed, Item};
use crate::limits::PublishBudget;
use crate::listener::{ConnSlot, RawIo};
use crate::publish::{self, Content};
use crate::realtime::negotiate::Transport;
use crate::realtime::{Coalesce, Grants, Plan, Realtime, Session, cursor, send, send_within};

/// Opens the session and runs the connection in a task of its own, so an
/// idle connection keeps only [`Connection`]'s loop state and the socket,
/// nothing of the request that opened it.
pub(super) fn run<S: RawIo>(
    realtime: Arc<Realtime>,
    io: S,
    plan: Plan,
    slot: Arc<ConnSlot>,
    greeting: Option<Bytes>,
) {
    let settings = plan.settings;
    let tracker = realtime.shutdown.tracker.clone();
    let (channels, since, pending, expires) = match plan.access {
        Access::Denied(denial) => {
            plan.grants.count_failure(&realtime.metrics, &denial);
            tracker.spawn(refuse(io, greeting, denial));
            return;
        }
        // Nothing is subscribed until the `auth` frame.
        Access::AwaitFrame => (
            Vec::new(),
            None,
            Some(Box::new((plan.channels, plan.since))),
            Some(tokio::time::Instant::now() + FIRST_FRAME_TIMEOUT),
        ),
        _ => (plan.channels, plan.since, None, plan.grants.expiry()),
    };
    let mut session = realtime.open(
        Transport::Websocket,
        channels,
        since,
        &settings,
        settings.on_lag,
    );
    session.hold(plan.permit);
    if pending.is_none() {
        realtime.track(
            &mut session,
            Transport::Websocket,
            settings.presence,
            &plan.grants,
        );
    }
    let grants = plan.grants;
    let connection = Connection {
        budget: None,
        realtime,
        session,
        grants,
        max_message: settings.max_message,
        heartbeat: settings.heartbeat,
        pong_timeout: settings.pong_timeout,
        partial: None,
        expires,
        pending,
        presence: settings.presence,
        _slot: slot,
    };
    tracker.spawn(connection.run(io, greeting));
}

/// Accepts the upgrade (a browser cannot read a refused handshake), then
/// sends the `error` frame and closes `1008`.
async fn refuse<S: RawIo>(io: S, greeting: Option<Bytes>, denial: Denial) {
    let (mut read, mut write) = tokio::io::split(io);
    let mut frames = Coalesce::default();
    if let Some(greeting) = greeting {
        frames.push(greeting);
    }
    frames.push(text_frame(&error_json(
        denial.reason.code(),
        &denial.message,
    )));
    frames.push(frame_bytes(Frame::close(CLOSE_NOT_ALLOWED, b"not allowed")));
    let _ = send(&mut write, &frames.finish()).await;
    // Let the peer read the close before the socket goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

type Reader<S> = WebSocketRead<ReadHalf<S>>;

/// A frame read from the peer, owning its payload.
struct Received {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

/// Reads one frame, taking the reader along so the future can be kept
/// (not cancelled) across loop iterations and handed back when done. An
/// `async` block: an `async fn` would keep the reader twice.
#[allow(clippy::manual_async_fn)] // see above: not an `async fn` on purpose
fn next_frame<S: RawIo>(
    mut reader: Reader<S>,
) -> impl Future<Output = (Reader<S>, Result<Received, WebSocketError>)> + Send {
    async move {
        // Pongs and closes are written by the connection; nothing is obligated.
        let mut no_obligated_send = |_| async { Ok::<(), WebSocketError>(()) };
        let result = reader
            .read_frame(&mut no_obligated_send)
            .await
            .map(|frame| Received {
                fin: frame.fin,
                opcode: frame.opcode,
                payload: match frame.payload {
                    Payload::Bytes(bytes) => bytes,
                    other => BytesMut::from(&other[..]),
                },
            });
        (reader, result)
    }
}

/// Channels and resume positions waiting for the `auth` frame.
type Pending = (Vec<ChannelName>, Option<Vec<Position>>);

/// What woke a connection's loop.
enum Woke {
    Shutdown,
    Frame(Result<Received, WebSocketError>),
    Queue,
    Timer,
}

/// What the connection does after a frame from the peer.
enum Next {
    Continue,
    Pong(BytesMut),
    /// The server closes with this code and reason (`None`: the socket
    /// is gone, nothing to send).
    Close(Option<(u16, &'static str)>),
    /// The peer sent Close: answer it with this code and reason (1000, or
    /// 1002/1007 for a bad Close body) and close TCP without waiting.
    PeerClosed((u16, &'static str)),
    /// An `error` frame (JSON), then close `1008`.
    Refuse(Bytes),
}

/// How long a server-started close waits for the peer's Close frame
/// (RFC 6455 §7.1.1) before closing TCP anyway.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

struct Connection {
    realtime: Arc<Realtime>,
    session: Session,
    grants: Grants,
    max_message: usize,
    heartbeat: Duration,
    pong_timeout: Duration,
    /// A fragmented message being reassembled.
    /// Boxed, like `pending` and `budget`: rare, and every idle
    /// connection would otherwise keep room for them.
    partial: Option<Box<Partial>>,
    /// When the token expires (or, before the `auth` frame, its deadline).
    expires: Option<tokio::time::Instant>,
    /// Channels and resume positions waiting for the `auth` frame.
    pending: Option<Box<Pending>>,
    /// The client publish budget, from the first publish on.
    budget: Option<Box<PublishBudget>>,
    presence: crate::config::PresenceSettings,
    _slot: Arc<ConnSlot>,
}

impl Connection {
    /// `greeting`: bytes to send before anything else (the handshake
    /// response when it is ours to write).
    ///
    /// This future is what an idle connection costs, so it holds each
    /// thing once: an `async` block, not an `async fn` (whose state keeps a
    /// second copy of its arguments: rust-lang/rust#62958), the socket split
    /// before it (a moved-from capture keeps its room), settings read from
    /// `self` rather than copied, and no write timer until a write stalls
    /// (`send_within`).
    fn run<S: RawIo>(
        mut self,
        io: S,
        mut greeting: Option<Bytes>,
    ) -> impl Future<Output = ()> + Send {
        let (read, mut write) = tokio::io::split(io);
        async move {
            // A pointer, not a copy of the shutdown handle: `cancelled`
            // borrows it while `self` is used mutably.
            let realtime = self.realtime.clone();
            let mut turn = None;

            // Futures kept across iterations: registering with the shutdown
            // token and the timer wheel once, not once per delivery.
            let mut read = pin!({
                let (mut reader, _) =
                    fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
                reader.set_auto_close(false);
                reader.set_auto_pong(false);
                reader.set_max_message_size(self.max_message.max(125));
                next_frame(reader)
            });
            let mut cancelled = pin!(realtime.shutdown.turn(&mut turn));
            let mut next_ping = tokio::time::Instant::now() + self.heartbeat;
            let mut last_seen = tokio::time::Instant::now();
            let mut timer = pin!(tokio::time::sleep_until(
                self.expires.map_or(next_ping, |e| e.min(next_ping))
            ));

            // (code, reason, whether the server started the close), and
            // an `error` frame to send before it
            let (close, last_words) = loop {
                // In a block: nothing of a write is kept while idle.
                let lagged = {
                    let (out, lagged) = {
                        let mut frames = WsEncoder(Coalesce::default());
                        if let Some(greeting) = greeting.take() {
                            frames.0.push(greeting);
                        }
                        let drained = self.session.deliver(&self.realtime.metrics, &mut frames);
                        (frames.0.finish(), drained == Err(Closed::Lagged))
                    };
                    // A peer that takes none of a write for `pong_timeout` is not
                    // reading: drop it, or it would hold its task, socket and queue
                    // forever and on_lag could never close it.
                    if !out.is_empty()
                        && send_within(&mut write, &out, self.pong_timeout)
                            .await
                            .is_err()
                    {
                        debug!(
                            "WebSocket peer not reading (write stalled past pong_timeout); dropping it."
                        );
                        break (None, None);
                    }
                    lagged
                };
                if lagged {
                    break (Some((CLOSE_LAGGED, "lagged", true)), None);
                }
                // What woke the loop, with no await in the select's arms:
                // an arm that awaits keeps the select's output (the reader
                // and a frame) in every idle connection's state.
                let frame = {
                    let woke = tokio::select! {
                        biased;
                        _ = &mut cancelled => Woke::Shutdown,
                        (reader, frame) = &mut read => {
                            // Not polled before the next select: nothing is
                            // read while this frame is handled.
                            read.set(next_frame(reader));
                            Woke::Frame(frame)
                        }
                        _ = self.session.queue.ready() => Woke::Queue,
                        _ = &mut timer => Woke::Timer,
                    };
                    match woke {
                        Woke::Shutdown => break (Some((CLOSE_SHUTDOWN, "shutdown", true)), None),
                        Woke::Frame(frame) => frame,
                        Woke::Queue => continue,
                        Woke::Timer => {
                            let now = tokio::time::Instant::now();
                            if self.expires.is_some_and(|e| now >= e) {
                                if self.pending.is_some() {
                                    let d = Denial::from(Reason::Missing);
                                    self.grants.count_failure(&self.realtime.metrics, &d);
                                    let json =
                                        error_json(d.reason.code(), "no auth frame within 5s");
                                    break (
                                        Some((CLOSE_NOT_ALLOWED, "auth timeout", true)),
                                        Some(json),
                                    );
                                }
                                break (Some((CLOSE_NOT_ALLOWED, "token expired", true)), None);
                            }
                            if now >= last_seen + self.pong_timeout {
                                debug!("WebSocket peer silent past pong_timeout; closing.");
                                break (Some((CLOSE_SHUTDOWN, "pong timeout", true)), None);
                            }
                            let ping = now >= next_ping;
                            if ping {
                                next_ping = now + self.heartbeat;
                            }
                            // Re-armed here only: the peer's frames move `last_seen`
                            // later, which this check sees when the timer fires.
                            let at = next_ping.min(last_seen + self.pong_timeout);
                            timer.as_mut().reset(self.expires.map_or(at, |e| e.min(at)));
                            if ping {
                                let ping = frame_bytes(Frame::new(
                                    true,
                                    OpCode::Ping,
                                    None,
                                    Payload::Borrowed(&[]),
                                ));
                                if send_within(&mut write, &ping, self.pong_timeout)
                                    .await
                                    .is_err()
                                {
                                    break (None, None);
                                }
                            }
                            continue;
                        }
                    }
                };
                last_seen = tokio::time::Instant::now();
                let pong = {
                    // Boxed: a frame from the peer is rare next to deliveries,
                    // and its handling (client publish) would otherwise
                    // widen every idle connection's state.
                    let next = Box::pin(self.received(frame)).await;
                    // An `auth` or `refresh` frame may bring expiry closer.
                    if let Some(e) = self.expires
                        && e < timer.deadline()
                    {
                        timer.as_mut().reset(e);
                    }
                    match next {
                        Next::Refuse(json) => {
                            break (Some((CLOSE_NOT_ALLOWED, "not allowed", true)), Some(json));
                        }
                        Next::Continue => continue,
                        Next::Pong(payload) => frame_bytes(Frame::pong(Payload::Bytes(payload))),
                        Next::Close(close) => break (close.map(|(c, r)| (c, r, true)), None),
                        Next::PeerClosed((code, reason)) => {
                            break (Some((code, reason, false)), None);
                        }
                    }
                };
                // Bounded like deliveries: a ping flood from a peer that
                // reads no pongs cannot park us here.
                if send_within(&mut write, &pong, self.pong_timeout)
                    .await
                    .is_err()
                {
                    break (None, None);
                }
            };
            if let Some(t) = &mut self.session.tracker {
                t.set_reason(match close {
                    None => "closed",
                    Some((_, _, false)) => "client",
                    Some((_, "shutdown", _)) => "shutdown",
                    Some((_, "lagged", _)) => "lagged",
                    Some((_, "token expired", _)) => "expired",
                    Some((_, "pong timeout", _)) => "timeout",
                    Some(_) => "closed",
                });
            }
            // The last frames go out in one write, bounded like the others.
            let Some((code, reason, server_started)) = close else {
                if let Some(json) = last_words {
                    let _ = send_within(&mut write, &text_frame(&json), self.pong_timeout).await;
                }
                return;
            };
            let last = {
                let mut frames = Coalesce::default();
                if let Some(json) = last_words {
                    frames.push(text_frame(&json));
                }
                frames.push(frame_bytes(Frame::close(code, reason.as_bytes())));
                frames.finish()
            };
            if send_within(&mut write, &last, self.pong_timeout)
                .await
                .is_err()
            {
                return;
            }
            if server_started {
                // RFC 6455 §7.1.1: read (and discard) until the peer's Close,
                // then close TCP. Closing with the peer's frames still unread
                // makes the kernel send RST, which loses our close frame.
                // Boxed: only a closing connection needs this state.
                let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    loop {
                        let (reader, frame) = (&mut read).await;
                        match frame {
                            Ok(f) if f.opcode == OpCode::Close => return,
                            // The reader skips the rest of a refused frame.
                            Ok(_) | Err(WebSocketError::FrameTooLarge) => {
                                read.set(next_frame(reader));
                            }
                            Err(_) => return,
                        }
                    }
                }))
                .await;
            }
            let _ = write.shutdown().await;
        }
    }

    /// Handles one frame (or read error) from the peer.
    async fn received(&mut self, frame: Result<Received, WebSocketError>) -> Next {
        let frame = match frame {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => {
                return Next::Close(Some((CLOSE_TOO_BIG, "message too big")));
            }
            Err(
                WebSocketError::ConnectionClosed
                | WebSocketError::UnexpectedEOF
                | WebSocketError::IoError(_),
            ) => return Next::Close(None),
            // A single text frame that is not UTF-8 (RFC 6455 §8.1).
            Err(WebSocketError::InvalidUTF8) => {
                return Next::Close(Some((CLOSE_BAD_DATA, "invalid UTF-8")));
            }
            Err(error) => {
                debug!(%error, "WebSocket protocol error.");
                return Next::Close(Some((CLOSE_PROTOCOL, "protocol error")));
            }
        };
        let complete = match frame.opcode {
            OpCode::Close => return Next::PeerClosed(close_reply(&frame.payload)),
            OpCode::Ping => return Next::Pong(frame.payload),
            OpCode::Pong => return Next::Continue,
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Next::Close(Some((
                        CLOSE_PROTOCOL,
                        "new message inside a fragmented one",
                    )));
                }
                let partial = Partial {
                    opcode: frame.opcode,
                    data: frame.payload,
                };
                if !frame.fin {
                    self.partial = Some(Box::new(partial));
                    return Next::Continue;
                }
                partial
            }
            OpCode::Continuation => {
                let Some(p) = self.partial.as_mut() else {
                    return Next::Close(Some((CLOSE_PROTOCOL, "continuation without a message")));
                };
                if p.data.len() + frame.payload.len() > self.max_message {
                    return Next::Close(Some((CLOSE_TOO_BIG, "message too big")));
                }
                p.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Next::Continue;
                }
                match self.partial.take() {
                    Some(p) => *p,
                    None => return Next::Continue,
                }
            }
        };
        if complete.data.len() > self.max_message {
            return Next::Close(Some((CLOSE_TOO_BIG, "message too big")));
        }
        if complete.opcode == OpCode::Binary {
            self.reply(error_json(
                ErrorCode::BinaryNotSupported,
                "send JSON text frames",
            ));
            return Next::Continue;
        }
        match std::str::from_utf8(&complete.data) {
            Ok(text) if self.pending.is_some() => self.first_frame(text),
            Ok(text) => {
                self.handle_text(text).await;
                Next::Continue
            }
            Err(_) => Next::Close(Some((CLOSE_BAD_DATA, "invalid UTF-8"))),
        }
    }
}

/// Our answer to the peer's Close frame: 1000, unless its body is
/// malformed (RFC 6455 §5.5.1: empty, or a code of two bytes and a UTF-8
/// reason) or its code is one a peer may not send (§7.4).
fn close_reply(body: &[u8]) -> (u16, &'static str) {
    match body {
        [] => (1000, ""),
        [_] => (CLOSE_PROTOCOL, "close body of one byte"),
        [hi, lo, reason @ ..] => {
            if !close_code_allowed(u16::from_be_bytes([*hi, *lo])) {
                (CLOSE_PROTOCOL, "invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                (CLOSE_BAD_DATA, "close reason is not UTF-8")
            } else {
                (1000, "")
            }
        }
    }
}

/// Whether a peer may send `code` in a Close frame (RFC 6455 §7.4.1, IANA
/// registry): the defined codes other than 1004, 1005, 1006 and 1015, and
/// the 3000-4999 ranges for libraries and applications.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A message being reassembled from fragments.
struct Partial {
    opcode: OpCode,
    data: BytesMut,
}

impl Connection {
    /// Queues a reply (JSON), in order with messages.
    fn reply(&self, json: Bytes) {
        self.session.queue.push(Item::Reply(json));
    }

    async fn handle_text(&mut self, text: &str) {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => {
                return self.reply(error_json(
                    ErrorCode::InvalidJson,
                    &format!("invalid JSON frame: {e}"),
                ));
            }
        };
        let channel = match frame.kind.as_str() {
            "ping" => return self.reply(Bytes::from_static(br#"{"type":"pong"}"#)),
            "refresh" => return self.refresh(frame.token.as_deref()),
            "subscribe" | "unsubscribe" | "publish" | "presence" => {
                match frame.channel.as_deref().map(publish::channel) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return self.reply(error_json(e.code, &e.message)),
                    None => {
                        return self
                            .reply(error_json(ErrorCode::InvalidRequest, "missing \"channel\""));
                    }
                }
            }
            other => {
                return self.reply(error_json(ErrorCode::UnknownType,
                    &format!("unknown frame type {other:?}: expected subscribe, unsubscribe, publish, presence, refresh or ping"),
                ));
            }
        };
        match frame.kind.as_str() {
            "subscribe" => {
                if !self.grants.may_subscribe(&channel) {
                    return self.reply(error_json(
                        ErrorCode::Forbidden,
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
                        return self.reply(error_json(
                            ErrorCode::InvalidId,
                            &format!("invalid since: {e}"),
                        ));
                    }
                };
                // Read here, not kept per connection: the limiter is the
                // one this connection opened under.
                let max_subscriptions = self.realtime.limiter.settings().max_subscriptions;
                let session = &mut self.session;
                if session.channels.len() >= max_subscriptions
                    && !session.channels.contains(&channel)
                {
                    return self.reply(error_json(
                        ErrorCode::TooManySubscriptions,
                        &format!("at most {max_subscriptions} channels per connection"),
                    ));
                }
                session.subscribe(channel, since);
            }
            "unsubscribe" => {
                if self.session.unsubscribe(&channel) {
                    self.reply(unsubscribed_json(&channel));
                } else {
                    self.reply(error_json(
                        ErrorCode::NotSubscribed,
                        &format!("not subscribed to {channel}"),
                    ));
                }
            }
            "presence" => self.presence(channel).await,
            _ => self.publish(channel, frame).await,
        }
    }

    /// `{"type":"presence","channel":C}`: on a `presence:` route, for a
    /// channel the connection may subscribe (docs/presence.md).
    async fn presence(&mut self, channel: ChannelName) {
        if !self.presence.enabled {
            return self.reply(error_json(
                ErrorCode::Forbidden,
                "presence is not enabled on this route",
            ));
        }
        if !self.grants.may_subscribe(&channel) {
            return self.reply(error_json(
                ErrorCode::Forbidden,
                &format!("channel {channel} is not granted on this route"),
            ));
        }
        match self.realtime.presence_of(&channel).await {
            Ok(snapshot) => {
                let mut v = snapshot.to_json(&channel, false);
                v["type"] = serde_json::Value::from("presence");
                self.reply(Bytes::from(v.to_string()));
            }
            Err(e) => self.reply(error_json(ErrorCode::BackplaneUnavailable, &e.to_string())),
        }
    }

    async fn publish(&mut self, channel: ChannelName, frame: ClientFrame) {
        if !self.grants.may_publish(&channel) {
            let why = if self.grants.publish_enabled() {
                format!("publishing to {channel} is not allowed on this route")
            } else {
                "client publish is disabled on this route".to_owned()
            };
            return self.reply(error_json(ErrorCode::Forbidden, &why));
        }
        let content = match Content::validate(
            frame.data.as_ref(),
            frame.event.as_ref(),
            None,
            self.max_message,
        ) {
            Ok(content) => content,
            Err(e) => return self.reply(error_json(e.code, &e.message)),
        };
        let limiter = &self.realtime.limiter;
        if !self
            .budget
            .get_or_insert_with(|| Box::new(limiter.publish_budget()))
            .take()
        {
            self.realtime.limiter.client_publish_refused();
            return self.reply(error_json(
                ErrorCode::RateLimited,
                "client publish rate exceeded; slow down",
            ));
        };
        let publication = content.publication(channel, Instant::now());
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
            Err(e) => self.reply(error_json(ErrorCode::BackplaneUnavailable, &e.to_string())),
        }
    }
}

impl Connection {
    /// The first frame of a connection that came without a token: it must
    /// be `{"type":"auth","token":T}`; then the route's channels open.
    fn first_frame(&mut self, text: &str) -> Next {
        let token = serde_json::from_str::<ClientFrame>(text)
            .ok()
            .filter(|f| f.kind == "auth")
            .and_then(|f| f.token);
        let Some(token) = token else {
            let d = Denial::from(Reason::Missing);
            self.grants.count_failure(&self.realtime.metrics, &d);
            return Next::Refuse(error_json(
                d.reason.code(),
                "the first frame must be {\"type\":\"auth\",\"token\":T}",
            ));
        };
        let verified = match self.grants.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
            Some(jwt) => auth::verify(jwt, &token),
            None => Err(Denial::from(Reason::Missing)),
        };
        let grant = match verified {
            Ok(g) => Arc::new(g),
            Err(d) => {
                self.grants.count_failure(&self.realtime.metrics, &d);
                return Next::Refuse(error_json(d.reason.code(), &d.message));
            }
        };
        self.grants.claims = Some(grant);
        let Some((channels, since)) = self.pending.take().map(|p| *p) else {
            return Next::Continue;
        };
        if let Some(c) = self.grants.uncovered(&channels) {
            let d = Denial::forbidden(format!("the token does not grant channel {c}"));
            self.grants.count_failure(&self.realtime.metrics, &d);
            return Next::Refuse(error_json(d.reason.code(), &d.message));
        }
        self.expires = self.grants.expiry();
        self.realtime.track(
            &mut self.session,
            Transport::Websocket,
            self.presence,
            &self.grants,
        );
        for (i, channel) in channels.into_iter().enumerate() {
            let from = since.as_ref().and_then(|s| s.get(i).copied());
            self.session.subscribe(channel, from);
        }
        Next::Continue
    }

    /// `{"type":"refresh","token":T}` under `on_expiry: refresh`: a token
    /// for the same subject with a later `exp` moves the expiry.
    fn refresh(&mut self, token: Option<&str>) {
        let Some(auth) = self.grants.auth.clone() else {
            return self.reply(error_json(
                ErrorCode::InvalidRequest,
                "this route has no auth",
            ));
        };
        let (OnExpiry::Refresh, Some(jwt)) = (auth.on_expiry, auth.jwt.as_ref()) else {
            return self.reply(error_json(
                ErrorCode::RefreshNotAllowed,
                "this route closes connections at token expiry",
            ));
        };
        let Some(token) = token else {
            return self.reply(error_json(ErrorCode::InvalidRequest, "missing \"token\""));
        };
        let grant = match auth::verify(jwt, token) {
            Ok(g) => g,
            Err(d) => {
                self.grants.count_failure(&self.realtime.metrics, &d);
                return self.reply(error_json(d.reason.code(), &d.message));
            }
        };
        let old = self.grants.claims.as_deref();
        if old.is_some_and(|o| o.sub.is_some() && o.sub != grant.sub) {
            return self.reply(error_json(
                ErrorCode::Unauthorized,
                "the new token is for another subject",
            ));
        }
        if old.is_some_and(|o| o.expires_at >= grant.expires_at) {
            return self.reply(error_json(
                ErrorCode::Unauthorized,
                "the new token must expire later than the current one",
            ));
        }
        let exp = grant
            .expires_at
            .unwrap_or(0)
            .saturating_sub(jwt.leeway.as_secs());
        self.grants.claims = Some(Arc::new(grant));
        self.expires = self.grants.expiry();
        let reply = serde_json::json!({"type": "refreshed", "exp": exp});
        self.reply(Bytes::from(reply.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_bodies_are_validated() {
        assert_eq!(close_reply(b""), (1000, ""));
        assert_eq!(close_reply(b"\x03").0, CLOSE_PROTOCOL);
        for ok in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(close_reply(&ok.to_be_bytes()), (1000, ""), "{ok}");
        }
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(close_reply(&bad.to_be_bytes()).0, CLOSE_PROTOCOL, "{bad}");
        }
        assert_eq!(close_reply(b"\x03\xe8\xff\xfe").0, CLOSE_BAD_DATA);
        assert_eq!(close_reply(b"\x03\xe8caf\xc3\xa9"), (1000, ""));
    }
}
