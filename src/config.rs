//! The YAML configuration: schema (serde, unknown keys rejected), defaults,
//! `${VAR}` interpolation and cross-field checks, turned into a typed
//! [`Config`]. Every error is reported as `file:line:column: message`.
//!
//! This module opens no sockets and reads no certificate: it keeps paths.

pub mod auth;
mod backplane;
mod interpolate;
mod presence;
mod units;

pub use self::backplane::BackplaneKind;
pub use self::presence::{HookEvent, HooksSettings, PresenceGlobal, PresenceSettings};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use serde_saphyr::Spanned;

pub use self::auth::{AuthSettings, OnExpiry, RateLimit, RateLimitSettings};
pub use self::units::{ByteSize, DurationValue};
use crate::hub::queue::LagPolicy;
use crate::realtime::negotiate::Transport;
use crate::router::pattern::{PathPattern, Template};

// === schema (what the YAML file holds) ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listen: ListenConfig,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    internal: Option<InternalConfig>,
    #[serde(default)]
    upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    routes: Vec<Spanned<RouteConfig>>,
    #[serde(default)]
    realtime: RealtimeBlock,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    backplane: backplane::BackplaneConfig,
    #[serde(default)]
    shutdown_grace: Option<DurationValue>,
    #[serde(default)]
    drain_window: Option<Spanned<DurationValue>>,
    #[serde(default)]
    presence: Option<presence::PresenceTopConfig>,
    #[serde(default)]
    hooks: Option<Spanned<presence::HooksConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenConfig {
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    https: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateConfig {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InternalConfig {
    listen: Spanned<String>,
    #[serde(default)]
    tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamConfig {
    targets: Vec<Spanned<String>>,
    #[serde(default)]
    connect_timeout: Option<DurationValue>,
    #[serde(default)]
    timeout: Option<DurationValue>,
    /// How long a target that failed to connect is skipped.
    #[serde(default)]
    fail_timeout: Option<DurationValue>,
    /// Signs a `Grip-Sig` JWT on requests from GRIP routes (SPEC §5).
    #[serde(default)]
    grip_sig_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    name: Spanned<String>,
    #[serde(rename = "match")]
    matcher: MatchConfig,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    realtime: Option<Spanned<RealtimeBlock>>,
    #[serde(default, rename = "static")]
    static_files: Option<StaticConfig>,
    #[serde(default)]
    strip_prefix: Option<Spanned<String>>,
    #[serde(default)]
    add_headers: BTreeMap<String, String>,
    #[serde(default)]
    auth: Option<Spanned<auth::AuthConfig>>,
    /// Upstream responses may hold the request (GRIP, SPEC §5).
    #[serde(default)]
    grip: Option<Spanned<bool>>,
    /// WebSockets are spoken to the upstream as WebSocket-over-HTTP.
    #[serde(default)]
    ws_events: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientPublishConfig {
    All(bool),
    Patterns(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
/// A `realtime:` block: the top-level defaults or a route's own block. The
/// route-only keys (channels, transports, ...) are rejected at the top level.
struct RealtimeBlock {
    #[serde(default)]
    channels: Vec<Spanned<String>>,
    #[serde(default)]
    query_channels: Option<Spanned<bool>>,
    #[serde(default)]
    transports: Option<Spanned<Vec<Transport>>>,
    #[serde(default)]
    client_publish: Option<Spanned<ClientPublishConfig>>,
    #[serde(default)]
    heartbeat: Option<DurationValue>,
    #[serde(default)]
    pong_timeout: Option<DurationValue>,
    #[serde(default)]
    longpoll_timeout: Option<DurationValue>,
    #[serde(default)]
    sse_retry: Option<DurationValue>,
    #[serde(default)]
    queue: Option<usize>,
    #[serde(default)]
    on_lag: Option<LagPolicy>,
    #[serde(default)]
    history: Option<HistoryConfig>,
    #[serde(default)]
    max_message: Option<ByteSize>,
    #[serde(default)]
    allowed_origins: Option<Vec<String>>,
    /// Per route (docs/presence.md).
    #[serde(default)]
    presence: Option<Spanned<presence::PresenceConfig>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryConfig {
    #[serde(default)]
    messages: Option<usize>,
    #[serde(default)]
    max_age: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConfig {
    dir: Spanned<String>,
    #[serde(default)]
    index: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsConfig {
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_header: Option<Spanned<ByteSize>>,
    #[serde(default)]
    max_body: Option<ByteSize>,
    #[serde(default)]
    header_read_timeout: Option<DurationValue>,
    // SPEC §9 (checked in `config/auth.rs`).
    #[serde(default)]
    per_ip: Option<auth::PerIpConfig>,
    #[serde(default)]
    client_publish_rate: Option<Spanned<auth::RateConfig>>,
    #[serde(default)]
    publish_rate: Option<Spanned<auth::RateConfig>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    max_subscriptions: Option<Spanned<usize>>,
}

// === typed configuration (what the rest of pushgate uses) ===

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub listen_http: Vec<SocketAddr>,
    pub listen_https: Vec<SocketAddr>,
    pub certificates: Vec<CertificatePaths>,
    pub internal: InternalSettings,
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    pub routes: Vec<RouteSettings>,
    /// Realtime defaults; each realtime route holds its resolved copy.
    pub realtime: RealtimeSettings,
    pub limits: Limits,
    /// Per-address and per-client rates and caps (SPEC §9).
    pub rate_limits: RateLimitSettings,
    pub backplane: BackplaneKind,
    pub shutdown_grace: Duration,
    /// SIGTERM closes realtime connections spread over this (default:
    /// half of `shutdown_grace`).
    pub drain_window: Duration,
    /// Presence across nodes (docs/presence.md).
    pub presence: PresenceGlobal,
    /// Lifecycle webhooks; `None`: off.
    pub hooks: Option<HooksSettings>,
}

/// A certificate and key path, with where the config names them (so a file
/// that fails to load can be reported at its line).
#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub at: Position,
}

#[derive(Debug, Clone)]
pub struct InternalSettings {
    pub listen: SocketAddr,
    /// Bearer tokens accepted by the publish API; empty = loopback only.
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub targets: Vec<Uri>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub fail_timeout: Duration,
    /// HS256 key for `Grip-Sig` (SPEC §5).
    pub grip_sig_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub name: String,
    pub host: Option<String>,
    pub path: PathMatch,
    /// Empty = every method.
    pub methods: Vec<Method>,
    pub action: RouteAction,
    pub strip_prefix: Option<String>,
    pub add_headers: Vec<(HeaderName, HeaderValue)>,
    /// GRIP holds on this proxied route (`grip: true`).
    pub grip: bool,
    /// WebSocket-over-HTTP to the upstream (`ws_events: true`).
    pub ws_events: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// A path template with `{name}` captures, at most one per segment.
    Template(PathPattern),
    Prefix(String),
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Upstream(String),
    Realtime(Box<RealtimeRoute>),
    Static(StaticSettings),
}

#[derive(Debug, Clone)]
pub struct RealtimeRoute {
    /// The route's name.
    pub name: std::sync::Arc<str>,
    /// Channel templates over the path's captures, such as `"{channel}"`.
    pub channels: Vec<Template>,
    pub query_channels: bool,
    pub transports: Vec<Transport>,
    pub client_publish: ClientPublish,
    pub settings: RealtimeSettings,
    /// Subscriber auth (SPEC §8); `None`: the route is open.
    pub auth: Option<std::sync::Arc<AuthSettings>>,
    /// `Origin`s a WebSocket or SSE request may come from; `None`: any.
    pub allowed_origins: Option<std::sync::Arc<[String]>>,
}

/// Which channels a WebSocket client may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPublish {
    Denied,
    /// Any channel the connection is granted.
    Granted,
    /// Channels matching one of these patterns (`*` matches any run of
    /// characters, `{name}` a path capture).
    Patterns(Vec<Template>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeSettings {
    pub heartbeat: Duration,
    pub pong_timeout: Duration,
    pub longpoll_timeout: Duration,
    pub sse_retry: Duration,
    pub queue: usize,
    pub on_lag: LagPolicy,
    pub history_messages: usize,
    pub history_max_age: Duration,
    pub max_message: usize,
    /// Route only (`presence:`).
    pub presence: PresenceSettings,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(30),
            longpoll_timeout: Duration::from_secs(30),
            sse_retry: Duration::from_secs(2),
            queue: 1024,
            on_lag: LagPolicy::Disconnect,
            history_messages: 1000,
            history_max_age: Duration::from_secs(600),
            max_message: 1 << 20,
            presence: PresenceSettings::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StaticSettings {
    pub dir: PathBuf,
    pub index: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header: usize,
    pub max_body: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_header: 16 << 10,
            max_body: 1 << 20,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// A 1-based place in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl<T> From<&Spanned<T>> for Position {
    fn from(s: &Spanned<T>) -> Self {
        Self {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

/// One configuration error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub at: Position,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.at.line, self.at.column, self.message
        )
    }
}

/// Every problem found in a config file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub Vec<Diagnostic>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn at(file: &Path, at: Position, message: impl Into<String>) -> Self {
        Self(vec![Diagnostic {
            file: file.display().to_string(),
            at,
            message: message.into(),
        }])
    }
}

// === loading ===

/// Reads, interpolates, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::at(
            path,
            Position { line: 1, column: 1 },
            format!("cannot read config: {e}"),
        )
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses config `text` (named `path` in errors), reading `${VAR}`s
/// through `env`. Relative paths in the config are resolved against the
/// directory of `path`.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Error> {
    let text = interpolate::interpolate(text, env)
        .map_err(|(at, message)| Error::at(path, at, message))?;
    let file: FileConfig = serde_saphyr::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map_or(Position { line: 1, column: 1 }, |l| Position {
                line: l.line().max(1),
                column: l.column().max(1),
            });
        Error::at(path, at, yaml_message(&e))
    })?;
    Validator::new(path).validate(file)
}

/// The YAML error's message without the location and snippet, which we
/// print ourselves in the `file:line:column:` prefix.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let rendered = e.without_snippet().render_with_options(options);
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    // Drop a trailing " at line X column Y" the renderer may add, and the
    // parser's hint to its own API.
    let first = first.rfind(" at line ").map_or(first, |i| &first[..i]);
    let first = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    first.to_owned()
}

struct Validator<'a> {
    path: &'a Path,
    base: PathBuf,
    errors: Vec<Diagnostic>,
    /// `realtime.allowed_origins` at the top level, the routes' default.
    allowed_origins: Option<std::sync::Arc<[String]>>,
}

impl<'a> Validator<'a> {
    fn new(path: &'a Path) -> Self {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            path,
            base,
            errors: Vec::new(),
            allowed_origins: None,
        }
    }

    fn error(&mut self, at: impl Into<Position>, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.path.display().to_string(),
            at: at.into(),
            message: message.into(),
        });
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn address(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s,
                    format!(
                        "invalid listen address {:?}: expected IP:PORT, such as \"0.0.0.0:8080\"",
                        s.value
                    ),
                );
                None
            }
        }
    }

    fn validate(mut self, file: FileConfig) -> Result<Config, Error> {
        let listen_http: Vec<_> = file
            .listen
            .http
            .iter()
            .filter_map(|a| self.address(a))
            .collect();
        let listen_https: Vec<_> = file
            .listen
            .https
            .iter()
            .filter_map(|a| self.address(a))
            .collect();

        let mut certificates = Vec::new();
        for c in file.tls.iter().flat_map(|t| &t.certificates) {
            for p in [&c.cert, &c.key] {
                if !self.resolve(&p.value).is_file() {
                    self.error(p, format!("certificate file {:?} not found", p.value));
                }
            }
            certificates.push(CertificatePaths {
                cert: self.resolve(&c.cert.value),
                key: self.resolve(&c.key.value),
                at: (&c.cert).into(),
            });
        }
        if !file.listen.https.is_empty() && certificates.is_empty() {
            self.error(
                &file.listen.https[0],
                "listen.https needs at least one entry in tls.certificates",
            );
        }

        let internal = match &file.internal {
            Some(i) => {
                let listen = self.address(&i.listen);
                // An empty token (an unset `${VAR:-}`) means no token.
                let tokens: Vec<String> =
                    i.tokens.iter().filter(|t| !t.is_empty()).cloned().collect();
                if let Some(a) = listen
                    && tokens.is_empty()
                    && !a.ip().is_loopback()
                {
                    self.error(&i.listen, format!(
                        "internal.listen {a} is not a loopback address and internal.tokens is empty: \
                         the publish API would be open to the network; add a token or listen on 127.0.0.1"
                    ));
                }
                InternalSettings {
                    listen: listen.unwrap_or_else(default_internal),
                    tokens,
                }
            }
            None => InternalSettings {
                listen: default_internal(),
                tokens: Vec::new(),
            },
        };

        let mut upstreams = BTreeMap::new();
        for (name, u) in &file.upstreams {
            let mut targets = Vec::new();
            if u.value.targets.is_empty() {
                self.error(u, format!("upstream {name:?} has no targets"));
            }
            for t in &u.value.targets {
                match t.value.parse::<Uri>() {
                    Ok(uri)
                        if uri.scheme_str() == Some("http")
                            && uri.authority().is_some()
                            && matches!(uri.path(), "" | "/") =>
                    {
                        targets.push(uri)
                    }
                    Ok(uri) if uri.scheme_str() == Some("https") => {
                        self.error(t, format!("upstream target {uri}: https upstreams are not supported yet; use http://"));
                    }
                    _ => self.error(
                        t,
                        format!(
                            "invalid upstream target {:?}: expected http://HOST:PORT",
                            t.value
                        ),
                    ),
                }
            }
            upstreams.insert(
                name.clone(),
                UpstreamSettings {
                    targets,
                    connect_timeout: u
                        .value
                        .connect_timeout
                        .map_or(Duration::from_secs(2), |d| d.0),
                    timeout: u.value.timeout.map_or(Duration::from_secs(30), |d| d.0),
                    fail_timeout: u
                        .value
                        .fail_timeout
                        .map_or(Duration::from_secs(10), |d| d.0),
                    grip_sig_key: u.value.grip_sig_key.as_ref().map(|k| {
                        if k.value.is_empty() {
                            self.error(k, "grip_sig_key must not be empty");
                        }
                        k.value.clone()
                    }),
                },
            );
        }

        let realtime = resolve_realtime(RealtimeSettings::default(), &file.realtime);
        self.top_level_realtime(&file.realtime);
        self.top_level_presence(&file.realtime.presence);
        let presence = self.presence_top(&file.presence);
        let hooks = self.hooks(&file.hooks, &upstreams);
        self.allowed_origins = file.realtime.allowed_origins.clone().map(Into::into);
        let mut names = BTreeSet::new();
        let mut routes = Vec::new();
        for r in &file.routes {
            if let Some(route) = self.route(r, &upstreams, &realtime, &mut names) {
                routes.push(route);
            }
        }

        let limits = Limits::default();
        let max_header = match &file.limits.max_header {
            Some(s) if s.value.0 < 8192 => {
                self.error(s, "limits.max_header must be at least 8KiB");
                limits.max_header
            }
            Some(s) => s.value.0,
            None => limits.max_header,
        };
        let rate_limits = self.rate_limits(&file.limits);
        let limits = Limits {
            max_connections: file
                .limits
                .max_connections
                .unwrap_or(limits.max_connections),
            max_header,
            max_body: file.limits.max_body.map_or(limits.max_body, |b| b.0),
            header_read_timeout: file
                .limits
                .header_read_timeout
                .map_or(limits.header_read_timeout, |d| d.0),
        };

        let backplane = self.backplane(&file.backplane);

        let shutdown_grace = file.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0);
        let drain_window = match &file.drain_window {
            Some(w) if w.value.0 > shutdown_grace => {
                self.error(
                    w,
                    format!("drain_window must not exceed shutdown_grace ({shutdown_grace:?})"),
                );
                shutdown_grace / 2
            }
            Some(w) => w.value.0,
            None => shutdown_grace / 2,
        };

        if self.errors.is_empty() && listen_http.is_empty() && listen_https.is_empty() {
            self.error(
                Position { line: 1, column: 1 },
                "no public listener: set listen.http or listen.https",
            );
        }

        if !self.errors.is_empty() {
            return Err(Error(self.errors));
        }
        Ok(Config {
            source: self.path.to_path_buf(),
            listen_http,
            listen_https,
            certificates,
            internal,
            upstreams,
            routes,
            realtime,
            limits,
            rate_limits,
            backplane,
            shutdown_grace,
            drain_window,
            presence,
            hooks,
        })
    }

    fn route(
        &mut self,
        spanned: &Spanned<RouteConfig>,
        upstreams: &BTreeMap<String, UpstreamSettings>,
        defaults: &RealtimeSettings,
        names: &mut BTreeSet<String>,
    ) -> Option<RouteSettings> {
        let r = &spanned.value;
        let name = r.name.value.clone();
        if !names.insert(name.clone()) {
            self.error(&r.name, format!("duplicate route name {name:?}"));
        }
        // The names the path captures; on a bad path template, those its
        // placeholders would capture, so no follow-on error is reported.
        let mut captures: Vec<String> = Vec::new();
        let path = match (&r.matcher.path, &r.matcher.path_prefix) {
            (Some(p), None) => match PathPattern::parse(&p.value) {
                Ok(pattern) => {
                    captures = pattern.names().map(str::to_owned).collect();
                    PathMatch::Template(pattern)
                }
                Err(e) => {
                    // Reported; the rest of the route is still checked.
                    self.error(p, format!("invalid path template {:?}: {e}", p.value));
                    if let Ok(t) = Template::parse(&p.value) {
                        captures = t.names().map(str::to_owned).collect();
                    }
                    PathMatch::Prefix("/".into())
                }
            },
            (None, Some(p)) => {
                if !p.value.starts_with('/') {
                    self.error(p, format!("path_prefix {:?} must start with '/'", p.value));
                }
                PathMatch::Prefix(p.value.clone())
            }
            (Some(p), Some(_)) => {
                self.error(
                    p,
                    format!("route {name:?}: match has both path and path_prefix; use one"),
                );
                return None;
            }
            (None, None) => PathMatch::Prefix("/".into()),
        };
        let mut methods = Vec::new();
        for m in &r.matcher.methods {
            match Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => self.error(m, format!("invalid HTTP method {:?}", m.value)),
            }
        }
        let mut add_headers = Vec::new();
        for (k, v) in &r.add_headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => add_headers.push((k, v)),
                _ => self.error(
                    &r.name,
                    format!("route {name:?}: invalid add_headers entry {k:?}"),
                ),
            }
        }
        let strip_prefix = r.strip_prefix.as_ref().map(|s| {
            if !s.value.starts_with('/') {
                self.error(s, format!("strip_prefix {:?} must start with '/'", s.value));
            }
            s.value.clone()
        });

        if let (Some(a), None) = (&r.auth, &r.realtime) {
            self.error(
                a,
                format!("route {name:?}: auth applies to realtime routes only"),
            );
        }
        let actions = usize::from(r.upstream.is_some())
            + usize::from(r.realtime.is_some())
            + usize::from(r.static_files.is_some());
        if actions != 1 {
            self.error(
                spanned,
                format!("route {name:?} must have exactly one of upstream, realtime or static (found {actions})"),
            );
            return None;
        }
        let action = if let Some(u) = &r.upstream {
            if !upstreams.contains_key(&u.value) {
                self.error(
                    u,
                    format!("route {name:?} names unknown upstream {:?}", u.value),
                );
            }
            RouteAction::Upstream(u.value.clone())
        } else if let Some(rt) = &r.realtime {
            let mut realtime = self.realtime_route(&name, spanned, &rt.value, &captures, defaults);
            realtime.auth = r
                .auth
                .as_ref()
                .and_then(|a| self.auth(&name, a, upstreams))
                .map(std::sync::Arc::new);
            RouteAction::Realtime(Box::new(realtime))
        } else {
            let s = r.static_files.as_ref()?;
            let dir = self.resolve(&s.dir.value);
            if !dir.is_dir() {
                self.error(&s.dir, format!("static dir {:?} not found", s.dir.value));
            }
            RouteAction::Static(StaticSettings {
                dir,
                index: s.index.clone(),
            })
        };
        let grip = r.grip.as_ref().is_some_and(|g| g.value);
        let ws_events = r.ws_events.as_ref().is_some_and(|w| w.value);
        for (key, flag) in [("grip", &r.grip), ("ws_events", &r.ws_events)] {
            if let Some(flag) = flag
                && flag.value
                && r.upstream.is_none()
            {
                self.error(
                    flag,
                    format!("route {name:?}: {key} needs upstream (it changes how upstream answers are read)"),
                );
            }
        }
        Some(RouteSettings {
            name,
            host: r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path,
            methods,
            action,
            strip_prefix,
            add_headers,
            grip,
            ws_events,
        })
    }

    fn top_level_realtime(&mut self, rt: &RealtimeBlock) {
        let route_only: [(&str, Option<Position>); 4] = [
            ("channels", rt.channels.first().map(Position::from)),
            (
                "query_channels",
                rt.query_channels.as_ref().map(Position::from),
            ),
            ("transports", rt.transports.as_ref().map(Position::from)),
            (
                "client_publish",
                rt.client_publish.as_ref().map(Position::from),
            ),
        ];
        for (key, at) in route_only {
            if let Some(at) = at {
                self.error(
                    at,
                    format!("realtime.{key} belongs in a route's realtime block"),
                );
            }
        }
    }

    fn realtime_route(
        &mut self,
        name: &str,
        route: &Spanned<RouteConfig>,
        rt: &RealtimeBlock,
        captures: &[String],
        defaults: &RealtimeSettings,
    ) -> RealtimeRoute {
        let mut channels = Vec::new();
        for c in &rt.channels {
            match Template::parse(&c.value) {
                Err(e) => self.error(c, format!("invalid channel template {:?}: {e}", c.value)),
                Ok(template) => {
                    for n in template.names() {
                        if !captures.iter().any(|c| c == n) {
                            self.error(c, format!("channel template {:?} uses {{{n}}}, which the route's path does not capture", c.value));
                        }
                    }
                    channels.push(template);
                }
            }
        }
        let query_channels = rt.query_channels.as_ref().is_some_and(|q| q.value);
        if rt.channels.is_empty() && !query_channels {
            self.error(
                route,
                format!("realtime route {name:?} has no channels and query_channels is false"),
            );
        }
        let transports = rt
            .transports
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_else(|| vec![Transport::Websocket, Transport::Sse, Transport::Longpoll]);
        if transports.is_empty() {
            self.error(
                route,
                format!("realtime route {name:?} enables no transport"),
            );
        }
        let client_publish = match rt.client_publish.as_ref().map(|c| &c.value) {
            None | Some(ClientPublishConfig::All(false)) => ClientPublish::Denied,
            Some(ClientPublishConfig::All(true)) => ClientPublish::Granted,
            Some(ClientPublishConfig::Patterns(patterns)) => {
                let at = rt
                    .client_publish
                    .as_ref()
                    .map(Position::from)
                    .unwrap_or_default();
                let mut parsed = Vec::new();
                for p in patterns {
                    match Template::parse(p) {
                        Ok(t) => parsed.push(t),
                        Err(e) => {
                            self.error(at, format!("invalid client_publish pattern {p:?}: {e}"))
                        }
                    }
                }
                ClientPublish::Patterns(parsed)
            }
        };
        let mut settings = resolve_realtime(*defaults, rt);
        settings.presence = self.route_presence(&rt.presence);
        if settings.queue == 0 {
            self.error(
                route,
                format!("realtime route {name:?}: queue must be at least 1"),
            );
        }
        RealtimeRoute {
            name: name.into(),
            channels,
            query_channels,
            transports,
            client_publish,
            settings,
            auth: None,
            allowed_origins: rt
                .allowed_origins
                .clone()
                .map(Into::into)
                .or_else(|| self.allowed_origins.clone()),
        }
    }
}

