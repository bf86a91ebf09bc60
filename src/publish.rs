//! The publish webhook (internal listener, SPEC §4): authorize, decode a
//! single, multi-channel or batch body, validate all of it, then hand it to
//! the backplane. Nothing is published from a request that fails.
//!
//! * `POST /publish` — `{"channel"|"channels", "data"|"data_base64", "event"?, "idempotency_key"?}`
//!   or `{"messages": [...]}`; answers `{"results": [{"channel","id","subscribers"}]}`.

pub mod binary;
pub mod client;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::backplane::Backplane;
use crate::error::{Body, ErrorCode, HttpError};
use crate::hub::message::{ChannelName, EventName, Payload, Publication, Receipt};
use crate::realtime::cursor;

/// Most messages one batch may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

pub struct Publisher {
    pub backplane: Arc<dyn Backplane>,
    pub tokens: Vec<String>,
    pub max_body: usize,
    pub max_message: usize,
    /// `limits.publish_rate`, per token.
    pub limiter: Arc<crate::limits::Limiter>,
}

impl Publisher {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let span = crate::telemetry::publish(request.headers());
        crate::telemetry::respond(span, async {
            match self.publish(request).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            }
        })
        .await
    }

    async fn publish(&self, request: Request<Incoming>) -> Result<Response<Body>, HttpError> {
        let body = self.authorized_body(request).await?;
        let publications = decode(&body, self.max_message)?;
        let receipts = crate::telemetry::backplane(self.backplane.name(), || {
            self.backplane.publish(publications)
        })
        .await
        .map_err(|e| HttpError::new(ErrorCode::BackplaneUnavailable, e.to_string()))?;
        Ok(receipts_response(&receipts))
    }

    /// Checks the token, the JSON content type and `max_body`; returns the
    /// whole body (shared by `POST /publish` and GRIP's `POST /publish/`).
    pub(crate) async fn authorized_body(
        &self,
        request: Request<Incoming>,
    ) -> Result<Bytes, HttpError> {
        self.authorize(request.headers())?;
        self.limiter.publish(request.headers())?;
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                "send Content-Type: application/json",
            ));
        }
        let too_large = || {
            HttpError::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "publish body is larger than limits.max_body ({} bytes)",
                    self.max_body
                ),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let body = match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidBody,
                    "request body could not be read",
                ));
            }
        };
        Ok(body)
    }

    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let valid = presented.is_some_and(|p| {
            // Check every token so timing does not tell which one matched.
            self.tokens.iter().fold(0u8, |ok, t| {
                ok | t.as_bytes().ct_eq(p.as_bytes()).unwrap_u8()
            }) == 1
        });
        if valid {
            Ok(())
        } else {
            let message = if presented.is_some() {
                "invalid token"
            } else {
                "missing Authorization: Bearer token"
            };
            Err(HttpError::new(ErrorCode::Unauthorized, message))
        }
    }
}

/// `WWW-Authenticate` for 401 answers.
pub fn challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"pushgate\"")
}

/// Decodes and validates a publish body into publications, in order.
pub fn decode(body: &[u8], max_message: usize) -> Result<Vec<Publication>, HttpError> {
    let bad = |message: String| HttpError::new(ErrorCode::InvalidRequest, message);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        HttpError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
            .with("line", e.line().into())
            .with("column", e.column().into())
    })?;
    let Value::Object(object) = value else {
        return Err(bad("body must be a JSON object".into()));
    };
    let now = Instant::now();
    let mut out = Vec::new();
    if let Some(messages) = object.get("messages") {
        if object.len() != 1 {
            return Err(bad("a batch body holds only \"messages\"".into()));
        }
        let Value::Array(messages) = messages else {
            return Err(bad("\"messages\" must be an array".into()));
        };
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(bad(format!(
                "\"messages\" must hold 1 to {MAX_BATCH} messages"
            )));
        }
        for (i, m) in messages.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(bad(format!("messages[{i}] must be an object")));
            };
            message(m, max_message, now, &mut out)
                .map_err(|e| prefixed(e, &format!("messages[{i}]: ")))?;
        }
    } else {
        message(&object, max_message, now, &mut out)?;
    }
    Ok(out)
}

