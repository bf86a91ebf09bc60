//! The hub: channels, history, fan-out into per-subscriber queues.
//!
//! * [`Hub::publish`] appends to a channel's stream and offers the message to
//!   every subscriber queue; it never waits on a subscriber.
//! * [`Hub::subscribe`] registers a queue, replaying what a resuming
//!   subscriber missed (or a gap) before any live message.
//!
//! The hub does no IO and knows no HTTP or wire format. Locks are short,
//! synchronous and never held across an `.await`.

pub mod budget;
pub mod channel;
pub mod grip;
pub mod history;
pub mod message;
pub mod queue;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use self::budget::Budget;
use self::channel::{Channel, Fanout, Fetch, Fetched, Want};
use self::history::HistoryLimits;
use self::message::{ChannelName, Position, Publication, Receipt};
use self::queue::{LagPolicy, Queue};

/// Picks the history limits of a channel when it is created.
pub type HistoryPolicy = Box<dyn Fn(&ChannelName) -> HistoryLimits + Send + Sync>;

/// How long an idle channel (no subscribers, empty history) is kept before
/// it is dropped, so a subscriber that reconnects at once keeps its epoch.
pub const IDLE_CHANNEL_GRACE: Duration = Duration::from_secs(30);

pub struct Hub {
    channels: DashMap<ChannelName, Arc<Mutex<Channel>>>,
    history_policy: HistoryPolicy,
    metrics: HubMetrics,
    /// Set when a distributed backplane owns order and history.
    demand: Option<Demand>,
    /// `realtime.history.max_total`: what all histories may hold together.
    budget: Budget,
}

/// Channels whose [`Want`] changed, for the backplane task. Bounded by the
/// number of channels: a channel is marked once however often it changes
/// (overflow policy: coalesce).
#[derive(Default)]
pub struct Demand {
    dirty: Mutex<std::collections::HashSet<ChannelName>>,
    notify: tokio::sync::Notify,
}

impl Demand {
    fn mark(&self, channel: &ChannelName) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if dirty.insert(channel.clone()) {
            drop(dirty);
            self.notify.notify_one();
        }
    }
}

/// The hub's own metrics, registered by `metrics::Metrics`.
#[derive(Clone, Debug, Default)]
pub struct HubMetrics {
    pub published: Counter,
    pub queued: Counter,
    pub dropped: Counter,
    pub lag_disconnects: Counter,
    pub channels: Gauge,
    pub history_bytes: Gauge,
    pub history_evictions: Counter,
}

impl HubMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pushgate_messages_published",
            "Messages appended to a channel stream on this node",
            self.published.clone(),
        );
        registry.register(
            "pushgate_messages_queued",
            "Messages queued for subscribers (one per subscriber reached)",
            self.queued.clone(),
        );
        registry.register(
            "pushgate_messages_dropped",
            "Messages dropped from full subscriber queues (drop_oldest, keep_latest)",
            self.dropped.clone(),
        );
        registry.register(
            "pushgate_lag_disconnects",
            "Subscribers closed because their queue overflowed (on_lag: disconnect)",
            self.lag_disconnects.clone(),
        );
        registry.register(
            "pushgate_channels",
            "Channels held by the hub",
            self.channels.clone(),
        );
        registry.register(
            "pushgate_history_bytes",
            "Bytes the hub accounts for history against realtime.history.max_total (an estimate from above)",
            self.history_bytes.clone(),
        );
        registry.register(
            "pushgate_history_evictions",
            "Channel histories evicted because the hub was over realtime.history.max_total",
            self.history_evictions.clone(),
        );
    }
}

impl Hub {
    pub fn new(history_policy: HistoryPolicy) -> Self {
        Self {
            channels: DashMap::new(),
            history_policy,
            metrics: HubMetrics::default(),
            demand: None,
            budget: Budget::default(),
        }
    }

    /// Sets `realtime.history.max_total`; evicts at once when over it.
    pub fn set_max_total(&self, bytes: usize) {
        self.budget.set_max_total(bytes);
        self.enforce_budget();
    }

    /// Bytes accounted for history against `max_total`.
    pub fn history_bytes(&self) -> usize {
        self.budget.held()
    }

    /// A hub fed by a distributed backplane: positions come from the
    /// backplane (through [`Hub::deliver`] and [`Hub::apply`]) and the
    /// history is a cache. [`Hub::publish`] is not used.
    pub fn external(history_policy: HistoryPolicy) -> Self {
        Self {
            demand: Some(Demand::default()),
            ..Self::new(history_policy)
        }
    }

