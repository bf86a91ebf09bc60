//! The Pushpin item ⇄ [`Formats`] codec: the formats of one `POST
//! /publish/` item (`http-stream`, `http-response`, `ws-message`, their
//! `content`/`content-bin` bytes), and the same item as a backplane carries
//! it between nodes. The field readers (`bytes_field`, `each_header`) are
//! shared with `grip::instruct`, which reads the same shapes in a
//! `application/grip-instruct` body with Pushpin's own error wording.
//! A leaf: it names only the hub and the error type.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, HttpError};
use crate::hub::grip::{Action, Formats, HttpResponse, HttpStream, WsMessage, WsType};
use crate::hub::message::{ChannelName, Payload};

fn bad(message: String) -> HttpError {
    HttpError::new(ErrorCode::InvalidRequest, message)
}

/// An item's formats and ordering fields (`id`, `prev-id`, `no-seq`,
/// `meta`), validated; the channel is the caller's.
pub fn formats(item: &Map<String, Value>) -> Result<Formats, HttpError> {
    let id = optional_string(item, "id")?.map(Box::from);
    let prev_id = optional_string(item, "prev-id")?.map(Box::from);
    let no_seq = match item.get("no-seq") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"no-seq\" must be a boolean".into())),
    };
    if let Some(meta) = item.get("meta")
        && !meta
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    {
        return Err(bad("\"meta\" must be an object of strings".into()));
    }
    // Pushpin also accepts the formats at the item's top level.
    let formats = match item.get("formats") {
        Some(Value::Object(f)) => f,
        Some(_) => return Err(bad("\"formats\" must be an object".into())),
        None => item,
    };
    let mut out = Formats {
        id,
        prev_id,
        no_seq,
        ..Formats::default()
    };
    if let Some(f) = formats.get("http-stream") {
        out.http_stream = http_stream(f).map_err(|e| in_format(e, "http-stream"))?;
    }
    if let Some(f) = formats.get("http-response") {
        out.http_response = http_response(f).map_err(|e| in_format(e, "http-response"))?;
    }
    if let Some(f) = formats.get("ws-message") {
        out.ws_message = ws_message(f).map_err(|e| in_format(e, "ws-message"))?;
    }
    if !formats.contains_key("http-stream")
        && !formats.contains_key("http-response")
        && !formats.contains_key("ws-message")
    {
        return Err(bad(
            "no formats: give http-stream, http-response or ws-message".into(),
        ));
    }
    Ok(out)
}

/// Why a `content`/`content-bin` pair (or `body`/`body-bin`) was refused.
#[derive(Debug)]
pub enum FieldError {
    /// The `-bin` field is not a string.
    BinNotString,
    /// The `-bin` field is not base64.
    NotBase64(base64::DecodeError),
    /// The text field is not a string.
    TextNotString,
}

/// The bytes of `bin` (base64) or else `text`, in Pushpin's order;
/// `None` when neither is there.
pub fn bytes_field(
    m: &Map<String, Value>,
    text: &str,
    bin: &str,
) -> Result<Option<Bytes>, FieldError> {
    if let Some(b) = m.get(bin) {
        let Value::String(b) = b else {
            return Err(FieldError::BinNotString);
        };
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|v| Some(Bytes::from(v)))
            .map_err(FieldError::NotBase64);
    }
    match m.get(text) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(Bytes::copy_from_slice(s.as_bytes()))),
        Some(_) => Err(FieldError::TextNotString),
    }
}

/// Why a `headers` value was refused (besides what `add` refuses).
#[derive(Debug)]
pub enum HeadersError<E> {
    /// A list entry that is not `[name, value]`.
    Entry,
    /// Neither an object nor a list.
    Shape,
    /// What `add` said.
    Header(E),
}

/// Calls `add` for every header of a `headers` value: an object of
/// `name: value`, or a list of `[name, value]` pairs (both Pushpin's).
pub fn each_header<E>(
    headers: &Value,
    mut add: impl FnMut(&str, &Value) -> Result<(), E>,
) -> Result<(), HeadersError<E>> {
    match headers {
        Value::Object(h) => {
            for (k, v) in h {
                add(k, v).map_err(HeadersError::Header)?;
            }
        }
        Value::Array(list) => {
            for pair in list {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), v]) => add(k, v).map_err(HeadersError::Header)?,
                    _ => return Err(HeadersError::Entry),
                }
            }
        }
        _ => return Err(HeadersError::Shape),
    }
    Ok(())
}

