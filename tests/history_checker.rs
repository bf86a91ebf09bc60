//! The history checker (tests/support/history.rs) on synthetic histories:
//! each kind of fault it must find, and the histories it must pass.

mod support;

use support::history::{Event, Publish, Stream, check};

fn log(channel: &str, n: usize) -> Vec<Publish> {
    (0..n)
        .map(|i| Publish {
            channel: channel.into(),
            payload: format!("{channel}:{i}"),
            acked: Some(format!("e-{}", i + 1)),
        })
        .collect()
}

fn msg(channel: &str, i: usize) -> Event {
    Event::Message {
        id: format!("e-{}", i + 1),
        payload: format!("{channel}:{i}"),
    }
}

fn stream(events: Vec<Event>) -> Stream {
    Stream {
        subscriber: "s".into(),
        channel: "c".into(),
        events,
        from_start: true,
        to_end: true,
    }
}

#[test]
fn a_complete_history_is_clean() {
    let r = check(
        &log("c", 5),
        &[stream((0..5).map(|i| msg("c", i)).collect())],
    );
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.acknowledged, r.delivered), (5, 5));
}

#[test]
fn a_silent_hole_is_loss_and_a_gap_covers_it() {
    let hole = vec![msg("c", 0), msg("c", 1), msg("c", 3), msg("c", 4)];
    let r = check(&log("c", 5), &[stream(hole)]);
    assert_eq!(r.lost, [("s".into(), "c".into(), "c:2".into())]);
    let covered = vec![
        msg("c", 0),
        msg("c", 1),
        Event::Gap,
        msg("c", 3),
        msg("c", 4),
    ];
    assert!(check(&log("c", 5), &[stream(covered)]).is_clean());
}

#[test]
fn the_head_and_the_tail_are_owed_only_when_the_stream_spans_them() {
    let middle = vec![msg("c", 1), msg("c", 2)];
    let r = check(&log("c", 4), &[stream(middle.clone())]);
    let lost: Vec<_> = r.lost.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(lost, ["c:0", "c:3"]);
    let joined_late = Stream {
        from_start: false,
        to_end: false,
        ..stream(middle)
    };
    assert!(check(&log("c", 4), &[joined_late]).is_clean());
    // A gap at the end covers the tail.
    let r = check(&log("c", 4), &[stream(vec![msg("c", 0), Event::Gap])]);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn duplicates_and_reordering_are_found() {
    let twice = vec![msg("c", 0), msg("c", 1), msg("c", 1), msg("c", 2)];
    let r = check(&log("c", 3), &[stream(twice)]);
    assert_eq!(r.duplicated.len(), 1);
    assert!(r.lost.is_empty() && r.reordered.is_empty(), "{r}");
    let swapped = vec![msg("c", 0), msg("c", 2), msg("c", 1)];
    let r = check(&log("c", 3), &[stream(swapped)]);
    assert_eq!(r.reordered, [("s".into(), "c".into(), "c:1".into())]);
}

#[test]
fn an_id_that_means_two_messages_is_found() {
    // After a failover lost the tail, the new master hands out e-2
    // again, for another message.
    let mut published = log("c", 2);
    published.push(Publish {
        channel: "c".into(),
        payload: "c:2".into(),
        acked: Some("e-2".into()),
    });
    let events = vec![
        msg("c", 0),
        msg("c", 1),
        Event::Message {
            id: "e-2".into(),
            payload: "c:2".into(),
        },
    ];
    let r = check(&published, &[stream(events)]);
    assert_eq!(
        r.reused_ids,
        [("c".into(), "e-2".into(), vec!["c:1".into(), "c:2".into()])]
    );
    // Another subscriber who only ever saw the second meaning is
    // caught too: the publisher's log holds the first.
    let r = check(
        &log("c", 2),
        &[stream(vec![
            msg("c", 0),
            Event::Message {
                id: "e-2".into(),
                payload: "other".into(),
            },
        ])],
    );
    assert_eq!(r.reused_ids.len(), 1, "{r}");
    assert_eq!(r.unknown.len(), 1);
}

#[test]
fn unacknowledged_publishes_may_arrive_or_not() {
    let mut published = log("c", 3);
    published[1].acked = None;
    let without = vec![msg("c", 0), msg("c", 2)];
    assert!(check(&published, &[stream(without)]).is_clean());
    let with = vec![msg("c", 0), msg("c", 1), msg("c", 2)];
    assert!(check(&published, &[stream(with)]).is_clean());
}

#[test]
fn a_delivery_under_another_id_is_reported() {
    let events = vec![
        msg("c", 0),
        Event::Message {
            id: "f-1".into(),
            payload: "c:1".into(),
        },
    ];
    let r = check(&log("c", 2), &[stream(events)]);
    assert_eq!(r.id_changed.len(), 1);
    assert!(r.reused_ids.is_empty(), "{r}");
}

#[test]
fn channels_and_subscribers_are_checked_apart() {
    let mut published = log("a", 3);
    published.extend(log("b", 3));
    let a = Stream {
        subscriber: "x".into(),
        channel: "a".into(),
        events: (0..3).map(|i| msg("a", i)).collect(),
        from_start: true,
        to_end: true,
    };
    let b = Stream {
        subscriber: "y".into(),
        channel: "b".into(),
        events: vec![msg("b", 0), msg("b", 2)],
        from_start: true,
        to_end: true,
    };
    let r = check(&published, &[a, b]);
    assert_eq!(r.lost, [("y".into(), "b".into(), "b:1".into())]);
    // e-1 on a and e-1 on b are different ids: not a reuse.
    assert!(r.reused_ids.is_empty());
}
