//! GRIP (Pushpin) formats a message can carry, and the per-channel
//! sequencer that orders items by `id`/`prev-id`.
//!
//! A GRIP item published to `POST /publish/` travels the one message path
//! (publish → backplane → hub → sessions) like a native message. It only
//! reaches GRIP subscribers (held requests, WebSocket-over-HTTP
//! connections), and native messages only reach native subscribers: each
//! queue says which kind it takes (`Queue::grip`). GRIP items do not advance
//! the channel's native sequence and are not kept in history (Pushpin keeps
//! none), so native resume ids are untouched by them.
//!
//! Plain data: no HTTP types, no IO.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long an item whose `prev-id` is not the channel's last id waits for
/// the missing item before it is delivered anyway (Pushpin: 5 s).
pub const PENDING_EXPIRE: Duration = Duration::from_secs(5);
/// Most items one channel keeps waiting for their predecessor (Pushpin: 100).
/// The next one is dropped.
pub const PENDING_MAX: usize = 100;

/// What a publish action asks of a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver the content.
    Send,
    /// End the stream or connection.
    Close,
}

/// `http-stream`: bytes appended to held streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpStream {
    pub action: Action,
    pub content: Bytes,
}

/// `http-response`: the answer to held responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub code: u16,
    pub reason: Option<Box<str>>,
    /// Header names and values, validated at the edge.
    pub headers: Vec<(Box<str>, Box<str>)>,
    pub body: Bytes,
}

/// The kind of a `ws-message` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsType {
    Text,
    Binary,
    Ping,
    Pong,
}

/// `ws-message`: a frame for WebSocket-over-HTTP connections, or a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsMessage {
    Send { kind: WsType, content: Bytes },
    Close { code: Option<u16>, reason: Bytes },
}

/// One published GRIP item's formats and ordering ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    pub id: Option<Box<str>>,
    pub prev_id: Option<Box<str>>,
    /// Skip the sequencer (`"no-seq": true`).
    pub no_seq: bool,
    pub http_stream: Option<HttpStream>,
    pub http_response: Option<HttpResponse>,
    pub ws_message: Option<WsMessage>,
}

