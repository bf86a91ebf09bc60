//! The one place errors become HTTP responses. Status is chosen by who is to
//! blame (pingora's rule): the downstream client 4xx, the upstream 502/504,
//! ourselves 500. Every error body is `{"error":{"code":..,"message":..}}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors carried inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every listener.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Who caused a failure; decides the status class and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Downstream,
    Upstream,
    Internal,
}

/// A failure ready to become a response.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
            headers: Vec::new(),
        }
    }

    /// A failure with no specific status, mapped by blame.
    pub fn blamed(blame: Blame, code: &'static str, message: impl Into<String>) -> Self {
        let status = match blame {
            Blame::Downstream => StatusCode::BAD_REQUEST,
            Blame::Upstream => StatusCode::BAD_GATEWAY,
            Blame::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code, message)
    }

    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn body(&mut self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), std::mem::take(&mut self.message).into());
        if let Some(extra) = self.extra.take() {
            error.extend(extra);
        }
        serde_json::json!({ "error": error })
    }

    pub fn into_response(mut self) -> Response<Body> {
        let body = self.body();
        let mut response = json_response(self.status, &body);
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }

    /// The whole HTTP/1.1 response, for a raw connection that closes
    /// after it.
    pub fn into_http1(mut self) -> Vec<u8> {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
