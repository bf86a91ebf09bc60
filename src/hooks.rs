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
//!
//! [`EndReason`], why a session or one of its subscriptions ended, lives
//! here, the lowest layer that reports it: presence's tracker keeps it, the
//! webhooks send it, and the realtime transports close with it.

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
    /// Why an unsubscribe or disconnect happened.
    pub reason: Option<EndReason>,
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
            "reason": self.reason.map(EndReason::webhook_reason),
        })
    }
}

/// Why a realtime session (or one subscription of it) ended: one value
/// for every place that tells, each with its own wording, so renaming one
/// changes none of the others.
///
/// | reason | WebSocket close | SSE `pushgate.close` | webhook `reason` |
/// |---|---|---|---|
/// | `Gone` | none (socket gone) | none | `closed` |
/// | `Client` | 1000, empty | — | `client` |
/// | `BadClose(_)` | 1002 / 1007 | — | `client` |
/// | `Shutdown` | 1001 `shutdown` | `shutdown` | `shutdown` |
/// | `Lagged` | 1013 `lagged` | `lagged` | `lagged` |
/// | `Expired` | 1008 `token expired` | `expired` | `expired` |
/// | `PongTimeout` | 1001 `pong timeout` | — | `timeout` |
/// | `AuthTimeout` | 1008 `auth timeout` | — | `closed` |
/// | `AuthRefused` | 1008 `not allowed` | — | `closed` |
/// | `TooBig` | 1009 `message too big` | — | `closed` |
/// | `InvalidUtf8` | 1007 `invalid UTF-8` | — | `closed` |
/// | `Protocol(_)` | 1002 | — | `closed` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The connection went away without a close: EOF, a socket error, a
    /// peer that stopped reading, an SSE client that left.
    Gone,
    /// The client ended it: a WebSocket Close frame, an `unsubscribe`.
    Client,
    /// The client closed with a malformed Close frame (RFC 6455 §5.5.1,
    /// §7.4): answered with an error code, reported as the client's close.
    BadClose(BadClose),
    /// pushgate is shutting down (or draining).
    Shutdown,
    /// The subscriber queue overflowed under `on_lag: disconnect`.
    Lagged,
    /// The token expired (`on_expiry: close`, or no refresh in time).
    Expired,
    /// The peer sent nothing, not even a pong, for `pong_timeout`.
    PongTimeout,
    /// No `auth` frame within `auth::FIRST_FRAME_TIMEOUT`.
    AuthTimeout,
    /// Subscriber auth refused the connection (handshake or `auth` frame).
    AuthRefused,
    /// A message over `max_message`.
    TooBig,
    /// A text message that is not UTF-8 (RFC 6455 §8.1).
    InvalidUtf8,
    /// A frame sequence RFC 6455 forbids.
    Protocol(Violation),
}

/// What was wrong with a peer's Close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadClose {
    /// A body of one byte: half a code.
    OneByte,
    /// A code a peer may not send (RFC 6455 §7.4.1).
    Code,
    /// A reason that is not UTF-8.
    ReasonNotUtf8,
}

/// A frame sequence RFC 6455 forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// Anything fastwebsockets refused (reserved bits, opcodes, masking,
    /// control frame rules).
    Frame,
    /// A text or binary frame inside a fragmented message.
    NewMessageInFragment,
    /// A continuation frame with no message to continue.
    ContinuationWithoutMessage,
}

impl EndReason {
    /// The WebSocket close code (SPEC §3.4); `None`: nothing is sent, the
    /// socket is gone.
    pub const fn close_code(self) -> Option<u16> {
        Some(match self {
            Self::Gone => return None,
            Self::Client => 1000,
            Self::BadClose(BadClose::ReasonNotUtf8) | Self::InvalidUtf8 => 1007,
            Self::BadClose(_) | Self::Protocol(_) => 1002,
            Self::Shutdown | Self::PongTimeout => 1001,
            Self::Expired | Self::AuthTimeout | Self::AuthRefused => 1008,
            Self::TooBig => 1009,
            Self::Lagged => 1013,
        })
    }

