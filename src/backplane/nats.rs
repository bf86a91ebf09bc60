//! NATS JetStream: many nodes share one order and one history per channel.
//!
//! One stream (named after `prefix`) holds subject `P.c.C` per channel `C`
//! (`.` in a channel name is written `%`, so every name is one token
//! sequence without empty tokens), with file storage,
//! `max_msgs_per_subject` = the largest `history.messages`, and
//! `duplicate_window` = the history's age for idempotency keys
//! (`Nats-Msg-Id`). The stream's order is the channel's order; each
//! message carries its channel position in headers (`Pushgate-Epoch`,
//! `Pushgate-Seq`): a publisher reads the subject's last message and
//! publishes the next sequence with `Nats-Expected-Last-Subject-Sequence`,
//! retrying when another node won the race, so sequences are consecutive
//! per channel and never assigned twice. A subject with no message left
//! (a new channel, a lost stream) starts a new random epoch: old ids get
//! the gap signal, never a silent loss. History ages out logically (the
//! hub drops messages older than `history.max_age`); the stream keeps a
//! subject's messages at least a day so its position survives quiet hours.
//!
//! Live delivery: after JetStream acknowledges a new message, the publisher
//! sends the positioned message on core subject `P.n.C`, which nodes
//! subscribe to only for channels with local subscribers. A notification
//! lost on the way (a reconnect, a publisher that died after the ack) is
//! found by the hub as a hole at the next message, or at the reconnect, and
//! read back from the stream with direct gets.
//!
//! GRIP items (`POST /publish/`) travel only as core messages on `P.n.C`
//! (header `Pushgate-Grip`): no position, no history, as in Pushpin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::{Event, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::retry::backoff;
use super::{
    Backplane, BackplaneMetrics, Error, FetchResult, PublishFuture, Reads, State, StateCell,
    remote_message,
};
use crate::hub::Hub;
use crate::hub::channel::{Fetch, Fetched};
use crate::hub::message::{ChannelName, Position, Publication, Receipt, unix_ms};
use crate::shutdown::Shutdown;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per message when other nodes publish to the same channel at once.
const PUBLISH_TRIES: usize = 32;
const KEEP_MIN: Duration = Duration::from_secs(24 * 3600);

const EPOCH: &str = "Pushgate-Epoch";
const SEQ: &str = "Pushgate-Seq";
const MS: &str = "Pushgate-Ms";
const EVENT: &str = "Pushgate-Event";
/// Marks a notify-subject message as a GRIP item rather than a positioned
/// message.
const GRIP: &str = "Pushgate-Grip";

pub use crate::config::{NatsSettings as Settings, parse_nats_url as parse_url};

pub struct NatsBackplane {
    shared: Arc<Shared>,
}

struct Shared {
    hub: Arc<Hub>,
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    stream_name: String,
    stream: tokio::sync::RwLock<Option<stream::Stream>>,
    history_messages: i64,
    max_age: Duration,
    state: StateCell,
    metrics: BackplaneMetrics,
}

