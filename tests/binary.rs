//! Binary messages end to end (SPEC §12): `data_base64` on `POST /publish`,
//! every transport's form of the same bytes, `?binary=frames` pairing
//! under bursts and lag, client binary publish, resume across text and
//! binary, the size limits and the delivered-bytes counter.

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Pushgate, SseClient, WsClient, WsMessage};

const MAX: usize = 4096;

fn config() -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
realtime: {{ max_message: {MAX} }}
routes:
  - name: live
    match: {{ path: "/live/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      longpoll_timeout: 1s
  - name: talk
    match: {{ path: "/talk/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      query_channels: true
      client_publish: ["{{channel}}", "up:*"]
  - name: drop
    match: {{ path: "/drop/{{channel}}" }}
    realtime: {{ channels: ["{{channel}}"], queue: 16, on_lag: drop_oldest }}
"#
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn all_bytes() -> Vec<u8> {
    (0..=255).collect()
}

async fn publish_bytes(pg: &Pushgate, channel: &str, bytes: &[u8]) -> String {
    let (status, body) = pg
        .publish_raw(
            None,
            &json!({"channel": channel, "data_base64": b64(bytes)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"][0]["id"].as_str().unwrap().to_owned()
}

/// The next message event, text or binary (control events skipped).
async fn next_data(sse: &mut SseClient) -> support::SseEvent {
    loop {
        let e = sse.next().await.expect("stream ended");
        if !e.event.starts_with("pushgate.") || e.event.starts_with("pushgate.binary") {
            return e;
        }
    }
}

/// The sequence number in a one-channel id (`EPOCH-SEQ`, base 36).
fn seq(id: &str) -> u64 {
    u64::from_str_radix(id.rsplit('-').next().unwrap(), 36).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_carries_the_same_bytes() {
    let pg = Pushgate::start(&config()).await;
    let mut json_ws = WsClient::connect(pg.http, "/live/b").await;
    let mut frames_ws = WsClient::connect(pg.http, "/live/b?binary=frames").await;
    json_ws.expect("subscribed").await;
    frames_ws.expect("subscribed").await;
    let mut sse = SseClient::connect(&pg.url("/live/b"), None).await;
    pg.wait_subscribers("b", 3).await;

    let max: Vec<u8> = (0..MAX).map(|i| (i * 7 % 256) as u8).collect();
    let payloads = [all_bytes(), Vec::new(), max];
    let mut ids = Vec::new();
    for p in &payloads {
        ids.push(publish_bytes(&pg, "b", p).await);
    }
    // One byte over max_message: refused, nothing published.
    let (status, body) = pg
        .publish_raw(
            None,
            &json!({"channel": "b", "data_base64": b64(&vec![0; MAX + 1])}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "message_too_large");
    let text_id = pg.publish("b", json!("text after")).await;

    for (p, id) in payloads.iter().zip(&ids) {
        let m = json_ws.expect("message").await;
        assert_eq!(m["id"], *id);
        assert!(m.get("data").is_none(), "{m}");
        assert_eq!(unb64(m["data_base64"].as_str().unwrap()), *p);

        let WsMessage::Text(header) = frames_ws.message().await else {
            panic!("a header first");
        };
        assert_eq!(
            header,
            json!({"type": "message", "channel": "b", "id": id, "binary": p.len()})
        );
        assert_eq!(frames_ws.message().await, WsMessage::Binary(p.clone()));

        let e = next_data(&mut sse).await;
        assert_eq!(
            (e.event.as_str(), e.id.as_str()),
            ("pushgate.binary", id.as_str())
        );
        assert_eq!(unb64(&e.data), *p);
    }
    // Text is unchanged in both WebSocket modes and on SSE.
    assert_eq!(json_ws.expect("message").await["data"], "text after");
    assert_eq!(
        frames_ws.message().await,
        WsMessage::Text(
            json!({"type": "message", "channel": "b", "id": text_id, "data": "text after"})
        )
    );
    let e = next_data(&mut sse).await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", "text after")
    );

    // Long polling from the start: the same bytes in data_base64.
    let answer = pg
        .get_json(pg.url(&format!(
            "/live/b?transport=longpoll&since={}",
            from_start(&ids[0])
        )))
        .await;
    let got: Vec<Vec<u8>> = answer["messages"].as_array().unwrap()[..3]
        .iter()
        .map(|m| {
            assert!(m.get("data").is_none(), "{m}");
            unb64(m["data_base64"].as_str().unwrap())
        })
        .collect();
    assert_eq!(got, payloads);
    assert_eq!(answer["messages"][3]["data"], "text after");

    // The counter counts payload bytes: per message, its bytes or its JSON.
    let metrics = pg.metrics().await;
    let text = "\"text after\"".len();
    let per_subscriber: usize = payloads.iter().map(Vec::len).sum::<usize>() + text;
    let delivered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_message_bytes_delivered_total "))
        .unwrap()
        .trim()
        .parse::<usize>()
        .unwrap();
    // Three live subscribers, and the long poll from the start.
    assert_eq!(delivered, 4 * per_subscriber, "{metrics}");
}

/// The id before a stream's first message, from any id of the stream.
fn from_start(id: &str) -> String {
    format!("{}-0", id.split('-').next().unwrap())
}

#[tokio::test]
async fn malformed_data_base64_is_refused_with_its_position_and_nothing_is_published() {
    let pg = Pushgate::start(&config()).await;
    let cases = [
        (
            json!({"channel": "m", "data": 1, "data_base64": "AA=="}),
            "not both",
        ),
        (json!({"channel": "m", "data_base64": "AAAA*AAA"}), "byte 4"),
        (json!({"channel": "m", "data_base64": "AA AA"}), "byte 2"),
        (json!({"channel": "m", "data_base64": "AAAAA"}), "byte 5"),
        (json!({"channel": "m", "data_base64": 12}), "base64 string"),
        (
            json!({"messages": [{"channel": "m", "data": "ok"}, {"channel": "m", "data_base64": "A==="}]}),
            "messages[1]",
        ),
    ];
    for (body, says) in cases {
        let (status, answer) = pg.publish_raw(None, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message} should say {says}");
    }
    let (_, answer) = pg
        .publish_raw(None, &json!({"channel": "m", "data_base64": "AAAA*AAA"}))
        .await;
    assert_eq!(answer["error"]["position"], 4);
    // Padding is optional.
    let unpadded = publish_bytes_raw(&pg, "m", "AQI").await;
    let padded = publish_bytes_raw(&pg, "m", "AQI=").await;
    let answer = pg
        .get_json(pg.url(&format!(
            "/live/m?transport=longpoll&since={}",
            from_start(&unpadded)
        )))
        .await;
    let messages = answer["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        2,
        "nothing from the refused bodies: {answer}"
    );
    assert_eq!(messages[0]["id"], unpadded);
    assert_eq!(messages[0]["data_base64"], "AQI=");
    assert_eq!(messages[1]["id"], padded);
}

async fn publish_bytes_raw(pg: &Pushgate, channel: &str, text: &str) -> String {
    let (status, body) = pg
        .publish_raw(None, &json!({"channel": channel, "data_base64": text}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_mixed_batch_resumes_in_order_on_every_transport() {
    let pg = Pushgate::start(&config()).await;
    let (status, body) = pg
        .publish_raw(
            None,
            &json!({"messages": [
                {"channel": "r", "data": "t1"},
                {"channel": "r", "data_base64": b64(b"\x00b1"), "event": "chunk"},
                {"channel": "r", "data": {"n": 3}},
                {"channel": "r", "data_base64": ""},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();

    // SSE from the first id.
    let mut sse = SseClient::connect(&pg.url("/live/r"), Some(&ids[0])).await;
    let e = next_data(&mut sse).await;
    assert_eq!(
        (e.event.as_str(), unb64(&e.data)),
        ("pushgate.binary.chunk", b"\x00b1".to_vec())
    );
    let e = next_data(&mut sse).await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", r#"{"n":3}"#)
    );
    let e = next_data(&mut sse).await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str(), e.id.as_str()),
        ("pushgate.binary", "", ids[3].as_str())
    );

    // WebSocket (frames) from the first id.
    let mut ws =
        WsClient::connect(pg.http, &format!("/live/r?binary=frames&since={}", ids[0])).await;
    ws.expect("subscribed").await;
    assert_eq!(
        ws.message().await,
        WsMessage::Text(
            json!({"type": "message", "channel": "r", "id": ids[1], "event": "chunk", "binary": 3})
        )
    );
    assert_eq!(ws.message().await, WsMessage::Binary(b"\x00b1".to_vec()));
    assert_eq!(
        ws.message().await,
        WsMessage::Text(json!({"type": "message", "channel": "r", "id": ids[2], "data": {"n": 3}}))
    );
    assert_eq!(
        ws.message().await,
        WsMessage::Text(json!({"type": "message", "channel": "r", "id": ids[3], "binary": 0}))
    );
    assert_eq!(ws.message().await, WsMessage::Binary(Vec::new()));

    // Long polling from the second id.
    let answer = pg
        .get_json(pg.url(&format!("/live/r?transport=longpoll&since={}", ids[1])))
        .await;
    assert_eq!(
        answer["messages"],
        json!([
            {"channel": "r", "id": ids[2], "data": {"n": 3}},
            {"channel": "r", "id": ids[3], "data_base64": ""},
        ])
    );
}

#[tokio::test]
async fn an_idempotency_key_publishes_bytes_once() {
    let pg = Pushgate::start(&config()).await;
    let body = json!({"channel": "i", "data_base64": b64(&all_bytes()), "idempotency_key": "k"});
    let (_, first) = pg.publish_raw(None, &body).await;
    let (_, again) = pg.publish_raw(None, &body).await;
    assert_eq!(first["results"][0]["id"], again["results"][0]["id"]);
    let id = first["results"][0]["id"].as_str().unwrap();
    let answer = pg
        .get_json(pg.url(&format!(
            "/live/i?transport=longpoll&since={}",
            from_start(id)
        )))
        .await;
    assert_eq!(answer["messages"].as_array().unwrap().len(), 1);
}

/// A header and its bytes are one queued item: a burst that overflows a
/// never-read 16-message queue under `drop_oldest`, then coalesced writes,
/// never separates them, and each pair is the message its id says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_stay_paired_under_bursts_coalescing_and_drop_oldest() {
    let pg = Pushgate::start(&config()).await;
    let mut ws = WsClient::connect(pg.http, "/drop/p?binary=frames").await;
    ws.expect("subscribed").await;
    pg.wait_subscribers("p", 1).await;
    const N: usize = 600;
    // 4 KiB binary messages, every 5th a text one; nothing is read meanwhile.
    for batch in 0..N / 100 {
        let messages: Vec<Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                if n % 5 == 4 {
                    json!({"channel": "p", "data": n})
                } else {
                    let mut bytes = vec![(n % 251) as u8; MAX];
                    bytes[..4].copy_from_slice(&(n as u32).to_be_bytes());
                    json!({"channel": "p", "data_base64": b64(&bytes)})
                }
            })
            .collect();
        let (status, body) = pg.publish_raw(None, &json!({"messages": messages})).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut last = 0;
    let mut gaps = 0;
    while last < N as u64 {
        match ws.message().await {
            WsMessage::Text(f) if f["type"] == "gap" => gaps += 1,
            WsMessage::Text(f) if f["type"] == "message" => {
                let s = seq(f["id"].as_str().unwrap());
                assert!(s > last, "in order: {s} after {last}");
                last = s;
                let n = (s - 1) as usize;
                if n % 5 == 4 {
                    assert_eq!(f["data"], n, "{f}");
                    continue;
                }
                assert_eq!(f["binary"], MAX, "{f}");
                let WsMessage::Binary(bytes) = ws.message().await else {
                    panic!("the bytes of {f} must follow it at once");
                };
                assert_eq!(bytes.len(), MAX);
                assert_eq!(
                    u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
                    n
                );
                assert!(bytes[4..].iter().all(|&b| b == (n % 251) as u8));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(gaps > 0, "the burst overflowed the queue");
}

#[tokio::test]
async fn client_binary_publish_is_allowed_where_the_route_allows_it() {
    let pg = Pushgate::start(&config()).await;
    let mut listener = WsClient::connect(pg.http, "/live/up:x?binary=frames").await;
    listener.expect("subscribed").await;

    // One channel: the bytes go to it.
    let mut one = WsClient::connect(pg.http, "/talk/room").await;
    one.expect("subscribed").await;
    one.send_binary(&all_bytes()).await;
    // Its own message and the answer, in either order.
    let (a, b) = (one.json().await, one.json().await);
    let (published, m) = if a["type"] == "published" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(published["type"], "published");
    assert_eq!(published["channel"], "room");
    assert_eq!(m["type"], "message");
    assert_eq!(m["id"], published["id"]);
    assert!(m.get("event").is_none());
    assert_eq!(unb64(m["data_base64"].as_str().unwrap()), all_bytes());

    // ?publish=C: to C, whatever the connection reads.
    let mut to = WsClient::connect(pg.http, "/talk/room?publish=up:x").await;
    to.expect("subscribed").await;
    to.send_binary(b"\xff\x00").await;
    assert_eq!(to.expect("published").await["channel"], "up:x");
    listener.message().await;
    assert_eq!(
        listener.message().await,
        WsMessage::Binary(b"\xff\x00".to_vec())
    );

    // A channel the connection may not publish to: forbidden.
    let mut bad = WsClient::connect(pg.http, "/talk/room?publish=other").await;
    bad.expect("subscribed").await;
    bad.send_binary(b"x").await;
    assert_eq!(bad.expect("error").await["code"], "forbidden");

    // Two channels and no ?publish=: binary_not_allowed, the socket stays.
    let mut two = WsClient::connect(pg.http, "/talk/room?channel=up:y").await;
    two.expect("subscribed").await;
    two.expect("subscribed").await;
    two.send_binary(b"x").await;
    assert_eq!(two.expect("error").await["code"], "binary_not_allowed");
    two.send(json!({"type": "ping"})).await;
    two.expect("pong").await;

    // A route without client_publish: binary_not_allowed.
    let mut closed = WsClient::connect(pg.http, "/live/room").await;
    closed.expect("subscribed").await;
    closed.send_binary(b"x").await;
    assert_eq!(closed.expect("error").await["code"], "binary_not_allowed");

    // Exactly max_message is published; one byte more closes with 1009.
    one.send_binary(&vec![7; MAX]).await;
    one.expect("published").await;
    one.send_binary(&vec![7; MAX + 1]).await;
    assert_eq!(one.closed().await, 1009);

    // Nothing of the refused ones reached a channel: the listener's next
    // message is the one published after them.
    pg.publish("up:x", json!("after")).await;
    assert_eq!(listener.expect("message").await["data"], "after");
}

#[tokio::test]
async fn bad_binary_query_values_are_refused() {
    let pg = Pushgate::start(&config()).await;
    for path in ["/live/q?binary=raw", "/talk/q?publish=a%20b"] {
        let r = pg
            .client()
            .get(pg.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
}

/// With the defaults (max_message 1 MiB), the default max_body takes a
/// max_message binary payload in base64.
#[tokio::test]
async fn the_default_max_body_fits_a_max_message_binary_payload() {
    let pg = Pushgate::start(
        r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime: { channels: ["{channel}"] }
"#,
    )
    .await;
    let max = vec![0xa5; 1 << 20];
    publish_bytes(&pg, "big", &max).await;
    let (status, body) = pg
        .publish_raw(
            None,
            &json!({"channel": "big", "data_base64": b64(&vec![0; (1 << 20) + 1])}),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "message_too_large");
}
