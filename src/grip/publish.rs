//! `POST /publish/` (internal listener): Pushpin's publish body
//! `{"items":[{"channel","id","prev-id","formats":{...}}]}` decoded into
//! publications that carry GRIP formats, then handed to the backplane like
//! every native publish. The whole body is validated first: a malformed
//! item is a `400` naming its index, and nothing of the request is
//! published.

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::Value;
use std::time::Instant;

use super::item;
use crate::error::{Body, ErrorCode, HttpError};
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
    Ok(Publication {
        channel,
        event: None,
        payload: Payload::from_grip(item::formats(item)?),
        idempotency_key: None,
        accepted_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grip::item::{decode_wire, encode_wire};
    use crate::hub::grip::{Action, Formats, WsMessage, WsType};
    use bytes::Bytes;

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
            let channel = ChannelName::parse("c").unwrap();
            let wire = encode_wire(&channel, &f);
            let back = decode_wire(&wire).unwrap();
            assert_eq!(**back.grip().unwrap(), f);
            // Still a whole Pushpin item, with its real channel: what a
            // node running the codec before this one decodes.
            let old = decode(
                format!(r#"{{"items":[{}]}}"#, String::from_utf8(wire).unwrap()).as_bytes(),
                1 << 20,
            )
            .unwrap();
            assert_eq!(old[0].channel.as_str(), "c");
            assert_eq!(**old[0].payload.grip().unwrap(), f);
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
