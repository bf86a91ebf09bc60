//! Many nodes on one Redis (SPEC §10): each test starts its own
//! `redis-server` on a free loopback port (no persistence) and two or three
//! pushgate nodes in-process, and stops the server by PID.

mod support;

use serde_json::{Value, json};
use support::backplane::{
    self, config, datas, has_gap, nodes, publish, ready, sse_collect, wait_ready,
};
use support::servers::{self, Server};
use support::{Pushgate, SseClient, within};

/// Redis's own client, for what the tests do behind pushgate's back.
impl Server {
    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut c = self.connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_once_in_one_order() {
    let redis = Server::redis().await;
    backplane::three_nodes_deliver_every_message_once_in_one_order(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_one_node_resumes_on_another_on_every_transport() {
    let redis = Server::redis().await;
    backplane::an_id_from_one_node_resumes_on_another_on_every_transport(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_cross_nodes_byte_for_byte() {
    let redis = Server::redis().await;
    backplane::binary_messages_cross_nodes_byte_for_byte(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_publishes_once_across_nodes() {
    let redis = Server::redis().await;
    backplane::an_idempotency_key_publishes_once_across_nodes(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_keeps_subscribers_and_signals_the_lost_data() {
    let mut redis = Server::redis().await;
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sse = SseClient::connect(&b.url("/live/feed"), None).await;
    b.wait_subscribers("feed", 1).await;
    a.publish("feed", json!("before")).await;
    assert_eq!(sse.next_message().await.data, "before");

    redis.stop();
    wait_ready(a, false).await;
    wait_ready(b, false).await;
    let (status, body) = publish(a, json!({"channel": "feed", "data": "lost?"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backplane_unavailable");
    assert_eq!(b.subscribers("feed"), 1, "subscribers stay connected");

    redis.spawn().await;
    wait_ready(a, true).await;
    wait_ready(b, true).await;
    b.wait_subscribers("feed", 1).await;
    a.publish("feed", json!("after")).await;
    let events = within("the message after the restart", sse_collect(&mut sse, 1)).await;
    assert_eq!(
        events,
        [
            ("GAP".to_owned(), String::new()),
            ("after".to_owned(), events[1].1.clone())
        ],
        "the dataset was lost: a gap, then the new stream"
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("pushgate_backplane_reconnects_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pushgate_backplane_state 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_connection_catches_up_from_history_without_a_gap() {
    let redis = Server::redis().await;
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sse = SseClient::connect(&b.url("/live/ticks"), None).await;
    b.wait_subscribers("ticks", 1).await;
    a.publish("ticks", json!(0)).await;
    assert_eq!(sse.next_message().await.data, "0");

    // Cut node B's pub/sub connection (the only one subscribed to a
    // channel), then publish while it reconnects.
    let mut c = redis.connection().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = clients
        .lines()
        .find(|l| l.contains(" sub=1 "))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("node B's pub/sub connection")
        .to_owned();
    redis.cmd(&["CLIENT", "KILL", "ID", &id]).await;
    for i in 1..=100 {
        a.publish("ticks", json!(i)).await;
    }
    let events = within("100 messages", sse_collect(&mut sse, 100)).await;
    assert!(!has_gap(&events), "history covers the outage");
    let want: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert_eq!(datas(&events), want);
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("pushgate_backplane_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_gives_a_new_epoch_and_a_gap_never_silent_loss() {
    let redis = Server::redis().await;
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sse = SseClient::connect(&b.url("/live/f"), None).await;
    b.wait_subscribers("f", 1).await;
    let old = a.publish("f", json!("x")).await;
    assert_eq!(sse.next_message().await.data, "x");
    redis.cmd(&["FLUSHALL"]).await;
    a.publish("f", json!("y")).await;
    let events = sse_collect(&mut sse, 1).await;
    assert_eq!(events[0].0, "GAP", "{events:?}");
    assert_eq!(datas(&events), ["y"]);
    // An old id resumed on the other node: a gap, then what is held.
    let answer: Value = a.get_json(a.url(&format!("/live/f?since={old}"))).await;
    assert_eq!(answer["gap"], json!(["f"]), "{answer}");
    assert_eq!(answer["messages"][0]["data"], "y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_loses_nothing() {
    let redis = Server::redis().await;
    backplane::a_restarted_node_loses_nothing(&redis.url()).await;
}

#[tokio::test]
async fn an_unreachable_redis_at_start_leaves_the_node_up_but_not_ready() {
    let port = servers::free_port();
    let node = Pushgate::start(&config(&format!("redis://127.0.0.1:{port}/0"))).await;
    let r = node
        .client()
        .get(node.internal_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["backplane"]["type"], "redis");
    assert_eq!(body["backplane"]["connected"], false);
    let (status, body) = publish(&node, json!({"channel": "c", "data": 1})).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "backplane_unavailable");
    // The public side still serves.
    let r = node
        .client()
        .get(node.url("/live/c?transport=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn bad_backplane_urls_are_reported_at_their_line_and_column() {
    let path = std::path::Path::new("pushgate.yaml");
    let yaml = |backplane: &str| {
        format!(
            "listen: {{ http: [\"127.0.0.1:0\"] }}\nbackplane:\n  type: redis\n  url: \"{backplane}\"\n"
        )
    };
    for (url, needle) in [
        ("http://127.0.0.1:6379", "scheme"),
        ("redis://127.0.0.1:nope/0", "invalid backplane url"),
        ("127.0.0.1:6379", "redis://"),
    ] {
        let err = pushgate::config::parse(path, &yaml(url), &|_| None)
            .expect_err(url)
            .to_string();
        assert!(err.contains("pushgate.yaml:4:8"), "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
    }
    let err = pushgate::config::parse(
        path,
        "listen: { http: [\"127.0.0.1:0\"] }\nbackplane: { type: redis }\n",
        &|_| None,
    )
    .expect_err("no url")
    .to_string();
    assert!(err.contains("needs a url"), "{err}");
    let err = pushgate::config::parse(
        path,
        "listen: { http: [\"127.0.0.1:0\"] }\nbackplane: { type: kafka }\n",
        &|_| None,
    )
    .expect_err("kafka")
    .to_string();
    assert!(err.contains("unknown backplane type"), "{err}");
    let ok = pushgate::config::parse(
        path,
        "listen: { http: [\"127.0.0.1:0\"] }\nbackplane: { type: redis, url: \"rediss://u:p@h:6380/1\", prefix: app1 }\n",
        &|_| None,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn the_two_node_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/two-nodes.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let config = pushgate::config::parse(&path, &yaml, &|_| None).unwrap();
    assert!(matches!(
        config.backplane,
        pushgate::config::BackplaneKind::Redis(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sse_stream_learns_its_real_id_before_any_message() {
    let redis = Server::redis().await;
    backplane::a_new_sse_stream_learns_its_real_id_before_any_message(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answering_errors_fails_the_whole_batch_and_publishes_nothing() {
    let redis = Server::redis().await;
    let nodes = nodes(&redis.url(), 1).await;
    let a = &nodes[0];
    let mut sse = SseClient::connect(&a.url("/live/ok"), None).await;
    a.wait_subscribers("ok", 1).await;
    // Someone else's string where the channel's history stream belongs.
    redis.cmd(&["SET", "t:h:broken", "not a stream"]).await;
    let (status, body) = publish(
        a,
        json!({"messages": [
            {"channel": "ok", "data": "first"},
            {"channel": "broken", "data": "second"}
        ]}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backplane_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WRONGTYPE"),
        "{body}"
    );
    a.publish("ok", json!("after")).await;
    let events = sse_collect(&mut sse, 1).await;
    assert_eq!(datas(&events), ["after"], "nothing of the failed batch");
    assert!(ready(a).await, "an error answer is not an outage");
}
