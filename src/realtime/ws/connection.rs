//! One WebSocket connection's task: the split reader and writer, the loop
//! over peer frames, deliveries, pings and timers, and the close
//! handshake. Its children handle what the peer's text frames ask:
//! `requests` (subscribe, unsubscribe, publish, presence, ping) and `auth`
//! (the first-frame `auth`, token refresh and expiry).

mod auth;
mod requests;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::encode::{WsEncoder, frame_bytes, text_frame};
use super::protocol::error_json;
use crate::auth::{Access, Denial, FIRST_FRAME_TIMEOUT};
use crate::error::ErrorCode;
use crate::hooks::{BadClose, Violation};
use crate::hub::message::{ChannelName, Position};
use crate::hub::queue::{Closed, Item};
use crate::limits::PublishBudget;
use crate::listener::{ConnSlot, RawIo};
use crate::realtime::negotiate::Transport;
use crate::realtime::{Coalesce, EndReason, Grants, Plan, Realtime, Session, send, send_within};

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
            Some(Instant::now() + FIRST_FRAME_TIMEOUT),
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
        binary_frames: plan.binary_frames,
        publish_to: plan.publish_to.map(Box::new),
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
    frames.push(close_frame(EndReason::AuthRefused));
    let _ = send(&mut write, &frames.finish()).await;
    // Let the peer read the close before the socket goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The Close frame for `reason` (empty for [`EndReason::Gone`]).
fn close_frame(reason: EndReason) -> Bytes {
    match reason.close_code() {
        Some(code) => frame_bytes(Frame::close(code, reason.close_text().as_bytes())),
        None => Bytes::new(),
    }
}

type Reader<S> = WebSocketRead<ReadHalf<S>>;

/// The server's frame reader on `read`: pings and closes are answered by
/// the connection, messages capped at `max_message` (at least a control
/// frame's 125 bytes).
fn reader<S: RawIo>(read: ReadHalf<S>, max_message: usize) -> Reader<S> {
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    // fastwebsockets refuses a frame of `max_message_size` bytes or more;
    // a message of exactly `max_message` is allowed (checked again below).
    reader.set_max_message_size(max_message.max(125) + 1);
    reader
}

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

