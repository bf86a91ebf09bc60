//! Config reload (SPEC §7): `POST /admin/reload` and SIGHUP swap routes,
//! upstreams, limits, certificates and listeners atomically; a bad config
//! is refused whole with its `file:line:col`; held connections keep the
//! settings they opened with; no message is lost while reloading.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use serde_json::{Value, json};
use support::{Pushgate, SseClient, WsClient, body, upstream};

/// Rewrites the config file and asks for a reload; (status, answer).
async fn reload(pg: &Pushgate, yaml: &str) -> (u16, Value) {
    std::fs::write(pg.dir.join("pushgate.yaml"), yaml).unwrap();
    let response = pg
        .client()
        .post(pg.internal_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn text_upstream(text: &'static str) -> SocketAddr {
    upstream(move |_| async move { Response::new(body(text)) }).await
}

fn config(api: SocketAddr, live_path: &str, client_publish: bool, max_body: &str) -> String {
    format!(
        r#"
listen: {{ http: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
limits: {{ max_body: {max_body} }}
upstreams: {{ api: {{ targets: ["http://{api}"] }} }}
routes:
  - name: live
    match: {{ path: "{live_path}" }}
    realtime: {{ channels: ["{{channel}}"], client_publish: {client_publish} }}
  - name: api
    match: {{ path_prefix: "/api" }}
    upstream: api
"#
    )
}

async fn get(pg: &Pushgate, path: &str) -> (u16, String) {
    let r = pg.client().get(pg.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_upstreams_and_limits_and_held_sessions_keep_theirs() {
    let (a, b) = (text_upstream("from a").await, text_upstream("from b").await);
    let pg = Pushgate::start(&config(a, "/live/{channel}", true, "1MiB")).await;
    assert_eq!(get(&pg, "/api/x").await, (200, "from a".into()));

    // Held before the reload: an SSE stream and a WebSocket that may publish.
    let mut sse = SseClient::connect(&pg.url("/live/x"), None).await;
    let mut ws = WsClient::connect(pg.http, "/live/x").await;
    ws.expect("subscribed").await;
    pg.wait_subscribers("x", 2).await;

    // The new config moves the realtime route, points `api` at b, turns
    // client publish off and shrinks max_body.
    let (status, answer) = reload(&pg, &config(b, "/feed/{channel}", false, "100B")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reloaded"], true);
    assert_eq!(answer["routes"], 2);

    assert_eq!(
        get(&pg, "/api/x").await,
        (200, "from b".into()),
        "new upstream"
    );
    assert_eq!(
        get(&pg, "/live/x?transport=info").await.0,
        404,
        "old route gone"
    );
    assert_eq!(get(&pg, "/feed/x?transport=info").await.0, 200, "new route");
    let (status, _) = pg
        .publish_raw(None, &json!({"channel": "x", "data": "y".repeat(200)}))
        .await;
    assert_eq!(status, 413, "new max_body applies to new publishes");

    // The held sessions still receive, and the WebSocket keeps the client
    // publish grant it opened with.
    pg.publish("x", json!("after")).await;
    assert_eq!(sse.next_message().await.data, "after");
    assert_eq!(ws.expect("message").await["data"], "after");
    ws.send(json!({"type": "publish", "channel": "x", "data": "mine"}))
        .await;
    assert_eq!(ws.expect("published").await["channel"], "x");
    assert_eq!(sse.next_message().await.data, "mine");
    // A new WebSocket on the new route gets the new (denied) setting.
    let mut fresh = WsClient::connect(pg.http, "/feed/x").await;
    fresh.expect("subscribed").await;
    fresh
        .send(json!({"type": "publish", "channel": "x", "data": "no"}))
        .await;
    assert_eq!(fresh.expect("error").await["code"], "forbidden");
}

#[tokio::test]
async fn a_bad_config_is_refused_whole_with_its_position() {
    let a = text_upstream("from a").await;
    let good = config(a, "/live/{channel}", false, "1MiB");
    let pg = Pushgate::start(&good).await;
    // Line 5 gets a typo; the rest would be a valid change.
    let bad = good
        .replace("/live/{channel}", "/moved/{channel}")
        .replace("limits: {", "limits: { max_bodyy: 1KiB,");
    let (status, answer) = reload(&pg, &bad).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["reloaded"], false);
    assert_eq!(answer["error"]["code"], "config_invalid");
    let d = &answer["error"]["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(11)),
        "{d}"
    );
    assert!(d["file"].as_str().unwrap().ends_with("pushgate.yaml"));
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pushgate.yaml:4:11:"),
        "file:line:col in {message}"
    );
    assert!(message.contains("max_bodyy"), "{message}");
    // Nothing of it applied: the old route still serves.
    assert_eq!(get(&pg, "/live/x?transport=info").await.0, 200);
    assert_eq!(get(&pg, "/moved/x?transport=info").await.0, 404);

    // A certificate that does not load is refused at its line too.
    let no_cert = good.replace(
        "routes:",
        "tls: { certificates: [ { cert: missing.pem, key: missing-key.pem } ] }\nroutes:",
    );
    let (status, answer) = reload(&pg, &no_cert).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.pem"),
        "{answer}"
    );
    // And a good one afterwards applies.
    let (status, _) = reload(&pg, &good.replace("/live/{channel}", "/moved/{channel}")).await;
    assert_eq!(status, 200);
    assert_eq!(get(&pg, "/moved/x?transport=info").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_without_dropping_the_others() {
    let one = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"] } }
"#;
    let two = one.replace(
        r#"http: ["127.0.0.1:0"]"#,
        r#"http: ["127.0.0.1:0", "127.0.0.1:0"]"#,
    );
    let pg = Pushgate::start(one).await;
    let mut first = SseClient::connect(&pg.url("/live/x"), None).await;

    let (status, answer) = reload(&pg, &two).await;
    assert_eq!(status, 200, "{answer}");
    let http: Vec<SocketAddr> = answer["listeners"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(http.len(), 2);
    assert_eq!(http[0], pg.http, "the first listener is kept, not rebound");
    let second = http[1];
    let mut on_second = SseClient::connect(&format!("http://{second}/live/x"), None).await;
    pg.wait_subscribers("x", 2).await;

    // Back to one listener: the second stops accepting, but the stream it
    // accepted, and the first listener, live on.
    let (status, answer) = reload(&pg, one).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["removed"].as_array().unwrap().len(), 1);
    support::within("the second listener to close", async {
        while tokio::net::TcpStream::connect(second).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    pg.publish("x", json!("still here")).await;
    assert_eq!(first.next_message().await.data, "still here");
    assert_eq!(on_second.next_message().await.data, "still here");
    assert_eq!(get(&pg, "/live/x?transport=info").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_a_steady_publish_stream_lose_no_message() {
    let (a, b) = (text_upstream("a").await, text_upstream("b").await);
    let configs = [
        config(a, "/live/{channel}", false, "1MiB"),
        config(b, "/live/{channel}", true, "512KiB"),
    ];
    let pg = Arc::new(Pushgate::start(&configs[0]).await);
    let mut sse = SseClient::connect(&pg.url("/live/s"), None).await;
    let mut ws = WsClient::connect(pg.http, "/live/s").await;
    ws.expect("subscribed").await;
    pg.wait_subscribers("s", 2).await;

    const N: u64 = 400;
    let publisher = {
        let pg = pg.clone();
        tokio::spawn(async move {
            for n in 0..N {
                pg.publish("s", json!(n)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for i in 0..20 {
        let (status, answer) = reload(&pg, &configs[(i + 1) % 2]).await;
        assert_eq!(status, 200, "reload {i}: {answer}");
        // A fresh request sees the upstream of this generation.
        let expected = if i % 2 == 0 { "b" } else { "a" };
        assert_eq!(get(&pg, "/api/x").await.1, expected, "reload {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::within("the publisher", publisher).await.unwrap();

    for n in 0..N {
        assert_eq!(
            sse.next_message().await.data,
            n.to_string(),
            "SSE in order, none lost"
        );
        assert_eq!(
            ws.expect("message").await["data"],
            n,
            "WebSocket in order, none lost"
        );
    }
}

#[tokio::test]
async fn reloaded_certificates_serve_new_handshakes() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = support::temp_dir("reload-tls");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let leaf = |name: &str, file: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).unwrap();
    };
    leaf("old.test", "old");
    leaf("new.test", "new");
    let yaml = |file: &str| {
        format!(
            r#"
listen: {{ http: ["127.0.0.1:0"], https: ["127.0.0.1:0"] }}
internal: {{ listen: "127.0.0.1:0" }}
tls: {{ certificates: [ {{ cert: {file}.pem, key: {file}-key.pem }} ] }}
routes:
  - {{ name: live, match: {{ path: "/live/{{channel}}" }}, realtime: {{ channels: ["{{channel}}"] }} }}
"#
        )
    };
    let pg = Pushgate::start_in(&dir, &yaml("old")).await;
    let https = pg.https.unwrap();
    let client = |name: &str| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(name, https)
            .no_proxy()
            .build()
            .unwrap();
        (
            client,
            format!("https://{name}:{}/live/x?transport=info", https.port()),
        )
    };
    let (old, old_url) = client("old.test");
    let (new, new_url) = client("new.test");
    assert_eq!(old.get(&old_url).send().await.unwrap().status(), 200);
    assert!(
        new.get(&new_url).send().await.is_err(),
        "no certificate for new.test yet"
    );

    let (status, answer) = reload(&pg, &yaml("new")).await;
    assert_eq!(status, 200, "{answer}");
    let (new, new_url) = client("new.test");
    assert_eq!(
        new.get(&new_url).send().await.unwrap().status(),
        200,
        "the new certificate serves new handshakes on the same listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_logs_a_refusal_with_its_position() {
    let dir = support::temp_dir("sighup");
    let path = dir.join("pushgate.yaml");
    let good = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"] } }
"#;
    std::fs::write(&path, good).unwrap();
    let (mut child, http, _internal, mut logs) = support::spawn_binary(&path, &[]).await;
    let hup = || {
        let pid = child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let mut sse = SseClient::connect(&format!("http://{http}/live/x"), None).await;

    // A bad file: refused, logged with file:line:col, the process lives on.
    std::fs::write(&path, good.replace("routes:", "routez:")).unwrap();
    hup();
    let logged = support::within("the refusal in the log", async {
        loop {
            let line = logs.next_line().await.unwrap().expect("log line");
            if line.contains("Reload refused") {
                return line;
            }
            if line.contains("pushgate.yaml:4:1:") {
                return line;
            }
        }
    })
    .await;
    assert!(logged.contains("pushgate.yaml:4:1:"), "{logged}");
    let client = support::http_client();
    let info = client
        .get(format!("http://{http}/live/x?transport=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200, "the old config keeps serving");

    // A good one: applied.
    std::fs::write(&path, good.replace("/live/", "/feed/")).unwrap();
    hup();
    support::within("the reload in the log", async {
        loop {
            let line = logs.next_line().await.unwrap().expect("log line");
            if line.contains("Config reloaded") {
                return;
            }
        }
    })
    .await;
    let info = client
        .get(format!("http://{http}/feed/x?transport=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200, "the new route serves");
    // The stream opened before both reloads is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sse.next())
            .await
            .is_err(),
        "nothing ended the held stream"
    );
    let _ = child.kill().await;
}
