//! The bounded per-subscriber queue and its overflow policy ([`LagPolicy`]).
//!
//! The hub pushes, one session task drains. A push never waits: when the
//! queue is full the policy decides what is lost, and the loss is always
//! signalled (a gap item or a lagged close), never silent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::message::{ChannelName, Message, Position};

/// What a full queue does with the next message (SPEC §3.6 `on_lag`; the
/// config names the variants in snake_case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LagPolicy {
    /// Close the subscriber with the lag signal; it resumes from its id.
    #[default]
    Disconnect,
    /// Drop the oldest queued message and signal a gap for its channel.
    DropOldest,
    /// Per channel only the newest message waits; older ones are replaced
    /// (with a gap signal). Falls back to `DropOldest` across channels.
    KeepLatest,
}

/// One entry in a subscriber's queue, delivered in order.
#[derive(Clone, Debug)]
pub enum Item {
    /// The subscription to `channel` is live from `position` on; any
    /// backlog follows this item.
    Subscribed {
        channel: ChannelName,
        position: Position,
    },
    /// A message to deliver.
    Message(Arc<Message>),
    /// Messages of `channel` were lost before the next one.
    Gap(ChannelName),
    /// Transport-owned bytes (a reply frame), kept in order with messages.
    Reply(Bytes),
}

/// Why a queue was closed by the hub side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The subscriber fell `capacity` messages behind under `Disconnect`.
    Lagged,
}

/// What happened to one offered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Queued, but an older message was dropped to make room.
    QueuedDroppingOlder,
    /// The queue overflowed under `Disconnect` and is now closed.
    Lagged,
    /// The queue was already closed; nothing was queued.
    Closed,
    /// The queue takes the other kind of message (GRIP or native).
    Skipped,
}

/// A subscriber's bounded queue. Shared by the hub (producer) and one
/// session task (consumer).
#[derive(Debug)]
pub struct Queue {
    /// `u32` (a queue of 4 billion messages is no queue): with `policy`
    /// and `grip` in one word, the queue fits mimalloc's 96-byte class,
    /// one per subscriber.
    capacity: u32,
    policy: LagPolicy,
    /// Takes GRIP messages only (held requests, WebSocket-over-HTTP);
    /// otherwise native messages only.
    grip: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    // Allocated on the first push after a drain and handed to the consumer
    // by `drain`, so an idle subscriber holds no buffer.
    items: VecDeque<Item>,
    /// The consumer, waiting in `ready` for the queue to become non-empty.
    waiter: Option<Waker>,
    /// Message items in `items`; only these count against `capacity`.
    messages: usize,
    closed: Option<Closed>,
}

impl Queue {
    /// A queue holding at most `capacity` (≥ 1) messages.
    pub fn new(capacity: usize, policy: LagPolicy) -> Arc<Self> {
        Arc::new(Self {
            capacity: clamp(capacity),
            policy,
            grip: false,
            state: Mutex::new(State::default()),
        })
    }

    /// A queue for a GRIP subscriber: it takes only messages that carry
    /// GRIP formats (`hub::grip`).
    pub fn new_grip(capacity: usize, policy: LagPolicy) -> Arc<Self> {
        Arc::new(Self {
            capacity: clamp(capacity),
            policy,
            grip: true,
            state: Mutex::new(State::default()),
        })
    }

