//! Server-Sent Events (SPEC §3.3): the opening `retry:` and comment sent at
//! once, `id`/`event`/`data` framing, heartbeat comments, gap and close
//! events. A claimed (raw-socket) stream runs in a task of its own
//! (`run_raw`); a hyper-served one is a response body that reads the
//! session queue directly.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::deliver::Encoder;
use super::{Coalesce, EndReason, Plan, Realtime, Session, cursor, send_within};
use crate::error::{Body, BoxError};
use crate::hub::message::{ChannelName, Message, Position};
use crate::hub::queue::Closed;
use crate::listener::{ConnInfo, ConnSlot, RawIo};
use crate::metrics::Metrics;
use crate::shutdown::Turn;

/// Cache slot of a message's single-channel SSE event in `Message`.
pub const ENCODING_SLOT: usize = 0;

/// The response head of a raw (hyper-less) SSE stream. The body is
/// delimited by the connection's end: a stream has no length to announce.
const RAW_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

pub fn respond(realtime: &Arc<Realtime>, plan: Plan, conn: ConnInfo) -> Response<Body> {
    let stream = SseStream::open(realtime, plan, conn.slot);
    let frames = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), s))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Serves the stream on the raw connection: opens the session and hands
/// the stream to a task of its own, so an idle subscriber keeps only
/// [`SseStream`] and the socket (no HTTP buffers, no state of the request
/// that opened it). The head goes out with the opening, in one write.
pub fn serve_raw<IO: RawIo>(realtime: &Arc<Realtime>, plan: Plan, io: IO, conn: ConnInfo) {
    let stream = SseStream::open(realtime, plan, conn.slot);
    realtime.shutdown.tracker.spawn(stream.run_raw(io));
}

enum Phase {
    Opening,
    Streaming,
    Done,
}

impl SseStream {
    fn open(realtime: &Arc<Realtime>, plan: Plan, slot: Arc<ConnSlot>) -> Self {
        let expires = plan.grants.expiry();
        let (session, _, settings) = realtime.open_plan(plan);
        Self {
            expires,
            session,
            heartbeat: settings.heartbeat,
            stall: settings.pong_timeout,
            retry: settings.sse_retry,
            realtime: realtime.clone(),
            turn: None,
            phase: Phase::Opening,
            _slot: slot,
        }
    }
}

struct SseStream {
    session: Session,
    /// When the connection's token expires: closed with reason `expired`.
    expires: Option<Instant>,
    heartbeat: Duration,
    /// A client that takes none of a write for this long (`pong_timeout`)
    /// is not reading and is dropped.
    stall: Duration,
    retry: Duration,
    /// For its shutdown token and metrics: one pointer, not a copy of each.
    realtime: Arc<Realtime>,
    /// Its turn in a paced drain.
    turn: Turn,
    phase: Phase,
    _slot: Arc<ConnSlot>,
}

/// What one look at the queue found.
enum Drained {
    Nothing,
    Chunk(Bytes),
    /// The queue closed under `on_lag: disconnect`: the close event.
    Lagged(Bytes),
}

impl SseStream {
    fn opening(&self) -> Bytes {
        // `id:` alone sets the client's last event id without dispatching
        // an event, so even a client that sees no message before
        // reconnecting resumes from here.
        Bytes::from(format!(
            "retry: {}\n: pushgate stream open\nid: {}\n\n",
            self.retry.as_millis(),
            self.session.cursor()
        ))
    }

