//! The fleet layouts of SPEC §11, made of real servers the tests start on
//! free loopback ports and stop by PID: a Redis Cluster (masters and
//! replicas, `redis-cli --cluster create`), a Sentinel group (a master,
//! replicas, sentinels), and a NATS cluster with JetStream (routes on
//! loopback, a store directory each).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::servers::free_port;
use super::{temp_dir, within};

/// One server process, stopped (SIGKILL, by PID) when dropped.
pub struct Proc {
    pub port: u16,
    args: Vec<String>,
    program: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn spawn(program: &'static str, port: u16, args: Vec<String>) -> Self {
        let mut p = Self {
            port,
            args,
            program,
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the process again with the same arguments (after `kill`).
    pub fn restart(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} is installed (scripts/test): {e}", self.program));
        self.child = Some(child);
    }

    /// `kill -9`, by PID.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`: its output, trimmed.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("redis-cli answered within 30 s")
        .expect("redis-cli is installed (scripts/test)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    within(what, async {
        while !ok().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn redis_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    args
}

/// A Redis Cluster: `masters` masters with `replicas` replicas each.
pub struct RedisCluster {
    pub nodes: Vec<Proc>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas: usize) -> Self {
        let dir = temp_dir("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(Proc::spawn(
                "redis-server",
                port,
                redis_args(port, &dir, &extra),
            ));
        }
        for n in &nodes {
            let port = n.port;
            until("a cluster node to answer", async || {
                redis_cli(port, &["PING"]).await == "PONG"
            })
            .await;
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let replicas = replicas.to_string();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        redis_cli(nodes[0].port, &create).await;
        let cluster = Self { nodes, dir };
        for n in &cluster.nodes {
            let port = n.port;
            until("the cluster to be ok on every node", async || {
                redis_cli(port, &["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok")
            })
            .await;
            // A replica that never finished its first sync is too far
            // behind to be elected when its master dies.
            until("every replica to sync", async || {
                let info = redis_cli(port, &["INFO", "replication"]).await;
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    /// `redis://` URLs of every node (the seeds a client is given).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the nodes that are masters now, as the first running node
    /// sees it.
    pub async fn masters(&self) -> Vec<u16> {
        let Some(asked) = self.nodes.iter().find(|n| n.pid().is_some()) else {
            return Vec::new();
        };
        let nodes = redis_cli(asked.port, &["CLUSTER", "NODES"]).await;
        nodes
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(2)
                    .is_some_and(|f| f.contains("master") && !f.contains("fail"))
            })
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Sentinel group watching one master (`NAME`) with its replicas.
pub struct Sentinels {
    pub master: Proc,
    pub replicas: Vec<Proc>,
    pub sentinels: Vec<Proc>,
    dir: PathBuf,
}

impl Sentinels {
    pub const NAME: &'static str = "pushgate";

    pub async fn start(replicas: usize, sentinels: usize) -> Self {
        let dir = temp_dir("redis-sentinel");
        let port = free_port();
        let master = Proc::spawn("redis-server", port, redis_args(port, &dir, &[]));
        let mut group = Self {
            master,
            replicas: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        for _ in 0..replicas {
            let p = free_port();
            let extra = vec![
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                port.to_string(),
            ];
            group.replicas.push(Proc::spawn(
                "redis-server",
                p,
                redis_args(p, &group.dir, &extra),
            ));
        }
        for r in &group.replicas {
            let p = r.port;
            until("a replica to sync", async || {
                redis_cli(p, &["INFO", "replication"])
                    .await
                    .contains("master_link_status:up")
            })
            .await;
        }
        for i in 0..sentinels {
            let p = free_port();
            // A sentinel rewrites its config file: one each.
            let conf = group.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n",
                    dir = group.dir.display(),
                    name = Self::NAME,
                ),
            )
            .unwrap();
            let args = vec![conf.to_string_lossy().into_owned(), "--sentinel".to_owned()];
            group.sentinels.push(Proc::spawn("redis-server", p, args));
        }
        // Every sentinel knows the others and the replicas.
        let want = (sentinels - 1).to_string();
        let want_replicas = replicas.to_string();
        for s in &group.sentinels {
            let p = s.port;
            until("the sentinels to find each other", async || {
                let master = redis_cli(p, &["SENTINEL", "MASTER", Self::NAME]).await;
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                field("num-other-sentinels").as_deref() == Some(want.as_str())
                    && field("num-slaves").as_deref() == Some(want_replicas.as_str())
            })
            .await;
        }
        group
    }

    /// `redis+sentinel://` style seeds: every sentinel's address.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port as the first sentinel reports it.
    pub async fn master_port(&self) -> Option<u16> {
        let answer = redis_cli(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::NAME],
        )
        .await;
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.replicas.clear();
        self.master.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A NATS cluster with JetStream: every server routes to every other.
pub struct NatsCluster {
    pub servers: Vec<Proc>,
    /// Each server's HTTP monitoring port (`/routez`, `/jsz`).
    pub monitors: Vec<u16>,
    dir: PathBuf,
}

impl NatsCluster {
    pub async fn start(n: usize) -> Self {
        let dir = temp_dir("nats-cluster");
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let port = free_port();
            let others: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let store = dir.join(format!("n{i}"));
            let args: Vec<String> = [
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                &format!("n{i}"),
                "-sd",
                &store.to_string_lossy(),
                "-m",
                &monitors[i].to_string(),
                "--cluster_name",
                "pushgate",
                "--cluster",
                &format!("nats://127.0.0.1:{}", routes[i]),
                "--routes",
                &others.join(","),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            servers.push(Proc::spawn("nats-server", port, args));
        }
        let cluster = Self {
            servers,
            monitors,
            dir,
        };
        let client = super::http_client();
        for &m in &cluster.monitors {
            let client = client.clone();
            until(
                "the NATS cluster to route and elect a JetStream leader",
                async || {
                    let get = |path: &str| {
                        let client = client.clone();
                        let url = format!("http://127.0.0.1:{m}{path}");
                        async move {
                            match client.get(url).send().await {
                                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                                Err(_) => serde_json::Value::Null,
                            }
                        }
                    };
                    let routes = get("/routez").await["num_routes"].as_u64() == Some(n as u64 - 1);
                    let leader = get("/jsz").await["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty());
                    routes && leader
                },
            )
            .await;
        }
        cluster
    }

    /// `nats://` URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
