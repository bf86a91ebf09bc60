//! One subscriber's [`Session`]: its bounded hub queue, channels and
//! positions; opened by [`Realtime`], unsubscribed when dropped.

use std::sync::Arc;

use crate::config::RealtimeSettings;
pub use crate::hooks::EndReason;
use crate::hub::Hub;
use crate::hub::message::{ChannelName, Position};
use crate::hub::queue::{LagPolicy, Queue};
use crate::limits::ConnPermit;
use crate::metrics::{EndLabels, Metrics, TransportLabels};
use crate::realtime::negotiate::Transport;

use super::{Grants, Plan, Realtime, cursor};

/// One subscriber: its queue, channels and positions. Dropping it
/// unsubscribes from every channel.
pub struct Session {
    hub: Arc<Hub>,
    pub queue: Arc<Queue>,
    /// Subscribed channels; `positions[i]` is the last position delivered
    /// (or resumed from) on `channels[i]`.
    pub channels: Vec<ChannelName>,
    pub positions: Vec<Position>,
    /// `pushgate_sessions` (open) and `pushgate_sessions_ended_total`.
    metrics: Arc<Metrics>,
    transport: Transport,
    /// Why the session ends, once known ([`Session::end`]); a session
    /// dropped without one went away ([`EndReason::Gone`]).
    end: EndReason,
    /// The connection's share of the per-address cap, released with it.
    permit: Option<ConnPermit>,
    /// Presence and webhooks (`Realtime::track`); `None` when neither is on.
    pub tracker: Option<Box<crate::presence::Tracker>>,
}

impl Session {
    /// Keeps the connection's limit permit for as long as the session.
    pub fn hold(&mut self, permit: Option<ConnPermit>) {
        self.permit = permit;
    }

    /// Records why the session ends: the webhooks' `reason`, the metric's
    /// label (the transport writes the close itself).
    pub fn end(&mut self, reason: EndReason) {
        self.end = reason;
    }

    /// Records that `position` of `channel` was delivered.
    pub fn advance(&mut self, channel: &ChannelName, position: Position) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.positions[i] = position;
        }
    }

    /// The position last delivered (or resumed from) on `channel`.
    pub fn position(&self, channel: &ChannelName) -> Option<Position> {
        let i = self.channels.iter().position(|c| c == channel)?;
        self.positions.get(i).copied()
    }

    /// The id covering every channel at the current positions.
    pub fn cursor(&self) -> String {
        cursor::encode(&self.positions)
    }

    pub fn subscribe(&mut self, channel: ChannelName, since: Option<Position>) {
        let again = self.channels.contains(&channel);
        if let Some(i) = self.channels.iter().position(|c| *c == channel) {
            // Re-subscribing replays from `since`: drop the old registration.
            self.hub.unsubscribe(&self.queue, &channel);
            self.channels.remove(i);
            self.positions.remove(i);
        }
        let mut channel = channel;
        let position = self.hub.subscribe_sharing(&self.queue, &mut channel, since);
        if let Some(t) = &self.tracker
            && !again
        {
            t.subscribe(&channel);
        }
        self.channels.push(channel);
        self.positions.push(position);
    }

    pub fn unsubscribe(&mut self, channel: &ChannelName) -> bool {
        match self.channels.iter().position(|c| c == channel) {
            Some(i) => {
                self.hub.unsubscribe(&self.queue, channel);
                self.channels.remove(i);
                self.positions.remove(i);
                if let Some(t) = &self.tracker {
                    t.unsubscribe(channel, EndReason::Client);
                }
                true
            }
            None => false,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in &self.channels {
            self.hub.unsubscribe(&self.queue, channel);
        }
        if let Some(t) = &self.tracker {
            t.disconnect(&self.channels, self.end);
        }
        let transport = self.transport.as_str();
        self.metrics
            .sessions
            .get_or_create(&TransportLabels { transport })
            .dec();
        // A long poll ends at every answer; it is counted as a request.
        if self.transport != Transport::Longpoll {
            self.metrics
                .sessions_ended
                .get_or_create(&EndLabels {
                    transport,
                    reason: self.end.label(),
                })
                .inc();
        }
    }
}

impl Realtime {
    /// Opens `plan`'s session under its route's lag policy, holding its
    /// connection permit; hands back the grants and settings left.
    pub fn open_plan(&self, plan: Plan) -> (Session, Grants, RealtimeSettings) {
        let settings = plan.settings;
        let mut session = self.open(
            plan.transport,
            plan.channels,
            plan.since,
            &settings,
            settings.on_lag,
        );
        session.hold(plan.permit);
        self.track(
            &mut session,
            plan.transport,
            settings.presence,
            &plan.grants,
        );
        (session, plan.grants, settings)
    }

    /// What `GET /presence/{channel}` and the WebSocket `presence` frame
    /// answer: every node's members with a store, else this node's.
    pub async fn presence_of(
        &self,
        channel: &ChannelName,
    ) -> Result<crate::presence::Snapshot, crate::backplane::Error> {
        match &self.presence_store {
            Some(store) => store.snapshot(channel).await,
            None => Ok(self.presence.snapshot(channel)),
        }
    }

    /// Counts `session` in presence (on `presence:` routes) and reports it
    /// to the lifecycle webhooks, from its current channels on.
    pub fn track(
        &self,
        session: &mut Session,
        transport: Transport,
        presence: crate::config::PresenceSettings,
        grants: &Grants,
    ) {
        if !presence.enabled && self.hooks.is_none() {
            return;
        }
        let sub = grants.claims.as_ref().and_then(|g| g.sub.as_deref());
        let tracker = crate::presence::Tracker::new(
            self.presence.clone(),
            presence,
            self.hooks.clone(),
            sub,
            transport,
        );
        tracker.connect(&session.channels);
        session.tracker = Some(Box::new(tracker));
    }

    /// Opens a session subscribed to `channels` (resuming from `since`).
    pub fn open(
        &self,
        transport: Transport,
        channels: Vec<ChannelName>,
        since: Option<Vec<Position>>,
        settings: &RealtimeSettings,
        policy: LagPolicy,
    ) -> Session {
        let queue = self.hub.queue(settings.queue, policy);
        let mut channels = channels;
        let positions = channels
            .iter_mut()
            .enumerate()
            .map(|(i, ch)| {
                let from = since.as_ref().and_then(|s| s.get(i).copied());
                self.hub.subscribe_sharing(&queue, ch, from)
            })
            .collect();
        self.metrics
            .sessions
            .get_or_create(&TransportLabels {
                transport: transport.as_str(),
            })
            .inc();
        Session {
            hub: self.hub.clone(),
            queue,
            channels,
            positions,
            metrics: self.metrics.clone(),
            transport,
            end: EndReason::Gone,
            permit: None,
            tracker: None,
        }
    }
}
