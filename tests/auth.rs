//! Subscriber auth over real sockets (SPEC §8): every token source on
//! every transport, every refusal, expiry and refresh, the callback with
//! its cache and single-flight, and the Origin allowlist.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::{Pushgate, SseEvent, SseParser, WsClient, within};
use tokio::net::TcpStream;

const SECRET: &str = "test-secret-0123456789abcdef";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn config(extra_routes: &str) -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
realtime:
  longpoll_timeout: 1s
routes:
  - name: jwt
    match: {{ path: "/jwt/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      query_channels: true
      client_publish: true
    auth:
      jwt:
        hs256_secret: "{SECRET}"
        public_keys: ["{KEYS}/rs256.pub.pem", "{KEYS}/es256.pub.pem"]
        issuer: "https://auth.test"
        audience: "pushgate"
  - name: refresh
    match: {{ path: "/refresh/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
    auth:
      jwt: {{ hs256_secret: "{SECRET}", cookie: "sess" }}
      on_expiry: refresh
{extra_routes}"#
    )
}

fn now() -> u64 {
    pushgate::auth::now_unix()
}

fn claims(channels: &[&str]) -> Value {
    json!({"sub": "alice", "exp": now() + 300, "iss": "https://auth.test",
           "aud": "pushgate", "channels": channels, "publish": ["room:*"]})
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/rs256.key.pem")).unwrap())
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/es256.key.pem")).unwrap())
        }
        _ => unreachable!(),
    }
    .unwrap();
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A GET with extra headers; status, headers and the body so far (the
/// body is only read to its end for non-streams).
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Value) {
    let client = support::http_client();
    let mut r = client.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let response = within("response", r.send()).await.unwrap();
    let status = response.status().as_u16();
    let h = response.headers().clone();
    let streaming = h
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let body = if streaming {
        Value::Null
    } else {
        let text = within("body", response.text()).await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, h, body)
}

/// An SSE stream with extra headers: status and parsed events.
async fn sse(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<SseEvent>) {
    let client = support::http_client();
    let mut r = client.get(url).header("accept", "text/event-stream");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let response = within("SSE response", r.send()).await.unwrap();
    let status = response.status().as_u16();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = response.bytes_stream();
    tokio::spawn(async move {
        let mut parser = SseParser::default();
        while let Some(Ok(chunk)) = stream.next().await {
            for e in parser.feed(&chunk) {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    (status, rx)
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<SseEvent>) -> SseEvent {
    within("an SSE event", rx.recv())
        .await
        .expect("stream ended")
}

/// A WebSocket handshake with extra headers.
async fn ws(pg: &Pushgate, path: &str, headers: &[(&str, &str)]) -> WsClient {
    let stream = TcpStream::connect(pg.http).await.unwrap();
    let mut request = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", pg.http.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header(
            "sec-websocket-key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("sec-websocket-version", "13");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let (mut ws, _) = within(
        "WebSocket handshake",
        fastwebsockets::handshake::client(&SpawnExecutor, request, stream),
    )
    .await
    .unwrap();
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    WsClient { ws }
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// The refusal of a WebSocket: an `error` frame with `code`, then 1008.
async fn refused(client: &mut WsClient, code: &str) {
    let frame = client.json().await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert_eq!(client.closed().await, 1008);
}

#[tokio::test]
async fn every_token_source_works_on_every_transport() {
    let pg = Pushgate::start(&config("")).await;
    let token = hs256(&claims(&["news*"]));
    let bearer = format!("Bearer {token}");
    let cookie = format!("other=1; pushgate_token={token}");
    let query = format!("?token={token}");
    let sources: [(&str, Vec<(&str, &str)>); 3] = [
        ("", vec![("authorization", bearer.as_str())]),
        (query.as_str(), vec![]),
        ("", vec![("cookie", cookie.as_str())]),
    ];
    for (i, (query, headers)) in sources.iter().enumerate() {
        // One channel per source, so earlier streams do not count.
        let channel = format!("news{i}");
        let path = format!("/jwt/{channel}{query}");
        // SSE: the stream opens and a message arrives.
        let (status, mut events) = sse(&pg.url(&path), headers).await;
        assert_eq!(status, 200, "SSE {path} {headers:?}");
        pg.wait_subscribers(&channel, 1).await;
        pg.publish(&channel, json!("hi")).await;
        loop {
            let e = next_event(&mut events).await;
            if e.data == "hi" {
                break;
            }
        }
        // Long-poll: answered (empty, after its 1 s timeout).
        let (status, _, body) = get(&pg.url(&path), headers).await;
        assert_eq!(status, 200, "long-poll {path}: {body}");
        assert_eq!(body["messages"], json!([]));
        // WebSocket: subscribed to the route's channel.
        let mut client = ws(&pg, &path, headers).await;
        assert_eq!(
            client.expect("subscribed").await["channel"],
            channel.as_str()
        );
    }
    // WebSocket first frame.
    let mut client = ws(&pg, "/jwt/news", &[]).await;
    client.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(client.expect("subscribed").await["channel"], "news");
    let id = pg.publish("news", json!("after auth")).await;
    let m = client.expect("message").await;
    assert_eq!(
        (m["id"].as_str(), &m["data"]),
        (Some(id.as_str()), &json!("after auth"))
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_accepted() {
    let pg = Pushgate::start(&config("")).await;
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let token = signed(alg, &claims(&["news"]));
        let (status, _, body) = get(
            &pg.url("/jwt/news"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_its_reason_counted() {
    let pg = Pushgate::start(&config("")).await;
    let good = claims(&["news"]);
    let with = |key: &str, v: Value| {
        let mut c = good.clone();
        c[key] = v;
        c
    };
    let rsa_public = std::fs::read(format!("{KEYS}/rs256.pub.pem")).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("bad signature", {
            let t = hs256(&good);
            let (rest, _) = t.rsplit_once('.').unwrap();
            format!("{rest}.{}", b64(&json!("forged")))
        }),
        ("expired", hs256(&with("exp", json!(now() - 60)))),
        ("not yet valid", hs256(&with("nbf", json!(now() + 600)))),
        ("wrong issuer", hs256(&with("iss", json!("https://evil")))),
        ("wrong audience", hs256(&with("aud", json!("other")))),
        (
            "no exp",
            hs256(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            ),
        ),
        (
            // HS256 signed with the RSA public key as the secret.
            "algorithm confusion",
            encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(&rsa_public),
            )
            .unwrap(),
        ),
        ("garbage", "not-a-jwt".into()),
        (
            "unconfigured algorithm",
            encode(
                &Header::new(Algorithm::HS384),
                &good,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
        ),
    ];
    for (what, token) in &cases {
        let bearer = format!("Bearer {token}");
        let (status, headers, body) =
            get(&pg.url("/jwt/news"), &[("authorization", &bearer)]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        // The same on SSE; WebSocket gets the frame and 1008.
        let (status, _) = sse(&pg.url(&format!("/jwt/news?token={token}")), &[]).await;
        assert_eq!(status, 401, "SSE {what}");
        let mut client = ws(&pg, &format!("/jwt/news?token={token}"), &[]).await;
        refused(&mut client, "unauthorized").await;
    }
    // Missing.
    let (status, headers, body) = get(&pg.url("/jwt/news"), &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    // The first source present decides: a bad header is not rescued.
    let good_token = hs256(&good);
    let (status, _, _) = get(
        &pg.url(&format!("/jwt/news?token={good_token}")),
        &[("authorization", "Basic abc")],
    )
    .await;
    assert_eq!(status, 401);
    let metrics = pg.metrics().await;
    for reason in [
        "bad_signature",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "algorithm",
        "malformed",
        "missing",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no auth failure counted for {reason}"
        );
    }
    assert!(
        !metrics.contains(&good_token),
        "a token leaked into metrics"
    );
}

#[tokio::test]
async fn channels_outside_the_claims_are_forbidden() {
    let pg = Pushgate::start(&config("")).await;
    let token = hs256(&claims(&["news", "room:*"]));
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    // The route's own channel, not covered.
    let (status, _, body) = get(&pg.url("/jwt/sports"), &auth).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, _) = sse(&pg.url("/jwt/sports"), &auth).await;
    assert_eq!(status, 403);
    let mut client = ws(&pg, "/jwt/sports", &auth).await;
    refused(&mut client, "forbidden").await;
    // A query channel, not covered; `*` stays within its segment.
    let (status, _, _) = get(&pg.url("/jwt/news?channel=room:a:b"), &auth).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&pg.url("/jwt/news?channel=room:a"), &auth).await;
    assert_eq!(status, 200);
    // WebSocket subscribe and publish frames.
    let mut client = ws(&pg, "/jwt/news", &auth).await;
    client.expect("subscribed").await;
    client
        .send(json!({"type": "subscribe", "channel": "secret"}))
        .await;
    assert_eq!(client.expect("error").await["code"], "forbidden");
    client
        .send(json!({"type": "subscribe", "channel": "room:1"}))
        .await;
    assert_eq!(client.expect("subscribed").await["channel"], "room:1");
    // `publish` claim: room:* only.
    client
        .send(json!({"type": "publish", "channel": "news", "data": 1}))
        .await;
    assert_eq!(client.expect("error").await["code"], "forbidden");
    client
        .send(json!({"type": "publish", "channel": "room:1", "data": 2}))
        .await;
    assert_eq!(client.expect("published").await["channel"], "room:1");
}

#[tokio::test]
async fn a_websocket_without_a_token_must_authenticate_first() {
    let pg = Pushgate::start(&config("")).await;
    // Anything but an auth frame first.
    let mut client = ws(&pg, "/jwt/news", &[]).await;
    client.send(json!({"type": "ping"})).await;
    refused(&mut client, "unauthorized").await;
    // A bad token in the auth frame.
    let mut client = ws(&pg, "/jwt/news", &[]).await;
    client
        .send(json!({"type": "auth", "token": hs256(&json!({"exp": now() - 100}))}))
        .await;
    refused(&mut client, "unauthorized").await;
    // Nothing at all within 5 s.
    let mut client = ws(&pg, "/jwt/news", &[]).await;
    let started = std::time::Instant::now();
    refused(&mut client, "unauthorized").await;
    assert!(started.elapsed() >= Duration::from_secs(4));
}

#[tokio::test]
async fn connections_close_at_expiry_on_every_transport() {
    let pg = Pushgate::start(&config(
        r#"  - name: slowpoll
    match: { path: "/slowpoll/{channel}" }
    realtime:
      channels: ["{channel}"]
      longpoll_timeout: 30s
    auth:
      jwt: { hs256_secret: "test-secret-0123456789abcdef" }
"#,
    ))
    .await;
    let mut short = claims(&["news"]);
    short["exp"] = json!(now() + 2);
    let token = hs256(&short);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let (status, mut events) = sse(&pg.url("/jwt/news"), &auth).await;
    assert_eq!(status, 200);
    let mut client = ws(&pg, "/jwt/news", &auth).await;
    client.expect("subscribed").await;
    let poll = tokio::spawn({
        let url = pg.url("/slowpoll/news");
        let bearer = bearer.clone();
        async move { get(&url, &[("authorization", &bearer)]).await }
    });
    let close = loop {
        let e = next_event(&mut events).await;
        if e.event == "pushgate.close" {
            break e;
        }
    };
    assert_eq!(
        serde_json::from_str::<Value>(&close.data).unwrap()["reason"],
        "expired"
    );
    assert_eq!(client.closed().await, 1008);
    let (status, _, body) = within("the held poll", poll).await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
}

#[tokio::test]
async fn a_websocket_may_refresh_its_token_before_expiry() {
    let pg = Pushgate::start(&config("")).await;
    let token = |exp: u64, sub: &str| hs256(&json!({"sub": sub, "exp": exp, "channels": ["news"]}));
    let cookie = format!("sess={}", token(now() + 2, "alice"));
    let mut client = ws(&pg, "/refresh/news", &[("cookie", &cookie)]).await;
    client.expect("subscribed").await;
    // A token for another subject is refused; the socket stays.
    client
        .send(json!({"type": "refresh", "token": token(now() + 60, "mallory")}))
        .await;
    assert_eq!(client.expect("error").await["code"], "unauthorized");
    let later = now() + 60;
    client
        .send(json!({"type": "refresh", "token": token(later, "alice")}))
        .await;
    let refreshed = client.expect("refreshed").await;
    assert_eq!(refreshed["exp"], later);
    // Past the first token's expiry, still delivering.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = pg.publish("news", json!("still here")).await;
    assert_eq!(client.expect("message").await["id"], id);
    // A route without `on_expiry: refresh` refuses refreshes.
    let bearer = format!("Bearer {}", hs256(&claims(&["news"])));
    let mut client = ws(&pg, "/jwt/news", &[("authorization", &bearer)]).await;
    client.expect("subscribed").await;
    client
        .send(json!({"type": "refresh", "token": hs256(&claims(&["news"]))}))
        .await;
    assert_eq!(client.expect("error").await["code"], "refresh_not_allowed");
}

/// A callback upstream that counts its calls, answering after `delay`.
async fn callback_upstream(calls: Arc<AtomicUsize>, delay: Duration) -> std::net::SocketAddr {
    support::upstream(move |r: Request<Incoming>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let cookie = r
                .headers()
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            let asked: Value = serde_json::from_slice(&body).unwrap();
            tokio::time::sleep(delay).await;
            let (status, answer) = match cookie.as_str() {
                "session=good" => (
                    StatusCode::OK,
                    json!({"channels": ["news"], "publish": [], "expires_in": 300,
                           "sub": "bob", "asked": asked}),
                ),
                "session=banned" => (StatusCode::FORBIDDEN, json!({})),
                _ => (StatusCode::UNAUTHORIZED, json!({})),
            };
            let mut response = Response::new(support::body(answer.to_string()));
            *response.status_mut() = status;
            response
        }
    })
    .await
}

fn callback_config(upstream: std::net::SocketAddr, timeout: &str) -> String {
    config(&format!(
        r#"  - name: cb
    match: {{ path: "/cb/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
    auth:
      callback:
        upstream: authz
        path: /authorize
        forward_headers: [cookie]
        cache: 30s
        timeout: {timeout}
upstreams:
  authz: {{ targets: ["http://{upstream}"] }}
"#
    ))
}

#[tokio::test]
async fn the_callback_grants_refuses_and_fails_closed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = callback_upstream(calls.clone(), Duration::ZERO).await;
    let pg = Pushgate::start(&callback_config(addr, "2s")).await;
    let (status, _, _) = get(&pg.url("/cb/news"), &[("cookie", "session=good")]).await;
    assert_eq!(status, 200);
    let mut client = ws(&pg, "/cb/news", &[("cookie", "session=good")]).await;
    client.expect("subscribed").await;
    // Outside the callback's grant.
    let (status, _, _) = get(&pg.url("/cb/sports"), &[("cookie", "session=good")]).await;
    assert_eq!(status, 403);
    // 401 and 403 are passed on.
    let (status, h, body) = get(&pg.url("/cb/news"), &[("cookie", "session=nope")]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    assert!(h.contains_key("www-authenticate"));
    let (status, _, _) = get(&pg.url("/cb/news"), &[("cookie", "session=banned")]).await;
    assert_eq!(status, 403);
    let mut client = ws(&pg, "/cb/news", &[("cookie", "session=banned")]).await;
    refused(&mut client, "forbidden").await;
    // Cached: the good cookie was asked for once.
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Down: 503, never an open door.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let pg = Pushgate::start(&callback_config(dead, "2s")).await;
    let (status, _, body) = get(&pg.url("/cb/news"), &[("cookie", "session=good")]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("auth_unavailable"))
    );
    // Slow: 503 after the callback timeout.
    let slow = callback_upstream(Arc::new(AtomicUsize::new(0)), Duration::from_secs(5)).await;
    let pg = Pushgate::start(&callback_config(slow, "500ms")).await;
    let (status, _, _) = get(&pg.url("/cb/news"), &[("cookie", "session=good")]).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_reconnect_storm_with_one_cookie_makes_one_callback() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Slow enough that every client asks while the first call is in flight.
    let addr = callback_upstream(calls.clone(), Duration::from_millis(500)).await;
    let pg = Pushgate::start(&callback_config(addr, "5s")).await;
    let clients = 300;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = pg.url("/cb/news");
        tasks.push(tokio::spawn(async move {
            let (status, _) = sse(&url, &[("cookie", "session=good")]).await;
            status
        }));
    }
    for t in tasks {
        assert_eq!(within("a storm client", t).await.unwrap(), 200);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one call for one credential"
    );
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused() {
    let pg = Pushgate::start(&format!(
        "{}realtime:\n  allowed_origins: [\"https://app.example\"]\n",
        config("").replace("realtime:\n  longpoll_timeout: 1s\n", "")
    ))
    .await;
    let bearer = format!("Bearer {}", hs256(&claims(&["news"])));
    let (status, _) = sse(
        &pg.url("/jwt/news"),
        &[
            ("authorization", &bearer),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = sse(
        &pg.url("/jwt/news"),
        &[
            ("authorization", &bearer),
            ("origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // No Origin (not a browser): the handshake is answered.
    assert!(
        support::WsClient::try_connect(pg.http, "/jwt/news")
            .await
            .is_ok()
    );
    let stream = TcpStream::connect(pg.http).await.unwrap();
    let request = Request::builder()
        .uri("/jwt/news")
        .header("host", pg.http.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("origin", "https://evil.example")
        .header(
            "sec-websocket-key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let result = fastwebsockets::handshake::client(&SpawnExecutor, request, stream).await;
    assert!(result.is_err(), "a cross-site WebSocket must be refused");
    let (status, _, body) = get(
        &pg.url("/jwt/news?transport=sse"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("origin_not_allowed"))
    );
}

#[tokio::test]
async fn bad_auth_config_is_reported_at_its_line() {
    let dir = support::temp_dir("auth-config");
    std::fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let route = |auth: &str| {
        format!(
            "listen: {{ http: [\"127.0.0.1:0\"] }}\nupstreams:\n  api: {{ targets: [\"http://127.0.0.1:1\"] }}\nroutes:\n  - name: r\n    match: {{ path: \"/r/{{c}}\" }}\n    realtime: {{ channels: [\"{{c}}\"] }}\n    auth:\n{auth}\n"
        )
    };
    let cases = [
        (
            "      jwt: { public_keys: [missing.pem] }",
            "9:28:",
            "cannot read public key",
        ),
        (
            "      jwt: { public_keys: [garbage.pem] }",
            "9:28:",
            "not an RSA or EC",
        ),
        (
            &format!("      jwt: {{ public_keys: [\"{KEYS}/rs256.key.pem\"] }}"),
            "9:",
            "private key",
        ),
        (
            "      jwt: { hs256_secret: short }",
            "9:",
            "shorter than 16 bytes",
        ),
        ("      jwt: {}", "9:", "has no key"),
        (
            "      callback: { upstream: nope, path: /a }",
            "9:",
            "unknown upstream \"nope\"",
        ),
        (
            "      on_expiry: close",
            "9:",
            "needs jwt, callback or both",
        ),
        (
            "      jwt: { hs256_secret: \"0123456789abcdef\", bogus: 1 }",
            "9:",
            "bogus",
        ),
    ];
    let path = dir.join("pushgate.yaml");
    for (auth, at, wanted) in cases {
        let text = route(auth);
        let e = pushgate::config::parse(&path, &text, &|_| None)
            .unwrap_err()
            .to_string();
        let prefix = format!("{}:{at}", path.display());
        assert!(e.starts_with(&prefix), "{auth}: {e}");
        assert!(e.contains(wanted), "{auth}: {e}");
    }
    // `pushgate check` prints the same.
    std::fs::write(&path, route("      jwt: { public_keys: [missing.pem] }")).unwrap();
    let out = std::process::Command::new(support::binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pushgate.yaml:9:28: cannot read public key"),
        "{stderr}"
    );
}
