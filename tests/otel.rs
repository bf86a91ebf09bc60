//! OpenTelemetry traces (`tracing.otlp`) from the real binary to a real
//! OTLP/HTTP receiver started here (protobuf decoded with
//! `opentelemetry-proto`): span names, parents, the `traceparent` an
//! upstream sees, the link from a publish to its delivery, auth callback
//! and webhook spans; and `pushgate check` on a bad `tracing:` block.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

type Spans = Arc<Mutex<Vec<Span>>>;
/// What a backend saw: each request's path and `traceparent`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An OTLP/HTTP receiver: `POST /v1/traces` bodies decoded into `Spans`.
async fn receiver() -> (SocketAddr, Spans) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Spans::default();
    let store = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        assert_eq!(r.uri().path(), "/v1/traces");
                        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
                        let body = r.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        let mut store = store.lock().unwrap();
                        for resource in export.resource_spans {
                            for scope in resource.scope_spans {
                                store.extend(scope.spans);
                            }
                        }
                        Ok::<_, Infallible>(Response::new(support::body("")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, spans)
}

/// Waits until the receiver holds a span named `name` matching `pred`.
async fn span(spans: &Spans, name: &str, pred: impl Fn(&Span) -> bool) -> Span {
    support::within(&format!("a {name} span"), async {
        loop {
            if let Some(s) = spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.name == name && pred(s))
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (trace id, parent id) of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<_> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// A backend recording every request's path and `traceparent`; it
/// authorizes `news` at `/authorize` and answers `ok` elsewhere.
async fn recording_backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let backend = support::upstream(move |r: Request<Incoming>| {
        let record = record.clone();
        async move {
            let path = r.uri().path().to_owned();
            let traceparent = r
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().push((path.clone(), traceparent));
            let answer = match path.as_str() {
                "/authorize" => r#"{"channels": ["news"]}"#,
                _ => "ok",
            };
            Response::new(support::body(answer))
        }
    })
    .await;
    (backend, seen)
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SSE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_parents_links_and_propagation() {
    let (collector, spans) = receiver().await;
    let (backend, seen) = recording_backend().await;
    let traceparent_of = |path: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone().expect("a traceparent"))
    };

    let config = support::config_file(
        "otel",
        &format!(
            r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams: {{ backend: {{ targets: ["http://{backend}"] }} }}
routes:
  - name: live
    match: {{ path: "/live/{{channel}}" }}
    realtime: {{ channels: ["{{channel}}"] }}
    auth: {{ callback: {{ upstream: backend, path: /authorize }} }}
  - {{ name: api, match: {{ path_prefix: / }}, upstream: backend }}
hooks: {{ upstream: backend, path: /events, events: [connect] }}
tracing:
  otlp: {{ endpoint: "http://{collector}", sample_ratio: 1.0 }}
"#
        ),
    );
    let (mut child, http, internal, _logs) =
        support::spawn_binary(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await;
    let client = support::http_client();

    // A proxied request carrying the client's traceparent.
    let response = client
        .get(format!("http://{http}/api/thing"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (upstream_trace, upstream_parent) =
        parse_traceparent(&traceparent_of("/api/thing").unwrap());
    assert_eq!(
        upstream_trace, CLIENT_TRACE,
        "the client's trace continues upstream"
    );
    assert_ne!(
        upstream_parent, CLIENT_SPAN,
        "the upstream's parent is pushgate's span"
    );

    let proxy = span(&spans, "proxy", |s| hex(&s.trace_id) == CLIENT_TRACE).await;
    assert_eq!(hex(&proxy.parent_span_id), CLIENT_SPAN);
    assert_eq!(hex(&proxy.span_id), upstream_parent);
    assert_eq!(proxy.kind, 2, "a server span");

    // A subscriber (auth callback, connect webhook), then a publish.
    let sse = client
        .get(format!("http://{http}/live/news"))
        .header("accept", "text/event-stream")
        .header("traceparent", format!("00-{SSE_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // Published until the stream shows it (the first may come before the
    // subscription is in place).
    let (text_tx, mut text_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = sse.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            let _ = text_tx.send(String::from_utf8_lossy(&chunk).into_owned());
        }
    });
    support::within("the message on the SSE stream", async {
        let mut text = String::new();
        while !text.contains("hello") {
            let published = client
                .post(format!("http://{internal}/publish"))
                .json(&serde_json::json!({"channel": "news", "data": "hello"}))
                .send()
                .await
                .unwrap();
            assert_eq!(published.status(), 200);
            let wait = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    t = text_rx.recv() => text.push_str(&t.unwrap()),
                    _ = &mut wait => break,
                }
                if text.contains("hello") {
                    break;
                }
            }
        }
    })
    .await;

    let publish = span(&spans, "publish", |_| true).await;
    assert!(
        publish.parent_span_id.is_empty(),
        "a publish without traceparent is a root"
    );
    let backplane = span(&spans, "backplane.publish", |s| {
        s.trace_id == publish.trace_id
    })
    .await;
    assert_eq!(backplane.parent_span_id, publish.span_id);
    let deliver = span(&spans, "deliver", |s| {
        s.links.iter().any(|l| l.trace_id == publish.trace_id)
    })
    .await;
    assert!(
        deliver.parent_span_id.is_empty(),
        "deliveries are a trace of their own"
    );
    assert_ne!(deliver.trace_id, publish.trace_id);
    assert_eq!(deliver.links.len(), 1);
    assert_eq!(deliver.links[0].span_id, backplane.span_id);

    // The auth callback continues the subscriber's trace and sends it on.
    let auth = span(&spans, "auth.callback", |s| hex(&s.trace_id) == SSE_TRACE).await;
    assert_eq!(hex(&auth.parent_span_id), CLIENT_SPAN);
    let (trace, parent) = parse_traceparent(&traceparent_of("/authorize").unwrap());
    assert_eq!((trace, parent), (SSE_TRACE.to_owned(), hex(&auth.span_id)));

    // The webhook POST carries its span's traceparent.
    let webhook = span(&spans, "webhook", |_| true).await;
    let sent = support::within("the webhook POST", async {
        loop {
            if let Some(t) = traceparent_of("/events") {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        parse_traceparent(&sent),
        (hex(&webhook.trace_id), hex(&webhook.span_id))
    );
    let _ = child.start_kill();
}

#[tokio::test]
async fn without_tracing_a_traceparent_passes_through_untouched() {
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let record = seen.clone();
    let backend = support::upstream(move |r: Request<Incoming>| {
        let record = record.clone();
        async move {
            *record.lock().unwrap() = r
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            Response::new(support::body("ok"))
        }
    })
    .await;
    let pg = support::Pushgate::start(&format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams: {{ backend: {{ targets: ["http://{backend}"] }} }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: backend }}
"#
    ))
    .await;
    let value = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let response = pg
        .client()
        .get(pg.url("/x"))
        .header("traceparent", &value)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(seen.lock().unwrap().as_deref(), Some(value.as_str()));
}

#[test]
fn a_bad_tracing_block_is_reported_at_its_place() {
    let cases = [
        (
            "tracing:\n  otlp: { endpoint: \"ftp://collector:4318\" }\n",
            "FILE:4:21: tracing.otlp.endpoint \"ftp://collector:4318\" must be an http:// or https:// URL",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://c:4318\", sample_ratio: 1.5 }\n",
            "FILE:4:52: tracing.otlp.sample_ratio must be between 0 and 1, not 1.5",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://c:4318\", sample_ratio: -0.1 }\n",
            "tracing.otlp.sample_ratio must be between 0 and 1, not -0.1",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://c:4318\", ratio: 1 }\n",
            "unknown field `ratio`",
        ),
        (
            "tracing:\n  otlp: { sample_ratio: 1 }\n",
            "missing field `endpoint`",
        ),
        ("tracing: {}\n", "FILE:3:10: tracing needs an otlp block"),
    ];
    for (yaml, expected) in cases {
        let path = support::config_file(
            "otel-check",
            &format!("listen: {{ http: [\"127.0.0.1:0\"] }}\n\n{yaml}"),
        );
        let out = Command::new(support::binary())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr =
            String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{yaml}: expected {expected:?}, got {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A good block passes.
    let path = support::config_file(
        "otel-check",
        "listen: { http: [\"127.0.0.1:0\"] }\ntracing:\n  otlp: { endpoint: \"https://collector.example/otlp\", sample_ratio: 0.01 }\n",
    );
    let out = Command::new(support::binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary proxying everything to `backend`, with `tail` appended to its
/// configuration, exporting batches every 50 ms; its log is drained.
async fn proxy_node(
    backend: SocketAddr,
    tail: &str,
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let config = support::config_file(
        "otel-proxy",
        &format!(
            r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
upstreams: {{ backend: {{ targets: ["http://{backend}"] }} }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: backend }}
{tail}
"#
        ),
    );
    let (child, http, internal, mut logs) =
        support::spawn_binary(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    (child, http, internal)
}

/// Sampling is decided before a span exists: at `sample_ratio: 0` a
/// request without `traceparent` and one whose parent is not sampled get
/// no span (the latter's `traceparent` reaches the upstream untouched),
/// while a sampled parent is followed, with its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_sampled_flag_decides_and_roots_follow_the_ratio() {
    let (collector, spans) = receiver().await;
    let (backend, seen) = recording_backend().await;
    let (_child, http, internal) = proxy_node(
        backend,
        &format!("tracing: {{ otlp: {{ endpoint: \"http://{collector}\", sample_ratio: 0.0 }} }}"),
    )
    .await;
    let client = support::http_client();
    let unsampled = format!("00-{SSE_TRACE}-{CLIENT_SPAN}-00");
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");

    // Not recorded: a root at ratio 0, and a parent that is not sampled.
    for (path, traceparent) in [("/root", None), ("/unsampled", Some(&unsampled))] {
        let mut get = client.get(format!("http://{http}{path}"));
        let mut publish = client
            .post(format!("http://{internal}/publish"))
            .json(&serde_json::json!({"channel": "news", "data": path}));
        if let Some(t) = traceparent {
            get = get.header("traceparent", t);
            publish = publish.header("traceparent", t);
        }
        assert_eq!(get.send().await.unwrap().status(), 200);
        assert_eq!(publish.send().await.unwrap().status(), 200);
    }
    // Recorded: a sampled parent.
    let r = client
        .get(format!("http://{http}/sampled"))
        .header("traceparent", &sampled)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://{internal}/publish"))
        .header("traceparent", &sampled)
        .json(&serde_json::json!({"channel": "news", "data": "sampled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let proxy = span(&spans, "proxy", |_| true).await;
    let publish = span(&spans, "publish", |_| true).await;
    let backplane = span(&spans, "backplane.publish", |_| true).await;
    let deliver = span(&spans, "deliver", |_| true).await;
    // Whatever else was exported has had time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in [&proxy, &publish] {
        assert_eq!(hex(&s.trace_id), CLIENT_TRACE, "{}", s.name);
        assert_eq!(hex(&s.parent_span_id), CLIENT_SPAN, "{}", s.name);
    }
    assert_eq!(backplane.parent_span_id, publish.span_id);
    assert_eq!(deliver.links.len(), 1);
    assert_eq!(deliver.links[0].span_id, backplane.span_id);
    let names: Vec<String> = spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["backplane.publish", "deliver", "proxy", "publish"],
        "only the sampled request's spans: {names:?}"
    );

    let traceparent_of = |path: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .expect("the backend saw the request")
    };
    assert_eq!(
        traceparent_of("/root"),
        None,
        "no span, so no traceparent of ours"
    );
    assert_eq!(
        traceparent_of("/unsampled").as_deref(),
        Some(unsampled.as_str()),
        "an unsampled parent passes through untouched"
    );
    let (trace, parent) = parse_traceparent(&traceparent_of("/sampled").unwrap());
    assert_eq!(trace, CLIENT_TRACE);
    assert_eq!(parent, hex(&proxy.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_and_sigterm_still_exits() {
    let backend = support::upstream(|_| async { Response::new(support::body("ok")) }).await;
    // A port nothing listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut child, http, _) = proxy_node(
        backend,
        &format!("tracing: {{ otlp: {{ endpoint: \"http://{down}\" }} }}\nshutdown_grace: 2s"),
    )
    .await;
    let client = support::http_client();
    for _ in 0..20 {
        let r = client
            .get(format!("http://{http}/x"))
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(8), child.wait())
        .await
        .expect("pushgate exits soon after SIGTERM with its collector down")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn tracing_cannot_change_on_reload() {
    let base = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
"#;
    let pg = support::Pushgate::start(base).await;
    std::fs::write(
        pg.dir.join("pushgate.yaml"),
        format!("{base}tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:4318\" }} }}\n"),
    )
    .unwrap();
    let response = pg
        .client()
        .post(pg.internal_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["reloaded"], false);
    assert!(
        answer
            .to_string()
            .contains("tracing cannot change on reload"),
        "{answer}"
    );
}
