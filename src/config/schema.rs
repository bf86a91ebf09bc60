//! The config file's schema: serde types for what the YAML holds, unknown
//! keys rejected. [`Validator`](super::Validator) turns them into [`Config`](super::Config).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{ByteSize, DurationValue, auth, backplane};
use crate::config::Transport;
use crate::hub::queue::LagPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) listen: ListenConfig,
    #[serde(default)]
    pub(super) tls: Option<TlsConfig>,
    #[serde(default)]
    pub(super) internal: Option<InternalConfig>,
    #[serde(default)]
    pub(super) upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RouteConfig>>,
    #[serde(default)]
    pub(super) realtime: RealtimeBlock,
    #[serde(default)]
    pub(super) limits: LimitsConfig,
    #[serde(default)]
    pub(super) backplane: backplane::BackplaneConfig,
    #[serde(default)]
    pub(super) shutdown_grace: Option<DurationValue>,
    #[serde(default)]
    pub(super) drain_window: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub(super) presence: Option<super::presence::PresenceTopConfig>,
    #[serde(default)]
    pub(super) hooks: Option<Spanned<super::presence::HooksConfig>>,
    #[serde(default)]
    pub(super) tracing: Option<Spanned<super::traces::TracingConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenConfig {
    #[serde(default)]
    pub(super) http: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) https: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsConfig {
    pub(super) certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateConfig {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InternalConfig {
    pub(super) listen: Spanned<String>,
    #[serde(default)]
    pub(super) tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamConfig {
    pub(super) targets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) connect_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) timeout: Option<DurationValue>,
    /// How long a target that failed to connect is skipped.
    #[serde(default)]
    pub(super) fail_timeout: Option<DurationValue>,
    /// Signs a `Grip-Sig` JWT on requests from GRIP routes (SPEC §5).
    #[serde(default)]
    pub(super) grip_sig_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteConfig {
    pub(super) name: Spanned<String>,
    #[serde(rename = "match")]
    pub(super) matcher: MatchConfig,
    #[serde(default)]
    pub(super) upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) realtime: Option<Spanned<RealtimeBlock>>,
    #[serde(default, rename = "static")]
    pub(super) static_files: Option<StaticConfig>,
    #[serde(default)]
    pub(super) strip_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) add_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) auth: Option<Spanned<auth::AuthConfig>>,
    /// Upstream responses may hold the request (GRIP, SPEC §5).
    #[serde(default)]
    pub(super) grip: Option<Spanned<bool>>,
    /// WebSockets are spoken to the upstream as WebSocket-over-HTTP.
    #[serde(default)]
    pub(super) ws_events: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchConfig {
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) methods: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ClientPublishConfig {
    All(bool),
    Patterns(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
/// A `realtime:` block: the top-level defaults or a route's own block. The
/// route-only keys (channels, transports, ...) are rejected at the top level.
pub(super) struct RealtimeBlock {
    #[serde(default)]
    pub(super) channels: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) query_channels: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) transports: Option<Spanned<Vec<Transport>>>,
    #[serde(default)]
    pub(super) client_publish: Option<Spanned<ClientPublishConfig>>,
    #[serde(default)]
    pub(super) heartbeat: Option<DurationValue>,
    #[serde(default)]
    pub(super) pong_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) longpoll_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) sse_retry: Option<DurationValue>,
    #[serde(default)]
    pub(super) queue: Option<usize>,
    #[serde(default)]
    pub(super) on_lag: Option<LagPolicy>,
    #[serde(default)]
    pub(super) history: Option<HistoryConfig>,
    #[serde(default)]
    pub(super) max_message: Option<ByteSize>,
    #[serde(default)]
    pub(super) allowed_origins: Option<Vec<String>>,
    /// Per route (docs/presence.md).
    #[serde(default)]
    pub(super) presence: Option<Spanned<super::presence::PresenceConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryConfig {
    #[serde(default)]
    pub(super) messages: Option<usize>,
    #[serde(default)]
    pub(super) max_age: Option<DurationValue>,
    /// Top level only: what all channels' histories hold together (§9).
    #[serde(default)]
    pub(super) max_total: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StaticConfig {
    pub(super) dir: Spanned<String>,
    #[serde(default)]
    pub(super) index: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsConfig {
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_header: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub(super) max_body: Option<ByteSize>,
    #[serde(default)]
    pub(super) header_read_timeout: Option<DurationValue>,
    // SPEC §9 (checked in `config/auth.rs`).
    #[serde(default)]
    pub(super) per_ip: Option<auth::PerIpConfig>,
    #[serde(default)]
    pub(super) client_publish_rate: Option<Spanned<auth::RateConfig>>,
    #[serde(default)]
    pub(super) publish_rate: Option<Spanned<auth::RateConfig>>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) max_subscriptions: Option<Spanned<usize>>,
}
