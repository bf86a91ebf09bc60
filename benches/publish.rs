//! The publish body decoder (`publish::decode`): one message, a fan-in
//! message to several channels, a batch, and 1 KiB of text `data` against
//! 1 KiB of bytes in `data_base64` (decoded, then re-encoded once for the
//! JSON transports), as `/publish` receives them.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const MAX_MESSAGE: usize = 1 << 20;

fn single() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "channel": "news",
        "event": "update",
        "data": {"seq": 1, "ts_ns": 1_700_000_000_000_000_000u64, "text": "hello"},
    }))
    .unwrap()
}

fn channels() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "channels": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "data": {"seq": 1, "text": "to eight channels"},
        "idempotency_key": "k-1",
    }))
    .unwrap()
}

/// 1 KiB of text `data`, and the same size of bytes as `data_base64`.
fn text_1k() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"channel": "files", "data": "x".repeat(1024)})).unwrap()
}

fn binary_1k() -> Vec<u8> {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..1024).map(|i| (i % 256) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    serde_json::to_vec(&serde_json::json!({"channel": "files", "data_base64": b64})).unwrap()
}

fn batch(n: usize) -> Vec<u8> {
    let messages: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"channel": format!("room-{i}"), "data": {"seq": i}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "messages": messages })).unwrap()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let bodies = [
        ("single", single()),
        ("channels_8", channels()),
        ("batch_100", batch(100)),
        ("text_1k", text_1k()),
        ("binary_1k", binary_1k()),
    ];
    for (name, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| pushgate::publish::decode(std::hint::black_box(body), MAX_MESSAGE).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
