//! The backplane owns each channel's order and history and relays
//! publications into the local hub. Every publish travels through it, even
//! on one node, where [`memory`] loops straight back: one message path.
//!
//! * [`memory`]: one node; the hub assigns positions and keeps history, as
//!   it always did (the hot path is unchanged).
//! * [`redis`] and [`nats`]: many nodes; the server assigns `(epoch, seq)`
//!   atomically and keeps the history. A task per node listens to the
//!   channels that have local subscribers, feeds the hub positioned
//!   messages (`Hub::deliver`) and answers the hub's history reads
//!   (`Hub::want` → `Hub::apply`), so the hub's history is a read-through
//!   cache and the hub still does no IO. What the two tasks share (which
//!   channels to listen to, the reads under way, a message from another
//!   node) is here.
//!
//! It knows no sessions, transports or HTTP: GRIP items cross it through
//! the `grip::item` codec, below it.

pub mod memory;
pub mod nats;
pub mod redis;

mod retry;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::hub::channel::{Fetch, Fetched};
use crate::hub::message::{
    ChannelName, EventName, Message, Payload, Position, Publication, Receipt, instant_from_unix_ms,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Receipt>, Error>> + Send + 'a>>;

/// Where a backplane's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not connected yet since start.
    Connecting = 0,
    Connected = 1,
    /// Was connected, lost it; reconnecting with backoff.
    Unavailable = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Unavailable => "unavailable",
        }
    }
}

/// A [`State`] shared between a backplane's task and its readers.
#[derive(Debug, Default)]
pub struct StateCell(AtomicU8);

impl StateCell {
    pub fn get(&self) -> State {
        match self.0.load(Ordering::Acquire) {
            1 => State::Connected,
            2 => State::Unavailable,
            _ => State::Connecting,
        }
    }

    /// Sets the state; returns the previous one.
    pub fn set(&self, state: State) -> State {
        match self.0.swap(state as u8, Ordering::AcqRel) {
            1 => State::Connected,
            2 => State::Unavailable,
            _ => State::Connecting,
        }
    }
}

pub trait Backplane: Send + Sync + 'static {
    /// Publishes `batch` in order; each receipt holds the position the
    /// backplane assigned and the subscribers on this node.
    fn publish(&self, batch: Vec<Publication>) -> PublishFuture<'_>;

    /// Where the connection is (`/readyz`, `/metrics`).
    fn state(&self) -> State;

    /// Connected and able to publish (`/readyz`).
    fn is_ready(&self) -> bool {
        self.state() == State::Connected
    }

    /// A short name for logs and readiness output.
    fn name(&self) -> &'static str;
}

/// The backplane's metrics, registered by `metrics::Metrics`.
#[derive(Clone, Debug)]
pub struct BackplaneMetrics {
    /// 1 connected, 0 connecting, -1 unavailable.
    pub state: Gauge,
    pub reconnects: Counter,
    /// Seconds from handing a batch to the backplane to its receipts.
    pub publish_latency: Histogram,
}

impl Default for BackplaneMetrics {
    fn default() -> Self {
        Self {
            state: Gauge::default(),
            reconnects: Counter::default(),
            publish_latency: Histogram::new([
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5,
            ]),
        }
    }
}

impl BackplaneMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pushgate_backplane_state",
            "Backplane connection: 1 connected, 0 connecting, -1 unavailable",
            self.state.clone(),
        );
        registry.register(
            "pushgate_backplane_reconnects",
            "Backplane connections re-established after a loss",
            self.reconnects.clone(),
        );
        registry.register(
            "pushgate_backplane_publish_seconds",
            "Time for a publish batch through the backplane (assigning positions and storing history)",
            self.publish_latency.clone(),
        );
    }

    pub fn set_state(&self, state: State) {
        self.state.set(match state {
            State::Connected => 1,
            State::Connecting => 0,
            State::Unavailable => -1,
        });
    }
}

/// A history read's answer, with its channel and what was asked.
type FetchResult = (ChannelName, Fetch, Result<Fetched, String>);
type FetchFuture = Pin<Box<dyn Future<Output = FetchResult> + Send>>;

/// What a distributed backplane's task does about the channels the hub
/// marked: see [`Reads::plan`].
#[derive(Debug, Default)]
struct Plan {
    /// Wanted live and not listened to yet.
    listen: Vec<ChannelName>,
    /// Listened to and no longer wanted.
    quiet: Vec<ChannelName>,
    /// History to read once `listen` is confirmed by the server, so every
    /// message is either in the read or arrives live afterwards.
    reads: Vec<(ChannelName, Fetch)>,
}

/// The history reads under way: at most one per channel (bounded by the
/// channels with local subscribers; a read asked for while one runs waits
/// for it, and the hub marks the channel again if that does not answer
/// everything).
#[derive(Default)]
struct Reads {
    inflight: HashSet<ChannelName>,
    running: FuturesUnordered<FetchFuture>,
}

impl Reads {
    /// Sorts the channels the hub marked since the last call
    /// (`Hub::take_demand`) into a [`Plan`]; `listening` says which ones
    /// the task listens to now.
    fn plan(&self, hub: &Hub, listening: impl Fn(&ChannelName) -> bool) -> Plan {
        let mut plan = Plan::default();
        for channel in hub.take_demand() {
            let want = hub.want(&channel);
            let listened = listening(&channel);
            if want.listen && !listened {
                plan.listen.push(channel.clone());
            } else if !want.listen && listened {
                plan.quiet.push(channel.clone());
            }
            if let Some(fetch) = want.fetch
                && !self.inflight.contains(&channel)
            {
                plan.reads.push((channel, fetch));
            }
        }
        plan
    }

    fn start(
        &mut self,
        channel: ChannelName,
        read: impl Future<Output = FetchResult> + Send + 'static,
    ) {
        self.inflight.insert(channel);
        self.running.push(Box::pin(read));
    }

    fn is_busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// The next read to finish (`None` at once when none runs: poll it
    /// only while [`Reads::is_busy`]).
    async fn next(&mut self) -> Option<FetchResult> {
        let done = self.running.next().await?;
        self.inflight.remove(&done.0);
        Some(done)
    }
}

/// A positioned message another node published: `ms` is its publish time
/// (Unix ms, the publisher's or the server's clock), `event` absent or
/// empty for none, `data` its body in [`Payload::wire`] form. `None` when a field is malformed.
fn remote_message(
    channel: &ChannelName,
    position: Position,
    ms: u64,
    event: Option<&str>,
    data: Bytes,
) -> Option<Message> {
    let event = match event {
        None | Some("") => None,
        Some(e) => Some(EventName::parse(e).ok()?),
    };
    Some(Message::new(
        channel.clone(),
        position,
        event,
        Payload::from_wire(data)?,
        instant_from_unix_ms(ms),
    ))
}
