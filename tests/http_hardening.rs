//! HTTP edge cases a hostile or broken client can produce, over raw
//! sockets: an overlong request line (414, RFC 9112 §3), an oversized head
//! (431), and a malformed chunked body on a proxied request (400, the
//! upstream request aborted).

mod support;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{Pushgate, body, upstream, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams:
  api:
    targets: ["http://{upstream}"]
    timeout: 10s
routes:
  - name: all
    match: {{ path_prefix: "/" }}
    upstream: api
"#
    )
}

/// Sends `request` (ignoring a reset once the server has answered) and
/// returns the status and body of the answer.
async fn raw(pg: &Pushgate, request: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(pg.http).await.unwrap();
    let (mut read, mut write) = tcp.split();
    let answer = async {
        let mut out = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    break;
                }
            }
        }
        out
    };
    let send = async {
        let _ = write.write_all(request).await;
    };
    let (out, ()) = within("an answer", async { tokio::join!(answer, send) }).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn an_overlong_request_line_is_414_and_a_large_head_431() {
    let up = upstream(|_r: Request<Incoming>| async { Response::new(body("up")) }).await;
    let pg = Pushgate::start(&config(up)).await;

    let line = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100 << 10));
    let (status, body) = raw(&pg, line.as_bytes()).await;
    assert_eq!(status, 414, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "uri_too_long");

    // A long line that fits in max_header (16 KiB) is served.
    let line = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(10 << 10));
    assert_eq!(raw(&pg, line.as_bytes()).await.0, 200);

    // 64 KiB of headers behind a short request line: 431.
    let mut head = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for n in 0..1024 {
        head.push_str(&format!("x-filler-{n:04}: {}\r\n", "v".repeat(48)));
    }
    head.push_str("\r\n");
    assert!(head.len() >= 64 << 10);
    assert_eq!(raw(&pg, head.as_bytes()).await.0, 431);
}

#[tokio::test]
async fn an_overflowing_chunk_size_is_the_clients_fault() {
    let (seen, mut bodies) = mpsc::unbounded_channel();
    let up = upstream(move |r: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let result = r.into_body().collect().await.map(|b| b.to_bytes());
            let _ = seen.send(result.map_err(|e| e.to_string()));
            Response::new(body("read"))
        }
    })
    .await;
    let pg = Pushgate::start(&config(up)).await;

    let request = b"POST /items HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nffffffffffffffffff\r\nmore\r\n0\r\n\r\n";
    let (status, body) = raw(&pg, request).await;
    assert_eq!(status, 400, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "invalid_body");
    // The upstream saw its request aborted, not a complete body.
    let upstream_saw = within("the upstream's body", bodies.recv()).await.unwrap();
    assert!(
        upstream_saw.is_err(),
        "upstream got a body: {upstream_saw:?}"
    );

    // A well-formed chunked body still goes through.
    let request = b"POST /items HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (status, body) = raw(&pg, request).await;
    assert_eq!((status, body.as_str()), (200, "read"));
    let upstream_saw = within("the upstream's body", bodies.recv()).await.unwrap();
    assert_eq!(upstream_saw.unwrap(), "hello");
}
