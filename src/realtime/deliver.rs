//! The delivery step every transport shares: drain the session's queue in
//! one go, advance its resume positions, count and time each message, and
//! hand each item to the transport's [`Encoder`], which owns only its wire
//! format.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Session;
use crate::hub::message::{ChannelName, Message, Position};
use crate::hub::queue::{Closed, Item};
use crate::metrics::Metrics;

/// A transport's encoding of drained items.
pub trait Encoder {
    /// A message; the session's position has already moved past it.
    fn message(&mut self, session: &Session, message: &Arc<Message>);
    /// Messages of `channel` were lost before the next one.
    fn gap(&mut self, channel: &ChannelName);
    /// A subscription is live from `position` on; `moved` when that is
    /// not the position the session held for the channel.
    fn subscribed(
        &mut self,
        _session: &Session,
        _channel: &ChannelName,
        _position: Position,
        _moved: bool,
    ) {
    }
    /// Transport-owned reply bytes, in order with messages.
    fn reply(&mut self, _json: &Bytes) {}
}

impl Session {
    /// Delivers everything queued to `encoder`. Returns the close reason
    /// once the queue is closed and nothing is left before it.
    pub fn deliver(&mut self, metrics: &Metrics, encoder: &mut impl Encoder) -> Result<(), Closed> {
        let mut items = VecDeque::new();
        let drained = self.queue.drain(&mut items);
        if items.is_empty() {
            return drained;
        }
        let now = Instant::now();
        let mut delivered = 0;
        let mut bytes = 0;
        for item in &items {
            match item {
                Item::Message(m) => {
                    self.advance(&m.channel, m.position);
                    metrics
                        .delivery_latency
                        .observe(now.saturating_duration_since(m.published_at).as_secs_f64());
                    if self.own_presence_event(m) {
                        continue;
                    }
                    delivered += 1;
                    bytes += m.payload.delivered_len() as u64;
                    encoder.message(self, m);
                }
                Item::Gap(channel) => encoder.gap(channel),
                Item::Subscribed { channel, position } => {
                    let moved = self.position(channel) != Some(*position);
                    self.advance(channel, *position);
                    encoder.subscribed(self, channel, *position, moved);
                }
                Item::Reply(json) => encoder.reply(json),
            }
        }
        metrics.delivered.inc_by(delivered);
        metrics.delivered_bytes.inc_by(bytes);
        drained
    }

    /// A join or leave of this session's own user: others are told, not
    /// the user (docs/presence.md).
    fn own_presence_event(&self, m: &Message) -> bool {
        let Some(sub) = self.tracker.as_ref().and_then(|t| t.sub()) else {
            return false;
        };
        crate::presence::is_presence_event(m.event.as_ref())
            && crate::presence::event_sub(&m.payload).as_deref() == Some(sub)
    }
}