/// A GRIP item as a backplane carries it between nodes: Pushpin's own item
/// JSON (bytes as `-bin` base64), read back by the same [`formats`] as
/// `POST /publish/`, so every node orders and delivers it as if published
/// there.
pub fn encode_wire(channel: &ChannelName, formats: &Formats) -> Vec<u8> {
    let b64 = |b: &Bytes| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    let mut f = Map::new();
    if let Some(s) = &formats.http_stream {
        f.insert(
            "http-stream".into(),
            match s.action {
                Action::Close => serde_json::json!({"action": "close"}),
                Action::Send => serde_json::json!({"content-bin": b64(&s.content)}),
            },
        );
    }
    if let Some(r) = &formats.http_response {
        let headers: Vec<Value> = r
            .headers
            .iter()
            .map(|(k, v)| serde_json::json!([&**k, &**v]))
            .collect();
        let mut m =
            serde_json::json!({"code": r.code, "headers": headers, "body-bin": b64(&r.body)});
        if let Some(reason) = &r.reason {
            m["reason"] = Value::String(reason.to_string());
        }
        f.insert("http-response".into(), m);
    }
    if let Some(w) = &formats.ws_message {
        let m = match w {
            WsMessage::Send { kind, content } => {
                let kind = match kind {
                    WsType::Text => "text",
                    WsType::Binary => "binary",
                    WsType::Ping => "ping",
                    WsType::Pong => "pong",
                };
                serde_json::json!({"type": kind, "content-bin": b64(content)})
            }
            WsMessage::Close { code, reason } => {
                let mut m = serde_json::json!({"action": "close",
                    "reason": String::from_utf8_lossy(reason)});
                if let Some(code) = code {
                    m["code"] = (*code).into();
                }
                m
            }
        };
        f.insert("ws-message".into(), m);
    }
    if f.is_empty() {
        // A hint-only item: nothing to deliver, but its id moves the
        // channel's order on.
        f.insert("http-stream".into(), serde_json::json!({"action": "hint"}));
    }
    let mut item = Map::new();
    // The channel also travels beside the item (the backplane's subject
    // or pub/sub name), which is what the receiver uses; it is written
    // here too so the bytes stay a whole Pushpin item, as nodes before
    // this codec expect.
    item.insert("channel".into(), Value::String(channel.to_string()));
    if let Some(id) = &formats.id {
        item.insert("id".into(), Value::String(id.to_string()));
    }
    if let Some(prev) = &formats.prev_id {
        item.insert("prev-id".into(), Value::String(prev.to_string()));
    }
    if formats.no_seq {
        item.insert("no-seq".into(), true.into());
    }
    item.insert("formats".into(), Value::Object(f));
    serde_json::to_vec(&Value::Object(item)).unwrap_or_default()
}

/// Reads [`encode_wire`]'s bytes back (the channel in them is not read:
/// the receiver knows it from the subject); `None` when they are not an
/// item.
pub fn decode_wire(bytes: &[u8]) -> Option<Payload> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    formats(value.as_object()?).ok().map(Payload::from_grip)
}

fn in_format(mut e: HttpError, format: &str) -> HttpError {
    e.message.insert_str(0, &format!("{format}: "));
    e
}

fn optional_string<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, HttpError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{key:?} must be a string"))),
    }
}

fn object(v: &Value) -> Result<&Map<String, Value>, HttpError> {
    v.as_object()
        .ok_or_else(|| bad("the format must be an object".into()))
}

