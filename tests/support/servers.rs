//! The backplane servers tests run against: a real `redis-server` (no
//! persistence) or `nats-server -js` (a store directory of its own) on a
//! free loopback port, started by each test and stopped by its PID
//! (tests/backplane_redis.rs, tests/backplane_nats.rs, tests/presence.rs,
//! tests/grip.rs).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::within;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

pub struct Server {
    pub kind: Kind,
    pub port: u16,
    /// NATS's store, kept across [`Server::spawn`], removed on drop.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl Server {
    pub async fn redis() -> Self {
        Self::start(Kind::Redis).await
    }

    pub async fn nats() -> Self {
        Self::start(Kind::Nats).await
    }

    pub async fn start(kind: Kind) -> Self {
        let mut server = Self {
            kind,
            port: free_port(),
            dir: (kind == Kind::Nats).then(|| super::temp_dir("nats")),
            child: None,
        };
        server.spawn().await;
        server
    }

    /// Starts (again) on the same port: Redis with an empty dataset, NATS
    /// with the same store. Returns once the server answers.
    pub async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1"]).args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
                    .arg(self.dir.as_ref().expect("a NATS server has a store"));
                c
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server and nats-server are installed (scripts/test installs them)");
        self.child = Some(child);
        let kind = self.kind;
        within(&format!("{kind:?} to answer"), async {
            while !answers(kind, self.port).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Stops the server (by its PID).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// The config's `backplane:` line for this server, with `prefix`.
    pub fn yaml(&self, prefix: &str) -> String {
        let kind = match self.kind {
            Kind::Redis => "redis",
            Kind::Nats => "nats",
        };
        format!(
            "backplane: {{ type: {kind}, url: \"{}\", prefix: \"{prefix}\" }}\n",
            self.url()
        )
    }
}

/// Redis answers `PING` with `+PONG`; NATS greets a connection with `INFO`.
async fn answers(kind: Kind, port: u16) -> bool {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let (ask, expect): (&[u8], &[u8]) = match kind {
        Kind::Redis => (b"PING\r\n", b"+PONG"),
        Kind::Nats => (b"", b"INFO"),
    };
    if tcp.write_all(ask).await.is_err() {
        return false;
    }
    let mut got = vec![0u8; expect.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read_exact(&mut got)).await,
        Ok(Ok(_))
    ) && got == expect
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
