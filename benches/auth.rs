//! Subscriber auth cost per connect: finding the token, verifying it
//! (HS256, RS256, ES256) and checking the connection's channel against the
//! claims; and pattern matching alone.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use pushgate::auth::{self, Access, PatternSet};
use pushgate::config::{AuthSettings, RouteAction};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const SECRET: &str = "bench-secret-0123456789abcdef";

fn auth_settings() -> Arc<AuthSettings> {
    let yaml = format!(
        "listen: {{ http: [\"127.0.0.1:0\"] }}\nroutes:\n  - name: r\n    match: {{ path: \"/r/{{c}}\" }}\n    realtime: {{ channels: [\"{{c}}\"] }}\n    auth:\n      jwt:\n        hs256_secret: \"{SECRET}\"\n        public_keys: [\"{KEYS}/rs256.pub.pem\", \"{KEYS}/es256.pub.pem\"]\n        issuer: \"https://auth.example\"\n        audience: pushgate\n"
    );
    let config = pushgate::config::parse(Path::new("bench.yaml"), &yaml, &|_| None).unwrap();
    match &config.routes[0].action {
        RouteAction::Realtime(rt) => rt.auth.clone().unwrap(),
        _ => unreachable!(),
    }
}

fn token(alg: Algorithm) -> String {
    let claims = serde_json::json!({
        "sub": "user-1234", "exp": auth::now_unix() + 3600,
        "iss": "https://auth.example", "aud": "pushgate",
        "channels": ["user:1234:*", "chat:**", "news", "team/*/feed"],
        "publish": ["chat:*"],
    });
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/rs256.key.pem")).unwrap())
                .unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/es256.key.pem")).unwrap())
                .unwrap()
        }
        _ => unreachable!(),
    };
    encode(&Header::new(alg), &claims, &key).unwrap()
}

/// What a connect does for auth: read the token, verify it, compile the
/// claims, check the route's channel.
fn connect(settings: &AuthSettings, headers: &HeaderMap) -> bool {
    match auth::decide(settings, headers, None, false) {
        Access::Granted(g) => g.channels.matches("team/blue/feed"),
        _ => false,
    }
}

fn verification(c: &mut Criterion) {
    let settings = auth_settings();
    for (name, alg) in [
        ("auth_connect_hs256", Algorithm::HS256),
        ("auth_connect_rs256", Algorithm::RS256),
        ("auth_connect_es256", Algorithm::ES256),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token(alg))).unwrap(),
        );
        assert!(connect(&settings, &headers), "{name}: the token must pass");
        c.bench_function(name, |b| b.iter(|| connect(&settings, &headers)));
    }
}

fn patterns(c: &mut Criterion) {
    let set = PatternSet::compile(&["user:1234:*", "chat:**", "news", "team/*/feed"]);
    c.bench_function("auth_pattern_match_4_patterns", |b| {
        b.iter(|| set.matches(std::hint::black_box("team/blue/feed")))
    });
    c.bench_function("auth_pattern_miss_4_patterns", |b| {
        b.iter(|| set.matches(std::hint::black_box("user:9999:inbox")))
    });
    c.bench_function("auth_pattern_compile_4_patterns", |b| {
        b.iter(|| PatternSet::compile(&["user:1234:*", "chat:**", "news", "team/*/feed"]))
    });
}

criterion_group!(benches, verification, patterns);
criterion_main!(benches);