/// `send` (default), `close`, or `hint`/`refresh` (asks for a refresh from
/// the origin: accepted, and ignored, see docs/from-pushpin.md).
fn action(m: &Map<String, Value>, allowed: &[&str]) -> Result<Option<Action>, HttpError> {
    let name = optional_string(m, "action")?.unwrap_or("send");
    if !allowed.contains(&name) {
        return Err(bad(format!(
            "unknown action {name:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(match name {
        "send" => Some(Action::Send),
        "close" => Some(Action::Close),
        _ => None,
    })
}

/// [`bytes_field`] in `/publish/`'s words.
fn content(m: &Map<String, Value>, text: &str, bin: &str) -> Result<Option<Bytes>, HttpError> {
    bytes_field(m, text, bin).map_err(|e| match e {
        FieldError::BinNotString => bad(format!("{bin:?} must be a base64 string")),
        FieldError::NotBase64(e) => bad(format!("{bin:?} is not valid base64: {e}")),
        FieldError::TextNotString => bad(format!("{text:?} must be a string")),
    })
}

fn http_stream(v: &Value) -> Result<Option<HttpStream>, HttpError> {
    let m = object(v)?;
    match action(m, &["send", "close", "hint"])? {
        Some(Action::Send) => {
            let content = content(m, "content", "content-bin")?
                .ok_or_else(|| bad("needs \"content\" or \"content-bin\"".into()))?;
            Ok(Some(HttpStream {
                action: Action::Send,
                content,
            }))
        }
        Some(Action::Close) => Ok(Some(HttpStream {
            action: Action::Close,
            content: Bytes::new(),
        })),
        None => Ok(None),
    }
}

fn http_response(v: &Value) -> Result<Option<HttpResponse>, HttpError> {
    let m = object(v)?;
    if action(m, &["send", "hint"])?.is_none() {
        return Ok(None);
    }
    let code = match m.get("code") {
        None => 200,
        Some(c) => c
            .as_u64()
            .filter(|c| (100..=999).contains(c))
            .ok_or_else(|| bad("\"code\" must be a status code, 100 to 999".into()))?
            as u16,
    };
    let reason = optional_string(m, "reason")?.map(Box::from);
    let mut headers = Vec::new();
    let mut add = |name: &str, value: &Value| -> Result<(), HttpError> {
        let Value::String(value) = value else {
            return Err(bad(format!("header {name:?} must have a string value")));
        };
        if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_str(value).is_err()
        {
            return Err(bad(format!("invalid header {name:?}")));
        }
        headers.push((Box::from(name), Box::from(value.as_str())));
        Ok(())
    };
    if let Some(h) = m.get("headers") {
        each_header(h, &mut add).map_err(|e| match e {
            HeadersError::Entry => bad("\"headers\" entries must be [name, value]".into()),
            HeadersError::Shape => bad("\"headers\" must be an object or a list".into()),
            HeadersError::Header(e) => e,
        })?;
    }
    if m.contains_key("body-patch") && !m.contains_key("body") && !m.contains_key("body-bin") {
        return Err(bad("\"body-patch\" is not supported; send \"body\"".into()));
    }
    let body = content(m, "body", "body-bin")?
        .ok_or_else(|| bad("needs \"body\" or \"body-bin\"".into()))?;
    Ok(Some(HttpResponse {
        code,
        reason,
        headers,
        body,
    }))
}

fn ws_message(v: &Value) -> Result<Option<WsMessage>, HttpError> {
    let m = object(v)?;
    match action(m, &["send", "close", "hint", "refresh"])? {
        Some(Action::Send) => {
            let kind = match optional_string(m, "type")? {
                // As in Pushpin and gripcontrol: `content-bin` without a
                // type is a binary frame.
                None if m.get("content-bin").is_some_and(|v| !v.is_null()) => WsType::Binary,
                None | Some("text") => WsType::Text,
                Some("binary") => WsType::Binary,
                Some("ping") => WsType::Ping,
                Some("pong") => WsType::Pong,
                Some(other) => {
                    return Err(bad(format!(
                        "unknown type {other:?} (text, binary, ping, pong)"
                    )));
                }
            };
            let content = match content(m, "content", "content-bin")? {
                Some(c) => c,
                None if matches!(kind, WsType::Ping | WsType::Pong) => Bytes::new(),
                None => return Err(bad("needs \"content\" or \"content-bin\"".into())),
            };
            if matches!(kind, WsType::Ping | WsType::Pong) && content.len() > 125 {
                return Err(bad("ping and pong content is at most 125 bytes".into()));
            }
            // A binary frame from "content" keeps the bytes; a text frame
            // from "content-bin" must be UTF-8.
            if kind == WsType::Text && std::str::from_utf8(&content).is_err() {
                return Err(bad("text content must be UTF-8".into()));
            }
            Ok(Some(WsMessage::Send { kind, content }))
        }
        Some(Action::Close) => {
            let code = match m.get("code") {
                None => None,
                Some(c) => Some(
                    c.as_u64()
                        .filter(|c| (1000..=4999).contains(c))
                        .ok_or_else(|| bad("\"code\" must be a close code, 1000 to 4999".into()))?
                        as u16,
                ),
            };
            let reason = optional_string(m, "reason")?.unwrap_or("");
            if reason.len() > 123 {
                return Err(bad("\"reason\" is at most 123 bytes".into()));
            }
            Ok(Some(WsMessage::Close {
                code,
                reason: Bytes::copy_from_slice(reason.as_bytes()),
            }))
        }
        None => Ok(None),
    }
}
