//! GRIP with the ecosystem's real client code (SPEC §5): a Python origin
//! built on `gripcontrol` (holds, Grip-Sig checks), publishes through
//! `gripcontrol`/`pubcontrol`'s `GripPubControl`, and Debian's
//! `pushpin-publish` CLI POSTing to `/publish/`.
//!
//! Needs `.venv-test` (python with gripcontrol 4.4.0 and pubcontrol 3.5.0;
//! or `PUSHGATE_GRIP_PYTHON`) and `pushpin-publish` (Debian package
//! `pushpin`): `scripts/test` installs both. Missing tools fail the test
//! with the command that installs them, unless
//! `PUSHGATE_SKIP_GRIP_EXTERNAL=1`, which skips with a printed reason.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::held::{self, Held};
use support::{Pushgate, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KEY: &str = "grip-test-key";
const TOKEN: &str = "pub-token";

fn skip_or_fail(what: &str) -> bool {
    if std::env::var("PUSHGATE_SKIP_GRIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("SKIPPED (PUSHGATE_SKIP_GRIP_EXTERNAL=1): {what}");
        return true;
    }
    panic!(
        "{what}\ninstall with: python3 -m venv .venv-test && .venv-test/bin/pip install \
         gripcontrol==4.4.0 pubcontrol==3.5.0; apt-get install --no-install-recommends pushpin \
         (or set PUSHGATE_SKIP_GRIP_EXTERNAL=1 to skip)"
    );
}

/// The Python with gripcontrol, or `None` (after printing why) when skipping.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("PUSHGATE_GRIP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import gripcontrol, pubcontrol"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else if skip_or_fail(&format!(
        "{} cannot import gripcontrol and pubcontrol",
        python.display()
    )) {
        None
    } else {
        unreachable!()
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grip")
        .join(name)
}

/// The gripcontrol origin; killed (by its PID) when dropped.
async fn origin(python: &PathBuf) -> (Child, u16) {
    let mut child = Command::new(python)
        .arg(script("origin.py"))
        .env("GRIP_KEY", KEY)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python origin");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    within(
        "the origin's port",
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap();
    let port = line.trim().parse().expect("the origin prints its port");
    (child, port)
}

fn config(port: u16, tokens: bool) -> String {
    let tokens = if tokens {
        format!(r#", tokens: ["{TOKEN}"]"#)
    } else {
        String::new()
    };
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0"{tokens} }}
upstreams:
  origin:
    targets: ["http://127.0.0.1:{port}"]
    grip_sig_key: "{KEY}"
  unsigned:
    targets: ["http://127.0.0.1:{port}"]
routes:
  - name: unsigned
    match: {{ path_prefix: "/unsigned" }}
    upstream: unsigned
    strip_prefix: "/unsigned"
    grip: true
  - name: app
    match: {{ path_prefix: "/" }}
    upstream: origin
    grip: true
    ws_events: true
"#
    )
}

/// Publishes with gripcontrol's GripPubControl (`tests/grip/publish.py`).
async fn gripcontrol_publish(python: &PathBuf, pg: &Pushgate, args: &[&str]) {
    let output = within(
        "publish.py",
        Command::new(python)
            .arg(script("publish.py"))
            .arg(format!("http://{}", pg.internal))
            .arg(TOKEN)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "publish.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn gripcontrol_origin_holds_a_stream_that_gripcontrol_publishes_to() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    let mut held = Held::open(&pg, "/stream/news").await;
    let (status, headers) = (held.status, held.headers.clone());
    assert_eq!(status, 200, "the origin checked Grip-Sig with gripcontrol");
    assert!(headers.keys().all(|k| !k.as_str().starts_with("grip-")));
    assert_eq!(held.read_until("stream open\n").await, "stream open\n");
    pg.wait_subscribers("news", 1).await;
    gripcontrol_publish(&python, &pg, &["news", "stream", "hello\n"]).await;
    assert_eq!(held.read_until("hello\n").await, "hello\n");
    gripcontrol_publish(&python, &pg, &["news", "stream-bin", "binary\n"]).await;
    assert_eq!(held.read_until("binary\n").await, "binary\n");
    gripcontrol_publish(&python, &pg, &["news", "close"]).await;
    assert_eq!(held.read_to_end().await, "");
}

#[tokio::test]
async fn gripcontrol_instruct_holds_with_prev_id_and_a_response_hold() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    gripcontrol_publish(&python, &pg, &["seq", "stream", "first\n", "1"]).await;
    let mut held = Held::open(&pg, "/instruct/seq?prev=1").await;
    let (status, headers) = (held.status, held.headers.clone());
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain");
    held.read_until("instruct open\n").await;
    pg.wait_subscribers("seq", 1).await;
    gripcontrol_publish(&python, &pg, &["seq", "stream", "third\n", "3", "2"]).await;
    gripcontrol_publish(&python, &pg, &["seq", "stream", "second\n", "2", "1"]).await;
    assert_eq!(held.read_until("third\n").await, "second\nthird\n");

    // create_hold_response: a long-poll answered by publish_http_response.
    let waiting = held::waiting_response(&pg, "/response/poll", "poll", 1).await;
    gripcontrol_publish(&python, &pg, &["poll", "response", "result\n"]).await;
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["x-lib"], "gripcontrol");
    assert_eq!(response.text().await.unwrap(), "result\n");

    // ws-message formats are accepted from the library as well.
    for kind in ["ws-text", "ws-binary", "ws-close"] {
        gripcontrol_publish(&python, &pg, &["poll", kind, "frame"]).await;
    }
}

