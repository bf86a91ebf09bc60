//! Redis: many nodes share one order and one history per channel.
//!
//! Keys under `prefix` (default `pushgate`), per channel `C`:
//!
//! * `P:m:C` — a hash: `e` the stream's epoch, `s` its last sequence;
//! * `P:h:C` — a stream, entry id `SEQ-0`, fields `t` (ms), `e` (event),
//!   `d` (compact JSON), trimmed to `history.messages` (`MAXLEN ~`) and
//!   `history.max_age` (`MINID` of the first young entry, then `PEXPIRE`);
//! * `P:i:LEN:C:KEY` — an idempotency key's receipt `EPOCH:SEQ`, kept for
//!   the history's age;
//! * pub/sub channel `P:c:C`, carrying `EPOCH:SEQ:MS:EVENT:JSON`.
//!
//! One Lua script publishes a whole batch atomically (epoch, `HINCRBY`,
//! `XADD`, trims, idempotency, `PUBLISH`); another reads history with
//! `XRANGE` from a sequence. A missing meta hash (FLUSHALL, a restart
//! without persistence, expiry) gets a new random epoch, so every old id
//! resumes with a gap signal, never a silent loss.
//!
//! One multiplexed connection carries commands; one pub/sub connection is
//! subscribed only to channels with subscribers on this node. The task in
//! [`run`] owns the pub/sub side and the hub's history reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Script, Value};
use tracing::{info, warn};

use super::retry::backoff;
use super::{
    Backplane, BackplaneMetrics, Error, FetchResult, PublishFuture, Reads, State, StateCell,
    remote_message,
};
use crate::hub::Hub;
use crate::hub::channel::{Fetch, Fetched};
use crate::hub::message::{ChannelName, Message, Position, Publication, Receipt};
use crate::shutdown::Shutdown;

/// Longest wait for one Redis answer before the backplane counts as down.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE command.
const SUBSCRIBE_CHUNK: usize = 500;
/// Meta hashes outlive their history at least this long, so an idle
/// channel keeps its epoch (and its subscribers' ids stay valid).
const META_TTL_MIN: Duration = Duration::from_secs(24 * 3600);

const PUBLISH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
-- Check every key first: Redis keeps the writes a failing script made, so
-- a batch must fail before its first write or not at all.
for i = 0, n - 1 do
  local meta, hist = KEYS[i * 3 + 1], KEYS[i * 3 + 2]
  local mt, ht = redis.call('TYPE', meta).ok, redis.call('TYPE', hist).ok
  if (mt ~= 'none' and mt ~= 'hash') or (ht ~= 'none' and ht ~= 'stream') then
    return redis.error_reply('WRONGTYPE pushgate key ' .. meta .. ' or ' .. hist .. ' holds another type')
  end
