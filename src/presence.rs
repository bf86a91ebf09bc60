//! Presence (docs/presence.md): who is subscribed to a channel, by token
//! subject (`sub`), with a count of anonymous connections.
//!
//! * [`Registry`]: this node's members, synchronous and without IO:
//!   channel → sub → connections and since. Sessions on routes with
//!   `presence:` add and remove themselves through their [`Tracker`].
//! * A user's first connection on a channel and its last one mark the
//!   (channel, sub) dirty (overflow policy: coalesce, like the hub's
//!   demand); [`run`] settles dirty members: with a distributed backplane
//!   it records them in the shared [`PresenceStore`] (Redis hash, NATS KV),
//!   which says whether the user is new (or gone) across every node; then,
//!   on `events: true` routes, it publishes `pushgate.join` /
//!   `pushgate.leave` through the backplane, the one message path.
//! * The [`Tracker`] also feeds the lifecycle webhooks (`hooks`).

pub mod nats;
pub mod redis;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::backplane::Backplane;
use crate::config::HookEvent;
use crate::config::Transport;
use crate::hooks::{self, EndReason, Hooks};
use crate::hub::message::{ChannelName, EventName, Payload, Publication};
use crate::shutdown::Shutdown;

pub use self::store::{Joining, PresenceStore};

/// The SSE event names (and WebSocket `type`s) of presence events.
pub const JOIN_EVENT: &str = "pushgate.join";
pub const LEAVE_EVENT: &str = "pushgate.leave";

/// Milliseconds since the Unix epoch.
pub use crate::hub::message::unix_ms as now_ms;

/// One user on one channel, on this node.
#[derive(Debug, Clone, Copy)]
struct Member {
    connections: u32,
    /// When the current run of connections began (Unix ms).
    since: u64,
    /// Recorded in the store (and, with events, announced).
    announced: bool,
}

#[derive(Debug, Default)]
struct ChannelState {
    members: HashMap<Arc<str>, Member>,
    anonymous: u32,
    /// Some route with `events: true` subscribed here.
    events: bool,
}

/// A channel's presence: members with their connection counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (sub, connections, since in Unix ms), sorted by sub.
    pub clients: Vec<(String, u64, u64)>,
    pub anonymous: u64,
}

impl Snapshot {
    /// The `GET /presence/{channel}` body (`count`: numbers only).
    pub fn to_json(&self, channel: &ChannelName, count: bool) -> serde_json::Value {
        if count {
            let connections: u64 = self.clients.iter().map(|c| c.1).sum();
            return serde_json::json!({
                "channel": channel.as_str(),
                "clients": self.clients.len(),
                "connections": connections,
                "anonymous": self.anonymous,
            });
        }
        let clients: Vec<_> = self
            .clients
            .iter()
            .map(|(sub, connections, since)| {
                serde_json::json!({"sub": sub, "connections": connections, "since": since})
            })
            .collect();
        serde_json::json!({
            "channel": channel.as_str(),
            "clients": clients,
            "anonymous": self.anonymous,
        })
    }
}

