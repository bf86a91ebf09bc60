//! The publish webhook on the internal listener (SPEC §4).

mod support;

use serde_json::{Value, json};
use support::{Pushgate, SseClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal:
  listen: "127.0.0.1:0"
  tokens: ["first-token", "second-token"]
limits: { max_body: 2KiB }
realtime: { max_message: 512 }
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
"#;

async fn post(
    pg: &Pushgate,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut r = pg
        .client()
        .post(pg.internal_url("/publish"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let response = r.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn single_multi_channel_and_batch_bodies_get_receipts() {
    let pg = Pushgate::start(CONFIG).await;
    let _a = SseClient::connect(&pg.url("/live/a"), None).await;
    let _b = SseClient::connect(&pg.url("/live/b"), None).await;
    pg.wait_subscribers("a", 1).await;
    pg.wait_subscribers("b", 1).await;
    let (s, single) = pg
        .publish_raw(Some("first-token"), &json!({"channel": "a", "data": 1}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(single["results"][0]["channel"], "a");
    assert_eq!(single["results"][0]["subscribers"], 1);
    let (s, multi) = pg
        .publish_raw(
            Some("second-token"),
            &json!({"channels": ["a", "b", "c"], "data": "x"}),
        )
        .await;
    assert_eq!(s, 200);
    let subs: Vec<u64> = multi["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subscribers"].as_u64().unwrap())
        .collect();
    assert_eq!(subs, [1, 1, 0]);
    let (s, batch) = pg
        .publish_raw(Some("first-token"), &json!({"messages": [{"channel": "a", "data": 1}, {"channel": "b", "data": 2, "event": "e"}]}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(batch["results"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let pg = Pushgate::start(CONFIG).await;
    for token in [
        None,
        Some("wrong"),
        Some("first-toke"),
        Some("first-token-"),
    ] {
        let (status, body) = pg
            .publish_raw(token, &json!({"channel": "a", "data": 1}))
            .await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let pg = Pushgate::start(CONFIG).await;
    let (status, body) = post(
        &pg,
        Some("first-token"),
        "text/plain",
        r#"{"channel":"a","data":1}"#,
    )
    .await;
    assert_eq!(status, 415);
    assert_eq!(body["error"]["code"], "unsupported_media_type");
}

#[tokio::test]
async fn oversize_body_and_message_are_413() {
    let pg = Pushgate::start(CONFIG).await;
    let big = json!({"channel": "a", "data": "x".repeat(4000)}).to_string();
    let (status, body) = post(&pg, Some("first-token"), "application/json", big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "body_too_large");
    let big_message = json!({"channel": "a", "data": "x".repeat(600)}).to_string();
    let (status, body) = post(&pg, Some("first-token"), "application/json", big_message).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "message_too_large");
}

#[tokio::test]
async fn invalid_requests_are_400_with_reason_and_publish_nothing() {
    let pg = Pushgate::start(CONFIG).await;
    let mut sse = SseClient::connect(&pg.url("/live/a"), None).await;
    pg.wait_subscribers("a", 1).await;
    let cases = [
        ("{\"channel\": \"a\",\n \"data\": }", "invalid_json"),
        (r#"{"channel":"a b","data":1}"#, "invalid_channel"),
        (r#"{"channel":"a"}"#, "invalid_request"),
        (
            r#"{"channel":"a","data":1,"event":"bad event"}"#,
            "invalid_event",
        ),
        (
            r#"{"messages":[{"channel":"a","data":"first"},{"channel":"","data":2}]}"#,
            "invalid_channel",
        ),
        (
            r#"{"channel":"a","data":1,"extra":true}"#,
            "invalid_request",
        ),
        (r#""just a string""#, "invalid_request"),
    ];
    for (body, code) in cases {
        let (status, answer) = post(&pg, Some("first-token"), "application/json", body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, answer) = post(
        &pg,
        Some("first-token"),
        "application/json",
        "{\"channel\": \"a\",\n \"data\": }",
    )
    .await;
    assert_eq!(
        answer["error"]["line"], 2,
        "JSON errors carry their position"
    );
    // Nothing from the failed requests reached the subscriber: the next
    // event is the one published now, with sequence 1.
    let id = pg
        .publish_raw(
            Some("first-token"),
            &json!({"channel": "a", "data": "valid"}),
        )
        .await
        .1["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(id.ends_with("-1"), "first message of the stream: {id}");
    assert_eq!(sse.next_message().await.data, "valid");
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_published_once() {
    let pg = Pushgate::start(CONFIG).await;
    let body = json!({"channel": "k", "data": 1, "idempotency_key": "order-42"});
    let (_, first) = pg.publish_raw(Some("first-token"), &body).await;
    let (_, again) = pg.publish_raw(Some("first-token"), &body).await;
    assert_eq!(first, again, "the original result is returned");
    let (_, next) = pg
        .publish_raw(Some("first-token"), &json!({"channel": "k", "data": 2}))
        .await;
    assert!(next["results"][0]["id"].as_str().unwrap().ends_with("-2"));
}

#[tokio::test]
async fn internal_paths_are_not_served_on_the_public_listener() {
    let pg = Pushgate::start(CONFIG).await;
    for path in ["/publish", "/metrics", "/healthz", "/readyz"] {
        let r = pg
            .client()
            .post(pg.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "POST {path}");
        let r = pg.client().get(pg.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "GET {path}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_on_the_internal_listener() {
    let pg = Pushgate::start(CONFIG).await;
    let r = pg
        .client()
        .get(pg.internal_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = pg.get_json(pg.internal_url("/readyz")).await;
    assert_eq!(ready["ready"], true);
    let _s = SseClient::connect(&pg.url("/live/m"), None).await;
    pg.wait_subscribers("m", 1).await;
    pg.publish_raw(Some("first-token"), &json!({"channel": "m", "data": 1}))
        .await;
    let text = pg.metrics().await;
    for metric in [
        "pushgate_http_requests_total{route=\"live\",status=\"200\"}",
        "pushgate_open_connections{listener=\"http\"}",
        "pushgate_sessions{transport=\"sse\"} 1",
        "pushgate_messages_published_total 1",
        "pushgate_delivery_latency_seconds_count",
        "pushgate_lag_disconnects_total 0",
    ] {
        assert!(text.contains(metric), "{metric} in:\n{text}");
    }
}