    /// The raw-socket loop. Reads only to notice the client leaving. The
    /// shutdown and heartbeat futures live across iterations, so a
    /// delivery does not touch the shared token's waiter list or the
    /// timer wheel; the heartbeat timer is re-armed only when it fires.
    ///
    /// This future is what an idle subscriber costs, so it holds each
    /// thing once: an `async` block, not an `async fn` (whose state keeps
    /// a second copy of its arguments, here the stream and the socket:
    /// rust-lang/rust#62958); the socket unsplit (writes happen between
    /// waits, never during one); no buffer kept between writes; no write
    /// timer until a write stalls (`send_within`).
    #[allow(clippy::manual_async_fn)] // see above: not an `async fn` on purpose
    fn run_raw<IO: RawIo>(mut self, mut io: IO) -> impl Future<Output = ()> + Send {
        async move {
            // The response head and the opening in one write.
            {
                let head = {
                    let mut first = Coalesce::default();
                    first.push(Bytes::from_static(RAW_HEAD));
                    first.push(self.opening());
                    first.finish()
                };
                if send_within(&mut io, &head, self.stall).await.is_err() {
                    return;
                }
            }
            let mut last_write = Instant::now();
            let mut timer = pin!(tokio::time::sleep_until(deadline(
                self.expires,
                last_write + self.heartbeat
            )));
            let mut cancelled = pin!(self.realtime.shutdown.turn(&mut self.turn));
            let mut probe = [0u8; 8];
            loop {
                // In a block, taken apart before the write: only the bytes
                // are kept while it waits, and nothing of it while idle.
                {
                    let (chunk, lagged) = match drain(&mut self.session, &self.realtime.metrics) {
                        Drained::Chunk(chunk) => (chunk, false),
                        Drained::Lagged(close) => (close, true),
                        Drained::Nothing => (Bytes::new(), false),
                    };
                    if !chunk.is_empty() {
                        if send_within(&mut io, &chunk, self.stall).await.is_err() {
                            return;
                        }
                        if lagged {
                            break;
                        }
                        last_write = Instant::now();
                        continue;
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut cancelled => {
                        let close = closing(&mut self.session, EndReason::Shutdown);
                        let _ = send_within(&mut io, &close, self.stall).await;
                        break;
                    }
                    _ = self.session.queue.ready() => {}
                    read = io.read(&mut probe) => match read {
                        // A client sends nothing on an event stream; EOF
                        // or an error means it left.
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    _ = &mut timer => {
                        let now = Instant::now();
                        if self.expires.is_some_and(|e| now >= e) {
                            let close = closing(&mut self.session, EndReason::Expired);
                            let _ = send_within(&mut io, &close, self.stall).await;
                            break;
                        }
                        let due = now >= last_write + self.heartbeat;
                        let from = if due { now } else { last_write };
                        timer.as_mut().reset(deadline(self.expires, from + self.heartbeat));
                        if due {
                            if send_within(&mut io, b":\n", self.stall).await.is_err() {
                                return;
                            }
                            last_write = Instant::now();
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        }
    }

    /// The hyper-served stream's next body chunk.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.phase {
            Phase::Opening => {
                self.phase = Phase::Streaming;
                Some(self.opening())
            }
            Phase::Done => None,
            Phase::Streaming => loop {
                match drain(&mut self.session, &self.realtime.metrics) {
                    Drained::Chunk(chunk) => return Some(chunk),
                    Drained::Lagged(close) => {
                        self.phase = Phase::Done;
                        return Some(close);
                    }
                    Drained::Nothing => {}
                }
                tokio::select! {
                    biased;
                    _ = self.realtime.shutdown.turn(&mut self.turn) => {
                        self.phase = Phase::Done;
                        return Some(closing(&mut self.session, EndReason::Shutdown));
                    }
                    _ = self.session.queue.ready() => {}
                    _ = sleep_until_some(self.expires) => {
                        self.phase = Phase::Done;
                        return Some(closing(&mut self.session, EndReason::Expired));
                    }
                    _ = tokio::time::sleep(self.heartbeat) => return Some(Bytes::from_static(b":\n")),
                }
            },
        }
    }
}

/// Takes everything queued and encodes it as one chunk.
fn drain(session: &mut Session, metrics: &Metrics) -> Drained {
    let mut events = SseEncoder {
        single: session.channels.len() == 1,
        chunks: Coalesce::default(),
    };
    if let Err(Closed::Lagged) = session.deliver(metrics, &mut events) {
        return Drained::Lagged(closing(session, EndReason::Lagged));
    }
    let chunk = events.chunks.finish();
    if chunk.is_empty() {
        Drained::Nothing
    } else {
        Drained::Chunk(chunk)
    }
}

/// The earlier of `at` and the token's expiry.
fn deadline(expires: Option<Instant>, at: Instant) -> Instant {
    expires.map_or(at, |e| e.min(at))
}

/// SSE events for drained items, joined into one chunk (one write for a
/// burst).
struct SseEncoder {
    /// One channel: a message's event is the same for every subscriber,
    /// so it is encoded once and shared.
    single: bool,
    chunks: Coalesce,
}

impl Encoder for SseEncoder {
    fn message(&mut self, session: &Session, m: &Arc<Message>) {
        let bytes = if self.single {
            m.encoded(ENCODING_SLOT, |m| {
                event_bytes(&cursor::encode_one(m.position), m)
            })
        } else {
            event_bytes(&session.cursor(), m)
        };
        self.chunks.push(bytes);
    }

    fn gap(&mut self, channel: &ChannelName) {
        self.chunks.push(gap_event(std::slice::from_ref(channel)));
    }

    fn subscribed(&mut self, session: &Session, _: &ChannelName, _: Position, moved: bool) {
        // A distributed backplane may confirm the position after the
        // opening id was sent: send the real one (an id-only event sets
        // the client's last id).
        if moved {
            self.chunks
                .push(Bytes::from(format!("id: {}\n\n", session.cursor())));
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The event type of a binary message without an event (SPEC §12); one
/// with event `E` is `pushgate.binary.E`. Published events cannot start
/// with `pushgate.`, so neither can be mistaken for a text message.
pub const BINARY_EVENT: &str = "pushgate.binary";

/// `id`, optional `event`, one `data:` line per payload line, blank line.
/// A binary message is its base64 on one `data:` line, under
/// [`BINARY_EVENT`].
pub fn event_bytes(id: &str, message: &Message) -> Bytes {
    let event = message.event.as_ref().map(|e| e.as_str());
    if message.payload.is_binary() {
        let data = message.payload.base64();
        let mut out = BytesMut::with_capacity(data.len() + id.len() + 96);
        let named;
        let event = match event {
            None => BINARY_EVENT,
            Some(e) => {
                named = format!("{BINARY_EVENT}.{e}");
                &named
            }
        };
        encode_event(&mut out, Some(id), Some(event), &data);
        return out.freeze();
    }
    let mut out = BytesMut::with_capacity(message.payload.text().len() + id.len() + 32);
    encode_event(&mut out, Some(id), event, message.payload.text());
    out.freeze()
}

pub fn encode_event(out: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    // Lines end at \r\n, \n or \r (WHATWG), each becoming its own `data:`.
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                break;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.put_u8(b'\n');
}

fn gap_event(channels: &[ChannelName]) -> Bytes {
    let names: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
    let data = serde_json::json!({ "channels": names }).to_string();
    let mut out = BytesMut::new();
    encode_event(&mut out, None, Some("pushgate.gap"), data.as_bytes());
    out.freeze()
}

/// The `pushgate.close` event for `reason`, which the lifecycle webhooks
/// report too (each in its own words).
fn closing(session: &mut Session, reason: EndReason) -> Bytes {
    session.end(reason);
    close_event(reason.sse_reason())
}

fn close_event(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason }).to_string();
    let mut out = BytesMut::new();
    encode_event(&mut out, None, Some("pushgate.close"), data.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(id: Option<&str>, event: Option<&str>, data: &str) -> String {
        let mut out = BytesMut::new();
        encode_event(&mut out, id, event, data.as_bytes());
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn multi_line_data_becomes_one_data_line_each() {
        assert_eq!(encoded(Some("1-1"), None, "a"), "id: 1-1\ndata: a\n\n");
        assert_eq!(
            encoded(None, Some("update"), "a\nb\r\nc\rd"),
            "event: update\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(encoded(None, None, ""), "data: \n\n");
        assert_eq!(encoded(None, None, "x\n"), "data: x\ndata: \n\n");
    }

    #[test]
    fn binary_messages_are_base64_under_their_own_event_type() {
        use crate::hub::message::{EventName, Payload};
        let message = |event: Option<&str>| {
            Message::new(
                ChannelName::parse("c").unwrap(),
                Position { epoch: 1, seq: 2 },
                event.map(|e| EventName::parse(e).unwrap()),
                Payload::from_bytes(Bytes::from_static(b"\n\r\x00\xff")),
                std::time::Instant::now(),
            )
        };
        assert_eq!(
            event_bytes("7", &message(None)),
            "id: 7\nevent: pushgate.binary\ndata: Cg0A/w==\n\n"
        );
        assert_eq!(
            event_bytes("7", &message(Some("chunk.v2"))),
            "id: 7\nevent: pushgate.binary.chunk.v2\ndata: Cg0A/w==\n\n"
        );
    }

    #[test]
    fn close_and_gap_events() {
        assert_eq!(
            String::from_utf8(close_event(EndReason::Shutdown.sse_reason()).to_vec()).unwrap(),
            "event: pushgate.close\ndata: {\"reason\":\"shutdown\"}\n\n"
        );
        let ch = ChannelName::parse("a").unwrap();
        assert_eq!(
            String::from_utf8(gap_event(&[ch]).to_vec()).unwrap(),
            "event: pushgate.gap\ndata: {\"channels\":[\"a\"]}\n\n"
        );
    }
}