fn default_internal() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5561))
}

fn resolve_realtime(base: RealtimeSettings, o: &RealtimeBlock) -> RealtimeSettings {
    let history = o.history;
    RealtimeSettings {
        heartbeat: o.heartbeat.map_or(base.heartbeat, |d| d.0),
        pong_timeout: o.pong_timeout.map_or(base.pong_timeout, |d| d.0),
        longpoll_timeout: o.longpoll_timeout.map_or(base.longpoll_timeout, |d| d.0),
        sse_retry: o.sse_retry.map_or(base.sse_retry, |d| d.0),
        queue: o.queue.unwrap_or(base.queue),
        on_lag: o.on_lag.unwrap_or(base.on_lag),
        history_messages: history
            .and_then(|h| h.messages)
            .unwrap_or(base.history_messages),
        history_max_age: history
            .and_then(|h| h.max_age)
            .map_or(base.history_max_age, |d| d.0),
        max_message: o.max_message.map_or(base.max_message, |b| b.0),
        presence: base.presence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, Error> {
        parse(Path::new("test.yaml"), text, &|name| match name {
            "TOKEN" => Some("secret".into()),
            _ => None,
        })
    }

    fn first_error(text: &str) -> String {
        parse_str(text).unwrap_err().0[0].to_string()
    }

    const MINIMAL: &str = "listen:\n  http: [\"127.0.0.1:0\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.realtime, RealtimeSettings::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.drain_window, Duration::from_secs(15), "half the grace");
        assert_eq!(c.internal.listen, default_internal());
    }

    #[test]
    fn unknown_key_is_an_error_with_its_position() {
        let e = first_error("listen:\n  http: [\"127.0.0.1:0\"]\n  bogus: 1\n");
        assert!(e.starts_with("test.yaml:3:3: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_upstream_is_reported_at_its_reference() {
        let e = first_error(
            "listen: { http: [\"127.0.0.1:0\"] }\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    upstream: nope\n",
        );
        assert!(e.starts_with("test.yaml:5:15: "), "{e}");
        assert!(e.contains("unknown upstream \"nope\""), "{e}");
    }

    #[test]
    fn interpolation_replaces_and_reports_missing_variables() {
        let c = parse_str("listen: { http: [\"127.0.0.1:0\"] }\ninternal:\n  listen: \"${ADDR:-127.0.0.1:9}\"\n  tokens: [\"${TOKEN}\"]\n").unwrap();
        assert_eq!(c.internal.listen.port(), 9);
        assert_eq!(c.internal.tokens, ["secret"]);
        let e = first_error("listen: { http: [\"${NOPE}\"] }\n");
        assert_eq!(
            e,
            "test.yaml:1:19: environment variable NOPE is not set (use ${NOPE:-default})"
        );
    }

    #[test]
    fn durations_and_sizes_parse_with_units() {
        let c = parse_str("listen: { http: [\"127.0.0.1:0\"] }\nrealtime: { heartbeat: 250ms, max_message: 64KiB }\nlimits: { max_body: 2MiB, header_read_timeout: 1m }\n").unwrap();
        assert_eq!(c.realtime.heartbeat, Duration::from_millis(250));
        assert_eq!(c.realtime.max_message, 64 << 10);
        assert_eq!(c.limits.max_body, 2 << 20);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(60));
        let e = first_error("listen: { http: [\"127.0.0.1:0\"] }\nrealtime: { heartbeat: soon }\n");
        assert!(e.starts_with("test.yaml:2:24: "), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
    }
}
