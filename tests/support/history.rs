//! The one history checker for fault tests (issue 24): what a publisher
//! was told and what every subscriber received, checked against the
//! guarantee pushgate gives: every acknowledged message is delivered, or
//! an explicit gap covers it; nothing twice; in order per channel; and an
//! id never means two different messages.
//!
//! Each payload must be unique (say `"{channel}:{n}"`): the checker finds
//! a delivery's place in the publisher's log by its payload, so a message
//! published again under a new id after a failover is still recognised.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One publish attempt, in the order the publisher made them per channel.
#[derive(Clone, Debug)]
pub struct Publish {
    pub channel: String,
    pub payload: String,
    /// The id the publisher was given (`None`: refused or timed out, so
    /// delivery is allowed but not owed).
    pub acked: Option<String>,
}

/// What one subscriber saw on one channel, in order (several connections
/// resuming one another count as one stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message { id: String, payload: String },
    Gap,
}

#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub subscriber: String,
    pub channel: String,
    pub events: Vec<Event>,
    /// The stream was open from before the first publish: messages before
    /// its first delivery are owed too.
    pub from_start: bool,
    /// The stream stayed until the publisher stopped and everything was
    /// delivered: messages after its last delivery are owed too.
    pub to_end: bool,
}

/// Everything the checker found; [`Report::is_clean`] when nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// (subscriber, channel, payload): acknowledged, never delivered, no
    /// gap in its place.
    pub lost: Vec<(String, String, String)>,
    /// (subscriber, channel, payload) delivered more than once.
    pub duplicated: Vec<(String, String, String)>,
    /// (subscriber, channel, payload) delivered after a later message.
    pub reordered: Vec<(String, String, String)>,
    /// (channel, id, payloads): one id, two or more payloads.
    pub reused_ids: Vec<(String, String, Vec<String>)>,
    /// (subscriber, channel, payload): a delivery of nothing published.
    pub unknown: Vec<(String, String, String)>,
    /// (subscriber, channel, payload, acked id, delivered id): delivered
    /// under another id than the publisher was given.
    pub id_changed: Vec<(String, String, String, String, String)>,
    /// Acknowledged messages in all, and deliveries checked.
    pub acknowledged: usize,
    pub delivered: usize,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.reused_ids.is_empty()
            && self.unknown.is_empty()
            && self.id_changed.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} acknowledged, {} delivered",
            self.acknowledged, self.delivered
        )?;
        let mut list = |what: &str, n: usize, first: String| {
            if n > 0 {
                writeln!(f, "{what}: {n} (first: {first})")
            } else {
                Ok(())
            }
        };
        list("lost", self.lost.len(), format!("{:?}", self.lost.first()))?;
        list(
            "duplicated",
            self.duplicated.len(),
            format!("{:?}", self.duplicated.first()),
        )?;
        list(
            "reordered",
            self.reordered.len(),
            format!("{:?}", self.reordered.first()),
        )?;
        list(
            "reused ids",
            self.reused_ids.len(),
            format!("{:?}", self.reused_ids.first()),
        )?;
        list(
            "unknown",
            self.unknown.len(),
            format!("{:?}", self.unknown.first()),
        )?;
        list(
            "id changed",
            self.id_changed.len(),
            format!("{:?}", self.id_changed.first()),
        )
    }
}

/// Checks `streams` against the publisher's `log`.
pub fn check(log: &[Publish], streams: &[Stream]) -> Report {
    let mut report = Report::default();
    // Per channel: the publish order, and each payload's place in it.
    let mut order: HashMap<&str, Vec<&Publish>> = HashMap::new();
    for p in log {
        order.entry(&p.channel).or_default().push(p);
    }
    let place: HashMap<(&str, &str), usize> = order
        .iter()
        .flat_map(|(c, ps)| {
            ps.iter()
                .enumerate()
                .map(move |(i, p)| ((*c, p.payload.as_str()), i))
        })
        .collect();
    report.acknowledged = log.iter().filter(|p| p.acked.is_some()).count();

    // Every (channel, id) with every payload it was given or delivered with.
    let mut meanings: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut mean = |channel: &str, id: &str, payload: &str| {
        let seen = meanings
            .entry((channel.to_owned(), id.to_owned()))
            .or_default();
        if !seen.iter().any(|p| p == payload) {
            seen.push(payload.to_owned());
        }
    };
    for p in log {
        if let Some(id) = &p.acked {
            mean(&p.channel, id, &p.payload);
        }
    }

    for s in streams {
        let who = |payload: &str| (s.subscriber.clone(), s.channel.clone(), payload.to_owned());
        let published = order.get(s.channel.as_str()).map_or(&[][..], |v| &v[..]);
        // The last delivered place, and whether a gap came since.
        let mut last: Option<usize> = None;
        let mut gap_since_last = false;
        let mut first = true;
        let mut seen = vec![false; published.len()];
        // Places owed a delivery: between two deliveries with no gap
        // between them, checked once the whole stream is known (a late
        // delivery is out of order, not lost).
        let mut holes: Vec<(usize, usize)> = Vec::new();
        for e in &s.events {
            let (id, payload) = match e {
                Event::Gap => {
                    gap_since_last = true;
                    continue;
                }
                Event::Message { id, payload } => (id, payload),
            };
            report.delivered += 1;
            mean(&s.channel, id, payload);
            let Some(&at) = place.get(&(s.channel.as_str(), payload.as_str())) else {
                report.unknown.push(who(payload));
                continue;
            };
            if let Some(acked) = &published[at].acked
                && acked != id
            {
                report.id_changed.push((
                    s.subscriber.clone(),
                    s.channel.clone(),
                    payload.clone(),
                    acked.clone(),
                    id.clone(),
                ));
            }
            if seen[at] {
                report.duplicated.push(who(payload));
                continue;
            }
            seen[at] = true;
            if last.is_some_and(|l| at < l) {
                report.reordered.push(who(payload));
                continue;
            }
            // What lies between the previous delivery (or the start) and
            // this one is owed unless a gap was signalled in between.
            let from = match last {
                Some(l) => Some(l + 1),
                None if s.from_start => Some(0),
                None => None,
            };
            if let Some(from) = from
                && !(gap_since_last || first && !s.from_start)
            {
                holes.push((from, at));
            }
            first = false;
            gap_since_last = false;
            last = Some(at);
        }
        if s.to_end && !gap_since_last {
            let from = last.map_or(if s.from_start { 0 } else { published.len() }, |l| l + 1);
            holes.push((from, published.len()));
        }
        for (from, to) in holes {
            owed(published, from, to, &seen, &mut report.lost, &who);
        }
    }
    report.reused_ids = meanings
        .into_iter()
        .filter(|(_, payloads)| payloads.len() > 1)
        .map(|((c, id), payloads)| (c, id, payloads))
        .collect();
    report
}

/// The acknowledged, undelivered publishes in `published[from..to]`.
fn owed(
    published: &[&Publish],
    from: usize,
    to: usize,
    seen: &[bool],
    lost: &mut Vec<(String, String, String)>,
    who: &impl Fn(&str) -> (String, String, String),
) {
    for i in from..to.min(published.len()) {
        if published[i].acked.is_some() && !seen[i] {
            lost.push(who(&published[i].payload));
        }
    }
}
