//! One channel: its stream (epoch and sequence), history, subscribers and
//! idempotency keys. Always used under the hub's per-channel lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::grip::{Formats, Sequencer};
use super::history::{History, HistoryLimits};
use super::message::{ChannelName, Message, Payload, Position, Publication, Receipt};
use super::queue::{Item, Offer, Queue};

mod external;

pub use self::external::{Fetch, Fetched, Want};

/// Counts from one fan-out, for the hub's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fanout {
    pub queued: usize,
    pub dropped: usize,
    pub lagged: usize,
}

#[derive(Debug)]
pub struct Channel {
    name: ChannelName,
    epoch: u64,
    /// Sequence of the last published message (0 = none yet).
    seq: u64,
    history: History,
    subscribers: Vec<Arc<Queue>>,
    /// Receipts by idempotency key, kept while their message is in history.
    idempotency: HashMap<Arc<str>, Receipt>,
    /// Set when the hub removed this channel from its map: a caller that
    /// still holds it must look the channel up again.
    pub(super) removed: bool,
    /// When the channel last had a subscriber or a held message.
    idle_since: Option<Instant>,
    /// Set when a distributed backplane owns the stream: positions come
    /// from it and the history is a cache (see `external`).
    external: Option<Box<external::External>>,
    /// GRIP id/prev-id ordering, created by the first GRIP item.
    sequencer: Option<Box<Sequencer>>,
    /// Bytes of the idempotency keys held.
    key_bytes: usize,
    /// What this channel last reported to the hub's budget (`cost`).
    pub(super) accounted: usize,
    /// Its place in the budget's eviction order, while it holds something.
    pub(super) lru: Option<u64>,
}

/// What one allocation costs beyond its bytes (allocator header, rounding).
const ALLOC: usize = 16;

/// A channel's fixed cost while nothing but its history keeps it: the
/// channel behind its `Arc<Mutex<_>>`, the name's allocation, the hub
/// map's slot (counted twice: the map is at worst half full) and its place
/// in the budget's order (a B-tree entry with its share of the node).
const CHANNEL_BASE: usize = std::mem::size_of::<std::sync::Mutex<Channel>>()
    + 16
    + ALLOC
    + 16
    + ALLOC
    + 2 * (std::mem::size_of::<ChannelName>() + std::mem::size_of::<Arc<()>>() + 1)
    + 64;

/// One idempotency key's fixed cost: its map slot (counted twice, as the
/// map's) and the key's allocation header; its bytes are counted apart.
const KEY_BASE: usize = 2 * (std::mem::size_of::<(Arc<str>, Receipt)>() + 1) + 16 + ALLOC;

impl Channel {
    pub fn new(name: ChannelName, epoch: u64, limits: HistoryLimits, now: Instant) -> Self {
        Self {
            name,
            epoch,
            seq: 0,
            history: History::new(limits),
            subscribers: Vec::new(),
            idempotency: HashMap::new(),
            removed: false,
            idle_since: Some(now),
            external: None,
            sequencer: None,
            key_bytes: 0,
            accounted: 0,
            lru: None,
        }
    }

    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// What this channel holds against `realtime.history.max_total`, an
    /// estimate from above: its history, its idempotency keys, and, while
    /// no subscriber keeps it, the channel itself (a subscribed channel is
    /// part of its subscribers' cost, bounded by the connection limits).
    pub(super) fn cost(&self) -> usize {
        if self.removed {
            return 0;
        }
        let keys = self.idempotency.len() * KEY_BASE + self.key_bytes;
        let own = if self.listening() {
            0
        } else {
            let external = if self.external.is_some() {
                std::mem::size_of::<external::External>() + ALLOC
            } else {
                0
            };
            CHANNEL_BASE + self.name.as_str().len() + external
        };
        self.history.bytes() + keys + own
    }

    /// Drops the history and the idempotency keys (the hub is over
    /// `max_total`). Subscribers stay, and so do the epoch and sequence: a
    /// resume into the dropped range gets a gap; an external channel reads
    /// the backplane again instead. Returns whether nothing else keeps the
    /// channel, so the hub can remove it.
    pub(super) fn evict(&mut self) -> bool {
        self.history.clear();
        self.idempotency = HashMap::new();
        self.key_bytes = 0;
        self.cache_evicted();
        !self.listening() && self.sequencer.as_ref().is_none_or(|s| s.is_idle())
    }