impl Formats {
    pub fn size(&self) -> usize {
        self.http_stream.as_ref().map_or(0, |s| s.content.len())
            + self.http_response.as_ref().map_or(0, |r| {
                r.body.len()
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            + self.ws_message.as_ref().map_or(0, |m| match m {
                WsMessage::Send { content, .. } => content.len(),
                WsMessage::Close { reason, .. } => reason.len(),
            })
    }
}

/// A channel's GRIP ordering state (Pushpin's sequencer): the id of the
/// last item delivered, and items waiting for their `prev-id`.
#[derive(Debug, Default)]
pub struct Sequencer {
    last_id: Option<Box<str>>,
    /// Waiting items by the `prev-id` they follow.
    pending: HashMap<Box<str>, (Instant, Arc<Formats>)>,
}

impl Sequencer {
    /// The id of the last item delivered on this channel, if it had one.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Orders `item`: returns the items to deliver now, in order (the item
    /// itself and any waiting ones it releases), or nothing when it waits
    /// for its predecessor or is dropped.
    pub fn order(&mut self, item: Arc<Formats>, now: Instant) -> Vec<Arc<Formats>> {
        if !item.no_seq
            && let (Some(last), Some(prev)) = (&self.last_id, &item.prev_id)
            && last != prev
        {
            if self.pending.len() < PENDING_MAX && !self.pending.contains_key(prev) {
                self.pending.insert(prev.clone(), (now, item));
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        self.deliver(item, &mut out);
        out
    }

    /// Delivers waiting items older than [`PENDING_EXPIRE`] (and what they
    /// release), oldest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<Formats>> {
        let mut out = Vec::new();
        loop {
            let oldest = self
                .pending
                .iter()
                .filter(|(_, (at, _))| now.saturating_duration_since(*at) >= PENDING_EXPIRE)
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            let Some(key) = oldest else { break };
            if let Some((_, item)) = self.pending.remove(&key) {
                self.deliver(item, &mut out);
            }
        }
        out
    }

    /// Nothing waits: the channel may be dropped when otherwise idle (the
    /// last id goes with it; a later hold then sees no conflict).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    fn deliver(&mut self, item: Arc<Formats>, out: &mut Vec<Arc<Formats>>) {
        let mut next = Some(item);
        while let Some(item) = next.take() {
            self.last_id = item.id.clone();
            if let Some(id) = &item.id {
                next = self.pending.remove(id).map(|(_, i)| i);
            }
            out.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, prev: Option<&str>) -> Arc<Formats> {
        Arc::new(Formats {
            id: Some(id.into()),
            prev_id: prev.map(Into::into),
            ..Formats::default()
        })
    }

    fn ids(items: &[Arc<Formats>]) -> Vec<&str> {
        items.iter().map(|i| i.id.as_deref().unwrap()).collect()
    }

    #[test]
    fn an_item_waits_for_its_predecessor() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        assert_eq!(ids(&s.order(item("1", None), now)), ["1"]);
        assert!(s.order(item("3", Some("2")), now).is_empty());
        assert_eq!(ids(&s.order(item("2", Some("1")), now)), ["2", "3"]);
        assert_eq!(s.last_id(), Some("3"));
    }

    #[test]
    fn a_waiting_item_is_delivered_when_it_expires() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        s.order(item("1", None), now);
        assert!(s.order(item("5", Some("4")), now).is_empty());
        assert!(s.expire(now + Duration::from_secs(1)).is_empty());
        assert_eq!(ids(&s.expire(now + PENDING_EXPIRE)), ["5"]);
    }

    #[test]
    fn no_seq_and_unknown_history_pass_through() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        assert_eq!(ids(&s.order(item("2", Some("1")), now)), ["2"]);
        let mut skip = (*item("9", Some("7"))).clone();
        skip.no_seq = true;
        assert_eq!(s.order(Arc::new(skip), now).len(), 1);
    }
}

#[cfg(test)]
mod hub_tests {
    use super::*;
    use crate::hub::Hub;
    use crate::hub::history::HistoryLimits;
    use crate::hub::message::{ChannelName, Payload, Publication};
    use crate::hub::queue::{Item, LagPolicy, Queue};

    fn publication(payload: Payload) -> Publication {
        Publication {
            channel: ChannelName::parse("c").unwrap(),
            event: None,
            payload,
            idempotency_key: None,
            accepted_at: Instant::now(),
        }
    }

    fn messages(queue: &Queue) -> Vec<bool> {
        let mut out = std::collections::VecDeque::new();
        let _ = queue.drain(&mut out);
        out.iter()
            .filter_map(|i| match i {
                Item::Message(m) => Some(m.payload.grip().is_some()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_kind_of_subscriber_gets_its_kind_of_message() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let ch = ChannelName::parse("c").unwrap();
        let native = Queue::new(8, LagPolicy::Disconnect);
        let grip = Queue::new_grip(8, LagPolicy::Disconnect);
        hub.subscribe(&native, &ch, None);
        hub.subscribe(&grip, &ch, None);
        let r = hub.publish(&[
            publication(Payload::from_json(&serde_json::json!(1))),
            publication(Payload::from_grip(Formats::default())),
        ]);
        assert_eq!((r[0].subscribers, r[1].subscribers), (1, 1));
        assert_eq!(messages(&native), [false]);
        assert_eq!(messages(&grip), [true]);
        // GRIP items leave the native stream and history alone.
        assert_eq!(hub.head(&ch).unwrap().seq, 1);
        let late = Queue::new(8, LagPolicy::Disconnect);
        hub.subscribe(
            &late,
            &ch,
            Some(crate::hub::message::Position {
                epoch: r[0].position.epoch,
                seq: 0,
            }),
        );
        assert_eq!(messages(&late), [false]);
    }
}
