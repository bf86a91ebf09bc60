//! Held requests: a GRIP upstream's `Grip-Hold` turns the client's request
//! into a subscriber of the hub, like a native session.
//!
//! * Stream: the instruct's response goes out at once, then each
//!   `http-stream` item's content; `action: close` ends the stream; idle for
//!   the keep-alive timeout sends the keep-alive data.
//! * Response: the first `http-response` item answers the request; at the
//!   timeout the instruct's response does.
//!
//! Ordering: a hold with a `prev-id` takes only the item whose `prev-id`
//! matches, then follows each delivered item's `id`. When that chain is
//! broken (the channel's last id already differs when the hold starts, or
//! an item does not follow), the client's view is stale and cannot be
//! repaired in order: a held response is [`Served::Stale`] (the caller
//! asks the origin again, as Pushpin does), a stream ends (Pushpin needs a
//! `Grip-Link` to recover one, see docs/from-pushpin.md). Shutdown
//! ends streams and answers held responses at once. The queue is bounded
//! (`realtime.queue`, `on_lag`); a lagged stream ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::instruct::{Hold, HoldChannel, Instruct, KeepAlive, Mode};
use crate::error::{Body, BoxError};
use crate::hub::Hub;
use crate::hub::grip::{Action, Formats};
use crate::hub::message::Message;
use crate::hub::queue::{Item, LagPolicy, Queue};
use crate::shutdown::Shutdown;

/// How a hold ended up.
pub enum Served {
    Response(Response<Body>),
    /// A response hold whose `prev-id` chain is broken: the client's view
    /// is stale. Ask the origin again with these `Grip-Last` values, or
    /// send `fallback` (the instruct's own response).
    Stale {
        last_ids: Vec<(String, String)>,
        fallback: Response<Body>,
    },
}

/// What held requests share.
pub struct Holds {
    pub hub: Arc<Hub>,
    pub queue: usize,
    pub on_lag: LagPolicy,
    pub shutdown: Shutdown,
}

/// A held request's hub subscription; unsubscribes when dropped.
struct Subscription {
    hub: Arc<Hub>,
    queue: Arc<Queue>,
    channels: Vec<HoldChannel>,
}

impl Subscription {
    fn new(holds: &Holds, mut channels: Vec<HoldChannel>) -> Self {
        channels.dedup_by(|a, b| a.name == b.name);
        let queue = Queue::new_grip(holds.queue, holds.on_lag);
        for c in &channels {
            holds.hub.subscribe(&queue, &c.name, None);
        }
        Self {
            hub: holds.hub.clone(),
            queue,
            channels,
        }
    }

    /// `Grip-Last` values: each channel's `prev-id` as the hold knows it.
    fn last_ids(&self) -> Vec<(String, String)> {
        self.channels
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.prev_id.as_deref()?.to_owned())))
            .collect()
    }

    /// The hold started behind its channel: some `prev-id` is not the
    /// channel's last id.
    fn conflicts(&self) -> bool {
        self.channels.iter().any(|c| {
            c.prev_id.as_ref().is_some_and(|prev| {
                self.hub
                    .grip_last_id(&c.name)
                    .is_some_and(|last| &last != prev)
            })
        })
    }

    /// Checks `formats` follows the hold's `prev-id` on its channel and
    /// moves the chain on. `false`: the order is broken.
    fn follows(&mut self, message: &Message, formats: &Formats) -> bool {
        let Some(c) = self.channels.iter_mut().find(|c| c.name == message.channel) else {
            return true;
        };
        if let Some(prev) = &c.prev_id {
            if formats.prev_id.as_ref() != Some(prev) {
                return false;
            }
            c.prev_id = formats.id.clone();
        }
        true
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for c in &self.channels {
            self.hub.unsubscribe(&self.queue, &c.name);
        }
    }
}

impl Holds {
    /// Serves `instruct`, holding the request if it asks to.
    pub async fn serve(&self, instruct: Instruct) -> Served {
        let Instruct {
            hold,
            status,
            headers,
            body,
        } = instruct;
        let Some(hold) = hold else {
            return Served::Response(response(status, headers, crate::error::full(body)));
        };
        match hold.mode {
            Mode::Stream => Served::Response(self.stream(hold, status, headers, body)),
            Mode::Response => self.respond(hold, status, headers, body).await,
        }
    }