/// RFC 6455 §7.1.1: after our Close, reads (and discards) until the peer's
/// Close. Closing TCP with the peer's frames still unread makes the kernel
/// send RST, which loses our close frame. `again` is [`next_frame`].
async fn await_peer_close<S: RawIo, F>(mut read: Pin<&mut F>, again: fn(Reader<S>) -> F)
where
    F: Future<Output = (Reader<S>, Result<Received, WebSocketError>)>,
{
    loop {
        let (reader, frame) = read.as_mut().await;
        match frame {
            Ok(f) if f.opcode == OpCode::Close => return,
            // The reader skips the rest of a refused frame.
            Ok(_) | Err(WebSocketError::FrameTooLarge) => read.set(again(reader)),
            Err(_) => return,
        }
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
    /// The connection ends. [`EndReason::Client`] and
    /// [`EndReason::BadClose`]: the peer sent Close, answered with the
    /// reason's code and TCP closed without waiting; [`EndReason::Gone`]:
    /// the socket is gone, nothing is sent; any other: the server closes.
    End(EndReason),
    /// An `error` frame (JSON), then close `1008`.
    Refuse(Bytes),
}

/// What the loop's timer found when it fired.
enum Tick {
    /// Nothing due: re-armed.
    Wait,
    /// A ping is due: re-armed.
    Ping,
    /// The connection ends, with an `error` frame before the Close.
    End(EndReason, Option<Bytes>),
}

/// The loop's clocks (the timer is armed for the earliest of them and the
/// token's expiry).
struct Clock {
    next_ping: Instant,
    /// The peer's last frame; silent past `pong_timeout`, it is closed.
    last_seen: Instant,
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
    expires: Option<Instant>,
    /// Channels and resume positions waiting for the `auth` frame.
    pending: Option<Box<Pending>>,
    /// The client publish budget, from the first publish on.
    budget: Option<Box<PublishBudget>>,
    presence: crate::config::PresenceSettings,
    /// `?binary=frames`: binary messages as a header and a binary frame.
    binary_frames: bool,
    /// `?publish=C`: where a binary message from the client goes. Boxed
    /// like `pending`: rare, and every idle connection keeps this field.
    publish_to: Option<Box<ChannelName>>,
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
    /// (`send_within`). What is not a wait is in plain functions
    /// (`outgoing`, `tick`, `received`, `last_frames`), which keep nothing
    /// in it.
    ///
    /// Over 100 lines, on purpose: every wait that uses the pinned reader,
    /// shutdown turn or timer is here, in this one state (a helper future
    /// would need their types, and its own room in every connection).
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
            let mut read = pin!(next_frame(reader(read, self.max_message)));
            let mut cancelled = pin!(realtime.shutdown.turn(&mut turn));
            let mut clock = Clock {
                next_ping: Instant::now() + self.heartbeat,
                last_seen: Instant::now(),
            };
            let mut timer = pin!(tokio::time::sleep_until(self.deadline(clock.next_ping)));

            // Why it ends, and an `error` frame to send before the Close.
            let (end, last_words) = loop {
                // In a block: nothing of a write is kept while idle.
                {
                    let (out, lagged) = self.outgoing(greeting.take());
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
                        break (EndReason::Gone, None);
                    }
                    if lagged {
                        break (EndReason::Lagged, None);
                    }
                }
                // What woke the loop, with no await in the select's arms:
                // an arm that awaits keeps the select's output (the reader
                // and a frame) in every idle connection's state.
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
                // A ping or pong to write, or the end.
                let control = match woke {
                    Woke::Shutdown => break (EndReason::Shutdown, None),
                    Woke::Queue => continue,
                    Woke::Timer => match self.tick(&mut clock, timer.as_mut()) {
                        Tick::Wait => continue,
                        Tick::Ping => frame_bytes(Frame::new(
                            true,
                            OpCode::Ping,
                            None,
                            Payload::Borrowed(&[]),
                        )),
                        Tick::End(end, last_words) => break (end, last_words),
                    },
                    Woke::Frame(frame) => {
                        clock.last_seen = Instant::now();
                        // Boxed: a frame from the peer is rare next to
                        // deliveries, and its handling (client publish)
                        // would otherwise widen every idle connection's state.
                        let next = Box::pin(self.received(frame)).await;
                        // An `auth` or `refresh` frame may bring expiry closer.
                        if let Some(e) = self.expires
                            && e < timer.deadline()
                        {
                            timer.as_mut().reset(e);
                        }
                        match next {
                            Next::Continue => continue,
                            Next::Pong(payload) => {
                                frame_bytes(Frame::pong(Payload::Bytes(payload)))
                            }
                            Next::End(end) => break (end, None),
                            Next::Refuse(json) => break (EndReason::AuthRefused, Some(json)),
                        }
                    }
                };
                // Bounded like deliveries: a ping flood from a peer that
                // reads no pongs cannot park us here.
                if send_within(&mut write, &control, self.pong_timeout)
                    .await
                    .is_err()
                {
                    break (EndReason::Gone, None);
                }
            };
            self.session.end(end);
            // The last frames go out in one write, bounded like the others.
            let last = last_frames(end, last_words);
            if !last.is_empty()
                && send_within(&mut write, &last, self.pong_timeout)
                    .await
                    .is_err()
            {
                return;
            }
            match end {
                // The socket is gone: nothing to close.
                EndReason::Gone => return,
                // We answered the peer's Close: done.
                EndReason::Client | EndReason::BadClose(_) => {}
                // Boxed: only a closing connection needs this state.
                _ => {
                    let wait = await_peer_close(read.as_mut(), next_frame::<S>);
                    let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, wait)).await;
                }
            }
            let _ = write.shutdown().await;
        }
    }

    /// The earlier of `at` and the token's expiry (or the `auth` frame's
    /// deadline).
    fn deadline(&self, at: Instant) -> Instant {
        self.expires.map_or(at, |e| e.min(at))
    }

    /// Everything queued as frames, after `greeting`: the bytes to write,
    /// and whether the queue closed under `on_lag: disconnect`.
    fn outgoing(&mut self, greeting: Option<Bytes>) -> (Bytes, bool) {
        let mut frames = WsEncoder {
            frames: Coalesce::default(),
            binary_frames: self.binary_frames,
        };
        if let Some(greeting) = greeting {
            frames.frames.push(greeting);
        }
        let drained = self.session.deliver(&self.realtime.metrics, &mut frames);
        (frames.frames.finish(), drained == Err(Closed::Lagged))
    }

    /// The timer fired: the token's expiry, the peer's silence, or a ping
    /// due; re-arms it for the next of them.
    fn tick(&mut self, clock: &mut Clock, timer: Pin<&mut Sleep>) -> Tick {
        let now = Instant::now();
        if self.expires.is_some_and(|e| now >= e) {
            let (end, last_words) = self.expired();
            return Tick::End(end, last_words);
        }
        if now >= clock.last_seen + self.pong_timeout {
            debug!("WebSocket peer silent past pong_timeout; closing.");
            return Tick::End(EndReason::PongTimeout, None);
        }
        let ping = now >= clock.next_ping;
        if ping {
            clock.next_ping = now + self.heartbeat;
        }
        // Re-armed here only: the peer's frames move `last_seen` later,
        // which this check sees when the timer fires.
        let at = clock.next_ping.min(clock.last_seen + self.pong_timeout);
        timer.reset(self.deadline(at));
        if ping { Tick::Ping } else { Tick::Wait }
    }

    /// Queues a reply (JSON), in order with messages.
    fn reply(&self, json: Bytes) {
        self.session.queue.push(Item::Reply(json));
    }

    /// Handles one frame (or read error) from the peer.
    async fn received(&mut self, frame: Result<Received, WebSocketError>) -> Next {
        let frame = match frame {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => {
                return Next::End(EndReason::TooBig);
            }
            Err(
                WebSocketError::ConnectionClosed
                | WebSocketError::UnexpectedEOF
                | WebSocketError::IoError(_),
            ) => return Next::End(EndReason::Gone),
            // A single text frame that is not UTF-8 (RFC 6455 §8.1).
            Err(WebSocketError::InvalidUTF8) => {
                return Next::End(EndReason::InvalidUtf8);
            }
            Err(error) => {
                debug!(%error, "WebSocket protocol error.");
                return Next::End(EndReason::Protocol(Violation::Frame));
            }
        };
        let complete = match frame.opcode {
            OpCode::Close => return Next::End(close_reply(&frame.payload)),
            OpCode::Ping => return Next::Pong(frame.payload),
            OpCode::Pong => return Next::Continue,
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Next::End(EndReason::Protocol(Violation::NewMessageInFragment));
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
                    return Next::End(EndReason::Protocol(Violation::ContinuationWithoutMessage));
                };
                if p.data.len() + frame.payload.len() > self.max_message {
                    return Next::End(EndReason::TooBig);
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
            return Next::End(EndReason::TooBig);
        }
        if complete.opcode == OpCode::Binary {
            if self.pending.is_some() {
                self.reply(error_json(
                    ErrorCode::BinaryNotAllowed,
                    "the first frame is the JSON auth frame",
                ));
            } else {
                self.publish_binary(complete.data.freeze()).await;
            }
            return Next::Continue;
        }
        match std::str::from_utf8(&complete.data) {
            Ok(text) if self.pending.is_some() => self.first_frame(text),
            Ok(text) => {
                self.request(text).await;
                Next::Continue
            }
            Err(_) => Next::End(EndReason::InvalidUtf8),
        }
    }
}

