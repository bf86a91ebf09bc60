//! The Prometheus registry and the metric families of the HTTP side and the
//! realtime sessions. The hub registers its own (`hub::HubMetrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::hub::HubMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Shared with the router: counting a request copies no string.
    pub route: std::sync::Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

/// `pushgate_sessions_ended_total`: a streaming session's transport and
/// why it ended (`EndReason::label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub transport: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub route: String,
    pub reason: &'static str,
}

pub use crate::limits::RateLimitLabels;

fn upstream_histogram() -> Histogram {
    // 0.5 ms .. ~33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every metric pushgate exports, shared by reference.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub sessions: Family<TransportLabels, Gauge>,
    pub sessions_ended: Family<EndLabels, Counter>,
    pub delivered: Counter,
    pub delivered_bytes: Counter,
    pub delivery_latency: Histogram,
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    pub limits: crate::limits::LimitMetrics,
    pub hub: HubMetrics,
    pub backplane: crate::backplane::BackplaneMetrics,
    pub hooks: crate::hooks::HookMetrics,
}

impl Metrics {
    pub fn new(hub: HubMetrics) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "pushgate_http_requests",
            "Requests answered on public listeners, by route and status",
            requests.clone(),
        );
        let upstream_latency =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                upstream_histogram,
            );
        registry.register(
            "pushgate_upstream_response_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_latency.clone(),
        );
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "pushgate_open_connections",
            "Open client connections by listener",
            open_connections.clone(),
        );
        let sessions = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "pushgate_sessions",
            "Open realtime sessions by transport",
            sessions.clone(),
        );
        let sessions_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "pushgate_sessions_ended",
            "Ended SSE and WebSocket sessions by transport and reason (a long poll ends at every answer: see pushgate_requests_total)",
            sessions_ended.clone(),
        );
        let delivered = Counter::default();
        registry.register(
            "pushgate_messages_delivered",
            "Messages written to subscriber connections",
            delivered.clone(),
        );
        let delivered_bytes = Counter::default();
        registry.register(
            "pushgate_message_bytes_delivered",
            "Payload bytes of the messages written to subscriber connections (a binary message's bytes, a text message's compact JSON data; no framing)",
            delivered_bytes.clone(),
        );
        // 50 µs .. ~3 s
        let delivery_latency = Histogram::new(exponential_buckets(0.00005, 2.0, 17));
        registry.register(
            "pushgate_delivery_latency_seconds",
            "Time from a publish being accepted to the message being written to a subscriber socket",
            delivery_latency.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "pushgate_auth_failures",
            "Realtime requests refused by subscriber auth, by route and reason",
            auth_failures.clone(),
        );
        // Families whose label values are a closed set export every series
        // from the start, at 0, so "never happened" reads as 0 rather than
        // as no data; the sets are the ones the counting code uses.
        for transport in crate::config::Transport::ALL {
            let _ = sessions.get_or_create(&TransportLabels {
                transport: transport.as_str(),
            });
        }
        for transport in [
            crate::config::Transport::Sse,
            crate::config::Transport::Websocket,
        ] {
            for reason in crate::hooks::EndReason::KINDS {
                let _ = sessions_ended.get_or_create(&EndLabels {
                    transport: transport.as_str(),
                    reason: reason.label(),
                });
            }
        }
        hub.register(&mut registry);
        let limits = crate::limits::LimitMetrics::default();
        limits.register(&mut registry);
        let backplane = crate::backplane::BackplaneMetrics::default();
        backplane.register(&mut registry);
        let hooks = crate::hooks::HookMetrics::default();
        hooks.register(&mut registry);
        Self {
            registry,
            requests,
            upstream_latency,
            open_connections,
            sessions,
            sessions_ended,
            delivered,
            delivered_bytes,
            delivery_latency,
            auth_failures,
            limits,
            hub,
            backplane,
            hooks,
        }
    }

    /// Exports `pushgate_auth_failures_total` at 0 for every reason on each
    /// realtime route of `config` with `auth:`; the route names come from
    /// the config, so this runs at start and on each reload (a series of a
    /// route a reload removed stays, as any counter would).
    pub fn zero_routes(&self, config: &crate::config::Config) {
        for route in &config.routes {
            let crate::config::RouteAction::Realtime(realtime) = &route.action else {
                continue;
            };
            if realtime.auth.is_none() {
                continue;
            }
            for reason in crate::auth::Reason::ALL {
                let _ = self.auth_failures.get_or_create(&AuthFailureLabels {
                    route: realtime.name.to_string(),
                    reason: reason.as_str(),
                });
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
