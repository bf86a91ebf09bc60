//! Subscriber auth (SPEC §8): where a request's token comes from, JWT
//! verification with the algorithm fixed by the configured key, the
//! [`Grant`] a token or the callback gives (channel and publish patterns,
//! expiry, subject), and the reasons a request is refused.
//!
//! Tokens are never logged; only the subject (`sub`) and the reason of a
//! refusal are.

pub mod callback;
pub mod pattern;

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header};
use serde::Deserialize;

use crate::config::auth::JwtSettings;
use crate::error::{ErrorCode, HttpError};

pub use self::pattern::PatternSet;

/// How long a WebSocket may wait before sending `{"type":"auth"}`.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// What an authenticated connection may do, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sub: Option<String>,
    /// Channels it may subscribe to.
    pub channels: PatternSet,
    /// Channels it may publish to over WebSocket.
    pub publish: PatternSet,
    /// Unix seconds when the grant ends; `None`: it does not.
    pub expires_at: Option<u64>,
}

impl Grant {
    /// Time left from `now` (unix seconds), zero once expired.
    pub fn remaining(&self, now: u64) -> Option<Duration> {
        self.expires_at
            .map(|at| Duration::from_secs(at.saturating_sub(now)))
    }
}

/// Why a request was refused; the metric label of auth failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Missing,
    Malformed,
    BadSignature,
    /// The header names an algorithm no configured key has (`none`, or
    /// HS256 against an RSA key).
    Algorithm,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// The callback answered 401.
    Rejected,
    /// The callback answered 403, or the grant does not cover a channel.
    Forbidden,
    /// The callback is down, slow or answered nonsense.
    Unavailable,
}

impl Reason {
    /// Every reason: `metrics::Metrics` zeroes `pushgate_auth_failures_total`
    /// for each of them on each route with `auth:`.
    pub const ALL: [Reason; 11] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Algorithm,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Issuer,
        Reason::Audience,
        Reason::Rejected,
        Reason::Forbidden,
        Reason::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Algorithm => "algorithm",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::Rejected => "rejected",
            Reason::Forbidden => "forbidden",
            Reason::Unavailable => "unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        self.code().status()
    }

    /// The error code of the JSON body or WebSocket `error` frame.
    pub fn code(self) -> ErrorCode {
        match self {
            Reason::Forbidden => ErrorCode::Forbidden,
            Reason::Unavailable => ErrorCode::AuthUnavailable,
            _ => ErrorCode::Unauthorized,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reason::Missing => "a token is required",
            Reason::Malformed => "the token is malformed",
            Reason::BadSignature => "the token's signature is invalid",
            Reason::Algorithm => "the token's algorithm is not accepted",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::Issuer => "the token's issuer is not accepted",
            Reason::Audience => "the token's audience is not accepted",
            Reason::Rejected => "the authorization callback refused the request",
            Reason::Forbidden => "not allowed",
            Reason::Unavailable => "authorization is unavailable; try again later",
        }
    }
}

/// A refusal, ready to become a response or an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub message: Cow<'static, str>,
}

impl From<Reason> for Denial {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            message: Cow::Borrowed(reason.message()),
        }
    }
}

impl Denial {
    pub fn forbidden(message: String) -> Self {
        Self {
            reason: Reason::Forbidden,
            message: Cow::Owned(message),
        }
    }

    /// `401` with `WWW-Authenticate: Bearer`, `403` or `503`, JSON body.
    pub fn into_error(self) -> HttpError {
        let challenge = self.www_authenticate();
        let e = HttpError::new(self.reason.code(), self.message);
        match challenge {
            Some(v) => e.with_header(header::WWW_AUTHENTICATE, v),
            None => e,
        }
    }

    /// The extra header of a `401`.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        (self.reason.status() == StatusCode::UNAUTHORIZED).then(|| {
            let error = match self.reason {
                Reason::Missing => return HeaderValue::from_static("Bearer"),
                _ => "Bearer error=\"invalid_token\"",
            };
            HeaderValue::from_static(error)
        })
    }
}

/// Where a token came from; the first source present decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
    Cookie,
}

/// The request's token: `Authorization: Bearer`, else `?token=`, else the
/// cookie. A present but unusable `Authorization` header is an error, not
/// a reason to look further.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
    cookie: &str,
) -> Result<Option<(Source, &'a str)>, Denial> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        return match token {
            Some(t) => Ok(Some((Source::Header, t))),
            None => Err(Denial {
                reason: Reason::Malformed,
                message: Cow::Borrowed("the Authorization header is not \"Bearer <token>\""),
            }),
        };
    }
    if let Some(t) = query_token {
        return Ok(Some((Source::Query, t)));
    }
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=')
                && name == cookie
            {
                return Ok(Some((Source::Cookie, v.trim_matches('"'))));
            }
        }
    }
    Ok(None)
}

/// Where a realtime request stands with its route's auth.
#[derive(Debug, Clone)]
pub enum Access {
    /// The route has no `auth:`.
    Open,
    Granted(std::sync::Arc<Grant>),
    Denied(Denial),
    /// A WebSocket without a token: `{"type":"auth"}` must come first.
    AwaitFrame,
    /// The callback decides (asynchronously, before the session opens).
    Callback,
}

/// Decides what can be decided without IO: the token's source, then the
/// token itself; the callback when there is no token (or no JWT keys).
pub fn decide(
    auth: &crate::config::AuthSettings,
    headers: &HeaderMap,
    query_token: Option<&str>,
    websocket: bool,
) -> Access {
    match find_token(headers, query_token, auth.cookie()) {
        Err(denial) => Access::Denied(denial),
        Ok(Some((_, token))) => match &auth.jwt {
            Some(jwt) => match verify(jwt, token) {
                Ok(grant) => Access::Granted(std::sync::Arc::new(grant)),
                Err(denial) => Access::Denied(denial),
            },
            None => Access::Callback,
        },
        Ok(None) if auth.callback.is_some() => Access::Callback,
        Ok(None) if websocket => Access::AwaitFrame,
        Ok(None) => Access::Denied(Reason::Missing.into()),
    }
}

