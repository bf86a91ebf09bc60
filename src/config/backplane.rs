//! The `backplane:` section: `{type: memory|redis|nats, url, prefix}`.
//! The URL is checked here (scheme, syntax) but never connected to; a NATS
//! URL's server list is parsed here once and kept in the settings, so a
//! node starts with exactly what `pushgate check` accepted.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Position, Validator};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackplaneConfig {
    #[serde(default, rename = "type")]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
}

/// Which backplane a node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneKind {
    Memory,
    Redis(RedisSettings),
    Nats(NatsSettings),
}

/// `backplane: {type: redis, url, prefix}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
}

/// Checks a Redis URL without connecting (`pushgate check`).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "rediss") => {}
        Some(other) => {
            return Err(format!(
                "unsupported scheme {other:?} in backplane url: expected redis:// or rediss://"
            ));
        }
        None => return Err("backplane url must start with redis:// or rediss://".to_owned()),
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("invalid backplane url: {e}"))
}

/// `backplane: {type: nats, url, prefix}`: the servers parsed once by
/// [`parse_nats_url`] when the config is read, so a node connects to exactly
/// what `pushgate check` accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    pub servers: Vec<async_nats::ServerAddr>,
    pub prefix: String,
}

/// Parses a NATS URL, or several separated by commas, without connecting
/// (`pushgate check` and start alike). Each item needs its scheme
/// (`nats://` or `tls://`) and must parse as an async-nats server address.
pub fn parse_nats_url(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let mut servers = Vec::new();
    for part in url.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(
                "empty server in backplane url: separate servers with one comma".to_owned(),
            );
        }
        match part.split_once("://").map(|(s, _)| s) {
            Some("nats" | "tls") => {}
            Some(other) => {
                return Err(format!(
                    "unsupported scheme {other:?} in backplane url: expected nats:// or tls://"
                ));
            }
            None => return Err("backplane url must start with nats:// or tls://".to_owned()),
        }
        let server = part
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("invalid backplane url {part:?}: {e}"))?;
        servers.push(server);
    }
    Ok(servers)
}

const DEFAULT_PREFIX: &str = "pushgate";

impl Validator<'_> {
    pub(super) fn backplane(&mut self, file: &BackplaneConfig) -> BackplaneKind {
        let kind = file.kind.as_ref().map_or("memory", |k| k.value.as_str());
        let at = |s: &Option<Spanned<String>>| s.as_ref().map(Position::from);
        match kind {
            "memory" => {
                for (field, value) in [("url", &file.url), ("prefix", &file.prefix)] {
                    if let Some(p) = at(value) {
                        self.error(p, format!("backplane.{field} needs type: redis or nats"));
                    }
                }
                BackplaneKind::Memory
            }
            "redis" => {
                let prefix = self.prefix(file);
                match &file.url {
                    None => {
                        let p = at(&file.kind).unwrap_or_default();
                        self.error(p, "backplane type redis needs a url (redis://HOST:PORT/DB)");
                        BackplaneKind::Memory
                    }
                    Some(url) => match check_redis_url(&url.value) {
                        Ok(()) => BackplaneKind::Redis(RedisSettings {
                            url: url.value.clone(),
                            prefix,
                        }),
                        Err(e) => {
                            self.error(url, e);
                            BackplaneKind::Memory
                        }
                    },
                }
            }
            "nats" => {
                let prefix = self.prefix(file);
                match &file.url {
                    None => {
                        let p = at(&file.kind).unwrap_or_default();
                        self.error(p, "backplane type nats needs a url (nats://HOST:PORT)");
                        BackplaneKind::Memory
                    }
                    Some(url) => match parse_nats_url(&url.value) {
                        Ok(servers) => BackplaneKind::Nats(NatsSettings { servers, prefix }),
                        Err(e) => {
                            self.error(url, e);
                            BackplaneKind::Memory
                        }
                    },
                }
            }
            other => {
                let p = at(&file.kind).unwrap_or_default();
                self.error(
                    p,
                    format!("unknown backplane type {other:?}: expected memory, redis or nats"),
                );
                BackplaneKind::Memory
            }
        }
    }

    fn prefix(&mut self, file: &BackplaneConfig) -> String {
        let Some(prefix) = &file.prefix else {
            return DEFAULT_PREFIX.to_owned();
        };
        let ok = !prefix.value.is_empty()
            && prefix.value.len() <= 64
            && prefix
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            self.error(
                prefix,
                "backplane.prefix must be 1-64 characters from A-Z a-z 0-9 _ - .",
            );
        }
        prefix.value.clone()
    }
}
