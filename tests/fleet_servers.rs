//! The fleet layouts' servers (tests/support/fleet.rs) come up as the
//! fault tests of issue 24 need them, and their own failovers work: a
//! Redis Cluster with replicas, a Sentinel group, a NATS cluster with
//! JetStream.

mod support;

use std::time::Duration;

use support::fleet::{NatsCluster, RedisCluster, Sentinels, redis_cli};
use support::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_of_three_masters_serves_and_fails_over() {
    let mut cluster = RedisCluster::start(3, 1).await;
    assert_eq!(cluster.nodes.len(), 6);
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    // A key routed by redis-cli's cluster mode, read back from any node.
    let seed = cluster.nodes[0].port;
    assert_eq!(redis_cli(seed, &["-c", "SET", "{news}:k", "v"]).await, "OK");
    assert_eq!(
        redis_cli(cluster.nodes[5].port, &["-c", "GET", "{news}:k"]).await,
        "v"
    );
    // kill -9 of a master: its replica takes over, the cluster is ok again.
    let victim = masters[0];
    let i = cluster.nodes.iter().position(|n| n.port == victim).unwrap();
    cluster.nodes[i].kill();
    let survivor = cluster.nodes[(i + 1) % 6].port;
    within("a replica promoted", async {
        loop {
            let info = redis_cli(survivor, &["CLUSTER", "INFO"]).await;
            let masters = cluster.masters().await;
            if info.contains("cluster_state:ok") && masters.len() == 3 && !masters.contains(&victim)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_group_promotes_a_replica_when_the_master_dies() {
    let mut group = Sentinels::start(2, 3).await;
    let old = group.master.port;
    assert_eq!(group.master_port().await, Some(old));
    group.master.kill();
    within("a sentinel failover", async {
        loop {
            if let Some(p) = group.master_port().await
                && p != old
            {
                assert!(group.replicas.iter().any(|r| r.port == p));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cluster_routes_and_elects_a_jetstream_leader() {
    let cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.urls().len(), 3);
    let client = support::http_client();
    for m in &cluster.monitors {
        let jsz: serde_json::Value = client
            .get(format!("http://127.0.0.1:{m}/jsz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
    }
}
