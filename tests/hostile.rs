//! Hostile clients and chaos against the real binary (a child process, so
//! its RSS and file descriptors are its own): slowloris on heads and on
//! bodies, a WebSocket peer that never reads, endless 1-byte fragments, a
//! ping flood, HTTP/2 rapid reset and SETTINGS floods, an upstream that
//! resets mid-stream, a publisher that leaves mid-body, a client killed
//! mid-write, thousands of connections closed at once, and the
//! file-descriptor limit.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{WAIT, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

/// BASE with a 2 s `pong_timeout`: a stalled write is abandoned after it.
fn quick_pong_timeout() -> String {
    BASE.replace("pong_timeout: 60s", "pong_timeout: 2s")
}

/// The binary, started on loopback with `yaml` (its `{upstream}` replaced).
struct Server {
    child: Child,
    http: SocketAddr,
    internal: SocketAddr,
    client: reqwest::Client,
}

const BASE: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
limits:
  header_read_timeout: 1s
realtime:
  max_message: 64KiB
  queue: 16
  on_lag: disconnect
  pong_timeout: 60s
  history: { messages: 10 }
upstreams:
  api:
    targets: ["http://{upstream}"]
    timeout: 5s
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
  - name: api
    match: { path_prefix: "/api" }
    upstream: api
"#;

