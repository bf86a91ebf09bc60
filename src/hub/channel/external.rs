//! A channel whose stream a distributed backplane owns (Redis, NATS).
//!
//! The backplane assigns every position; the hub only checks continuity.
//! Its history is a cache of the backplane's, complete from `cache_from`
//! on. Anything the cache cannot answer becomes a [`Want`]: the backplane
//! task reads the backplane's history ([`Fetch`]) and hands the answer back
//! with [`Channel::apply`]. Until then:
//!
//! * a subscriber whose resume position the cache does not cover waits as
//!   *pending* (it gets `Subscribed` and its backlog when the answer comes);
//! * a live message that does not follow the head (a reconnect, a lost
//!   dataset, a new epoch) marks the channel unsynced and waits in `early`
//!   (bounded; the oldest is dropped, and the hole becomes a gap signal).
//!
//! Still no IO here: the hub says what it needs, the backplane task does it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::{Channel, Fanout};
use crate::hub::history::HistoryLimits;
use crate::hub::message::{ChannelName, Message, Position};
use crate::hub::queue::{Item, Queue};

/// Most live messages held while a channel waits for a history read.
/// Overflow policy: drop the oldest (the read usually returns it; if not,
/// the subscribers get a gap signal).
const EARLY_MAX: usize = 4096;

/// A history read the hub asks the backplane for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Only the channel's current position (a new subscriber, no resume).
    Head,
    /// Every retained message after this position; the whole retained
    /// history when its epoch is not the backplane's current one.
    After(Position),
}

/// The backplane's answer to a [`Fetch`].
#[derive(Debug)]
pub struct Fetched {
    /// The channel's current position on the backplane.
    pub head: Position,
    /// Retained messages of `head.epoch` asked for, oldest first.
    pub messages: Vec<Arc<Message>>,
}

/// What a channel needs from the backplane now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// Has local subscribers (live or pending): receive its live messages.
    pub listen: bool,
    pub fetch: Option<Fetch>,
}

impl Want {
    pub const NOTHING: Want = Want {
        listen: false,
        fetch: None,
    };
}

#[derive(Debug, Default)]
pub(crate) struct External {
    /// `epoch`/`seq` came from the backplane at least once.
    known: bool,
    /// Continuous with the backplane's stream: live messages apply directly.
    synced: bool,
    /// Lowest sequence from which the cache is complete.
    cache_from: u64,
    /// Subscribers waiting for a history read, with their resume positions.
    pending: Vec<(Arc<Queue>, Option<Position>)>,
    /// Live messages received while unsynced, oldest first.
    early: VecDeque<Arc<Message>>,
}

impl Channel {
    /// A channel fed by a distributed backplane.
    pub fn new_external(name: ChannelName, limits: HistoryLimits, now: Instant) -> Self {
        let mut channel = Self::new(name, 0, limits, now);
        channel.external = Some(Box::default());
        channel
    }

    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    pub(super) fn has_pending(&self) -> bool {
        self.external
            .as_ref()
            .is_some_and(|e| !e.pending.is_empty())
    }

    /// Has local subscribers, live or waiting.
    pub fn listening(&self) -> bool {
        !self.subscribers.is_empty() || self.has_pending()
    }

    /// Subscribes `queue`, from the cache when it can answer, else as a
    /// pending subscriber. Returns the position to start from (replaced by
    /// the `Subscribed` item when it comes) and whether the channel's
    /// [`Want`] changed.
    pub fn subscribe_external(
        &mut self,
        queue: &Arc<Queue>,
        since: Option<Position>,
        now: Instant,
    ) -> (Position, bool) {
        let was_listening = self.listening();
        let head = self.head();
        let Some(ext) = self.external.as_ref() else {
            return (self.subscribe(queue, since, now), false);
        };
        let served = ext.synced
            && since.is_none_or(|s| s.epoch == head.epoch && s.seq + 1 >= ext.cache_from);
        if served {
            (self.subscribe(queue, since, now), !was_listening)
        } else {
            let ext = self.external.as_mut().expect("checked above");
            ext.pending.retain(|(q, _)| !Arc::ptr_eq(q, queue));
            ext.pending.push((queue.clone(), since));
            self.idle_since = None;
            (since.unwrap_or(head), true)
        }
    }

    /// Removes `queue` from the pending subscribers; when nobody is left,
    /// the cache stops being fed and so is no longer in sync.
    pub(super) fn forget_external(&mut self, queue: &Queue) {
        let listening = !self.subscribers.is_empty();
        if let Some(ext) = self.external.as_mut() {
            ext.pending.retain(|(q, _)| !std::ptr::eq(&**q, queue));
            if !listening && ext.pending.is_empty() {
                ext.synced = false;
                ext.early.clear();
            }
        }
    }

