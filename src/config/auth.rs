//! The `auth:` block of a realtime route (SPEC §8) and the rate limits of
//! `limits:` (SPEC §9): schema, checks and typed settings.
//!
//! Unlike the rest of the config, this reads files: the JWT public keys
//! are loaded here, once per config load, so `pushgate check` reports a
//! missing or unreadable PEM at its line, and a reload swaps the keys
//! together with the route table.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{DurationValue, UpstreamSettings, Validator};

/// Default cookie holding a subscriber token.
pub const DEFAULT_COOKIE: &str = "pushgate_token";

// === schema ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthConfig {
    #[serde(default)]
    jwt: Option<Spanned<JwtConfig>>,
    #[serde(default)]
    callback: Option<Spanned<CallbackConfig>>,
    #[serde(default)]
    on_expiry: Option<OnExpiry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtConfig {
    #[serde(default)]
    hs256_secret: Option<Spanned<String>>,
    #[serde(default)]
    public_keys: Vec<Spanned<String>>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    leeway: Option<DurationValue>,
    #[serde(default)]
    cookie: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackConfig {
    upstream: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    forward_headers: Vec<Spanned<String>>,
    #[serde(default)]
    cache: Option<DurationValue>,
    /// The longest wait for the callback's answer (default 5s).
    #[serde(default)]
    timeout: Option<DurationValue>,
}

/// What happens when a connection's token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    #[default]
    Close,
    /// A WebSocket client may send `{"type":"refresh","token":T}` in time.
    Refresh,
}

/// `limits.per_ip`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PerIpConfig {
    #[serde(default)]
    connections: Option<usize>,
    #[serde(default)]
    connect_rate: Option<Spanned<RateConfig>>,
}

/// A rate: `50/s`, `600/m`, `1000/h`, or a bare number per second.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RateConfig {
    PerSecond(u64),
    Text(String),
}

// === typed settings ===

/// A realtime route's resolved `auth:` block.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwt: Option<JwtSettings>,
    pub callback: Option<CallbackSettings>,
    pub on_expiry: OnExpiry,
}

impl AuthSettings {
    /// The cookie a token may come in.
    pub fn cookie(&self) -> &str {
        self.jwt.as_ref().map_or(DEFAULT_COOKIE, |j| &j.cookie)
    }
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Each key fixes its algorithm: a token is only ever checked with a
    /// key of the algorithm its header names, and `none` names none.
    pub keys: Arc<[VerifyKey]>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub cookie: String,
}

/// A loaded verification key, with its validation built once.
#[derive(Clone)]
pub struct VerifyKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
    /// Accepts `algorithm` alone; `exp` required, `nbf` checked, `iss` and
    /// `aud` checked (and required) when configured.
    pub validation: Validation,
}

impl VerifyKey {
    pub fn new(
        algorithm: Algorithm,
        key: DecodingKey,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: Duration,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            algorithm,
            key,
            validation,
        }
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (an HS256 secret is one).
        write!(f, "VerifyKey({:?})", self.algorithm)
    }
}

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub upstream: String,
    pub targets: Vec<Uri>,
    pub connect_timeout: Duration,
    pub path: String,
    /// Lowercase header names, forwarded when present.
    pub forward_headers: Vec<HeaderName>,
    pub cache: Duration,
    pub timeout: Duration,
}

/// A number of events per interval; `events == 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub events: u64,
    pub per: Duration,
}

impl RateLimit {
    pub const UNLIMITED: RateLimit = RateLimit {
        events: 0,
        per: Duration::from_secs(1),
    };

    pub fn is_limited(&self) -> bool {
        self.events > 0
    }
}

/// `limits:` keys of SPEC §9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Concurrent realtime connections per client address; 0 = unlimited.
    pub per_ip_connections: usize,
    pub per_ip_connect_rate: RateLimit,
    pub client_publish_rate: RateLimit,
    pub publish_rate: RateLimit,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_subscriptions: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_ip_connections: 0,
            per_ip_connect_rate: RateLimit::UNLIMITED,
            client_publish_rate: RateLimit::UNLIMITED,
            publish_rate: RateLimit::UNLIMITED,
            trusted_proxies: Vec::new(),
            max_subscriptions: 100,
        }
    }
}

/// Parses `50/s`, `600/m`, `10/h` or a bare number (per second).
pub fn parse_rate(text: &str) -> Result<RateLimit, String> {
    let text = text.trim();
    let (n, unit) = text.split_once('/').unwrap_or((text, "s"));
    let events: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {text:?}: expected N/s, N/m or N/h"))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => {
            return Err(format!(
                "invalid rate unit {other:?} in {text:?}: expected s, m or h"
            ));
        }
    };
    Ok(RateLimit { events, per })
}

// === checks ===

