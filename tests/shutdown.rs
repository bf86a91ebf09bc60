//! SIGTERM on the real binary: not ready, stop accepting, close realtime
//! sessions politely (SSE `pushgate.close`, WebSocket 1001, long-poll `[]`),
//! let the in-flight proxied request finish, exit 0.

mod support;

use std::time::Duration;

use http::Response;
use serde_json::Value;
use support::{SseClient, WsClient, body, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_politely_and_exits_zero() {
    let (got_request_tx, mut got_request) = tokio::sync::mpsc::unbounded_channel::<()>();
    let slow = upstream(move |_| {
        let tx = got_request_tx.clone();
        async move {
            let _ = tx.send(());
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(body("finished"))
        }
    })
    .await;
    let config = support::config_file(
        "sigterm",
        &format!(
            r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams: {{ slow: {{ targets: ["http://{slow}"], timeout: 10s }} }}
routes:
  - {{ name: live, match: {{ path: "/live/{{channel}}" }}, realtime: {{ channels: ["{{channel}}"] }} }}
  - {{ name: api, match: {{ path_prefix: / }}, upstream: slow }}
shutdown_grace: 8s
drain_window: 0s   # all at once: this test is about the order
"#
        ),
    );
    let (mut child, http, internal, mut logs) = support::spawn_binary(&config, &[]).await;
    let client = support::http_client();

    let mut sse = SseClient::connect(&format!("http://{http}/live/a"), None).await;
    let mut ws = WsClient::connect(http, "/live/a").await;
    ws.expect("subscribed").await;
    let poll = {
        let c = client.clone();
        tokio::spawn(async move {
            c.get(format!("http://{http}/live/a"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let in_flight = {
        let c = client.clone();
        tokio::spawn(async move {
            let r = c.get(format!("http://{http}/slow")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    support::within(
        "the proxied request to reach the upstream",
        got_request.recv(),
    )
    .await;
    // Wait until the poll is held (three sessions on channel a).
    support::within("the held poll", async {
        loop {
            let m = client
                .get(format!("http://{internal}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if m.contains("pushgate_sessions{transport=\"longpoll\"} 1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Sessions are closed politely.
    let close = loop {
        let e = sse
            .next()
            .await
            .expect("the SSE stream ends with pushgate.close");
        if e.event == "pushgate.close" {
            break e;
        }
    };
    assert_eq!(
        serde_json::from_str::<Value>(&close.data).unwrap()["reason"],
        "shutdown"
    );
    assert_eq!(ws.closed().await, 1001);
    let answer = support::within("the held poll", poll).await.unwrap();
    assert_eq!(answer["messages"], serde_json::json!([]));

    // Not ready, and new connections are refused, while the request is in flight.
    let ready = client
        .get(format!("http://{internal}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(http).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections are refused while draining");
    assert!(
        !in_flight.is_finished(),
        "the upstream still holds the request"
    );

    // The in-flight request completes, then the process exits 0.
    let (status, text) = support::within("the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!((status, text.as_str()), (200, "finished"));
    let exit = support::within("the process exit", child.wait())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut drained = false;
    while let Ok(Some(line)) = logs.next_line().await {
        drained |= line.contains("Shutdown completed gracefully");
    }
    assert!(drained, "the log says which way the drain ended");
}