    /// A live message from the backplane. Returns whether the channel now
    /// wants a history read it did not want before.
    pub fn deliver(&mut self, message: Arc<Message>, fanout: &mut Fanout) -> bool {
        let listening = self.listening();
        let Some(ext) = self.external.as_mut() else {
            return false;
        };
        if !listening {
            return false;
        }
        if ext.synced && message.position.epoch == self.epoch {
            if message.position.seq <= self.seq {
                return false; // already delivered (a history read raced it)
            }
            if message.position.seq == self.seq + 1 {
                self.append(message, fanout);
                return false;
            }
        }
        let newly = ext.synced;
        ext.synced = false;
        if ext.early.len() == EARLY_MAX {
            ext.early.pop_front();
        }
        ext.early.push_back(message);
        newly
    }

    /// What the channel needs from the backplane now.
    pub fn want(&self) -> Want {
        let Some(ext) = self.external.as_ref() else {
            return Want::NOTHING;
        };
        if !self.listening() {
            return Want::NOTHING;
        }
        if ext.synced && ext.pending.is_empty() {
            return Want {
                listen: true,
                fetch: None,
            };
        }
        let mut pick: Option<Position> = None;
        for since in ext.pending.iter().filter_map(|(_, s)| *s) {
            pick = Some(match pick {
                None => since,
                // Another epoch asks for everything: nothing reads further back.
                Some(p) if ext.known && p.epoch != self.epoch => p,
                Some(_) if ext.known && since.epoch != self.epoch => since,
                Some(p) if since.seq < p.seq => since,
                Some(p) => p,
            });
        }
        if ext.known && !ext.synced {
            let head = self.head();
            pick = Some(match pick {
                Some(p) if p.epoch != head.epoch || p.seq <= head.seq => p,
                _ => head,
            });
        }
        Want {
            listen: true,
            fetch: Some(pick.map_or(Fetch::Head, Fetch::After)),
        }
    }

    /// Applies the backplane's answer to `asked`: delivers what live
    /// subscribers missed (a gap first where the backplane no longer holds
    /// it, or the epoch changed), refreshes the cache, and serves pending
    /// subscribers it now covers. Returns whether it still wants something.
    pub fn apply(
        &mut self,
        asked: Fetch,
        fetched: Fetched,
        now: Instant,
        fanout: &mut Fanout,
    ) -> bool {
        let Some(mut ext) = self.external.take() else {
            return false;
        };
        let head = fetched.head;
        if !ext.known || self.epoch != head.epoch {
            // Epoch 0 is a channel with nothing published yet: a first
            // epoch misses nothing.
            if ext.known && self.epoch != 0 {
                self.gap_live();
            }
            self.history.clear();
            self.epoch = head.epoch;
            self.seq = fetched
                .messages
                .first()
                .map_or(head.seq, |m| m.position.seq.saturating_sub(1));
            ext.cache_from = self.seq + 1;
            ext.known = true;
        }
        let mut incoming: Vec<Arc<Message>> = fetched
            .messages
            .into_iter()
            .filter(|m| m.position.epoch == head.epoch)
            .collect();
        // The backplane holds more than the cache: take its copy of the
        // older part, so later resumes are answered here.
        if let Some(first) = incoming.first()
            && first.position.seq < ext.cache_from
            && first.position.seq <= self.seq
        {
            self.history.clear();
            for m in incoming.iter().filter(|m| m.position.seq <= self.seq) {
                self.history.push(m.clone());
            }
            ext.cache_from = first.position.seq;
        }
        let mut newer_epoch = false;
        for m in ext.early.drain(..) {
            if m.position.epoch == head.epoch {
                incoming.push(m);
            } else {
                newer_epoch = true;
            }
        }
        incoming.sort_by_key(|m| m.position.seq);
        incoming.dedup_by_key(|m| m.position.seq);
        let mut ahead = false;
        for m in incoming {
            if m.position.seq <= self.seq {
                continue;
            }
            if ahead {
                ext.early.push_back(m);
                continue;
            }
            if m.position.seq != self.seq + 1 {
                if self.seq >= head.seq {
                    // Live messages beyond what the read saw, with a hole
                    // before them: not lost, just not read yet. Keep them
                    // and read again.
                    ahead = true;
                    ext.early.push_back(m);
                    continue;
                }
                // Trimmed (or dropped from `early`) before this node saw it.
                self.gap_live();
                self.history.clear();
                ext.cache_from = m.position.seq;
                self.seq = m.position.seq - 1;
            }
            self.append(m, fanout);
        }
        if head.seq > self.seq {
            // Published, but aged out of the backplane's history.
            self.gap_live();
            self.history.clear();
            self.seq = head.seq;
            ext.cache_from = head.seq + 1;
        }
        ext.synced = !newer_epoch && !ahead;
        self.external = Some(ext);
        self.serve_pending(asked, head.epoch, now)
    }

