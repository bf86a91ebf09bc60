//! Server frames: a message's text frame (encoded once, shared by every
//! subscriber), and the [`Encoder`] that joins a drained burst.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, Payload};

use super::ENCODING_SLOT;
use super::protocol::{gap_json, subscribed_json};
use crate::hub::message::{ChannelName, Message, Position};
use crate::realtime::deliver::Encoder;
use crate::realtime::{Coalesce, Session, cursor};

fn quoted(out: &mut BytesMut, s: &str) {
    // Channel and event names and ids are ASCII without quotes or
    // backslashes (validated), but quote properly anyway.
    out.put_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

/// The frames for drained items, joined (one write for a burst).
pub(super) struct WsEncoder(pub(super) Coalesce);

impl Encoder for WsEncoder {
    fn message(&mut self, _: &Session, m: &Arc<Message>) {
        self.0.push(m.encoded(ENCODING_SLOT, message_frame));
    }

    fn gap(&mut self, channel: &ChannelName) {
        self.0.push(text_frame(&gap_json(channel)));
    }

    fn subscribed(&mut self, _: &Session, channel: &ChannelName, position: Position, _: bool) {
        self.0.push(text_frame(&subscribed_json(channel, position)));
    }

    fn reply(&mut self, json: &Bytes) {
        self.0.push(text_frame(json));
    }
}

/// A message's whole text frame, shared by every subscriber.
pub fn message_frame(m: &Message) -> Bytes {
    text_frame(&message_json(m))
}

/// `{"type":"message","channel":C,"id":ID,"event":E,"data":D}`
pub fn message_json(m: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(m.payload.json().len() + 96);
    if crate::presence::is_presence_event(m.event.as_ref()) && m.payload.json().starts_with(b"{") {
        // `{"id":ID,"type":"join"|"leave","channel":C,"sub":S}`
        out.put_slice(br#"{"id":""#);
        cursor_into(&mut out, m.position);
        out.put_slice(b"\",");
        out.put_slice(&m.payload.json()[1..]);
        return out.freeze();
    }
    out.put_slice(br#"{"type":"message","channel":"#);
    quoted(&mut out, m.channel.as_str());
    out.put_slice(br#","id":""#);
    cursor_into(&mut out, m.position);
    out.put_u8(b'"');
    if let Some(event) = &m.event {
        out.put_slice(br#","event":"#);
        quoted(&mut out, event.as_str());
    }
    out.put_slice(br#","data":"#);
    out.put_slice(m.payload.json());
    out.put_u8(b'}');
    out.freeze()
}

/// A server (unmasked) text frame carrying `json`.
pub(super) fn text_frame(json: &[u8]) -> Bytes {
    frame_bytes(Frame::text(Payload::Borrowed(json)))
}

/// A frame's wire bytes, encoded by fastwebsockets.
pub(super) fn frame_bytes(mut frame: Frame<'_>) -> Bytes {
    let mut out = Vec::new();
    let len = frame.write(&mut out).len();
    out.truncate(len);
    Bytes::from(out)
}

fn cursor_into(out: &mut BytesMut, position: Position) {
    let mut s = String::with_capacity(16);
    cursor::push_one(&mut s, position);
    out.put_slice(s.as_bytes());
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::hub::message::{EventName, Payload as MessagePayload};

    #[test]
    fn message_frame_is_the_spec_json() {
        let m = Message::new(
            ChannelName::parse("news").unwrap(),
            Position { epoch: 35, seq: 36 },
            Some(EventName::parse("update").unwrap()),
            MessagePayload::from_json(&serde_json::json!({"a": 1})),
            Instant::now(),
        );
        let v: serde_json::Value = serde_json::from_slice(&message_json(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"news","id":"z-10","event":"update","data":{"a":1}})
        );
        let frame = message_frame(&m);
        let json = message_json(&m);
        assert_eq!(frame[0], 0x81, "FIN + text, one frame");
        assert_eq!(usize::from(frame[1]), json.len(), "unmasked, short length");
        assert_eq!(&frame[2..], &json[..]);
    }

    #[test]
    fn long_frames_use_the_extended_length() {
        let json = vec![b'x'; 300];
        let frame = text_frame(&json);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
    }
}
