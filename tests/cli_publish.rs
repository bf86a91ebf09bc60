//! `pushgate publish` against a running pushgate: success, a wrong token,
//! a bad channel, data from stdin, and bytes (`--binary`) from a file or
//! stdin.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::{Pushgate, SseClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0", tokens: ["s3cret"] }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"] } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_prints_the_receipt() {
    let pg = Pushgate::start(CONFIG).await;
    let mut sse = SseClient::connect(&pg.url("/live/news"), None).await;
    pg.wait_subscribers("news", 1).await;
    let (code, stdout, stderr) = run(
        pg.internal,
        &[
            "--token",
            "s3cret",
            "--event",
            "note",
            "news",
            "hello from the CLI",
        ],
        None,
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let receipt: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(receipt["results"][0]["channel"], "news");
    assert_eq!(receipt["results"][0]["subscribers"], 1);
    let event = sse.next_message().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("note", "hello from the CLI")
    );

    // JSON data from stdin, token from the environment.
    let (code, _, stderr) = run(
        pg.internal,
        &["--json", "news", "-"],
        Some("s3cret"),
        Some(b"{\"n\": 1}\n"),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sse.next_message().await.data, r#"{"n":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_publishes_a_files_or_stdins_bytes_unchanged() {
    use base64::Engine as _;
    let pg = Pushgate::start(CONFIG).await;
    let all: Vec<u8> = (0..=255).collect();
    let file = support::temp_dir("cli-binary").join("bytes.bin");
    std::fs::write(&file, &all).unwrap();
    let path: &'static str = Box::leak(file.to_string_lossy().into_owned().into_boxed_str());
    let args: &'static [&'static str] =
        Box::leak(vec!["--token", "s3cret", "--binary", "files", path].into_boxed_slice());
    let (code, stdout, stderr) = run(pg.internal, args, None, None).await;
    assert_eq!(code, 0, "{stderr}");
    let receipt: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = receipt["results"][0]["id"].as_str().unwrap().to_owned();
    // Stdin is taken as it is: the trailing newline is one of the bytes.
    let (code, _, stderr) = run(
        pg.internal,
        &["--binary", "--event", "raw", "files", "-"],
        Some("s3cret"),
        Some(b"\xff\x00\n"),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let start = format!("{}-0", first.split('-').next().unwrap());
    let answer = pg
        .get_json(pg.url(&format!("/live/files?transport=longpoll&since={start}")))
        .await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    assert_eq!(answer["messages"][0]["data_base64"], b64(&all));
    assert_eq!(answer["messages"][1]["data_base64"], b64(b"\xff\x00\n"));
    assert_eq!(answer["messages"][1]["event"], "raw");

    let (code, _, stderr) = run(
        pg.internal,
        &["--binary", "--json", "files", "-"],
        None,
        None,
    )
    .await;
    assert_eq!(code, 2, "--binary with --json is a usage error: {stderr}");
    let (code, _, stderr) = run(
        pg.internal,
        &[
            "--token",
            "s3cret",
            "--binary",
            "files",
            "/nonexistent/file",
        ],
        None,
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_exits_non_zero_with_the_servers_error() {
    let pg = Pushgate::start(CONFIG).await;
    let (code, stdout, stderr) =
        run(pg.internal, &["--token", "nope", "news", "x"], None, None).await;
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("401") && stderr.contains("unauthorized"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_channel_exits_non_zero_with_the_servers_error() {
    let pg = Pushgate::start(CONFIG).await;
    let (code, _, stderr) = run(
        pg.internal,
        &["--token", "s3cret", "bad channel!", "x"],
        None,
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("400") && stderr.contains("invalid_channel"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let out = Command::new(support::binary())
        .args(["publish", "--url", "http://127.0.0.1:1", "news", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://127.0.0.1:1/publish"));
}

/// Runs `pushgate publish --url http://INTERNAL ARGS...` and returns
/// (exit code, stdout, stderr).
fn cli(
    internal: SocketAddr,
    args: &[&str],
    token_env: Option<&str>,
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let mut cmd = Command::new(support::binary());
    cmd.arg("publish")
        .arg("--url")
        .arg(format!("http://{internal}"))
        .args(args);
    cmd.env_remove("PUSHGATE_PUBLISH_TOKEN");
    if let Some(t) = token_env {
        cmd.env("PUSHGATE_PUBLISH_TOKEN", t);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cli` on a blocking thread, so the in-process server keeps running.
async fn run(
    internal: SocketAddr,
    args: &'static [&'static str],
    token_env: Option<&'static str>,
    stdin: Option<&'static [u8]>,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || cli(internal, args, token_env, stdin))
        .await
        .unwrap()
}