    /// Subscribes the pending subscribers the cache (and the answer to
    /// `asked`, of stream `epoch`) now covers, once the stream is synced.
    /// Returns whether the channel still wants something.
    fn serve_pending(&mut self, asked: Fetch, epoch: u64, now: Instant) -> bool {
        let Some(ext) = self.external.as_mut() else {
            return false;
        };
        let asked_all = match asked {
            Fetch::Head => None,
            Fetch::After(p) if p.epoch != epoch => Some(0),
            Fetch::After(p) => Some(p.seq),
        };
        let pending = std::mem::take(&mut ext.pending);
        let synced = ext.synced;
        let cache_from = ext.cache_from;
        let mut waiting = Vec::new();
        for (queue, since) in pending {
            let covered = match since {
                None => true,
                Some(s) => {
                    (s.epoch == self.epoch && (s.seq + 1 >= cache_from || s.seq > self.seq))
                        || asked_all
                            .is_some_and(|a| a == 0 || (s.epoch == self.epoch && a <= s.seq))
                }
            };
            if synced && covered {
                self.subscribe(&queue, since, now);
            } else {
                waiting.push((queue, since));
            }
        }
        let ext = self
            .external
            .as_mut()
            .expect("checked above; subscribe keeps it");
        ext.pending = waiting;
        !ext.synced || !ext.pending.is_empty()
    }

    /// The backplane reconnected: live messages may have been missed, so
    /// read history before trusting the stream again. Returns whether the
    /// channel has subscribers (and so wants that read).
    pub fn resync(&mut self) -> bool {
        let listening = self.listening();
        if let Some(ext) = self.external.as_mut() {
            ext.synced = false;
        }
        listening
    }

    /// The history (the cache) was dropped: it is complete from the next
    /// message on, so an older resume reads the backplane again.
    pub(super) fn cache_evicted(&mut self) {
        let seq = self.seq;
        if let Some(ext) = self.external.as_mut() {
            ext.cache_from = seq + 1;
        }
    }

    fn gap_live(&self) {
        for queue in &self.subscribers {
            queue.push(Item::Gap(self.name.clone()));
        }
    }