impl Server {
    async fn start(yaml: &str, upstream: Option<SocketAddr>, nofile: Option<u32>) -> Self {
        let upstream = upstream.map_or("127.0.0.1:9".to_owned(), |a| a.to_string());
        let config = support::config_file("hostile", &yaml.replace("{upstream}", &upstream));
        let command = match nofile {
            // A low RLIMIT_NOFILE for this process only (util-linux prlimit).
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(support::binary());
                c
            }
            None => tokio::process::Command::new(support::binary()),
        };
        let (child, http, internal, mut logs) = support::spawn_command(command, &config).await;
        // Keep draining the log so the server never blocks on stderr.
        tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
        Self {
            child,
            http,
            internal,
            client: support::http_client(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Resident set size in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn publish(&self, body: serde_json::Value) -> reqwest::StatusCode {
        within(
            "a publish",
            self.client
                .post(format!("http://{}/publish", self.internal))
                .json(&body)
                .send(),
        )
        .await
        .unwrap()
        .status()
    }

    /// A Prometheus sample's value (0 if absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = within(
            "metrics",
            self.client
                .get(format!("http://{}/metrics", self.internal))
                .send(),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| {
                if name.contains('{') {
                    *k == name
                } else {
                    k.split('{').next() == Some(name)
                }
            })
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Waits until `name` satisfies `ok`.
    async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stuck at {v} (waited {WAIT:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server answers a fresh request on the public listener.
    async fn healthy(&self) {
        let r = within(
            "a request while under attack",
            self.client
                .get(format!("http://{}/nothing-here", self.http))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 404);
    }
}

// === a raw WebSocket client ===

fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let key = [1u8, 2, 3, 4];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

async fn ws_connect(addr: SocketAddr, channel: &str, recv_buffer: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut tcp = within("connect", socket.connect(addr)).await.unwrap();
    support::ws_handshake(&mut tcp, &format!("/live/{channel}")).await;
    tcp
}

/// Raises this process's RLIMIT_NOFILE soft limit to at least `want`
/// (up to the hard limit) with util-linux `prlimit`.
fn raise_nofile(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    let hard_n = hard.parse::<u64>().unwrap_or(u64::MAX);
    if soft.parse::<u64>().unwrap_or(u64::MAX) >= want {
        return;
    }
    assert!(
        hard_n >= want,
        "RLIMIT_NOFILE hard limit {hard} is below {want}"
    );
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string()])
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// A WebSocket handshake read in one go (what follows the 101 may be
/// lost: for peers that only count).
async fn ws_connect_quick(addr: SocketAddr, channel: &str) -> TcpStream {
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    support::ws_handshake(&mut tcp, &format!("/live/{channel}")).await;
    tcp
}

/// This process's RLIMIT_NOFILE hard limit.
fn hard_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .map_or(u64::MAX, |h| h.parse().unwrap_or(u64::MAX))
}

/// `POST /publish` on a kept-alive raw connection; the status.
async fn raw_publish(tcp: &mut TcpStream, body: serde_json::Value) -> u16 {
    let body = body.to_string();
    let request = format!(
        "POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = within("a publish answer", tcp.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "publisher connection closed");
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= len {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

// === slowloris ===

#[tokio::test]
async fn slowloris_on_the_head_is_cut_at_header_read_timeout() {
    let server = Server::start(BASE, None, None).await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /live/x HTTP/1.1\r\n").await.unwrap();
    let dribble = async {
        // One header line every 100 ms, forever, until the server hangs up.
        loop {
            if tcp.write_all(b"x-slow: y\r\n").await.is_err() {
                break;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
    };
    within("the server to cut the slow head", dribble).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut after {took:?} (header_read_timeout 1s)"
    );
    server.healthy().await;
}

#[tokio::test]
async fn a_slow_publisher_blocks_nobody_and_a_truncated_body_publishes_nothing() {
    let server = Server::start(BASE, None, None).await;
    let mut sub = ws_connect(server.http, "body", None).await;
    // A complete JSON object, but the declared length is longer.
    let declared = 200;
    let body = br#"{"channel":"body","data":"partial"}"#;
    let mut slow = TcpStream::connect(server.internal).await.unwrap();
    slow.write_all(
        format!(
            "POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for byte in body {
        slow.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Others publish meanwhile.
    assert_eq!(
        server
            .publish(json!({"channel": "body", "data": "other"}))
            .await,
        200
    );
    // The slow publisher leaves mid-body: nothing of it is published.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server
            .publish(json!({"channel": "body", "data": "after"}))
            .await,
        200
    );
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"after\"") {
        let n = within("messages", sub.read(&mut chunk)).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("\"other\""), "{seen}");
    assert!(
        !seen.contains("partial"),
        "a truncated body was published: {seen}"
    );
    assert_eq!(
        server.metric("pushgate_messages_published_total").await,
        2.0
    );
}

// === WebSocket peers ===

#[tokio::test]
async fn a_websocket_peer_that_never_reads_is_bounded_and_dropped() {
    let server = Server::start(&quick_pong_timeout(), None, None).await;
    let data = "x".repeat(32 << 10);
    let mut rounds = Vec::new();
    for round in 0..3 {
        let channel = format!("stuck{round}");
        // A small receive window: the server's writes stall quickly.
        let stuck = ws_connect(server.http, &channel, Some(4096)).await;
        server.wait_metric("pushgate_sessions", |v| v >= 1.0).await;
        // 300 messages of 32 KiB (9.6 MB) to a peer that reads nothing.
        for _ in 0..12 {
            let messages: Vec<_> = (0..25)
                .map(|_| json!({"channel": channel, "data": data}))
                .collect();
            assert_eq!(server.publish(json!({ "messages": messages })).await, 200);
        }
        // on_lag: disconnect fires and the connection ends.
        server
            .wait_metric("pushgate_lag_disconnects_total", |v| {
                v >= f64::from(round + 1)
            })
            .await;
        server
            .wait_metric("pushgate_open_connections{listener=\"http\"}", |v| v == 0.0)
            .await;
        rounds.push(server.rss_kib());
        drop(stuck);
        server.healthy().await;
    }
    // Memory: the queue bound (16 × 32 KiB) plus 10 messages of history
    // per channel, not 9.6 MB per round; and flat from round to round.
    let (first, last) = (rounds[0], rounds[2]);
    assert!(
        last <= first + 8 * 1024,
        "RSS grew from {first} KiB to {last} KiB over rounds: {rounds:?}"
    );
    eprintln!("server RSS after each never-reading peer (KiB): {rounds:?}");
}

#[tokio::test]
async fn never_reading_peers_under_drop_oldest_are_dropped_after_pong_timeout() {
    // drop_oldest never disconnects: only the stalled-write bound (the
    // `pong_timeout`, 2 s here) can end a peer that reads nothing.
    let yaml = quick_pong_timeout().replace("on_lag: disconnect", "on_lag: drop_oldest");
    let server = Server::start(&yaml, None, None).await;
    let _ws = ws_connect(server.http, "oldest", Some(4096)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sse = socket.connect(server.http).await.unwrap();
    sse.write_all(b"GET /live/oldest HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    server.wait_metric("pushgate_sessions", |v| v >= 2.0).await;
    let before = server.rss_kib();
    let data = "x".repeat(32 << 10);
    // 32 MiB published: kept per peer (one SSE and one WebSocket
    // encoding), it would be 64 MiB; bounded, what remains is the queues
    // (16 each), the history (10) and the allocator's share of the parsed
    // publish bodies.
    for _ in 0..40 {
        let messages: Vec<_> = (0..25)
            .map(|_| json!({"channel": "oldest", "data": data}))
            .collect();
        assert_eq!(server.publish(json!({ "messages": messages })).await, 200);
    }
    // The policy fires (the queue keeps the newest 16)...
    server
        .wait_metric("pushgate_messages_dropped_total", |v| v > 0.0)
        .await;
    let during = server.rss_kib();
    // ...and both stalled connections are dropped.
    server
        .wait_metric("pushgate_open_connections{listener=\"http\"}", |v| v == 0.0)
        .await;
    eprintln!("drop_oldest, 2 never-reading peers: RSS {before} -> {during} KiB");
    assert!(during <= before + 40 * 1024, "RSS {before} -> {during} KiB");
    server.healthy().await;
}

#[tokio::test]
async fn an_sse_client_that_never_reads_is_bounded_and_dropped() {
    let server = Server::start(&quick_pong_timeout(), None, None).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.http).await.unwrap();
    stuck
        .write_all(b"GET /live/sse-stuck HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    server.wait_metric("pushgate_sessions", |v| v >= 1.0).await;
    let data = "x".repeat(32 << 10);
    // 32 MiB published: kept per peer (one SSE and one WebSocket
    // encoding), it would be 64 MiB; bounded, what remains is the queues
    // (16 each), the history (10) and the allocator's share of the parsed
    // publish bodies.
    for _ in 0..40 {
        let messages: Vec<_> = (0..25)
            .map(|_| json!({"channel": "sse-stuck", "data": data}))
            .collect();
        assert_eq!(server.publish(json!({ "messages": messages })).await, 200);
    }
    server
        .wait_metric("pushgate_lag_disconnects_total", |v| v >= 1.0)
        .await;
    // The connection itself ends (its slot is released by the task).
    server
        .wait_metric("pushgate_open_connections{listener=\"http\"}", |v| v == 0.0)
        .await;
    server.healthy().await;
}

#[tokio::test]
async fn one_byte_fragments_forever_close_at_max_message() {
    let server = Server::start(BASE, None, None).await;
    let mut tcp = ws_connect(server.http, "frag", None).await;
    let (mut read, mut write) = tcp.split();
    let flood = async {
        let _ = write.write_all(&client_frame(false, 0x1, b" ")).await;
        // 1-byte continuations without end: the server must close with
        // 1009 at the one that takes the message past max_message (64 KiB).
        // (Writing stops there, so the server has read every byte and its
        // close is not turned into a reset by unread data.)
        let batch: Vec<u8> = (0..1024)
            .flat_map(|_| client_frame(false, 0x0, b" "))
            .collect();
        for _ in 0..64 {
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 4096];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
        all
    };
    let (_, all) = within("the fragment flood to end", async {
        tokio::join!(flood, reader)
    })
    .await;
    // The last frame is the server's Close 1009.
    let at = all
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2..4] == 1009u16.to_be_bytes())
        .unwrap_or_else(|| panic!("no Close 1009 in {} bytes", all.len()));
    assert_eq!(all.len(), at + 2 + usize::from(all[at + 1]));
    server.healthy().await;
}

#[tokio::test]
async fn a_ping_flood_from_a_peer_that_reads_no_pongs_stays_bounded() {
    let server = Server::start(&quick_pong_timeout(), None, None).await;
    let before = server.rss_kib();
    let mut tcp = ws_connect(server.http, "pings", Some(4096)).await;
    let ping = client_frame(true, 0x9, &[b'p'; 125]);
    let batch: Vec<u8> = (0..1000).flat_map(|_| ping.clone()).collect();
    // Write for 3 s without reading: the server's pong writes stall, so it
    // stops reading and the flood stops at TCP's windows (or is dropped
    // after pong_timeout).
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), tcp.write_all(&batch)).await {
            Ok(Ok(())) => sent += 1000,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let after = server.rss_kib();
    eprintln!("ping flood: {sent} pings written; RSS {before} -> {after} KiB");
    // The stalled pong write is abandoned after pong_timeout (2 s).
    server
        .wait_metric("pushgate_open_connections{listener=\"http\"}", |v| v == 0.0)
        .await;
    assert!(
        after <= before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    server.healthy().await;
}

// === HTTP/2 ===

/// The client connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&h2_frame(0x4, 0, 0, &[]));
    out
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET / request's HEADERS (HPACK static table only) with END_STREAM.
fn h2_get(stream: u32) -> Vec<u8> {
    // :method GET, :scheme http, :path /, :authority "x" (literal, no index).
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    h2_frame(0x1, 0x5, stream, &block)
}

/// Reads frames until a GOAWAY (returns its error code) or the end.
async fn h2_goaway(tcp: &mut TcpStream) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x7 && len >= 8 {
                return Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn h2_rapid_reset_gets_goaway() {
    let server = Server::start(BASE, None, None).await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let mut out = h2_preface();
    // 1,000 streams opened and cancelled at once (CVE-2023-44487).
    for n in 0..1000u32 {
        let stream = 2 * n + 1;
        out.extend_from_slice(&h2_get(stream));
        out.extend_from_slice(&h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = tcp.write_all(&out).await;
    let code = h2_goaway(&mut tcp).await;
    // ENHANCE_YOUR_CALM (0xb) after max_pending_accept_reset_streams; the
    // connection does not serve 1,000 cancelled requests.
    assert_eq!(code, Some(0xb), "GOAWAY code");
    server.healthy().await;
}

#[tokio::test]
async fn h2_settings_flood_stays_bounded() {
    let server = Server::start(BASE, None, None).await;
    let before = server.rss_kib();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(server.http).await.unwrap();
    let _ = tcp.write_all(&h2_preface()).await;
    // SETTINGS frames (each owed an ACK) without reading any ACK.
    let settings = h2_frame(0x4, 0, 0, &[0x00, 0x03, 0, 0, 0, 100]);
    let batch: Vec<u8> = (0..10_000).flat_map(|_| settings.clone()).collect();
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), tcp.write_all(&batch)).await {
            Ok(Ok(())) => sent += 10_000,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let after = server.rss_kib();
    eprintln!("SETTINGS flood: {sent} frames written; RSS {before} -> {after} KiB");
    assert!(
        after <= before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    server.healthy().await;
}

// === chaos ===

#[tokio::test]
async fn an_upstream_that_resets_mid_stream_breaks_only_that_response() {
    // A raw upstream: headers and part of a chunked body, then a reset.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                // SO_LINGER 0: close with an RST (a zero linger does
                // not block on drop, which is what the lint warns about).
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    let server = Server::start(BASE, Some(up), None).await;
    let response = within(
        "proxied headers",
        server
            .client
            .get(format!("http://{}/api/stream", server.http))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body = within("the broken body", response.bytes()).await;
    assert!(
        body.is_err(),
        "a reset upstream must not look complete: {body:?}"
    );
    server.healthy().await;
}

#[tokio::test]
async fn a_client_killed_mid_write_leaves_no_connection_behind() {
    let server = Server::start(BASE, None, None).await;
    let baseline = server
        .wait_metric("pushgate_open_connections", |_| true)
        .await;
    // A child process writes half a request head and is SIGKILLed.
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf 'POST /publish HTTP/1.1\\r\\nhost: x\\r\\ncontent-type: application/json\\r\\ncontent-length: 100\\r\\n\\r\\n{{\"chan' >&3; sleep 30",
        server.internal.ip(),
        server.internal.port()
    );
    let mut child = std::process::Command::new("bash")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    server
        .wait_metric("pushgate_open_connections", |v| v > baseline)
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    server
        .wait_metric("pushgate_open_connections", |v| v <= baseline)
        .await;
    assert_eq!(
        server.metric("pushgate_messages_published_total").await,
        0.0
    );
    server.healthy().await;
}

#[tokio::test]
async fn fifteen_thousand_websockets_closed_at_once() {
    // Each end (this process, the server child) needs N descriptors: raise
    // the soft limit (the server inherits it) to the hard limit. A hard
    // limit below 16,000 lowers N, and says so.
    let hard = hard_nofile();
    let n: usize = 15_000.min(usize::try_from(hard.saturating_sub(1_000)).unwrap_or(15_000));
    if n < 15_000 {
        eprintln!("RLIMIT_NOFILE hard limit {hard}: {n} connections instead of 15,000");
    }
    let n = n - n % 250;
    raise_nofile(n as u64 + 500);
    // Not a slowloris test: on a loaded machine a handshake among 15,000
    // may take longer than BASE's 1 s head timeout.
    // Nor about silent peers: these never answer a ping.
    let yaml = BASE
        .replace("header_read_timeout: 1s", "header_read_timeout: 30s")
        .replace("pong_timeout: 60s", "pong_timeout: 10m");
    let server = Server::start(&yaml, None, None).await;
    let before = server.rss_kib();
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for batch in 0..n / 250 {
        let _ = batch;
        let opened = (0..250).map(|_| ws_connect_quick(server.http, "many"));
        sockets.extend(futures_util::future::join_all(opened).await);
    }
    eprintln!(
        "{} WebSockets open in {:?}",
        sockets.len(),
        started.elapsed()
    );
    server
        .wait_metric("pushgate_sessions", |v| v >= n as f64)
        .await;
    let peak = server.rss_kib();
    drop(sockets);
    server.wait_metric("pushgate_sessions", |v| v == 0.0).await;
    server
        .wait_metric("pushgate_open_connections{listener=\"http\"}", |v| v == 0.0)
        .await;
    let fds_after = server.open_fds();
    eprintln!("{n} WebSockets: RSS {before} -> {peak} KiB open, fds after close {fds_after}");
    assert!(fds_after < 64, "{fds_after} fds left open");
    // Still serving, and a new subscriber gets messages.
    let mut fresh = ws_connect(server.http, "after", None).await;
    assert_eq!(
        server.publish(json!({"channel": "after", "data": 1})).await,
        200
    );
    let mut chunk = [0u8; 1024];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"message\"") {
        let n = within("a message", fresh.read(&mut chunk)).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn at_the_fd_limit_old_connections_work_and_new_ones_recover() {
    // 128 descriptors for the whole server; max_connections far above.
    // Idle keep-alive connections are held (no 1 s head timeout here).
    let yaml = BASE.replace("header_read_timeout: 1s", "header_read_timeout: 60s");
    let server = Server::start(&yaml, None, Some(128)).await;
    let mut first = ws_connect(server.http, "fd", None).await;
    let mut publisher = TcpStream::connect(server.internal).await.unwrap();
    assert_eq!(
        raw_publish(&mut publisher, json!({"channel": "fd", "data": "before"})).await,
        200
    );
    /// A new connection's answer to one request (empty: none in time).
    async fn answer(addr: SocketAddr) -> (TcpStream, String) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        // The whole answer (head and body), or what came before a close.
        while !String::from_utf8_lossy(&buf[..got]).contains("}}") {
            match tokio::time::timeout(WAIT, tcp.read(&mut buf[got..])).await {
                Ok(Ok(n)) if n > 0 => got += n,
                _ => break,
            }
        }
        (tcp, String::from_utf8_lossy(&buf[..got]).into_owned())
    }
    // Fill the table: connect until connections stop being served.
    let mut held = Vec::new();
    let refused = loop {
        let (tcp, text) = answer(server.http).await;
        if text.starts_with("HTTP/1.1 404") {
            held.push(tcp);
        } else {
            break text;
        }
        assert!(held.len() < 200, "the fd limit never hit");
    };
    eprintln!(
        "fd limit 128: {} connections served, then: {}",
        held.len(),
        refused.lines().next().unwrap_or("")
    );
    assert!(
        held.len() >= 64,
        "only {} connections before the limit",
        held.len()
    );
    // At the limit a new connection is answered 503 at once (not left in
    // the backlog), and so is every further one.
    for text in [
        refused,
        answer(server.http).await.1,
        answer(server.http).await.1,
    ] {
        assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
        assert!(text.contains("\"too_many_connections\""), "{text:?}");
    }
    // An existing subscriber keeps working.
    assert_eq!(
        raw_publish(&mut publisher, json!({"channel": "fd", "data": "still"})).await,
        200
    );
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("still") {
        let n = within("a message at the fd limit", first.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
    // Freeing descriptors: new connections are served again.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_tcp, text) = answer(server.http).await;
        if text.starts_with("HTTP/1.1 404") {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.healthy().await;
}

// === the hub's memory cap (realtime.history.max_total) ===

#[tokio::test]
async fn publishes_to_ever_new_channels_stay_under_max_total_and_resume_with_a_gap() {
    let yaml = BASE.replace(
        "history: { messages: 10 }",
        "history: { messages: 10, max_total: 4MiB }\n  longpoll_timeout: 5s",
    );
    let server = Server::start(&yaml, None, None).await;
    let publish = |body: serde_json::Value| {
        let request = server
            .client
            .post(format!("http://{}/publish", server.internal))
            .json(&body)
            .send();
        async move {
            let response = within("a publish", request).await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let answer = publish(json!({"messages": [
        {"channel": "early", "data": 1},
        {"channel": "early", "data": 2},
    ]}))
    .await;
    let first_id = answer["results"][0]["id"].as_str().unwrap().to_owned();
    let before = server.rss_kib();
    // 100,000 distinct channels, one 200-byte message each: about 110 MB
    // without the cap (measured before it: ~860 bytes per channel).
    let data = "d".repeat(200);
    for batch in 0..100 {
        let messages: Vec<_> = (0..1000)
            .map(|i| json!({"channel": format!("flood-{batch}-{i}"), "data": data}))
            .collect();
        publish(json!({ "messages": messages })).await;
    }
    let after = server.rss_kib();
    let held = server.metric("pushgate_history_bytes").await;
    let evictions = server.metric("pushgate_history_evictions_total").await;
    let channels = server.metric("pushgate_channels").await;
    eprintln!(
        "100k channels under max_total 4MiB: RSS {before} -> {after} KiB, \
         held {held} bytes, {evictions} evictions, {channels} channels"
    );
    assert!(held <= f64::from(4u32 << 20), "accounted {held} bytes");
    assert!(evictions >= 90_000.0, "{evictions} evictions");
    // The cap plus a fixed overhead (allocator caches, the order map's
    // and the channel map's spare capacity), far from the uncapped 110 MB.
    assert!(
        after <= before + 4 * 1024 + 24 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // `early` (no subscribers) was evicted first: resuming from its first
    // message gets the gap signal at once, never a silent loss.
    let poll = within(
        "a long-poll resume",
        server
            .client
            .get(format!(
                "http://{}/live/early?since={first_id}",
                server.http
            ))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(poll.status(), 200);
    let body: serde_json::Value = poll.json().await.unwrap();
    assert_eq!(body["gap"], json!(["early"]), "{body}");
    server.healthy().await;
}
