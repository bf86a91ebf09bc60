//! Config reload (SIGHUP and `POST /admin/reload`, SPEC §7): everything
//! built from the config is swapped atomically, and a config that fails
//! its checks is refused whole while the old one keeps serving.
//!
//! Swapped: the public handler (routes with every per-route setting, and
//! upstreams), the internal handler (publish tokens and limits), request
//! head limits, `max_connections`, history limits, TLS certificates and
//! the listeners themselves (new addresses are bound before old ones stop
//! accepting). Sessions keep the settings they opened with: a session
//! copies its route's settings and grants when it starts. The backplane
//! cannot change without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Admin};
use crate::config::{self, Config, Diagnostic, Position};
use crate::error::{Body, ErrorCode, json_response};
use crate::generation::{self, HistoryRules, Shared};
use crate::listener::{self, ConnInfo, Handler, HeadLimits, Listeners, RawIo, tls};
use crate::metrics::ListenerLabels;
use crate::service::Service;

/// A handler that a reload replaces: each request (and each claimed
/// connection) uses the generation current when it arrived.
pub struct Current<H>(ArcSwap<H>);

impl<H> Current<H> {
    pub fn new(handler: H) -> Self {
        Self(ArcSwap::from_pointee(handler))
    }

    pub fn load(&self) -> Arc<H> {
        self.0.load_full()
    }
}

impl<H: Handler> Handler for Current<H> {
    /// The generation that claimed the connection serves it.
    type Claim = (Arc<H>, H::Claim);

    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        self.load().handle(request, conn)
    }

    fn accept(&self, remote: std::net::SocketAddr) -> Option<crate::error::HttpError> {
        self.0.load().accept(remote)
    }

    fn claim(&self, head: &Request<()>, conn: &ConnInfo) -> Option<Self::Claim> {
        let handler = self.load();
        let claim = handler.claim(head, conn)?;
        Some((handler, claim))
    }

    fn serve_claimed<IO: RawIo>(
        self: Arc<Self>,
        (handler, claim): Self::Claim,
        io: IO,
        conn: ConnInfo,
    ) -> impl Future<Output = crate::listener::HandBack<IO>> + Send + 'static {
        handler.serve_claimed(claim, io, conn)
    }
}

/// Triggers reloads; cheap to clone.
#[derive(Clone)]
pub struct Reloader(pub(crate) Arc<Control>);

impl Reloader {
    /// Reloads the config file the process started with.
    pub async fn reload(&self) -> Result<Summary, Refused> {
        self.0.reload().await
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct Summary {
    pub config: PathBuf,
    pub routes: usize,
    pub upstreams: usize,
    /// Bound addresses now serving.
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub internal: Option<SocketAddr>,
    /// Configured addresses bound or closed by this reload.
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reloaded": true,
            "config": self.config.display().to_string(),
            "routes": self.routes,
            "upstreams": self.upstreams,
            "listeners": {
                "http": self.http.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "https": self.https.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "internal": self.internal.map(|a| a.to_string()),
            },
            "added": self.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// Why a reload was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The file fails `pushgate check`: every problem with its place.
    #[error("{0}")]
    Config(config::Error),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("draining: no reload during shutdown")]
    Draining,
}

impl Refused {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Refused::Config(e) => &e.0,
            _ => &[],
        }
    }

    /// `400 {"reloaded":false,"error":{"code","message","diagnostics":[...]}}`.
    pub fn into_response(self) -> Response<Body> {
        let code = match &self {
            Refused::Config(_) => ErrorCode::ConfigInvalid,
            Refused::Bind { .. } => ErrorCode::BindFailed,
            Refused::Draining => ErrorCode::Draining,
        };
        let diagnostics: Vec<serde_json::Value> = self
            .diagnostics()
            .iter()
            .map(|d| {
                serde_json::json!({
                    "file": d.file,
                    "line": d.at.line,
                    "column": d.at.column,
                    "message": d.message,
                })
            })
            .collect();
        let body = serde_json::json!({
            "reloaded": false,
            "error": {"code": code.as_str(), "message": self.to_string(), "diagnostics": diagnostics},
        });
        json_response(code.status(), &body)
    }
}

