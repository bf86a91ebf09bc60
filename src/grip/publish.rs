//! `POST /publish/` (internal listener): Pushpin's publish body
//! `{"items":[{"channel","id","prev-id","formats":{...}}]}` decoded into
//! publications that carry GRIP formats, then handed to the backplane like
//! every native publish. The whole body is validated first: a malformed
//! item is a `400` naming its index, and nothing of the request is
//! published.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use std::time::Instant;

use crate::error::{Body, ErrorCode, HttpError};
use crate::hub::grip::{Action, Formats, HttpResponse, HttpStream, WsMessage, WsType};
use crate::hub::message::{ChannelName, Payload, Publication};
use crate::publish::{MAX_BATCH, Publisher};

/// Serves `POST /publish/`.
pub async fn handle(publisher: &Publisher, request: Request<Incoming>) -> Response<Body> {
    let json_answer = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/plain"));
    let result = async {
        let body = publisher.authorized_body(request).await?;
        let publications = decode(&body, publisher.max_message)?;
        publisher
            .backplane
            .publish(publications)
            .await
            .map_err(|e| HttpError::new(ErrorCode::BackplaneUnavailable, e.to_string()))
    }
    .await;
    match result {
        // Pushpin's answer, so publishers that read it keep working.
        Ok(_) if json_answer => crate::error::json_response(
            StatusCode::OK,
            &serde_json::json!({"message": "Published"}),
        ),
        Ok(_) => {
            let mut response = Response::new(crate::error::full("Published\n"));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        Err(error) => error.into_response(),
    }
}

fn bad(message: String) -> HttpError {
    HttpError::new(ErrorCode::InvalidRequest, message)
}

/// Decodes and validates every item, in order.
pub fn decode(body: &[u8], max_message: usize) -> Result<Vec<Publication>, HttpError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        HttpError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
            .with("line", e.line().into())
            .with("column", e.column().into())
    })?;
    let Some(Value::Array(items)) = value.as_object().and_then(|o| o.get("items")) else {
        return Err(bad("body must be an object with an \"items\" array".into()));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(bad(format!("\"items\" must hold 1 to {MAX_BATCH} items")));
    }
    let now = Instant::now();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let publication = decode_item(item, now).map_err(|mut e| {
            e.message.insert_str(0, &format!("items[{i}]: "));
            e.with("item", i.into())
        })?;
        if publication.payload.len() > max_message {
            return Err(HttpError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "items[{i}]: content is larger than realtime.max_message ({max_message} bytes)"
                ),
            )
            .with("item", i.into()));
        }
        out.push(publication);
    }
    Ok(out)
}

fn decode_item(item: &Value, now: Instant) -> Result<Publication, HttpError> {
    let Value::Object(item) = item else {
        return Err(bad("an item must be an object".into()));
    };
    let channel = match item.get("channel") {
        Some(Value::String(c)) => ChannelName::parse(c).map_err(|e| {
            HttpError::new(
                ErrorCode::InvalidChannel,
                format!("invalid channel {c:?}: {e}"),
            )
        })?,
        Some(_) => return Err(bad("\"channel\" must be a string".into())),
        None => return Err(bad("\"channel\" is required".into())),
    };
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
    Ok(Publication {
        channel,
        event: None,
        payload: Payload::from_grip(out),
        idempotency_key: None,
        accepted_at: now,
    })
}

