//! The hub's memory cap, `realtime.history.max_total` (SPEC §9).
//!
//! Every channel accounts what it holds for history (its messages, its
//! idempotency keys and, while no subscriber keeps it, the channel itself:
//! see `Channel::cost`). The [`Budget`] sums those estimates and orders the
//! channels by their last publish. Past the cap the hub evicts whole channel
//! histories, least recently published first: a channel without
//! subscribers is dropped (a later resume finds a new epoch, a gap), one
//! with subscribers keeps them and its position but no history (a resume
//! into the evicted range gets a gap). Nothing is lost silently.
//!
//! Lock order: a channel's lock, then the budget's. Eviction takes them
//! one after the other, never nested the other way.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::message::ChannelName;

/// `realtime.history.max_total` when not configured.
pub const DEFAULT_MAX_TOTAL: usize = 256 << 20;

#[derive(Debug)]
pub struct Budget {
    max_total: AtomicUsize,
    held: AtomicUsize,
    /// Channels holding something, by the tick of their last publish (or
    /// of when they started to hold something). Oldest first.
    order: Mutex<Order>,
}

#[derive(Debug, Default)]
struct Order {
    next: u64,
    channels: BTreeMap<u64, ChannelName>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TOTAL)
    }
}

impl Budget {
    pub fn new(max_total: usize) -> Self {
        Self {
            max_total: AtomicUsize::new(max_total),
            held: AtomicUsize::new(0),
            order: Mutex::default(),
        }
    }

    pub fn set_max_total(&self, bytes: usize) {
        self.max_total.store(bytes, Ordering::Relaxed);
    }

    pub fn max_total(&self) -> usize {
        self.max_total.load(Ordering::Relaxed)
    }

    /// Bytes accounted by all channels together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.held() > self.max_total()
    }

    /// A channel's estimate changed from `old` to `new` bytes.
    pub fn adjust(&self, old: usize, new: usize) {
        if new > old {
            self.held.fetch_add(new - old, Ordering::Relaxed);
        } else if old > new {
            self.held.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// Makes `channel` the most recently published; `tick` is its previous
    /// place, if it had one. Returns its new place.
    pub fn touch(&self, tick: Option<u64>, channel: &ChannelName) -> u64 {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tick) = tick {
            if tick + 1 == order.next {
                return tick; // already the newest
            }
            order.channels.remove(&tick);
        }
        let tick = order.next;
        order.next += 1;
        order.channels.insert(tick, channel.clone());
        tick
    }

    /// Removes a channel's place (the channel is gone or holds nothing).
    pub fn forget(&self, tick: u64) {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.channels.remove(&tick);
    }

    /// Takes the least recently published channel out of the order.
    pub fn pop_oldest(&self) -> Option<(u64, ChannelName)> {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.channels.pop_first()
    }

    /// Channels in the order (for tests).
    #[cfg(test)]
    pub fn ordered(&self) -> usize {
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_by_last_touch_and_the_newest_keeps_its_place() {
        let budget = Budget::new(100);
        let a = ChannelName::parse("a").unwrap();
        let b = ChannelName::parse("b").unwrap();
        let ta = budget.touch(None, &a);
        let tb = budget.touch(None, &b);
        assert_eq!(budget.touch(Some(tb), &b), tb, "already the newest");
        let ta2 = budget.touch(Some(ta), &a);
        assert!(ta2 > tb);
        assert_eq!(budget.ordered(), 2);
        assert_eq!(budget.pop_oldest().map(|(_, c)| c), Some(b));
        assert_eq!(budget.pop_oldest().map(|(_, c)| c), Some(a));
        assert!(budget.pop_oldest().is_none());
    }

    #[test]
    fn held_bytes_follow_adjustments() {
        let budget = Budget::new(100);
        budget.adjust(0, 80);
        assert!(!budget.over());
        budget.adjust(80, 120);
        assert!(budget.over());
        budget.adjust(120, 0);
        assert_eq!(budget.held(), 0);
    }
}
