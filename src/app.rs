//! Builds every component from a [`Config`], wires them, and owns the start
//! and drain order. The only module that knows all the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::admin::Admin;
use crate::backplane::Backplane;
use crate::backplane::memory::MemoryBackplane;
use crate::config::{BackplaneKind, Config, RouteAction};
use crate::hub::Hub;
use crate::hub::history::HistoryLimits;
use crate::hub::message::ChannelName;
use crate::listener::{self, tls};
use crate::metrics::{ListenerLabels, Metrics};
use crate::proxy::Proxy;
use crate::publish::Publisher;
use crate::realtime::Realtime;
use crate::router::{Router, pattern};
use crate::service::Service;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

/// Sockets bound before starting, so tests can bind port 0 and read the
/// real addresses.
pub struct Listeners {
    pub http: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
    pub internal: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        }
        let mut http = Vec::new();
        for a in &config.listen_http {
            http.push(bind(*a).await?);
        }
        let mut https = Vec::new();
        for a in &config.listen_https {
            https.push(bind(*a).await?);
        }
        let internal = bind(config.internal.listen).await?;
        Ok(Self {
            http,
            https,
            internal,
        })
    }
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
    grace: Duration,
}

/// Starts serving on `listeners` until [`Running::drain`].
pub fn start(config: &Config, listeners: Listeners) -> Result<Running, Error> {
    let shutdown = Shutdown::new();
    let hub = Arc::new(Hub::new(history_policy(config)));
    let metrics = Arc::new(Metrics::new(hub.metrics().clone()));
    let backplane: Arc<dyn Backplane> = match config.backplane {
        BackplaneKind::Memory => Arc::new(MemoryBackplane::new(hub.clone())),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let realtime = Arc::new(Realtime {
        hub: hub.clone(),
        backplane: backplane.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let service = Arc::new(Service {
        router: Router::new(&config.routes),
        proxy: Proxy::new(&config.upstreams, metrics.clone(), shutdown.clone()).with_grip(
            Arc::new(crate::grip::Grip {
                holds: crate::grip::hold::Holds {
                    hub: hub.clone(),
                    queue: config.realtime.queue,
                    on_lag: crate::realtime::lag_policy(config.realtime.on_lag),
                    shutdown: shutdown.clone(),
                },
                max_instruct: config.limits.max_body,
            }),
        ),
        realtime,
        metrics: metrics.clone(),
    });
    let max_message = config
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Realtime(rt) => Some(rt.settings.max_message),
            _ => None,
        })
        .chain([config.realtime.max_message])
        .max()
        .unwrap_or(config.realtime.max_message);
    let admin = Arc::new(Admin {
        ready: ready.clone(),
        backplane: backplane.clone(),
        metrics: metrics.clone(),
        publisher: Publisher {
            backplane,
            tokens: config.internal.tokens.clone(),
            max_body: config.limits.max_body,
            max_message,
        },
    });

    let connections = Arc::new(Semaphore::new(
        config.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let options = |name: &'static str, tls: Option<TlsAcceptor>, connections: Arc<Semaphore>| {
        listener::Options {
            name,
            tls,
            max_header: config.limits.max_header,
            header_read_timeout: config.limits.header_read_timeout,
            connections,
            open_connections: metrics
                .open_connections
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
        }
    };
    let tls = if listeners.https.is_empty() {
        None
    } else {
        Some(TlsAcceptor::from(tls::server_config(&config.certificates)?))
    };

    let addr = |l: &TcpListener| l.local_addr().ok();
    let http: Vec<SocketAddr> = listeners.http.iter().filter_map(addr).collect();
    let https: Vec<SocketAddr> = listeners.https.iter().filter_map(addr).collect();
    let internal = addr(&listeners.internal).unwrap_or(config.internal.listen);

    for l in listeners.http {
        let o = options("http", None, connections.clone());
        info!(listener = "http", addr = %l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "listening");
        shutdown
            .tracker
            .spawn(listener::serve(l, o, service.clone(), shutdown.clone()));
    }
    for l in listeners.https {
        let o = options("https", tls.clone(), connections.clone());
        info!(listener = "https", addr = %l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "listening");
        shutdown
            .tracker
            .spawn(listener::serve(l, o, service.clone(), shutdown.clone()));
    }
    // The internal listener outlives the public drain, so /readyz can
    // report "not ready" while sessions close.
    let internal_shutdown = Shutdown::new();
    info!(listener = "internal", addr = %internal, "listening");
    internal_shutdown.tracker.spawn(listener::serve(
        listeners.internal,
        options("internal", None, Arc::new(Semaphore::new(1024))),
        admin,
        internal_shutdown.clone(),
    ));
    let sweeper = sweep(hub.clone(), shutdown.clone());
    shutdown.tracker.spawn(sweeper);
    ready.store(true, Ordering::Release);
    Ok(Running {
        http,
        https,
        internal,
        hub,
        shutdown,
        internal_shutdown,
        ready,
        grace: config.shutdown_grace,
    })
}

impl Running {
    /// Drains in order: not ready, stop accepting, close sessions politely,
    /// let in-flight requests finish, all by the grace deadline. Returns
    /// whether everything finished in time.
    pub async fn drain(self) -> bool {
        let grace = self.grace;
        self.drain_within(grace).await
    }

    pub async fn drain_within(self, grace: Duration) -> bool {
        self.ready.store(false, Ordering::Release);
        let started = Instant::now();
        let clean = self.shutdown.drain(grace).await;
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
}

/// History limits per channel: those of the realtime route whose channel
/// template matches the channel most specifically (most literal
/// characters; the first such route on a tie), else the defaults.
fn history_policy(config: &Config) -> crate::hub::HistoryPolicy {
    let default = HistoryLimits {
        messages: config.realtime.history_messages,
        max_age: config.realtime.history_max_age,
    };
    let mut rules: Vec<(String, HistoryLimits)> = Vec::new();
    for route in &config.routes {
        let RouteAction::Realtime(rt) = &route.action else {
            continue;
        };
        let limits = HistoryLimits {
            messages: rt.settings.history_messages,
            max_age: rt.settings.history_max_age,
        };
        rules.extend(rt.channels.iter().map(|t| (template_glob(t), limits)));
        if rt.query_channels {
            rules.push(("*".to_owned(), limits));
        }
    }
    Box::new(move |channel: &ChannelName| {
        let mut best: Option<(usize, HistoryLimits)> = None;
        for (glob, limits) in &rules {
            let literal = glob.chars().filter(|c| *c != '*').count();
            if pattern::glob(glob, channel.as_str()) && best.is_none_or(|(b, _)| literal > b) {
                best = Some((literal, *limits));
            }
        }
        best.map_or(default, |(_, limits)| limits)
    })
}

/// `user:{id}` → `user:*`.
fn template_glob(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        out.push('*');
        rest = rest[open..].split_once('}').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_globs() {
        assert_eq!(template_glob("{channel}"), "*");
        assert_eq!(template_glob("user:{id}:feed"), "user:*:feed");
        assert_eq!(template_glob("static"), "static");
    }
}
