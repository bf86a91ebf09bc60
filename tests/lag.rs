//! Backpressure (SPEC §3.6): a subscriber that never reads while thousands
//! of messages are published. Each `on_lag` policy, and in every case the
//! fast subscriber gets everything and publishing never waits.

mod support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Pushgate, SseClient, SseEvent, SseParser, WsClient, WsEvent};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: disconnect
    match: { path: "/disconnect/{channel}" }
    realtime: { channels: ["{channel}"], queue: 16, on_lag: disconnect, history: { messages: 4000, max_age: 1m } }
  - name: drop
    match: { path: "/drop/{channel}" }
    realtime: { channels: ["{channel}"], queue: 16, on_lag: drop_oldest }
  - name: latest
    match: { path: "/latest/{channel}" }
    realtime: { channels: ["{channel}"], queue: 16, on_lag: keep_latest }
  - name: fast
    match: { path: "/fast/{channel}" }
    realtime: { channels: ["{channel}"], queue: 100000, history: { messages: 4000, max_age: 1m } }
"#;

/// Enough bytes to fill loopback socket buffers many times over.
const MESSAGES: usize = 2000;
const PAD: usize = 8 * 1024;

/// Publishes MESSAGES padded messages in batches of 100; returns when all
/// were accepted, which proves the publisher never waited on the reader.
async fn burst(pg: &Pushgate, channel: &str) {
    let pad = "x".repeat(PAD);
    for batch in 0..MESSAGES / 100 {
        let messages: Vec<Value> = (0..100)
            .map(|i| json!({"channel": channel, "data": {"n": batch * 100 + i, "pad": pad}}))
            .collect();
        let (status, body) = pg.publish_raw(None, &json!({ "messages": messages })).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// An SSE response whose body is not read until `read_all`.
async fn unread_sse(pg: &Pushgate, path: &str) -> reqwest::Response {
    pg.client()
        .get(pg.url(path))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

/// Reads an SSE body until `stop` says so or the stream ends.
async fn read_events(
    response: reqwest::Response,
    stop: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let mut parser = SseParser::default();
    let mut stream = response.bytes_stream();
    let mut events = Vec::new();
    support::within("the lagging stream", async {
        while let Some(Ok(chunk)) = stream.next().await {
            for e in parser.feed(&chunk) {
                let done = stop(&e);
                events.push(e);
                if done {
                    return;
                }
            }
        }
    })
    .await;
    events
}

fn n(e: &SseEvent) -> Option<u64> {
    serde_json::from_str::<Value>(&e.data).ok()?["n"].as_u64()
}

async fn fast_subscriber_gets_all(fast: &mut SseClient) {
    for expected in 0..MESSAGES as u64 {
        assert_eq!(n(&fast.next_message().await), Some(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_the_slow_sse_stream_with_lagged() {
    let pg = Pushgate::start(CONFIG).await;
    let mut fast = SseClient::connect(&pg.url("/fast/d"), None).await;
    let slow = unread_sse(&pg, "/disconnect/d").await;
    pg.wait_subscribers("d", 2).await;
    burst(&pg, "d").await;
    fast_subscriber_gets_all(&mut fast).await;
    let events = read_events(slow, |e| e.event == "pushgate.close").await;
    let close = events.last().unwrap();
    assert_eq!(close.event, "pushgate.close");
    assert_eq!(
        serde_json::from_str::<Value>(&close.data).unwrap(),
        json!({"reason": "lagged"})
    );
    assert!(events.len() < MESSAGES, "the slow stream was cut short");
    // It resumes from its last id and gets the rest from history.
    let last = events
        .iter()
        .rev()
        .find(|e| n(e).is_some())
        .map(|e| e.id.clone())
        .unwrap();
    let mut resumed = SseClient::connect(&pg.url("/disconnect/d"), Some(&last)).await;
    let next = n(&resumed.next_message().await).unwrap();
    assert_eq!(
        next,
        n(events.iter().rev().find(|e| n(e).is_some()).unwrap()).unwrap() + 1
    );
    let metrics = pg.metrics().await;
    assert!(
        metrics.contains("pushgate_lag_disconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_the_slow_websocket_with_1013() {
    let pg = Pushgate::start(CONFIG).await;
    let mut fast = SseClient::connect(&pg.url("/fast/w"), None).await;
    let mut slow = WsClient::connect(pg.http, "/disconnect/w").await;
    pg.wait_subscribers("w", 2).await;
    burst(&pg, "w").await;
    fast_subscriber_gets_all(&mut fast).await;
    let mut messages = 0;
    let code = loop {
        match slow.read().await {
            WsEvent::Text(v) if v["type"] == "message" => messages += 1,
            WsEvent::Close(code, _) => break code,
            _ => {}
        }
    };
    assert_eq!(code, 1013);
    assert!(messages < MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_skips_with_a_gap_and_keeps_the_stream() {
    let pg = Pushgate::start(CONFIG).await;
    let mut fast = SseClient::connect(&pg.url("/fast/o"), None).await;
    let slow = unread_sse(&pg, "/drop/o").await;
    pg.wait_subscribers("o", 2).await;
    burst(&pg, "o").await;
    fast_subscriber_gets_all(&mut fast).await;
    assert_eq!(
        pg.subscribers("o"),
        2,
        "the slow subscriber is not disconnected"
    );
    let last = MESSAGES as u64 - 1;
    let events = read_events(slow, |e| n(e) == Some(last)).await;
    assert!(
        events.iter().any(|e| e.event == "pushgate.gap"),
        "a gap was signalled"
    );
    let received: Vec<u64> = events.iter().filter_map(n).collect();
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert!(received.len() < MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_latest_delivers_the_newest_message() {
    let pg = Pushgate::start(CONFIG).await;
    let mut fast = SseClient::connect(&pg.url("/fast/k"), None).await;
    let slow = unread_sse(&pg, "/latest/k").await;
    pg.wait_subscribers("k", 2).await;
    burst(&pg, "k").await;
    fast_subscriber_gets_all(&mut fast).await;
    let last = MESSAGES as u64 - 1;
    let events = read_events(slow, |e| n(e) == Some(last)).await;
    assert!(events.iter().any(|e| e.event == "pushgate.gap"));
    assert_eq!(
        events.iter().filter_map(n).next_back(),
        Some(last),
        "the newest message always arrives"
    );
}
