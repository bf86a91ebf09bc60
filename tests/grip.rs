//! GRIP compatibility (SPEC §5), driven from Rust: a real hyper origin
//! answering with `Grip-*` headers or instruct bodies, reqwest clients, and
//! publishes to `POST /publish/`. The ecosystem's own client code (Python
//! gripcontrol/pubcontrol, Debian's pushpin-publish) runs in
//! `tests/grip_ecosystem.rs`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::held::{self, Held};
use support::servers::{Kind, Server};
use support::{Pushgate, WAIT, body, upstream, within};

/// Every WebSocket-over-HTTP request the origin saw: (path,
/// Connection-Id, Meta-User, Meta-Evil, Grip-Sig present, body).
type WsLog = Vec<(String, String, String, String, bool, Vec<u8>)>;
static WS_LOG: std::sync::Mutex<WsLog> = std::sync::Mutex::new(Vec::new());

fn ws_log(path: &str) -> WsLog {
    WS_LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == path)
        .cloned()
        .collect()
}

/// A stateless WebSocket-over-HTTP backend (`/ws/CHANNEL`).
async fn ws_origin(request: Request<Incoming>) -> Response<support::UpstreamBody> {
    use http_body_util::BodyExt;
    use pushgate::grip::wsevents::{Event, decode, encode};
    let path = request.uri().path().to_owned();
    let channel = path.trim_start_matches("/ws/").to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, user, evil) = (
        header("connection-id"),
        header("meta-user"),
        header("meta-evil"),
    );
    let signed = request.headers().contains_key("grip-sig");
    let content_type = header("content-type");
    let body = request.into_body().collect().await.unwrap().to_bytes();
    WS_LOG.lock().unwrap().push((
        path.clone(),
        id,
        user.clone(),
        evil.clone(),
        signed,
        body.to_vec(),
    ));
    assert_eq!(content_type, "application/websocket-events");
    if channel == "refuse" {
        return Response::builder()
            .status(403)
            .body(support::body("no"))
            .unwrap();
    }
    let text = |t: &str| Event {
        name: "TEXT".into(),
        content: Some(Bytes::from(t.to_owned())),
    };
    let mut out = Vec::new();
    let mut r = Response::builder().header("Content-Type", "application/websocket-events");
    for e in decode(&body).unwrap() {
        match (&*e.name, e.content.as_deref()) {
            ("OPEN", _) => {
                out.push(Event {
                    name: "OPEN".into(),
                    content: None,
                });
                out.push(text(&format!(
                    "c:{{\"type\":\"subscribe\",\"channel\":\"{channel}\"}}"
                )));
                out.push(text("welcome"));
                r = r.header("Set-Meta-User", "alice");
            }
            ("TEXT", Some(b"whoami")) => out.push(text(&format!("user={user} evil={evil}"))),
            ("TEXT", Some(b"leave")) => {
                out.push(text(&format!(
                    "c:{{\"type\":\"unsubscribe\",\"channel\":\"{channel}\"}}"
                )));
                out.push(text("left"));
            }
            ("TEXT", Some(b"detach")) => {
                out.push(text("c:{\"type\":\"detach\"}"));
                out.push(text("detached"));
            }
            ("TEXT", Some(b"ka")) => {
                r = r.header("Keep-Alive-Interval", "1");
                out.push(text("ka on"));
            }
            ("TEXT", Some(b"bye")) => out.push(Event {
                name: "CLOSE".into(),
                content: Some(Bytes::from_static(&[0x0f, 0xa1])),
            }),
            ("TEXT", Some(b"kick")) => out.push(Event {
                name: "DISCONNECT".into(),
                content: None,
            }),
            ("TEXT", Some(t)) => out.push(text(&format!("echo:{}", String::from_utf8_lossy(t)))),
            ("BINARY", Some(b)) => out.push(Event {
                name: "BINARY".into(),
                content: Some(Bytes::copy_from_slice(b)),
            }),
            _ => {}
        }
    }
    r.body(support::body(encode(&out))).unwrap()
}

