//! Long polling over real sockets (SPEC §3.5).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Pushgate;

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - name: poll
    match: { path: "/poll/{channel}" }
    realtime:
      channels: ["{channel}"]
      longpoll_timeout: 300ms
      history: { messages: 3, max_age: 1m }
  - name: multi
    match: { path: "/multi" }
    realtime:
      query_channels: true
      longpoll_timeout: 300ms
"#;

async fn poll(pg: &Pushgate, path: &str) -> Value {
    let response = support::within("a poll", pg.client().get(pg.url(path)).send())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_poll_without_since_waits_for_the_next_message() {
    let pg = Pushgate::start(CONFIG).await;
    let waiting = {
        let url = pg.url("/poll/a");
        let client = pg.client().clone();
        tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    pg.wait_subscribers("a", 1).await;
    let id = pg.publish("a", json!({"x": 1})).await;
    let answer = support::within("the held poll", waiting).await.unwrap();
    assert_eq!(
        answer["messages"],
        json!([{"channel": "a", "id": id, "data": {"x": 1}}])
    );
    assert_eq!(answer["last_id"], id);
    assert!(answer.get("gap").is_none());
}

#[tokio::test]
async fn history_newer_than_since_is_answered_at_once() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("h", json!(1)).await;
    pg.publish("h", json!(2)).await;
    let last = pg.publish("h", json!(3)).await;
    let answer = poll(&pg, &format!("/poll/h?since={first}")).await;
    let data: Vec<&Value> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, [&json!(2), &json!(3)]);
    assert_eq!(answer["last_id"], last);
}

#[tokio::test]
async fn timeout_answers_empty_with_last_id_unchanged() {
    let pg = Pushgate::start(CONFIG).await;
    let id = pg.publish("t", json!(1)).await;
    let answer = poll(&pg, &format!("/poll/t?since={id}")).await;
    assert_eq!(answer["messages"], json!([]));
    assert_eq!(answer["last_id"], id);
    let fresh = poll(&pg, "/poll/t").await;
    assert_eq!(fresh["messages"], json!([]));
    assert_eq!(
        fresh["last_id"], id,
        "a new poller learns the current position"
    );
}

#[tokio::test]
async fn an_uncovered_since_reports_the_gap() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("g", json!(1)).await;
    for i in 2..=6 {
        pg.publish("g", json!(i)).await;
    }
    let answer = poll(&pg, &format!("/poll/g?since={first}")).await;
    assert_eq!(answer["gap"], json!(["g"]));
    let data: Vec<i64> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [4, 5, 6], "what the 3-message history still holds");
}

#[tokio::test]
async fn last_event_id_header_works_like_since() {
    let pg = Pushgate::start(CONFIG).await;
    let first = pg.publish("l", json!(1)).await;
    pg.publish("l", json!(2)).await;
    let answer: Value = pg
        .client()
        .get(pg.url("/poll/l"))
        .header("last-event-id", &first)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["messages"][0]["data"], 2);
}

#[tokio::test]
async fn messages_published_between_polls_are_never_lost() {
    let pg = Pushgate::start(CONFIG).await;
    // The first poll times out and tells the current position.
    let start = poll(&pg, "/multi?channel=steady&channel=other").await;
    let mut path = format!(
        "/multi?channel=steady&channel=other&since={}",
        start["last_id"].as_str().unwrap()
    );
    let publisher = {
        let url = pg.internal_url("/publish");
        let client = pg.client().clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let r = client
                    .post(&url)
                    .json(&json!({"channel": "steady", "data": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                if i % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    // Bounded: 60 messages need far fewer polls than this.
    for _ in 0..200 {
        if got.len() >= 60 {
            break;
        }
        let answer = poll(&pg, &path).await;
        assert!(answer.get("gap").is_none(), "{answer}");
        for m in answer["messages"].as_array().unwrap() {
            got.push(m["data"].as_i64().unwrap());
        }
        let cursor = answer["last_id"].as_str().unwrap();
        path = format!("/multi?channel=steady&channel=other&since={cursor}");
    }
    publisher.await.unwrap();
    assert_eq!(got, (0..60).collect::<Vec<_>>());
}