/// Which listener an address serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    Internal,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Internal => "internal",
        }
    }
}

/// An accept loop: the address the config names, the one bound, and the
/// token that stops it accepting (its connections live on).
struct Bound {
    kind: Kind,
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
}

struct State {
    listeners: Vec<Bound>,
    max_connections: usize,
}

/// Everything a reload swaps, and the listeners it owns.
pub(crate) struct Control {
    me: Weak<Control>,
    path: PathBuf,
    shared: Shared,
    public: Arc<Current<Service>>,
    internal: Arc<Current<Admin>>,
    head: Arc<ArcSwap<HeadLimits>>,
    certificates: Arc<tls::Certificates>,
    tls: TlsAcceptor,
    /// `limits.max_connections`, shared by the public listeners.
    connections: Arc<Semaphore>,
    history: Arc<ArcSwap<HistoryRules>>,
    config: ArcSwap<Config>,
    /// Held for a whole reload: one at a time.
    state: tokio::sync::Mutex<State>,
}

fn head_limits(config: &Config) -> HeadLimits {
    HeadLimits {
        max_header: config.limits.max_header,
        header_read_timeout: config.limits.header_read_timeout,
    }
}

fn desired(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let http = config.listen_http.iter().map(|a| (Kind::Http, *a));
    let https = config.listen_https.iter().map(|a| (Kind::Https, *a));
    http.chain(https)
        .chain([(Kind::Internal, config.internal.listen)])
        .collect()
}

impl Control {
    /// Builds the first generation from `config` and starts accepting on
    /// `listeners`.
    pub(crate) fn start(
        config: &Config,
        shared: Shared,
        certificates: Arc<tls::Certificates>,
        history: Arc<ArcSwap<HistoryRules>>,
        listeners: Listeners,
    ) -> Result<Arc<Self>, tls::Error> {
        let tls = TlsAcceptor::from(tls::server_config_with(certificates.clone())?);
        let max_connections = config.limits.max_connections.min(Semaphore::MAX_PERMITS);
        let control = Arc::new_cyclic(|me: &Weak<Control>| Control {
            me: me.clone(),
            path: config.source.clone(),
            public: Arc::new(Current::new(generation::build_service(config, &shared))),
            internal: Arc::new(Current::new(generation::build_admin(
                config,
                &shared,
                me.clone(),
            ))),
            shared,
            head: Arc::new(ArcSwap::from_pointee(head_limits(config))),
            certificates,
            tls,
            connections: Arc::new(Semaphore::new(max_connections)),
            history,
            config: ArcSwap::from_pointee(config.clone()),
            state: tokio::sync::Mutex::new(State {
                listeners: Vec::new(),
                max_connections,
            }),
        });
        let sockets = listeners
            .http
            .into_iter()
            .zip(&config.listen_http)
            .map(|(l, a)| (Kind::Http, *a, l))
            .chain(
                listeners
                    .https
                    .into_iter()
                    .zip(&config.listen_https)
                    .map(|(l, a)| (Kind::Https, *a, l)),
            )
            .chain([(Kind::Internal, config.internal.listen, listeners.internal)]);
        let bound = sockets
            .map(|(kind, configured, l)| control.spawn(kind, configured, l))
            .collect();
        // Nobody else has the control yet: the lock is free.
        if let Ok(mut state) = control.state.try_lock() {
            state.listeners = bound;
        }
        Ok(control)
    }

    /// The config serving now.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Realtime sessions open now, over every transport.
    pub(crate) fn open_sessions(&self) -> usize {
        use crate::realtime::negotiate::Transport;
        [Transport::Sse, Transport::Websocket, Transport::Longpoll]
            .into_iter()
            .map(|t| {
                let labels = crate::metrics::TransportLabels {
                    transport: t.as_str(),
                };
                self.shared.metrics.sessions.get_or_create(&labels).get()
            })
            .sum::<i64>()
            .max(0) as usize
    }