    /// The WebSocket close frame's reason text.
    pub const fn close_text(self) -> &'static str {
        match self {
            Self::Gone | Self::Client => "",
            Self::BadClose(BadClose::OneByte) => "close body of one byte",
            Self::BadClose(BadClose::Code) => "invalid close code",
            Self::BadClose(BadClose::ReasonNotUtf8) => "close reason is not UTF-8",
            Self::Shutdown => "shutdown",
            Self::Lagged => "lagged",
            Self::Expired => "token expired",
            Self::PongTimeout => "pong timeout",
            Self::AuthTimeout => "auth timeout",
            Self::AuthRefused => "not allowed",
            Self::TooBig => "message too big",
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::Protocol(Violation::Frame) => "protocol error",
            Self::Protocol(Violation::NewMessageInFragment) => {
                "new message inside a fragmented one"
            }
            Self::Protocol(Violation::ContinuationWithoutMessage) => {
                "continuation without a message"
            }
        }
    }

    /// The `reason` of an SSE `pushgate.close` event (SPEC §3.3). SSE
    /// closes only for `Shutdown`, `Lagged` and `Expired`; the others get
    /// their [`label`](Self::label).
    pub const fn sse_reason(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Lagged => "lagged",
            Self::Expired => "expired",
            other => other.label(),
        }
    }

    /// The webhook event's `reason` (docs/presence.md): `client`,
    /// `closed`, `shutdown`, `lagged`, `expired` or `timeout`.
    pub const fn webhook_reason(self) -> &'static str {
        match self {
            Self::Client | Self::BadClose(_) => "client",
            Self::Shutdown => "shutdown",
            Self::Lagged => "lagged",
            Self::Expired => "expired",
            Self::PongTimeout => "timeout",
            Self::Gone
            | Self::AuthTimeout
            | Self::AuthRefused
            | Self::TooBig
            | Self::InvalidUtf8
            | Self::Protocol(_) => "closed",
        }
    }

    /// One reason of each kind: every [`EndReason::label`] is among
    /// theirs (`pushgate_sessions_ended_total` exports each at 0).
    pub const KINDS: [EndReason; 12] = [
        Self::Gone,
        Self::Client,
        Self::BadClose(BadClose::OneByte),
        Self::Shutdown,
        Self::Lagged,
        Self::Expired,
        Self::PongTimeout,
        Self::AuthTimeout,
        Self::AuthRefused,
        Self::TooBig,
        Self::InvalidUtf8,
        Self::Protocol(Violation::Frame),
    ];

    /// A stable snake_case name, one per variant, for metrics labels and
    /// logs.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Client => "client",
            Self::BadClose(_) => "bad_close",
            Self::Shutdown => "shutdown",
            Self::Lagged => "lagged",
            Self::Expired => "expired",
            Self::PongTimeout => "pong_timeout",
            Self::AuthTimeout => "auth_timeout",
            Self::AuthRefused => "auth_refused",
            Self::TooBig => "too_big",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Protocol(_) => "protocol_error",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_keep_their_wording() {
        use EndReason::*;
        // (reason, close code, close text, webhook reason)
        let table = [
            (Gone, None, "", "closed"),
            (Client, Some(1000), "", "client"),
            (
                BadClose(self::BadClose::OneByte),
                Some(1002),
                "close body of one byte",
                "client",
            ),
            (
                BadClose(self::BadClose::Code),
                Some(1002),
                "invalid close code",
                "client",
            ),
            (
                BadClose(self::BadClose::ReasonNotUtf8),
                Some(1007),
                "close reason is not UTF-8",
                "client",
            ),
            (Shutdown, Some(1001), "shutdown", "shutdown"),
            (Lagged, Some(1013), "lagged", "lagged"),
            (Expired, Some(1008), "token expired", "expired"),
            (PongTimeout, Some(1001), "pong timeout", "timeout"),
            (AuthTimeout, Some(1008), "auth timeout", "closed"),
            (AuthRefused, Some(1008), "not allowed", "closed"),
            (TooBig, Some(1009), "message too big", "closed"),
            (InvalidUtf8, Some(1007), "invalid UTF-8", "closed"),
            (
                Protocol(Violation::Frame),
                Some(1002),
                "protocol error",
                "closed",
            ),
            (
                Protocol(Violation::NewMessageInFragment),
                Some(1002),
                "new message inside a fragmented one",
                "closed",
            ),
            (
                Protocol(Violation::ContinuationWithoutMessage),
                Some(1002),
                "continuation without a message",
                "closed",
            ),
        ];
        let mut labels = std::collections::HashSet::new();
        for (reason, code, text, webhook) in table {
            assert_eq!(reason.close_code(), code, "{reason:?}");
            assert_eq!(reason.close_text(), text, "{reason:?}");
            assert_eq!(reason.webhook_reason(), webhook, "{reason:?}");
            // Close reasons fit a control frame (125 bytes, 2 for the code).
            assert!(text.len() <= 123);
            labels.insert(reason.label());
        }
        assert_eq!(labels.len(), 12, "one label per variant");
        let kinds: std::collections::HashSet<_> =
            EndReason::KINDS.iter().map(|r| r.label()).collect();
        assert_eq!(kinds, labels, "KINDS has one reason of every label");
        for (reason, sse) in [
            (Shutdown, "shutdown"),
            (Lagged, "lagged"),
            (Expired, "expired"),
        ] {
            assert_eq!(reason.sse_reason(), sse);
        }
    }
}
