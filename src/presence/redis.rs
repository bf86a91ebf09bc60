//! Presence in Redis: one hash per channel, `PREFIX:p:CHANNEL`, fields
//! `NODE|SUB` (and `NODE|` for the node's anonymous count), values
//! `CONNECTIONS SINCE EXPIRES` (Unix ms, Redis clock). Every write also
//! sets the key's expiry to the entries' lifetime, so a channel whose
//! nodes all died disappears by itself. Each operation is one Lua script:
//! whether a user is new (or gone) across nodes is decided atomically.
//!
//! It uses the backplane's command connection (none while Redis is down:
//! calls fail and the presence task retries them on its next refresh).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::Snapshot;
use super::store::{ChannelEntries, Joining, PresenceStore, StoreFuture};
use crate::backplane::Error;
use crate::backplane::redis::RedisBackplane;
use crate::hub::message::ChannelName;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by the scripts: `now`, and whether field `f` is sub `s`'s.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sub_of(f)
  local bar = string.find(f, '|', 1, true)
  if not bar then return nil end
  return string.sub(f, bar + 1)
end
local function live(v)
  local exp = tonumber(string.match(v, '(%d+)$'))
  return exp ~= nil and exp > now
end
-- Whether a live field other than `own` belongs to `sub`.
local function others(key, own, sub)
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if all[i] ~= own and sub_of(all[i]) == sub and live(all[i + 1]) then
      return true
    end
  end
  return false
end
"#;

/// KEYS[1] hash; ARGV node, sub, connections, since, ttl_ms → 1 joined.
const JOIN_LUA: &str = r#"
local own = ARGV[1] .. '|' .. ARGV[2]
local seen = others(KEYS[1], own, ARGV[2])
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], own, ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. (now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
if seen then return 0 end
return 1
"#;

/// KEYS[1] hash; ARGV node, sub → 1 left.
const LEAVE_LUA: &str = r#"
local own = ARGV[1] .. '|' .. ARGV[2]
local had = redis.call('HDEL', KEYS[1], own)
if others(KEYS[1], own, ARGV[2]) then return 0 end
return had
"#;

/// KEYS[1] hash; ARGV node, ttl_ms, anonymous, then (sub, connections,
/// since) triples → the subs whose last live entry expired.
const REFRESH_LUA: &str = r#"
local node, ttl = ARGV[1], tonumber(ARGV[2])
local prefix = node .. '|'
local all = redis.call('HGETALL', KEYS[1])
local expired = {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], f)
  elseif not live(v) then
    redis.call('HDEL', KEYS[1], f)
    local s = sub_of(f)
    if s and s ~= '' then expired[#expired + 1] = s end
  end
end
local exp = ' ' .. (now + ttl)
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], prefix, ARGV[3] .. ' 0' .. exp)
end
for i = 4, #ARGV, 3 do
  redis.call('HSET', KEYS[1], prefix .. ARGV[i], ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. exp)
end
if redis.call('HLEN', KEYS[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
local gone = {}
for _, s in ipairs(expired) do
  if not others(KEYS[1], '', s) then gone[#gone + 1] = s end
end
return gone
"#;

/// KEYS[1] hash → live fields and values, flat.
const READ_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if live(all[i + 1]) then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
"#;

pub struct RedisPresence {
    backplane: Arc<RedisBackplane>,
    prefix: String,
    node: Arc<str>,
    /// Entries live this long (2 × `presence.refresh`).
    ttl: Duration,
    join: Script,
    leave: Script,
    refresh: Script,
    read: Script,
}

impl RedisPresence {
    pub fn new(
        backplane: Arc<RedisBackplane>,
        prefix: &str,
        node: Arc<str>,
        refresh: Duration,
    ) -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            backplane,
            prefix: prefix.to_owned(),
            node,
            ttl: refresh * 2,
            join: script(JOIN_LUA),
            leave: script(LEAVE_LUA),
            refresh: script(REFRESH_LUA),
            read: script(READ_LUA),
        }
    }

    fn key(&self, channel: &ChannelName) -> String {
        format!("{}:p:{channel}", self.prefix)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let Some(mut conn) = self.backplane.command_connection() else {
            return Err(Error::Unavailable("not connected to redis".to_owned()));
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Err(_) => Err(Error::Unavailable(
                "redis did not answer in time".to_owned(),
            )),
            Ok(Err(e)) => Err(Error::Unavailable(format!("redis: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }
}

impl PresenceStore for RedisPresence {
    fn join<'a>(&'a self, channel: &'a ChannelName, member: Joining<'a>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = self.join.prepare_invoke();
            inv.key(self.key(channel))
                .arg(&*self.node)
                .arg(member.sub)
                .arg(member.connections)
                .arg(member.since)
                .arg(self.ttl_ms());
            let joined: i64 = self.invoke(inv).await?;
            Ok(joined == 1)
        })
    }

    fn leave<'a>(&'a self, channel: &'a ChannelName, sub: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = self.leave.prepare_invoke();
            inv.key(self.key(channel)).arg(&*self.node).arg(sub);
            let left: i64 = self.invoke(inv).await?;
            Ok(left == 1)
        })
    }

    fn refresh_channel<'a>(&'a self, entry: &'a ChannelEntries) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut inv = self.refresh.prepare_invoke();
            inv.key(self.key(&entry.channel))
                .arg(&*self.node)
                .arg(self.ttl_ms())
                .arg(entry.anonymous);
            for (sub, connections, since) in &entry.members {
                inv.arg(&**sub).arg(*connections).arg(*since);
            }
            self.invoke(inv).await
        })
    }

    fn snapshot<'a>(&'a self, channel: &'a ChannelName) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            let mut inv = self.read.prepare_invoke();
            inv.key(self.key(channel));
            let flat: Vec<String> = self.invoke(inv).await?;
            Ok(merge(flat.chunks(2).filter_map(|pair| match pair {
                [field, value] => Some((field.as_str(), value.as_str())),
                _ => None,
            })))
        })
    }
}

/// Merges `NODE|SUB` → `CONNECTIONS SINCE EXPIRES` entries per sub.
pub(super) fn merge<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> Snapshot {
    let mut members: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut anonymous = 0;
    for (field, value) in entries {
        let Some((_, sub)) = field.split_once('|') else {
            continue;
        };
        let mut numbers = value.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        let connections = numbers.next().unwrap_or(0);
        let since = numbers.next().unwrap_or(0);
        if sub.is_empty() {
            anonymous += connections;
            continue;
        }
        let m = members.entry(sub.to_owned()).or_insert((0, u64::MAX));
        m.0 += connections;
        m.1 = m.1.min(since);
    }
    Snapshot {
        clients: members
            .into_iter()
            .map(|(sub, (connections, since))| (sub, connections, since))
            .collect(),
        anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_merge_per_sub_across_nodes() {
        let snap = merge(
            [
                ("a|alice", "1 200 9"),
                ("b|alice", "2 100 9"),
                ("a|", "3 0 9"),
                ("b|", "1 0 9"),
                ("b|x|y", "1 5 9"),
                ("junk", "1 1 1"),
            ]
            .into_iter(),
        );
        assert_eq!(
            snap.clients,
            [("alice".to_owned(), 3, 100), ("x|y".to_owned(), 1, 5)]
        );
        assert_eq!(snap.anonymous, 4);
    }
}
