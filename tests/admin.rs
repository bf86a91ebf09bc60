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

/// The series of `family` in the exposition `text`, as (labels, value):
/// `name{a="x",b="y"} 0` gives (`a="x",b="y"`, `0`).
fn series<'a>(text: &'a str, family: &str) -> Vec<(&'a str, &'a str)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels, value.trim()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_counters_with_known_labels_are_exported_at_zero_from_the_start() {
    let pg = Pushgate::start(
        r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: open
    match: { path: "/open/{channel}" }
    realtime: { channels: ["{channel}"] }
  - name: guarded
    match: { path: "/guarded/{channel}" }
    realtime: { channels: ["{channel}"] }
    auth:
      jwt: { hs256_secret: "0123456789abcdef0123456789abcdef" }
"#,
    )
    .await;
    let text = pg.metrics().await;
    let expect = |family: &str, wanted: &[String]| {
        let found = series(&text, family);
        for labels in wanted {
            assert!(
                found.iter().any(|(l, v)| l == labels && *v == "0"),
                "{family}{{{labels}}} 0 missing; found {found:?}"
            );
        }
    };
    expect(
        "pushgate_hook_events_dropped_total",
        &["queue_full", "rejected"].map(|r| format!("reason=\"{r}\"")),
    );
    expect(
        "pushgate_rate_limited_total",
        &[
            "connect_rate",
            "connections",
            "publish_rate",
            "client_publish_rate",
        ]
        .map(|k| format!("kind=\"{k}\"")),
    );
    expect(
        "pushgate_sessions",
        &["websocket", "sse", "longpoll"].map(|t| format!("transport=\"{t}\"")),
    );
    let ends = [
        "gone",
        "client",
        "bad_close",
        "shutdown",
        "lagged",
        "expired",
        "pong_timeout",
        "auth_timeout",
        "auth_refused",
        "too_big",
        "invalid_utf8",
        "protocol_error",
    ];
    for transport in ["websocket", "sse"] {
        expect(
            "pushgate_sessions_ended_total",
            &ends.map(|r| format!("transport=\"{transport}\",reason=\"{r}\"")),
        );
    }
    assert!(
        series(&text, "pushgate_sessions_ended_total")
            .iter()
            .all(|(l, _)| !l.contains("longpoll")),
        "a long poll ends at every answer: counted as a request"
    );
    let reasons = [
        "missing",
        "malformed",
        "bad_signature",
        "algorithm",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "rejected",
        "forbidden",
        "unavailable",
    ];
    expect(
        "pushgate_auth_failures_total",
        &reasons.map(|r| format!("route=\"guarded\",reason=\"{r}\"")),
    );
    assert!(
        series(&text, "pushgate_auth_failures_total")
            .iter()
            .all(|(l, _)| !l.contains("route=\"open\"")),
        "a route without auth: has no auth failure series"
    );
}
