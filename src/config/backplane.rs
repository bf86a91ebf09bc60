//! The `backplane:` section: `{type: memory|redis|nats, url, prefix}`.
//! The URL is checked here (scheme, syntax) but never connected to; a NATS
//! URL's server list is parsed here once and kept in the settings, so a
//! node starts with exactly what `pushgate check` accepted.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Position, Validator};
use crate::backplane::{nats, redis};

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
    Redis(redis::Settings),
    Nats(nats::Settings),
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
                    Some(url) => match redis::check_url(&url.value) {
                        Ok(()) => BackplaneKind::Redis(redis::Settings {
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
                    Some(url) => match nats::parse_url(&url.value) {
                        Ok(servers) => BackplaneKind::Nats(nats::Settings { servers, prefix }),
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
