//! Rate limits and caps over real sockets (SPEC §9): each limit answers
//! with its status (`429` + `Retry-After`, `400`, or an `error` frame).

mod support;

use serde_json::{Value, json};
use support::{Pushgate, WsClient, within};

fn config(limits: &str) -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0", tokens: ["tok-a", "tok-b"] }}
realtime:
  longpoll_timeout: 1s
limits:
{limits}
routes:
  - name: live
    match: {{ path: "/live/{{channel}}" }}
    realtime:
      channels: ["{{channel}}"]
      query_channels: true
      client_publish: true
"#
    )
}

async fn sse_status(
    pg: &Pushgate,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::Response) {
    let mut r = pg
        .client()
        .get(pg.url(path))
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let response = within("SSE response", r.send()).await.unwrap();
    (response.status().as_u16(), response)
}

async fn assert_429(response: reqwest::Response) {
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn concurrent_connections_per_address_are_capped() {
    let pg = Pushgate::start(&config("  per_ip: { connections: 2 }")).await;
    let (a, first) = sse_status(&pg, "/live/a", &[]).await;
    let (b, _second) = sse_status(&pg, "/live/a", &[]).await;
    assert_eq!((a, b), (200, 200));
    let (_, third) = sse_status(&pg, "/live/a", &[]).await;
    assert_429(third).await;
    // WebSocket and long-poll count against the same cap.
    assert!(WsClient::try_connect(pg.http, "/live/a").await.is_err());
    let poll = pg.client().get(pg.url("/live/a")).send().await.unwrap();
    assert_429(poll).await;
    // Closing one frees its share.
    drop(first);
    pg.wait_subscribers("a", 1).await;
    let (status, _) = sse_status(&pg, "/live/a", &[]).await;
    assert_eq!(status, 200);
    assert!(pg.metrics().await.contains("kind=\"connections\""));
}

#[tokio::test]
async fn the_connect_rate_per_address_is_limited() {
    let pg = Pushgate::start(&config("  per_ip: { connect_rate: 3/m }")).await;
    for _ in 0..3 {
        let (status, _) = sse_status(&pg, "/live/a", &[]).await;
        assert_eq!(status, 200);
    }
    let (_, fourth) = sse_status(&pg, "/live/a", &[]).await;
    assert_eq!(fourth.headers()["retry-after"], "60");
    assert_429(fourth).await;
    assert!(pg.metrics().await.contains("kind=\"connect_rate\""));
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    // Trusted: each forwarded client has its own share.
    let pg = Pushgate::start(&config(
        "  per_ip: { connections: 1 }\n  trusted_proxies: [\"127.0.0.0/8\"]",
    ))
    .await;
    let (a, _a) = sse_status(&pg, "/live/a", &[("x-forwarded-for", "198.51.100.1")]).await;
    let (b, _b) = sse_status(&pg, "/live/a", &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!((a, b), (200, 200));
    let (_, again) = sse_status(&pg, "/live/a", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_429(again).await;
    // Not trusted: the header is ignored, the peer address counts.
    let pg = Pushgate::start(&config("  per_ip: { connections: 1 }")).await;
    let (a, _a) = sse_status(&pg, "/live/a", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(a, 200);
    let (_, b) = sse_status(&pg, "/live/a", &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_429(b).await;
}

#[tokio::test]
async fn client_publish_over_its_rate_gets_an_error_frame_and_stays_open() {
    let pg = Pushgate::start(&config("  client_publish_rate: 2/m")).await;
    let mut ws = WsClient::connect(pg.http, "/live/room").await;
    ws.expect("subscribed").await;
    for n in 0..2 {
        ws.send(json!({"type": "publish", "channel": "room", "data": n}))
            .await;
        ws.expect("published").await;
    }
    ws.send(json!({"type": "publish", "channel": "room", "data": 3}))
        .await;
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "rate_limited");
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    assert!(pg.metrics().await.contains("kind=\"client_publish_rate\""));
}

#[tokio::test]
async fn publish_rate_is_per_internal_token() {
    let pg = Pushgate::start(&config("  publish_rate: 2/m")).await;
    let body = json!({"channel": "a", "data": 1});
    for _ in 0..2 {
        assert_eq!(pg.publish_raw(Some("tok-a"), &body).await.0, 200);
    }
    let response = pg
        .client()
        .post(pg.internal_url("/publish"))
        .bearer_auth("tok-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_429(response).await;
    // Another token has its own budget.
    assert_eq!(pg.publish_raw(Some("tok-b"), &body).await.0, 200);
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let pg = Pushgate::start(&config("  max_subscriptions: 2")).await;
    let mut ws = WsClient::connect(pg.http, "/live/a").await;
    ws.expect("subscribed").await;
    ws.send(json!({"type": "subscribe", "channel": "b"})).await;
    ws.expect("subscribed").await;
    ws.send(json!({"type": "subscribe", "channel": "c"})).await;
    assert_eq!(ws.expect("error").await["code"], "too_many_subscriptions");
    // The connection and its channels stay.
    let (_, receipt) = pg
        .publish_raw(Some("tok-a"), &json!({"channel": "b", "data": "still"}))
        .await;
    assert_eq!(
        ws.expect("message").await["id"],
        receipt["results"][0]["id"]
    );
    // SSE and long-poll naming more channels: 400.
    let (status, response) = sse_status(&pg, "/live/a?channel=b&channel=c", &[]).await;
    assert_eq!(status, 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_subscriptions");
    let poll = pg
        .client()
        .get(pg.url("/live/a?channel=b&channel=c"))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status().as_u16(), 400);
}

#[tokio::test]
async fn bad_limits_are_config_errors_with_positions() {
    let path = std::path::Path::new("limits.yaml");
    for (limits, wanted) in [
        ("  per_ip: { connect_rate: fast }", "invalid rate"),
        ("  client_publish_rate: 5/week", "invalid rate unit"),
        (
            "  trusted_proxies: [\"10.0.0.0/33\"]",
            "invalid trusted proxy",
        ),
        ("  max_subscriptions: 0", "at least 1"),
    ] {
        let e = pushgate::config::parse(path, &config(limits), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("limits.yaml:7:"), "{limits}: {e}");
        assert!(e.contains(wanted), "{limits}: {e}");
    }
}

#[tokio::test]
async fn the_connect_rate_counts_new_connections_to_proxied_routes() {
    let up = support::echo_upstream().await;
    let pg = Pushgate::start(&format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
limits:
  per_ip: {{ connect_rate: 5/s }}
upstreams:
  api: {{ targets: ["http://{up}"] }}
routes:
  - name: api
    match: {{ path_prefix: "/" }}
    upstream: api
"#
    ))
    .await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        // A fresh client each time: a new connection per request.
        let client = reqwest::Client::new();
        let r = within(
            "proxied response",
            client
                .get(pg.url("/x"))
                .header("connection", "close")
                .send(),
        )
        .await
        .unwrap();
        statuses.push(r.status().as_u16());
        if r.status().as_u16() == 429 && refused.is_none() {
            refused = Some(r);
        }
    }
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_429(refused.unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = reqwest::Client::new()
        .get(pg.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
