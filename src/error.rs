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

/// Every error code pushgate answers with, on every listener and
/// transport: the `code` of a JSON error body and of a WebSocket `error`
/// frame. Each code has one HTTP status; docs/errors.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // The downstream client's fault (4xx).
    InvalidRequest,
    InvalidJson,
    InvalidChannel,
    InvalidEvent,
    InvalidId,
    InvalidTransport,
    InvalidUpgrade,
    InvalidPath,
    InvalidBody,
    NoChannel,
    UnknownType,
    BinaryNotAllowed,
    NotSubscribed,
    TooManySubscriptions,
    Unauthorized,
    Forbidden,
    NotFound,
    NoRoute,
    MethodNotAllowed,
    TransportNotAllowed,
    BodyTooLarge,
    MessageTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    UpgradeRequired,
    RateLimited,
    // Ours (5xx).
    NoUpstream,
    TooManyConnections,
    BackplaneUnavailable,
    // The upstream's (502/504).
    UpstreamUnreachable,
    UpstreamError,
    UpstreamTimeout,
    ConfigInvalid,
    BindFailed,
    Draining,
    Stopping,
    OriginNotAllowed,
    AuthUnavailable,
    RefreshNotAllowed,
    GripInstructInvalid,
    GripInstructUnreadable,
    WebsocketRefused,
    WebsocketOpenFailed,
}

impl ErrorCode {
    /// Every code, in the order docs/errors.md lists them.
    pub const ALL: [ErrorCode; 43] = [
        Self::InvalidRequest,
        Self::InvalidJson,
        Self::InvalidChannel,
        Self::InvalidEvent,
        Self::InvalidId,
        Self::InvalidTransport,
        Self::InvalidUpgrade,
        Self::InvalidPath,
        Self::InvalidBody,
        Self::NoChannel,
        Self::UnknownType,
        Self::BinaryNotAllowed,
        Self::NotSubscribed,
        Self::TooManySubscriptions,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::NoRoute,
        Self::MethodNotAllowed,
        Self::TransportNotAllowed,
        Self::BodyTooLarge,
        Self::MessageTooLarge,
        Self::UriTooLong,
        Self::UnsupportedMediaType,
        Self::UpgradeRequired,
        Self::RateLimited,
        Self::NoUpstream,
        Self::TooManyConnections,
        Self::BackplaneUnavailable,
        Self::UpstreamUnreachable,
        Self::UpstreamError,
        Self::UpstreamTimeout,
        Self::ConfigInvalid,
        Self::BindFailed,
        Self::Draining,
        Self::Stopping,
        Self::OriginNotAllowed,
        Self::AuthUnavailable,
        Self::RefreshNotAllowed,
        Self::GripInstructInvalid,
        Self::GripInstructUnreadable,
        Self::WebsocketRefused,
        Self::WebsocketOpenFailed,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidJson => "invalid_json",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidId => "invalid_id",
            Self::InvalidTransport => "invalid_transport",
            Self::InvalidUpgrade => "invalid_upgrade",
            Self::InvalidPath => "invalid_path",
            Self::InvalidBody => "invalid_body",
            Self::NoChannel => "no_channel",
            Self::UnknownType => "unknown_type",
            Self::BinaryNotAllowed => "binary_not_allowed",
            Self::NotSubscribed => "not_subscribed",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TransportNotAllowed => "transport_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::MessageTooLarge => "message_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UpgradeRequired => "upgrade_required",
            Self::RateLimited => "rate_limited",
            Self::NoUpstream => "no_upstream",
            Self::TooManyConnections => "too_many_connections",
            Self::BackplaneUnavailable => "backplane_unavailable",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::WebsocketOpenFailed => "websocket_open_failed",
            Self::WebsocketRefused => "websocket_refused",
            Self::GripInstructUnreadable => "grip_instruct_unreadable",
            Self::GripInstructInvalid => "grip_instruct_invalid",
            Self::RefreshNotAllowed => "refresh_not_allowed",
            Self::AuthUnavailable => "auth_unavailable",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Stopping => "stopping",
            Self::Draining => "draining",
            Self::BindFailed => "bind_failed",
            Self::ConfigInvalid => "config_invalid",
        }
    }

    /// The HTTP status this code answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest
            | Self::InvalidJson
            | Self::InvalidChannel
            | Self::InvalidEvent
            | Self::InvalidId
            | Self::InvalidTransport
            | Self::InvalidUpgrade
            | Self::InvalidPath
            | Self::InvalidBody
            | Self::NoChannel
            | Self::UnknownType
            | Self::BinaryNotAllowed
            | Self::NotSubscribed
            | Self::TooManySubscriptions => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TransportNotAllowed => StatusCode::NOT_ACCEPTABLE,
            Self::BodyTooLarge | Self::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NoUpstream => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TooManyConnections | Self::BackplaneUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnreachable | Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::WebsocketOpenFailed => StatusCode::BAD_GATEWAY,
            Self::WebsocketRefused => StatusCode::FORBIDDEN,
            Self::GripInstructUnreadable => StatusCode::BAD_GATEWAY,
            Self::GripInstructInvalid => StatusCode::BAD_GATEWAY,
            Self::RefreshNotAllowed => StatusCode::BAD_REQUEST,
            Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::Stopping => StatusCode::SERVICE_UNAVAILABLE,
            Self::Draining => StatusCode::CONFLICT,
            Self::BindFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ConfigInvalid => StatusCode::BAD_REQUEST,
        }
    }

    /// Who is to blame, from the status class (pingora's rule).
    pub fn blame(self) -> Blame {
        match self.status().as_u16() {
            400..=499 => Blame::Downstream,
            502 | 504 => Blame::Upstream,
            _ => Blame::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure ready to become a response.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra fields merged into the `error` object.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            extra: None,
            headers: Vec::new(),
        }
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
        error.insert("code".into(), self.code.as_str().into());
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

/// `error: cause: cause` for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_blamed_by_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            let status = code.status().as_u16();
            match code.blame() {
                Blame::Downstream => assert!((400..500).contains(&status), "{s}"),
                Blame::Upstream => assert!(status == 502 || status == 504, "{s}"),
                Blame::Internal => assert!(status >= 500, "{s}"),
            }
        }
    }

    #[test]
    fn docs_list_every_code_with_its_status() {
        let doc = include_str!("../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.status().as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }
}
