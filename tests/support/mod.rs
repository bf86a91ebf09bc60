//! Shared test harness: pushgate started in-process on 127.0.0.1:0, a real
//! upstream (hyper), and real clients: reqwest, a WHATWG SSE parser, a
//! WebSocket client (fastwebsockets), and the real binary for signal tests.
#![allow(dead_code, unreachable_pub)]

pub mod backplane;
pub mod fleet;
pub mod held;
pub mod history;
pub mod servers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pushgate::app::{self, Listeners, Running};
use pushgate::config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every `tests/*.rs` waits at most this long for anything.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A reqwest client (rustls with ring, installed once per process).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

// === pushgate in-process ===

pub struct Pushgate {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub internal: SocketAddr,
    pub running: Option<Running>,
    pub dir: PathBuf,
    client: reqwest::Client,
}

/// A fresh temporary directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pushgate-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh directory holding `pushgate.yaml` with `yaml` in it; the path of
/// the file.
pub fn config_file(name: &str, yaml: &str) -> PathBuf {
    let path = temp_dir(name).join("pushgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

impl Pushgate {
    /// Starts pushgate with `yaml` (addresses should use port 0). The file
    /// is written into a temporary directory, so relative paths work.
    pub async fn start(yaml: &str) -> Self {
        let dir = temp_dir("cfg");
        Self::start_in(&dir, yaml).await
    }

    pub async fn start_in(dir: &Path, yaml: &str) -> Self {
        let path = dir.join("pushgate.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config =
            config::parse(&path, yaml, &|_| None).unwrap_or_else(|e| panic!("test config: {e}"));
        let listeners = Listeners::bind(&config).await.unwrap();
        let running = app::start(&config, listeners).await.unwrap();
        Self {
            http: running.http[0],
            https: running.https.first().copied(),
            internal: running.internal,
            running: Some(running),
            dir: dir.to_path_buf(),
            client: http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.http, path)
    }

    pub fn internal_url(&self, path: &str) -> String {
        format!("http://{}{}", self.internal, path)
    }

    /// POSTs a publish body; returns status and JSON.
    pub async fn publish_raw(
        &self,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.post(self.internal_url("/publish")).json(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Publishes `data` to `channel`; returns the message id.
    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> String {
        let (status, body) = self
            .publish_raw(None, &serde_json::json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body["results"][0]["id"].as_str().unwrap().to_owned()
    }

    /// The Prometheus text from the internal listener.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.internal_url("/metrics"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GETs `url` and parses the JSON answer, whatever its status.
    pub async fn get_json(&self, url: impl reqwest::IntoUrl) -> serde_json::Value {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Number of subscribers of `channel` on this node.
    pub fn subscribers(&self, channel: &str) -> usize {
        let ch = pushgate::hub::message::ChannelName::parse(channel).unwrap();
        self.running.as_ref().unwrap().hub.subscriber_count(&ch)
    }

    /// Waits until `channel` has `n` subscribers.
    pub async fn wait_subscribers(&self, channel: &str, n: usize) {
        within(&format!("{n} subscribers on {channel}"), async {
            while self.subscribers(channel) != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    pub async fn drain(&mut self, grace: Duration) -> bool {
        self.running.take().unwrap().drain_within(grace).await
    }
}

impl Drop for Pushgate {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Stop the listeners of a test that did not drain explicitly.
            tokio::spawn(running.drain_within(Duration::from_millis(200)));
        }
    }
}

// === upstream ===

pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn body(text: impl Into<Bytes>) -> UpstreamBody {
    Full::new(text.into())
        .map_err(|n| match n {})
        .boxed_unsync()
}

/// A real HTTP/1.1 upstream on 127.0.0.1:0 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    upstream_counted(handler).await.0
}

/// [`upstream`], also counting the connections it accepted.
pub async fn upstream_counted<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<UpstreamBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(r).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// An upstream that echoes the request line and headers as JSON.
pub async fn echo_upstream() -> SocketAddr {
    upstream(|r: Request<Incoming>| async move {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let method = r.method().to_string();
        let uri = r.uri().to_string();
        let version = format!("{:?}", r.version());
        let body_bytes = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json = serde_json::json!({
            "method": method,
            "uri": uri,
            "version": version,
            "headers": headers,
            "body": String::from_utf8_lossy(&body_bytes),
        });
        let mut response = Response::new(body(json.to_string()));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        response.headers_mut().insert(
            "connection",
            http::HeaderValue::from_static("keep-alive, x-hop"),
        );
        response
            .headers_mut()
            .insert("x-hop", http::HeaderValue::from_static("1"));
        response
    })
    .await
}

// === SSE client (WHATWG parsing rules) ===

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: String,
}

pub struct SseClient {
    pub events: mpsc::UnboundedReceiver<SseEvent>,
    pub status: u16,
    pub headers: http::HeaderMap,
    /// Comments seen (without the leading ':'), for heartbeat tests.
    pub comments: Arc<std::sync::Mutex<Vec<String>>>,
    /// The last event id as a browser's EventSource would hold it.
    pub last_event_id: Arc<std::sync::Mutex<String>>,
    pub retry: Arc<std::sync::Mutex<Option<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseClient {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Self {
        let client = http_client();
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = within("SSE response", request.send()).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let comments = Arc::new(std::sync::Mutex::new(Vec::new()));
        let last = Arc::new(std::sync::Mutex::new(
            last_event_id.unwrap_or("").to_owned(),
        ));
        let retry = Arc::new(std::sync::Mutex::new(None));
        let mut parser = SseParser {
            comments: comments.clone(),
            last_event_id: last.clone(),
            retry: retry.clone(),
            ..Default::default()
        };
        let mut stream = response.bytes_stream();
        let task = tokio::spawn(async move {
            while let Some(Ok(chunk)) = stream.next().await {
                for event in parser.feed(&chunk) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            events: rx,
            status,
            headers,
            comments,
            last_event_id: last,
            retry,
            task,
        }
    }

    pub async fn next(&mut self) -> Option<SseEvent> {
        within("an SSE event", self.events.recv()).await
    }

    /// The next event that is not a pushgate control event.
    pub async fn next_message(&mut self) -> SseEvent {
        loop {
            let e = self.next().await.expect("stream ended");
            if !e.event.starts_with("pushgate.") {
                return e;
            }
        }
    }

    pub fn last_id(&self) -> String {
        self.last_event_id.lock().unwrap().clone()
    }

    /// Drops the connection (like a network failure).
    pub fn disconnect(self) {
        self.task.abort();
    }
}

#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    started: bool,
    data: String,
    event: String,
    id_buffer: Option<String>,
    comments: Arc<std::sync::Mutex<Vec<String>>>,
    last_event_id: Arc<std::sync::Mutex<String>>,
    retry: Arc<std::sync::Mutex<Option<u64>>>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A CR at the very end might be half of CRLF: wait for more.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let mut line = String::from_utf8_lossy(&line).into_owned();
            if !self.started {
                self.started = true;
                if let Some(l) = line.strip_prefix('\u{feff}') {
                    line = l.to_owned();
                }
            }
            if let Some(e) = self.line(&line) {
                out.push(e);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let id = self
                .id_buffer
                .clone()
                .unwrap_or_else(|| self.last_event_id.lock().unwrap().clone());
            *self.last_event_id.lock().unwrap() = id.clone();
            if self.data.is_empty() {
                self.event.clear();
                return None;
            }
            if self.data.ends_with('\n') {
                self.data.pop();
            }
            let e = SseEvent {
                event: if self.event.is_empty() {
                    "message".into()
                } else {
                    std::mem::take(&mut self.event)
                },
                data: std::mem::take(&mut self.data),
                id,
            };
            self.event.clear();
            return Some(e);
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments.lock().unwrap().push(comment.to_owned());
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    *self.retry.lock().unwrap() = Some(ms);
                }
            }
            _ => {}
        }
        None
    }
}

// === WebSocket client ===

pub struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

pub struct WsClient {
    pub ws: WebSocket<TokioIo<Upgraded>>,
}

/// A WebSocket message: a JSON text frame or a binary one.
#[derive(Debug, PartialEq)]
pub enum WsMessage {
    Text(serde_json::Value),
    Binary(Vec<u8>),
}

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsEvent {
    Text(serde_json::Value),
    Close(u16, String),
    Ping,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::try_connect(addr, path)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect {path}: {e}"))
    }

    pub async fn try_connect(addr: SocketAddr, path: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method("GET")
            .uri(path)
            .header("host", addr.to_string())
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header(
                "sec-websocket-key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("sec-websocket-version", "13")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let (mut ws, _) = within(
            "WebSocket handshake",
            fastwebsockets::handshake::client(&SpawnExecutor, request, stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        // Pings are answered by hand in tests that want to stay silent.
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        Ok(Self { ws })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next frame of interest (pongs skipped).
    pub async fn read(&mut self) -> WsEvent {
        within("a WebSocket frame", async {
            loop {
                let frame = self.ws.read_frame().await.expect("WebSocket read");
                match frame.opcode {
                    OpCode::Text => {
                        return WsEvent::Text(
                            serde_json::from_slice(&frame.payload).expect("JSON text frame"),
                        );
                    }
                    OpCode::Close => {
                        let code = if frame.payload.len() >= 2 {
                            u16::from_be_bytes([frame.payload[0], frame.payload[1]])
                        } else {
                            1005
                        };
                        let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[]))
                            .into_owned();
                        return WsEvent::Close(code, reason);
                    }
                    OpCode::Ping => return WsEvent::Ping,
                    _ => continue,
                }
            }
        })
        .await
    }

    /// The next JSON frame, answering pings on the way.
    pub async fn json(&mut self) -> serde_json::Value {
        loop {
            match self.read().await {
                WsEvent::Text(v) => return v,
                WsEvent::Ping => {
                    self.ws
                        .write_frame(Frame::pong(Payload::Owned(vec![])))
                        .await
                        .unwrap();
                }
                WsEvent::Close(code, reason) => panic!("unexpected close {code} {reason}"),
            }
        }
    }

    /// The next frame whose `type` is `kind`.
    pub async fn expect(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let v = self.json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next text or binary message (text as JSON), answering pings.
    pub async fn message(&mut self) -> WsMessage {
        within("a WebSocket message", async {
            loop {
                let frame = self.ws.read_frame().await.expect("WebSocket read");
                match frame.opcode {
                    OpCode::Text => {
                        return WsMessage::Text(
                            serde_json::from_slice(&frame.payload).expect("JSON text frame"),
                        );
                    }
                    OpCode::Binary => return WsMessage::Binary(frame.payload.to_vec()),
                    OpCode::Close => panic!("unexpected close"),
                    OpCode::Ping => {
                        self.ws
                            .write_frame(Frame::pong(Payload::Owned(vec![])))
                            .await
                            .unwrap();
                    }
                    _ => continue,
                }
            }
        })
        .await
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .write_frame(Frame::binary(Payload::Owned(bytes.to_vec())))
            .await
            .unwrap();
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.read().await {
                WsEvent::Close(code, _) => return code,
                _ => continue,
            }
        }
    }
}

// === the real binary ===

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pushgate")
}

pub type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Starts the binary with `--log-format json --config CONFIG` and `envs`
/// (see [`spawn_command`]).
pub async fn spawn_binary(
    config: &Path,
    envs: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, SocketAddr, LogLines) {
    let mut command = tokio::process::Command::new(binary());
    command.envs(envs.iter().copied());
    spawn_command(command, config).await
}

/// Runs `command` (the binary, or a wrapper such as `prlimit` whose last
/// argument so far is the binary) with `--log-format json --config CONFIG`,
/// stderr piped and killed on drop; returns once the http and internal
/// listeners logged their addresses, with the rest of the log.
pub async fn spawn_command(
    mut command: tokio::process::Command,
    config: &Path,
) -> (tokio::process::Child, SocketAddr, SocketAddr, LogLines) {
    let mut child = command
        .args(["--log-format", "json", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (http, internal, logs) = listening_addresses(child.stderr.take().unwrap()).await;
    (child, http, internal, logs)
}

/// Sends a WebSocket upgrade for `path` on `tcp`, written by hand (the
/// raw-socket tests own every byte after it), and reads the answer's head
/// byte by byte, so nothing after it is consumed. Panics unless it is a
/// `101`; returns the head.
pub async fn ws_handshake(tcp: &mut TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    within("the 101 answer", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tcp.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "closed during the handshake: {head:?}");
            head.push(byte[0]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    head
}

/// Reads the binary's JSON log lines until every listener has reported
/// its address; returns (http, internal).
pub async fn listening_addresses(
    stderr: tokio::process::ChildStderr,
) -> (
    SocketAddr,
    SocketAddr,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let (mut http, mut internal) = (None, None);
    within("listening log lines", async {
        while http.is_none() || internal.is_none() {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("binary exited before listening");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "listening" {
                let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                match v["fields"]["listener"].as_str() {
                    Some("http") => http = Some(addr),
                    Some("internal") => internal = Some(addr),
                    _ => {}
                }
            }
        }
    })
    .await;
    (http.unwrap(), internal.unwrap(), lines)
}
