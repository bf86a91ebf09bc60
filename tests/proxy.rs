//! Proxied routes (SPEC §3.1): header hygiene, streaming, upstream failures
//! and their statuses, round robin with passive health, h2c, WebSocket
//! pass-through, and the listener limits.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use support::{Pushgate, WsClient, body, echo_upstream, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(upstream_targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = upstream_targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect();
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams:
  api:
    targets: [{}]
    connect_timeout: 500ms
    timeout: 300ms
    fail_timeout: 1m
routes:
  - name: svc
    match: {{ path_prefix: "/svc" }}
    upstream: api
    strip_prefix: "/svc"
    add_headers: {{ X-Added: "yes" }}
  - name: all
    match: {{ path_prefix: "/" }}
    upstream: api
{extra}"#,
        targets.join(", ")
    )
}

fn http(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A port with nothing listening on it.
async fn dead_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn requests_are_forwarded_with_forwarding_headers_and_without_hop_by_hop() {
    let up = echo_upstream().await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let response = pg
        .client()
        .post(pg.url("/svc/users/7?x=1"))
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.0.0.9")
        .header("x-custom", "kept")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("x-hop").is_none(),
        "response header named by Connection removed"
    );
    assert!(
        response.headers()["via"]
            .to_str()
            .unwrap()
            .contains("pushgate")
    );
    let seen: Value = response.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/users/7?x=1", "strip_prefix keeps the query");
    assert_eq!(seen["body"], "payload");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(h["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], pg.http.to_string());
    assert_eq!(h["host"], pg.http.to_string(), "Host is kept");
    assert_eq!(h["via"], "1.1 pushgate");
    assert_eq!(h["x-added"], "yes");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
}

#[tokio::test]
async fn unreachable_upstream_is_502_with_the_json_error_body() {
    let dead = dead_port().await;
    let pg = Pushgate::start(&config(&[http(dead)], "")).await;
    let response = pg.client().get(pg.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(body["error"]["message"].as_str().unwrap().contains("api"));
}

#[tokio::test]
async fn upstream_without_headers_before_timeout_is_504() {
    let slow = upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(body("late"))
    })
    .await;
    let pg = Pushgate::start(&config(&[http(slow)], "")).await;
    let response = pg.client().get(pg.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_slow_chunked_response_reaches_the_client_chunk_by_chunk() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let release_rx = Arc::new(release_rx);
    let up = upstream(move |_| {
        let release = (*release_rx).clone();
        async move {
            let chunks = futures_util::stream::unfold(0, move |state| {
                let mut release = release.clone();
                async move {
                    match state {
                        0 => Some((
                            Ok::<_, support::BoxError>(Frame::data(Bytes::from("first "))),
                            1,
                        )),
                        1 => {
                            // The second chunk waits until the client saw the first.
                            let _ = release.wait_for(|r| *r).await;
                            Some((Ok(Frame::data(Bytes::from("second"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(StreamBody::new(chunks).boxed_unsync())
        }
    })
    .await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let response = pg.client().get(pg.url("/stream")).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let first = support::within("the first chunk", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first, "first ",
        "delivered before the upstream sent the rest"
    );
    release_tx.send(true).unwrap();
    let second = support::within("the second chunk", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, "second");
}

#[tokio::test]
async fn targets_are_used_round_robin_and_failed_ones_are_skipped() {
    let hits = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut targets = Vec::new();
    for counter in &hits {
        let counter = counter.clone();
        let addr = upstream(move |_| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Response::new(body("ok"))
            }
        })
        .await;
        targets.push(http(addr));
    }
    targets.insert(1, http(dead_port().await));
    let pg = Pushgate::start(&config(&targets, "")).await;
    for _ in 0..10 {
        let response = pg.client().get(pg.url("/rr")).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "a bodyless request is retried on the next target"
        );
    }
    let (a, b) = (
        hits[0].load(Ordering::Relaxed),
        hits[1].load(Ordering::Relaxed),
    );
    assert_eq!(a + b, 10);
    assert!(
        a >= 4 && b >= 4,
        "both healthy targets share the load: {a} / {b}"
    );
    let metrics = pg.metrics().await;
    assert!(
        metrics.contains("pushgate_upstream_response_seconds_count{upstream=\"api\"} 10"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_clients_reach_http1_upstreams() {
    let up = echo_upstream().await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let response = client.get(pg.url("/h2")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(
        seen["headers"]["host"],
        pg.http.to_string(),
        "Host from :authority"
    );
    assert_eq!(seen["headers"]["via"], "2 pushgate");
}

#[tokio::test]
async fn websocket_upgrades_pass_through_to_the_upstream() {
    let up = upstream(|mut request: Request<Incoming>| async move {
        let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request).unwrap();
        tokio::spawn(async move {
            let mut ws = fastwebsockets::FragmentCollector::new(upgrade.await.unwrap());
            while let Ok(frame) = ws.read_frame().await {
                if frame.opcode == fastwebsockets::OpCode::Text {
                    let echo = format!("{{\"echo\":{}}}", String::from_utf8_lossy(&frame.payload));
                    let _ = ws
                        .write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Owned(
                            echo.into_bytes(),
                        )))
                        .await;
                }
            }
        });
        response.map(|_| body(""))
    })
    .await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let mut ws = WsClient::connect(pg.http, "/socket").await;
    ws.send(json!({"hello": 1})).await;
    assert_eq!(ws.json().await, json!({"echo": {"hello": 1}}));
}

#[tokio::test]
async fn no_route_is_404() {
    let yaml = "listen: { http: [\"127.0.0.1:0\"] }\ninternal: { listen: \"127.0.0.1:0\" }\nroutes:\n  - { name: x, match: { path: /only }, realtime: { channels: [a] } }\n";
    let pg = Pushgate::start(yaml).await;
    let response = pg.client().get(pg.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
}

#[tokio::test]
async fn an_oversize_request_head_is_431() {
    let up = echo_upstream().await;
    let pg = Pushgate::start(&config(&[http(up)], "limits: { max_header: 8KiB }\n")).await;
    let response = pg
        .client()
        .get(pg.url("/x"))
        .header("x-big", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let small = pg
        .client()
        .get(pg.url("/x"))
        .header("x-small", "y".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
}

#[tokio::test]
async fn connections_beyond_max_connections_get_503() {
    let up = echo_upstream().await;
    let pg = Pushgate::start(&config(&[http(up)], "limits: { max_connections: 1 }\n")).await;
    // Hold the one allowed connection open with keep-alive.
    let mut held = TcpStream::connect(pg.http).await.unwrap();
    held.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(pg.url("/b")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    drop(held);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let up = echo_upstream().await;
    let pg = Pushgate::start(&config(
        &[http(up)],
        "limits: { header_read_timeout: 500ms }\n",
    ))
    .await;
    let mut slow = TcpStream::connect(pg.http).await.unwrap();
    let trickle = tokio::spawn(async move {
        // One header byte every 100 ms: never a complete head.
        for b in b"GET / HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
            .take(200)
        {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    // Meanwhile a normal client is served.
    let response = pg.client().get(pg.url("/fine")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cut = support::within("the slowloris cut-off", trickle)
        .await
        .unwrap();
    assert!(cut, "the trickling connection was closed by the server");
}

#[tokio::test]
async fn upstream_connections_are_reused_for_every_kind_of_body() {
    let (up, accepted) = support::upstream_counted(|r: Request<Incoming>| async move {
        let chunked = r.uri().path() == "/chunked";
        let sent = r.into_body().collect().await.unwrap().to_bytes();
        if chunked {
            let frames = futures_util::stream::iter(
                ["a", "b", "c"].map(|c| Ok::<_, support::BoxError>(Frame::data(Bytes::from(c)))),
            );
            return Response::new(StreamBody::new(frames).boxed_unsync());
        }
        Response::new(body(format!("got {}", sent.len())))
    })
    .await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let client = pg.client();
    for i in 0..10 {
        let r = client.get(pg.url("/plain")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "got 0", "request {i}");
        let r = client.get(pg.url("/chunked")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "abc", "request {i}");
        let r = client
            .post(pg.url("/post"))
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "got 5", "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "30 sequential requests share one upstream connection"
    );
}

/// An upstream that answers one keep-alive request per connection and then
/// closes it after `idle` without a word, as upstreams with a short
/// keep-alive timeout do.
async fn closing_upstream(idle: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = s.write_all(answer.as_bytes()).await;
                tokio::time::sleep(idle).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn idle_upstream_connections_the_upstream_closed_are_not_used() {
    let (up, accepted) = closing_upstream(Duration::from_millis(20)).await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let client = pg.client();
    for i in 0..5 {
        let r = client.get(pg.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
        // Longer than the upstream keeps an idle connection.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn a_response_the_client_abandons_does_not_leave_its_connection_in_the_pool() {
    let (up, accepted) = support::upstream_counted(|r: Request<Incoming>| async move {
        if r.uri().path() == "/endless" {
            let frames = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, support::BoxError>(Frame::data(Bytes::from("x"))),
                    (),
                ))
            });
            return Response::new(StreamBody::new(frames).boxed_unsync());
        }
        Response::new(body("fine"))
    })
    .await;
    let pg = Pushgate::start(&config(&[http(up)], "")).await;
    let response = pg.client().get(pg.url("/endless")).send().await.unwrap();
    let mut stream = response.bytes_stream();
    support::within("a first chunk", stream.next())
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    for _ in 0..3 {
        let r = pg.client().get(pg.url("/after")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
    }
    assert!(
        accepted.load(Ordering::Relaxed) >= 2,
        "the abandoned connection was not reused"
    );
}