#[tokio::test]
async fn without_grip_sig_key_the_gripcontrol_origin_refuses() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    let response = pg
        .client()
        .get(pg.url("/unsigned/stream/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "validate_sig must fail");
}

/// `pushpin-publish` (Debian's `pushpin`), or `None` when skipping.
fn pushpin_publish() -> Option<PathBuf> {
    let ok = std::process::Command::new("pushpin-publish")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(PathBuf::from("pushpin-publish"))
    } else if skip_or_fail("pushpin-publish (Debian package pushpin) is not installed") {
        None
    } else {
        unreachable!()
    }
}

async fn pushpin_publish_run(cli: &PathBuf, pg: &Pushgate, args: &[&str]) {
    let output = within(
        "pushpin-publish",
        Command::new(cli)
            .arg("--spec")
            .arg(format!("http://{}", pg.internal))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "pushpin-publish {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "Published");
}

#[tokio::test]
async fn pushpin_publish_reaches_held_streams_and_responses() {
    let Some(cli) = pushpin_publish() else { return };
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    // pushpin-publish sends credentials over https only: no tokens here
    // (the internal listener is loopback-only without them).
    let pg = Pushgate::start(&config(port, false)).await;
    let mut held = Held::started(&pg, "/stream/cli", "stream open\n", "cli").await;
    pushpin_publish_run(&cli, &pg, &["cli", "hello", "--id", "1"]).await;
    assert_eq!(
        held.read_until("hello\n").await,
        "hello\n",
        "adds the newline"
    );
    pushpin_publish_run(
        &cli,
        &pg,
        &["--no-eol", "--id", "3", "--prev-id", "2", "cli", "c"],
    )
    .await;
    pushpin_publish_run(&cli, &pg, &["--id", "2", "--prev-id", "1", "cli", "b"]).await;
    assert_eq!(held.read_until("c").await, "b\nc");
    pushpin_publish_run(&cli, &pg, &["--hint", "cli"]).await;
    pushpin_publish_run(&cli, &pg, &["--close", "cli"]).await;
    assert_eq!(held.read_to_end().await, "");

    let waiting = held::waiting_response(&pg, "/response/cli2", "cli2", 1).await;
    pushpin_publish_run(
        &cli,
        &pg,
        &["cli2", "answer", "--code", "202", "-H", "X-Cli: yes"],
    )
    .await;
    let response = within("the held response", waiting).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.headers()["x-cli"], "yes");
    assert_eq!(response.text().await.unwrap(), "answer\n");
}

async fn ws_text(client: &mut support::WsClient) -> String {
    within("a WebSocket text frame", async {
        loop {
            let f = client.ws.read_frame().await.expect("WebSocket read");
            match f.opcode {
                fastwebsockets::OpCode::Text => {
                    return String::from_utf8(f.payload.to_vec()).unwrap();
                }
                fastwebsockets::OpCode::Close => panic!("closed: {:?}", f.payload.to_vec()),
                _ => continue,
            }
        }
    })
    .await
}

