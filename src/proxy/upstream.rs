//! One upstream: its targets used round robin, passive health (a target that
//! failed to connect is skipped for `fail_timeout`), each target's
//! connection pool, and the hyper-util client for upgrades, GRIP and hooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamSettings;
use crate::error::Body;

use super::pool::Pool;

pub struct Upstream {
    pub name: String,
    pub client: Client<HttpConnector, Body>,
    pub timeout: Duration,
    /// Signs `Grip-Sig` on requests from GRIP routes (`grip_sig_key`).
    pub grip_sig: Option<crate::grip::sig::Signer>,
    targets: Vec<Target>,
    next: AtomicUsize,
    fail_timeout: Duration,
    /// Reference for `Target::down_until` (milliseconds since this).
    started: Instant,
}

pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Connections for proxied requests (`forward`).
    pub pool: Arc<Pool>,
    /// Milliseconds since `Upstream::started` until which the target is
    /// skipped; 0 = healthy.
    down_until: AtomicU64,
}

impl Upstream {
    pub fn new(name: &str, settings: &UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let targets = settings
            .targets
            .iter()
            .filter_map(|uri| {
                let authority = uri.authority().cloned()?;
                Some(Target {
                    scheme: uri.scheme().cloned()?,
                    pool: Pool::new(authority.clone(), settings.connect_timeout),
                    authority,
                    down_until: AtomicU64::new(0),
                })
            })
            .collect();
        Self {
            name: name.to_owned(),
            client,
            timeout: settings.timeout,
            grip_sig: settings
                .grip_sig_key
                .as_deref()
                .map(crate::grip::sig::Signer::new),
            targets,
            next: AtomicUsize::new(0),
            fail_timeout: settings.fail_timeout,
            started: Instant::now(),
        }
    }

    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The next healthy target, round robin; if all are down, the next one
    /// anyway (better a try than a certain failure).
    pub fn pick(&self) -> Option<&Target> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| t.down_until.load(Ordering::Relaxed) <= now)
            .or_else(|| self.targets.get(start % n))
    }

    /// Marks `target` as failed to connect: skipped for `fail_timeout`.
    pub fn mark_down(&self, target: &Target) {
        let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
        target.down_until.store(until.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(targets: &[&str]) -> Upstream {
        Upstream::new(
            "u",
            &UpstreamSettings {
                targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                fail_timeout: Duration::from_secs(60),
                grip_sig_key: None,
            },
        )
    }

    #[tokio::test]
    async fn round_robin_skips_failed_targets() {
        let u = upstream(&["http://a:1", "http://b:1", "http://c:1"]);
        let picks: Vec<_> = (0..3)
            .map(|_| u.pick().unwrap().authority.to_string())
            .collect();
        assert_eq!(picks, ["a:1", "b:1", "c:1"]);
        u.mark_down(u.pick().unwrap()); // a
        let picks: Vec<_> = (0..4)
            .map(|_| u.pick().unwrap().authority.to_string())
            .collect();
        assert!(!picks.contains(&"a:1".to_owned()), "{picks:?}");
    }

    #[tokio::test]
    async fn all_down_still_tries_one() {
        let u = upstream(&["http://a:1"]);
        u.mark_down(u.pick().unwrap());
        assert!(u.pick().is_some());
    }
}