    /// The bound addresses: (http, https, internal).
    pub(crate) fn addresses(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>, Option<SocketAddr>) {
        let Ok(state) = self.state.try_lock() else {
            return (Vec::new(), Vec::new(), None);
        };
        Self::addresses_of(&state)
    }

    fn addresses_of(state: &State) -> (Vec<SocketAddr>, Vec<SocketAddr>, Option<SocketAddr>) {
        let of = |k: Kind| {
            state
                .listeners
                .iter()
                .filter(move |b| b.kind == k)
                .map(|b| b.local)
        };
        (
            of(Kind::Http).collect(),
            of(Kind::Https).collect(),
            of(Kind::Internal).next(),
        )
    }

    /// Starts an accept loop on `listener`.
    fn spawn(&self, kind: Kind, configured: SocketAddr, listener: TcpListener) -> Bound {
        let local = listener.local_addr().unwrap_or(configured);
        let parent = match kind {
            Kind::Internal => &self.shared.internal_shutdown,
            _ => &self.shared.shutdown,
        };
        // Cancelled with the whole drain, or alone when the config drops
        // this address; connections are tracked by the parent either way.
        let shutdown = parent.child();
        let stop = shutdown.token.clone();
        let name = kind.name();
        let options = listener::Options {
            name,
            tls: (kind == Kind::Https).then(|| self.tls.clone()),
            head: self.head.clone(),
            connections: match kind {
                Kind::Internal => Arc::new(Semaphore::new(1024)),
                _ => self.connections.clone(),
            },
            open_connections: self
                .shared
                .metrics
                .open_connections
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
        };
        info!(listener = name, addr = %local, "listening");
        match kind {
            Kind::Internal => parent.tracker.spawn(listener::serve(
                listener,
                options,
                self.internal.clone(),
                shutdown,
            )),
            _ => parent.tracker.spawn(listener::serve(
                listener,
                options,
                self.public.clone(),
                shutdown,
            )),
        };
        Bound {
            kind,
            configured,
            local,
            stop,
        }
    }