    async fn respond(
        &self,
        hold: Hold,
        status: StatusCode,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Served {
        let timeout_answer = move || response(status, headers, crate::error::full(body));
        let mut sub = Subscription::new(self, hold.channels);
        if sub.conflicts() {
            return Served::Stale {
                last_ids: sub.last_ids(),
                fallback: timeout_answer(),
            };
        }
        let deadline = tokio::time::sleep(hold.timeout);
        tokio::pin!(deadline);
        let mut items = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.token.cancelled() => return Served::Response(timeout_answer()),
                _ = &mut deadline => return Served::Response(timeout_answer()),
                _ = sub.queue.ready() => {
                    if sub.queue.drain(&mut items).is_err() {
                        return Served::Response(timeout_answer());
                    }
                    while let Some(item) = items.pop_front() {
                        let Item::Message(m) = item else { continue };
                        let Some(f) = m.payload.grip() else { continue };
                        let Some(r) = &f.http_response else { continue };
                        if !sub.follows(&m, f) {
                            return Served::Stale {
                                last_ids: sub.last_ids(),
                                fallback: timeout_answer(),
                            };
                        }
                        return Served::Response(published_response(r));
                    }
                }
            }
        }
    }

    fn stream(
        &self,
        hold: Hold,
        status: StatusCode,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let sub = Subscription::new(self, hold.channels);
        let broken = sub.conflicts();
        let state = Stream {
            initial: Some(body),
            done: broken,
            keep_alive: hold.keep_alive.map(|ka| {
                let sleep = Box::pin(tokio::time::sleep(ka.timeout));
                (ka, sleep)
            }),
            cancelled: Box::pin(self.shutdown.token.clone().cancelled_owned()),
            last_data: Instant::now(),
            items: VecDeque::new(),
            sub,
        };
        let frames = futures_util::stream::unfold(state, |mut s| async move {
            let chunk = s.next().await?;
            Some((Ok::<_, BoxError>(Frame::data(chunk)), s))
        });
        response(status, headers, StreamBody::new(frames).boxed_unsync())
    }
}

struct Stream {
    sub: Subscription,
    initial: Option<Bytes>,
    done: bool,
    keep_alive: Option<(KeepAlive, Pin<Box<Sleep>>)>,
    /// When data last went out: an idle-mode keep-alive is due this long
    /// after it. Recorded per delivery instead of re-arming the timer, so
    /// a delivery does not touch the timer wheel.
    last_data: Instant,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    items: VecDeque<Item>,
}

impl Stream {
    /// The next chunk to write; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.initial.take()
            && !first.is_empty()
        {
            return Some(first);
        }
        loop {
            if self.done {
                return None;
            }
            // One item: its shared bytes as they are (no copy); a burst:
            // one chunk.
            let mut one: Option<Bytes> = None;
            let mut out = BytesMut::new();
            while let Some(item) = self.items.pop_front() {
                let Item::Message(m) = item else { continue };
                let Some(f) = m.payload.grip() else { continue };
                let Some(s) = &f.http_stream else { continue };
                if !self.sub.follows(&m, f) || s.action == Action::Close {
                    self.done = true;
                    break;
                }
                match one.take() {
                    None if out.is_empty() => one = Some(s.content.clone()),
                    first => {
                        if let Some(first) = first {
                            out.extend_from_slice(&first);
                        }
                        out.extend_from_slice(&s.content);
                    }
                }
            }
            let chunk = match one {
                Some(b) => b,
                None => out.freeze(),
            };
            if !chunk.is_empty() {
                self.last_data = Instant::now();
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            enum Woke {
                Shutdown,
                Items,
                KeepAlive,
            }
            let keep_alive = async {
                match &mut self.keep_alive {
                    Some((_, sleep)) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                biased;
                _ = self.cancelled.as_mut() => Woke::Shutdown,
                _ = self.sub.queue.ready() => Woke::Items,
                _ = keep_alive => Woke::KeepAlive,
            };
            match woke {
                Woke::Shutdown => return None,
                Woke::Items => {
                    if self.sub.queue.drain(&mut self.items).is_err() {
                        // Lagged: the stream cannot continue in order.
                        return None;
                    }
                }
                Woke::KeepAlive => {
                    if let Some(data) = self.keep_alive_due() {
                        return Some(data);
                    }
                }
            }
        }
    }

    /// The keep-alive timer fired: the keep-alive data when it is due
    /// (always in interval mode; in idle mode when no data went out for
    /// the timeout), and the timer set for the next one.
    fn keep_alive_due(&mut self) -> Option<Bytes> {
        let (ka, sleep) = self.keep_alive.as_mut()?;
        let now = Instant::now();
        let idle_until = self.last_data + ka.timeout;
        if !ka.interval && now < idle_until {
            sleep.as_mut().reset(idle_until);
            return None;
        }
        sleep.as_mut().reset(now + ka.timeout);
        Some(ka.data.clone())
    }
}

fn response(status: StatusCode, headers: http::HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn published_response(r: &crate::hub::grip::HttpResponse) -> Response<Body> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &r.headers {
        // Validated when published.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) && !k.as_str().starts_with("grip-")
            && k != http::header::CONTENT_LENGTH
            && k != http::header::TRANSFER_ENCODING
        {
            headers.append(k, v);
        }
    }
    let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::OK);
    response(status, headers, crate::error::full(r.body.clone()))
}