/// This node's presence.
pub struct Registry {
    /// This node's id (store entries, webhook connection ids).
    node: Arc<str>,
    channels: DashMap<ChannelName, ChannelState>,
    /// Members whose first or last connection changed (bounded by the
    /// number of members: coalesced).
    dirty: Mutex<HashSet<(ChannelName, Arc<str>)>>,
    notify: tokio::sync::Notify,
    next_connection: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new();
        let node = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = seed.build_hasher();
            h.write_u64(now_ms());
            h.write_u32(std::process::id());
            format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
        };
        Self {
            node: Arc::from(node),
            channels: DashMap::new(),
            dirty: Mutex::default(),
            notify: tokio::sync::Notify::new(),
            next_connection: AtomicU64::new(1),
        }
    }

    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// A fresh connection number (webhook `connection_id`s).
    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add(&self, channel: &ChannelName, sub: Option<&Arc<str>>, events: bool) {
        let mut state = self.channels.entry(channel.clone()).or_default();
        state.events |= events;
        let Some(sub) = sub else {
            state.anonymous += 1;
            return;
        };
        let member = state.members.entry(sub.clone()).or_insert(Member {
            connections: 0,
            since: 0,
            announced: false,
        });
        member.connections += 1;
        if member.connections == 1 {
            member.since = now_ms();
            drop(state);
            self.mark(channel, sub);
        }
    }

    pub fn remove(&self, channel: &ChannelName, sub: Option<&Arc<str>>) {
        let Some(mut state) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(sub) = sub else {
            state.anonymous = state.anonymous.saturating_sub(1);
            let empty = state.anonymous == 0 && state.members.is_empty();
            drop(state);
            if empty {
                self.channels
                    .remove_if(channel, |_, s| s.anonymous == 0 && s.members.is_empty());
            }
            return;
        };
        let Some(member) = state.members.get_mut(sub) else {
            return;
        };
        member.connections = member.connections.saturating_sub(1);
        if member.connections == 0 {
            drop(state);
            self.mark(channel, sub);
        }
    }

    fn mark(&self, channel: &ChannelName, sub: &Arc<str>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if dirty.insert((channel.clone(), sub.clone())) {
            drop(dirty);
            self.notify.notify_one();
        }
    }

    fn take_dirty(&self) -> Vec<(ChannelName, Arc<str>)> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.drain().collect()
    }

    /// What [`run`] must do for a dirty member.
    fn settle(&self, channel: &ChannelName, sub: &Arc<str>) -> Settle {
        let Some(mut state) = self.channels.get_mut(channel) else {
            return Settle::Nothing;
        };
        let events = state.events;
        let Some(member) = state.members.get(sub).copied() else {
            return Settle::Nothing;
        };
        match (member.connections > 0, member.announced) {
            (true, false) => Settle::Join {
                connections: member.connections,
                since: member.since,
                events,
            },
            (false, true) => Settle::Leave { events },
            (false, false) => {
                state.members.remove(sub);
                let empty = state.members.is_empty() && state.anonymous == 0;
                drop(state);
                if empty {
                    self.channels
                        .remove_if(channel, |_, s| s.anonymous == 0 && s.members.is_empty());
                }
                Settle::Nothing
            }
            (true, true) => Settle::Nothing,
        }
    }

    /// The join of `sub` was recorded.
    fn joined(&self, channel: &ChannelName, sub: &Arc<str>) {
        if let Some(mut state) = self.channels.get_mut(channel)
            && let Some(member) = state.members.get_mut(sub)
        {
            member.announced = true;
            if member.connections == 0 {
                // Gone again meanwhile: settle the leave too.
                drop(state);
                self.mark(channel, sub);
            }
        }
    }

    /// The leave of `sub` was recorded.
    fn left(&self, channel: &ChannelName, sub: &Arc<str>) {
        if let Some(mut state) = self.channels.get_mut(channel)
            && let Some(member) = state.members.get_mut(sub)
        {
            member.announced = false;
            // Back meanwhile: settle the join again, or forget the member.
            drop(state);
            self.mark(channel, sub);
        }
    }

    /// This node's view of `channel`.
    pub fn snapshot(&self, channel: &ChannelName) -> Snapshot {
        let Some(state) = self.channels.get(channel) else {
            return Snapshot::default();
        };
        let mut clients: Vec<_> = state
            .members
            .iter()
            .filter(|(_, m)| m.connections > 0)
            .map(|(sub, m)| (sub.to_string(), u64::from(m.connections), m.since))
            .collect();
        clients.sort();
        Snapshot {
            clients,
            anonymous: u64::from(state.anonymous),
        }
    }

    /// Every channel's recorded members and anonymous count, for a
    /// store's refresh.
    pub fn entries(&self) -> Vec<store::ChannelEntries> {
        self.channels
            .iter()
            .map(|e| store::ChannelEntries {
                channel: e.key().clone(),
                members: e
                    .members
                    .iter()
                    .filter(|(_, m)| m.announced && m.connections > 0)
                    .map(|(sub, m)| (sub.clone(), m.connections, m.since))
                    .collect(),
                anonymous: e.anonymous,
                events: e.events,
            })
            .collect()
    }

    /// Whether a local route announces joins and leaves on `channel`.
    fn events(&self, channel: &ChannelName) -> bool {
        self.channels.get(channel).is_some_and(|s| s.events)
    }
}

enum Settle {
    Nothing,
    Join {
        connections: u32,
        since: u64,
        events: bool,
    },
    Leave {
        events: bool,
    },
}

/// Which presence event: a user's first connection on a channel, or its
/// last one gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

impl Change {
    /// The payload's `type` (and the WebSocket frame's).
    pub const fn as_str(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }

    /// The message's event name (SSE `event:`).
    pub const fn event(self) -> &'static str {
        match self {
            Change::Join => JOIN_EVENT,
            Change::Leave => LEAVE_EVENT,
        }
    }
}