/// `{"results":[{"channel":C,"id":ID,"subscribers":N},...]}`, written
/// directly: this is the answer to every publish.
fn receipts_response(receipts: &[Receipt]) -> Response<Body> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(16 + receipts.len() * 64);
    out.push_str(r#"{"results":["#);
    for (i, r) in receipts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Channel names and ids are validated ASCII without quotes or
        // backslashes, but quote them properly anyway.
        let channel = serde_json::to_string(r.channel.as_str()).unwrap_or_default();
        let _ = write!(
            out,
            r#"{{"channel":{channel},"id":"{}","subscribers":{}}}"#,
            cursor::encode_one(r.position),
            r.subscribers
        );
    }
    out.push_str("]}");
    let mut response = Response::new(crate::error::full(out));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn prefixed(mut e: HttpError, prefix: &str) -> HttpError {
    e.message.insert_str(0, prefix);
    e
}

fn message(
    m: &Map<String, Value>,
    max_message: usize,
    now: Instant,
    out: &mut Vec<Publication>,
) -> Result<(), HttpError> {
    let bad = |message: String| HttpError::new(ErrorCode::InvalidRequest, message);
    if let Some(k) = m.keys().find(|k| {
        !matches!(
            k.as_str(),
            "channel" | "channels" | "data" | "data_base64" | "event" | "idempotency_key"
        )
    }) {
        return Err(bad(format!("unknown field {k:?}")));
    }
    let mut channels = Vec::new();
    match (m.get("channel"), m.get("channels")) {
        (Some(Value::String(c)), None) => channels.push(channel(c)?),
        (None, Some(Value::Array(list))) if !list.is_empty() => {
            for c in list {
                let Value::String(c) = c else {
                    return Err(bad("\"channels\" must be an array of strings".into()));
                };
                let name = channel(c)?;
                if !channels.contains(&name) {
                    channels.push(name);
                }
            }
        }
        (Some(_), Some(_)) => return Err(bad("give \"channel\" or \"channels\", not both".into())),
        (Some(_), None) => return Err(bad("\"channel\" must be a string".into())),
        (None, Some(_)) => {
            return Err(bad(
                "\"channels\" must be a non-empty array of strings".into()
            ));
        }
        (None, None) => return Err(bad("missing \"channel\"".into())),
    }
    let content = Content::new(
        body(m.get("data"), m.get("data_base64"))?,
        m.get("event"),
        m.get("idempotency_key"),
        max_message,
    )?;
    out.extend(channels.into_iter().map(|c| content.publication(c, now)));
    Ok(())
}

/// A message's body: `data` (any JSON value) or `data_base64` (bytes,
/// SPEC §12), exactly one of them.
pub fn body(data: Option<&Value>, data_base64: Option<&Value>) -> Result<Payload, HttpError> {
    let bad = |message: String| HttpError::new(ErrorCode::InvalidRequest, message);
    match (data, data_base64) {
        (Some(data), None) => Ok(Payload::from_json(data)),
        (None, Some(Value::String(text))) => match binary::decode(text) {
            Ok(bytes) => Ok(Payload::from_bytes(bytes)),
            Err(e) => Err(bad(format!(
                "\"data_base64\" is not base64 at byte {}: {}",
                e.position, e.what
            ))
            .with("position", e.position.into())),
        },
        (None, Some(_)) => Err(bad("\"data_base64\" must be a base64 string".into())),
        (Some(_), Some(_)) => Err(bad("give \"data\" or \"data_base64\", not both".into())),
        (None, None) => Err(bad("missing \"data\" (or \"data_base64\")".into())),
    }
}

/// A channel name from a client, or `invalid_channel`.
pub fn channel(name: &str) -> Result<ChannelName, HttpError> {
    ChannelName::parse(name).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidChannel,
            format!("invalid channel {name:?}: {e}"),
        )
    })
}

/// What a publication carries besides its channel, validated: the one
/// check for `/publish` and WebSocket client publish alike.
#[derive(Debug, Clone)]
pub struct Content {
    event: Option<EventName>,
    payload: Payload,
    idempotency_key: Option<Arc<str>>,
}

impl Content {
    /// Validates the `data`, `event` and `idempotency_key` fields as a
    /// client sent them; `data` is encoded once here.
    pub fn validate(
        data: Option<&Value>,
        event: Option<&Value>,
        idempotency_key: Option<&Value>,
        max_message: usize,
    ) -> Result<Self, HttpError> {
        let bad = |message: String| HttpError::new(ErrorCode::InvalidRequest, message);
        let data = data.ok_or_else(|| bad("missing \"data\"".into()))?;
        Self::new(
            Payload::from_json(data),
            event,
            idempotency_key,
            max_message,
        )
    }

