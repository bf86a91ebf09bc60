//! Presence in a NATS JetStream KV bucket, `PREFIX_presence` (`.` in the
//! prefix written `_`): one key per channel (bytes outside `A-Z a-z 0-9 -
//! / _` written `=XX`) holding the same entries as the Redis hash, as
//! JSON: `{"NODE|SUB": [connections, since, expires], "NODE|": [anonymous,
//! 0, expires]}` (Unix ms by the writing node's clock). Every change reads
//! the key and writes it back with compare-and-set on its revision,
//! retrying when another node wrote first, so exactly one node sees a
//! user's first entry appear or its last one go. The bucket's `max_age`
//! (2 × refresh) drops a channel whose nodes all stopped writing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::store::{ChannelEntries, Joining, PresenceStore, StoreFuture};
use super::{Snapshot, now_ms};
use crate::backplane::Error;
use crate::hub::message::ChannelName;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Compare-and-set tries per change while other nodes write the same key.
const TRIES: usize = 32;

/// `field → [connections, since, expires]`.
type Entries = BTreeMap<String, [u64; 3]>;

pub struct NatsPresence {
    js: jetstream::Context,
    bucket: String,
    store: tokio::sync::OnceCell<kv::Store>,
    node: Arc<str>,
    ttl: Duration,
}

/// A channel's key: KV keys allow `A-Z a-z 0-9 - / _ = .`; `.` separates
/// tokens, so it is encoded too.
fn key(channel: &ChannelName) -> String {
    let mut out = String::with_capacity(channel.as_str().len() + 8);
    for b in channel.as_str().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn sub_of(field: &str) -> Option<&str> {
    field.split_once('|').map(|(_, s)| s)
}

/// Whether a live entry other than `own` belongs to `sub`.
fn others(entries: &Entries, own: &str, sub: &str, now: u64) -> bool {
    entries
        .iter()
        .any(|(f, v)| f != own && sub_of(f) == Some(sub) && v[2] > now)
}

impl NatsPresence {
    pub fn new(js: jetstream::Context, prefix: &str, node: Arc<str>, refresh: Duration) -> Self {
        Self {
            js,
            bucket: format!("{}_presence", prefix.replace('.', "_")),
            store: tokio::sync::OnceCell::new(),
            node,
            ttl: refresh * 2,
        }
    }

    async fn kv(&self) -> Result<&kv::Store, Error> {
        self.store
            .get_or_try_init(|| async {
                // The bucket's stream, made directly (as `create_key_value`
                // would, without its account query): one value per key.
                let config = jetstream::stream::Config {
                    name: format!("KV_{}", self.bucket),
                    subjects: vec![format!("$KV.{}.>", self.bucket)],
                    max_messages_per_subject: 1,
                    max_age: self.ttl.max(Duration::from_secs(1)),
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                let unavailable = |e: String| Error::Unavailable(format!("nats kv: {e}"));
                timeout(self.js.get_or_create_stream(config))
                    .await?
                    .map_err(|e| unavailable(e.to_string()))?;
                timeout(self.js.get_key_value(&self.bucket))
                    .await?
                    .map_err(|e| unavailable(e.to_string()))
            })
            .await
    }

    /// Reads `channel`'s entries, lets `change` edit them, and writes them
    /// back if this node's view was the latest; else tries again.
    async fn modify<R>(
        &self,
        channel: &ChannelName,
        mut change: impl FnMut(&mut Entries, u64) -> R,
    ) -> Result<R, Error> {
        let kv = self.kv().await?;
        let key = key(channel);
        let mut last = String::new();
        for _ in 0..TRIES {
            let entry = timeout(kv.entry(key.clone()))
                .await?
                .map_err(|e| Error::Unavailable(format!("nats kv: {e}")))?;
            let (mut entries, revision) = match entry {
                Some(e) => (parse(&e.value), Some(e.revision)),
                None => (Entries::new(), None),
            };
            let result = change(&mut entries, now_ms());
            let value = Bytes::from(serde_json::to_vec(&entries).unwrap_or_default());
            let written = match revision {
                Some(revision) => {
                    timeout(async {
                        kv.update(&key, value, revision)
                            .await
                            .map_err(|e| e.to_string())
                    })
                    .await?
                }
                None => {
                    timeout(async { kv.create(&key, value).await.map_err(|e| e.to_string()) })
                        .await?
                }
            };
            match written {
                Ok(_) => return Ok(result),
                // Another node wrote first (or a transient error): again.
                Err(e) => last = e,
            }
        }
        Err(Error::Unavailable(format!("nats kv: {last}")))
    }
}

async fn timeout<T>(f: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(ANSWER_TIMEOUT, f)
        .await
        .map_err(|_| Error::Unavailable("nats did not answer in time".to_owned()))
}

fn parse(value: &[u8]) -> Entries {
    serde_json::from_slice(value).unwrap_or_default()
}

impl PresenceStore for NatsPresence {
    fn join<'a>(&'a self, channel: &'a ChannelName, member: Joining<'a>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let own = format!("{}|{}", self.node, member.sub);
            let ttl = self.ttl.as_millis() as u64;
            self.modify(channel, |entries, now| {
                let seen = others(entries, &own, member.sub, now);
                let entry = [u64::from(member.connections), member.since, now + ttl];
                entries.insert(own.clone(), entry);
                !seen
            })
            .await
        })
    }

    fn leave<'a>(&'a self, channel: &'a ChannelName, sub: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let own = format!("{}|{sub}", self.node);
            self.modify(channel, |entries, now| {
                let had = entries.remove(&own).is_some();
                had && !others(entries, &own, sub, now)
            })
            .await
        })
    }

    fn refresh_channel<'a>(&'a self, entry: &'a ChannelEntries) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let prefix = format!("{}|", self.node);
            let ttl = self.ttl.as_millis() as u64;
            self.modify(&entry.channel, |stored, now| {
                let mut expired = Vec::new();
                stored.retain(|f, v| {
                    if f.starts_with(&prefix) {
                        return false;
                    }
                    if v[2] <= now {
                        if let Some(s) = sub_of(f).filter(|s| !s.is_empty()) {
                            expired.push(s.to_owned());
                        }
                        return false;
                    }
                    true
                });
                if entry.anonymous > 0 {
                    stored.insert(prefix.clone(), [u64::from(entry.anonymous), 0, now + ttl]);
                }
                for (sub, connections, since) in &entry.members {
                    stored.insert(
                        format!("{prefix}{sub}"),
                        [u64::from(*connections), *since, now + ttl],
                    );
                }
                expired.retain(|s| !others(stored, "", s, now));
                expired.dedup();
                expired
            })
            .await
        })
    }

    fn snapshot<'a>(&'a self, channel: &'a ChannelName) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            let kv = self.kv().await?;
            let entry = timeout(kv.entry(key(channel)))
                .await?
                .map_err(|e| Error::Unavailable(format!("nats kv: {e}")))?;
            let entries = entry.map(|e| parse(&e.value)).unwrap_or_default();
            let now = now_ms();
            let values: Vec<(String, String)> = entries
                .iter()
                .filter(|(_, v)| v[2] > now)
                .map(|(f, v)| (f.clone(), format!("{} {} {}", v[0], v[1], v[2])))
                .collect();
            Ok(super::redis::merge(
                values.iter().map(|(f, v)| (f.as_str(), v.as_str())),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_keys_are_valid_kv_keys() {
        let c = ChannelName::parse("room:1.a@b/c-d_e").unwrap();
        assert_eq!(key(&c), "room=3A1=2Ea=40b/c-d_e");
    }
}
