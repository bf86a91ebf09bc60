//! Paced drain (SPEC §7 `drain_window`): on shutdown, realtime
//! connections close spread over the window, not all at once, and keep
//! receiving messages until their turn.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Pushgate, SseClient, WsClient};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
shutdown_grace: 6s
drain_window: 2s
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"] } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_spread_over_the_drain_window() {
    let mut pg = Pushgate::start(CONFIG).await;
    const SSE: usize = 10;
    let mut streams = Vec::new();
    for _ in 0..SSE {
        streams.push(SseClient::connect(&pg.url("/live/d"), None).await);
    }
    let mut ws = WsClient::connect(pg.http, "/live/d").await;
    ws.expect("subscribed").await;
    pg.wait_subscribers("d", SSE + 1).await;

    // Drain in the background; the internal listener stays up meanwhile.
    let running = pg.running.take().unwrap();
    let started = Instant::now();
    let drain = tokio::spawn(running.drain_within(Duration::from_secs(6)));

    // Each stream: when did its close arrive, and did it get the message
    // published half a second into the drain (if still open by then)?
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                let mut got_message = false;
                loop {
                    let e = sse.next().await.expect("closed with pushgate.close");
                    match e.event.as_str() {
                        "pushgate.close" => return (started.elapsed(), got_message),
                        _ if e.data == "during drain" => got_message = true,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.publish("d", json!("during drain")).await;

    let mut closes = Vec::new();
    for w in watchers {
        closes.push(w.await.unwrap());
    }
    assert_eq!(ws.closed().await, 1001);
    let mut at: Vec<Duration> = closes.iter().map(|(t, _)| *t).collect();
    at.sort();
    let (first, last) = (at[0], at[SSE - 1]);
    assert!(
        first < Duration::from_millis(400),
        "the first turn is at once ({first:?})"
    );
    assert!(
        last >= Duration::from_millis(1300) && last < Duration::from_millis(2600),
        "the last of 11 turns is near the end of the 2 s window ({last:?})"
    );
    // Spread, not bunched: no 300 ms span holds more than 4 of the 10.
    for w in at.windows(5) {
        assert!(
            w[4] - w[0] >= Duration::from_millis(300),
            "closes are spread over the window: {at:?}"
        );
    }
    let late = closes
        .iter()
        .filter(|(t, _)| *t > Duration::from_millis(1000));
    assert!(
        late.clone().count() >= 3 && late.clone().all(|(_, got)| *got),
        "streams not yet at their turn still receive messages: {closes:?}"
    );
    assert!(
        support::within("the drain", drain).await.unwrap(),
        "everything closed within shutdown_grace"
    );
}

#[test]
fn drain_window_defaults_to_half_the_grace_and_cannot_exceed_it() {
    let parse =
        |yaml: &str| pushgate::config::parse(std::path::Path::new("p.yaml"), yaml, &|_| None);
    let base = "listen: { http: [\"127.0.0.1:0\"] }\n";
    let c = parse(&format!("{base}shutdown_grace: 10s\n")).unwrap();
    assert_eq!(c.drain_window, Duration::from_secs(5));
    let c = parse(&format!("{base}shutdown_grace: 10s\ndrain_window: 0s\n")).unwrap();
    assert_eq!(c.drain_window, Duration::ZERO, "0s: close all at once");
    let e = parse(&format!("{base}shutdown_grace: 10s\ndrain_window: 11s\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("p.yaml:3:15: drain_window must not exceed shutdown_grace"),
        "{e}"
    );
}
