//! The client's requests on an open connection (SPEC §3.4): `subscribe`,
//! `unsubscribe`, `publish`, `presence` and `ping` (`refresh` is in
//! `auth`). Each answer is a reply queued in order with messages; a refused
//! request is an `error` frame and the connection stays open.

use std::time::Instant;

use bytes::Bytes;

use super::Connection;
use crate::error::ErrorCode;
use crate::hub::message::{ChannelName, Payload};
use crate::publish::Content;
use crate::realtime::cursor;
use crate::realtime::ws::protocol::{
    ClientFrame, FrameError, error_json, parse_client_frame, unknown_type, unsubscribed_json,
};

impl Connection {
    /// A text frame after the connection opened: parsed once, then handled
    /// by its type.
    pub(super) async fn request(&mut self, text: &str) {
        let frame = match parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => return self.refused(e),
        };
        match frame {
            ClientFrame::Ping => self.reply(Bytes::from_static(br#"{"type":"pong"}"#)),
            ClientFrame::Refresh { token } => self.refresh(token.as_deref()),
            ClientFrame::Subscribe { channel, since } => self.subscribe(channel, since.as_deref()),
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientFrame::Presence { channel } => self.presence(channel).await,
            ClientFrame::Publish {
                channel,
                data,
                event,
            } => self.publish(channel, data, event).await,
            // Only ever the first frame of a connection without a token.
            ClientFrame::Auth { .. } => self.refused(unknown_type("auth")),
        }
    }

    /// The `error` frame for a refused request.
    fn refused(&self, e: FrameError) {
        self.reply(error_json(e.code, &e.message));
    }

    /// `{"type":"subscribe","channel":C,"since":ID}`
    fn subscribe(&mut self, channel: ChannelName, since: Option<&str>) {
        if !self.grants.may_subscribe(&channel) {
            return self.reply(error_json(
                ErrorCode::Forbidden,
                &format!("channel {channel} is not granted on this route"),
            ));
        }
        let since = match since.filter(|s| !s.is_empty()).map(cursor::decode_one) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                return self.reply(error_json(
                    ErrorCode::InvalidId,
                    &format!("invalid since: {e}"),
                ));
            }
        };
        // Read here, not kept per connection: the limiter is the one this
        // connection opened under.
        let max_subscriptions = self.realtime.limiter.settings().max_subscriptions;
        let session = &mut self.session;
        if session.channels.len() >= max_subscriptions && !session.channels.contains(&channel) {
            return self.reply(error_json(
                ErrorCode::TooManySubscriptions,
                &format!("at most {max_subscriptions} channels per connection"),
            ));
        }
        session.subscribe(channel, since);
    }

    /// `{"type":"unsubscribe","channel":C}`
    fn unsubscribe(&mut self, channel: &ChannelName) {
        if self.session.unsubscribe(channel) {
            self.reply(unsubscribed_json(channel));
        } else {
            self.reply(error_json(
                ErrorCode::NotSubscribed,
                &format!("not subscribed to {channel}"),
            ));
        }
    }

    /// `{"type":"presence","channel":C}`: on a `presence:` route, for a
    /// channel the connection may subscribe (docs/presence.md).
    async fn presence(&mut self, channel: ChannelName) {
        if !self.presence.enabled {
            return self.reply(error_json(
                ErrorCode::Forbidden,
                "presence is not enabled on this route",
            ));
        }
        if !self.grants.may_subscribe(&channel) {
            return self.reply(error_json(
                ErrorCode::Forbidden,
                &format!("channel {channel} is not granted on this route"),
            ));
        }
        match self.realtime.presence_of(&channel).await {
            Ok(snapshot) => {
                let mut v = snapshot.to_json(&channel, false);
                v["type"] = serde_json::Value::from("presence");
                self.reply(Bytes::from(v.to_string()));
            }
            Err(e) => self.reply(error_json(ErrorCode::BackplaneUnavailable, &e.to_string())),
        }
    }

    /// `{"type":"publish","channel":C,"event":E,"data":D}`: client publish,
    /// where the route allows it, under the connection's budget.
    async fn publish(
        &mut self,
        channel: ChannelName,
        data: Option<serde_json::Value>,
        event: Option<serde_json::Value>,
    ) {
        if let Err(json) = self.may_publish(&channel) {
            return self.reply(json);
        }
        match Content::validate(data.as_ref(), event.as_ref(), None, self.max_message) {
            Ok(content) => self.send_publication(channel, content).await,
            Err(e) => self.reply(error_json(e.code, &e.message)),
        }
    }

    /// A binary message from the client (SPEC §12): its bytes published
    /// to `?publish=C`, else to the connection's one channel. Anywhere
    /// else it is refused with `binary_not_allowed` and the socket stays.
    pub(super) async fn publish_binary(&mut self, bytes: Bytes) {
        let refuse = |why| error_json(ErrorCode::BinaryNotAllowed, why);
        if !self.grants.publish_enabled() {
            return self.reply(refuse(
                "client publish is disabled on this route; send JSON text frames",
            ));
        }
        let channel = match (&self.publish_to, &self.session.channels[..]) {
            (Some(c), _) => ChannelName::clone(c),
            (None, [only]) => only.clone(),
            (None, _) => {
                return self.reply(refuse(
                    "a binary message goes to the connection's only channel; with more or none, connect with ?publish=CHANNEL",
                ));
            }
        };
        if let Err(json) = self.may_publish(&channel) {
            return self.reply(json);
        }
        let payload = Payload::from_bytes(bytes);
        match Content::new(payload, None, None, self.max_message) {
            Ok(content) => self.send_publication(channel, content).await,
            Err(e) => self.reply(error_json(e.code, &e.message)),
        }
    }

    /// The `forbidden` frame when this connection may not publish to
    /// `channel`.
    fn may_publish(&self, channel: &ChannelName) -> Result<(), Bytes> {
        if self.grants.may_publish(channel) {
            return Ok(());
        }
        let why = if self.grants.publish_enabled() {
            format!("publishing to {channel} is not allowed on this route")
        } else {
            "client publish is disabled on this route".to_owned()
        };
        Err(error_json(ErrorCode::Forbidden, &why))
    }

    /// Publishes a checked client publication under the connection's
    /// budget; answers `published` or the error.
    async fn send_publication(&mut self, channel: ChannelName, content: Content) {
        let limiter = &self.realtime.limiter;
        if !self
            .budget
            .get_or_insert_with(|| Box::new(limiter.publish_budget()))
            .take()
        {
            self.realtime.limiter.client_publish_refused();
            return self.reply(error_json(
                ErrorCode::RateLimited,
                "client publish rate exceeded; slow down",
            ));
        };
        let publication = content.publication(channel, Instant::now());
        match self.realtime.backplane.publish(vec![publication]).await {
            Ok(receipts) => {
                if let Some(r) = receipts.first() {
                    let reply = serde_json::json!({
                        "type": "published",
                        "channel": r.channel.as_str(),
                        "id": cursor::encode_one(r.position),
                    });
                    self.reply(Bytes::from(reply.to_string()));
                }
            }
            Err(e) => self.reply(error_json(ErrorCode::BackplaneUnavailable, &e.to_string())),
        }
    }
}
