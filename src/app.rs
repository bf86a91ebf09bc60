//! Builds the components shared by every config generation from a
//! [`Config`] (hub, backplane, metrics, presence, hooks), hands them to
//! `reload::Control` with the first generation, and owns the start and
//! drain order. The top of the layer table: nothing imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::admin::stats::Stats;
use crate::auth::callback::Callbacks;
use crate::backplane::Backplane;
use crate::backplane::memory::MemoryBackplane;
use crate::backplane::nats::NatsBackplane;
use crate::backplane::redis::RedisBackplane;
use crate::config::{BackplaneKind, Config, RouteAction};
use crate::generation::{HistoryRules, Shared, history_policy};
use crate::hub::Hub;
use crate::limits::Limiter;
use crate::listener::{self, tls};
use crate::metrics::Metrics;
use crate::realtime::Realtime;
use crate::reload::{Control, Reloader};
use crate::shutdown::Shutdown;

/// Bound sockets to start on; named here too, where callers of
/// [`start`] look for it.
pub use crate::listener::Listeners;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    Backplane(#[from] crate::backplane::Error),
}

/// A started pushgate.
pub struct Running {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub internal: SocketAddr,
    pub hub: Arc<Hub>,
    shutdown: Shutdown,
    internal_shutdown: Shutdown,
    ready: Arc<AtomicBool>,
    control: Arc<Control>,
}

/// Starts serving on `listeners` until [`Running::drain`].
pub async fn start(config: &Config, listeners: Listeners) -> Result<Running, Error> {
    let shutdown = Shutdown::new();
    let history = Arc::new(ArcSwap::from_pointee(HistoryRules::new(config)));
    // The backplane is built once, at start: it owns order and history,
    // so a config reload does not replace it.
    let hub = Arc::new(match config.backplane {
        BackplaneKind::Memory => Hub::new(history_policy(history.clone())),
        _ => Hub::external(history_policy(history.clone())),
    });
    hub.set_max_total(config.realtime.history_max_total);
    let metrics = Arc::new(Metrics::new(hub.metrics().clone()));
    metrics.zero_routes(config);
    let presence = Arc::new(crate::presence::Registry::new());
    let (backplane, presence_store) =
        start_backplane(config, &hub, &metrics, &presence, &shutdown).await?;
    let ready = Arc::new(AtomicBool::new(false));
    // The internal listener outlives the public drain, so /readyz can
    // report "not ready" while sessions close; presence and the webhooks
    // run until then too, so the drain's leaves and disconnects go out.
    let internal_shutdown = Shutdown::new();
    let hooks = config.hooks.as_ref().and_then(|h| {
        let upstream = config.upstreams.get(&h.upstream)?;
        Some(crate::hooks::Hooks::start(
            h.clone(),
            upstream,
            metrics.hooks.clone(),
            &internal_shutdown,
        ))
    });
    internal_shutdown.tracker.spawn(crate::presence::run(
        presence.clone(),
        presence_store.clone(),
        backplane.clone(),
        config.presence.refresh,
        internal_shutdown.clone(),
    ));
    let limiter = Arc::new(Limiter::new(
        config.rate_limits.clone(),
        metrics.limits.clone(),
    ));
    let realtime = Arc::new(Realtime {
        hub: hub.clone(),
        backplane: backplane.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        callbacks: Callbacks::default(),
        limiter,
        presence,
        presence_store,
        hooks,
    });
    let shared = Shared {
        stats: Arc::new(Stats::new(hub.clone(), metrics.clone(), backplane.clone())),
        metrics,
        backplane,
        realtime,
        shutdown: shutdown.clone(),
        internal_shutdown: internal_shutdown.clone(),
        ready: ready.clone(),
    };
    let certificates = Arc::new(tls::Certificates::new(tls::load_all(&config.certificates)?));
    let control = Control::start(config, shared, certificates, history, listeners)?;
    let (http, https, internal) = control.addresses();
    let sweeper = sweep(hub.clone(), shutdown.clone());
    shutdown.tracker.spawn(sweeper);
    ready.store(true, Ordering::Release);
    Ok(Running {
        http,
        https,
        internal: internal.unwrap_or(config.internal.listen),
        hub,
        shutdown,
        internal_shutdown,
        ready,
        control,
    })
}