impl NatsBackplane {
    /// Connects in the background (an unreachable server leaves pushgate
    /// running, not ready) and starts the backplane's task.
    pub async fn start(
        settings: &Settings,
        hub: Arc<Hub>,
        history_messages: usize,
        max_age: Duration,
        metrics: BackplaneMetrics,
        shutdown: &Shutdown,
    ) -> Result<Self, Error> {
        let (events_tx, events_rx) = mpsc::channel(64);
        let options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| backoff(attempt as u32))
            .connection_timeout(Duration::from_secs(3))
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    // Bounded; a full queue drops the event (the task polls
                    // the connection state too).
                    let _ = tx.try_send(event);
                }
            });
        // Several servers: each connection attempt tries them all (in a
        // random order), so one that is down does not keep the node out.
        // With `retry_on_initial_connect` the client comes back before the
        // first connection and keeps trying in its own task; the timeout
        // only bounds the start should that ever change.
        let client = tokio::time::timeout(
            Duration::from_secs(3),
            options.connect(settings.servers.clone()),
        )
        .await
        .map_err(|_| Error::Unavailable("nats: the client did not start within 3 s".to_owned()))?
        .map_err(|e| Error::Unavailable(format!("nats: {e}")))?;
        let js = jetstream::new(client.clone());
        metrics.set_state(State::Connecting);
        let stream_name = settings.prefix.replace('.', "_");
        let shared = Arc::new(Shared {
            hub,
            client,
            js,
            prefix: settings.prefix.clone(),
            stream_name,
            stream: tokio::sync::RwLock::new(None),
            history_messages: history_messages.max(1) as i64,
            max_age,
            state: StateCell::default(),
            metrics,
        });
        shutdown
            .tracker
            .spawn(run(shared.clone(), events_rx, shutdown.clone()));
        Ok(Self { shared })
    }
}

impl NatsBackplane {
    /// The JetStream context (presence keeps its KV bucket there).
    pub fn jetstream(&self) -> jetstream::Context {
        self.shared.js.clone()
    }
}