    pub fn head(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Appends a message to the stream and offers it to every subscriber.
    pub fn publish(&mut self, publication: &Publication, fanout: &mut Fanout) -> Receipt {
        if let Some(formats) = publication.payload.grip() {
            return self.publish_grip(formats.clone(), publication.accepted_at, fanout);
        }
        self.history.prune(publication.accepted_at);
        if let Some(key) = &publication.idempotency_key
            && let Some(receipt) = self.idempotency.get(key)
        {
            return receipt.clone();
        }
        self.seq += 1;
        let message = Arc::new(Message::new(
            self.name.clone(),
            self.head(),
            publication.event.clone(),
            publication.payload.clone(),
            publication.accepted_at,
        ));
        let reached = offer_all(&self.subscribers, &message, fanout);
        self.history.push(message);
        let receipt = Receipt {
            channel: self.name.clone(),
            position: self.head(),
            subscribers: reached,
        };
        if let Some(key) = &publication.idempotency_key {
            self.forget_expired_keys();
            if self.history.limits().messages > 0
                && self
                    .idempotency
                    .insert(key.clone(), receipt.clone())
                    .is_none()
            {
                self.key_bytes += key.len();
            }
        }
        self.idle_since = None;
        receipt
    }

    /// Registers `queue` and queues, in order: `Subscribed`, then a gap if
    /// `since` is not covered, then the backlog after `since`. Live messages
    /// published later follow, since this runs under the channel lock.
    ///
    /// Returns the position the subscriber is at once `Subscribed` is
    /// taken: `since` when covered, just before the backlog after a gap,
    /// the head for a new subscriber.
    pub fn subscribe(
        &mut self,
        queue: &Arc<Queue>,
        since: Option<Position>,
        now: Instant,
    ) -> Position {
        self.history.prune(now);
        let head = self.head();
        let (from, gap, backlog) = match since {
            None => (head, false, Vec::new()),
            Some(since) => {
                let resume = self.history.resume(since, head);
                let from = if resume.gap {
                    resume.backlog.first().map_or(head, |m| Position {
                        epoch: head.epoch,
                        seq: m.position.seq - 1,
                    })
                } else {
                    since
                };
                (from, resume.gap, resume.backlog)
            }
        };
        let subscribed = Item::Subscribed {
            channel: self.name.clone(),
            position: from,
        };
        let gap = gap.then(|| Item::Gap(self.name.clone()));
        queue.push_all(
            std::iter::once(subscribed)
                .chain(gap)
                .chain(backlog.into_iter().map(Item::Message)),
        );
        // Pointer comparison: no cache miss per subscriber on a channel
        // with tens of thousands of them.
        if !self.subscribers.iter().any(|q| Arc::ptr_eq(q, queue)) {
            self.subscribers.push(queue.clone());
        }
        self.idle_since = None;
        from
    }

    /// The id of the last GRIP item delivered on this channel.
    pub fn grip_last_id(&self) -> Option<&str> {
        self.sequencer.as_ref().and_then(|s| s.last_id())
    }

    /// Orders a GRIP item by `prev-id` and offers what is ready to the GRIP
    /// subscribers. Neither the native sequence nor history changes.
    fn publish_grip(
        &mut self,
        formats: std::sync::Arc<Formats>,
        now: Instant,
        fanout: &mut Fanout,
    ) -> Receipt {
        let ready = self.sequencer.get_or_insert_default().order(formats, now);
        let reached = self.offer_grip(ready, now, fanout);
        Receipt {
            channel: self.name.clone(),
            position: self.head(),
            subscribers: reached,
        }
    }

    fn offer_grip(&mut self, ready: Vec<Arc<Formats>>, now: Instant, fanout: &mut Fanout) -> usize {
        let mut reached = 0;
        for formats in ready {
            let message = Arc::new(Message::new(
                self.name.clone(),
                self.head(),
                None,
                Payload::with_grip(formats),
                now,
            ));
            reached += offer_all(&self.subscribers, &message, fanout);
        }
        reached
    }

    pub fn unsubscribe(&mut self, queue: &Queue, now: Instant) {
        if let Some(index) = self
            .subscribers
            .iter()
            .position(|q| std::ptr::eq(&**q, queue))
        {
            self.subscribers.swap_remove(index);
        }
        if self.external.is_some() {
            self.forget_external(queue);
        }
        self.mark_idle(now);
    }

    /// Prunes history by age; returns when the channel became idle (no
    /// subscribers, nothing held), if it is.
    pub fn sweep(&mut self, now: Instant) -> Option<Instant> {
        self.history.prune(now);
        self.forget_expired_keys();
        if let Some(sequencer) = self.sequencer.as_mut() {
            let expired = sequencer.expire(now);
            self.offer_grip(expired, now, &mut Fanout::default());
        }
        self.mark_idle(now);
        self.idle_since
    }

    fn mark_idle(&mut self, now: Instant) {
        let grip_idle = self.sequencer.as_ref().is_none_or(|s| s.is_idle());
        if self.subscribers.is_empty()
            && self.history.is_empty()
            && !self.has_pending()
            && grip_idle
        {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    fn forget_expired_keys(&mut self) {
        let history = &self.history;
        let epoch = self.epoch;
        let key_bytes = &mut self.key_bytes;
        self.idempotency.retain(|key, r| {
            let keep = r.position.epoch == epoch && history.holds(r.position.seq);
            if !keep {
                *key_bytes -= key.len();
            }
            keep
        });
    }
}

/// Offers `message` to every subscriber queue, counting drops and lags in
/// `fanout`; returns the number of queues that took it. The one fan-out
/// loop of every stream kind (local, external, GRIP).
pub(super) fn offer_all(
    subscribers: &[Arc<Queue>],
    message: &Arc<Message>,
    fanout: &mut Fanout,
) -> usize {
    let mut reached = 0;
    for queue in subscribers {
        match queue.offer(message) {
            Offer::Queued => reached += 1,
            Offer::QueuedDroppingOlder => {
                reached += 1;
                fanout.dropped += 1;
            }
            Offer::Lagged => fanout.lagged += 1,
            Offer::Closed | Offer::Skipped => {}
        }
    }
    fanout.queued += reached;
    reached
}
