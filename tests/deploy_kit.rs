//! The deploy kit (deploy/, docs/deploy.md), checked offline:
//! deploy/check/check.py renders the Kubernetes manifests (base and
//! overlays) and validates them with kubernetes-validate and the Grafana
//! dashboard with jsonschema; this file then checks them against the real
//! binary: the ConfigMap's config passes `pushgate check` with only the
//! Deployment's environment, the probes answer on the ports the Deployment
//! names, the grace period covers the drain, and every metric the
//! dashboard queries is in `/metrics` after traffic on every path.
//!
//! Needs a Python with deploy/check/requirements.txt: `PUSHGATE_TEST_PYTHON`
//! (scripts/test sets it to .venv-test), else `python3`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "test-publish-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pushgate")
}

/// check.py's output, run once per test process.
fn kit() -> &'static Value {
    static KIT: OnceLock<Value> = OnceLock::new();
    KIT.get_or_init(|| {
        let python = std::env::var("PUSHGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = std::process::Command::new(&python)
            .arg(repo().join("deploy/check/check.py"))
            .arg(repo())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        assert!(
            out.status.success(),
            "deploy/check/check.py failed (with {python}; scripts/test --setup-only installs \
             deploy/check/requirements.txt into .venv-test):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

/// Every rendered layout: ("base", objects), ("redis", objects), ...
fn layouts() -> Vec<(String, &'static Vec<Value>)> {
    let kit = kit();
    let mut all = vec![("base".to_string(), kit["base"].as_array().unwrap())];
    for (name, objects) in kit["overlays"].as_object().unwrap() {
        all.push((name.clone(), objects.as_array().unwrap()));
    }
    all
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container(objects: &[Value]) -> &Value {
    let deployment = object(objects, "Deployment", "pushgate");
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn config_text(objects: &[Value]) -> String {
    object(objects, "ConfigMap", "pushgate-config")["data"]["pushgate.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The environment the Deployment gives the container, with the Secret's
/// sample values (and ours for the tokens the test uses).
fn container_env(objects: &[Value]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container(objects)["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else {
            let r = &var["valueFrom"]["secretKeyRef"];
            let secret = object(objects, "Secret", r["name"].as_str().unwrap());
            secret["stringData"][r["key"].as_str().unwrap()]
                .as_str()
                .unwrap_or_else(|| panic!("Secret has no {}", r["key"]))
                .to_string()
        };
        let value = match name.as_str() {
            "PUSHGATE_PUBLISH_TOKEN" => TOKEN.to_string(),
            _ => value,
        };
        env.push((name, value));
    }
    env
}

/// Writes the config as the pod sees it: conf/pushgate.yaml next to
/// tls/tls.{crt,key} (a fresh self-signed certificate).
fn lay_out(dir: &Path, config: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls/tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls/tls.key"), key.serialize_pem()).unwrap();
    let path = dir.join("conf/pushgate.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pushgate-deploy-kit-{}-{name}", std::process::id()))
}

/// "30s", "250ms", "10m", "1h".
fn duration(text: &str) -> Duration {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap();
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().unwrap();
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("unknown duration {text}"),
    }
}

fn port_of<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))
}

#[test]
fn manifests_and_dashboard_validate() {
    // check.py exits non-zero on any schema problem; kit() asserts it.
    let kit = kit();
    assert!(
        kit["overlays"]["redis"].is_array(),
        "the Redis overlay renders"
    );
    let redis = kit["overlays"]["redis"].as_array().unwrap();
    let deployment = object(redis, "Deployment", "pushgate");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(kit["configs"]["redis"]["backplane"]["type"], "redis");
}

#[test]
fn configmap_config_passes_check_with_the_deployments_env() {
    for (name, objects) in layouts() {
        let path = lay_out(&temp_dir(&format!("check-{name}")), &config_text(objects));
        let out = std::process::Command::new(binary())
            .args(["check", "--config"])
            .arg(&path)
            // Only what the Deployment gives the pod: a ${VAR} it lacks fails.
            .env_clear()
            .envs(container_env(objects))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: pushgate check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn security_and_services() {
    for (name, objects) in layouts() {
        let c = container(objects);
        let pod = &object(objects, "Deployment", "pushgate")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        // The Dockerfile's user.
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{name}");
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
        // The public Service never carries the internal port; the internal
        // one is ClusterIP and carries only it.
        let public = object(objects, "Service", "pushgate");
        for p in public["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            assert!(
                ["http", "https"].contains(&target),
                "{name}: public {target}"
            );
            port_of(c, target);
        }
        let internal = object(objects, "Service", "pushgate-internal");
        assert_eq!(internal["spec"]["type"], "ClusterIP", "{name}");
        for p in internal["spec"]["ports"].as_array().unwrap() {
            assert_eq!(p["targetPort"], "internal", "{name}");
        }
        // The config mounted where the args say.
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap();
        assert_eq!(
            format!("{}/pushgate.yaml", mount["mountPath"].as_str().unwrap()),
            config_arg,
            "{name}"
        );
    }
}

#[test]
fn grace_period_covers_the_drain() {
    for (name, objects) in layouts() {
        let config = &kit()["configs"][&name];
        let grace = duration(config["shutdown_grace"].as_str().unwrap_or("30s"));
        let window = config["drain_window"]
            .as_str()
            .map(duration)
            .unwrap_or(grace / 2);
        // src/app.rs `Running::drain`: the paced drain (connections spread
        // over drain_window) runs inside shutdown_grace; the internal
        // listener then gets what is left of it, at least 100 ms.
        assert!(window <= grace, "{name}: drain_window > shutdown_grace");
        let drain = grace + Duration::from_millis(100);
        let c = container(objects);
        let pre_stop = match c["lifecycle"]["preStop"]["exec"]["command"].as_array() {
            Some(cmd) => {
                assert_eq!(cmd[0], "sleep", "{name}: preStop is a sleep");
                Duration::from_secs(cmd[1].as_str().unwrap().parse().unwrap())
            }
            None => Duration::ZERO,
        };
        let pod = &object(objects, "Deployment", "pushgate")["spec"]["template"]["spec"];
        let period = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
        // The period counts from the start of preStop.
        assert!(
            period >= pre_stop + drain,
            "{name}: terminationGracePeriodSeconds {period:?} < preStop {pre_stop:?} + drain {drain:?}"
        );
    }
}

// === a running pushgate with the ConfigMap's config ===

struct Running {
    child: tokio::process::Child,
    listeners: HashMap<String, SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the binary with `config`, its listen addresses (which must be
/// those the Deployment's ports name) rewritten to 127.0.0.1:0.
async fn start(name: &str, objects: &[Value], config: &str, env: &[(&str, String)]) -> Running {
    let c = container(objects);
    let parsed = &kit()["configs"]["base"];
    let mut config = config.to_string();
    // Each listener's port is the Deployment's port of the same name.
    let addresses = [
        ("http", parsed["listen"]["http"][0].as_str().unwrap()),
        ("https", parsed["listen"]["https"][0].as_str().unwrap()),
        ("internal", parsed["internal"]["listen"].as_str().unwrap()),
    ];
    for (port, address) in addresses {
        let container_port = port_of(c, port)["containerPort"].as_u64().unwrap();
        assert_eq!(
            address.rsplit(':').next().unwrap(),
            container_port.to_string(),
            "{name}: the {port} listener's port"
        );
        assert!(
            config.contains(&format!("\"{address}\"")),
            "{name}: {address}"
        );
        config = config.replace(&format!("\"{address}\""), "\"127.0.0.1:0\"");
    }
    let path = lay_out(&temp_dir(&format!("run-{name}")), &config);
    let mut child = tokio::process::Command::new(binary())
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .env_clear()
        .envs(container_env(objects))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut listeners = HashMap::new();
    tokio::time::timeout(WAIT, async {
        while listeners.len() < 3 {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("pushgate exited before listening");
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "listening" {
                let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                let listener = v["fields"]["listener"].as_str().unwrap().to_string();
                listeners.insert(listener, addr);
            }
        }
    })
    .await
    .expect("listening log lines");
    // Keep reading stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Running { child, listeners }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

#[tokio::test]
async fn probes_answer_where_the_deployment_looks() {
    for (name, objects) in layouts() {
        if name != "base" {
            // The overlays' configs differ only in the backplane (which
            // would need a Redis here); their ports are checked by
            // `pushgate check` and the base's are the same.
            continue;
        }
        let running = start(&name, objects, &config_text(objects), &[]).await;
        let c = container(objects);
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe}");
            assert!(get["scheme"].is_null() || get["scheme"] == "HTTP");
            // The probe's named port is the internal listener's.
            assert_eq!(get["port"], "internal", "{name}: {probe}");
            let addr = running.listeners["internal"];
            let status = client()
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{name}: {probe} {path}");
        }
        // And not on the public listener: the probes must not be reachable
        // from outside (the public catch-all route proxies them instead).
        let public = running.listeners["http"];
        let status = client()
            .get(format!("http://{public}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        assert_ne!(status, 200, "/readyz is not served publicly");
    }
}

// === the dashboard's metrics ===

/// The metric names a PromQL expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (inside `{...}` or
/// the `(...)` after by / without / on / ignoring / group_left /
/// group_right), strings, ranges (`[5m]`, `[$__rate_interval]`), numbers,
/// durations or Grafana variables (`$name`). Names are kept whole:
/// `x_bucket`, `x_sum`, `x_count` and `x_total` are what the exposition
/// format writes too, so they are looked up as such.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' || chars[j] == '\'' || chars[j] == '`' {
                let q = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != q {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i, c);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit())
        {
            // Numbers and durations (0.99, 1e3, 5m).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = next < chars.len() && chars[next] == '(';
            // `sum by (le) (...)`: an aggregation, its clause before the
            // parenthesis.
            let rest: String = chars[next..].iter().collect();
            let aggregation = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_to(next, ')');
                }
            } else if !call && !aggregation && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_names() {
    let names = |e| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le, upstream) (rate(a_bucket{route=~\"x}\"}[$__rate_interval])))"
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_sum[5m])) / on (instance) group_left (x) b_count offset 1h"),
        ["a_sum", "b_count"]
    );
    assert_eq!(
        names("up == bool 1 and ignoring(job) c:rule"),
        ["c:rule", "up"]
    );
    assert_eq!(names("sum without (le) (x) > 1e3"), ["x"]);
}

/// A backend answering 200 to everything (proxied requests and hooks).
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap_or(0))
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn dashboard_metrics_exist_after_traffic_on_every_path() {
    let objects = kit()["base"].as_array().unwrap();
    let backend = backend().await;
    // The ConfigMap's config, plus a rate limit to trip and hooks to send.
    let mut config = config_text(objects);
    assert!(config.contains("    connect_rate: 0\n"));
    config = config.replace("    connect_rate: 0\n", "    connect_rate: 10/s\n");
    config.push_str("hooks: { upstream: api }\n");
    let running = start(
        "metrics",
        objects,
        &config,
        &[("PUSHGATE_UPSTREAM", format!("http://{backend}"))],
    )
    .await;
    let (public, internal) = (running.listeners["http"], running.listeners["internal"]);
    let http = client();

    // Proxied request.
    let r = http
        .get(format!("http://{public}/api/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // SSE, WebSocket and long-poll subscribers.
    let mut sse = http
        .get(format!("http://{public}/live/demo"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut ws = TcpStream::connect(public).await.unwrap();
    ws.write_all(
        b"GET /live/demo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, ws.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let poll = tokio::spawn({
        let http = http.clone();
        async move {
            http.get(format!("http://{public}/live/demo?transport=longpoll"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A publish, delivered to all three.
    let r = http
        .post(format!("http://{internal}/publish"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"channel":"demo","data":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "publish: {}", r.status());
    tokio::time::timeout(WAIT, sse.chunk())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, poll).await.unwrap().unwrap(),
        200
    );
    // An auth refusal.
    let r = http
        .get(format!("http://{public}/private/secret?transport=sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    // A rate-limit refusal: new realtime connections past 10/s, each
    // on a new TCP connection (counted at accept).
    let mut limited = false;
    for _ in 0..40 {
        let r = client()
            .get(format!(
                "http://{public}/live/demo?transport=longpoll&since=0"
            ))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 429) {
            limited = true;
            break;
        }
    }
    assert!(limited, "connect_rate never refused");
    // Let the hooks batch go out (100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let exposition = http
        .get(format!("http://{internal}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut samples = BTreeSet::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        samples.insert(line[..end].to_string());
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/pushgate.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(queried.len() > 10, "parsed {queried:?}");
    let missing: Vec<_> = queried.difference(&samples).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\nhave: {samples:?}"
    );
    // Traffic reached the counters the proxy panels read.
    assert!(exposition.contains("pushgate_http_requests_total{route=\"api\",status=\"200\"}"));
    drop(ws);
}
