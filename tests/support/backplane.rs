//! The multi-node scenarios every distributed backplane must pass
//! (SPEC §10), written once: `backplane_redis.rs` and `backplane_nats.rs`
//! start their server and run each one against its URL. The backplane
//! type is the URL's scheme (`redis://`, `nats://`).

use std::time::Duration;

use serde_json::{Value, json};

use super::{Pushgate, SseClient, WsClient, within};

pub fn config(url: &str) -> String {
    let kind = url.split("://").next().unwrap_or_default();
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
backplane: {{ type: {kind}, url: "{url}", prefix: "t" }}
routes:
  - name: live
    match: {{ path: "/live/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      heartbeat: 1s
      longpoll_timeout: 2s
  - name: any
    match: {{ path: "/any" }}
    realtime:
      query_channels: true
"#
    )
}

pub async fn nodes(url: &str, n: usize) -> Vec<Pushgate> {
    let mut out = Vec::new();
    for _ in 0..n {
        let node = Pushgate::start(&config(url)).await;
        wait_ready(&node, true).await;
        out.push(node);
    }
    out
}

pub async fn ready(node: &Pushgate) -> bool {
    node.client()
        .get(node.internal_url("/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

pub async fn wait_ready(node: &Pushgate, want: bool) {
    within(&format!("readyz to be {want}"), async {
        while ready(node).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

pub async fn publish(node: &Pushgate, body: Value) -> (u16, Value) {
    node.publish_raw(None, &body).await
}

/// SSE events until `n` messages have arrived; gaps are kept as "GAP".
pub async fn sse_collect(sse: &mut SseClient, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.iter().filter(|(e, _)| e != "GAP").count() < n {
        let e = sse.next().await.expect("stream ended");
        match e.event.as_str() {
            "pushgate.gap" => out.push(("GAP".to_owned(), String::new())),
            "pushgate.close" => panic!("stream closed: {}", e.data),
            _ => out.push((e.data, e.id)),
        }
    }
    out
}

pub fn has_gap(events: &[(String, String)]) -> bool {
    events.iter().any(|(e, _)| e == "GAP")
}

pub fn datas(events: &[(String, String)]) -> Vec<String> {
    events
        .iter()
        .filter(|(e, _)| e != "GAP")
        .map(|(d, _)| d.clone())
        .collect()
}

pub async fn three_nodes_deliver_every_message_once_in_one_order(url: &str) {
    let nodes = nodes(url, 3).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        subscribers.push(SseClient::connect(&node.url("/live/room"), None).await);
    }
    for node in &nodes {
        node.wait_subscribers("room", 1).await;
    }
    // Three publishers at once, one per node.
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let client = node.client().clone();
        let url = node.internal_url("/publish");
        tasks.push(tokio::spawn(async move {
            for k in 0..20 {
                let r = client
                    .post(&url)
                    .json(&json!({"channel": "room", "data": format!("n{i}-{k}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut orders = Vec::new();
    for sse in &mut subscribers {
        let events = within("60 messages", sse_collect(sse, 60)).await;
        assert!(!has_gap(&events), "no gap: {events:?}");
        let data = datas(&events);
        let mut unique = data.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 60, "each message once");
        // Per publisher, its own order is kept.
        for i in 0..3 {
            let mine: Vec<_> = data
                .iter()
                .filter(|d| d.starts_with(&format!("n{i}-")))
                .cloned()
                .collect();
            let want: Vec<_> = (0..20).map(|k| format!("n{i}-{k}")).collect();
            assert_eq!(mine, want);
        }
        orders.push(data);
    }
    assert_eq!(orders[0], orders[1], "one order on every node");
    assert_eq!(orders[1], orders[2], "one order on every node");
}

pub async fn an_id_from_one_node_resumes_on_another_on_every_transport(url: &str) {
    let nodes = nodes(url, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let first = a.publish("doc", json!("one")).await;
    let second = b.publish("doc", json!("two")).await;
    let third = a.publish("doc", json!("three")).await;

    // SSE on B with Last-Event-ID from A.
    let mut sse = SseClient::connect(&b.url("/live/doc"), Some(&first)).await;
    let events = sse_collect(&mut sse, 2).await;
    assert!(!has_gap(&events), "{events:?}");
    assert_eq!(datas(&events), ["two", "three"]);
    assert_eq!(events[0].1, second);
    assert_eq!(events[1].1, third);

    // Long-poll on C with since.
    let answer: Value = c.get_json(c.url(&format!("/live/doc?since={first}"))).await;
    assert!(answer.get("gap").is_none(), "{answer}");
    let got: Vec<_> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(got, [json!("two"), json!("three")]);
    assert_eq!(answer["last_id"], third);

    // WebSocket on C: subscribe with since.
    let mut ws = WsClient::connect(c.http, "/any").await;
    ws.send(json!({"type": "subscribe", "channel": "doc", "since": first}))
        .await;
    let subscribed = ws.expect("subscribed").await;
    assert_eq!(subscribed["id"], first);
    let m = ws.expect("message").await;
    assert_eq!(
        (m["data"].clone(), m["id"].clone()),
        (json!("two"), json!(second))
    );
    let m = ws.expect("message").await;
    assert_eq!(m["data"], "three");

    // And live messages keep coming, from any node.
    c.publish("doc", json!("four")).await;
    assert_eq!(ws.expect("message").await["data"], "four");
    assert_eq!(sse.next_message().await.data, "four");
}

pub async fn an_idempotency_key_publishes_once_across_nodes(url: &str) {
    let nodes = nodes(url, 2).await;
    let mut sse = SseClient::connect(&nodes[1].url("/live/pay"), None).await;
    nodes[1].wait_subscribers("pay", 1).await;
    let body = json!({"channel": "pay", "data": "charged", "idempotency_key": "order-7"});
    let (s1, r1) = publish(&nodes[0], body.clone()).await;
    let (s2, r2) = publish(&nodes[1], body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        r1["results"][0]["id"], r2["results"][0]["id"],
        "original receipt"
    );
    nodes[0].publish("pay", json!("next")).await;
    let events = sse_collect(&mut sse, 2).await;
    assert_eq!(datas(&events), ["charged", "next"], "published once");
}

pub async fn a_restarted_node_loses_nothing(url: &str) {
    let a = Pushgate::start(&config(url)).await;
    wait_ready(&a, true).await;
    let mut b = Pushgate::start(&config(url)).await;
    wait_ready(&b, true).await;
    let mut sse = SseClient::connect(&b.url("/live/n"), None).await;
    b.wait_subscribers("n", 1).await;
    a.publish("n", json!(1)).await;
    assert_eq!(sse.next_message().await.data, "1");
    let last = sse.last_id();
    drop(sse);
    assert!(b.drain(Duration::from_secs(5)).await);
    for i in 2..=5 {
        a.publish("n", json!(i)).await;
    }
    let b2 = Pushgate::start(&config(url)).await;
    wait_ready(&b2, true).await;
    let mut sse = SseClient::connect(&b2.url("/live/n"), Some(&last)).await;
    let events = sse_collect(&mut sse, 4).await;
    assert!(!has_gap(&events));
    assert_eq!(datas(&events), ["2", "3", "4", "5"]);
}

pub async fn a_new_sse_stream_learns_its_real_id_before_any_message(url: &str) {
    let nodes = nodes(url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.publish("q", json!("old")).await;
    let sse = SseClient::connect(&b.url("/live/q"), None).await;
    b.wait_subscribers("q", 1).await;
    within("the confirmed id", async {
        while sse.last_id().is_empty() || sse.last_id().starts_with("0-") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let id = sse.last_id();
    sse.disconnect();
    a.publish("q", json!("new")).await;
    let mut sse = SseClient::connect(&b.url("/live/q"), Some(&id)).await;
    let events = sse_collect(&mut sse, 1).await;
    assert_eq!(
        events,
        [("new".to_owned(), events[0].1.clone())],
        "no gap, no old message"
    );
}

/// SPEC §12: bytes published on one node are the same bytes on another,
/// live and from history, with text in between and an idempotency key.
pub async fn binary_messages_cross_nodes_byte_for_byte(url: &str) {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let nodes = nodes(url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ws = WsClient::connect(b.http, "/live/bin?binary=frames").await;
    ws.expect("subscribed").await;
    b.wait_subscribers("bin", 1).await;
    let all: Vec<u8> = (0..=255).collect();
    let body = json!({"messages": [
        {"channel": "bin", "data_base64": b64(&all), "idempotency_key": "k"},
        {"channel": "bin", "data": "text"},
        {"channel": "bin", "data_base64": "", "event": "empty"},
    ]});
    let (status, receipts) = publish(a, body).await;
    assert_eq!(status, 200, "{receipts}");
    let ids: Vec<Value> = (0..3)
        .map(|i| receipts["results"][i]["id"].clone())
        .collect();
    // The key again from the other node: the original receipt, no message.
    let (_, again) = publish(
        b,
        json!({"channel": "bin", "data_base64": b64(&all), "idempotency_key": "k"}),
    )
    .await;
    assert_eq!(again["results"][0]["id"], ids[0]);

    use super::WsMessage::{Binary, Text};
    assert_eq!(
        ws.message().await,
        Text(json!({"type": "message", "channel": "bin", "id": ids[0], "binary": 256}))
    );
    assert_eq!(ws.message().await, Binary(all.clone()));
    assert_eq!(
        ws.message().await,
        Text(json!({"type": "message", "channel": "bin", "id": ids[1], "data": "text"}))
    );
    assert_eq!(
        ws.message().await,
        Text(
            json!({"type": "message", "channel": "bin", "id": ids[2], "event": "empty", "binary": 0})
        )
    );
    assert_eq!(ws.message().await, Binary(Vec::new()));

    // From history on the other node (the backplane's stored form).
    let start = format!("{}-0", ids[0].as_str().unwrap().split('-').next().unwrap());
    let answer = a
        .get_json(a.url(&format!("/live/bin?transport=longpoll&since={start}")))
        .await;
    assert_eq!(
        answer["messages"],
        json!([
            {"channel": "bin", "id": ids[0], "data_base64": b64(&all)},
            {"channel": "bin", "id": ids[1], "data": "text"},
            {"channel": "bin", "id": ids[2], "event": "empty", "data_base64": ""},
        ])
    );
}