/// The connection's last frames in one write: the `error` frame, if any,
/// then our Close (none when the socket is gone).
fn last_frames(end: EndReason, last_words: Option<Bytes>) -> Bytes {
    let mut frames = Coalesce::default();
    if let Some(json) = last_words {
        frames.push(text_frame(&json));
    }
    if end.close_code().is_some() {
        frames.push(close_frame(end));
    }
    frames.finish()
}

/// Our answer to the peer's Close frame: 1000, unless its body is
/// malformed (RFC 6455 §5.5.1: empty, or a code of two bytes and a UTF-8
/// reason) or its code is one a peer may not send (§7.4).
fn close_reply(body: &[u8]) -> EndReason {
    match body {
        [] => EndReason::Client,
        [_] => EndReason::BadClose(BadClose::OneByte),
        [hi, lo, reason @ ..] => {
            if !close_code_allowed(u16::from_be_bytes([*hi, *lo])) {
                EndReason::BadClose(BadClose::Code)
            } else if std::str::from_utf8(reason).is_err() {
                EndReason::BadClose(BadClose::ReasonNotUtf8)
            } else {
                EndReason::Client
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_bodies_are_validated() {
        let code = |body: &[u8]| close_reply(body).close_code();
        assert_eq!(close_reply(b""), EndReason::Client);
        assert_eq!(code(b""), Some(1000));
        assert_eq!(close_reply(b"").close_text(), "");
        assert_eq!(code(b"\x03"), Some(1002));
        for ok in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(close_reply(&ok.to_be_bytes()), EndReason::Client, "{ok}");
        }
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(code(&bad.to_be_bytes()), Some(1002), "{bad}");
        }
        assert_eq!(code(b"\x03\xe8\xff\xfe"), Some(1007));
        assert_eq!(close_reply(b"\x03\xe8caf\xc3\xa9"), EndReason::Client);
    }
}