/// The claims pushgate reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a header did not parse: an algorithm jsonwebtoken does not know
/// (`none` above all) is an algorithm refusal, anything else malformed.
fn header_reason(token: &str) -> Reason {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Alg {
        #[allow(dead_code)]
        alg: String,
    }
    let named = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .is_some_and(|json| serde_json::from_slice::<Alg>(&json).is_ok());
    if named {
        Reason::Algorithm
    } else {
        Reason::Malformed
    }
}

/// Verifies `token` with the configured keys. Only keys whose algorithm
/// is the one the token's header names are tried, each with a validation
/// accepting that algorithm alone, so `alg: none` and HS/RS confusion
/// have no key to succeed with.
pub fn verify(jwt: &JwtSettings, token: &str) -> Result<Grant, Denial> {
    let header = decode_header(token).map_err(|_| header_reason(token))?;
    let mut outcome = Err(Denial::from(Reason::Algorithm));
    for key in jwt.keys.iter().filter(|k| k.algorithm == header.alg) {
        match decode::<Claims>(token, &key.key, &key.validation) {
            Ok(data) => {
                let c = data.claims;
                return Ok(Grant {
                    sub: c.sub,
                    channels: PatternSet::compile(&c.channels),
                    publish: PatternSet::compile(&c.publish),
                    expires_at: Some(c.exp.saturating_add(jwt.leeway.as_secs())),
                });
            }
            Err(e) => {
                let reason = match e.kind() {
                    // Another key of the same algorithm may still match.
                    ErrorKind::InvalidSignature => Reason::BadSignature,
                    ErrorKind::ExpiredSignature => Reason::Expired,
                    ErrorKind::ImmatureSignature => Reason::NotYetValid,
                    ErrorKind::InvalidIssuer => Reason::Issuer,
                    ErrorKind::InvalidAudience => Reason::Audience,
                    ErrorKind::InvalidAlgorithm => Reason::Algorithm,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Reason::Issuer,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Reason::Audience,
                    _ => Reason::Malformed,
                };
                outcome = Err(reason.into());
                if reason != Reason::BadSignature {
                    break;
                }
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::VerifyKey;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn settings() -> JwtSettings {
        JwtSettings {
            keys: vec![VerifyKey::new(
                Algorithm::HS256,
                DecodingKey::from_secret(SECRET),
                Some("https://auth.example"),
                Some("pushgate"),
                Duration::ZERO,
            )]
            .into(),
            issuer: Some("https://auth.example".into()),
            audience: Some("pushgate".into()),
            leeway: Duration::ZERO,
            cookie: "pushgate_token".into(),
        }
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn good() -> serde_json::Value {
        json!({"sub": "u1", "exp": now_unix() + 60, "iss": "https://auth.example",
               "aud": "pushgate", "channels": ["chat:*"], "publish": ["chat:lobby"]})
    }

    fn reason(claims: serde_json::Value) -> Reason {
        verify(&settings(), &token(claims)).unwrap_err().reason
    }

    #[test]
    fn a_good_token_grants_its_patterns() {
        let g = verify(&settings(), &token(good())).unwrap();
        assert_eq!(g.sub.as_deref(), Some("u1"));
        assert!(g.channels.matches("chat:x"));
        assert!(!g.channels.matches("news"));
        assert!(g.publish.matches("chat:lobby"));
        assert!(g.remaining(now_unix()).unwrap() <= Duration::from_secs(60));
    }

    #[test]
    fn every_claim_check_has_its_reason() {
        let mut c = good();
        c["exp"] = json!(now_unix() - 10);
        assert_eq!(reason(c), Reason::Expired);
        let mut c = good();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(reason(c), Reason::Malformed);
        let mut c = good();
        c["nbf"] = json!(now_unix() + 100);
        assert_eq!(reason(c), Reason::NotYetValid);
        let mut c = good();
        c["iss"] = json!("evil");
        assert_eq!(reason(c), Reason::Issuer);
        let mut c = good();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(reason(c), Reason::Issuer);
        let mut c = good();
        c["aud"] = json!("other");
        assert_eq!(reason(c), Reason::Audience);
        let other = encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(b"another secret of enough length!"),
        )
        .unwrap();
        assert_eq!(
            verify(&settings(), &other).unwrap_err().reason,
            Reason::BadSignature
        );
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_refused() {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(good()));
        assert_eq!(
            verify(&settings(), &none).unwrap_err().reason,
            Reason::Algorithm
        );
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            verify(&settings(), &hs512).unwrap_err().reason,
            Reason::Algorithm
        );
        assert_eq!(
            verify(&settings(), "not a token").unwrap_err().reason,
            Reason::Malformed
        );
    }

    #[test]
    fn the_first_source_present_decides() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; pushgate_token=c".parse().unwrap());
        assert_eq!(
            find_token(&h, None, "pushgate_token").unwrap(),
            Some((Source::Cookie, "c"))
        );
        assert_eq!(
            find_token(&h, Some("q"), "pushgate_token").unwrap(),
            Some((Source::Query, "q"))
        );
        h.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("q"), "pushgate_token").unwrap(),
            Some((Source::Header, "h"))
        );
        h.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert!(find_token(&h, Some("q"), "pushgate_token").is_err());
        assert_eq!(find_token(&HeaderMap::new(), None, "x").unwrap(), None);
    }
}