impl Backplane for NatsBackplane {
    fn publish(&self, batch: Vec<Publication>) -> PublishFuture<'_> {
        Box::pin(self.shared.publish(batch))
    }

    fn state(&self) -> State {
        self.shared.state.get()
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

fn encode(channel: &ChannelName) -> String {
    channel.as_str().replace('.', "%")
}

impl Shared {
    fn subject(&self, channel: &ChannelName) -> String {
        format!("{}.c.{}", self.prefix, encode(channel))
    }

    fn notify_subject(&self, channel: &ChannelName) -> String {
        format!("{}.n.{}", self.prefix, encode(channel))
    }

    fn set_state(&self, state: State) -> bool {
        self.metrics.set_state(state);
        self.state.set(state) != state
    }

    async fn stream(&self) -> Option<stream::Stream> {
        self.stream.read().await.clone()
    }

    /// Creates (or adopts) the stream; Ok once JetStream answers.
    async fn ensure_stream(&self) -> Result<(), String> {
        let config = stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![format!("{}.c.>", self.prefix)],
            max_messages_per_subject: self.history_messages,
            max_age: self.max_age.saturating_mul(2).max(KEEP_MIN),
            storage: stream::StorageType::File,
            duplicate_window: self.max_age.max(Duration::from_secs(1)),
            allow_direct: true,
            ..Default::default()
        };
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, self.js.get_or_create_stream(config))
            .await
            .map_err(|_| "JetStream did not answer in time".to_owned())?
            .map_err(|e| format!("JetStream stream {}: {e}", self.stream_name))?;
        *self.stream.write().await = Some(stream);
        Ok(())
    }

    async fn publish(self: &Arc<Self>, batch: Vec<Publication>) -> Result<Vec<Receipt>, Error> {
        if self.state.get() != State::Connected {
            return Err(Error::Unavailable("not connected to nats".to_owned()));
        }
        let Some(stream) = self.stream().await else {
            return Err(Error::Unavailable("JetStream stream not ready".to_owned()));
        };
        let started = Instant::now();
        let mut receipts = Vec::with_capacity(batch.len());
        for p in &batch {
            if let Some(formats) = p.payload.grip() {
                receipts.push(self.publish_grip(p, formats).await?);
                continue;
            }
            let position = tokio::time::timeout(ANSWER_TIMEOUT * 2, self.publish_one(&stream, p))
                .await
                .map_err(|_| Error::Unavailable("nats did not answer in time".to_owned()))??;
            receipts.push(self.hub.receipt(&p.channel, position));
        }
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(receipts)
    }

    /// A GRIP item (`POST /publish/`): a core message on the notify
    /// subject marked [`GRIP`], not kept in the stream (Pushpin keeps
    /// none), ordered by each receiving node's sequencer.
    async fn publish_grip(
        &self,
        p: &Publication,
        formats: &crate::hub::grip::Formats,
    ) -> Result<Receipt, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(GRIP, "1");
        let payload = Bytes::from(crate::grip::item::encode_wire(&p.channel, formats));
        let sent = async {
            self.client
                .publish_with_headers(self.notify_subject(&p.channel), headers, payload)
                .await
                .map_err(|e| e.to_string())?;
            // Flushed: the item is on its way once the publish answers.
            self.client.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, sent).await {
            Err(_) => return Err(Error::Unavailable("nats did not answer in time".to_owned())),
            Ok(Err(e)) => return Err(Error::Unavailable(format!("nats: {e}"))),
            Ok(Ok(())) => {}
        }
        Ok(self.hub.grip_receipt(&p.channel))
    }

    async fn publish_one(
        &self,
        stream: &stream::Stream,
        p: &Publication,
    ) -> Result<Position, Error> {
        let subject = self.subject(&p.channel);
        let unavailable = |e: &dyn std::fmt::Display| Error::Unavailable(format!("nats: {e}"));
        for _ in 0..PUBLISH_TRIES {
            let (last_seq, head) = match stream.direct_get_last_for_subject(subject.clone()).await {
                Ok(last) => (last.sequence, position_of(&last.headers)),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => (0, None),
                Err(e) => return Err(unavailable(&e)),
            };
            let next = match head {
                Some(h) => Position {
                    epoch: h.epoch,
                    seq: h.seq + 1,
                },
                None => Position {
                    epoch: Position::random_epoch(),
                    seq: 1,
                },
            };
            let ms = unix_ms();
            let mut headers = HeaderMap::new();
            headers.insert(EPOCH, next.epoch.to_string().as_str());
            headers.insert(SEQ, next.seq.to_string().as_str());
            headers.insert(MS, ms.to_string().as_str());
            if let Some(e) = &p.event {
                headers.insert(EVENT, e.as_str());
            }
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_seq.to_string().as_str(),
            );
            if let Some(key) = &p.idempotency_key {
                headers.insert("Nats-Msg-Id", format!("{}:{}", p.channel, key).as_str());
            }
            let payload = p.payload.wire();
            let ack = match self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
            {
                Ok(future) => future.await,
                Err(e) => return Err(unavailable(&e)),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    // The key's original message: report its position.
                    let original = stream
                        .direct_get(ack.sequence)
                        .await
                        .map_err(|e| unavailable(&e))?;
                    return position_of(&original.headers).ok_or_else(|| {
                        Error::Unavailable("nats: duplicate without a position".to_owned())
                    });
                }
                Ok(_) => {
                    // Tell the nodes with subscribers; a lost notice is
                    // read back from the stream.
                    let _ = self
                        .client
                        .publish_with_headers(self.notify_subject(&p.channel), headers, payload)
                        .await;
                    return Ok(next);
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    continue; // another node published first: read again
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(Error::Unavailable(
            "nats: too many concurrent publishes to one channel".to_owned(),
        ))
    }

    /// Reads what `asked` needs of `channel`'s history with direct gets.
    async fn fetch(self: Arc<Self>, channel: ChannelName, asked: Fetch) -> FetchResult {
        let result = tokio::time::timeout(ANSWER_TIMEOUT * 4, self.read(&channel, asked))
            .await
            .unwrap_or_else(|_| Err("nats did not answer a history read in time".to_owned()));
        (channel, asked, result)
    }

    async fn read(&self, channel: &ChannelName, asked: Fetch) -> Result<Fetched, String> {
        let Some(stream) = self.stream().await else {
            return Err("JetStream stream not ready".to_owned());
        };
        let subject = self.subject(channel);
        let last = match stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(last) => last,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                // Nothing published (or nothing left): an empty stream.
                return Ok(Fetched {
                    head: Position { epoch: 0, seq: 0 },
                    messages: Vec::new(),
                });
            }
            Err(e) => return Err(format!("nats: {e}")),
        };
        let head = position_of(&last.headers).ok_or("message without a position")?;
        let after = match asked {
            Fetch::Head => {
                return Ok(Fetched {
                    head,
                    messages: Vec::new(),
                });
            }
            Fetch::After(p) if p.epoch == head.epoch => p.seq,
            Fetch::After(_) => 0,
        };
        if after >= head.seq {
            return Ok(Fetched {
                head,
                messages: Vec::new(),
            });
        }
        let mut messages = Vec::new();
        let mut next = 1u64;
        while next <= last.sequence {
            let raw = match stream
                .direct_get_next_for_subject(subject.clone(), Some(next))
                .await
            {
                Ok(raw) => raw,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(format!("nats: {e}")),
            };
            next = raw.sequence + 1;
            let Some(position) = position_of(&raw.headers) else {
                continue;
            };
            if position.epoch == head.epoch && position.seq > after {
                let ms = header_u64(&raw.headers, MS).unwrap_or_else(unix_ms);
                let event = raw.headers.get(EVENT).map(|v| v.as_str());
                if let Some(m) = remote_message(channel, position, ms, event, raw.payload) {
                    messages.push(Arc::new(m));
                }
            }
        }
        Ok(Fetched { head, messages })
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