/// A presence event as published: `{"type","channel","sub"}`.
pub fn publication(change: Change, channel: &ChannelName, sub: &str) -> Publication {
    Publication {
        channel: channel.clone(),
        event: EventName::parse(change.event()).ok(),
        payload: Payload::from_json(&serde_json::json!({
            "type": change.as_str(),
            "channel": channel.as_str(),
            "sub": sub,
        })),
        idempotency_key: None,
        accepted_at: Instant::now(),
    }
}

/// Whether `event` is a presence event (reserved: publishers may not use
/// `pushgate.*` names).
pub fn is_presence_event(event: Option<&EventName>) -> bool {
    event.is_some_and(|e| matches!(e.as_str(), JOIN_EVENT | LEAVE_EVENT))
}

/// The `sub` a presence event's payload names.
pub fn event_sub(payload: &Payload) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        sub: String,
    }
    serde_json::from_slice::<Event>(payload.json())
        .ok()
        .map(|e| e.sub)
}

/// Settles dirty members (store, then events through the backplane) and,
/// with a store, refreshes this node's entries every `refresh`. Ends with
/// `shutdown` (the internal listener's, so the leaves of a drain go out).
pub async fn run(
    registry: Arc<Registry>,
    store: Option<Arc<dyn PresenceStore>>,
    backplane: Arc<dyn Backplane>,
    refresh: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Members a failed store call left unsettled: tried again on the tick.
    let mut retry: Vec<(ChannelName, Arc<str>)> = Vec::new();
    loop {
        let mut refresh_now = false;
        tokio::select! {
            _ = shutdown.token.cancelled() => return,
            _ = registry.notify.notified() => {}
            _ = tick.tick() => refresh_now = true,
        }
        let mut dirty = registry.take_dirty();
        if refresh_now {
            dirty.append(&mut retry);
        }
        let mut publications = Vec::new();
        for (channel, sub) in dirty {
            match registry.settle(&channel, &sub) {
                Settle::Nothing => {}
                Settle::Join {
                    connections,
                    since,
                    events,
                } => {
                    let first = match &store {
                        None => Ok(true),
                        Some(s) => {
                            let member = Joining {
                                sub: &sub,
                                connections,
                                since,
                            };
                            s.join(&channel, member).await
                        }
                    };
                    match first {
                        Ok(first) => {
                            registry.joined(&channel, &sub);
                            if first && events {
                                publications.push(publication(Change::Join, &channel, &sub));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "presence: join not recorded");
                            retry.push((channel, sub));
                        }
                    }
                }
                Settle::Leave { events } => {
                    let last = match &store {
                        None => Ok(true),
                        Some(s) => s.leave(&channel, &sub).await,
                    };
                    match last {
                        Ok(last) => {
                            registry.left(&channel, &sub);
                            if last && events {
                                publications.push(publication(Change::Leave, &channel, &sub));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "presence: leave not recorded");
                            retry.push((channel, sub));
                        }
                    }
                }
            }
        }
        if refresh_now && let Some(store) = &store {
            match store.refresh(registry.entries()).await {
                Ok(gone) => {
                    for (channel, sub) in gone {
                        if registry.events(&channel) {
                            publications.push(publication(Change::Leave, &channel, &sub));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence: refresh failed"),
            }
        }
        if !publications.is_empty()
            && let Err(e) = backplane.publish(publications).await
        {
            tracing::warn!(error = %e, "presence: join/leave events not published");
        }
    }
}

/// One session's presence and lifecycle reporting: counts it in the
/// registry on `presence:` routes and reports it to the webhooks.
pub struct Tracker {
    registry: Arc<Registry>,
    /// Counted in the registry (`presence:` on the route).
    presence: bool,
    events: bool,
    hooks: Option<Arc<Hooks>>,
    sub: Option<Arc<str>>,
    connection: u64,
    transport: Transport,
}

impl Tracker {
    pub fn new(
        registry: Arc<Registry>,
        presence: crate::config::PresenceSettings,
        hooks: Option<Arc<Hooks>>,
        sub: Option<&str>,
        transport: Transport,
    ) -> Self {
        let connection = registry.connection_id();
        Self {
            registry,
            presence: presence.enabled,
            events: presence.events,
            hooks,
            sub: sub.map(Arc::from),
            connection,
            transport,
        }
    }

    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    fn hook(&self, kind: HookEvent, channel: Option<&ChannelName>, reason: Option<EndReason>) {
        if let Some(hooks) = &self.hooks {
            hooks.emit(hooks::Event {
                kind,
                channel: channel.cloned(),
                sub: self.sub.clone(),
                node: self.registry.node.clone(),
                connection: self.connection,
                transport: self.transport.as_str(),
                at: now_ms(),
                reason,
            });
        }
    }

    pub fn connect(&self, channels: &[ChannelName]) {
        self.hook(HookEvent::Connect, None, None);
        for channel in channels {
            self.subscribe(channel);
        }
    }

    pub fn subscribe(&self, channel: &ChannelName) {
        if self.presence {
            self.registry.add(channel, self.sub.as_ref(), self.events);
        }
        self.hook(HookEvent::Subscribe, Some(channel), None);
    }

    pub fn unsubscribe(&self, channel: &ChannelName, reason: EndReason) {
        if self.presence {
            self.registry.remove(channel, self.sub.as_ref());
        }
        self.hook(HookEvent::Unsubscribe, Some(channel), Some(reason));
    }

    /// The session ended for `reason` (webhook `reason`).
    pub fn disconnect(&self, channels: &[ChannelName], reason: EndReason) {
        for channel in channels {
            self.unsubscribe(channel, reason);
        }
        self.hook(HookEvent::Disconnect, None, Some(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn settle_all(r: &Registry) -> Vec<String> {
        let mut out = Vec::new();
        for (c, s) in r.take_dirty() {
            match r.settle(&c, &s) {
                Settle::Join { .. } => {
                    r.joined(&c, &s);
                    out.push(format!("join {c} {s}"));
                }
                Settle::Leave { .. } => {
                    r.left(&c, &s);
                    out.push(format!("leave {c} {s}"));
                }
                Settle::Nothing => {}
            }
        }
        out.sort();
        out
    }

    #[test]
    fn one_member_per_user_however_many_tabs() {
        let r = Registry::new();
        let (room, alice) = (ch("room"), Arc::<str>::from("alice"));
        r.add(&room, Some(&alice), true);
        r.add(&room, Some(&alice), true);
        r.add(&room, None, true);
        assert_eq!(settle_all(&r), ["join room alice"]);
        let snap = r.snapshot(&room);
        assert_eq!(snap.clients.len(), 1);
        assert_eq!(snap.clients[0].1, 2);
        assert_eq!(snap.anonymous, 1);
        r.remove(&room, Some(&alice));
        assert!(settle_all(&r).is_empty(), "one tab left: no leave");
        r.remove(&room, Some(&alice));
        assert_eq!(settle_all(&r), ["leave room alice"]);
        assert!(settle_all(&r).is_empty(), "the member is forgotten");
        assert!(r.snapshot(&room).clients.is_empty());
        r.remove(&room, None);
        assert_eq!(r.channels.len(), 0, "an empty channel is dropped");
    }

    #[test]
    fn a_quick_reconnect_coalesces_to_nothing() {
        let r = Registry::new();
        let (room, bob) = (ch("room"), Arc::<str>::from("bob"));
        r.add(&room, Some(&bob), true);
        assert_eq!(settle_all(&r), ["join room bob"]);
        r.remove(&room, Some(&bob));
        r.add(&room, Some(&bob), true);
        assert!(settle_all(&r).is_empty(), "left and back before settling");
        assert_eq!(r.snapshot(&room).clients.len(), 1);
    }

    #[test]
    fn count_json_has_only_numbers() {
        let snap = Snapshot {
            clients: vec![("a".into(), 2, 5), ("b".into(), 1, 6)],
            anonymous: 3,
        };
        assert_eq!(
            snap.to_json(&ch("c"), true),
            serde_json::json!({"channel":"c","clients":2,"connections":3,"anonymous":3})
        );
        assert_eq!(
            snap.to_json(&ch("c"), false)["clients"][0],
            serde_json::json!({"sub":"a","connections":2,"since":5})
        );
    }

    #[test]
    fn presence_events_carry_their_sub() {
        let p = publication(Change::Join, &ch("room"), "alice");
        assert!(is_presence_event(p.event.as_ref()));
        assert_eq!(event_sub(&p.payload).as_deref(), Some("alice"));
        assert_eq!(
            p.payload.json().as_ref(),
            br#"{"channel":"room","sub":"alice","type":"join"}"#
        );
    }
}