impl Running {
    /// Drains in order: not ready, stop accepting, close sessions politely
    /// spread over `drain_window`, let in-flight requests finish, all by
    /// the grace deadline (of the config serving now). Returns whether
    /// everything finished in time.
    pub async fn drain(self) -> bool {
        let config = self.control.config();
        self.drain_paced(config.shutdown_grace, config.drain_window)
            .await
    }

    /// Drains within `grace`, pacing closes over at most half of it.
    pub async fn drain_within(self, grace: Duration) -> bool {
        let window = self.control.config().drain_window.min(grace / 2);
        self.drain_paced(grace, window).await
    }

    async fn drain_paced(self, grace: Duration, window: Duration) -> bool {
        self.ready.store(false, Ordering::Release);
        let started = Instant::now();
        let sessions = self.control.open_sessions();
        let clean = self.shutdown.drain_paced(grace, window, sessions).await;
        let rest = grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        self.internal_shutdown.drain(rest).await;
        clean
    }

    /// A handle that starts the drain when `signal` resolves.
    pub fn drain_on(self, signal: impl Future<Output = ()> + Send + 'static) -> JoinHandle<bool> {
        tokio::spawn(async move {
            signal.await;
            self.drain().await
        })
    }

    /// Reloads the config file (SIGHUP, `POST /admin/reload`).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.control.clone())
    }
}

/// The largest history any channel may have (one NATS stream holds all).
/// The backplane `config` names, started, and the presence store that
/// shares its server (none on the memory backplane).
async fn start_backplane(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Metrics,
    presence: &crate::presence::Registry,
    shutdown: &Shutdown,
) -> Result<
    (
        Arc<dyn Backplane>,
        Option<Arc<dyn crate::presence::PresenceStore>>,
    ),
    Error,
> {
    let mut presence_store: Option<Arc<dyn crate::presence::PresenceStore>> = None;
    let backplane: Arc<dyn Backplane> = match &config.backplane {
        BackplaneKind::Memory => Arc::new(MemoryBackplane::new(hub.clone())),
        BackplaneKind::Redis(settings) => {
            let redis = Arc::new(RedisBackplane::start(
                settings,
                hub.clone(),
                metrics.backplane.clone(),
                shutdown,
            )?);
            presence_store = Some(Arc::new(crate::presence::redis::RedisPresence::new(
                redis.clone(),
                &settings.prefix,
                presence.node().clone(),
                config.presence.refresh,
            )));
            redis
        }
        BackplaneKind::Nats(settings) => {
            let (messages, max_age) = largest_history(config);
            let nats = NatsBackplane::start(
                settings,
                hub.clone(),
                messages,
                max_age,
                metrics.backplane.clone(),
                shutdown,
            )
            .await?;
            presence_store = Some(Arc::new(crate::presence::nats::NatsPresence::new(
                nats.jetstream(),
                &settings.prefix,
                presence.node().clone(),
                config.presence.refresh,
            )));
            Arc::new(nats)
        }
    };
    Ok((backplane, presence_store))
}

fn largest_history(config: &Config) -> (usize, Duration) {
    let mut messages = config.realtime.history_messages;
    let mut max_age = config.realtime.history_max_age;
    for route in &config.routes {
        if let RouteAction::Realtime(rt) = &route.action {
            messages = messages.max(rt.settings.history_messages);
            max_age = max_age.max(rt.settings.history_max_age);
        }
    }
    (messages, max_age)
}

/// Prunes history by age and drops idle channels, once a second.
async fn sweep(hub: Arc<Hub>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.token.cancelled() => return,
            _ = tick.tick() => hub.sweep(Instant::now()),
        }
    }
}
