//! `Grip-Sig` (proxy → backend): a fresh HS256 JWT on every request a GRIP
//! route forwards to an upstream with `grip_sig_key`, so the backend knows
//! the request came through the proxy. A client's own `Grip-Sig` is always
//! removed first: a backend must never see one the proxy did not sign.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The header name.
pub const GRIP_SIG: &str = "grip-sig";
/// The issuer claim.
pub const ISSUER: &str = "pushgate";
/// How long a signature is valid (Pushpin uses an hour).
pub const LIFETIME: Duration = Duration::from_secs(3600);

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    exp: u64,
}

/// Signs with one upstream's key.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(key: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(key.as_bytes()),
        }
    }

    /// A fresh token valid for [`LIFETIME`] from `now`.
    pub fn token(&self, now: SystemTime) -> Option<String> {
        let exp = now.duration_since(UNIX_EPOCH).ok()?.as_secs() + LIFETIME.as_secs();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims { iss: ISSUER, exp },
            &self.key,
        )
        .ok()
    }

    /// Replaces any `Grip-Sig` in `headers` with a fresh one.
    pub fn sign(&self, headers: &mut HeaderMap) {
        headers.remove(GRIP_SIG);
        if let Some(value) = self
            .token(SystemTime::now())
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            headers.insert(GRIP_SIG, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn the_token_verifies_with_the_key_and_expires() {
        let signer = Signer::new("secret");
        let mut headers = HeaderMap::new();
        headers.insert(GRIP_SIG, HeaderValue::from_static("forged"));
        signer.sign(&mut headers);
        let token = headers[GRIP_SIG].to_str().unwrap();
        assert_ne!(token, "forged");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["iss"], ISSUER);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                token,
                &DecodingKey::from_secret(b"other"),
                &validation
            )
            .is_err()
        );
    }
}