    /// The history limits `channel` has (or would have).
    pub fn limits(&self, channel: &ChannelName) -> HistoryLimits {
        (self.history_policy)(channel)
    }

    /// A hub whose channels all use `limits`.
    pub fn with_limits(limits: HistoryLimits) -> Self {
        Self::new(Box::new(move |_| limits))
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// A new queue for one subscriber (a session).
    pub fn queue(&self, capacity: usize, policy: LagPolicy) -> Arc<Queue> {
        Queue::new(capacity, policy)
    }

    /// Publishes each publication in order; one receipt each.
    pub fn publish(&self, publications: &[Publication]) -> Vec<Receipt> {
        let _deliver = crate::telemetry::deliver(publications.len());
        let mut fanout = Fanout::default();
        let receipts = publications
            .iter()
            .map(|p| {
                self.with_channel(&p.channel, p.accepted_at, |channel| {
                    let receipt = channel.publish(p, &mut fanout);
                    self.settle(channel, true);
                    receipt
                })
            })
            .collect();
        self.enforce_budget();
        self.metrics.published.inc_by(publications.len() as u64);
        self.metrics.queued.inc_by(fanout.queued as u64);
        self.metrics.dropped.inc_by(fanout.dropped as u64);
        self.metrics.lag_disconnects.inc_by(fanout.lagged as u64);
        receipts
    }

    /// Subscribes `queue` to `channel`, resuming after `since` if given. The
    /// queue receives `Subscribed`, an optional gap, the backlog, then live
    /// messages. Returns the subscriber's position in the channel's stream
    /// (see `Channel::subscribe`).
    pub fn subscribe(
        &self,
        queue: &Arc<Queue>,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> Position {
        self.subscribe_named(queue, channel, since).0
    }

    /// [`subscribe`](Self::subscribe), replacing `channel` with the hub's
    /// own copy of the name: a subscriber then keeps no allocation of its
    /// own per channel (thousands of subscribers share one).
    pub fn subscribe_sharing(
        &self,
        queue: &Arc<Queue>,
        channel: &mut ChannelName,
        since: Option<Position>,
    ) -> Position {
        let (position, name) = self.subscribe_named(queue, channel, since);
        *channel = name;
        position
    }

    fn subscribe_named(
        &self,
        queue: &Arc<Queue>,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> (Position, ChannelName) {
        let now = Instant::now();
        let Some(demand) = &self.demand else {
            return self.with_channel(channel, now, |c| {
                let position = c.subscribe(queue, since, now);
                self.settle(c, false);
                (position, c.name().clone())
            });
        };
        let (position, changed, name) = self.with_channel(channel, now, |c| {
            let (position, changed) = c.subscribe_external(queue, since, now);
            self.settle(c, false);
            (position, changed, c.name().clone())
        });
        if changed {
            demand.mark(channel);
        }
        (position, name)
    }

    pub fn unsubscribe(&self, queue: &Queue, channel: &ChannelName) {
        if let Some(entry) = self.channels.get(channel) {
            let arc = entry.value().clone();
            drop(entry);
            let mut c = lock(&arc);
            c.unsubscribe(queue, Instant::now());
            self.settle(&mut c, false);
            let quiet = c.is_external() && !c.listening();
            drop(c);
            if quiet && let Some(demand) = &self.demand {
                demand.mark(channel);
            }
            self.enforce_budget();
        }
    }

    // === fed by a distributed backplane (`Hub::external`) ===

    /// Channels whose [`Want`] may have changed since the last call.
    pub fn take_demand(&self) -> Vec<ChannelName> {
        let Some(demand) = &self.demand else {
            return Vec::new();
        };
        let mut dirty = demand.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.drain().collect()
    }

    /// Resolves when [`Hub::take_demand`] has something (or may have).
    pub async fn demand_changed(&self) {
        match &self.demand {
            Some(demand) => demand.notify.notified().await,
            None => std::future::pending().await,
        }
    }

    /// What `channel` needs from the backplane now.
    pub fn want(&self, channel: &ChannelName) -> Want {
        match self.channels.get(channel) {
            Some(entry) => {
                let arc = entry.value().clone();
                drop(entry);
                lock(&arc).want()
            }
            None => Want::NOTHING,
        }
    }

    /// A live message from the backplane, already positioned. Channels
    /// without local subscribers ignore it.
    pub fn deliver(&self, message: Arc<message::Message>) {
        let Some(entry) = self.channels.get(&message.channel) else {
            return;
        };
        let arc = entry.value().clone();
        drop(entry);
        let mut fanout = Fanout::default();
        let name = message.channel.clone();
        let wants = {
            let mut c = lock(&arc);
            let wants = c.deliver(message, &mut fanout);
            self.settle(&mut c, true);
            wants
        };
        self.count(1, fanout);
        self.enforce_budget();
        if wants && let Some(demand) = &self.demand {
            demand.mark(&name);
        }
    }

    /// A GRIP item from the backplane (another node's `POST /publish/`):
    /// ordered by this node's sequencer and offered to the channel's GRIP
    /// subscribers, as if published here. Channels without local
    /// subscribers ignore it.
    pub fn deliver_grip(&self, channel: &ChannelName, payload: message::Payload) {
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        let arc = entry.value().clone();
        drop(entry);
        let mut fanout = Fanout::default();
        let publication = message::Publication {
            channel: channel.clone(),
            event: None,
            payload,
            idempotency_key: None,
            accepted_at: Instant::now(),
        };
        lock(&arc).publish(&publication, &mut fanout);
        self.count(1, fanout);
    }

    /// The backplane's answer to `asked` (a [`Want`]'s fetch) for `channel`.
    pub fn apply(&self, channel: &ChannelName, asked: Fetch, fetched: Fetched) {
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        let arc = entry.value().clone();
        drop(entry);
        let mut fanout = Fanout::default();
        let wants = {
            let mut c = lock(&arc);
            let wants = c.apply(asked, fetched, Instant::now(), &mut fanout);
            self.settle(&mut c, true);
            wants
        };
        self.count(0, fanout);
        self.enforce_budget();
        if wants && let Some(demand) = &self.demand {
            demand.mark(channel);
        }
    }

    /// The backplane (re)connected: every channel with subscribers reads
    /// its history before trusting live messages again.
    pub fn resync(&self) {
        let Some(demand) = &self.demand else {
            return;
        };
        let mut marked = Vec::new();
        for entry in self.channels.iter() {
            if lock(entry.value()).resync() {
                marked.push(entry.key().clone());
            }
        }
        for channel in &marked {
            demand.mark(channel);
        }
    }

    fn count(&self, published: u64, fanout: Fanout) {
        self.metrics.published.inc_by(published);
        self.metrics.queued.inc_by(fanout.queued as u64);
        self.metrics.dropped.inc_by(fanout.dropped as u64);
        self.metrics.lag_disconnects.inc_by(fanout.lagged as u64);
    }

    /// The current head of `channel`, if the hub holds it.
    pub fn head(&self, channel: &ChannelName) -> Option<Position> {
        let entry = self.channels.get(channel)?;
        let channel = entry.value().clone();
        drop(entry);
        let head = lock(&channel).head();
        Some(head)
    }

    /// The id of the last GRIP item delivered on `channel` (its sequencer).
    pub fn grip_last_id(&self, channel: &ChannelName) -> Option<Box<str>> {
        let entry = self.channels.get(channel)?;
        let channel = entry.value().clone();
        drop(entry);
        lock(&channel).grip_last_id().map(Box::from)
    }

    /// A distributed backplane's receipt: `channel` at `position`, with
    /// this node's subscriber count.
    pub fn receipt(&self, channel: &ChannelName, position: Position) -> Receipt {
        Receipt {
            channel: channel.clone(),
            position,
            subscribers: self.subscriber_count(channel),
        }
    }

    /// A GRIP item's receipt: it takes no position of its own, so the
    /// channel's head (zero when the channel has none).
    pub fn grip_receipt(&self, channel: &ChannelName) -> Receipt {
        let head = self.head(channel).unwrap_or(Position { epoch: 0, seq: 0 });
        self.receipt(channel, head)
    }

    /// Subscribers of `channel` on this node.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        self.channels
            .get(channel)
            .map(|entry| lock(entry.value()).subscriber_count())
            .unwrap_or(0)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The `n` channels with the most subscribers: (name, subscribers,
    /// messages in its stream). Scans every channel (for the status page,
    /// not the message path); a channel locked at that moment is skipped.
    pub fn busiest(&self, n: usize) -> Vec<(ChannelName, usize, u64)> {
        let mut top: Vec<(ChannelName, usize, u64)> = Vec::with_capacity(n + 1);
        for entry in self.channels.iter() {
            let Ok(channel) = entry.value().try_lock() else {
                continue;
            };
            let subscribers = channel.subscriber_count();
            if top.len() == n && top.last().is_some_and(|t| t.1 >= subscribers) {
                continue;
            }
            let item = (entry.key().clone(), subscribers, channel.head().seq);
            drop(channel);
            let at = top.partition_point(|t| t.1 >= subscribers);
            top.insert(at, item);
            top.truncate(n);
        }
        top
    }

    /// Prunes history by age and drops channels idle for longer than
    /// [`IDLE_CHANNEL_GRACE`] at `now`. Called periodically by the app.
    pub fn sweep(&self, now: Instant) {
        self.channels.retain(|_, channel| {
            let mut channel = lock(channel);
            if channel.removed {
                return false; // evicted; its evictor removes it too
            }
            let idle = channel
                .sweep(now)
                .is_some_and(|since| now.saturating_duration_since(since) >= IDLE_CHANNEL_GRACE);
            if idle {
                channel.removed = true;
            }
            self.settle(&mut channel, false);
            !idle
        });
        self.metrics.channels.set(self.channels.len() as i64);
        self.enforce_budget();
    }

    /// Reports `channel`'s cost to the budget (after anything that may have
    /// changed it) and keeps its place in the eviction order: the newest
    /// when `published`, else wherever it was. Under the channel's lock.
    fn settle(&self, channel: &mut Channel, published: bool) {
        let cost = channel.cost();
        self.budget.adjust(channel.accounted, cost);
        channel.accounted = cost;
        if cost == 0 {
            if let Some(tick) = channel.lru.take() {
                self.budget.forget(tick);
            }
        } else if published || channel.lru.is_none() {
            channel.lru = Some(self.budget.touch(channel.lru, channel.name()));
        }
    }

    /// Evicts the least recently published channels' histories until the
    /// hub is within `max_total`. Takes no lock while holding another.
    fn enforce_budget(&self) {
        let mut evicted = false;
        while self.budget.over() {
            let Some((tick, name)) = self.budget.pop_oldest() else {
                break;
            };
            let Some(arc) = self.channels.get(&name).map(|e| e.value().clone()) else {
                continue;
            };
            let mut channel = lock(&arc);
            if channel.removed || channel.lru != Some(tick) {
                continue; // moved or gone since it was popped
            }
            channel.lru = None;
            let remove = channel.evict();
            channel.removed = remove;
            // Not back into the order here (that could loop): a channel
            // that still costs something re-enters at its next settle.
            let cost = channel.cost();
            self.budget.adjust(channel.accounted, cost);
            channel.accounted = cost;
            drop(channel);
            if remove {
                self.channels.remove_if(&name, |_, c| Arc::ptr_eq(c, &arc));
            }
            self.metrics.history_evictions.inc();
            evicted = true;
        }
        if evicted {
            self.metrics.channels.set(self.channels.len() as i64);
        }
        self.metrics.history_bytes.set(self.budget.held() as i64);
    }

    /// Runs `f` on `name`'s channel, creating it on first use.
    fn with_channel<T>(
        &self,
        name: &ChannelName,
        now: Instant,
        f: impl FnOnce(&mut Channel) -> T,
    ) -> T {
        let mut f = Some(f);
        loop {
            let channel = self
                .channels
                .entry(name.clone())
                .or_insert_with(|| {
                    let limits = (self.history_policy)(name);
                    Arc::new(Mutex::new(if self.demand.is_some() {
                        Channel::new_external(name.clone(), limits, now)
                    } else {
                        Channel::new(name.clone(), Position::random_epoch(), limits, now)
                    }))
                })
                .value()
                .clone();
            // The map guard is released above; only the channel lock is held.
            let mut guard = lock(&channel);
            if guard.removed {
                // Swept between the lookup and the lock: look it up again.
                continue;
            }
            let f = f.take().expect("the loop runs f at most once");
            return f(&mut guard);
        }
    }
}

fn lock(channel: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    // Channel state stays consistent even if a holder panicked.
    channel.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::message::Payload;
    use super::queue::Item;
    use super::*;

    fn publication(channel: &str, data: serde_json::Value) -> Publication {
        Publication {
            channel: ChannelName::parse(channel).unwrap(),
            event: None,
            payload: Payload::from_json(&data),
            idempotency_key: None,
            accepted_at: Instant::now(),
        }
    }

    fn drain(queue: &Queue) -> Vec<Item> {
        let mut out = std::collections::VecDeque::new();
        let _ = queue.drain(&mut out);
        out.into()
    }

    fn data(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Message(m) => Some(String::from_utf8_lossy(m.payload.text()).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fan_out_reaches_every_subscriber() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let ch = ChannelName::parse("news").unwrap();
        let queues: Vec<_> = (0..3)
            .map(|_| hub.queue(8, LagPolicy::Disconnect))
            .collect();
        for q in &queues {
            hub.subscribe(q, &ch, None);
        }
        let receipts = hub.publish(&[publication("news", serde_json::json!("hi"))]);
        assert_eq!(receipts[0].subscribers, 3);
        assert_eq!(receipts[0].position.seq, 1);
        for q in &queues {
            let items = drain(q);
            assert!(matches!(items[0], Item::Subscribed { .. }));
            assert_eq!(data(&items), ["hi"]);
        }
    }

    #[test]
    fn resume_replays_missed_messages_before_live_ones() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let ch = ChannelName::parse("c").unwrap();
        let first = hub.queue(8, LagPolicy::Disconnect);
        hub.subscribe(&first, &ch, None);
        let receipts = hub.publish(&[
            publication("c", serde_json::json!(1)),
            publication("c", serde_json::json!(2)),
            publication("c", serde_json::json!(3)),
        ]);
        hub.unsubscribe(&first, &ch);
        let again = hub.queue(8, LagPolicy::Disconnect);
        hub.subscribe(&again, &ch, Some(receipts[0].position));
        hub.publish(&[publication("c", serde_json::json!(4))]);
        let items = drain(&again);
        assert!(!items.iter().any(|i| matches!(i, Item::Gap(_))));
        assert_eq!(data(&items), ["2", "3", "4"]);
    }

    #[test]
    fn resume_from_another_epoch_is_a_gap() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let ch = ChannelName::parse("c").unwrap();
        hub.publish(&[publication("c", serde_json::json!(1))]);
        let q = hub.queue(8, LagPolicy::Disconnect);
        hub.subscribe(
            &q,
            &ch,
            Some(Position {
                epoch: 12345,
                seq: 9,
            }),
        );
        let items = drain(&q);
        assert!(
            matches!(items[1], Item::Gap(_)),
            "gap before history: {items:?}"
        );
        assert_eq!(data(&items), ["1"]);
    }

    #[test]
    fn idempotency_key_publishes_once() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let mut p = publication("c", serde_json::json!(1));
        p.idempotency_key = Some(Arc::from("k1"));
        let a = hub.publish(std::slice::from_ref(&p));
        let b = hub.publish(std::slice::from_ref(&p));
        assert_eq!(a, b);
        let ch = ChannelName::parse("c").unwrap();
        assert_eq!(hub.head(&ch).unwrap().seq, 1);
    }

    #[test]
    fn idle_channels_are_dropped_after_the_grace() {
        let hub = Hub::with_limits(HistoryLimits {
            messages: 10,
            max_age: Duration::from_secs(5),
        });
        let ch = ChannelName::parse("c").unwrap();
        let start = Instant::now();
        hub.publish(&[publication("c", serde_json::json!(1))]);
        hub.sweep(start + Duration::from_secs(1));
        assert_eq!(hub.channel_count(), 1, "history still holds a message");
        hub.sweep(start + Duration::from_secs(6));
        assert_eq!(hub.channel_count(), 1, "idle, but within the grace");
        hub.sweep(start + Duration::from_secs(7) + IDLE_CHANNEL_GRACE);
        assert_eq!(hub.channel_count(), 0);
        assert!(hub.head(&ch).is_none());
    }

    fn held(hub: &Hub, name: &str) -> bool {
        hub.head(&ChannelName::parse(name).unwrap()).is_some()
    }

    /// A hub whose cap holds `channels` one-message channels like `c0`.
    fn capped(channels: usize) -> Hub {
        let probe = Hub::with_limits(HistoryLimits::default());
        probe.publish(&[publication("c0", serde_json::json!(0))]);
        let one = probe.history_bytes();
        assert!(one > 200, "a channel with a message costs something: {one}");
        let hub = Hub::with_limits(HistoryLimits::default());
        hub.set_max_total(channels * one + one / 2);
        hub
    }

    #[test]
    fn over_max_total_the_least_recently_published_channel_goes_first() {
        let hub = capped(3);
        for name in ["c1", "c2", "c3"] {
            hub.publish(&[publication(name, serde_json::json!(0))]);
        }
        assert_eq!(hub.channel_count(), 3);
        assert_eq!(hub.metrics().history_evictions.get(), 0);
        // c1 is published again: c2 is now the least recently published.
        hub.publish(&[publication("c1", serde_json::json!(1))]);
        hub.publish(&[publication("c4", serde_json::json!(0))]);
        assert!(hub.metrics().history_evictions.get() >= 1);
        assert!(!held(&hub, "c2"), "c2 was evicted first");
        assert!(held(&hub, "c4"), "the newest stays");
        assert!(hub.history_bytes() <= hub.budget.max_total());
        hub.publish(&[publication("c5", serde_json::json!(0))]);
        assert!(!held(&hub, "c3"), "then c3");
        assert!(held(&hub, "c5"));
    }

    #[test]
    fn a_resume_into_an_evicted_range_gets_a_gap() {
        let hub = capped(2);
        let kept = ChannelName::parse("kept").unwrap();
        let gone = ChannelName::parse("gone").unwrap();
        let live = hub.queue(64, LagPolicy::Disconnect);
        hub.subscribe(&live, &kept, None);
        let first = hub.publish(&[
            publication("kept", serde_json::json!(1)),
            publication("gone", serde_json::json!(1)),
            publication("kept", serde_json::json!(2)),
        ]);
        // A flood of new channels evicts both histories.
        for i in 0..10 {
            hub.publish(&[publication(&format!("flood{i}"), serde_json::json!(i))]);
        }
        assert!(hub.metrics().history_evictions.get() >= 2);
        // `kept` has a subscriber: it stays, with its position, but holds
        // nothing; a resume from before its messages is a gap.
        assert_eq!(hub.head(&kept).unwrap().seq, 2);
        let q = hub.queue(64, LagPolicy::Disconnect);
        hub.subscribe(&q, &kept, Some(first[0].position));
        let items = drain(&q);
        assert!(items.iter().any(|i| matches!(i, Item::Gap(_))), "{items:?}");
        // Live delivery to the subscriber was never affected.
        assert_eq!(data(&drain(&live)), ["1", "2"]);
        // `gone` had none: it was dropped, and a resume finds a new epoch.
        assert!(hub.head(&gone).is_none());
        let q = hub.queue(64, LagPolicy::Disconnect);
        hub.subscribe(&q, &gone, Some(first[1].position));
        let items = drain(&q);
        assert!(items.iter().any(|i| matches!(i, Item::Gap(_))), "{items:?}");
    }

    #[test]
    fn history_accounting_returns_to_zero() {
        let hub = Hub::with_limits(HistoryLimits {
            messages: 3,
            max_age: Duration::from_secs(5),
        });
        let start = Instant::now();
        let q = hub.queue(1024, LagPolicy::Disconnect);
        let sub = ChannelName::parse("sub").unwrap();
        hub.subscribe(&q, &sub, None);
        assert_eq!(
            hub.history_bytes(),
            0,
            "a subscribed channel alone costs nothing"
        );
        for i in 0..50 {
            let mut p = publication(&format!("c{}", i % 7), serde_json::json!({"i": i}));
            p.idempotency_key = Some(Arc::from(format!("key{i}")));
            let mut text = publication("sub", serde_json::json!(format!("text {i}")));
            text.event = Some(message::EventName::parse("e").unwrap());
            hub.publish(&[p, text]);
        }
        assert!(hub.history_bytes() > 0);
        // A small cap evicts some; the rest ages out.
        hub.set_max_total(hub.history_bytes() / 3);
        assert!(hub.history_bytes() <= hub.budget.max_total());
        hub.unsubscribe(&q, &sub);
        hub.sweep(start + Duration::from_secs(6));
        assert!(hub.history_bytes() > 0, "idle channels cost until dropped");
        hub.sweep(start + Duration::from_secs(7) + IDLE_CHANNEL_GRACE);
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.history_bytes(), 0);
        assert_eq!(hub.budget.ordered(), 0, "no place left in the order");
    }

    #[test]
    fn a_slow_subscriber_never_blocks_the_others() {
        let hub = Hub::with_limits(HistoryLimits::default());
        let ch = ChannelName::parse("c").unwrap();
        let slow = hub.queue(4, LagPolicy::Disconnect);
        let fast = hub.queue(10_000, LagPolicy::Disconnect);
        hub.subscribe(&slow, &ch, None);
        hub.subscribe(&fast, &ch, None);
        for i in 0..5_000 {
            hub.publish(&[publication("c", serde_json::json!(i))]);
        }
        assert_eq!(hub.metrics().lag_disconnects.get(), 1);
        assert_eq!(data(&drain(&fast)).len(), 5_000);
    }
}