end
local out = {}
for i = 0, n - 1 do
  local meta, hist, idem = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local a = i * 7 + 2
  local maxlen, age = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local event, data, pubch, ttl = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local prior = false
  if idem ~= '' then prior = redis.call('GET', idem) end
  if prior then
    out[i + 1] = prior
  else
    local epoch = redis.call('HGET', meta, 'e')
    if not epoch then
      epoch = ARGV[a]
      redis.call('DEL', hist)
      redis.call('HSET', meta, 'e', epoch, 's', 0)
    end
    local seq = redis.call('HINCRBY', meta, 's', 1)
    redis.call('EXPIRE', meta, ttl)
    if maxlen > 0 then
      redis.call('XADD', hist, 'MAXLEN', '~', maxlen, seq .. '-0', 't', now, 'e', event, 'd', data)
      local cutoff = now - age
      local oldest = redis.call('XRANGE', hist, '-', '+', 'COUNT', 64)
      local keep = nil
      for _, entry in ipairs(oldest) do
        if tonumber(entry[2][2]) >= cutoff then
          keep = entry[1]
          break
        end
      end
      if keep == nil and #oldest > 0 then
        keep = (tonumber(string.match(oldest[#oldest][1], '^%d+')) + 1) .. '-0'
      end
      if keep then redis.call('XTRIM', hist, 'MINID', keep) end
      redis.call('PEXPIRE', hist, age)
    end
    local id = epoch .. ':' .. seq
    if idem ~= '' then redis.call('SET', idem, id, 'PX', age) end
    redis.call('PUBLISH', pubch, id .. ':' .. now .. ':' .. event .. ':' .. data)
    out[i + 1] = id
  end
end
return out
"#;

const READ_LUA: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local s = redis.call('HGET', KEYS[1], 's')
if ARGV[5] == '0' then return {e, s, {}} end
local from = '-'
if ARGV[2] == e then from = '(' .. ARGV[3] .. '-0' end
return {e, s, redis.call('XRANGE', KEYS[2], from, '+')}
"#;

pub use crate::config::{RedisSettings as Settings, check_redis_url as check_url};

pub struct RedisBackplane {
    shared: Arc<Shared>,
}

struct Shared {
    hub: Arc<Hub>,
    client: redis::Client,
    prefix: String,
    state: StateCell,
    /// The command connection while connected.
    conn: Mutex<Option<MultiplexedConnection>>,
    metrics: BackplaneMetrics,
    publish: Script,
    read: Script,
}

impl RedisBackplane {
    /// Starts the backplane's task (connecting in the background: an
    /// unreachable Redis leaves pushgate running, not ready).
    pub fn start(
        settings: &Settings,
        hub: Arc<Hub>,
        metrics: BackplaneMetrics,
        shutdown: &Shutdown,
    ) -> Result<Self, Error> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| Error::Unavailable(format!("invalid redis url: {e}")))?;
        metrics.set_state(State::Connecting);
        let shared = Arc::new(Shared {
            hub,
            client,
            prefix: settings.prefix.clone(),
            state: StateCell::default(),
            conn: Mutex::new(None),
            metrics,
            publish: Script::new(PUBLISH_LUA),
            read: Script::new(READ_LUA),
        });
        shutdown
            .tracker
            .spawn(run(shared.clone(), shutdown.clone()));
        Ok(Self { shared })
    }
}

impl RedisBackplane {
    /// The command connection while connected (presence shares it).
    pub fn command_connection(&self) -> Option<MultiplexedConnection> {
        self.shared.conn()
    }
}

impl Backplane for RedisBackplane {
    fn publish(&self, batch: Vec<Publication>) -> PublishFuture<'_> {
        Box::pin(self.shared.publish(batch))
    }

    fn state(&self) -> State {
        self.shared.state.get()
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

impl Shared {
    fn meta_key(&self, channel: &ChannelName) -> String {
        format!("{}:m:{channel}", self.prefix)
    }

    fn history_key(&self, channel: &ChannelName) -> String {
        format!("{}:h:{channel}", self.prefix)
    }

    fn pubsub_name(&self, channel: &ChannelName) -> String {
        format!("{}:c:{channel}", self.prefix)
    }

    fn channel_of(&self, pubsub_name: &str) -> Option<ChannelName> {
        let rest = pubsub_name
            .strip_prefix(&self.prefix)?
            .strip_prefix(":c:")?;
        ChannelName::parse(rest).ok()
    }

    fn conn(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_conn(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    /// Records a state change; true when it is one (so it is logged once).
    fn set_state(&self, state: State) -> bool {
        self.metrics.set_state(state);
        self.state.set(state) != state
    }

    async fn publish(self: &Arc<Self>, batch: Vec<Publication>) -> Result<Vec<Receipt>, Error> {
        let Some(mut conn) = self.conn() else {
            return Err(Error::Unavailable("not connected to redis".to_owned()));
        };
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.iter().any(|p| p.payload.grip().is_some()) {
            return self.publish_mixed(conn, batch).await;
        }
        let started = Instant::now();
        let mut invocation = self.publish.prepare_invoke();
        invocation.arg(batch.len());
        for p in &batch {
            let limits = self.hub.limits(&p.channel);
            let age_ms = limits.max_age.as_millis().max(1000) as u64;
            let idem = p.idempotency_key.as_ref().map_or(String::new(), |k| {
                format!(
                    "{}:i:{}:{}:{k}",
                    self.prefix,
                    p.channel.as_str().len(),
                    p.channel
                )
            });
            invocation
                .key(self.meta_key(&p.channel))
                .key(self.history_key(&p.channel))
                .key(idem)
                .arg(Position::random_epoch())
                .arg(limits.messages)
                .arg(age_ms)
                .arg(p.event.as_ref().map_or("", |e| e.as_str()))
                .arg(p.payload.wire().as_ref())
                .arg(self.pubsub_name(&p.channel))
                .arg(meta_ttl(limits.max_age));
        }
        let ids: Vec<String> =
            match tokio::time::timeout(ANSWER_TIMEOUT, invocation.invoke_async(&mut conn)).await {
                Err(_) => {
                    return Err(Error::Unavailable(
                        "redis did not answer in time".to_owned(),
                    ));
                }
                Ok(Err(e)) => return Err(Error::Unavailable(format!("redis: {e}"))),
                Ok(Ok(ids)) => ids,
            };
        if ids.len() != batch.len() {
            return Err(Error::Unavailable(
                "redis answered the publish script unexpectedly".to_owned(),
            ));
        }
        let mut receipts = Vec::with_capacity(batch.len());
        for (p, id) in batch.iter().zip(&ids) {
            let position = parse_position(id).ok_or_else(|| {
                Error::Unavailable(format!("redis returned a malformed position {id:?}"))
            })?;
            receipts.push(self.hub.receipt(&p.channel, position));
        }
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(receipts)
    }

    /// A batch with GRIP items: those go straight to pub/sub (`g:` and the
    /// item, see [`GRIP_PREFIX`]), neither sequenced nor kept, as Pushpin
    /// keeps none; native publications still take the script. Receipts
    /// in the batch's order.
    async fn publish_mixed(
        self: &Arc<Self>,
        mut conn: MultiplexedConnection,
        batch: Vec<Publication>,
    ) -> Result<Vec<Receipt>, Error> {
        let (grip, native): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .enumerate()
            .partition(|(_, p)| p.payload.grip().is_some());
        let mut receipts: Vec<Option<Receipt>> = vec![None; grip.len() + native.len()];
        let mut pipe = redis::pipe();
        for (_, p) in &grip {
            let formats = p.payload.grip().map(|f| &**f);
            let mut payload = GRIP_PREFIX.to_vec();
            payload.extend(
                formats
                    .map(|f| crate::grip::item::encode_wire(&p.channel, f))
                    .unwrap_or_default(),
            );
            pipe.cmd("PUBLISH")
                .arg(self.pubsub_name(&p.channel))
                .arg(payload)
                .ignore();
        }
        let sent: Result<(), _> =
            match tokio::time::timeout(ANSWER_TIMEOUT, pipe.query_async(&mut conn)).await {
                Err(_) => {
                    return Err(Error::Unavailable(
                        "redis did not answer in time".to_owned(),
                    ));
                }
                Ok(r) => r,
            };
        sent.map_err(|e| Error::Unavailable(format!("redis: {e}")))?;
        for (i, p) in &grip {
            receipts[*i] = Some(self.hub.grip_receipt(&p.channel));
        }
        let (indexes, native): (Vec<usize>, Vec<Publication>) = native.into_iter().unzip();
        if !native.is_empty() {
            let done = Box::pin(self.publish(native)).await?;
            for (i, r) in indexes.into_iter().zip(done) {
                receipts[i] = Some(r);
            }
        }
        Ok(receipts.into_iter().flatten().collect())
    }

    /// Reads what `asked` needs of `channel`'s history.
    async fn fetch(
        self: Arc<Self>,
        mut conn: MultiplexedConnection,
        channel: ChannelName,
        asked: Fetch,
    ) -> FetchResult {
        let limits = self.hub.limits(&channel);
        let (expected, after, messages) = match asked {
            Fetch::Head => (0, 0, "0"),
            Fetch::After(p) => (p.epoch, p.seq, "1"),
        };
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(self.meta_key(&channel))
            .key(self.history_key(&channel))
            .arg(Position::random_epoch())
            .arg(expected)
            .arg(after)
            .arg(meta_ttl(limits.max_age))
            .arg(messages);
        let answer: Result<Value, String> =
            match tokio::time::timeout(ANSWER_TIMEOUT, invocation.invoke_async(&mut conn)).await {
                Err(_) => Err("redis did not answer a history read in time".to_owned()),
                Ok(Err(e)) => Err(format!("redis: {e}")),
                Ok(Ok(v)) => Ok(v),
            };
        let result = answer.and_then(|v| {
            parse_history(&channel, v).ok_or_else(|| "malformed history from redis".to_owned())
        });
        (channel, asked, result)
    }

    fn on_message(&self, msg: &redis::Msg) {
        let Some(channel) = self.channel_of(msg.get_channel_name()) else {
            return;
        };
        if let Some(item) = msg.get_payload_bytes().strip_prefix(GRIP_PREFIX) {
            match crate::grip::item::decode_wire(item) {
                Some(payload) => self.hub.deliver_grip(&channel, payload),
                None => {
                    warn!(%channel, "backplane: ignored a malformed GRIP item on redis pub/sub")
                }
            }
            return;
        }
        match parse_live(&channel, msg.get_payload_bytes()) {
            Some(message) => self.hub.deliver(Arc::new(message)),
            None => warn!(%channel, "backplane: ignored a malformed message on redis pub/sub"),
        }
    }
}

/// How long a meta hash (epoch and sequence) is kept after a publish.
fn meta_ttl(max_age: Duration) -> u64 {
    max_age.saturating_mul(2).max(META_TTL_MIN).as_secs()
}

enum Ended {
    Shutdown,
    Lost(String),
}

/// Connects, serves, and reconnects with capped backoff until shutdown.
async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut attempt = 0u32;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            _ = shutdown.token.cancelled() => return,
            c = connect(&shared.client) => c,
        };
        match connected {
            Ok((conn, sink, stream)) => {
                attempt = 0;
                shared.set_conn(Some(conn.clone()));
                if shared.set_state(State::Connected) {
                    info!(backplane = "redis", "backplane connected");
                }
                if connected_before {
                    shared.metrics.reconnects.inc();
                }
                connected_before = true;
                let ended = serve(&shared, conn, sink, stream, &shutdown).await;
                shared.set_conn(None);
                match ended {
                    Ended::Shutdown => return,
                    Ended::Lost(reason) => {
                        if shared.set_state(State::Unavailable) {
                            warn!(backplane = "redis", %reason, "backplane connection lost; reconnecting");
                        }
                    }
                }
            }
            Err(e) => {
                if attempt == 0 {
                    warn!(backplane = "redis", error = %e, "cannot connect to the backplane; retrying with backoff");
                }
                let wait = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = shutdown.token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<(MultiplexedConnection, PubSubSink, PubSubStream)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(ANSWER_TIMEOUT));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connect timed out"))
        })??;
    let (sink, stream) = pubsub.split();
    Ok((conn, sink, stream))
}

/// One connection's life: feeds the hub until the connection is lost.
async fn serve(
    shared: &Arc<Shared>,
    mut conn: MultiplexedConnection,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    shutdown: &Shutdown,
) -> Ended {
    // Live messages may have been missed while disconnected: every
    // channel with subscribers reads its history again.
    shared.hub.resync();
    let mut subscribed: HashSet<ChannelName> = HashSet::new();
    let mut reads = Reads::default();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.token.cancelled() => return Ended::Shutdown,
            msg = stream.next() => match msg {
                Some(msg) => shared.on_message(&msg),
                None => return Ended::Lost("pub/sub connection closed".to_owned()),
            },
            _ = shared.hub.demand_changed() => {}
            Some((channel, asked, result)) = reads.next(), if reads.is_busy() => {
                match result {
                    Ok(fetched) => shared.hub.apply(&channel, asked, fetched),
                    Err(reason) => return Ended::Lost(reason),
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(
                    ANSWER_TIMEOUT,
                    redis::cmd("PING").query_async::<()>(&mut conn),
                ).await;
                if !matches!(pong, Ok(Ok(()))) {
                    return Ended::Lost("redis did not answer a ping".to_owned());
                }
                if tokio::time::timeout(ANSWER_TIMEOUT, sink.ping::<String>()).await.is_err() {
                    return Ended::Lost("redis pub/sub did not answer a ping".to_owned());
                }
            }
        }
        let plan = reads.plan(&shared.hub, |c| subscribed.contains(c));
        for chunk in plan.listen.chunks(SUBSCRIBE_CHUNK) {
            let names: Vec<String> = chunk.iter().map(|c| shared.pubsub_name(c)).collect();
            match tokio::time::timeout(ANSWER_TIMEOUT, sink.subscribe(&names)).await {
                Ok(Ok(())) => subscribed.extend(chunk.iter().cloned()),
                _ => return Ended::Lost("redis did not confirm a subscribe".to_owned()),
            }
        }
        for chunk in plan.quiet.chunks(SUBSCRIBE_CHUNK) {
            let names: Vec<String> = chunk.iter().map(|c| shared.pubsub_name(c)).collect();
            match tokio::time::timeout(ANSWER_TIMEOUT, sink.unsubscribe(&names)).await {
                Ok(Ok(())) => {
                    for c in chunk {
                        subscribed.remove(c);
                    }
                }
                _ => return Ended::Lost("redis did not confirm an unsubscribe".to_owned()),
            }
        }
        // Reads start after their SUBSCRIBE is confirmed, so every message
        // is either in the read or arrives live afterwards.
        for (channel, fetch) in plan.reads {
            let read = shared.clone().fetch(conn.clone(), channel.clone(), fetch);
            reads.start(channel, read);
        }
    }
}

/// Starts a pub/sub payload that is a GRIP item (`POST /publish/`) rather
/// than a positioned message (`EPOCH:SEQ:...`, which starts with a digit).
const GRIP_PREFIX: &[u8] = b"g:";

/// `EPOCH:SEQ`.
fn parse_position(id: &str) -> Option<Position> {
    let (epoch, seq) = id.split_once(':')?;
    Some(Position {
        epoch: epoch.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// A message from a Redis payload (`event` empty for none).
fn message(
    channel: &ChannelName,
    position: Position,
    ms: u64,
    event: &[u8],
    data: Bytes,
) -> Option<Message> {
    let event = std::str::from_utf8(event).ok()?;
    remote_message(channel, position, ms, Some(event), data)
}

/// A pub/sub payload: `EPOCH:SEQ:MS:EVENT:JSON`.
fn parse_live(channel: &ChannelName, payload: &[u8]) -> Option<Message> {
    let mut parts = payload.splitn(5, |b| *b == b':');
    let mut number = || -> Option<u64> { std::str::from_utf8(parts.next()?).ok()?.parse().ok() };
    let epoch = number()?;
    let seq = number()?;
    let ms = number()?;
    let event = parts.next()?;
    let data = parts.next()?;
    message(
        channel,
        Position { epoch, seq },
        ms,
        event,
        Bytes::copy_from_slice(data),
    )
}

/// The read script's answer: `{epoch, seq, entries}`.
fn parse_history(channel: &ChannelName, value: Value) -> Option<Fetched> {
    let Value::Array(mut parts) = value else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let entries = parts.pop()?;
    let seq = number(&parts.pop()?)?;
    let epoch = number(&parts.pop()?)?;
    let head = Position { epoch, seq };
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut entry) = entry else {
            return None;
        };
        if entry.len() != 2 {
            return None;
        }
        let fields = entry.pop()?;
        let id = text(&entry.pop()?)?;
        let seq: u64 = id.split_once('-')?.0.parse().ok()?;
        let (mut ms, mut event, mut data) = (0u64, Vec::new(), None);
        let pairs: Vec<(Value, Value)> = match fields {
            Value::Array(flat) => {
                let mut it = flat.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            Value::Map(pairs) => pairs,
            _ => return None,
        };
        for (k, v) in pairs {
            match (text(&k)?.as_str(), v) {
                ("t", v) => ms = number(&v)?,
                ("e", Value::BulkString(b)) => event = b,
                ("d", Value::BulkString(b)) => data = Some(Bytes::from(b)),
                _ => {}
            }
        }
        let position = Position { epoch, seq };
        messages.push(Arc::new(message(channel, position, ms, &event, data?)?));
    }
    Some(Fetched { head, messages })
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_payloads_round_trip() {
        let ch = ChannelName::parse("a:b").unwrap();
        let m = parse_live(&ch, br#"12:3:1700000000000:upd:{"x":"a:b"}"#).unwrap();
        assert_eq!(m.position, Position { epoch: 12, seq: 3 });
        assert_eq!(m.event.as_ref().unwrap().as_str(), "upd");
        assert_eq!(m.payload.json().as_ref(), br#"{"x":"a:b"}"#);
        let m = parse_live(&ch, br#"12:4:1700000000000::"hi""#).unwrap();
        assert!(m.event.is_none());
        assert_eq!(m.payload.text().as_ref(), b"hi");
        assert!(parse_live(&ch, b"12:x:1:e:1").is_none());
        assert!(parse_live(&ch, b"12:4:1:e:{bad").is_none());
        assert!(parse_live(&ch, b"12:4").is_none());
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://user:pw@cache.example:6380").is_ok());
        assert!(
            check_url("http://127.0.0.1:6379")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(check_url("127.0.0.1:6379").is_err());
        assert!(check_url("redis://127.0.0.1:notaport").is_err());
    }
}