    fn wants(&self, message: &Message) -> bool {
        message.payload.grip().is_some() == self.grip
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the
        // state is still consistent, so keep serving rather than poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a live message. Never blocks beyond a short critical section.
    pub fn offer(&self, message: &Arc<Message>) -> Offer {
        if !self.wants(message) {
            return Offer::Skipped;
        }
        let mut state = self.lock();
        if state.closed.is_some() {
            return Offer::Closed;
        }
        let mut outcome = Offer::Queued;
        if state.messages >= self.capacity as usize {
            match self.policy {
                LagPolicy::Disconnect => {
                    state.closed = Some(Closed::Lagged);
                    // Queued messages stay readable; the close follows them.
                    let waiter = state.waiter.take();
                    drop(state);
                    wake(waiter);
                    return Offer::Lagged;
                }
                LagPolicy::DropOldest => state.drop_oldest(),
                LagPolicy::KeepLatest => {
                    if !state.replace_channel(&message.channel) {
                        state.drop_oldest();
                    }
                }
            }
            outcome = Offer::QueuedDroppingOlder;
        }
        state.items.push_back(Item::Message(message.clone()));
        state.messages += 1;
        // The consumer drains everything it finds, so it only waits (and
        // needs a wake-up) when the queue was empty.
        let waiter = state.waiter.take();
        drop(state);
        wake(waiter);
        outcome
    }

    /// Pushes an item that does not count against capacity: subscription
    /// confirmations, resume backlog (bounded by history), gaps and replies.
    pub fn push(&self, item: Item) {
        if let Item::Message(m) = &item
            && !self.wants(m)
        {
            return;
        }
        self.push_all(std::iter::once(item));
    }

    /// Pushes `items` in order under one lock, so a consumer draining at
    /// the same time sees all of them or none (a subscription's
    /// `Subscribed`, gap and backlog arrive together).
    pub fn push_all(&self, items: impl IntoIterator<Item = Item>) {
        let mut state = self.lock();
        if state.closed.is_some() {
            return;
        }
        for item in items {
            if matches!(item, Item::Message(_)) {
                state.messages += 1;
            }
            state.items.push_back(item);
        }
        let waiter = state.waiter.take();
        drop(state);
        wake(waiter);
    }

    /// Moves every queued item to the end of `out`, in order, handing over
    /// the queue's buffer when `out` is empty (no copy, and the queue keeps
    /// no allocation while the subscriber is idle). Returns the close
    /// reason once the queue is closed and all items before it are taken.
    pub fn drain(&self, out: &mut VecDeque<Item>) -> Result<(), Closed> {
        let mut state = self.lock();
        let items = std::mem::take(&mut state.items);
        state.messages = 0;
        let closed = state.closed;
        drop(state);
        if out.is_empty() {
            *out = items;
        } else {
            out.extend(items);
        }
        match closed {
            Some(reason) if out.is_empty() => Err(reason),
            _ => Ok(()),
        }
    }

    /// Ready when an item is queued or the queue is closed; otherwise
    /// remembers the consumer's waker. Lost wake-ups are impossible: the
    /// check and the registration happen under the lock pushes take.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if !state.items.is_empty() || state.closed.is_some() {
            return Poll::Ready(());
        }
        match &state.waiter {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits until an item is queued or the queue closes. Cancel-safe.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }
}

/// A capacity of at least 1 that fits `u32`.
fn clamp(capacity: usize) -> u32 {
    u32::try_from(capacity.max(1)).unwrap_or(u32::MAX)
}

fn wake(waiter: Option<Waker>) {
    if let Some(w) = waiter {
        w.wake();
    }
}

impl State {
    /// Drops the oldest queued message, leaving one gap marker per run of
    /// dropped messages of a channel.
    fn drop_oldest(&mut self) {
        let Some(index) = self
            .items
            .iter()
            .position(|i| matches!(i, Item::Message(_)))
        else {
            return;
        };
        let Some(Item::Message(dropped)) = self.items.get(index) else {
            return;
        };
        let channel = dropped.channel.clone();
        self.messages -= 1;
        let marked =
            index > 0 && matches!(self.items.get(index - 1), Some(Item::Gap(c)) if *c == channel);
        if marked {
            self.items.remove(index);
        } else {
            self.items[index] = Item::Gap(channel);
        }
    }

