//! `GET /admin/stats`: the figures behind the status page, as one JSON
//! object. Counters are totals since start (the page turns them into
//! rates); the latency histogram is sent whole so the page can compute
//! percentiles over its own interval. New sections are added as new keys.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::backplane::Backplane;
use crate::config::{Config, PathMatch, RouteAction};
use crate::hub::Hub;
use crate::metrics::{ListenerLabels, Metrics, TransportLabels};

/// How many channels `busiest` lists.
pub const BUSIEST: usize = 10;

pub struct Stats {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    backplane: Arc<dyn Backplane>,
    started: Instant,
    /// The delivery latency histogram alone, encoded to read its buckets
    /// (prometheus-client has no getter for them).
    latency: Registry,
}

impl Stats {
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, backplane: Arc<dyn Backplane>) -> Self {
        let mut latency = Registry::default();
        latency.register("latency", "", metrics.delivery_latency.clone());
        Self {
            hub,
            metrics,
            backplane,
            started: Instant::now(),
            latency,
        }
    }

    /// Every figure, with the serving config's `routes` (see [`routes`]).
    pub fn snapshot(&self, routes: &Value, ready: bool) -> Value {
        let sessions = |t: &'static str| {
            self.metrics
                .sessions
                .get_or_create(&TransportLabels { transport: t })
                .get()
                .max(0)
        };
        let open = |l: &'static str| {
            self.metrics
                .open_connections
                .get_or_create(&ListenerLabels { listener: l })
                .get()
                .max(0)
        };
        let hub = self.hub.metrics();
        let (le, cumulative) = self.latency_buckets();
        let ms = |q: f64| percentile(&le, &cumulative, q).map(|s| round3(s * 1000.0));
        let busiest: Vec<Value> = self
            .hub
            .busiest(BUSIEST)
            .into_iter()
            .map(|(channel, subscribers, messages)| {
                json!({"channel": channel.as_str(), "subscribers": subscribers, "messages": messages})
            })
            .collect();
        let time_ms = crate::hub::message::unix_ms();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "time_ms": time_ms,
            "uptime_s": round3(self.started.elapsed().as_secs_f64()),
            "ready": ready,
            "connections": {
                "sse": sessions("sse"),
                "websocket": sessions("websocket"),
                "longpoll": sessions("longpoll"),
            },
            "listeners": {"http": open("http"), "https": open("https"), "internal": open("internal")},
            "publish": {"messages": hub.published.get()},
            "delivery": {
                "messages": self.metrics.delivered.get(),
                "queued": hub.queued.get(),
                "latency_ms": {"p50": ms(0.5), "p99": ms(0.99)},
                "latency_buckets": {
                    "le_ms": le.iter().map(|s| if s.is_finite() { Some(round3(s * 1000.0)) } else { None }).collect::<Vec<_>>(),
                    "cumulative": cumulative,
                },
            },
            "lagged": hub.lag_disconnects.get(),
            "dropped": hub.dropped.get(),
            "channels": {"count": self.hub.channel_count(), "busiest": busiest},
            "backplane": {"type": self.backplane.name(), "connected": self.backplane.is_ready()},
            "routes": routes,
        })
    }

    /// Bucket upper bounds (seconds, `+Inf` last) and cumulative counts.
    fn latency_buckets(&self) -> (Vec<f64>, Vec<u64>) {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.latency);
        let mut le = Vec::new();
        let mut cumulative = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("latency_bucket{le=\"") else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::INFINITY)
            };
            le.push(bound);
            cumulative.push(count.trim().parse().unwrap_or(0));
        }
        (le, cumulative)
    }
}

/// The `q` quantile from cumulative bucket counts, interpolated within
/// its bucket; `None` without observations.
pub fn percentile(le: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for (bound, count) in le.iter().zip(cumulative) {
        if *count as f64 >= rank {
            if !bound.is_finite() {
                return Some(below.0);
            }
            let in_bucket = (count - below.1) as f64;
            let fraction = if in_bucket > 0.0 {
                (rank - below.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(below.0 + (bound - below.0) * fraction.clamp(0.0, 1.0));
        }
        below = (*bound, *count);
    }
    Some(below.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The config's routes as the page lists them.
pub fn routes(config: &Config) -> Value {
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            let path = match &r.path {
                PathMatch::Template(t) => json!({"path": t.as_str()}),
                PathMatch::Prefix(p) => json!({"path_prefix": p}),
            };
            let mut route = json!({
                "name": r.name,
                "match": path,
                "host": r.host,
                "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            });
            match &r.action {
                RouteAction::Upstream(u) => {
                    route["kind"] = "upstream".into();
                    route["upstream"] = u.as_str().into();
                }
                RouteAction::Realtime(rt) => {
                    route["kind"] = "realtime".into();
                    route["channels"] =
                        json!(rt.channels.iter().map(|t| t.as_str()).collect::<Vec<_>>());
                    route["transports"] =
                        json!(rt.transports.iter().map(|t| t.as_str()).collect::<Vec<_>>());
                }
                RouteAction::Static(s) => {
                    route["kind"] = "static".into();
                    route["dir"] = s.dir.display().to_string().into();
                }
            }
            route
        })
        .collect();
    Value::Array(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_the_bucket() {
        let le = [1.0, 2.0, 4.0, f64::INFINITY];
        // 10 observations: 2 ≤ 1, 6 in (1, 2], 2 in (2, 4].
        let cumulative = [2, 8, 10, 10];
        assert_eq!(percentile(&le, &cumulative, 0.5), Some(1.5));
        let p99 = percentile(&le, &cumulative, 0.99).unwrap();
        assert!((p99 - 3.9).abs() < 1e-9, "{p99}");
        assert_eq!(percentile(&le, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(
            percentile(&le, &[0, 0, 0, 5], 0.5),
            Some(4.0),
            "past the last bound: the last bound"
        );
    }
}
