//! Rate limits and caps (SPEC §9): per-address concurrent realtime
//! connections and connect rate (new connections of any route, counted
//! at accept), per-token publish rate, and the
//! per-WebSocket client publish budget; the client address behind
//! `trusted_proxies`.
//!
//! Per-address counting uses pingora-limits' count-min sketches
//! (`Estimator`, `Rate`): constant memory however many addresses are seen.
//! A sketch can only over-count, never under-count, so a flood is never
//! let through; sized so collisions stay rare at tens of thousands of
//! active addresses. IPv6 clients are counted per /64, the block one
//! subscriber usually holds, so rotating addresses within it gains nothing.
//!
//! The client publish budget is a fixed window inside the connection's own
//! state (16 bytes, exact): a shared sketch would add collisions with
//! other connections for no memory saved.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use pingora_limits::estimator::Estimator;
use pingora_limits::rate::Rate;
use tokio::time::Instant;

use crate::config::{RateLimit, RateLimitSettings};
use crate::error::{ErrorCode, HttpError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

const HASHES: usize = 4;
const SLOTS: usize = 16 << 10;

/// The limiters shared by every request.
pub struct Limiter {
    settings: RateLimitSettings,
    connections: Option<Arc<Estimator>>,
    connect_rate: Option<Rate>,
    publish_rate: Option<Rate>,
    metrics: LimitMetrics,
}

/// A request refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub kind: Kind,
    pub retry_after: Duration,
}

impl Refused {
    /// `429` with `Retry-After` (whole seconds, at least 1).
    pub fn into_error(self) -> HttpError {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        HttpError::new(
            ErrorCode::RateLimited,
            format!("{} limit reached; retry in {secs}s", self.kind.as_str()),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    }
}

/// One realtime connection's share of the per-address cap; released on drop.
pub struct ConnPermit {
    held: Option<(Arc<Estimator>, u64)>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some((estimator, key)) = self.held.take() {
            estimator.decr(key, 1);
        }
    }
}

/// Which limit refused: the `kind` label of `pushgate_rate_limited_total`
/// and the word in the `429` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ConnectRate,
    Connections,
    PublishRate,
    ClientPublishRate,
}

impl Kind {
    /// Every kind: [`LimitMetrics::register`] exports each from the start.
    pub const ALL: [Kind; 4] = [
        Kind::ConnectRate,
        Kind::Connections,
        Kind::PublishRate,
        Kind::ClientPublishRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConnectRate => "connect_rate",
            Kind::Connections => "connections",
            Kind::PublishRate => "publish_rate",
            Kind::ClientPublishRate => "client_publish_rate",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub kind: &'static str,
}

/// The limits' metric family, registered by `metrics::Metrics` like the
/// hub's and the backplane's (limits sit below the registry).
#[derive(Clone, Debug, Default)]
pub struct LimitMetrics {
    pub rate_limited: Family<RateLimitLabels, Counter>,
}

impl LimitMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every kind is exported from the start, at 0.
        for kind in Kind::ALL {
            let _ = self.rate_limited.get_or_create(&RateLimitLabels {
                kind: kind.as_str(),
            });
        }
        registry.register(
            "pushgate_rate_limited",
            "Requests and client publishes refused by a rate limit or cap, by kind",
            self.rate_limited.clone(),
        );
    }

    fn count(&self, kind: Kind) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
}

impl Limiter {
    pub fn new(settings: RateLimitSettings, metrics: LimitMetrics) -> Self {
        let rate = |r: RateLimit| {
            r.is_limited()
                .then(|| Rate::new_with_estimator_config(r.per, HASHES, SLOTS))
        };
        Self {
            connections: (settings.per_ip_connections > 0)
                .then(|| Arc::new(Estimator::new(HASHES, SLOTS))),
            connect_rate: rate(settings.per_ip_connect_rate),
            publish_rate: rate(settings.publish_rate),
            settings,
            metrics,
        }
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    fn refused(&self, kind: Kind, retry_after: Duration) -> Refused {
        self.metrics.count(kind);
        Refused { kind, retry_after }
    }

    /// The client's address: the peer, or when the peer is a trusted
    /// proxy, the nearest untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, remote: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(&self.settings.trusted_proxies, remote, headers)
    }

    /// Whether `remote` is a trusted proxy, whose `X-Forwarded-For` names
    /// the client.
    pub fn is_trusted_proxy(&self, remote: SocketAddr) -> bool {
        let peer = remote.ip().to_canonical();
        self.settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }

    /// Counts a new connection (any route) from `remote` against the
    /// connect rate, at accept time. A trusted proxy's connections are not
    /// counted here: they carry many clients, each counted by its
    /// forwarded address when it opens a realtime connection (`admit`).
    pub fn accept(&self, remote: SocketAddr) -> Result<(), Refused> {
        if self.connect_rate.is_none() || self.is_trusted_proxy(remote) {
            return Ok(());
        }
        self.count_connect(remote.ip().to_canonical())
    }