#[tokio::test]
async fn gripcontrol_websocket_over_http_backend() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    // The origin answers OPEN with OPEN, a c:subscribe control message
    // (websocket_control_message), Set-Meta-User and Keep-Alive-Interval.
    let mut client = support::WsClient::connect(pg.http, "/ws/chat").await;
    pg.wait_subscribers("chat", 1).await;
    client.send_text("hello").await;
    assert_eq!(ws_text(&mut client).await, "echo:hello");
    client.send_text("whoami").await;
    assert_eq!(ws_text(&mut client).await, "user=alice");
    gripcontrol_publish(&python, &pg, &["chat", "ws-text", "from the publisher"]).await;
    assert_eq!(ws_text(&mut client).await, "from the publisher");
    // gripcontrol's binary format is content-bin without a type: a binary
    // frame, whatever the bytes (as Pushpin does).
    gripcontrol_publish(&python, &pg, &["chat", "ws-bytes", "ff00fe"]).await;
    assert_eq!(
        ws_message(&mut client).await,
        (false, vec![0xff, 0x00, 0xfe])
    );
    client.send_text("leave").await;
    pg.wait_subscribers("chat", 0).await;
    client.send_text("bye").await;
    within("the close from the backend", async {
        loop {
            let f = client.ws.read_frame().await.expect("WebSocket read");
            if f.opcode == fastwebsockets::OpCode::Close {
                assert_eq!(&f.payload[..2], &1000u16.to_be_bytes());
                return;
            }
        }
    })
    .await;
}

/// The next text or binary frame, as (is it text, payload).
async fn ws_message(client: &mut support::WsClient) -> (bool, Vec<u8>) {
    within("a WebSocket message", async {
        loop {
            let f = client.ws.read_frame().await.expect("WebSocket read");
            match f.opcode {
                fastwebsockets::OpCode::Text => return (true, f.payload.to_vec()),
                fastwebsockets::OpCode::Binary => return (false, f.payload.to_vec()),
                fastwebsockets::OpCode::Close => panic!("closed: {:?}", f.payload.to_vec()),
                _ => continue,
            }
        }
    })
    .await
}

#[tokio::test]
async fn gripcontrol_websocket_context_messages_lose_the_grip_prefix() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    // WebSocketContext answers with `Sec-WebSocket-Extensions: grip` and
    // sends "m:"-prefixed messages; its subscribe is a c: control message.
    let mut client = support::WsClient::connect(pg.http, "/wsgrip/room").await;
    pg.wait_subscribers("room", 1).await;
    client.send_text("hello").await;
    assert_eq!(ws_text(&mut client).await, "echo:hello");
    client
        .ws
        .write_frame(fastwebsockets::Frame::binary(
            fastwebsockets::Payload::Borrowed(b"\x00\x01"),
        ))
        .await
        .unwrap();
    assert_eq!(
        ws_message(&mut client).await,
        (false, b"echo:\x00\x01".to_vec())
    );
    // A message with neither the prefix nor c: is dropped, as Pushpin does.
    client.send_text("raw").await;
    assert_eq!(ws_text(&mut client).await, "after");
    // Published messages carry no prefix and arrive unchanged.
    gripcontrol_publish(&python, &pg, &["room", "ws-text", "m:published"]).await;
    assert_eq!(ws_text(&mut client).await, "m:published");
}

#[tokio::test]
async fn grip_message_prefix_parameter_sets_the_prefix_even_to_empty() {
    let Some(python) = python() else { return };
    let (_origin, port) = origin(&python).await;
    let pg = Pushgate::start(&config(port, true)).await;
    // `grip; message-prefix=""`: nothing is removed, nothing dropped.
    let mut client = support::WsClient::connect(pg.http, "/wsgrip/a?prefix=").await;
    pg.wait_subscribers("a", 1).await;
    client.send_text("hi").await;
    assert_eq!(ws_text(&mut client).await, "m:echo:hi");
    assert_eq!(ws_text(&mut client).await, "own:hi");
    // `grip; message-prefix="p;x="`: WebSocketContext's m: messages are
    // dropped, the origin's own p;x=-prefixed ones lose the prefix.
    let mut client = support::WsClient::connect(pg.http, "/wsgrip/b?prefix=p;x=").await;
    pg.wait_subscribers("b", 1).await;
    client.send_text("hi").await;
    client.send_text("there").await;
    assert_eq!(ws_text(&mut client).await, "own:hi");
    assert_eq!(ws_text(&mut client).await, "own:there");
}