/// A GRIP item as a backplane carries it between nodes: Pushpin's own item
/// JSON (bytes as `-bin` base64), read back by the same decoder as
/// `POST /publish/`, so every node orders and delivers it as if published
/// there.
pub fn encode_wire(formats: &Formats) -> Vec<u8> {
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
    // The channel travels beside the item (the backplane's subject or
    // pub/sub name); any valid name satisfies the decoder.
    item.insert("channel".into(), "_".into());
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

/// Reads [`encode_wire`]'s bytes back; `None` when they are not an item.
pub fn decode_wire(bytes: &[u8]) -> Option<Payload> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    decode_item(&value, Instant::now()).ok().map(|p| p.payload)
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

/// `content-bin` (base64) or `content` (text), in Pushpin's order.
fn content(m: &Map<String, Value>, text: &str, bin: &str) -> Result<Option<Bytes>, HttpError> {
    if let Some(b) = m.get(bin) {
        let Value::String(b) = b else {
            return Err(bad(format!("{bin:?} must be a base64 string")));
        };
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| bad(format!("{bin:?} is not valid base64: {e}")));
    }
    match m.get(text) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(Bytes::copy_from_slice(s.as_bytes()))),
        Some(_) => Err(bad(format!("{text:?} must be a string"))),
    }
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
    match m.get("headers") {
        None => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                add(k, v)?;
            }
        }
        Some(Value::Array(h)) => {
            for pair in h {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), v]) => add(k, v)?,
                    _ => return Err(bad("\"headers\" entries must be [name, value]".into())),
                }
            }
        }
        Some(_) => return Err(bad("\"headers\" must be an object or a list".into())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(body: &str) -> Formats {
        let p = decode(body.as_bytes(), 1 << 20).unwrap();
        (**p[0].payload.grip().unwrap()).clone()
    }

    #[test]
    fn decodes_every_format() {
        let f = formats(
            r#"{"items":[{"channel":"c","id":"2","prev-id":"1","formats":{
                "http-stream":{"content":"hi\n"},
                "http-response":{"code":201,"reason":"Made","headers":[["X-A","1"]],"body-bin":"aGk="},
                "ws-message":{"content-bin":"AAE=","type":"binary"}}}]}"#,
        );
        assert_eq!(f.id.as_deref(), Some("2"));
        assert_eq!(f.prev_id.as_deref(), Some("1"));
        assert_eq!(f.http_stream.unwrap().content.as_ref(), b"hi\n");
        let r = f.http_response.unwrap();
        assert_eq!((r.code, r.body.as_ref()), (201, &b"hi"[..]));
        assert_eq!(r.headers[0].0.as_ref(), "X-A");
        assert_eq!(
            f.ws_message,
            Some(WsMessage::Send {
                kind: WsType::Binary,
                content: Bytes::from_static(&[0, 1])
            })
        );
    }

    #[test]
    fn wire_encoding_round_trips_every_format() {
        for body in [
            r#"{"items":[{"channel":"c","id":"2","prev-id":"1","formats":{
                "http-stream":{"content-bin":"AP8="},
                "http-response":{"code":201,"reason":"Made","headers":[["X-A","1"],["X-A","2"]],"body":"b"},
                "ws-message":{"type":"binary","content":"w"}}}]}"#,
            r#"{"items":[{"channel":"c","no-seq":true,"formats":{
                "http-stream":{"action":"close"},
                "ws-message":{"action":"close","code":4001,"reason":"bye"}}}]}"#,
            r#"{"items":[{"channel":"c","id":"h","formats":{"http-stream":{"action":"hint"}}}]}"#,
        ] {
            let f = formats(body);
            let back = decode_wire(&encode_wire(&f)).unwrap();
            assert_eq!(**back.grip().unwrap(), f);
        }
    }

    #[test]
    fn close_actions() {
        let f = formats(
            r#"{"items":[{"channel":"c","formats":{"http-stream":{"action":"close"},
                "ws-message":{"action":"close","code":4000,"reason":"bye"}}}]}"#,
        );
        assert_eq!(f.http_stream.unwrap().action, Action::Close);
        assert_eq!(
            f.ws_message,
            Some(WsMessage::Close {
                code: Some(4000),
                reason: Bytes::from_static(b"bye")
            })
        );
    }

    #[test]
    fn a_bad_item_names_its_index() {
        let e = decode(
            br#"{"items":[{"channel":"c","formats":{"http-stream":{"content":"a"}}},
                {"channel":"c","formats":{"http-stream":{}}}]}"#,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.starts_with("items[1]: http-stream"),
            "{}",
            e.message
        );
        assert_eq!(e.extra.unwrap()["item"], 1);
        for body in [
            r#"{"items":[]}"#,
            r#"{"items":[{"formats":{"http-stream":{"content":"a"}}}]}"#,
            r#"{"items":[{"channel":"c"}]}"#,
            r#"{"items":[{"channel":"c","formats":{"http-response":{"code":"x","body":""}}}]}"#,
            r#"{"items":[{"channel":"c","formats":{"ws-message":{"type":"nope","content":"a"}}}]}"#,
            r#"{"items":[{"channel":"c","formats":{"http-stream":{"content-bin":"!!"}}}]}"#,
        ] {
            assert!(decode(body.as_bytes(), 1 << 20).is_err(), "{body}");
        }
    }
}
