//! The no-loss test: subscribers on SSE, WebSocket and long polling each
//! drop their connection twice while 1,000 messages are published steadily.
//! After resuming from their last ids, each has every message exactly
//! once, in order.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Pushgate, SseClient, WsClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
      longpoll_timeout: 1s
"#;

const TOTAL: i64 = 1000;
/// Where each subscriber drops its connection.
const DROPS: [usize; 2] = [300, 650];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_gets_every_message_exactly_once_across_two_drops() {
    let pg = Pushgate::start(CONFIG).await;

    let sse = tokio::spawn(sse_subscriber(pg.url("/live/noloss")));
    let ws = tokio::spawn(ws_subscriber(pg.http));
    let poll_start: Value = pg.get_json(pg.url("/live/noloss")).await;
    let longpoll = tokio::spawn(longpoll_subscriber(
        pg.client().clone(),
        pg.url("/live/noloss"),
        poll_start["last_id"].as_str().unwrap().to_owned(),
    ));
    pg.wait_subscribers("noloss", 2).await;

    for n in 0..TOTAL {
        pg.publish("noloss", json!({ "n": n })).await;
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    let expected: Vec<i64> = (0..TOTAL).collect();
    for (name, task) in [("sse", sse), ("websocket", ws), ("longpoll", longpoll)] {
        let got = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap_or_else(|_| panic!("{name} subscriber did not finish"))
            .unwrap();
        assert_eq!(got.len(), expected.len(), "{name}: count");
        assert_eq!(got, expected, "{name}: every message once, in order");
    }
}

async fn sse_subscriber(url: String) -> Vec<i64> {
    let mut got = Vec::new();
    let mut sse = SseClient::connect(&url, None).await;
    let mut drops = DROPS.iter().peekable();
    while (got.len() as i64) < TOTAL {
        let event = sse.next_message().await;
        let v: Value = serde_json::from_str(&event.data).unwrap();
        got.push(v["n"].as_i64().unwrap());
        if drops.peek().is_some_and(|&&d| got.len() == d) {
            drops.next();
            // Drop mid-stream, then reconnect as EventSource does.
            let last = sse.last_id();
            sse.disconnect();
            sse = SseClient::connect(&url, Some(&last)).await;
        }
    }
    got
}

async fn ws_subscriber(addr: std::net::SocketAddr) -> Vec<i64> {
    let mut got = Vec::new();
    let mut last_id = String::new();
    let mut ws = WsClient::connect(addr, "/live/noloss").await;
    let mut drops = DROPS.iter().peekable();
    while (got.len() as i64) < TOTAL {
        let frame = ws.json().await;
        match frame["type"].as_str() {
            Some("subscribed") if last_id.is_empty() => {
                last_id = frame["id"].as_str().unwrap().to_owned()
            }
            Some("message") => {
                got.push(frame["data"]["n"].as_i64().unwrap());
                last_id = frame["id"].as_str().unwrap().to_owned();
            }
            Some("gap") => panic!("websocket: unexpected gap"),
            _ => {}
        }
        if drops.peek().is_some_and(|&&d| got.len() == d) {
            drops.next();
            drop(ws);
            ws = WsClient::connect(addr, &format!("/live/noloss?since={last_id}")).await;
        }
    }
    got
}

async fn longpoll_subscriber(
    client: reqwest::Client,
    url: String,
    mut last_id: String,
) -> Vec<i64> {
    let mut got = Vec::new();
    let mut drops = DROPS.iter().peekable();
    // Bounded: far more polls than 1,000 messages need.
    for _ in 0..5000 {
        if got.len() as i64 >= TOTAL {
            break;
        }
        if drops.peek().is_some_and(|&&d| got.len() >= d) {
            drops.next();
            // A poll abandoned mid-flight (the client's network dropped).
            let abandoned = client.get(format!("{url}?since={last_id}")).send();
            let _ = tokio::time::timeout(Duration::from_millis(1), abandoned).await;
        }
        let answer: Value = client
            .get(format!("{url}?since={last_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer.get("gap").is_none(), "longpoll: unexpected gap");
        for m in answer["messages"].as_array().unwrap() {
            got.push(m["data"]["n"].as_i64().unwrap());
        }
        last_id = answer["last_id"].as_str().unwrap().to_owned();
    }
    got
}
