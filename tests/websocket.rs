//! WebSocket sessions over real sockets (SPEC §3.4) with a real client.

mod support;

use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;
use support::{Pushgate, WsClient, WsEvent};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
realtime:
  max_message: 1KiB
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
  - name: any
    match: { path: "/any" }
    realtime:
      query_channels: true
  - name: chat
    match: { path: "/chat/{room}" }
    realtime:
      channels: ["chat:{room}"]
      client_publish: ["chat:{room}"]
  - name: open
    match: { path: "/open/{channel}" }
    realtime:
      channels: ["{channel}"]
      client_publish: true
  - name: silent
    match: { path: "/silent/{channel}" }
    realtime:
      channels: ["{channel}"]
      heartbeat: 100ms
      pong_timeout: 300ms
"#;

#[tokio::test]
async fn route_channels_are_subscribed_on_connect_and_messages_follow() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/live/news").await;
    let subscribed = ws.expect("subscribed").await;
    assert_eq!(subscribed["channel"], "news");
    assert!(subscribed["id"].as_str().is_some_and(|id| !id.is_empty()));
    let id = pg.publish("news", json!({"headline": "hi"})).await;
    let message = ws.json().await;
    assert_eq!(
        message,
        json!({"type": "message", "channel": "news", "id": id, "data": {"headline": "hi"}})
    );
    let (_, r) = pg
        .publish_raw(
            None,
            &json!({"channel": "news", "data": "x", "event": "update"}),
        )
        .await;
    let message = ws.json().await;
    assert_eq!(message["event"], "update");
    assert_eq!(message["id"], r["results"][0]["id"]);
}

#[tokio::test]
async fn subscribe_with_since_replays_then_unsubscribe_stops_delivery() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("s", json!(1)).await;
    pg.publish("s", json!(2)).await;
    let mut ws = WsClient::connect(pg.http, "/any").await;
    ws.send(json!({"type": "subscribe", "channel": "s", "since": first}))
        .await;
    let subscribed = ws.expect("subscribed").await;
    assert_eq!(subscribed["id"], first, "position before the backlog");
    assert_eq!(ws.expect("message").await["data"], 2);
    ws.send(json!({"type": "unsubscribe", "channel": "s"}))
        .await;
    assert_eq!(ws.expect("unsubscribed").await["channel"], "s");
    pg.wait_subscribers("s", 0).await;
    pg.publish("s", json!(3)).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(
        ws.json().await,
        json!({"type": "pong"}),
        "no message after unsubscribe"
    );
}

#[tokio::test]
async fn resume_on_connect_with_since_query() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("r", json!("a")).await;
    pg.publish("r", json!("b")).await;
    let mut ws = WsClient::connect(pg.http, &format!("/live/r?since={first}")).await;
    assert_eq!(ws.expect("message").await["data"], "b");
    let mut ws = WsClient::connect(pg.http, "/live/r?since=zzz-1").await;
    ws.expect("subscribed").await;
    assert_eq!(
        ws.json().await,
        json!({"type": "gap", "channel": "r"}),
        "another epoch is a gap"
    );
    assert_eq!(ws.expect("message").await["data"], "a");
}

#[tokio::test]
async fn subscribing_to_an_ungranted_channel_is_forbidden_and_the_socket_stays_open() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/live/mine").await;
    ws.expect("subscribed").await;
    ws.send(json!({"type": "subscribe", "channel": "theirs"}))
        .await;
    let error = ws.json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "forbidden");
    pg.publish("mine", json!("ok")).await;
    assert_eq!(ws.expect("message").await["data"], "ok");
}

#[tokio::test]
async fn chat_room_on_one_socket_each() {
    let pg = Pushgate::start(CONFIG).await;
    let mut alice = WsClient::connect(pg.http, "/chat/lobby").await;
    let mut bob = WsClient::connect(pg.http, "/chat/lobby").await;
    alice.expect("subscribed").await;
    bob.expect("subscribed").await;
    alice
        .send(json!({"type": "publish", "channel": "chat:lobby", "data": {"from": "alice", "text": "hi"}}))
        .await;
    // The sender hears its own message and the `published` answer.
    let (first, second) = (alice.json().await, alice.json().await);
    let (published, echo) = if first["type"] == "published" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(published["type"], "published");
    assert_eq!(published["channel"], "chat:lobby");
    assert_eq!(echo["data"]["from"], "alice");
    let at_bob = bob.expect("message").await;
    assert_eq!(at_bob["data"]["text"], "hi");
    assert_eq!(at_bob["id"], published["id"]);
    alice
        .send(json!({"type": "publish", "channel": "chat:other", "data": 1}))
        .await;
    assert_eq!(
        alice.expect("error").await["code"],
        "forbidden",
        "outside the route's patterns"
    );
}