    /// Appends the next message of the stream and offers it to every
    /// subscriber (as `publish` does for a locally sequenced one).
    fn append(&mut self, message: Arc<Message>, fanout: &mut Fanout) {
        super::offer_all(&self.subscribers, &message, fanout);
        self.seq = message.position.seq;
        self.history.push(message);
        self.idle_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::message::Payload;
    use crate::hub::queue::LagPolicy;

    const E: u64 = 77;

    fn msg(epoch: u64, seq: u64) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::parse("c").unwrap(),
            Position { epoch, seq },
            None,
            Payload::from_json(&serde_json::json!(seq)),
            Instant::now(),
        ))
    }

    fn channel() -> Channel {
        Channel::new_external(
            ChannelName::parse("c").unwrap(),
            HistoryLimits::default(),
            Instant::now(),
        )
    }

    /// Items as short strings: `S<seq>`, `G`, `M<seq>`.
    fn items(queue: &Queue) -> Vec<String> {
        let mut out = VecDeque::new();
        let _ = queue.drain(&mut out);
        out.into_iter()
            .filter_map(|i| match i {
                Item::Subscribed { position, .. } => Some(format!("S{}", position.seq)),
                Item::Gap(_) => Some("G".to_owned()),
                Item::Message(m) => Some(format!("M{}", m.position.seq)),
                Item::Reply(_) => None,
            })
            .collect()
    }

    fn fetched(head: u64, seqs: std::ops::RangeInclusive<u64>) -> Fetched {
        Fetched {
            head: Position {
                epoch: E,
                seq: head,
            },
            messages: seqs.map(|s| msg(E, s)).collect(),
        }
    }

    /// A channel with one live subscriber that has read the head at
    /// `seq` (and got its "subscribed" item).
    fn live_at(seq: u64) -> (Channel, Arc<Queue>, Fanout) {
        let mut c = channel();
        let q = Queue::new(16, LagPolicy::Disconnect);
        c.subscribe_external(&q, None, Instant::now());
        let mut f = Fanout::default();
        c.apply(Fetch::Head, head_only(seq), Instant::now(), &mut f);
        assert_eq!(items(&q), [format!("S{seq}")]);
        (c, q, f)
    }

    fn head_only(seq: u64) -> Fetched {
        Fetched {
            head: Position { epoch: E, seq },
            messages: Vec::new(),
        }
    }

    #[test]
    fn a_resuming_subscriber_waits_for_the_read_then_gets_its_backlog() {
        let mut c = channel();
        let q = Queue::new(16, LagPolicy::Disconnect);
        let since = Position { epoch: E, seq: 2 };
        let (_, changed) = c.subscribe_external(&q, Some(since), Instant::now());
        assert!(changed);
        assert!(items(&q).is_empty(), "nothing before the read");
        let want = c.want();
        assert_eq!(want.fetch, Some(Fetch::After(since)));
        let mut f = Fanout::default();
        assert!(!c.apply(
            Fetch::After(since),
            fetched(4, 3..=4),
            Instant::now(),
            &mut f
        ));
        assert_eq!(items(&q), ["S2", "M3", "M4"]);
        // Live messages follow; a duplicate is ignored.
        assert!(!c.deliver(msg(E, 5), &mut f));
        assert!(!c.deliver(msg(E, 5), &mut f));
        assert_eq!(items(&q), ["M5"]);
        assert_eq!(c.want().fetch, None);
    }

    #[test]
    fn a_hole_in_live_messages_is_filled_from_history() {
        let (mut c, q, mut f) = live_at(1);
        assert!(c.deliver(msg(E, 4), &mut f), "2 and 3 are missing");
        assert_eq!(
            c.want().fetch,
            Some(Fetch::After(Position { epoch: E, seq: 1 }))
        );
        assert!(!c.deliver(msg(E, 5), &mut f), "already asked");
        let at = Fetch::After(Position { epoch: E, seq: 1 });
        assert!(!c.apply(at, fetched(4, 2..=4), Instant::now(), &mut f));
        assert_eq!(items(&q), ["M2", "M3", "M4", "M5"], "no gap, no repeat");
    }

    #[test]
    fn a_new_epoch_or_trimmed_history_is_a_gap_for_live_subscribers() {
        let (mut c, q, mut f) = live_at(3);
        // The dataset was lost: a new epoch starts at 1.
        assert!(c.deliver(msg(E + 1, 1), &mut f));
        let at = Fetch::After(Position { epoch: E, seq: 3 });
        let new = Fetched {
            head: Position {
                epoch: E + 1,
                seq: 1,
            },
            messages: vec![msg(E + 1, 1)],
        };
        c.apply(at, new, Instant::now(), &mut f);
        assert_eq!(items(&q), ["G", "M1"]);
        // Reconnected after messages aged out: head moved, nothing held.
        assert!(c.resync());
        let at = Fetch::After(Position {
            epoch: E + 1,
            seq: 1,
        });
        let aged = Fetched {
            head: Position {
                epoch: E + 1,
                seq: 9,
            },
            messages: Vec::new(),
        };
        c.apply(at, aged, Instant::now(), &mut f);
        assert_eq!(items(&q), ["G"]);
    }

    #[test]
    fn live_messages_beyond_a_read_wait_for_the_next_read_instead_of_a_gap() {
        let (mut c, q, mut f) = live_at(1);
        // 3 arrives before 2; the read (started earlier) only saw 1.
        assert!(c.deliver(msg(E, 3), &mut f));
        let at = Fetch::After(Position { epoch: E, seq: 1 });
        assert!(
            c.apply(at, head_only(1), Instant::now(), &mut f),
            "reads again"
        );
        assert!(items(&q).is_empty(), "no gap, nothing out of order");
        assert!(!c.apply(at, fetched(3, 2..=3), Instant::now(), &mut f));
        assert_eq!(items(&q), ["M2", "M3"]);
    }

    #[test]
    fn the_last_subscriber_leaving_stops_listening() {
        let mut c = channel();
        let q = Queue::new(16, LagPolicy::Disconnect);
        c.subscribe_external(&q, None, Instant::now());
        assert!(c.want().listen);
        c.unsubscribe(&q, Instant::now());
        assert_eq!(c.want(), Want::NOTHING);
        assert!(!c.listening());
    }
}
