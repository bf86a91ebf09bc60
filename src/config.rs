//! The YAML configuration, turned into the typed [`Config`] this module
//! owns: `schema` (serde, unknown keys rejected), `interpolate` (`${VAR}`),
//! `validate` (cross-field checks, one function per section), `defaults`;
//! `auth` and `backplane` hold their sections. Every error is reported as
//! `file:line:column: message`.
//!
//! This module opens no sockets and reads no certificate: it keeps paths.

pub mod auth;
mod backplane;
mod interpolate;
mod presence;
mod traces;
mod transport;
mod units;

pub use self::backplane::{
    BackplaneKind, NatsSettings, RedisSettings, check_redis_url, parse_nats_url,
};
pub use self::presence::{HookEvent, HooksSettings, PresenceGlobal, PresenceSettings};
pub use self::traces::TracingSettings;
pub use self::transport::Transport;

mod defaults;
mod schema;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde_saphyr::Spanned;

pub use self::auth::{AuthSettings, OnExpiry, RateLimit, RateLimitSettings};
pub use self::units::{ByteSize, DurationValue};
use crate::hub::queue::LagPolicy;
use crate::router::pattern::{PathPattern, Template};

use self::schema::{FileConfig, LimitsConfig};
use self::validate::Validator;

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
    /// OpenTelemetry traces (`tracing.otlp`); `None`: off.
    pub tracing: Option<TracingSettings>,
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
    /// `realtime.history.max_total`; the top-level value is the hub's.
    pub history_max_total: usize,
    pub max_message: usize,
    /// Route only (`presence:`).
    pub presence: PresenceSettings,
}

#[derive(Debug, Clone)]
pub struct StaticSettings {
    pub dir: PathBuf,
    pub index: Option<String>,
}

/// The largest `max_message` of the realtime defaults and every realtime
/// route: what the publish API accepts.
pub fn largest_max_message(routes: &[RouteSettings], realtime: &RealtimeSettings) -> usize {
    routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Realtime(rt) => Some(rt.settings.max_message),
            _ => None,
        })
        .fold(realtime.max_message, usize::max)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header: usize,
    pub max_body: usize,
    pub header_read_timeout: Duration,
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