fn position_of(headers: &HeaderMap) -> Option<Position> {
    Some(Position {
        epoch: header_u64(headers, EPOCH)?,
        seq: header_u64(headers, SEQ)?,
    })
}

impl Shared {
    /// A message on `P.n.C`: a positioned message after its JetStream ack,
    /// or a GRIP item.
    fn on_notice(&self, channel: &ChannelName, msg: async_nats::Message) {
        let Some(headers) = &msg.headers else {
            return;
        };
        if headers.get(GRIP).is_some() {
            match crate::grip::item::decode_wire(&msg.payload) {
                Some(payload) => self.hub.deliver_grip(channel, payload),
                None => warn!(backplane = "nats", %channel, "ignored a malformed GRIP item"),
            }
            return;
        }
        let Some(position) = position_of(headers) else {
            return;
        };
        let ms = header_u64(headers, MS).unwrap_or_else(unix_ms);
        let event = headers.get(EVENT).map(|v| v.as_str());
        match remote_message(channel, position, ms, event, msg.payload) {
            Some(m) => self.hub.deliver(Arc::new(m)),
            None => warn!(backplane = "nats", %channel, "ignored a malformed notice"),
        }
    }

    /// Subscribes to `channel`'s notices; they go to the hub until the
    /// returned task is aborted.
    async fn listen(
        self: &Arc<Self>,
        channel: &ChannelName,
    ) -> Result<AbortHandle, async_nats::SubscribeError> {
        let mut notices = self.client.subscribe(self.notify_subject(channel)).await?;
        let (shared, channel) = (self.clone(), channel.clone());
        let task = tokio::spawn(async move {
            while let Some(msg) = notices.next().await {
                shared.on_notice(&channel, msg);
            }
        });
        Ok(task.abort_handle())
    }
}

/// Whether the backplane may serve: connected, with its stream, retried
/// with backoff while JetStream is not ready.
struct Link {
    attempt: u32,
    retry_at: tokio::time::Instant,
    connected_before: bool,
}

impl Link {
    fn new() -> Self {
        Self {
            attempt: 0,
            retry_at: tokio::time::Instant::now(),
            connected_before: false,
        }
    }

