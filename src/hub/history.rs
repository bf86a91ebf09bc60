//! Bounded per-channel history (count and age) and the resume rule: from a
//! [`Position`] a subscriber gets exactly the messages it missed, or a gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{Message, Position};

/// Retention limits for one channel's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most messages kept; 0 keeps none.
    pub messages: usize,
    /// Oldest message kept.
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            messages: 1000,
            max_age: Duration::from_secs(600),
        }
    }
}

/// What a resume finds: the messages after the position, oldest first, and
/// whether anything between the position and them is lost (a gap).
#[derive(Debug)]
pub struct Resume {
    pub gap: bool,
    pub backlog: Vec<Arc<Message>>,
}

/// One channel's retained messages, oldest first, with consecutive sequences.
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    messages: VecDeque<Arc<Message>>,
    /// Sum of the held messages' [`Message::held_bytes`].
    bytes: usize,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            // Empty until the first publish: an idle channel allocates nothing.
            messages: VecDeque::new(),
            bytes: 0,
        }
    }

    /// What the held messages cost (see [`Message::held_bytes`]), with
    /// the buffer of pointers to them.
    pub fn bytes(&self) -> usize {
        let buffer = self.messages.capacity() * std::mem::size_of::<Arc<Message>>();
        self.bytes + if buffer > 0 { buffer + 16 } else { 0 }
    }

    fn pop_front(&mut self) {
        if let Some(message) = self.messages.pop_front() {
            self.bytes -= message.held_bytes();
        }
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Appends `message`, whose sequence must follow the last one's.
    pub fn push(&mut self, message: Arc<Message>) {
        if self.limits.messages == 0 {
            return;
        }
        debug_assert!(
            self.messages
                .back()
                .is_none_or(|last| last.position.seq + 1 == message.position.seq),
            "history sequences are consecutive"
        );
        if self.messages.len() == self.limits.messages {
            self.pop_front();
        }
        self.bytes += message.held_bytes();
        self.messages.push_back(message);
    }

    /// Forgets every held message (a distributed backplane's cache that is
    /// no longer continuous with the stream).
    pub fn clear(&mut self) {
        self.messages.clear();
        // Give the buffer back too: an evicted channel holds nothing.
        self.messages.shrink_to_fit();
        self.bytes = 0;
    }

    /// Drops messages older than `max_age` at `now`.
    pub fn prune(&mut self, now: Instant) {
        while let Some(oldest) = self.messages.front() {
            if now.saturating_duration_since(oldest.published_at) <= self.limits.max_age {
                break;
            }
            self.pop_front();
        }
    }

    /// The messages after `since` in the stream whose current position is
    /// `head`. Exact when the history still holds everything after `since`;
    /// otherwise a gap and all that is held, oldest first.
    pub fn resume(&self, since: Position, head: Position) -> Resume {
        let covered = since.epoch == head.epoch
            && since.seq <= head.seq
            && match self.messages.front() {
                // Everything after `since` is held when the oldest held
                // message is at most the one right after it.
                Some(oldest) => oldest.position.seq <= since.seq + 1,
                // Nothing held: exact only if nothing was missed.
                None => since.seq == head.seq,
            };
        if covered {
            let skip = self
                .messages
                .front()
                .map_or(0, |oldest| (since.seq + 1 - oldest.position.seq) as usize);
            Resume {
                gap: false,
                backlog: self.messages.iter().skip(skip).cloned().collect(),
            }
        } else {
            Resume {
                gap: true,
                backlog: self.messages.iter().cloned().collect(),
            }
        }
    }

    /// Whether `seq` (in the current epoch) is still held.
    pub fn holds(&self, seq: u64) -> bool {
        self.messages
            .front()
            .is_some_and(|oldest| oldest.position.seq <= seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::message::{ChannelName, Payload};
    use proptest::prelude::*;

    const EPOCH: u64 = 7;

    fn message(seq: u64, at: Instant) -> Arc<Message> {
        Arc::new(Message::new(
            ChannelName::parse("c").unwrap(),
            Position { epoch: EPOCH, seq },
            None,
            Payload::from_json(&serde_json::json!(seq)),
            at,
        ))
    }

    fn seqs(resume: &Resume) -> Vec<u64> {
        resume.backlog.iter().map(|m| m.position.seq).collect()
    }

    #[test]
    fn count_limit_keeps_newest() {
        let now = Instant::now();
        let mut h = History::new(HistoryLimits {
            messages: 3,
            max_age: Duration::from_secs(60),
        });
        for seq in 1..=5 {
            h.push(message(seq, now));
        }
        let r = h.resume(
            Position {
                epoch: EPOCH,
                seq: 2,
            },
            Position {
                epoch: EPOCH,
                seq: 5,
            },
        );
        assert!(!r.gap, "seq 3..=5 are all held");
        assert_eq!(seqs(&r), vec![3, 4, 5]);
        let r = h.resume(
            Position {
                epoch: EPOCH,
                seq: 1,
            },
            Position {
                epoch: EPOCH,
                seq: 5,
            },
        );
        assert!(r.gap, "seq 2 was evicted");
        assert_eq!(seqs(&r), vec![3, 4, 5]);
    }

    #[test]
    fn age_limit_prunes_old_messages() {
        let start = Instant::now();
        let mut h = History::new(HistoryLimits {
            messages: 10,
            max_age: Duration::from_secs(10),
        });
        h.push(message(1, start));
        h.push(message(2, start + Duration::from_secs(5)));
        h.prune(start + Duration::from_secs(11));
        assert_eq!(h.len(), 1, "only the 5 s message is younger than 10 s");
        h.prune(start + Duration::from_secs(16));
        assert!(h.is_empty());
    }

    #[test]
    fn other_epoch_is_a_gap() {
        let now = Instant::now();
        let mut h = History::new(HistoryLimits::default());
        h.push(message(1, now));
        let r = h.resume(
            Position { epoch: 1, seq: 0 },
            Position {
                epoch: EPOCH,
                seq: 1,
            },
        );
        assert!(r.gap);
        assert_eq!(seqs(&r), vec![1]);
    }

    #[test]
    fn caught_up_with_empty_history_is_exact() {
        let h = History::new(HistoryLimits::default());
        let head = Position {
            epoch: EPOCH,
            seq: 4,
        };
        let r = h.resume(head, head);
        assert!(!r.gap && r.backlog.is_empty());
        let r = h.resume(
            Position {
                epoch: EPOCH,
                seq: 3,
            },
            head,
        );
        assert!(r.gap, "seq 4 was published and is no longer held");
    }

    #[test]
    fn a_position_from_the_future_is_a_gap() {
        let h = History::new(HistoryLimits::default());
        let r = h.resume(
            Position {
                epoch: EPOCH,
                seq: 9,
            },
            Position {
                epoch: EPOCH,
                seq: 4,
            },
        );
        assert!(r.gap);
    }

    proptest! {
        /// Resume from any position gets exactly the missed messages, or a
        /// gap plus everything still held, in order and without duplicates.
        #[test]
        fn resume_is_exact_or_a_gap(
            limit in 0usize..20,
            published in 0u64..60,
            since in 0u64..70,
        ) {
            let now = Instant::now();
            let mut h = History::new(HistoryLimits { messages: limit, max_age: Duration::from_secs(60) });
            for seq in 1..=published {
                h.push(message(seq, now));
            }
            let head = Position { epoch: EPOCH, seq: published };
            let r = h.resume(Position { epoch: EPOCH, seq: since }, head);
            let got = seqs(&r);
            prop_assert!(got.windows(2).all(|w| w[0] + 1 == w[1]), "consecutive: {:?}", got);
            if r.gap {
                let held_from = published.saturating_sub(limit as u64) + 1;
                prop_assert_eq!(got, (held_from..=published).collect::<Vec<_>>());
                prop_assert!(since > published || since + 1 < held_from);
            } else {
                prop_assert_eq!(got, (since + 1..=published).collect::<Vec<_>>());
            }
        }
    }
}