/// The origin: each path answers with one kind of GRIP instruction.
async fn origin(request: Request<Incoming>) -> Response<support::UpstreamBody> {
    if request.uri().path().starts_with("/ws/") {
        return ws_origin(request).await;
    }
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let mut r = Response::builder();
    let text = match path.as_str() {
        "/stream" => {
            r = r
                .header("Grip-Hold", "stream")
                .header("Grip-Channel", format!("{query}, other"))
                .header("Grip-Extra", "secret")
                .header("Content-Type", "text/plain")
                .header("X-Origin", "yes");
            "start\n".to_owned()
        }
        "/keepalive" => {
            r = r
                .header("Grip-Hold", "stream")
                .header("Grip-Channel", query)
                .header("Grip-Keep-Alive", "\\x2e\\n; format=cstring; timeout=1");
            String::new()
        }
        "/keepalive64" => {
            r = r
                .header("Grip-Hold", "stream")
                .header("Grip-Channel", query)
                .header("Grip-Keep-Alive", "a2EK; format=base64; timeout=1");
            String::new()
        }
        "/response" => {
            r = r
                .header("Grip-Hold", "response")
                .header("Grip-Channel", query)
                .header("Grip-Timeout", "5")
                .header("Grip-Status", "202 Waited")
                .header("Content-Type", "text/plain");
            "timeout\n".to_owned()
        }
        "/instruct" => {
            r = r.header("Content-Type", "application/grip-instruct");
            json!({
                "hold": {
                    "mode": "stream",
                    "channels": [{"name": query}],
                    "keep-alive": {"content": "ka\n", "timeout": 1}
                },
                "response": {
                    "code": 200,
                    "headers": {"Content-Type": "text/event-stream", "X-Instruct": "1"},
                    "body": "hello\n"
                }
            })
            .to_string()
        }
        "/instruct-response" => {
            r = r.header("Content-Type", "application/grip-instruct");
            json!({
                "hold": {"channels": [{"name": query}], "timeout": 5},
                "response": {"code": 304, "body": ""}
            })
            .to_string()
        }
        "/invalid" => {
            r = r.header("Grip-Hold", "forever").header("Grip-Channel", "a");
            String::new()
        }
        "/plain" => {
            r = r.header("Grip-Other", "x").header("X-Plain", "1");
            "plain".to_owned()
        }
        "/sig" => request
            .headers()
            .get("grip-sig")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default(),
        _ => {
            // "/prev?channel=c&prev=1"
            let mut channel = String::new();
            let mut prev = String::new();
            for kv in query.split('&') {
                match kv.split_once('=') {
                    Some(("channel", v)) => channel = v.to_owned(),
                    Some(("prev", v)) => prev = v.to_owned(),
                    _ => {}
                }
            }
            if path == "/prev-response"
                && let Some(last) = request.headers().get("grip-last")
            {
                // Pushpin's retry of a stale hold: answer with fresh state.
                let text = format!("fresh: {}", last.to_str().unwrap());
                return Response::builder().body(body(text)).unwrap();
            }
            let hold = if path == "/prev-response" {
                "response"
            } else {
                "stream"
            };
            r = r
                .header("Grip-Hold", hold)
                .header("Grip-Channel", format!("{channel}; prev-id={prev}"));
            String::new()
        }
    };
    r.body(body(text)).unwrap()
}

fn config(origin: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams:
  origin:
    targets: ["http://{origin}"]
    grip_sig_key: "sig-secret"
  plain:
    targets: ["http://{origin}"]
routes:
  - name: nogrip
    match: {{ path_prefix: "/nogrip" }}
    upstream: origin
    strip_prefix: "/nogrip"
  - name: unsigned
    match: {{ path_prefix: "/unsigned" }}
    upstream: plain
    strip_prefix: "/unsigned"
    grip: true
  - name: app
    match: {{ path_prefix: "/" }}
    upstream: origin
    grip: true
    ws_events: true
{extra}"#
    )
}

async fn start() -> Pushgate {
    let origin = upstream(origin).await;
    Pushgate::start(&config(origin, "")).await
}

async fn grip_publish(pg: &Pushgate, items: Value) -> (u16, String) {
    let response = pg
        .client()
        .post(pg.internal_url("/publish/"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn publish_ok(pg: &Pushgate, items: Value) {
    let (status, text) = grip_publish(pg, items).await;
    assert_eq!((status, text.as_str()), (200, "Published\n"));
}

/// A held stream, read chunk by chunk.
#[tokio::test]
async fn a_held_stream_gets_http_stream_content_and_closes_on_close() {
    let pg = start().await;
    let mut held = Held::open(&pg, "/stream?news").await;
    assert_eq!(held.status, 200);
    assert_eq!(held.headers["x-origin"], "yes");
    assert_eq!(held.headers["content-type"], "text/plain");
    assert!(
        held.headers
            .keys()
            .all(|k| !k.as_str().starts_with("grip-")),
        "Grip-* headers reach the client: {:?}",
        held.headers
    );
    assert_eq!(held.read_until("start\n").await, "start\n");
    pg.wait_subscribers("news", 1).await;
    pg.wait_subscribers("other", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "news", "formats": {"http-stream": {"content": "one\n"}}}]),
    )
    .await;
    assert_eq!(held.read_until("one\n").await, "one\n");
    // content-bin is base64; a second channel of the hold works too.
    publish_ok(
        &pg,
        json!([{"channel": "other", "formats": {"http-stream": {"content-bin": "dHdvCg=="}}}]),
    )
    .await;
    assert_eq!(held.read_until("two\n").await, "two\n");
    // A native publish does not reach GRIP holds.
    pg.publish("news", json!("native")).await;
    publish_ok(
        &pg,
        json!([{"channel": "news", "formats": {"http-stream": {"action": "close"}}}]),
    )
    .await;
    assert_eq!(held.read_to_end().await, "");
    pg.wait_subscribers("news", 0).await;
}

