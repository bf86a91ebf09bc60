//! Hot paths of the message path: hub fan-out to N subscribers, the
//! history lookup on resume, and SSE / WebSocket encoding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pushgate::hub::Hub;
use pushgate::hub::history::{History, HistoryLimits};
use pushgate::hub::message::{ChannelName, Message, Payload, Position, Publication};
use pushgate::hub::queue::{LagPolicy, Queue};
use pushgate::realtime::{sse, ws};

fn publication(channel: &ChannelName) -> Publication {
    Publication {
        channel: channel.clone(),
        event: None,
        payload: Payload::from_json(
            &serde_json::json!({"seq": 1, "ts_ns": 1_700_000_000_000_000_000u64}),
        ),
        idempotency_key: None,
        accepted_at: Instant::now(),
    }
}

/// A hub with `subscribers` queues on one channel.
fn subscribed(
    subscribers: usize,
    capacity: usize,
    policy: LagPolicy,
) -> (Hub, ChannelName, Vec<Arc<Queue>>) {
    let hub = Hub::with_limits(HistoryLimits {
        messages: 100,
        max_age: Duration::from_secs(600),
    });
    let channel = ChannelName::parse("bench").unwrap();
    let queues: Vec<Arc<Queue>> = (0..subscribers)
        .map(|_| hub.queue(capacity, policy))
        .collect();
    for q in &queues {
        hub.subscribe(q, &channel, None);
    }
    (hub, channel, queues)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for subscribers in [1_000usize, 10_000, 100_000] {
        let (hub, channel, queues) = subscribed(subscribers, 1024, LagPolicy::Disconnect);
        let p = [publication(&channel)];
        let mut drained = std::collections::VecDeque::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    hub.publish(&p);
                    // Consumers drain as sessions would, so queues never fill.
                    for q in &queues {
                        drained.clear();
                        let _ = q.drain(&mut drained);
                    }
                })
            },
        );
    }
    group.finish();
}

/// Fan-out must never block a publisher: with a tenth of the subscribers
/// never draining (their queues full), a publish costs what it costs when
/// everyone keeps up. `drop_oldest` replaces the oldest message of a full
/// queue; `disconnect` closes it once and skips it afterwards.
fn fanout_with_slow_subscribers(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout_10k_slow_tenth");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let subscribers = 10_000usize;
    for (name, policy, slow_every) in [
        ("all_keep_up", LagPolicy::DropOldest, 0),
        ("drop_oldest", LagPolicy::DropOldest, 10),
        ("disconnect", LagPolicy::Disconnect, 10),
    ] {
        let (hub, channel, queues) = subscribed(subscribers, 64, policy);
        let fast: Vec<&Arc<Queue>> = queues
            .iter()
            .enumerate()
            .filter(|(i, _)| slow_every == 0 || i % slow_every != 0)
            .map(|(_, q)| q)
            .collect();
        let p = [publication(&channel)];
        // Fill the slow queues before measuring.
        for _ in 0..100 {
            hub.publish(&p);
            for q in &fast {
                let _ = q.drain(&mut std::collections::VecDeque::new());
            }
        }
        let mut drained = std::collections::VecDeque::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                hub.publish(&p);
                for q in &fast {
                    drained.clear();
                    let _ = q.drain(&mut drained);
                }
            })
        });
    }
    group.finish();
}

fn history_lookup(c: &mut Criterion) {
    let now = Instant::now();
    let channel = ChannelName::parse("h").unwrap();
    let mut history = History::new(HistoryLimits {
        messages: 1000,
        max_age: Duration::from_secs(600),
    });
    for seq in 1..=1000 {
        history.push(Arc::new(Message::new(
            channel.clone(),
            Position { epoch: 1, seq },
            None,
            Payload::from_json(&serde_json::json!(seq)),
            now,
        )));
    }
    let head = Position {
        epoch: 1,
        seq: 1000,
    };
    c.bench_function("history_resume_last_10_of_1000", |b| {
        b.iter(|| history.resume(Position { epoch: 1, seq: 990 }, head))
    });
    c.bench_function("history_resume_gap", |b| {
        b.iter(|| history.resume(Position { epoch: 2, seq: 5 }, head))
    });
}

fn encoding(c: &mut Criterion) {
    let message = Message::new(
        ChannelName::parse("news").unwrap(),
        Position {
            epoch: 0xabcdef123,
            seq: 42,
        },
        None,
        Payload::from_json(&serde_json::json!({"headline": "line one\nline two", "n": 7})),
        Instant::now(),
    );
    c.bench_function("sse_event_encode", |b| {
        b.iter(|| sse::event_bytes("abc-1", &message))
    });
    c.bench_function("ws_message_encode", |b| {
        b.iter(|| ws::message_frame(&message))
    });
}

criterion_group!(
    benches,
    fanout,
    fanout_with_slow_subscribers,
    history_lookup,
    encoding
);
criterion_main!(benches);
