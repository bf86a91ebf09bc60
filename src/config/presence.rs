//! Presence and lifecycle webhooks (docs/presence.md):
//!
//! * a realtime route's `presence: true | {events: true}`;
//! * the top-level `presence: {refresh}` (multi-node TTL refresh);
//! * the top-level `hooks: {upstream, path, events, queue}`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{DurationValue, Position, UpstreamSettings, Validator};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum PresenceConfig {
    On(bool),
    Options(PresenceOptions),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceOptions {
    #[serde(default)]
    events: bool,
}

/// A route's presence: counted (`enabled`), and announced to the
/// channel's subscribers as join/leave events (`events`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceSettings {
    pub enabled: bool,
    pub events: bool,
}

impl PresenceConfig {
    pub(super) fn settings(&self) -> PresenceSettings {
        match self {
            PresenceConfig::On(on) => PresenceSettings {
                enabled: *on,
                events: false,
            },
            PresenceConfig::Options(o) => PresenceSettings {
                enabled: true,
                events: o.events,
            },
        }
    }
}

/// The top-level `presence:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceTopConfig {
    /// How often a node rewrites its entries in a distributed backplane.
    #[serde(default)]
    refresh: Option<Spanned<DurationValue>>,
}

/// Node-wide presence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceGlobal {
    /// A node's entries live for 2 × this in Redis or NATS KV.
    pub refresh: Duration,
}

impl Default for PresenceGlobal {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HooksConfig {
    upstream: Spanned<String>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    events: Option<Spanned<Vec<HookEvent>>>,
    /// Events held while the upstream is slow or down; more are dropped.
    #[serde(default)]
    queue: Option<Spanned<usize>>,
}

/// A lifecycle event a webhook can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    Connect,
    Subscribe,
    Unsubscribe,
    Disconnect,
}

impl HookEvent {
    pub const ALL: [HookEvent; 4] = [
        HookEvent::Connect,
        HookEvent::Subscribe,
        HookEvent::Unsubscribe,
        HookEvent::Disconnect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Connect => "connect",
            HookEvent::Subscribe => "subscribe",
            HookEvent::Unsubscribe => "unsubscribe",
            HookEvent::Disconnect => "disconnect",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Resolved `hooks:`: where to POST and which events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksSettings {
    pub upstream: String,
    pub path: String,
    events: u8,
    pub queue: usize,
}

impl HooksSettings {
    pub fn wants(&self, event: HookEvent) -> bool {
        self.events & event.bit() != 0
    }
}

impl Validator<'_> {
    pub(super) fn presence_top(&mut self, file: &Option<PresenceTopConfig>) -> PresenceGlobal {
        let Some(refresh) = file.as_ref().and_then(|p| p.refresh.as_ref()) else {
            return PresenceGlobal::default();
        };
        if refresh.value.0 < Duration::from_millis(100) {
            self.error(refresh, "presence.refresh must be at least 100ms");
            return PresenceGlobal::default();
        }
        PresenceGlobal {
            refresh: refresh.value.0,
        }
    }

    pub(super) fn hooks(
        &mut self,
        file: &Option<Spanned<HooksConfig>>,
        upstreams: &BTreeMap<String, UpstreamSettings>,
    ) -> Option<HooksSettings> {
        let hooks = &file.as_ref()?.value;
        if !upstreams.contains_key(&hooks.upstream.value) {
            self.error(
                &hooks.upstream,
                format!("hooks names unknown upstream {:?}", hooks.upstream.value),
            );
        }
        let path = match &hooks.path {
            None => "/realtime/events".to_owned(),
            Some(p) if p.value.starts_with('/') && p.value.parse::<http::Uri>().is_ok() => {
                p.value.clone()
            }
            Some(p) => {
                self.error(
                    p,
                    format!("hooks.path {:?} must be a path starting with '/'", p.value),
                );
                "/".to_owned()
            }
        };
        let events = match &hooks.events {
            None => HookEvent::ALL.iter().fold(0, |m, e| m | e.bit()),
            Some(list) if list.value.is_empty() => {
                self.error(
                    list,
                    "hooks.events is empty: name at least one event or remove hooks",
                );
                0
            }
            Some(list) => list.value.iter().fold(0, |m, e| m | e.bit()),
        };
        let queue = match &hooks.queue {
            None => 10_000,
            Some(q) if q.value == 0 => {
                self.error(q, "hooks.queue must be at least 1");
                1
            }
            Some(q) => q.value,
        };
        Some(HooksSettings {
            upstream: hooks.upstream.value.clone(),
            path,
            events,
            queue,
        })
    }

    /// `presence:` of a route's realtime block.
    pub(super) fn route_presence(
        &mut self,
        p: &Option<Spanned<PresenceConfig>>,
    ) -> PresenceSettings {
        p.as_ref()
            .map_or_else(PresenceSettings::default, |p| p.value.settings())
    }

    /// `realtime.presence` is per route.
    pub(super) fn top_level_presence(&mut self, p: &Option<Spanned<PresenceConfig>>) {
        if let Some(p) = p {
            self.error(
                Position::from(p),
                "realtime.presence belongs in a route's realtime block",
            );
        }
    }
}