impl Validator<'_> {
    fn rate(&mut self, r: &Spanned<RateConfig>) -> RateLimit {
        match &r.value {
            RateConfig::PerSecond(n) => RateLimit {
                events: *n,
                per: Duration::from_secs(1),
            },
            RateConfig::Text(t) => parse_rate(t).unwrap_or_else(|e| {
                self.error(r, e);
                RateLimit::UNLIMITED
            }),
        }
    }

    pub(super) fn rate_limits(&mut self, c: &super::LimitsConfig) -> RateLimitSettings {
        let d = RateLimitSettings::default();
        let per_ip = c.per_ip.as_ref();
        let mut trusted_proxies = Vec::new();
        for p in &c.trusted_proxies {
            let parsed = p
                .value
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => self.error(
                    p,
                    format!(
                        "invalid trusted proxy {:?}: expected a CIDR such as \"10.0.0.0/8\" or an address",
                        p.value
                    ),
                ),
            }
        }
        let max_subscriptions = match &c.max_subscriptions {
            Some(m) if m.value == 0 => {
                self.error(m, "limits.max_subscriptions must be at least 1");
                d.max_subscriptions
            }
            Some(m) => m.value,
            None => d.max_subscriptions,
        };
        RateLimitSettings {
            per_ip_connections: per_ip.and_then(|p| p.connections).unwrap_or(0),
            per_ip_connect_rate: per_ip
                .and_then(|p| p.connect_rate.as_ref())
                .map_or(RateLimit::UNLIMITED, |r| self.rate(r)),
            client_publish_rate: c
                .client_publish_rate
                .as_ref()
                .map_or(RateLimit::UNLIMITED, |r| self.rate(r)),
            publish_rate: c
                .publish_rate
                .as_ref()
                .map_or(RateLimit::UNLIMITED, |r| self.rate(r)),
            trusted_proxies,
            max_subscriptions,
        }
    }

    pub(super) fn auth(
        &mut self,
        route: &str,
        c: &Spanned<AuthConfig>,
        upstreams: &BTreeMap<String, UpstreamSettings>,
    ) -> Option<AuthSettings> {
        let jwt = c.value.jwt.as_ref().map(|j| self.jwt(j));
        let callback = c
            .value
            .callback
            .as_ref()
            .and_then(|cb| self.callback(route, cb, upstreams));
        if c.value.jwt.is_none() && c.value.callback.is_none() {
            self.error(
                c,
                format!("route {route:?}: auth needs jwt, callback or both"),
            );
            return None;
        }
        Some(AuthSettings {
            jwt: jwt.flatten(),
            callback,
            on_expiry: c.value.on_expiry.unwrap_or_default(),
        })
    }

    fn jwt(&mut self, j: &Spanned<JwtConfig>) -> Option<JwtSettings> {
        let mut keys = Vec::new();
        // An empty secret (an unset `${VAR:-}`) means no secret.
        if let Some(s) = j
            .value
            .hs256_secret
            .as_ref()
            .filter(|s| !s.value.is_empty())
        {
            if s.value.len() < 16 {
                self.error(
                    s,
                    "auth.jwt.hs256_secret is shorter than 16 bytes: use a long random secret",
                );
            }
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(s.value.as_bytes()),
            ));
        }
        for p in &j.value.public_keys {
            let path = self.resolve(&p.value);
            let pem = match std::fs::read(&path) {
                Ok(pem) => pem,
                Err(e) => {
                    self.error(p, format!("cannot read public key {:?}: {e}", p.value));
                    continue;
                }
            };
            match load_public_key(&pem) {
                Ok(key) => keys.push(key),
                Err(e) => self.error(p, format!("public key {:?}: {e}", p.value)),
            }
        }
        if keys.is_empty() && j.value.public_keys.is_empty() {
            self.error(j, "auth.jwt has no key: set hs256_secret or public_keys");
            return None;
        }
        let cookie = match &j.value.cookie {
            Some(c) if c.value.is_empty() || !c.value.bytes().all(is_cookie_name_byte) => {
                self.error(c, format!("invalid cookie name {:?}", c.value));
                DEFAULT_COOKIE.to_owned()
            }
            Some(c) => c.value.clone(),
            None => DEFAULT_COOKIE.to_owned(),
        };
        let issuer = j.value.issuer.clone().filter(|s| !s.is_empty());
        let audience = j.value.audience.clone().filter(|s| !s.is_empty());
        let leeway = j.value.leeway.map_or(Duration::ZERO, |d| d.0);
        let keys = keys
            .into_iter()
            .map(|(alg, key)| {
                VerifyKey::new(alg, key, issuer.as_deref(), audience.as_deref(), leeway)
            })
            .collect();
        Some(JwtSettings {
            keys,
            issuer,
            audience,
            leeway,
            cookie,
        })
    }

    fn callback(
        &mut self,
        route: &str,
        cb: &Spanned<CallbackConfig>,
        upstreams: &BTreeMap<String, UpstreamSettings>,
    ) -> Option<CallbackSettings> {
        let c = &cb.value;
        let Some(upstream) = upstreams.get(&c.upstream.value) else {
            self.error(
                &c.upstream,
                format!(
                    "route {route:?}: auth.callback names unknown upstream {:?}",
                    c.upstream.value
                ),
            );
            return None;
        };
        if !c.path.value.starts_with('/') || c.path.value.parse::<Uri>().is_err() {
            self.error(
                &c.path,
                format!(
                    "auth.callback.path {:?} must be a path starting with '/'",
                    c.path.value
                ),
            );
        }
        let mut forward_headers = Vec::new();
        for h in &c.forward_headers {
            match HeaderName::from_bytes(h.value.to_ascii_lowercase().as_bytes()) {
                Ok(name) => forward_headers.push(name),
                Err(_) => self.error(h, format!("invalid header name {:?}", h.value)),
            }
        }
        Some(CallbackSettings {
            upstream: c.upstream.value.clone(),
            targets: upstream.targets.clone(),
            connect_timeout: upstream.connect_timeout,
            path: c.path.value.clone(),
            forward_headers,
            cache: c.cache.map_or(Duration::ZERO, |d| d.0),
            timeout: c.timeout.map_or(Duration::from_secs(5), |d| d.0),
        })
    }
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RS256 or ES256 public key from PEM; the algorithm follows the key.
fn load_public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        return Err("is a private key; give the public key".into());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, key));
    }
    Err("not an RSA or EC (P-256) public key in PEM".into())
}
