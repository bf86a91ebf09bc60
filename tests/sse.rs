//! SSE sessions over real sockets (SPEC §3.3), read with a WHATWG parser.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Pushgate, SseClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
      heartbeat: 200ms
  - name: multi
    match: { path: "/multi" }
    realtime:
      query_channels: true
  - name: short
    match: { path: "/short/{channel}" }
    realtime:
      channels: ["short-{channel}"]
      history: { messages: 2, max_age: 1m }
  - name: nosse
    match: { path: "/nosse/{channel}" }
    realtime:
      channels: ["{channel}"]
      transports: [websocket, longpoll]
"#;

#[tokio::test]
async fn stream_opens_at_once_with_retry_comment_and_headers() {
    let pg = Pushgate::start(CONFIG).await;
    let sse = SseClient::connect(&pg.url("/live/open"), None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    support::within("the opening bytes", async {
        while sse.retry.lock().unwrap().is_none() || sse.last_id().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        *sse.retry.lock().unwrap(),
        Some(2000),
        "retry: realtime.sse_retry"
    );
    assert!(
        !sse.comments.lock().unwrap().is_empty(),
        "an opening comment"
    );
    assert!(
        !sse.last_id().is_empty(),
        "the opening id lets a silent stream resume"
    );
}

#[tokio::test]
async fn messages_carry_id_event_and_split_data_lines() {
    let pg = Pushgate::start(CONFIG).await;
    let mut sse = SseClient::connect(&pg.url("/live/news"), None).await;
    pg.wait_subscribers("news", 1).await;
    let (status, receipt) = pg
        .publish_raw(
            None,
            &json!({"channel": "news", "event": "greet", "data": "line one\nline two\r\nthree"}),
        )
        .await;
    assert_eq!(status, 200);
    let event = sse.next_message().await;
    assert_eq!(event.event, "greet");
    assert_eq!(event.data, "line one\nline two\nthree");
    assert_eq!(event.id, receipt["results"][0]["id"].as_str().unwrap());
    pg.publish("news", json!({"a": [1, 2]})).await;
    let event = sse.next_message().await;
    assert_eq!(event.event, "message");
    assert_eq!(
        event.data, r#"{"a":[1,2]}"#,
        "non-string data is compact JSON"
    );
}

#[tokio::test]
async fn idle_stream_gets_heartbeat_comments() {
    let pg = Pushgate::start(CONFIG).await;
    let sse = SseClient::connect(&pg.url("/live/quiet"), None).await;
    support::within("two heartbeats", async {
        // The opening comment is one; heartbeats are bare ":" lines.
        while sse
            .comments
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_empty())
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn resume_with_last_event_id_gets_exactly_the_missed_messages() {
    let pg = Pushgate::start(CONFIG).await;
    let mut sse = SseClient::connect(&pg.url("/live/resume"), None).await;
    pg.wait_subscribers("resume", 1).await;
    pg.publish("resume", json!("m1")).await;
    let first = sse.next_message().await;
    sse.disconnect();
    pg.wait_subscribers("resume", 0).await;
    pg.publish("resume", json!("m2")).await;
    pg.publish("resume", json!("m3")).await;
    let mut again = SseClient::connect(&pg.url("/live/resume"), Some(&first.id)).await;
    assert_eq!(again.next_message().await.data, "m2");
    assert_eq!(again.next_message().await.data, "m3");
    pg.publish("resume", json!("m4")).await;
    let live = again.next().await.unwrap();
    assert_eq!(
        live.data, "m4",
        "no gap and no duplicate before live messages"
    );
}

#[tokio::test]
async fn resume_with_since_and_last_event_id_query_parameters() {
    let pg = Pushgate::start(CONFIG).await;
    let id1 = pg.publish("q", json!("one")).await;
    pg.publish("q", json!("two")).await;
    for param in ["since", "lastEventId"] {
        let mut sse = SseClient::connect(&pg.url(&format!("/live/q?{param}={id1}")), None).await;
        assert_eq!(sse.next_message().await.data, "two", "{param}");
    }
}

#[tokio::test]
async fn an_id_the_history_no_longer_covers_gets_a_gap_then_what_is_held() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("short-g", json!(1)).await;
    for i in 2..=5 {
        pg.publish("short-g", json!(i)).await;
    }
    let mut sse = SseClient::connect(&pg.url("/short/g"), Some(&first)).await;
    let gap = sse.next().await.unwrap();
    assert_eq!(gap.event, "pushgate.gap");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&gap.data).unwrap(),
        json!({"channels": ["short-g"]})
    );
    assert_eq!(sse.next().await.unwrap().data, "4");
    assert_eq!(sse.next().await.unwrap().data, "5");
}

#[tokio::test]
async fn multi_channel_streams_use_composite_ids() {
    let pg = Pushgate::start(CONFIG).await;
    let mut sse = SseClient::connect(&pg.url("/multi?channel=b&channel=a"), None).await;
    pg.wait_subscribers("a", 1).await;
    pg.wait_subscribers("b", 1).await;
    pg.publish("a", json!("a1")).await;
    let a1 = sse.next_message().await;
    assert_eq!(
        a1.id.split('.').count(),
        2,
        "one part per channel: {}",
        a1.id
    );
    sse.disconnect();
    pg.publish("b", json!("b1")).await;
    pg.publish("a", json!("a2")).await;
    // Channel order in the query does not matter.
    let mut again = SseClient::connect(&pg.url("/multi?channel=a&channel=b"), Some(&a1.id)).await;
    let mut got = vec![
        again.next_message().await.data,
        again.next_message().await.data,
    ];
    got.sort();
    assert_eq!(got, ["a2", "b1"]);
}

#[tokio::test]
async fn garbage_last_event_id_is_a_clear_400_and_harms_no_one() {
    let pg = Pushgate::start(CONFIG).await;
    let mut healthy = SseClient::connect(&pg.url("/live/h"), None).await;
    pg.wait_subscribers("h", 1).await;
    for garbage in ["garbage", "1-2.3-4", "ÿÿ", &"9".repeat(600)] {
        let response = pg
            .client()
            .get(pg.url("/live/h"))
            .header("accept", "text/event-stream")
            .header("last-event-id", garbage)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{garbage}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_id");
    }
    pg.publish("h", json!("still here")).await;
    assert_eq!(healthy.next_message().await.data, "still here");
}

#[tokio::test]
async fn bad_channel_names_are_rejected() {
    let pg = Pushgate::start(CONFIG).await;
    for path in [
        "/live/a%20b",
        "/multi?channel=a%3Fb",
        "/multi",
        &format!("/live/{}", "x".repeat(201)),
    ] {
        let response = pg
            .client()
            .get(pg.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
    }
}

#[tokio::test]
async fn negotiation_info_406_and_426() {
    let pg = Pushgate::start(CONFIG).await;
    let info: serde_json::Value = pg.get_json(pg.url("/live/x?transport=info")).await;
    assert_eq!(info["transports"], json!(["websocket", "sse", "longpoll"]));
    assert_eq!(info["heartbeat_ms"], 200);
    assert_eq!(info["longpoll_timeout_ms"], 30000);
    let r = pg
        .client()
        .get(pg.url("/nosse/x"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "transport_not_allowed");
    assert_eq!(body["error"]["allowed"], json!(["websocket", "longpoll"]));
    let r = pg
        .client()
        .get(pg.url("/live/x?transport=websocket"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
}

#[tokio::test]
async fn sse_on_a_reused_keep_alive_connection_and_over_h2c() {
    // The first request of a connection is served on the raw socket; later
    // ones, and HTTP/2, go through hyper. Both must behave the same.
    let pg = Pushgate::start(CONFIG).await;
    let h1 = pg.client().clone();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    for (name, client) in [("h1 keep-alive", h1), ("h2c", h2)] {
        let info = client
            .get(pg.url("/live/reuse?transport=info"))
            .send()
            .await
            .unwrap();
        assert_eq!(info.status(), 200);
        info.bytes().await.unwrap();
        let response = client
            .get(pg.url("/live/reuse"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{name}"
        );
        pg.wait_subscribers("reuse", 1).await;
        let id = pg.publish("reuse", json!(name)).await;
        let mut parser = support::SseParser::default();
        let mut stream = futures_util::StreamExt::boxed(response.bytes_stream());
        let event = support::within("the event", async {
            loop {
                let chunk = futures_util::StreamExt::next(&mut stream)
                    .await
                    .unwrap()
                    .unwrap();
                if let Some(e) = parser.feed(&chunk).into_iter().next() {
                    return e;
                }
            }
        })
        .await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            (name, id.as_str())
        );
        drop(stream);
        pg.wait_subscribers("reuse", 0).await;
    }
}
