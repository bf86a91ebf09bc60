//! Validated message-model values: [`ChannelName`], [`EventName`],
//! [`Payload`], [`Position`], and the [`Message`] the hub fans out.
//!
//! Everything here is parsed once at the edge (publish API, WebSocket frames,
//! route templates); inner code never re-checks.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Longest channel name, in bytes (SPEC §1).
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest event name, in bytes (SPEC §1).
pub const MAX_EVENT_LEN: usize = 64;

/// A channel name: 1–200 bytes from `[A-Za-z0-9_.:@/-]`.
///
/// Cheap to clone: the hub, every subscriber queue and every message share
/// one allocation per channel.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a valid channel or event name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("name contains {found:?}; allowed are {allowed}")]
    BadCharacter { found: char, allowed: &'static str },
}

impl ChannelName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_name(
            name,
            MAX_CHANNEL_LEN,
            is_channel_byte,
            "A-Z a-z 0-9 _ . : @ / -",
        )?;
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
}

fn is_event_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn check_name(
    name: &str,
    max: usize,
    allowed: fn(u8) -> bool,
    allowed_text: &'static str,
) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong { max });
    }
    if let Some(found) = name.chars().find(|c| !c.is_ascii() || !allowed(*c as u8)) {
        return Err(NameError::BadCharacter {
            found,
            allowed: allowed_text,
        });
    }
    Ok(())
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An SSE event type: 1–64 chars from `[A-Za-z0-9_.-]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Box<str>);

impl EventName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_name(name, MAX_EVENT_LEN, is_event_byte, "A-Z a-z 0-9 _ . -")?;
        Ok(Self(Box::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A message body in the forms transports need, all computed once at
/// publish time and shared by every delivery. A body is JSON `data` (text)
/// or bytes (binary, SPEC §12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Text: compact JSON of the published `data` value. Binary: the JSON
    /// string of the bytes' base64 (standard alphabet, padded), which is
    /// what JSON transports put in `"data_base64"`.
    json: Bytes,
    /// Text: what text transports (SSE) carry: a JSON string's raw text,
    /// any other value as compact JSON (SPEC §1). Binary: the bytes.
    text: Bytes,
    binary: bool,
    /// A GRIP item's formats (`POST /publish/`); `None` for native
    /// messages. Only GRIP subscribers take messages that carry them.
    grip: Option<Arc<super::grip::Formats>>,
}

/// What starts a binary payload's backplane form ([`Payload::wire`]): no
/// JSON text starts with a NUL byte.
const WIRE_BINARY: u8 = 0;

impl Payload {
    /// Builds a payload from a parsed JSON value.
    pub fn from_json(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are strings.
        let json = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        let text = match value {
            serde_json::Value::String(s) => Bytes::from(s.clone().into_bytes()),
            _ => json.clone(),
        };
        Self {
            json,
            text,
            binary: false,
            grip: None,
        }
    }

    /// A binary payload: `bytes` as published (any length, 0 included).
    pub fn from_bytes(bytes: Bytes) -> Self {
        use base64::Engine as _;
        let mut json = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
        json.push('"');
        base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut json);
        json.push('"');
        Self {
            json: Bytes::from(json),
            text: bytes,
            binary: true,
            grip: None,
        }
    }

    /// A GRIP item's payload: its formats, no native body.
    pub fn from_grip(formats: super::grip::Formats) -> Self {
        Self::with_grip(Arc::new(formats))
    }

    pub fn grip(&self) -> Option<&Arc<super::grip::Formats>> {
        self.grip.as_ref()
    }

    /// The same payload carrying `formats` instead (a sequenced GRIP item).
    pub(crate) fn with_grip(formats: Arc<super::grip::Formats>) -> Self {
        Self {
            json: Bytes::new(),
            text: Bytes::new(),
            binary: false,
            grip: Some(formats),
        }
    }

    /// The body as a backplane carries it between nodes: a text body's
    /// compact JSON, or a NUL byte and a binary body's bytes.
    pub fn wire(&self) -> Bytes {
        if !self.binary {
            return self.json.clone();
        }
        let mut out = Vec::with_capacity(1 + self.text.len());
        out.push(WIRE_BINARY);
        out.extend_from_slice(&self.text);
        Bytes::from(out)
    }

    /// Rebuilds a payload from its [`Payload::wire`] form. `None` when a
    /// text body is not valid JSON.
    pub fn from_wire(wire: Bytes) -> Option<Self> {
        match wire.first() {
            Some(&WIRE_BINARY) => Some(Self::from_bytes(wire.slice(1..))),
            Some(b'"') => {
                let text: String = serde_json::from_slice(&wire).ok()?;
                Some(Self {
                    json: wire,
                    text: Bytes::from(text.into_bytes()),
                    binary: false,
                    grip: None,
                })
            }
            _ => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&wire).ok()?;
                Some(Self {
                    text: wire.clone(),
                    json: wire,
                    binary: false,
                    grip: None,
                })
            }
        }
    }

    /// Whether the body is bytes (SPEC §12) rather than JSON `data`.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// Text: the compact JSON of `data`. Binary: the JSON string of the
    /// base64 (what follows `"data_base64":`).
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// Text: what SSE carries. Binary: the bytes.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// A binary body's base64 text (standard alphabet, padded), without
    /// quotes; empty for a text body.
    pub fn base64(&self) -> Bytes {
        if self.binary && self.json.len() >= 2 {
            self.json.slice(1..self.json.len() - 1)
        } else {
            Bytes::new()
        }
    }

    /// Size used for `max_message` checks: a binary body's bytes, else the
    /// larger of the two forms.
    pub fn len(&self) -> usize {
        match &self.grip {
            Some(formats) => formats.size(),
            None if self.binary => self.text.len(),
            None => self.json.len().max(self.text.len()),
        }
    }

    /// The payload bytes a delivery carries (the delivered-bytes
    /// counters): a binary body's bytes, a text body's compact JSON.
    pub fn delivered_len(&self) -> usize {
        if self.binary {
            self.text.len()
        } else {
            self.json.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A place in one channel's stream: the stream's epoch and the sequence of
/// the last message seen (0 = before the first message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    /// A fresh random stream epoch: 48 bits (so ids stay short), never 0,
    /// and different on every call, across nodes and within one.
    pub fn random_epoch() -> u64 {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        (h.finish() & 0xffff_ffff_ffff).max(1)
    }
}

/// Now on the wall clock, in Unix milliseconds: the publish time that
/// travels with a message between nodes, and presence timestamps.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When a message stamped `ms` (another clock's Unix ms) was published, on
/// this node's monotonic clock; clock skew only moves latency figures.
pub fn instant_from_unix_ms(ms: u64) -> Instant {
    let age = Duration::from_millis(unix_ms().saturating_sub(ms));
    let now = Instant::now();
    now.checked_sub(age).unwrap_or(now)
}

/// How many transport encodings a message can cache. Slots are assigned by
/// the transports (`realtime::encoding`); the hub only stores them.
pub const ENCODING_SLOTS: usize = 3;

/// A published message, as stored in history and queued for subscribers.
pub struct Message {
    pub channel: ChannelName,
    pub position: Position,
    pub event: Option<EventName>,
    pub payload: Payload,
    /// When the publish was accepted; feeds the delivery latency histogram.
    pub published_at: Instant,
    /// Encoded forms shared by every subscriber of one transport, so a
    /// fan-out to 10k subscribers encodes once per format, not 10k times.
    encodings: [OnceLock<Bytes>; ENCODING_SLOTS],
}

impl Message {
    pub fn new(
        channel: ChannelName,
        position: Position,
        event: Option<EventName>,
        payload: Payload,
        published_at: Instant,
    ) -> Self {
        Self {
            channel,
            position,
            event,
            payload,
            published_at,
            encodings: Default::default(),
        }
    }

    /// An estimate, from above, of the heap this message costs while the
    /// history holds it: the message, its bodies and an allowance for the
    /// encodings transports cache in it (each about the body plus an
    /// envelope). Depends only on the message, so it is the same when the
    /// history lets it go. Feeds `realtime.history.max_total`.
    pub fn held_bytes(&self) -> usize {
        /// What one allocation costs beyond its bytes (allocator header and
        /// rounding), and a shared `Bytes` its refcount block.
        const ALLOC: usize = 16;
        const SHARED: usize = 32 + ALLOC;
        /// An encoding's envelope beyond the body, channel and event.
        const ENVELOPE: usize = 96;
        let json = self.payload.json.len();
        let text = if self.payload.text.as_ptr() == self.payload.json.as_ptr() {
            0
        } else {
            self.payload.text.len() + ALLOC + SHARED
        };
        let event = self.event.as_ref().map_or(0, |e| e.as_str().len() + ALLOC);
        // The last slot is WebSocket's `?binary=frames` form, which only a
        // binary message fills.
        let slots = if self.payload.binary {
            ENCODING_SLOTS
        } else {
            ENCODING_SLOTS - 1
        };
        let encoding = json.max(self.payload.text.len())
            + self.channel.as_str().len()
            + event
            + ENVELOPE
            + ALLOC
            + SHARED;
        // The `Arc` block (counts and the message).
        16 + ALLOC
            + std::mem::size_of::<Message>()
            + json
            + ALLOC
            + SHARED
            + text
            + event
            + slots * encoding
    }

    /// The cached encoding in `slot`, computed by `encode` on first use.
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.encodings[slot].get_or_init(|| encode(self)).clone()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .field("event", &self.event)
            .field("bytes", &self.payload.len())
            .field("binary", &self.payload.binary)
            .finish()
    }
}

/// What a publisher hands to the backplane: one message for one channel.
#[derive(Clone, Debug)]
pub struct Publication {
    pub channel: ChannelName,
    pub event: Option<EventName>,
    pub payload: Payload,
    pub idempotency_key: Option<Arc<str>>,
    pub accepted_at: Instant,
}

/// The hub's answer to one publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub channel: ChannelName,
    pub position: Position,
    /// Subscribers reached on this node.
    pub subscribers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_spec_alphabet() {
        for good in ["a", "news", "user:42", "a/b.c@d-e_f", &"x".repeat(200)] {
            assert!(ChannelName::parse(good).is_ok(), "{good} should be valid");
        }
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ChannelName::parse(&"x".repeat(201)),
            Err(NameError::TooLong { max: 200 })
        );
        for bad in ["a b", "ä", "a?b", "a#", "a\n"] {
            assert!(
                ChannelName::parse(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn event_names_reject_separators() {
        assert!(EventName::parse("update.v2").is_ok());
        assert!(EventName::parse("a:b").is_err());
        assert!(EventName::parse(&"e".repeat(65)).is_err());
    }

    #[test]
    fn string_payload_is_raw_text_others_compact_json() {
        let p = Payload::from_json(&serde_json::json!("line1\nline2"));
        assert_eq!(p.text().as_ref(), b"line1\nline2");
        assert_eq!(p.json().as_ref(), br#""line1\nline2""#);
        let p = Payload::from_json(&serde_json::json!({"a": [1, 2]}));
        assert_eq!(p.text().as_ref(), br#"{"a":[1,2]}"#);
    }

    #[test]
    fn binary_payloads_keep_their_bytes_through_the_wire_form() {
        let all: Vec<u8> = (0..=255).collect();
        for bytes in [Vec::new(), vec![0], b"\xff\xfe".to_vec(), all] {
            let p = Payload::from_bytes(Bytes::from(bytes.clone()));
            assert!(p.is_binary());
            assert_eq!(p.len(), bytes.len());
            assert_eq!(p.text().as_ref(), &bytes[..]);
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(p.base64().as_ref(), b64.as_bytes());
            assert_eq!(p.json().as_ref(), format!("\"{b64}\"").as_bytes());
            let back = Payload::from_wire(p.wire()).unwrap();
            assert_eq!(back, p);
        }
        // Text bodies keep their JSON form on the wire.
        let t = Payload::from_json(&serde_json::json!("hi"));
        assert_eq!(t.wire().as_ref(), br#""hi""#);
        assert_eq!(Payload::from_wire(t.wire()).unwrap(), t);
        assert!(!t.is_binary());
        assert!(Payload::from_wire(Bytes::from_static(b"{nope")).is_none());
    }

    #[test]
    fn a_binary_message_accounts_for_its_bytes_its_base64_and_its_frames() {
        let message = |payload| {
            Message::new(
                ChannelName::parse("c").unwrap(),
                Position { epoch: 1, seq: 1 },
                None,
                payload,
                Instant::now(),
            )
        };
        let binary = message(Payload::from_bytes(Bytes::from(vec![0xa5; 3000])));
        let text = message(Payload::from_json(&serde_json::json!("x".repeat(3000))));
        // The bytes (3,000), their base64 (4,002 with quotes) and three
        // cached encodings of about the base64 each: above 3,000 + 4,002
        // + 3 × 4,002, below twice that.
        let held = binary.held_bytes();
        assert!((19_000..38_000).contains(&held), "{held}");
        // A text message of the same size has two encodings, no third.
        assert!(text.held_bytes() < held, "{} vs {held}", text.held_bytes());
    }
}
