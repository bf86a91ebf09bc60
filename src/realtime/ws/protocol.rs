//! The client JSON protocol (SPEC §3.4): frames from the client, and the
//! `subscribed`, `unsubscribed`, `gap` and `error` frames we answer with.

use bytes::Bytes;
use serde::Deserialize;

use crate::error::{ErrorCode, HttpError};
use crate::hub::message::{ChannelName, Position};
use crate::publish;
use crate::realtime::cursor;

/// A client's JSON frame as sent (SPEC §3.4): every field any type uses.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    event: Option<serde_json::Value>,
    #[serde(default)]
    token: Option<String>,
}

/// A client's frame, parsed once by its `type` (SPEC §3.4), its channel
/// validated. What needs the connection (grants, `max_message`) is checked
/// by the handler: `since`, and the publish `data` and `event`.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe {
        channel: ChannelName,
        since: Option<String>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        data: Option<serde_json::Value>,
        event: Option<serde_json::Value>,
    },
    Presence {
        channel: ChannelName,
    },
    Ping,
    /// The first frame of a connection that came without a token; not a
    /// request after it.
    Auth {
        token: Option<String>,
    },
    Refresh {
        token: Option<String>,
    },
}

impl ClientFrame {
    /// The frame's `type`, as the client wrote it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Ping => "ping",
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }
}

/// Why a client frame was refused before any handler saw it: answered with
/// an `error` frame, the connection stays open.
#[derive(Debug)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<HttpError> for FrameError {
    fn from(e: HttpError) -> Self {
        FrameError {
            code: e.code,
            message: e.message,
        }
    }
}

/// The pure first step of handling a client text frame (also fuzzed,
/// `fuzz/`): the JSON, its `type` and, for the types that name one, the
/// channel.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| FrameError {
        code: ErrorCode::InvalidJson,
        message: format!("invalid JSON frame: {e}"),
    })?;
    let channel = || match wire.channel.as_deref().map(publish::channel) {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(FrameError::from(e)),
        None => Err(FrameError {
            code: ErrorCode::InvalidRequest,
            message: "missing \"channel\"".to_owned(),
        }),
    };
    Ok(match wire.kind.as_str() {
        "ping" => ClientFrame::Ping,
        "auth" => ClientFrame::Auth { token: wire.token },
        "refresh" => ClientFrame::Refresh { token: wire.token },
        "subscribe" => ClientFrame::Subscribe {
            channel: channel()?,
            since: wire.since,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            channel: channel()?,
        },
        "publish" => ClientFrame::Publish {
            channel: channel()?,
            data: wire.data,
            event: wire.event,
        },
        "presence" => ClientFrame::Presence {
            channel: channel()?,
        },
        other => return Err(unknown_type(other)),
    })
}

/// The `unknown_type` error for a frame `type` that is not a request.
pub(super) fn unknown_type(kind: &str) -> FrameError {
    FrameError {
        code: ErrorCode::UnknownType,
        message: format!(
            "unknown frame type {kind:?}: expected subscribe, unsubscribe, publish, presence, refresh or ping"
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> (ErrorCode, String) {
        let e = parse_client_frame(text).unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn frames_parse_by_type() {
        assert!(matches!(
            parse_client_frame(r#"{"type":"subscribe","channel":"a","since":"z-1"}"#),
            Ok(ClientFrame::Subscribe { channel, since: Some(s) }) if channel.as_str() == "a" && s == "z-1"
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"ping","channel":"not a channel!"}"#),
            Ok(ClientFrame::Ping)
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientFrame::Auth { token: Some(t) }) if t == "t"
        ));
        assert_eq!(
            error(r#"{"type":"publish"}"#),
            (ErrorCode::InvalidRequest, "missing \"channel\"".to_owned())
        );
        assert_eq!(
            error(r#"{"type":"unsubscribe","channel":""}"#).0,
            ErrorCode::InvalidChannel
        );
        assert_eq!(
            error(r#"{"type":"shout","channel":""}"#),
            (
                ErrorCode::UnknownType,
                "unknown frame type \"shout\": expected subscribe, unsubscribe, publish, presence, refresh or ping".to_owned()
            )
        );
        assert_eq!(error(r#"{"channel":"a"}"#).0, ErrorCode::InvalidJson);
    }
}