    fn count_connect(&self, ip: IpAddr) -> Result<(), Refused> {
        if let Some(rate) = &self.connect_rate {
            let limit = self.settings.per_ip_connect_rate;
            if rate.observe(&address_key(ip), 1) > limit.events as isize {
                return Err(self.refused(Kind::ConnectRate, limit.per));
            }
        }
        Ok(())
    }

    /// Admits a new realtime connection from `ip`: counts it against the
    /// connect rate when `count_rate` (a client behind a trusted proxy; a
    /// direct peer was counted by `accept`), then takes a share of the
    /// per-address cap.
    pub fn admit(&self, ip: IpAddr, count_rate: bool) -> Result<ConnPermit, Refused> {
        let key = address_key(ip);
        if count_rate {
            self.count_connect(ip)?;
        }
        let Some(connections) = &self.connections else {
            return Ok(ConnPermit { held: None });
        };
        if connections.incr(key, 1) > self.settings.per_ip_connections as isize {
            connections.decr(key, 1);
            return Err(self.refused(Kind::Connections, Duration::from_secs(1)));
        }
        Ok(ConnPermit {
            held: Some((connections.clone(), key)),
        })
    }

    /// Counts one publish request with `token` (the presented bearer token,
    /// or none) against `publish_rate`.
    pub fn publish(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        let Some(rate) = &self.publish_rate else {
            return Ok(());
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .map_or(&[][..], |v| v.as_bytes());
        let limit = self.settings.publish_rate;
        if rate.observe(&token, 1) > limit.events as isize {
            return Err(self.refused(Kind::PublishRate, limit.per).into_error());
        }
        Ok(())
    }

    /// A fresh client publish budget for one WebSocket connection.
    pub fn publish_budget(&self) -> PublishBudget {
        PublishBudget::new(self.settings.client_publish_rate)
    }

    /// Counts a client publish refused by its budget.
    pub fn client_publish_refused(&self) {
        self.refused(Kind::ClientPublishRate, Duration::ZERO);
    }
}

/// A per-connection fixed window of client publishes.
#[derive(Debug, Clone, Copy)]
pub struct PublishBudget {
    limit: RateLimit,
    window_start: Instant,
    used: u64,
}

impl PublishBudget {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            window_start: Instant::now(),
            used: 0,
        }
    }

    /// Takes one publish from the budget; false when none is left.
    pub fn take(&mut self) -> bool {
        if !self.limit.is_limited() {
            return true;
        }
        let now = Instant::now();
        if now >= self.window_start + self.limit.per {
            self.window_start = now;
            self.used = 0;
        }
        if self.used >= self.limit.events {
            return false;
        }
        self.used += 1;
        true
    }
}

/// IPv4 addresses whole, IPv6 by their /64.
fn address_key(ip: IpAddr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match ip {
        IpAddr::V4(v4) => v4.hash(&mut h),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.hash(&mut h),
            None => (u128::from(v6) >> 64).hash(&mut h),
        },
    }
    h.finish()
}

pub fn client_ip(trusted: &[ipnet::IpNet], remote: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer = remote.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Rightmost first: each trusted hop appended the address it saw.
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for part in value.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip.to_canonical()),
                // A garbled chain cannot be trusted past this point.
                Err(_) => hops.clear(),
            }
        }
    }
    let mut client = peer;
    for ip in hops.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = xff("198.51.100.7, 10.0.0.5");
        assert_eq!(
            client_ip(&trusted, proxy, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&trusted, stranger, &h), stranger.ip());
        assert_eq!(client_ip(&trusted, proxy, &HeaderMap::new()), proxy.ip());
        // A spoofed leftmost entry does not win over the untrusted hop.
        let h = xff("1.1.1.1, 198.51.100.7");
        assert_eq!(
            client_ip(&trusted, proxy, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
    }

    #[tokio::test(start_paused = true)]
    async fn publish_budget_refills_each_window() {
        let mut b = PublishBudget::new(RateLimit {
            events: 2,
            per: Duration::from_secs(1),
        });
        assert!(b.take() && b.take());
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.take());
        let mut open = PublishBudget::new(RateLimit::UNLIMITED);
        assert!((0..1000).all(|_| open.take()));
    }

    #[test]
    fn connections_are_capped_and_released() {
        let metrics = LimitMetrics::default();
        let limiter = Limiter::new(
            RateLimitSettings {
                per_ip_connections: 2,
                ..Default::default()
            },
            metrics,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limiter.admit(ip, true).unwrap();
        let _b = limiter.admit(ip, true).unwrap();
        assert_eq!(
            limiter.admit(ip, true).err().unwrap().kind,
            Kind::Connections
        );
        drop(a);
        assert!(limiter.admit(ip, true).is_ok());
        assert!(limiter.admit("192.0.2.2".parse().unwrap(), true).is_ok());
    }
}