    /// Follows the client's connection into [`Shared::state`]; true when
    /// connected and the stream exists.
    async fn ready(&mut self, shared: &Shared) -> bool {
        let up = shared.client.connection_state() == async_nats::connection::State::Connected;
        if !up {
            if shared.state.get() == State::Connected && shared.set_state(State::Unavailable) {
                warn!(
                    backplane = "nats",
                    "backplane connection lost; reconnecting"
                );
            }
            return false;
        }
        if shared.state.get() == State::Connected {
            return true;
        }
        if tokio::time::Instant::now() < self.retry_at {
            return false;
        }
        match shared.ensure_stream().await {
            Ok(()) => {
                self.attempt = 0;
                if shared.set_state(State::Connected) {
                    info!(backplane = "nats", stream = %shared.stream_name, "backplane connected");
                }
                if self.connected_before {
                    shared.metrics.reconnects.inc();
                }
                self.connected_before = true;
                // Notices may have been missed: read every listened
                // channel's history again.
                shared.hub.resync();
                true
            }
            Err(reason) => {
                if self.attempt == 0 {
                    warn!(backplane = "nats", %reason, "JetStream not ready; retrying with backoff");
                }
                self.retry_at = tokio::time::Instant::now() + backoff(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                false
            }
        }
    }
}

/// Follows the connection's events, keeps the stream, and serves the hub's
/// wants while connected.
async fn run(shared: Arc<Shared>, mut events: mpsc::Receiver<Event>, shutdown: Shutdown) {
    let mut listening: HashMap<ChannelName, AbortHandle> = HashMap::new();
    let mut reads = Reads::default();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link = Link::new();
    loop {
        tokio::select! {
            _ = shutdown.token.cancelled() => break,
            event = events.recv() => {
                if let Some(Event::Disconnected) = event
                    && shared.set_state(State::Unavailable)
                {
                    warn!(backplane = "nats", "backplane connection lost; reconnecting");
                }
            }
            _ = shared.hub.demand_changed() => {}
            Some((channel, asked, result)) = reads.next(), if reads.is_busy() => {
                match result {
                    Ok(fetched) => shared.hub.apply(&channel, asked, fetched),
                    Err(reason) => {
                        warn!(backplane = "nats", %channel, %reason, "history read failed; retrying");
                        shared.hub.resync();
                    }
                }
            }
            _ = check.tick() => {}
        }
        if !link.ready(&shared).await {
            continue;
        }
        let mut plan = reads.plan(&shared.hub, |c| listening.contains_key(c));
        let subscribed_any = !plan.listen.is_empty();
        for channel in std::mem::take(&mut plan.listen) {
            match shared.listen(&channel).await {
                Ok(task) => {
                    listening.insert(channel, task);
                }
                Err(e) => {
                    warn!(backplane = "nats", %channel, error = %e, "subscribe failed");
                    plan.reads.retain(|(c, _)| *c != channel);
                }
            }
        }
        for channel in plan.quiet {
            if let Some(task) = listening.remove(&channel) {
                task.abort();
            }
        }
        // The server has the SUBs before the reads start, so every message
        // is either read or notified afterwards.
        if subscribed_any {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, shared.client.flush()).await;
        }
        for (channel, fetch) in plan.reads {
            let read = shared.clone().fetch(channel.clone(), fetch);
            reads.start(channel, read);
        }
    }
    for task in listening.values() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_connecting() {
        assert_eq!(parse_url("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert!(parse_url("tls://user:pw@nats.example:4222").is_ok());
        let two = parse_url("nats://a:4222, nats://b:4223").unwrap();
        assert_eq!(
            two.iter().map(|s| (s.host(), s.port())).collect::<Vec<_>>(),
            [("a", 4222), ("b", 4223)]
        );
        assert!(
            parse_url("redis://127.0.0.1:4222")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse_url("127.0.0.1:4222").is_err());
        assert!(parse_url("nats://a:4222,").unwrap_err().contains("empty"));
        assert!(
            parse_url("nats://a:4222,nats://b:99999")
                .unwrap_err()
                .contains("nats://b:99999")
        );
    }

    #[test]
    fn channel_names_become_one_subject_without_empty_tokens() {
        let ch = ChannelName::parse("a..b.").unwrap();
        assert_eq!(encode(&ch), "a%%b%");
    }
}
