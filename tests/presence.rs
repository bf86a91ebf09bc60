//! Presence (docs/presence.md): members per channel, join/leave events,
//! `GET /presence/{channel}`, the WebSocket `presence` frame, lifecycle
//! webhooks to a real upstream; and presence across two nodes on a real
//! redis-server and nats-server.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use support::servers::Server;
use support::{Pushgate, SseClient, WAIT, WsClient, body, within};

const SECRET: &str = "presence-secret-0123456789abcdef";

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": pushgate::auth::now_unix() + 300, "channels": ["*"]});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn routes() -> String {
    format!(
        r#"
routes:
  - name: room
    match: {{ path: "/room/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      presence: {{ events: true }}
    auth:
      jwt: {{ hs256_secret: "{SECRET}" }}
  - name: open
    match: {{ path: "/open/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      presence: true
  - name: any
    match: {{ path: "/any" }}
    realtime:
      query_channels: true
    auth:
      jwt: {{ hs256_secret: "{SECRET}" }}
  - name: plain
    match: {{ path: "/plain/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
"#
    )
}

fn single_node() -> String {
    format!(
        "listen: {{ http: [\"127.0.0.1:0\"] }}\ninternal: {{ listen: \"127.0.0.1:0\" }}\n{}",
        routes()
    )
}

async fn presence(pg: &Pushgate, channel: &str, query: &str) -> Value {
    let response = pg
        .client()
        .get(pg.internal_url(&format!("/presence/{channel}{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls `GET /presence/{channel}?count=1` until `check` holds.
async fn wait_presence(pg: &Pushgate, channel: &str, check: impl Fn(&Value) -> bool) -> Value {
    within("presence to settle", async {
        loop {
            let v = presence(pg, channel, "").await;
            if check(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn subs(v: &Value) -> Vec<(String, u64)> {
    v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["sub"].as_str().unwrap().to_owned(),
                c["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The next frame that is a join, leave or message (pings answered).
async fn next_event(ws: &mut WsClient) -> Value {
    loop {
        let v = ws.json().await;
        if matches!(v["type"].as_str(), Some("join" | "leave" | "message")) {
            return v;
        }
    }
}

#[tokio::test]
async fn one_member_per_user_and_join_leave_once_per_user() {
    let pg = Pushgate::start(&single_node()).await;
    let mut bob = WsClient::connect(pg.http, &format!("/room/lobby?token={}", token("bob"))).await;
    bob.expect("subscribed").await;

    // Alice: an SSE tab and a WebSocket tab.
    let mut alice_sse = SseClient::connect(
        &pg.url(&format!("/room/lobby?token={}", token("alice"))),
        None,
    )
    .await;
    assert_eq!(alice_sse.status, 200);
    let join = next_event(&mut bob).await;
    assert_eq!(join["type"], "join");
    assert_eq!(join["channel"], "lobby");
    assert_eq!(join["sub"], "alice");
    assert!(join["id"].is_string(), "{join}");
    let mut alice_ws =
        WsClient::connect(pg.http, &format!("/room/lobby?token={}", token("alice"))).await;
    alice_ws.expect("subscribed").await;
    // An anonymous subscriber on a presence route: counted, not listed.
    let anon = SseClient::connect(&pg.url("/open/lobby"), None).await;
    // A route without presence: not counted at all.
    let _plain = SseClient::connect(&pg.url("/plain/lobby"), None).await;
    pg.wait_subscribers("lobby", 5).await;

    let v = wait_presence(&pg, "lobby", |v| v["anonymous"] == 1 && subs(v).len() == 2).await;
    assert_eq!(subs(&v), [("alice".to_owned(), 2), ("bob".to_owned(), 1)]);
    assert!(v["clients"][0]["since"].as_u64().unwrap() > 1_700_000_000_000);
    let count = presence(&pg, "lobby", "?count=1").await;
    assert_eq!(
        count,
        json!({"channel": "lobby", "clients": 2, "connections": 3, "anonymous": 1})
    );
    // The same answer on the WebSocket.
    bob.send(json!({"type": "presence", "channel": "lobby"}))
        .await;
    let answer = bob.expect("presence").await;
    assert_eq!(subs(&answer), subs(&v));
    assert_eq!(answer["anonymous"], 1);

    // The second tab and the anonymous client come and go: no event.
    let mut third_tab =
        WsClient::connect(pg.http, &format!("/room/lobby?token={}", token("alice"))).await;
    third_tab.expect("subscribed").await;
    drop(third_tab);
    drop(alice_ws);
    anon.disconnect();
    wait_presence(&pg, "lobby", |v| v["anonymous"] == 0 && subs(v)[0].1 == 1).await;
    pg.publish("lobby", json!("marker")).await;
    let next = next_event(&mut bob).await;
    assert_eq!(
        next["type"], "message",
        "no join or leave for a tab: {next}"
    );
    assert_eq!(next["data"], "marker");

    // Carol joins: Alice's SSE stream hears it, and never heard her own.
    let mut carol =
        WsClient::connect(pg.http, &format!("/room/lobby?token={}", token("carol"))).await;
    carol.expect("subscribed").await;
    let first = within("a join on SSE", async {
        loop {
            let e = alice_sse.next().await.expect("stream open");
            if e.event == "pushgate.join" {
                return e;
            }
        }
    })
    .await;
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        data,
        json!({"type": "join", "channel": "lobby", "sub": "carol"})
    );
    assert_eq!(next_event(&mut bob).await["sub"], "carol");

    // Alice's last tab goes: one leave.
    alice_sse.disconnect();
    let leave = next_event(&mut bob).await;
    assert_eq!(
        (&leave["type"], &leave["sub"]),
        (&json!("leave"), &json!("alice"))
    );
    let v = wait_presence(&pg, "lobby", |v| subs(v).len() == 2).await;
    assert_eq!(subs(&v), [("bob".to_owned(), 1), ("carol".to_owned(), 1)]);
}

#[tokio::test]
async fn presence_answers_are_guarded() {
    let pg = Pushgate::start(&single_node()).await;
    // Publishers cannot forge presence events.
    let (status, body) = pg
        .publish_raw(
            None,
            &json!({"channel": "lobby", "event": "pushgate.join", "data": {"sub": "x"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_event");
    // A route without presence refuses the frame.
    let mut plain = WsClient::connect(pg.http, "/plain/lobby").await;
    plain.expect("subscribed").await;
    plain
        .send(json!({"type": "presence", "channel": "lobby"}))
        .await;
    let e = plain.expect("error").await;
    assert_eq!(e["code"], "forbidden");
    // A channel the connection is not granted.
    let mut open = WsClient::connect(pg.http, "/open/lobby").await;
    open.expect("subscribed").await;
    open.send(json!({"type": "presence", "channel": "elsewhere"}))
        .await;
    assert_eq!(open.expect("error").await["code"], "forbidden");
    // A bad channel on the internal endpoint.
    let response = pg
        .client()
        .get(pg.internal_url("/presence/a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Nobody there: an empty answer.
    assert_eq!(
        presence(&pg, "empty", "").await,
        json!({"channel": "empty", "clients": [], "anonymous": 0})
    );
}

#[tokio::test]
async fn presence_takes_the_internal_tokens() {
    let yaml = single_node().replace(
        "internal: { listen: \"127.0.0.1:0\" }",
        "internal: { listen: \"127.0.0.1:0\", tokens: [\"tok\"] }",
    );
    let pg = Pushgate::start(&yaml).await;
    let url = pg.internal_url("/presence/lobby");
    let response = pg.client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = pg
        .client()
        .get(&url)
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// === lifecycle webhooks ===

#[derive(Clone, Default)]
struct Hook {
    /// Each POST's events.
    batches: Arc<Mutex<Vec<Vec<Value>>>>,
    signatures: Arc<Mutex<Vec<String>>>,
    /// Answer 503 while set.
    failing: Arc<AtomicBool>,
}

impl Hook {
    fn events(&self) -> Vec<Value> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    async fn wait_events(&self, n: usize) -> Vec<Value> {
        within(&format!("{n} webhook events"), async {
            loop {
                let events = self.events();
                if events.len() >= n {
                    return events;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// A real upstream on `listener` recording the hook POSTs.
fn serve_hook(listener: tokio::net::TcpListener, hook: Hook) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hook = hook.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let hook = hook.clone();
                    async move {
                        assert_eq!(r.uri().path(), "/realtime/events");
                        let sig = r
                            .headers()
                            .get("grip-sig")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let bytes = r.into_body().collect().await.unwrap().to_bytes();
                        if hook.failing.load(Ordering::SeqCst) {
                            let mut response = Response::new(body("down"));
                            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                        let v: Value = serde_json::from_slice(&bytes).unwrap();
                        hook.batches
                            .lock()
                            .unwrap()
                            .push(v["events"].as_array().unwrap().clone());
                        hook.signatures.lock().unwrap().extend(sig);
                        Ok(Response::new(body("ok")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn hooks_config(upstream: std::net::SocketAddr, queue: usize) -> String {
    format!(
        r#"listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams:
  api:
    targets: ["http://{upstream}"]
    connect_timeout: 1s
    timeout: 2s
    grip_sig_key: "hook-key"
hooks:
  upstream: api
  path: /realtime/events
  events: [connect, subscribe, unsubscribe, disconnect]
  queue: {queue}
{}"#,
        routes()
    )
}

/// A metric's value (0 when absent).
async fn metric(pg: &Pushgate, name: &str) -> u64 {
    pg.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn wait_retry(pg: &Pushgate) {
    within("a webhook retry", async {
        while metric(pg, "pushgate_hook_retries_total").await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn webhooks_report_the_lifecycle_signed_and_batched() {
    let hook = Hook::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    serve_hook(listener, hook.clone());
    let pg = Pushgate::start(&hooks_config(upstream, 1000)).await;

    let mut ws = WsClient::connect(
        pg.http,
        &format!("/any?channel=lobby&token={}", token("alice")),
    )
    .await;
    ws.expect("subscribed").await;
    ws.send(json!({"type": "subscribe", "channel": "news"}))
        .await;
    ws.expect("subscribed").await;
    ws.send(json!({"type": "unsubscribe", "channel": "news"}))
        .await;
    ws.expect("unsubscribed").await;
    let sse = SseClient::connect(&pg.url("/plain/lobby"), None).await;
    pg.wait_subscribers("lobby", 2).await;
    ws.ws
        .write_frame(fastwebsockets::Frame::close(1000, b""))
        .await
        .unwrap();
    drop(ws);
    sse.disconnect();
    // ws: connect, subscribe lobby, subscribe news, unsubscribe news,
    // unsubscribe lobby, disconnect; sse: connect, subscribe, unsubscribe,
    // disconnect.
    let events = hook.wait_events(10).await;
    let ws_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["transport"] == "websocket")
        .collect();
    let kinds: Vec<(&str, Option<&str>, Option<&str>)> = ws_events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["channel"].as_str(),
                e["reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("connect", None, None),
            ("subscribe", Some("lobby"), None),
            ("subscribe", Some("news"), None),
            ("unsubscribe", Some("news"), Some("client")),
            ("unsubscribe", Some("lobby"), Some("client")),
            ("disconnect", None, Some("client")),
        ]
    );
    let id = ws_events[0]["connection_id"].as_str().unwrap();
    assert!(
        ws_events
            .iter()
            .all(|e| e["connection_id"] == id && e["sub"] == "alice")
    );
    assert!(ws_events[0]["at"].as_u64().unwrap() > 1_700_000_000_000);
    let sse_events: Vec<&Value> = events.iter().filter(|e| e["transport"] == "sse").collect();
    assert_eq!(sse_events.len(), 4);
    assert!(sse_events.iter().all(|e| e["sub"].is_null()));
    assert_ne!(sse_events[0]["connection_id"], id);
    // Signed with the upstream's key.
    let signatures = hook.signatures.lock().unwrap().clone();
    assert_eq!(signatures.len(), hook.batches.lock().unwrap().len());
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["pushgate"]);
    for sig in &signatures {
        jsonwebtoken::decode::<Value>(sig, &DecodingKey::from_secret(b"hook-key"), &validation)
            .expect("a valid Grip-Sig");
    }
}

#[tokio::test]
async fn webhooks_retry_until_the_upstream_is_back() {
    let hook = Hook::default();
    hook.failing.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    serve_hook(listener, hook.clone());
    let pg = Pushgate::start(&hooks_config(upstream, 1000)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = WsClient::connect(pg.http, "/plain/lobby").await;
        ws.expect("subscribed").await;
        clients.push(ws);
    }
    wait_retry(&pg).await;
    assert!(hook.events().is_empty());
    hook.failing.store(false, Ordering::SeqCst);
    let events = hook.wait_events(6).await;
    assert_eq!(events.len(), 6, "each event once");
    let batches = hook.batches.lock().unwrap().len();
    assert!(batches < 6, "{batches} POSTs for 6 events: batched");
    assert!(hook.batches.lock().unwrap().iter().all(|b| b.len() <= 100));
}

#[tokio::test]
async fn a_down_upstream_costs_connections_nothing() {
    // Nothing listens on the upstream's port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    drop(listener);
    let pg = Pushgate::start(&hooks_config(upstream, 2)).await;
    // The first batch goes out and fails; then the queue (2) fills.
    let mut first = WsClient::connect(pg.http, "/plain/lobby").await;
    first.expect("subscribed").await;
    wait_retry(&pg).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = WsClient::connect(pg.http, "/plain/lobby").await;
        ws.expect("subscribed").await;
        clients.push(ws);
    }
    let sse = SseClient::connect(&pg.url("/plain/lobby"), None).await;
    assert_eq!(sse.status, 200);
    pg.wait_subscribers("lobby", 22).await;
    let dropped = metric(
        &pg,
        "pushgate_hook_events_dropped_total{reason=\"queue_full\"}",
    )
    .await;
    assert!(
        dropped >= 38,
        "42 events, at most 2 queued (+ the batch in flight): {dropped}"
    );
    // Still serving: a message reaches every client.
    pg.publish("lobby", json!("still here")).await;
    for ws in &mut clients {
        assert_eq!(ws.expect("message").await["data"], "still here");
    }
    // And the upstream coming back gets what was kept.
    let hook = Hook::default();
    let listener = tokio::net::TcpListener::bind(upstream).await.unwrap();
    serve_hook(listener, hook.clone());
    let events = within("the kept events", hook.wait_events(2)).await;
    assert!(events.len() <= 4, "{events:?}");
    let _ = WAIT;
}

// === many nodes ===

fn cluster_config(backplane: &str) -> String {
    format!(
        "{}\npresence: {{ refresh: 300ms }}\n{backplane}\n",
        single_node()
    )
}

async fn wait_ready(internal: std::net::SocketAddr) {
    let client = support::http_client();
    within("the node to be ready", async {
        loop {
            let ready = client
                .get(format!("http://{internal}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The real binary with `yaml`, its stderr drained; (child, http, internal).
async fn spawn_binary(
    yaml: &str,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let path = support::config_file("node", yaml);
    let (child, http, internal, mut lines) = support::spawn_binary(&path, &[]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http, internal)
}

/// Two nodes in-process and a third as the real binary, SIGKILLed.
async fn two_nodes_are_one_presence(backplane: &str) {
    let yaml = cluster_config(backplane);
    let a = Pushgate::start(&yaml).await;
    let b = Pushgate::start(&yaml).await;
    wait_ready(a.internal).await;
    wait_ready(b.internal).await;

    let mut bob = WsClient::connect(a.http, &format!("/room/lobby?token={}", token("bob"))).await;
    bob.expect("subscribed").await;
    let mut alice_a =
        WsClient::connect(a.http, &format!("/room/lobby?token={}", token("alice"))).await;
    alice_a.expect("subscribed").await;
    let join = next_event(&mut bob).await;
    assert_eq!(
        (&join["type"], &join["sub"]),
        (&json!("join"), &json!("alice"))
    );
    // Alice's second tab, on the other node: one member, no second join.
    let mut alice_b =
        WsClient::connect(b.http, &format!("/room/lobby?token={}", token("alice"))).await;
    alice_b.expect("subscribed").await;
    let _anon = SseClient::connect(&b.url("/open/lobby"), None).await;
    for node in [&a, &b] {
        let v = wait_presence(node, "lobby", |v| {
            subs(v) == [("alice".to_owned(), 2), ("bob".to_owned(), 1)] && v["anonymous"] == 1
        })
        .await;
        assert!(v["clients"][0]["since"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // Closing one of her tabs sends no leave.
    drop(alice_a);
    wait_presence(&b, "lobby", |v| {
        subs(v).first() == Some(&("alice".to_owned(), 1))
    })
    .await;
    b.publish("lobby", json!("marker")).await;
    let next = next_event(&mut bob).await;
    assert_eq!(
        next["data"], "marker",
        "no leave while a tab is open: {next}"
    );
    // Her last tab: one leave, on the other node's subscriber.
    drop(alice_b);
    let leave = next_event(&mut bob).await;
    assert_eq!(
        (&leave["type"], &leave["sub"]),
        (&json!("leave"), &json!("alice"))
    );

    // A node killed with SIGKILL: its members leave within the TTL.
    let (mut child, http, internal) = spawn_binary(&yaml).await;
    wait_ready(internal).await;
    let mut carol = WsClient::connect(http, &format!("/room/lobby?token={}", token("carol"))).await;
    carol.expect("subscribed").await;
    let join = next_event(&mut bob).await;
    assert_eq!(
        (&join["type"], &join["sub"]),
        (&json!("join"), &json!("carol"))
    );
    wait_presence(&a, "lobby", |v| subs(v).iter().any(|(s, _)| s == "carol")).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let leave = next_event(&mut bob).await;
    assert_eq!(
        (&leave["type"], &leave["sub"]),
        (&json!("leave"), &json!("carol"))
    );
    let v = presence(&a, "lobby", "").await;
    assert_eq!(subs(&v), [("bob".to_owned(), 1)]);
}

#[tokio::test]
async fn redis_two_nodes_are_one_presence_and_a_killed_node_leaves() {
    let redis = Server::redis().await;
    two_nodes_are_one_presence(&format!(
        "backplane: {{ type: redis, url: \"redis://127.0.0.1:{}/0\" }}",
        redis.port
    ))
    .await;
}

#[tokio::test]
async fn nats_two_nodes_are_one_presence_and_a_killed_node_leaves() {
    let nats = Server::nats().await;
    two_nodes_are_one_presence(&format!(
        "backplane: {{ type: nats, url: \"nats://127.0.0.1:{}\" }}",
        nats.port
    ))
    .await;
}
