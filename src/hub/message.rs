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

/// A message body in the two forms transports need, both computed once at
/// publish time and shared by every delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Compact JSON of the published `data` value.
    json: Bytes,
    /// What text transports (SSE) carry: a JSON string's raw text, any other
    /// value as compact JSON (SPEC §1).
    text: Bytes,
    /// A GRIP item's formats (`POST /publish/`); `None` for native
    /// messages. Only GRIP subscribers take messages that carry them.
    grip: Option<Arc<super::grip::Formats>>,
}

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
            grip: None,
        }
    }

    /// A GRIP item's payload: its formats, no native body.
    pub fn from_grip(formats: super::grip::Formats) -> Self {
        Self {
            json: Bytes::new(),
            text: Bytes::new(),
            grip: Some(Arc::new(formats)),
        }
    }

    pub fn grip(&self) -> Option<&Arc<super::grip::Formats>> {
        self.grip.as_ref()
    }

    /// The same payload carrying `formats` instead (a sequenced GRIP item).
    pub(crate) fn with_grip(formats: Arc<super::grip::Formats>) -> Self {
        Self {
            json: Bytes::new(),
            text: Bytes::new(),
            grip: Some(formats),
        }
    }

    /// Rebuilds a payload from its compact JSON (as a backplane stores it).
    /// `None` when `json` is not valid JSON.
    pub fn from_json_bytes(json: Bytes) -> Option<Self> {
        if json.first() == Some(&b'"') {
            let text: String = serde_json::from_slice(&json).ok()?;
            return Some(Self {
                json,
                text: Bytes::from(text.into_bytes()),
                grip: None,
            });
        }
        serde_json::from_slice::<serde::de::IgnoredAny>(&json).ok()?;
        Some(Self {
            text: json.clone(),
            json,
            grip: None,
        })
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// Size used for `max_message` checks: the larger of the two forms.
    pub fn len(&self) -> usize {
        match &self.grip {
            Some(formats) => formats.size(),
            None => self.json.len().max(self.text.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
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
pub const ENCODING_SLOTS: usize = 2;

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
            + ENCODING_SLOTS * encoding
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
            .field("bytes", &self.payload.json.len())
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
}