    /// Removes every queued message (and gap marker) of `channel` and
    /// appends one gap marker, so the channel's next message follows it.
    /// Returns whether any message was queued.
    fn replace_channel(&mut self, channel: &ChannelName) -> bool {
        let (mut removed, mut gaps) = (0, 0);
        self.items.retain(|item| match item {
            Item::Message(m) if m.channel == *channel => {
                removed += 1;
                false
            }
            Item::Gap(c) if c == channel => {
                gaps += 1;
                false
            }
            _ => true,
        });
        self.messages -= removed;
        if removed + gaps > 0 {
            self.items.push_back(Item::Gap(channel.clone()));
        }
        removed > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::message::Payload;
    use std::time::Instant;

    fn message(channel: &str, seq: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::parse(channel).unwrap(),
            Position { epoch: 1, seq },
            None,
            Payload::from_json(&serde_json::json!(seq)),
            Instant::now(),
        ))
    }

    /// Drains everything queued and summarises it.
    fn drained(q: &Queue) -> Vec<String> {
        let mut out = VecDeque::new();
        q.drain(&mut out).unwrap();
        summary(out.make_contiguous())
    }

    fn summary(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Message(m) => format!("{}{}", m.channel, m.position.seq),
                Item::Gap(c) => format!("gap:{c}"),
                Item::Subscribed { channel, .. } => format!("sub:{channel}"),
                Item::Reply(_) => "reply".into(),
            })
            .collect()
    }

    #[test]
    fn disconnect_closes_after_queued_messages() {
        let q = Queue::new(2, LagPolicy::Disconnect);
        assert_eq!(q.offer(&message("a", 1)), Offer::Queued);
        assert_eq!(q.offer(&message("a", 2)), Offer::Queued);
        assert_eq!(q.offer(&message("a", 3)), Offer::Lagged);
        assert_eq!(q.offer(&message("a", 4)), Offer::Closed);
        let mut out = VecDeque::new();
        assert_eq!(q.drain(&mut out), Ok(()), "queued messages come first");
        assert_eq!(summary(out.make_contiguous()), ["a1", "a2"]);
        out.clear();
        assert_eq!(q.drain(&mut out), Err(Closed::Lagged));
    }

    #[test]
    fn drop_oldest_leaves_one_gap_marker() {
        let q = Queue::new(2, LagPolicy::DropOldest);
        for seq in 1..=5 {
            q.offer(&message("a", seq));
        }
        assert_eq!(drained(&q), ["gap:a", "a4", "a5"]);
    }

    #[test]
    fn keep_latest_keeps_newest_per_channel() {
        let q = Queue::new(2, LagPolicy::KeepLatest);
        q.offer(&message("a", 1));
        q.offer(&message("b", 1));
        q.offer(&message("a", 2));
        q.offer(&message("a", 3));
        assert_eq!(drained(&q), ["b1", "gap:a", "a3"]);
    }

    #[test]
    fn control_items_do_not_count_against_capacity() {
        let q = Queue::new(1, LagPolicy::Disconnect);
        q.push(Item::Reply(Bytes::from_static(b"x")));
        q.push(Item::Gap(ChannelName::parse("a").unwrap()));
        assert_eq!(q.offer(&message("a", 1)), Offer::Queued);
    }

    #[tokio::test]
    async fn ready_is_immediate_when_items_wait_and_drain_keeps_no_buffer() {
        let q = Queue::new(4, LagPolicy::Disconnect);
        q.offer(&message("a", 1));
        q.ready().await;
        let mut out = VecDeque::new();
        q.drain(&mut out).unwrap();
        assert_eq!(
            q.lock().items.capacity(),
            0,
            "the buffer went to the consumer"
        );
        q.offer(&message("a", 2));
        q.drain(&mut out).unwrap();
        assert_eq!(summary(out.make_contiguous()), ["a1", "a2"]);
    }

    #[tokio::test]
    async fn ready_wakes_on_first_push() {
        let q = Queue::new(4, LagPolicy::Disconnect);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        q.offer(&message("a", 1));
        waiter.await.unwrap();
        assert_eq!(drained(&q), ["a1"]);
    }
}
