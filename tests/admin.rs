//! The status page and `GET /admin/stats` on the internal listener
//! (SPEC §7). The page itself is tested in Chromium
//! (clients/js/test/admin.test.mjs).

mod support;

use serde_json::{Value, json};
use support::{Pushgate, SseClient, WsClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
upstreams: { api: { targets: ["http://127.0.0.1:9"] } }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"], longpoll_timeout: 5s } }
  - { name: api, match: { path_prefix: "/api" }, upstream: api }
"#;

async fn stats(pg: &Pushgate) -> Value {
    let r = pg
        .client()
        .get(pg.internal_url("/admin/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_by_transport_publishes_and_deliveries() {
    let pg = Pushgate::start(CONFIG).await;
    let before = stats(&pg).await;
    assert_eq!(
        before["connections"],
        json!({"sse": 0, "websocket": 0, "longpoll": 0})
    );
    assert_eq!(
        before["backplane"],
        json!({"type": "memory", "connected": true})
    );
    assert_eq!(before["routes"][0]["name"], "live");
    assert_eq!(before["routes"][0]["kind"], "realtime");
    assert_eq!(before["routes"][1]["upstream"], "api");
    assert_eq!(
        before["delivery"]["latency_ms"]["p50"],
        Value::Null,
        "nothing delivered yet"
    );

    let mut sse = [
        SseClient::connect(&pg.url("/live/hot"), None).await,
        SseClient::connect(&pg.url("/live/hot"), None).await,
        SseClient::connect(&pg.url("/live/hot"), None).await,
    ];
    let mut ws = WsClient::connect(pg.http, "/live/cold").await;
    ws.expect("subscribed").await;
    let poll = {
        let (client, url) = (pg.client().clone(), pg.url("/live/cold"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    pg.wait_subscribers("cold", 2).await;

    let s = stats(&pg).await;
    assert_eq!(
        s["connections"],
        json!({"sse": 3, "websocket": 1, "longpoll": 1})
    );
    assert_eq!(s["channels"]["busiest"][0]["channel"], "hot");
    assert_eq!(s["channels"]["busiest"][0]["subscribers"], 3);
    assert_eq!(s["channels"]["busiest"][1]["channel"], "cold");

    for n in 0..5 {
        pg.publish("hot", json!(n)).await;
    }
    for s in &mut sse {
        for _ in 0..5 {
            s.next_message().await;
        }
    }
    pg.publish("cold", json!("x")).await;
    ws.expect("message").await;
    assert_eq!(poll.await.unwrap(), 200, "the poll is answered by cold");

    let after = stats(&pg).await;
    assert_eq!(after["publish"]["messages"], 6);
    assert_eq!(
        after["delivery"]["messages"], 17,
        "5 × 3 SSE + 1 WebSocket + 1 long-poll"
    );
    let p50 = after["delivery"]["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = after["delivery"]["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} ≤ p99 {p99}");
    assert_eq!(after["channels"]["busiest"][0]["messages"], 5);
    assert_eq!(after["lagged"], 0);
    assert_eq!(after["dropped"], 0);
}

#[tokio::test]
async fn the_page_is_one_html_file_with_no_external_assets() {
    let pg = Pushgate::start(CONFIG).await;
    let r = pg
        .client()
        .get(pg.internal_url("/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(html.contains("/admin/stats"));
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(!html.contains(external), "no external asset ({external})");
    }
    // Not on the public listener.
    let public = pg.client().get(pg.url("/admin")).send().await.unwrap();
    assert_eq!(public.status(), 404);
}