#[tokio::test]
async fn client_publish_is_refused_where_the_route_does_not_allow_it() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/live/x").await;
    ws.send(json!({"type": "publish", "channel": "x", "data": 1}))
        .await;
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "forbidden");
    let mut open = WsClient::connect(pg.http, "/open/y").await;
    open.send(json!({"type": "publish", "channel": "y", "data": 1}))
        .await;
    open.expect("published").await;
    open.send(json!({"type": "publish", "channel": "z", "data": 1}))
        .await;
    assert_eq!(
        open.expect("error").await["code"],
        "forbidden",
        "only granted channels"
    );
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_the_connection_survives() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/any").await;
    let cases: [(&str, &str); 7] = [
        ("{not json", "invalid_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"subscribe","channel":"a b"}"#, "invalid_channel"),
        (r#"{"type":"subscribe"}"#, "invalid_request"),
        (
            r#"{"type":"subscribe","channel":"a","since":"garbage"}"#,
            "invalid_id",
        ),
        (
            r#"{"type":"unsubscribe","channel":"never"}"#,
            "not_subscribed",
        ),
        (r#"[1,2,3]"#, "invalid_json"),
    ];
    for (frame, code) in cases {
        ws.send_text(frame).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], code, "{frame}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.ws
        .write_frame(Frame::binary(Payload::Owned(vec![1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(ws.expect("error").await["code"], "binary_not_allowed");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.expect("pong").await, json!({"type": "pong"}));
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/any").await;
    ws.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(ws.closed().await, 1009);
}

#[tokio::test]
async fn oversize_fragmented_message_closes_with_1009() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/any").await;
    // Three 600-byte fragments: each under the 1 KiB limit, together over it.
    let chunk = vec![b' '; 600];
    ws.ws
        .write_frame(Frame::new(
            false,
            OpCode::Text,
            None,
            Payload::Owned(chunk.clone()),
        ))
        .await
        .unwrap();
    ws.ws
        .write_frame(Frame::new(
            false,
            OpCode::Continuation,
            None,
            Payload::Owned(chunk.clone()),
        ))
        .await
        .unwrap();
    let _ = ws
        .ws
        .write_frame(Frame::new(
            true,
            OpCode::Continuation,
            None,
            Payload::Owned(chunk),
        ))
        .await;
    assert_eq!(ws.closed().await, 1009);
}

#[tokio::test]
async fn fragmented_message_within_the_limit_is_reassembled() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/any").await;
    for (fin, opcode, part) in [
        (false, OpCode::Text, &br#"{"type":"#[..]),
        (false, OpCode::Continuation, &br#""pi"#[..]),
        (true, OpCode::Continuation, &br#"ng"}"#[..]),
    ] {
        ws.ws
            .write_frame(Frame::new(fin, opcode, None, Payload::Owned(part.to_vec())))
            .await
            .unwrap();
    }
    assert_eq!(ws.expect("pong").await["type"], "pong");
}

#[tokio::test]
async fn server_pings_and_closes_a_peer_that_stops_answering() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/silent/x").await;
    // Never answer: read only, so the server sees no frame from us.
    let mut pings = 0;
    let code = loop {
        match ws.read().await {
            WsEvent::Ping => pings += 1,
            WsEvent::Text(_) => {}
            WsEvent::Close(code, _) => break code,
        }
    };
    assert!(pings >= 1, "protocol pings every heartbeat");
    assert_eq!(code, 1001);
    pg.wait_subscribers("x", 0).await;
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays_connected() {
    let pg = Pushgate::start(CONFIG).await;
    let mut ws = WsClient::connect(pg.http, "/silent/y").await;
    // `json()` answers every ping with a pong.
    ws.expect("subscribed").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(900);
    let mut n = 0;
    while tokio::time::Instant::now() < deadline {
        pg.publish("y", json!(n)).await;
        assert_eq!(ws.expect("message").await["data"], n);
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        pg.subscribers("y"),
        1,
        "still connected after 3 pong timeouts"
    );
}

#[tokio::test]
async fn websocket_upgrade_on_a_reused_keep_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A second request on a connection is upgraded through hyper.
    let pg = Pushgate::start(CONFIG).await;
    let mut tcp = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    tcp.write_all(b"GET /live/k?transport=info HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let answer = support::ws_handshake(&mut tcp, "/live/k").await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
    pg.wait_subscribers("k", 1).await;
}
