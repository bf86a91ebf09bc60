//! Server frames: a message's text frame (encoded once, shared by every
//! subscriber), and the [`Encoder`] that joins a drained burst.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, Payload};

use super::protocol::{gap_json, subscribed_json};
use super::{ENCODING_SLOT, FRAMES_SLOT};
use crate::hub::message::{ChannelName, Message, Position};
use crate::realtime::deliver::Encoder;
use crate::realtime::{Coalesce, Session, cursor};

fn quoted(out: &mut BytesMut, s: &str) {
    // Channel and event names and ids are ASCII without quotes or
    // backslashes (validated), but quote properly anyway.
    out.put_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

/// The frames for drained items, joined (one write for a burst).
pub(super) struct WsEncoder {
    pub(super) frames: Coalesce,
    /// The connection asked for `?binary=frames`: a binary message is a
    /// header and a binary frame rather than base64 in JSON.
    pub(super) binary_frames: bool,
}

impl Encoder for WsEncoder {
    fn message(&mut self, _: &Session, m: &Arc<Message>) {
        if self.binary_frames && m.payload.is_binary() {
            // One buffer for the pair: nothing can come between them.
            self.frames.push(m.encoded(FRAMES_SLOT, binary_frames));
        } else {
            self.frames.push(m.encoded(ENCODING_SLOT, message_frame));
        }
    }

    fn gap(&mut self, channel: &ChannelName) {
        self.frames.push(text_frame(&gap_json(channel)));
    }

    fn subscribed(&mut self, _: &Session, channel: &ChannelName, position: Position, _: bool) {
        self.frames
            .push(text_frame(&subscribed_json(channel, position)));
    }

    fn reply(&mut self, json: &Bytes) {
        self.frames.push(text_frame(json));
    }
}

/// A message's whole text frame, shared by every subscriber.
pub fn message_frame(m: &Message) -> Bytes {
    text_frame(&message_json(m))
}

/// `{"type":"message","channel":C,"id":ID,"event":E,"data":D}`, or
/// `"data_base64":B` for a binary message.
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
    envelope(&mut out, m);
    if m.payload.is_binary() {
        out.put_slice(br#","data_base64":"#);
    } else {
        out.put_slice(br#","data":"#);
    }
    out.put_slice(m.payload.json());
    out.put_u8(b'}');
    out.freeze()
}

/// `{"type":"message","channel":C,"id":ID,"event":E` (event when set).
fn envelope(out: &mut BytesMut, m: &Message) {
    out.put_slice(br#"{"type":"message","channel":"#);
    quoted(out, m.channel.as_str());
    out.put_slice(br#","id":""#);
    cursor_into(out, m.position);
    out.put_u8(b'"');
    if let Some(event) = &m.event {
        out.put_slice(br#","event":"#);
        quoted(out, event.as_str());
    }
}

/// A binary message under `?binary=frames` (SPEC §12): the text frame
/// `{"type":"message","channel":C,"id":ID,"event":E?,"binary":N}`, then one
/// binary frame of the N bytes, in one buffer.
pub(super) fn binary_frames(m: &Message) -> Bytes {
    let bytes = m.payload.text();
    let mut header = BytesMut::with_capacity(128);
    envelope(&mut header, m);
    header.put_slice(br#","binary":"#);
    header.put_slice(bytes.len().to_string().as_bytes());
    header.put_u8(b'}');
    let header = text_frame(&header);
    let data = frame_bytes(Frame::binary(Payload::Borrowed(bytes)));
    let mut out = BytesMut::with_capacity(header.len() + data.len());
    out.put_slice(&header);
    out.put_slice(&data);
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
    fn binary_messages_are_base64_in_json_or_a_header_and_a_binary_frame() {
        let bytes: Vec<u8> = (0..=255).collect();
        let m = Message::new(
            ChannelName::parse("files").unwrap(),
            Position { epoch: 35, seq: 36 },
            None,
            MessagePayload::from_bytes(Bytes::from(bytes.clone())),
            Instant::now(),
        );
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let v: serde_json::Value = serde_json::from_slice(&message_json(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"files","id":"z-10","data_base64":b64})
        );
        let pair = binary_frames(&m);
        let header = br#"{"type":"message","channel":"files","id":"z-10","binary":256}"#;
        assert_eq!(pair[0], 0x81, "FIN + text");
        assert_eq!(usize::from(pair[1]), header.len());
        assert_eq!(&pair[2..2 + header.len()], header);
        let data = &pair[2 + header.len()..];
        assert_eq!(&data[..4], &[0x82, 126, 1, 0], "FIN + binary, 256 bytes");
        assert_eq!(&data[4..], &bytes[..]);
    }

    #[test]
    fn long_frames_use_the_extended_length() {
        let json = vec![b'x'; 300];
        let frame = text_frame(&json);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
    }
}
