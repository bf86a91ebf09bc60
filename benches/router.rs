//! Route matching cost with a realistic table.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use pushgate::router::Router;

fn table(n: usize) -> Router {
    let mut yaml = String::from(
        "listen: { http: [\"127.0.0.1:0\"] }\nupstreams: { api: { targets: [\"http://127.0.0.1:1\"] } }\nroutes:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{ name: r{i}, match: {{ path: \"/svc{i}/{{id}}/items\" }}, upstream: api }}\n"
        ));
    }
    yaml.push_str("  - { name: live, match: { path: \"/live/{channel}\" }, realtime: { channels: [\"{channel}\"] } }\n");
    yaml.push_str("  - { name: rest, match: { path_prefix: / }, upstream: api }\n");
    let config = pushgate::config::parse(Path::new("bench.yaml"), &yaml, &|_| None).unwrap();
    Router::new(&config.routes)
}

fn matching(c: &mut Criterion) {
    let router = table(50);
    c.bench_function("router_match_template_after_50", |b| {
        b.iter(|| router.route(Some("example.com"), &Method::GET, "/live/news"))
    });
    c.bench_function("router_match_fallback_prefix", |b| {
        b.iter(|| router.route(Some("example.com"), &Method::GET, "/other/path/x"))
    });
    c.bench_function("router_match_first", |b| {
        b.iter(|| router.route(None, &Method::GET, "/svc0/7/items"))
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
