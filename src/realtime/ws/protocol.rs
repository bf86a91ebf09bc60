//! The client JSON protocol (SPEC §3.4): frames from the client, and the
//! `subscribed`, `unsubscribed`, `gap` and `error` frames we answer with.

use bytes::Bytes;
use serde::Deserialize;

use crate::error::ErrorCode;
use crate::hub::message::{ChannelName, Position};
use crate::realtime::cursor;

/// A client's JSON frame (SPEC §3.4), before its type, channel and
/// `since` are checked.
#[derive(Deserialize)]
pub struct ClientFrame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(default)]
    pub event: Option<serde_json::Value>,
    #[serde(default)]
    pub token: Option<String>,
}

/// The pure first step of handling a client text frame (also fuzzed,
/// `fuzz/`).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, serde_json::Error> {
    serde_json::from_str(text)
}

pub(super) fn subscribed_json(channel: &ChannelName, position: Position) -> Bytes {
    let v = serde_json::json!({"type": "subscribed", "channel": channel.as_str(), "id": cursor::encode_one(position)});
    Bytes::from(v.to_string())
}

pub(super) fn unsubscribed_json(channel: &ChannelName) -> Bytes {
    Bytes::from(
        serde_json::json!({"type": "unsubscribed", "channel": channel.as_str()}).to_string(),
    )
}

pub(super) fn gap_json(channel: &ChannelName) -> Bytes {
    Bytes::from(serde_json::json!({"type": "gap", "channel": channel.as_str()}).to_string())
}

pub(super) fn error_json(code: ErrorCode, message: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"type": "error", "code": code.as_str(), "message": message}).to_string(),
    )
}
