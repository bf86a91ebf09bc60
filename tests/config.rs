//! `pushgate check`: every config error is `file:line:column: message`, the
//! exit code is 64, and nothing starts. The shipped examples parse.

mod support;

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = support::temp_dir("check");
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    std::fs::create_dir_all(dir.join("public")).unwrap();
    let path = dir.join("pushgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(support::binary())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("PUSHGATE_PUBLISH_TOKEN")
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&format!("{}", path.display()), "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const BASE: &str = "listen: { http: [\"127.0.0.1:0\"] }\n";

#[test]
fn shipped_examples_are_valid() {
    for file in ["config/example.yaml", "config/minimal.yaml"] {
        let out = Command::new(support::binary())
            .args(["check", "--config", file])
            .env_remove("PUSHGATE_PUBLISH_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn every_bad_config_is_reported_at_its_place() {
    let cases: &[(&str, &str)] = &[
        (
            "listen:\n  http: [\"127.0.0.1:0\"]\n  htp: []\n",
            "FILE:3:3: unknown field `htp`",
        ),
        (
            &format!("{BASE}shutdown_grace: forever\n"),
            "FILE:2:17: invalid duration \"forever\"",
        ),
        (
            &format!("{BASE}limits: {{ max_body: 1 TiB }}\n"),
            "FILE:2:21: invalid size \"1 TiB\"",
        ),
        (
            &format!("{BASE}realtime: {{ history: {{ max_total: 0 }} }}\n"),
            "FILE:2:35: realtime.history.max_total must be more than 0",
        ),
        (
            &format!(
                "{BASE}routes:\n  - {{ name: r, match: {{ path: /r }}, realtime: {{ channels: [a], history: {{ max_total: 1MiB }} }} }}\n"
            ),
            "history.max_total is the hub's, set it in the top-level realtime block",
        ),
        (
            "listen: { http: [\"localhost\"] }\n",
            "FILE:1:18: invalid listen address \"localhost\"",
        ),
        (
            &format!(
                "{BASE}routes:\n  - name: a\n    match: {{ path_prefix: / }}\n    upstream: ghost\n"
            ),
            "FILE:5:15: route \"a\" names unknown upstream \"ghost\"",
        ),
        (
            &format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: /a }}, realtime: {{ channels: [a] }} }}\n  - {{ name: a, match: {{ path: /b }}, realtime: {{ channels: [b] }} }}\n"
            ),
            "FILE:4:13: duplicate route name \"a\"",
        ),
        (
            &format!("{BASE}routes:\n  - name: none\n    match: {{ path: /x }}\n"),
            "FILE:3:5: route \"none\" must have exactly one of upstream, realtime or static (found 0)",
        ),
        (
            &format!(
                "{BASE}upstreams: {{ u: {{ targets: [\"http://127.0.0.1:1\"] }} }}\nroutes:\n  - name: two\n    match: {{ path: /x }}\n    upstream: u\n    static: {{ dir: public }}\n"
            ),
            "FILE:4:5: route \"two\" must have exactly one of upstream, realtime or static (found 2)",
        ),
        (
            &format!("{BASE}listen: {{ https: [\"127.0.0.1:0\"] }}\n"),
            "FILE:2:1: duplicate mapping key: listen\n",
        ),
        (
            "listen: { https: [\"127.0.0.1:0\"] }\ntls:\n  certificates:\n    - { cert: missing.pem, key: key.pem }\n",
            "FILE:4:15: certificate file \"missing.pem\" not found",
        ),
        (
            "listen: { https: [\"127.0.0.1:0\"] }\ntls:\n  certificates:\n    - { cert: cert.pem, key: key.pem }\n",
            "FILE:4:15: certificate",
        ),
        (
            &format!("{BASE}internal: {{ listen: \"0.0.0.0:5561\" }}\n"),
            "FILE:2:21: internal.listen 0.0.0.0:5561 is not a loopback address and internal.tokens is empty",
        ),
        (
            &format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: \"/x/{{id\" }}, realtime: {{ channels: [a] }} }}\n"
            ),
            "invalid path template \"/x/{id\"",
        ),
        (
            // Regression: this used to pass `check`, then every request to
            // /x/foo-bar answered no_route.
            &format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: \"/x/{{a}}-{{b}}\" }}, realtime: {{ channels: [\"{{a}}\"] }} }}\n"
            ),
            "FILE:3:31: invalid path template \"/x/{a}-{b}\": path segment \"{a}-{b}\" has more than one placeholder",
        ),
        (
            &format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: \"/x/{{id}}\" }}, realtime: {{ channels: [\"{{room}}\"] }} }}\n"
            ),
            "channel template \"{room}\" uses {room}, which the route's path does not capture",
        ),
        (
            &format!(
                "{BASE}routes:\n  - {{ name: a, match: {{ path: /x }}, realtime: {{ channels: [a], on_lag: explode }} }}\n"
            ),
            "unknown variant `explode`",
        ),
        (
            &format!("{BASE}backplane: {{ type: carrier-pigeon }}\n"),
            "FILE:2:20: unknown backplane type \"carrier-pigeon\"",
        ),
        (
            &format!("{BASE}internal: {{ listen: \"${{NOT_SET_ANYWHERE}}\" }}\n"),
            "FILE:2:22: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            &format!("{BASE}limits: {{ max_header: 1KiB }}\n"),
            "limits.max_header must be at least 8KiB",
        ),
        (
            &format!("{BASE}realtime: {{ channels: [a] }}\n"),
            "FILE:2:24: realtime.channels belongs in a route's realtime block",
        ),
        ("listen: [oops\n", "FILE:1:"),
        ("{}\n", "FILE:1:1: no public listener"),
    ];
    for (yaml, expected) in cases {
        let (code, stdout, stderr) = check(yaml);
        assert_eq!(code, 64, "exit code for:\n{yaml}\nstderr: {stderr}");
        assert!(stdout.is_empty(), "nothing else is printed");
        assert!(
            stderr.contains(expected),
            "for:\n{yaml}\nexpected {expected:?} in:\n{stderr}"
        );
        let first = stderr.lines().next().unwrap_or("");
        let mut parts = first.splitn(4, ':');
        assert_eq!(parts.next(), Some("FILE"), "{first}");
        assert!(
            parts.next().unwrap().parse::<u32>().is_ok(),
            "line number in {first}"
        );
        assert!(
            parts.next().unwrap().parse::<u32>().is_ok(),
            "column number in {first}"
        );
    }
}

#[test]
fn run_with_a_bad_config_starts_nothing() {
    let dir = support::temp_dir("run-bad");
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "listen: { http: [\"127.0.0.1:0\"] }\nbogus: true\n").unwrap();
    let out = Command::new(support::binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:1: unknown field `bogus`"));
}

#[test]
fn cli_usage_errors_and_version() {
    let out = Command::new(support::binary())
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(support::binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pushgate "));
    let out = Command::new(support::binary())
        .env_remove("PUSHGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no config given");
}
