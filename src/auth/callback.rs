//! Callback auth (SPEC §8): ask the backend whether a request may
//! subscribe, cache the answer per credential, and let concurrent asks for
//! one credential share one call (single-flight), so a reconnect storm of
//! thousands of clients with one cookie makes one backend call.
//!
//! The cache is keyed by a SHA-1 digest of the route and the forwarded
//! header values (no credential is kept in memory as such) and bounded by
//! [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Denial, Grant, PatternSet, Reason, now_unix};
use crate::config::Transport;
use crate::config::auth::CallbackSettings;
use crate::hub::message::ChannelName;

/// Most cached answers; past it, expired ones are dropped, then any.
pub const MAX_ENTRIES: usize = 10_000;

/// Largest callback answer read.
const MAX_ANSWER: usize = 64 << 10;

type Outcome = Result<Arc<Grant>, Denial>;

struct Entry {
    cell: Arc<OnceCell<(Outcome, Instant)>>,
}

impl Entry {
    /// Whether a new ask may use this entry: in flight, or answered within
    /// `cache` with an answer that is not an outage and not expired.
    fn usable(&self, cache: std::time::Duration, now: Instant) -> bool {
        match self.cell.get() {
            None => true,
            Some((Err(d), _)) if d.reason == Reason::Unavailable => false,
            Some((Ok(g), _)) if g.expires_at.is_some_and(|at| at <= now_unix()) => false,
            Some((_, at)) => now < *at + cache,
        }
    }
}

/// The callback client and its answer cache, shared by every route.
pub struct Callbacks {
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<HashMap<[u8; 20], Entry>>,
    next_target: AtomicUsize,
}

impl Default for Callbacks {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            cache: Mutex::new(HashMap::new()),
            next_target: AtomicUsize::new(0),
        }
    }
}

/// The callback's `200` answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
}

/// What the callback is told about the request.
pub struct Ask<'a> {
    pub route: &'a str,
    pub channels: &'a [ChannelName],
    pub transport: Transport,
    pub headers: &'a HeaderMap,
}

impl Callbacks {
    /// The grant for this request's credential: cached, shared with a call
    /// in flight, or asked for now.
    pub async fn authorize(&self, settings: &CallbackSettings, ask: Ask<'_>) -> Outcome {
        let key = credential_key(settings, &ask);
        let cell = {
            let now = Instant::now();
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(e) if e.usable(settings.cache, now) => e.cell.clone(),
                _ => {
                    if cache.len() >= MAX_ENTRIES {
                        cache.retain(|_, e| e.usable(settings.cache, now));
                        if cache.len() >= MAX_ENTRIES
                            && let Some(k) = cache.keys().next().copied()
                        {
                            cache.remove(&k);
                        }
                    }
                    let cell = Arc::new(OnceCell::new());
                    cache.insert(key, Entry { cell: cell.clone() });
                    cell
                }
            }
        };
        // If the asker running the call goes away, the next waiter runs it.
        let (outcome, _) = cell
            .get_or_init(|| async { (self.call(settings, &ask).await, Instant::now()) })
            .await;
        outcome.clone()
    }

    async fn call(&self, settings: &CallbackSettings, ask: &Ask<'_>) -> Outcome {
        let unavailable = || Denial::from(Reason::Unavailable);
        let n = self.next_target.fetch_add(1, Ordering::Relaxed);
        let Some(target) = settings.targets.get(n % settings.targets.len().max(1)) else {
            return Err(unavailable());
        };
        let uri = format!(
            "{}://{}{}",
            target.scheme_str().unwrap_or("http"),
            target.authority().map_or("", |a| a.as_str()),
            settings.path
        );
        let body = serde_json::json!({
            "route": ask.route,
            "channels": ask.channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            "transport": ask.transport.as_str(),
        });
        let mut request = Request::post(uri);
        for name in &settings.forward_headers {
            for value in ask.headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        let Ok(mut request) = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
        else {
            return Err(unavailable());
        };
        let _span =
            crate::telemetry::auth_callback(&settings.upstream, ask.headers, request.headers_mut());
        let answer = async {
            let response = self.client.request(request).await.map_err(|e| {
                warn!(upstream = %settings.upstream, error = %e, "auth callback unreachable");
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| ())?
                .to_bytes();
            Ok::<_, ()>((status, body))
        };
        let (status, body) = match tokio::time::timeout(settings.timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(())) => return Err(unavailable()),
            Err(_) => {
                warn!(upstream = %settings.upstream, "auth callback timed out");
                return Err(unavailable());
            }
        };
        match status {
            StatusCode::OK => {
                let Ok(a) = serde_json::from_slice::<Answer>(&body) else {
                    warn!(upstream = %settings.upstream, "auth callback answered 200 without a valid grant");
                    return Err(unavailable());
                };
                debug!(sub = ?a.sub, route = ask.route, "auth callback granted");
                Ok(Arc::new(Grant {
                    sub: a.sub,
                    channels: PatternSet::compile(&a.channels),
                    publish: PatternSet::compile(&a.publish),
                    expires_at: a.expires_in.map(|s| now_unix().saturating_add(s)),
                }))
            }
            StatusCode::UNAUTHORIZED => Err(Reason::Rejected.into()),
            StatusCode::FORBIDDEN => Err(Reason::Forbidden.into()),
            other => {
                warn!(upstream = %settings.upstream, status = other.as_u16(), "auth callback failed");
                Err(unavailable())
            }
        }
    }
}

/// The cache key: the route's callback and the forwarded header values.
fn credential_key(settings: &CallbackSettings, ask: &Ask<'_>) -> [u8; 20] {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(ask.route.as_bytes());
    h.update([0]);
    h.update(settings.path.as_bytes());
    for name in &settings.forward_headers {
        h.update([0]);
        h.update(name.as_str().as_bytes());
        for value in ask.headers.get_all(name) {
            h.update([1]);
            h.update(value.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn granted(expires_at: Option<u64>) -> Outcome {
        Ok(Arc::new(Grant {
            sub: None,
            channels: PatternSet::default(),
            publish: PatternSet::default(),
            expires_at,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_for_the_cache_time_and_outages_never() {
        let cache = Duration::from_secs(30);
        let entry = Entry {
            cell: Arc::new(OnceCell::new()),
        };
        assert!(
            entry.usable(cache, Instant::now()),
            "a call in flight is shared"
        );
        entry
            .cell
            .set((granted(None), Instant::now()))
            .map_err(|_| ())
            .unwrap();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(entry.usable(cache, Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!entry.usable(cache, Instant::now()), "past the cache time");

        let down = Entry {
            cell: Arc::new(OnceCell::new_with(Some((
                Err(Reason::Unavailable.into()),
                Instant::now(),
            )))),
        };
        assert!(!down.usable(cache, Instant::now()), "a 503 is not cached");
        let refused = Entry {
            cell: Arc::new(OnceCell::new_with(Some((
                Err(Reason::Forbidden.into()),
                Instant::now(),
            )))),
        };
        assert!(refused.usable(cache, Instant::now()), "a 403 is cached");
        let expired = Entry {
            cell: Arc::new(OnceCell::new_with(Some((
                granted(Some(now_unix() - 1)),
                Instant::now(),
            )))),
        };
        assert!(
            !expired.usable(cache, Instant::now()),
            "an expired grant is not reused"
        );
    }
}