#[tokio::test]
async fn a_held_response_is_answered_by_http_response() {
    let pg = start().await;
    let waiting = held::waiting_response(&pg, "/response?poll", "poll", 1).await;
    // A stream item does not answer a held response.
    publish_ok(
        &pg,
        json!([{"channel": "poll", "formats": {"http-stream": {"content": "x"}}}]),
    )
    .await;
    publish_ok(
        &pg,
        json!([{"channel": "poll", "id": "1", "formats": {"http-response": {
            "code": 201, "reason": "Made",
            "headers": [["X-Published", "yes"], ["Content-Type", "text/plain"]],
            "body-bin": "cmVzdWx0Cv8A"
        }}}]),
    )
    .await;
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["x-published"], "yes");
    // body-bin is bytes, UTF-8 or not.
    assert_eq!(&response.bytes().await.unwrap()[..], b"result\n\xff\x00");
    pg.wait_subscribers("poll", 0).await;

    // "body" as text, code defaulting to 200, headers as an object.
    let waiting = held::waiting_response(&pg, "/response?poll", "poll", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "poll", "formats": {"http-response": {
            "headers": {"X-Map": "1"}, "body": "text body"
        }}}]),
    )
    .await;
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-map"], "1");
    assert_eq!(response.text().await.unwrap(), "text body");
}

#[tokio::test]
async fn a_held_response_times_out_with_the_origin_answer_and_grip_status() {
    let pg = start().await;
    let started = std::time::Instant::now();
    // Grip-Timeout: 5 (the minimum Pushpin allows).
    let response = tokio::time::timeout(
        WAIT + Duration::from_secs(5),
        pg.client().get(pg.url("/response?quiet")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "answered after {waited:?}"
    );
    assert_eq!(response.status().as_u16(), 202, "Grip-Status sets the code");
    assert!(
        response
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("grip-"))
    );
    assert_eq!(response.text().await.unwrap(), "timeout\n");
}

#[tokio::test]
async fn an_instruct_body_holds_and_keeps_alive() {
    let pg = start().await;
    let mut held = Held::open(&pg, "/instruct?inst").await;
    assert_eq!(held.status, 200);
    assert_eq!(held.headers["x-instruct"], "1");
    assert_eq!(held.headers["content-type"], "text/event-stream");
    assert_eq!(held.read_until("hello\n").await, "hello\n");
    // keep-alive every second while idle.
    assert_eq!(held.read_until("ka\n").await, "ka\n");
    pg.wait_subscribers("inst", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "inst", "http-stream": {"content": "top-level format\n"}}]),
    )
    .await;
    let got = held.read_until("top-level format\n").await;
    assert!(got.ends_with("top-level format\n"), "{got:?}");
}

#[tokio::test]
async fn instruct_response_mode_is_the_default_mode() {
    let pg = start().await;
    let waiting = held::waiting_response(&pg, "/instruct-response?ir", "ir", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "ir", "formats": {"http-response": {"body": "now"}}}]),
    )
    .await;
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "now");
}

#[tokio::test]
async fn grip_keep_alive_header_formats() {
    let pg = start().await;
    let mut held = Held::open(&pg, "/keepalive?ka1").await;
    assert_eq!(held.read_until(".\n").await, ".\n", "cstring format");
    let mut held = Held::open(&pg, "/keepalive64?ka2").await;
    assert_eq!(held.read_until("ka\n").await, "ka\n", "base64 format");
}