    /// Loads, checks and applies the config file; all or nothing.
    pub(crate) async fn reload(&self) -> Result<Summary, Refused> {
        let result = self.try_reload().await;
        match &result {
            Ok(s) => info!(
                config = %s.config.display(),
                routes = s.routes,
                upstreams = s.upstreams,
                added = ?s.added,
                removed = ?s.removed,
                "Config reloaded."
            ),
            Err(refused) => {
                for d in refused.diagnostics() {
                    error!(diagnostic = %d, "{d}");
                }
                warn!(error = %crate::error::error_chain(refused), "Reload refused; the old config keeps serving.");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<Summary, Refused> {
        if self.shared.shutdown.is_draining() {
            return Err(Refused::Draining);
        }
        let mut state = self.state.lock().await;
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|_| Refused::Draining)?
            .map_err(Refused::Config)?;
        let certificates = tls::load_all(&config.certificates)
            .map_err(|e| Refused::Config(certificate_error(&config, &e)))?;
        let old = self.config.load_full();
        unchanged_at_start(&old, &config)?;

        // Listeners: keep every (kind, address) still named, bind the new
        // ones before anything changes, stop the rest last.
        let mut kept = vec![false; state.listeners.len()];
        let mut to_bind = Vec::new();
        for (kind, addr) in desired(&config) {
            match state
                .listeners
                .iter()
                .enumerate()
                .position(|(i, b)| !kept[i] && b.kind == kind && b.configured == addr)
            {
                Some(i) => kept[i] = true,
                None => to_bind.push((kind, addr)),
            }
        }
        let mut fresh = Vec::with_capacity(to_bind.len());
        for (kind, addr) in to_bind {
            let listener =
                crate::listener::bind_tcp(addr).map_err(|source| Refused::Bind { addr, source })?;
            fresh.push((kind, addr, listener));
        }

        // === commit: nothing below can fail ===
        self.shared.metrics.zero_routes(&config);
        self.certificates.replace(certificates);
        self.head.store(Arc::new(head_limits(&config)));
        self.resize_connections(&mut state, config.limits.max_connections);
        self.history.store(Arc::new(HistoryRules::new(&config)));
        self.shared
            .realtime
            .hub
            .set_max_total(config.realtime.history_max_total);
        self.public
            .0
            .store(Arc::new(generation::build_service(&config, &self.shared)));
        self.internal.0.store(Arc::new(generation::build_admin(
            &config,
            &self.shared,
            self.me.clone(),
        )));
        let added: Vec<SocketAddr> = fresh.iter().map(|(_, a, _)| *a).collect();
        let mut listeners = Vec::with_capacity(kept.len() + fresh.len());
        let mut removed = Vec::new();
        for (bound, keep) in state.listeners.drain(..).zip(kept) {
            if keep {
                listeners.push(bound);
            } else {
                info!(listener = bound.kind.name(), addr = %bound.local, "Stopped listening: not in the reloaded config.");
                bound.stop.cancel();
                removed.push(bound.configured);
            }
        }
        for (kind, addr, listener) in fresh {
            listeners.push(self.spawn(kind, addr, listener));
        }
        state.listeners = listeners;
        let (http, https, internal) = Self::addresses_of(&state);
        let summary = Summary {
            config: config.source.clone(),
            routes: config.routes.len(),
            upstreams: config.upstreams.len(),
            http,
            https,
            internal,
            added,
            removed,
        };
        self.config.store(Arc::new(config));
        Ok(summary)
    }

    /// Grows or shrinks `max_connections`. Permits held by open
    /// connections are taken back as those connections end.
    fn resize_connections(&self, state: &mut State, max: usize) {
        let max = max.min(Semaphore::MAX_PERMITS);
        let old = state.max_connections;
        state.max_connections = max;
        if max > old {
            self.connections.add_permits(max - old);
        } else if max < old {
            let owed = (old - max) - self.connections.forget_permits(old - max);
            if owed > 0 {
                let semaphore = self.connections.clone();
                let owed = u32::try_from(owed).unwrap_or(u32::MAX);
                self.shared.shutdown.tracker.spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(owed).await {
                        permits.forget();
                    }
                });
            }
        }
    }
}

/// A certificate that fails to load, reported at its place in the file.
fn certificate_error(config: &Config, e: &tls::Error) -> config::Error {
    let at = match e {
        tls::Error::Certificate { path, .. } => config
            .certificates
            .iter()
            .find(|c| c.cert.display().to_string() == *path || c.key.display().to_string() == *path)
            .map(|c| c.at),
        tls::Error::Setup(_) => None,
    }
    .or_else(|| config.certificates.first().map(|c| c.at))
    .unwrap_or(Position { line: 1, column: 1 });
    config::Error(vec![Diagnostic {
        file: config.source.display().to_string(),
        at,
        message: e.to_string(),
    }])
}

/// `POST /admin/reload`.
impl admin::Reload for Control {
    fn respond(&self) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(async move {
            match self.reload().await {
                Ok(summary) => json_response(StatusCode::OK, &summary.to_json()),
                Err(refused) => refused.into_response(),
            }
        })
    }
}
/// What a reload cannot change, because it is built once at start: the
/// hooks and presence tasks, the trace exporter and the backplane.
fn unchanged_at_start(old: &Config, new: &Config) -> Result<(), Refused> {
    let changed = if old.hooks != new.hooks || old.presence != new.presence {
        "hooks and presence cannot change on reload; restart pushgate to change them"
    } else if old.tracing != new.tracing {
        "tracing cannot change on reload; restart pushgate to change it"
    } else if format!("{:?}", old.backplane) != format!("{:?}", new.backplane) {
        "backplane cannot change on reload; restart pushgate to switch it"
    } else {
        return Ok(());
    };
    Err(Refused::Config(config::Error(vec![Diagnostic {
        file: new.source.display().to_string(),
        at: Position { line: 1, column: 1 },
        message: changed.to_owned(),
    }])))
}