    /// Validates a body already decoded (`data` or `data_base64`, or a
    /// binary WebSocket message) with the `event` and `idempotency_key`.
    pub fn new(
        payload: Payload,
        event: Option<&Value>,
        idempotency_key: Option<&Value>,
        max_message: usize,
    ) -> Result<Self, HttpError> {
        let bad = |message: String| HttpError::new(ErrorCode::InvalidRequest, message);
        if payload.len() > max_message {
            return Err(HttpError::new(
                ErrorCode::MessageTooLarge,
                format!("message data is larger than realtime.max_message ({max_message} bytes)"),
            ));
        }
        let event = match event {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) if e.starts_with("pushgate.") => {
                return Err(HttpError::new(
                    ErrorCode::InvalidEvent,
                    format!("invalid event {e:?}: names starting with \"pushgate.\" are reserved"),
                ));
            }
            Some(Value::String(e)) => Some(EventName::parse(e).map_err(|err| {
                HttpError::new(
                    ErrorCode::InvalidEvent,
                    format!("invalid event {e:?}: {err}"),
                )
            })?),
            Some(_) => return Err(bad("\"event\" must be a string".into())),
        };
        let idempotency_key = match idempotency_key {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => {
                Some(Arc::from(k.as_str()))
            }
            Some(_) => {
                return Err(bad(format!(
                    "\"idempotency_key\" must be a string of 1 to {MAX_IDEMPOTENCY_KEY} bytes"
                )));
            }
        };
        Ok(Self {
            event,
            payload,
            idempotency_key,
        })
    }

    /// The publication of this content to `channel`.
    pub fn publication(&self, channel: ChannelName, accepted_at: Instant) -> Publication {
        Publication {
            channel,
            event: self.event.clone(),
            payload: self.payload.clone(),
            idempotency_key: self.idempotency_key.clone(),
            accepted_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn err(body: &str) -> HttpError {
        decode(body.as_bytes(), 1024).unwrap_err()
    }

    #[tokio::test]
    async fn receipts_are_the_spec_json() {
        let receipts = [
            Receipt {
                channel: ChannelName::parse("a").unwrap(),
                position: crate::hub::message::Position { epoch: 35, seq: 36 },
                subscribers: 2,
            },
            Receipt {
                channel: ChannelName::parse("b:c").unwrap(),
                position: crate::hub::message::Position { epoch: 1, seq: 1 },
                subscribers: 0,
            },
        ];
        let response = receipts_response(&receipts);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"results": [
                {"channel": "a", "id": "z-10", "subscribers": 2},
                {"channel": "b:c", "id": cursor::encode_one(receipts[1].position), "subscribers": 0},
            ]})
        );
    }

    #[test]
    fn decodes_single_multi_and_batch() {
        assert_eq!(
            decode(br#"{"channel":"a","data":1}"#, 1024).unwrap().len(),
            1
        );
        let multi = decode(
            br#"{"channels":["a","b","a"],"data":"x","event":"e"}"#,
            1024,
        )
        .unwrap();
        assert_eq!(multi.len(), 2, "duplicates collapse");
        let batch = decode(
            br#"{"messages":[{"channel":"a","data":1},{"channel":"b","data":2}]}"#,
            1024,
        )
        .unwrap();
        assert_eq!(batch[1].channel.as_str(), "b");
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let e = err("{\"channel\":\n\"a\",");
        assert_eq!(e.code.as_str(), "invalid_json");
        assert_eq!(e.extra.as_ref().unwrap()["line"], 2);
        assert_eq!(
            err(r#"{"channel":"a b","data":1}"#).code.as_str(),
            "invalid_channel"
        );
        assert_eq!(
            err(r#"{"channel":"a"}"#).message,
            "missing \"data\" (or \"data_base64\")"
        );
        assert_eq!(
            err(r#"{"channel":"a","data":1,"x":1}"#).message,
            "unknown field \"x\""
        );
        assert_eq!(
            err(r#"{"channel":"a","data":1,"event":"a b"}"#)
                .code
                .as_str(),
            "invalid_event"
        );
        assert_eq!(err(r#"[1]"#).code.as_str(), "invalid_request");
        let e = err(r#"{"messages":[{"channel":"a","data":1},{"channel":"!","data":1}]}"#);
        assert!(e.message.starts_with("messages[1]: "), "{}", e.message);
        let e = decode(br#"{"channel":"a","data":"xxxxxxxxxx"}"#, 5).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