#[tokio::test]
async fn prev_id_orders_items_and_a_stale_hold_ends() {
    let pg = start().await;
    // The channel's last id becomes "1".
    publish_ok(
        &pg,
        json!([{"channel": "seq", "id": "1", "formats": {"http-stream": {"content": "1\n"}}}]),
    )
    .await;
    let mut held = Held::open(&pg, "/prev?channel=seq&prev=1").await;
    pg.wait_subscribers("seq", 1).await;
    // 3 arrives before 2: it waits for 2, then both go out in order.
    publish_ok(
        &pg,
        json!([{"channel": "seq", "id": "3", "prev-id": "2", "formats": {"http-stream": {"content": "3\n"}}}]),
    )
    .await;
    publish_ok(
        &pg,
        json!([{"channel": "seq", "id": "2", "prev-id": "1", "formats": {"http-stream": {"content": "2\n"}}}]),
    )
    .await;
    assert_eq!(held.read_until("3\n").await, "2\n3\n");

    // A hold whose prev-id is behind the channel (last id is 3) is stale:
    // the stream ends, so the client asks the origin again.
    let mut stale = Held::open(&pg, "/prev?channel=seq&prev=1").await;
    assert_eq!(stale.read_to_end().await, "");
    // A stale held response asks the origin again, with Grip-Last.
    let response = within(
        "the stale held response",
        pg.client()
            .get(pg.url("/prev-response?channel=seq&prev=2"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.text().await.unwrap(), "fresh: seq; last-id=2");
    // So does one whose next item does not follow it (no-seq skips the
    // sequencer, so the item reaches the hold out of order).
    let waiting = held::waiting_response(&pg, "/prev-response?channel=seq&prev=3", "seq", 2).await;
    publish_ok(
        &pg,
        json!([{"channel": "seq", "id": "6", "prev-id": "5", "no-seq": true,
                "formats": {"http-response": {"body": "out of order"}}}]),
    )
    .await;
    let response = within("the retried held response", waiting).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "fresh: seq; last-id=3");

    // An item that waits for a predecessor that never comes is delivered
    // after 5 s (Pushpin's sequencer), and breaks the chain of the hold.
    publish_ok(
        &pg,
        json!([{"channel": "seq", "id": "9", "prev-id": "8", "formats": {"http-stream": {"content": "9\n"}}}]),
    )
    .await;
    within("the chain to break", async {
        tokio::time::timeout(Duration::from_secs(9), held.read_to_end())
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_malformed_item_is_a_400_naming_it_and_nothing_is_published() {
    let pg = start().await;
    let mut held = Held::started(&pg, "/stream?bad", "start\n", "bad").await;
    let (status, text) = grip_publish(
        &pg,
        json!([
            {"channel": "bad", "formats": {"http-stream": {"content": "must not arrive\n"}}},
            {"channel": "bad", "formats": {"ws-message": {"type": "nope", "content": "x"}}}
        ]),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["item"], 1, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("items[1]: ws-message"),
        "{error}"
    );
    for (items, index) in [
        (json!([{"formats": {"http-stream": {"content": "x"}}}]), 0),
        (json!([{"channel": "bad"}]), 0),
        (
            json!([{"channel": "bad", "formats": {"http-stream": {"content": "ok"}}},
                   {"channel": "bad", "formats": {"http-response": {"code": 99, "body": ""}}}]),
            1,
        ),
        (
            json!([{"channel": "bad", "formats": {"http-stream": {"content-bin": "***"}}}]),
            0,
        ),
        (
            json!([{"channel": "bad", "formats": {"ws-message": {"action": "close", "code": 7}}}]),
            0,
        ),
    ] {
        let (status, text) = grip_publish(&pg, items.clone()).await;
        assert_eq!(status, 400, "{items}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["item"], index, "{items}: {error}");
    }
    let (status, _) = grip_publish(&pg, json!([])).await;
    assert_eq!(status, 400);
    // The next thing the stream sees is this, not the rejected content.
    publish_ok(
        &pg,
        json!([{"channel": "bad", "formats": {"http-stream": {"content": "after\n"}}}]),
    )
    .await;
    assert_eq!(held.read_until("after\n").await, "after\n");
}

#[tokio::test]
async fn ws_message_items_are_accepted_and_json_answers_on_request() {
    let pg = start().await;
    let response = pg
        .client()
        .post(pg.internal_url("/publish/"))
        .header("Accept", "application/json")
        .json(&json!({"items": [{"channel": "ws", "formats": {
            "ws-message": {"content": "hi"},
        }}, {"channel": "ws", "formats": {
            "ws-message": {"content-bin": "AAE=", "type": "binary"},
        }}, {"channel": "ws", "formats": {
            "ws-message": {"action": "close", "code": 4001, "reason": "bye"},
        }}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer, json!({"message": "Published"}));
}

#[tokio::test]
async fn grip_publish_takes_the_publish_tokens() {
    let origin = upstream(origin).await;
    let yaml = config(origin, "").replace(
        r#"internal: { listen: "127.0.0.1:0" }"#,
        r#"internal: { listen: "127.0.0.1:0", tokens: ["tok"] }"#,
    );
    let pg = Pushgate::start(&yaml).await;
    let items = json!({"items": [{"channel": "t", "formats": {"http-stream": {"content": "x"}}}]});
    let url = pg.internal_url("/publish/");
    let response = pg.client().post(&url).json(&items).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = pg
        .client()
        .post(&url)
        .bearer_auth("tok")
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn grip_sig_is_fresh_signed_and_a_client_one_is_removed() {
    let pg = start().await;
    let sig = pg
        .client()
        .get(pg.url("/sig"))
        .header("Grip-Sig", "forged")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_ne!(sig, "forged");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["pushgate"]);
    let claims = jsonwebtoken::decode::<Value>(
        &sig,
        &jsonwebtoken::DecodingKey::from_secret(b"sig-secret"),
        &validation,
    )
    .unwrap_or_else(|e| panic!("Grip-Sig {sig:?} does not verify: {e}"))
    .claims;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims["exp"].as_u64().unwrap() > now);
    // An upstream without a key: the client's Grip-Sig is still removed.
    let sig = pg
        .client()
        .get(pg.url("/unsigned/sig"))
        .header("Grip-Sig", "forged")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sig, "");
}

#[tokio::test]
async fn routes_without_grip_pass_grip_headers_through() {
    let pg = start().await;
    let response = pg
        .client()
        .get(pg.url("/nogrip/stream?x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["grip-hold"], "stream");
    assert_eq!(response.text().await.unwrap(), "start\n");
    assert_eq!(pg.subscribers("x"), 0);
    // On a grip route a non-hold answer streams through, Grip-* stripped.
    let response = pg.client().get(pg.url("/plain")).send().await.unwrap();
    assert!(response.headers().get("grip-other").is_none());
    assert_eq!(response.headers()["x-plain"], "1");
    assert_eq!(response.text().await.unwrap(), "plain");
}

#[tokio::test]
async fn an_invalid_instruction_is_the_upstreams_fault() {
    let pg = start().await;
    let response = pg.client().get(pg.url("/invalid")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "grip_instruct_invalid");
}

#[tokio::test]
async fn shutdown_ends_held_streams_and_answers_held_responses() {
    let mut pg = start().await;
    let mut held = Held::open(&pg, "/stream?sd").await;
    held.read_until("start\n").await;
    let waiting = held::waiting_response(&pg, "/response?sd2", "sd2", 1).await;
    let drained = pg.drain(WAIT).await;
    assert!(drained, "drain did not finish within the grace");
    assert_eq!(held.read_to_end().await, "");
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.text().await.unwrap(), "timeout\n");
}

#[tokio::test]
async fn grip_settings_need_an_upstream_route() {
    let yaml = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime: { channels: ["{channel}"] }
    grip: true
"#;
    let dir = support::temp_dir("gripcfg");
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let error = pushgate::config::parse(&path, yaml, &|_| None).unwrap_err();
    assert!(error.to_string().contains("grip needs upstream"), "{error}");
}

#[tokio::test]
async fn a_held_stream_that_falls_behind_its_queue_ends() {
    let origin = upstream(origin).await;
    let pg = Pushgate::start(&config(
        origin,
        "realtime: { queue: 4, on_lag: disconnect }",
    ))
    .await;
    let mut held = Held::started(&pg, "/stream?lag", "start\n", "lag").await;
    // One batch of ten lands in the queue at once: four fit, then the
    // queue overflows and the stream ends after what it holds.
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"channel": "lag", "formats": {"http-stream": {"content": format!("{i}\n")}}}))
        .collect();
    publish_ok(&pg, Value::Array(items)).await;
    assert_eq!(held.read_to_end().await, "0\n1\n2\n3\n");
    pg.wait_subscribers("lag", 0).await;
}

// === WebSocket-over-HTTP ===

use fastwebsockets::{Frame, OpCode, Payload};
use support::WsClient;

async fn ws_connect(pg: &Pushgate, path: &str) -> WsClient {
    let stream = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    let request = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", pg.http.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header(
            "sec-websocket-key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("sec-websocket-version", "13")
        .header("meta-evil", "forged")
        .header("grip-sig", "forged")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let (mut ws, _) = within(
        "WebSocket handshake",
        fastwebsockets::handshake::client(&support::SpawnExecutor, request, stream),
    )
    .await
    .unwrap();
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    WsClient { ws }
}

async fn frame(client: &mut WsClient) -> (OpCode, Vec<u8>) {
    within("a WebSocket frame", async {
        let f = client.ws.read_frame().await.expect("WebSocket read");
        (f.opcode, f.payload.to_vec())
    })
    .await
}

async fn text(client: &mut WsClient) -> String {
    let (op, payload) = frame(client).await;
    assert_eq!(op, OpCode::Text, "{:?}", String::from_utf8_lossy(&payload));
    String::from_utf8(payload).unwrap()
}

async fn wait_log(path: &str, what: &str, f: impl Fn(&WsLog) -> bool) -> WsLog {
    within(what, async {
        loop {
            let log = ws_log(path);
            if f(&log) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn websocket_over_http_events_meta_and_control_messages() {
    let pg = start().await;
    let mut client = ws_connect(&pg, "/ws/room").await;
    assert_eq!(text(&mut client).await, "welcome", "the OPEN answer's TEXT");
    pg.wait_subscribers("room", 1).await;

    // ws-message publishes reach the socket: text, binary, ping.
    publish_ok(
        &pg,
        json!([{"channel": "room", "formats": {"ws-message": {"content": "pub"}}}]),
    )
    .await;
    assert_eq!(text(&mut client).await, "pub");
    publish_ok(
        &pg,
        json!([{"channel": "room", "formats": {"ws-message": {"content-bin": "AAEC", "type": "binary"}}}]),
    )
    .await;
    assert_eq!(frame(&mut client).await, (OpCode::Binary, vec![0, 1, 2]));
    // content-bin without a type is binary too (Pushpin, gripcontrol).
    publish_ok(
        &pg,
        json!([{"channel": "room", "formats": {"ws-message": {"content-bin": "/wD+"}}}]),
    )
    .await;
    assert_eq!(
        frame(&mut client).await,
        (OpCode::Binary, vec![0xff, 0, 0xfe])
    );
    publish_ok(
        &pg,
        json!([{"channel": "room", "formats": {"ws-message": {"type": "ping"}}}]),
    )
    .await;
    assert_eq!(frame(&mut client).await.0, OpCode::Ping);
    // http-stream items are not for WebSockets.
    publish_ok(
        &pg,
        json!([{"channel": "room", "formats": {"http-stream": {"content": "x"}}}]),
    )
    .await;

    // TEXT and BINARY go to the backend; Set-Meta-User came back as
    // Meta-User, the client's own Meta-Evil never did.
    client.send_text("whoami").await;
    assert_eq!(text(&mut client).await, "user=alice evil=");
    client
        .ws
        .write_frame(Frame::binary(Payload::Owned(vec![9, 8])))
        .await
        .unwrap();
    assert_eq!(frame(&mut client).await, (OpCode::Binary, vec![9, 8]));
    let log = ws_log("/ws/room");
    assert!(log.len() >= 3, "{log:?}");
    assert!(
        log.iter().all(|e| e.1 == log[0].1 && !e.1.is_empty()),
        "one Connection-Id"
    );
    assert!(log.iter().all(|e| e.3.is_empty()), "client Meta-* stripped");
    assert!(log.iter().all(|e| e.4), "every request carries Grip-Sig");
    assert_eq!(log[0].5, b"OPEN\r\n");
    assert_eq!(log[1].5, b"TEXT 6\r\nwhoami\r\n");
    assert_eq!(log[2].5, b"BINARY 2\r\n\x09\x08\r\n");

    // c:unsubscribe
    client.send_text("leave").await;
    assert_eq!(text(&mut client).await, "left");
    pg.wait_subscribers("room", 0).await;

    // The client closes: the backend hears CLOSE with the code.
    client
        .ws
        .write_frame(Frame::close(1000, b""))
        .await
        .unwrap();
    assert_eq!(frame(&mut client).await.0, OpCode::Close);
    wait_log("/ws/room", "the CLOSE event", |log| {
        log.iter().any(|e| e.5 == b"CLOSE 2\r\n\x03\xe8\r\n")
    })
    .await;
}

#[tokio::test]
async fn websocket_over_http_closes_disconnects_and_keep_alives() {
    let pg = start().await;
    // A ws-message close action closes with its code and reason.
    let mut client = ws_connect(&pg, "/ws/closing").await;
    text(&mut client).await;
    pg.wait_subscribers("closing", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "closing", "formats": {"ws-message": {"action": "close", "code": 4002, "reason": "done"}}}]),
    )
    .await;
    let (op, payload) = frame(&mut client).await;
    assert_eq!(op, OpCode::Close);
    assert_eq!(&payload[..2], &4002u16.to_be_bytes());
    assert_eq!(&payload[2..], b"done");

    // The backend's CLOSE event closes with its code.
    let mut client = ws_connect(&pg, "/ws/bye").await;
    text(&mut client).await;
    client.send_text("bye").await;
    let (op, payload) = frame(&mut client).await;
    assert_eq!(
        (op, &payload[..2]),
        (OpCode::Close, &4001u16.to_be_bytes()[..])
    );

    // DISCONNECT drops the connection without a close frame.
    let mut client = ws_connect(&pg, "/ws/kick").await;
    text(&mut client).await;
    client.send_text("kick").await;
    within("the dropped connection", async {
        assert!(client.ws.read_frame().await.is_err());
    })
    .await;

    // A client that goes away: DISCONNECT.
    let mut client = ws_connect(&pg, "/ws/gone").await;
    text(&mut client).await;
    drop(client);
    wait_log("/ws/gone", "the DISCONNECT event", |log| {
        log.iter().any(|e| e.5 == b"DISCONNECT\r\n")
    })
    .await;

    // Keep-Alive-Interval: 1 → requests without events every second.
    let mut client = ws_connect(&pg, "/ws/ka").await;
    text(&mut client).await;
    client.send_text("ka").await;
    assert_eq!(text(&mut client).await, "ka on");
    wait_log("/ws/ka", "a keep-alive request", |log| {
        log.iter().filter(|e| e.5.is_empty()).count() >= 2
    })
    .await;

    // detach: no more requests, publishes still arrive.
    client.send_text("detach").await;
    assert_eq!(text(&mut client).await, "detached");
    let before = ws_log("/ws/ka").len();
    client.send_text("nobody hears this").await;
    publish_ok(
        &pg,
        json!([{"channel": "ka", "formats": {"ws-message": {"content": "still here"}}}]),
    )
    .await;
    assert_eq!(text(&mut client).await, "still here");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ws_log("/ws/ka").len(),
        before,
        "a detached connection sends nothing"
    );
}

#[tokio::test]
async fn websocket_over_http_refused_by_the_backend_and_shutdown() {
    let mut pg = start().await;
    let refused = WsClient::try_connect(pg.http, "/ws/refuse").await;
    assert!(
        refused.is_err(),
        "a backend that answers 403 to OPEN refuses the WebSocket"
    );
    let mut client = ws_connect(&pg, "/ws/sd").await;
    text(&mut client).await;
    pg.wait_subscribers("sd", 1).await;
    assert!(pg.drain(WAIT).await);
    let (op, payload) = frame(&mut client).await;
    assert_eq!(
        (op, &payload[..2]),
        (OpCode::Close, &1001u16.to_be_bytes()[..])
    );
}

#[tokio::test]
async fn a_websocket_over_http_connection_counts_against_max_connections() {
    let origin = upstream(origin).await;
    let pg = Pushgate::start(&config(origin, "limits: { max_connections: 1 }")).await;
    let mut client = ws_connect(&pg, "/ws/slot").await;
    assert_eq!(text(&mut client).await, "welcome");
    // A fresh client: the upgraded socket still holds the only slot.
    let other = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = other.get(pg.url("/plain")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
}

// === GRIP across nodes: a publish on one node reaches holds on another ===

async fn wait_ready(node: &Pushgate) {
    within("the node to be ready", async {
        while !node
            .client()
            .get(node.internal_url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Publishes `items` on `node` until `arrived` sees them: the other node
/// may still be subscribing to the channel on the backplane, and GRIP
/// items have no history to catch up from (as in Pushpin).
async fn publish_until<F: std::future::Future<Output = bool>>(
    node: &Pushgate,
    items: Value,
    mut arrived: impl FnMut() -> F,
) {
    within("the item on the other node", async {
        loop {
            publish_ok(node, items.clone()).await;
            if arrived().await {
                return;
            }
        }
    })
    .await;
}

async fn grip_across_nodes(kind: &str) {
    let server = Server::start(match kind {
        "redis" => Kind::Redis,
        _ => Kind::Nats,
    })
    .await;
    let yaml = server.yaml("g");
    let origin = upstream(origin).await;
    let a = Pushgate::start(&config(origin, &yaml)).await;
    let b = Pushgate::start(&config(origin, &yaml)).await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    // A held stream on B gets an http-stream item published on A.
    let mut held = Held::started(&b, "/stream?news", "start\n", "news").await;
    let got = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<u8>::new()));
    let reader = {
        let got = got.clone();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut held.stream).await {
                got.lock().await.extend_from_slice(&chunk);
            }
        })
    };
    publish_until(
        &a,
        json!([{"channel": "news", "formats": {"http-stream": {"content-bin": "AP8K"}}}]),
        || {
            let got = got.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                !got.lock().await.is_empty()
            }
        },
    )
    .await;
    assert!(got.lock().await.starts_with(&[0x00, 0xff, b'\n']));
    // `action: close` ends it, from A too.
    publish_ok(
        &a,
        json!([{"channel": "news", "formats": {"http-stream": {"action": "close"}}}]),
    )
    .await;
    within("the stream to end", reader).await.unwrap();
    b.wait_subscribers("news", 0).await;

    // A held response on B is answered by an http-response item from A.
    let waiting = held::waiting_response(&b, "/response?poll", "poll", 1).await;
    publish_until(
        &a,
        json!([{"channel": "poll", "formats": {"http-response": {
            "code": 201, "headers": [["X-Published", "yes"]], "body": "result\n"}}}]),
        || {
            let done = waiting.is_finished();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                done
            }
        },
    )
    .await;
    let response = waiting.await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-published"], "yes");
    assert_eq!(response.text().await.unwrap(), "result\n");

    // A WebSocket-over-HTTP connection on B gets ws-message items from A,
    // and a close.
    let mut client = ws_connect(&b, &format!("/ws/{kind}-room")).await;
    assert_eq!(text(&mut client).await, "welcome");
    b.wait_subscribers(&format!("{kind}-room"), 1).await;
    let ws = std::sync::Arc::new(tokio::sync::Mutex::new(client));
    publish_until(
        &a,
        json!([{"channel": format!("{kind}-room"), "formats": {"ws-message": {"content": "from a"}}}]),
        || {
            let ws = ws.clone();
            async move {
                let mut ws = ws.lock().await;
                tokio::time::timeout(Duration::from_millis(300), text(&mut ws))
                    .await
                    .is_ok_and(|t| t == "from a")
            }
        },
    )
    .await;
    publish_ok(
        &a,
        json!([{"channel": format!("{kind}-room"), "formats": {"ws-message": {"action": "close", "code": 4002}}}]),
    )
    .await;
    let mut ws = ws.lock().await;
    loop {
        let (op, payload) = frame(&mut ws).await;
        if op == OpCode::Close {
            assert_eq!(&payload[..2], &4002u16.to_be_bytes());
            break;
        }
        // Repeats of the probe item.
        assert_eq!((op, payload.as_slice()), (OpCode::Text, &b"from a"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grip_items_cross_nodes_on_redis() {
    grip_across_nodes("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grip_items_cross_nodes_on_nats() {
    grip_across_nodes("nats").await;
}

/// Reads from `s` until what was read (all of it) satisfies `done`.
async fn read_raw(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, done: impl Fn(&str) -> bool) {
    use tokio::io::AsyncReadExt;
    within("raw bytes", async {
        let mut buf = [0u8; 4096];
        while !done(&String::from_utf8_lossy(got)) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
}

#[tokio::test]
async fn a_claimed_grip_request_is_framed_by_hand_and_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = start().await;
    // Two pipelined requests: the first is written on the raw socket, the
    // second is served by hyper on the same connection.
    let mut s = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\nGET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_raw(&mut s, &mut got, |t| {
        t.matches("\r\n\r\nplain").count() == 2
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert_eq!(text.matches("http/1.1 200 ok\r\n").count(), 2, "{text}");
    assert_eq!(text.matches("content-length: 5\r\n").count(), 2, "{text}");
    assert!(!text.contains("grip-"), "{text}");

    // An HTTP/1.1 held stream is chunked.
    let mut s = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    s.write_all(b"GET /stream?chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_raw(&mut s, &mut got, |t| t.ends_with("6\r\nstart\n\r\n")).await;
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(
        head.contains("x-origin: yes\r\n") && !head.contains("grip-"),
        "{head}"
    );
    pg.wait_subscribers("chunked", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "chunked", "formats": {"http-stream": {"content": "one\n"}}}]),
    )
    .await;
    read_raw(&mut s, &mut got, |t| t.ends_with("4\r\none\n\r\n")).await;
    publish_ok(
        &pg,
        json!([{"channel": "chunked", "formats": {"http-stream": {"action": "close"}}}]),
    )
    .await;
    read_raw(&mut s, &mut got, |t| t.ends_with("0\r\n\r\n")).await;

    // An HTTP/1.0 one is delimited by the connection's end.
    let mut s = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    s.write_all(b"GET /stream?old HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_raw(&mut s, &mut got, |t| t.ends_with("\r\n\r\nstart\n")).await;
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    pg.wait_subscribers("old", 1).await;
    publish_ok(
        &pg,
        json!([{"channel": "old", "formats": {"http-stream": {"content": "two\n"}}}]),
    )
    .await;
    read_raw(&mut s, &mut got, |t| t.ends_with("start\ntwo\n")).await;
    publish_ok(
        &pg,
        json!([{"channel": "old", "formats": {"http-stream": {"action": "close"}}}]),
    )
    .await;
    let mut rest = Vec::new();
    within("the end of the stream", s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    pg.wait_subscribers("old", 0).await;
}
