//! Many nodes on one NATS JetStream server (SPEC §10): each test starts its
//! own `nats-server -js` on a free loopback port with a fresh store
//! directory, and two or three pushgate nodes in-process, and stops the
//! server by PID.

mod support;

use serde_json::{Value, json};
use support::backplane::{
    self, config, datas, has_gap, nodes, publish, ready, sse_collect, wait_ready,
};
use support::servers::{self, Server};
use support::{Pushgate, SseClient, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_once_in_one_order() {
    let nats = Server::nats().await;
    backplane::three_nodes_deliver_every_message_once_in_one_order(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_one_node_resumes_on_another_on_every_transport() {
    let nats = Server::nats().await;
    backplane::an_id_from_one_node_resumes_on_another_on_every_transport(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_cross_nodes_byte_for_byte() {
    let nats = Server::nats().await;
    backplane::binary_messages_cross_nodes_byte_for_byte(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_publishes_once_across_nodes() {
    let nats = Server::nats().await;
    backplane::an_idempotency_key_publishes_once_across_nodes(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_loses_nothing() {
    let nats = Server::nats().await;
    backplane::a_restarted_node_loses_nothing(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sse_stream_learns_its_real_id_before_any_message() {
    let nats = Server::nats().await;
    backplane::a_new_sse_stream_learns_its_real_id_before_any_message(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_keeps_subscribers_and_history() {
    let mut nats = Server::nats().await;
    let nodes = nodes(&nats.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sse = SseClient::connect(&b.url("/live/feed"), None).await;
    b.wait_subscribers("feed", 1).await;
    let first = a.publish("feed", json!("before")).await;
    assert_eq!(sse.next_message().await.data, "before");

    nats.stop();
    wait_ready(a, false).await;
    wait_ready(b, false).await;
    let (status, body) = publish(a, json!({"channel": "feed", "data": "lost?"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backplane_unavailable");
    assert_eq!(b.subscribers("feed"), 1, "subscribers stay connected");

    nats.spawn().await;
    wait_ready(a, true).await;
    wait_ready(b, true).await;
    a.publish("feed", json!("after")).await;
    let events = within("the message after the restart", sse_collect(&mut sse, 1)).await;
    assert_eq!(datas(&events), ["after"]);
    assert!(
        !has_gap(&events),
        "file storage kept the stream: {events:?}"
    );
    // The history survived the restart: resume on the other node.
    let mut again = SseClient::connect(&a.url("/live/feed"), Some(&first)).await;
    let events = sse_collect(&mut again, 1).await;
    assert_eq!(datas(&events), ["after"]);
    assert!(!has_gap(&events));
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("pushgate_backplane_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_nats_at_start_leaves_the_node_up_but_not_ready() {
    let port = servers::free_port();
    let node = Pushgate::start(&config(&format!("nats://127.0.0.1:{port}"))).await;
    assert!(!ready(&node).await);
    let (status, body) = publish(&node, json!({"channel": "c", "data": 1})).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "backplane_unavailable");
}

#[test]
fn bad_nats_urls_are_reported_at_their_line_and_column() {
    let path = std::path::Path::new("pushgate.yaml");
    for (url, needle) in [
        ("http://127.0.0.1:4222", "scheme"),
        ("127.0.0.1:4222", "nats://"),
        // One bad item in a list fails check, as it would fail start.
        (
            "nats://127.0.0.1:4222,nats://127.0.0.1:99999",
            "invalid port",
        ),
        ("nats://127.0.0.1:4222,", "empty server"),
    ] {
        let yaml = format!(
            "listen: {{ http: [\"127.0.0.1:0\"] }}\nbackplane:\n  type: nats\n  url: \"{url}\"\n"
        );
        let err = pushgate::config::parse(path, &yaml, &|_| None)
            .expect_err(url)
            .to_string();
        assert!(err.contains("pushgate.yaml:4:8"), "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[test]
fn a_comma_separated_server_list_passes_check_as_one_list_per_server() {
    let path = std::path::Path::new("pushgate.yaml");
    let yaml = "listen: { http: [\"127.0.0.1:0\"] }\nbackplane:\n  type: nats\n  url: \"nats://a:4222, tls://b:4223\"\n";
    let config = pushgate::config::parse(path, yaml, &|_| None).expect("a good list passes");
    let pushgate::config::BackplaneKind::Nats(settings) = &config.backplane else {
        panic!("nats backplane: {:?}", config.backplane);
    };
    let servers: Vec<_> = settings
        .servers
        .iter()
        .map(|s| (s.scheme().to_owned(), s.host().to_owned(), s.port()))
        .collect();
    assert_eq!(
        servers,
        [
            ("nats".to_owned(), "a".to_owned(), 4222),
            ("tls".to_owned(), "b".to_owned(), 4223)
        ]
    );
}

/// The documented list form starts (check and start share one parser), and
/// a server that is down does not keep the nodes out: they connect to the
/// other one and carry messages between them.
#[tokio::test]
async fn two_servers_of_which_the_first_is_down_start_and_deliver() {
    let nats = Server::nats().await;
    let closed = servers::free_port();
    let url = format!("nats://127.0.0.1:{closed},{}", nats.url());
    let nodes = nodes(&url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sse = SseClient::connect(&b.url("/live/pair"), None).await;
    b.wait_subscribers("pair", 1).await;
    a.publish("pair", json!("through the second server")).await;
    let events = within("the message", sse_collect(&mut sse, 1)).await;
    assert_eq!(datas(&events), ["through the second server"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_publishes_share_one_epoch() {
    let nats = Server::nats().await;
    let nodes = nodes(&nats.url(), 3).await;
    for c in 0..20 {
        let channel = format!("first{c}");
        let mut tasks = Vec::new();
        for node in &nodes {
            let client = node.client().clone();
            let url = node.internal_url("/publish");
            let channel = channel.clone();
            tasks.push(tokio::spawn(async move {
                let r: Value = client
                    .post(&url)
                    .json(&json!({"channel": channel, "data": 1}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["results"][0]["id"].as_str().unwrap().to_owned()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let epochs: std::collections::BTreeSet<_> = ids
            .iter()
            .map(|id| id.split('-').next().unwrap().to_owned())
            .collect();
        let mut seqs: Vec<_> = ids
            .iter()
            .map(|id| id.split('-').nth(1).unwrap().to_owned())
            .collect();
        seqs.sort();
        assert_eq!(epochs.len(), 1, "{channel}: {ids:?}");
        assert_eq!(seqs, ["1", "2", "3"], "{channel}: {ids:?}");
    }
}
