//! Lifecycle webhooks (docs/presence.md): connect, subscribe, unsubscribe
//! and disconnect events POSTed to an upstream in batches.
//!
//! A session hands an [`Event`] to [`Hooks::emit`], which never waits: the
//! queue is bounded (`hooks.queue`, overflow policy: drop the new event,
//! counted in `pushgate_hook_events_dropped{reason="queue_full"}`). One
//! task takes up to [`BATCH`] events or what came within [`LINGER`] of the
//! first, and POSTs `{"events":[...]}`; a failed POST (connect error, 5xx,
//! 408, 429, timeout) is retried with exponential backoff up to
//! [`MAX_BACKOFF`] while new events wait in the queue; another 4xx drops
//! the batch (`reason="rejected"`). With the upstream's `grip_sig_key` each
//! POST carries a `Grip-Sig` HS256 JWT.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::config::{HookEvent, HooksSettings, UpstreamSettings};
use crate::hub::message::ChannelName;
use crate::proxy::upstream::Upstream;
use crate::shutdown::Shutdown;

/// Most events in one POST.
pub const BATCH: usize = 100;
/// How long a batch waits for more events after its first.
pub const LINGER: Duration = Duration::from_millis(100);
/// First retry delay; doubled per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One lifecycle event.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: HookEvent,
    pub channel: Option<ChannelName>,
    pub sub: Option<Arc<str>>,
    /// The node's id; with `connection`, the `connection_id`.
    pub node: Arc<str>,
    pub connection: u64,
    pub transport: &'static str,
    /// Unix milliseconds.
    pub at: u64,
    pub reason: Option<&'static str>,
}

impl Event {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind.as_str(),
            "channel": self.channel.as_ref().map(|c| c.as_str()),
            "sub": self.sub.as_deref(),
            "connection_id": format!("{}-{}", self.node, self.connection),
            "transport": self.transport,
            "at": self.at,
            "reason": self.reason,
        })
    }
}

/// The `reason` label of `pushgate_hook_events_dropped_total`; every
/// reason is in [`drop_reason::ALL`], zeroed when the family is registered.
pub mod drop_reason {
    /// The queue (`hooks.queue`) was full: the upstream is slow or down.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The upstream answered 4xx to the batch.
    pub const REJECTED: &str = "rejected";
    pub const ALL: &[&str] = &[QUEUE_FULL, REJECTED];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// The webhooks' metrics, registered by `metrics::Metrics`.
#[derive(Clone, Debug, Default)]
pub struct HookMetrics {
    pub sent: Counter,
    pub dropped: Family<DropLabels, Counter>,
    pub retries: Counter,
    pub queued: Gauge,
}

impl HookMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every reason is exported from the start, at 0: "never dropped"
        // reads as 0, not as no data.
        for &reason in drop_reason::ALL {
            let _ = self.dropped.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "pushgate_hook_events_sent",
            "Lifecycle events delivered to the hooks upstream",
            self.sent.clone(),
        );
        registry.register(
            "pushgate_hook_events_dropped",
            "Lifecycle events dropped: queue_full (upstream too slow or down) or rejected (4xx)",
            self.dropped.clone(),
        );
        registry.register(
            "pushgate_hook_retries",
            "Webhook POSTs retried after a failure",
            self.retries.clone(),
        );
        registry.register(
            "pushgate_hook_events_queued",
            "Lifecycle events waiting to be sent",
            self.queued.clone(),
        );
    }
}

/// The sending side, shared by every session.
pub struct Hooks {
    settings: HooksSettings,
    tx: mpsc::Sender<Event>,
    metrics: HookMetrics,
}

impl Hooks {
    /// Starts the sender task (it ends with `shutdown`, after a last try
    /// at what is queued).
    pub fn start(
        settings: HooksSettings,
        upstream: &UpstreamSettings,
        metrics: HookMetrics,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(settings.queue);
        let sender = Sender {
            upstream: Upstream::new(&settings.upstream, upstream),
            path: settings.path.clone(),
            metrics: metrics.clone(),
        };
        shutdown
            .tracker
            .spawn(sender.run(rx, shutdown.token.clone()));
        Arc::new(Self {
            settings,
            tx,
            metrics,
        })
    }

    /// Queues `event` if the config asks for its kind; never waits.
    pub fn emit(&self, event: Event) {
        if !self.settings.wants(event.kind) {
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.metrics.queued.inc();
            }
            Err(_) => {
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: drop_reason::QUEUE_FULL,
                    })
                    .inc();
            }
        };
    }
}

struct Sender {
    upstream: Upstream,
    path: String,
    metrics: HookMetrics,
}

enum Outcome {
    Sent,
    Retry,
    Rejected(StatusCode),
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Event>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                e = rx.recv() => e,
                _ = stop.cancelled() => None,
            };
            let Some(first) = first else {
                // Stopping: one last try at what is queued, no retries.
                let mut batch = Vec::new();
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                    if batch.len() == BATCH {
                        let _ = self.post(&std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    let _ = self.post(&batch).await;
                }
                return;
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.metrics.queued.dec_by(batch.len() as i64);
            let mut backoff = FIRST_BACKOFF;
            loop {
                match self.post(&batch).await {
                    Outcome::Sent => {
                        self.metrics.sent.inc_by(batch.len() as u64);
                        break;
                    }
                    Outcome::Rejected(status) => {
                        tracing::warn!(%status, events = batch.len(), "hooks upstream rejected a batch; dropped");
                        self.metrics
                            .dropped
                            .get_or_create(&DropLabels {
                                reason: drop_reason::REJECTED,
                            })
                            .inc_by(batch.len() as u64);
                        break;
                    }
                    Outcome::Retry => {
                        self.metrics.retries.inc();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    async fn post(&self, batch: &[Event]) -> Outcome {
        let Some(target) = self.upstream.pick() else {
            return Outcome::Retry;
        };
        let events: Vec<_> = batch.iter().map(Event::to_json).collect();
        let body = Bytes::from(serde_json::json!({ "events": events }).to_string());
        let uri = format!("{}://{}{}", target.scheme, target.authority, self.path);
        let Ok(mut request) = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(crate::error::full(body))
        else {
            return Outcome::Rejected(StatusCode::BAD_REQUEST);
        };
        if let Some(signer) = &self.upstream.grip_sig {
            signer.sign(request.headers_mut());
        }
        let _span = crate::telemetry::webhook(batch.len(), request.headers_mut());
        if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        let sent =
            tokio::time::timeout(self.upstream.timeout, self.upstream.client.request(request));
        match sent.await {
            Ok(Ok(response)) => {
                let status = response.status();
                // Drain the body so the connection goes back to the pool.
                let _ = tokio::time::timeout(
                    self.upstream.timeout,
                    http_body_util::BodyExt::collect(response.into_body()),
                )
                .await;
                if status.is_success() {
                    Outcome::Sent
                } else if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS
                {
                    Outcome::Retry
                } else {
                    Outcome::Rejected(status)
                }
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    self.upstream.mark_down(target);
                }
                tracing::debug!(error = %e, "hooks POST failed; retrying");
                Outcome::Retry
            }
            Err(_) => Outcome::Retry,
        }
    }
}
