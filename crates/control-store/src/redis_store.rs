//! State shared by replicas in Redis (`--state redis://HOST:PORT[/DB]`).
//!
//! - A limit plan is applied by one Lua script, which Redis runs atomically:
//!   budget commits, then the key-cap check, then every rate limit (GCRA)
//!   and reservation, all or nothing. Two replicas therefore never
//!   over-admit. Every key carries a TTL at which it would be idle, and a
//!   sorted set indexes the live keys by that time for the key cap.
//! - Revocations are a set; a change is published on a channel that every
//!   replica subscribes to, and a subscriber re-reads the whole set on
//!   every message, on every reconnect and once a second, so a missed
//!   message cannot leave a revoked agent allowed for long. While the
//!   subscription is down the store cannot vouch for the set, and
//!   decisions fail closed (`state_unavailable`).
//! - Grants and approvals are keys with the grant's or approval's TTL.
//! - A replica that activates a bundle publishes its hash on another
//!   channel; the others then look at their own bundle directory at once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use policy_core::{Event, Grant, LimitOutcome, LimitPlan, Revocations};
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{APPROVAL_TTL_MS, Approval, BoxFuture, ControlStore, StoreError};

/// Every key lives under this prefix.
const PREFIX: &str = "gatehouse:";
/// One call to Redis gets this long before the decision fails closed.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// The subscriber re-reads the revocations at least this often.
const REREAD_EVERY: Duration = Duration::from_secs(1);

const APPLY_LIMITS: &str = r"
local plan = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local prefix = ARGV[3]
local zkeys = KEYS[1]

local function load(k)
  local h = redis.call('HGETALL', k)
  local e = {ws = 0, sp = 0, r = {}}
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    if f == 'ws' then e.ws = tonumber(v)
    elseif f == 'sp' then e.sp = tonumber(v)
    elseif string.sub(f, 1, 2) == 'r:' then
      local a, x = string.match(v, '^(%d+):(%d+)$')
      e.r[string.sub(f, 3)] = {tonumber(a), tonumber(x)}
    end
  end
  return e
end
local function refresh(e, window)
  if window < 1 then window = 1 end
  for id, r in pairs(e.r) do
    if r[2] <= now then e.r[id] = nil end
  end
  local start = now - (now % window)
  if e.ws ~= start then e.ws = start; e.sp = 0 end
end
local function reserved(e)
  local s = 0
  for _, r in pairs(e.r) do s = s + r[1] end
  return s
end
local function save(k, e, window)
  if window < 1 then window = 1 end
  redis.call('DEL', k)
  local args = {'ws', string.format('%d', e.ws), 'sp', string.format('%d', e.sp)}
  local last = e.ws + window
  for id, r in pairs(e.r) do
    args[#args + 1] = 'r:' .. id
    args[#args + 1] = string.format('%d:%d', r[1], r[2])
    if r[2] > last then last = r[2] end
  end
  redis.call('HSET', k, unpack(args))
  redis.call('PEXPIREAT', k, last)
  redis.call('ZADD', zkeys, last, k)
end

for _, c in ipairs(plan.commits) do
  local k = prefix .. 'budget:' .. c.key
  if redis.call('EXISTS', k) == 0 then
    if c.amount > 0 then
      local e = {ws = 0, sp = 0, r = {}}
      refresh(e, c.window_ms)
      e.sp = c.amount
      save(k, e, c.window_ms)
    end
  else
    local e = load(k)
    refresh(e, c.window_ms)
    local matched = nil
    if c.reservation.Exact then
      if e.r[c.reservation.Exact] then matched = c.reservation.Exact end
    else
      local p = c.reservation.OldestWithPrefix
      local ids = {}
      for id, _ in pairs(e.r) do
        if string.sub(id, 1, #p) == p then ids[#ids + 1] = id end
      end
      table.sort(ids)
      matched = ids[1]
    end
    if matched then e.r[matched] = nil end
    e.sp = e.sp + c.amount
    save(k, e, c.window_ms)
  end
end

if #plan.rates == 0 and #plan.reserves == 0 then return {'ok'} end

local new = 0
for _, r in ipairs(plan.rates) do
  if redis.call('EXISTS', prefix .. 'rate:' .. r.key) == 0 then new = new + 1 end
end
for _, b in ipairs(plan.reserves) do
  if redis.call('EXISTS', prefix .. 'budget:' .. b.key) == 0 then new = new + 1 end
end
if new > 0 then
  redis.call('ZREMRANGEBYSCORE', zkeys, '-inf', now)
  if redis.call('ZCARD', zkeys) + new > plan.max_keys then return {'keys'} end
end

local tats = {}
for i, r in ipairs(plan.rates) do
  local t = tonumber(redis.call('GET', prefix .. 'rate:' .. r.key)) or now
  if t < now then t = now end
  if t - now > r.tolerance_ms then
    return {'rate', r.name, string.format('%d', t - now - r.tolerance_ms)}
  end
  tats[i] = t + r.interval_ms
end
local entries = {}
for i, b in ipairs(plan.reserves) do
  local e = load(prefix .. 'budget:' .. b.key)
  refresh(e, b.window_ms)
  local held = reserved(e)
  if e.sp + held + b.estimate > b.limit then
    return {'budget', b.name, string.format('%d', e.sp), string.format('%d', held),
            string.format('%d', b.limit)}
  end
  entries[i] = e
end
for i, r in ipairs(plan.rates) do
  local k = prefix .. 'rate:' .. r.key
  redis.call('SET', k, string.format('%d', tats[i]), 'PXAT', tats[i])
  redis.call('ZADD', zkeys, tats[i], k)
end
for i, b in ipairs(plan.reserves) do
  local e = load(prefix .. 'budget:' .. b.key)
  refresh(e, b.window_ms)
  e.r[b.id] = {b.estimate, now + b.ttl_ms}
  save(prefix .. 'budget:' .. b.key, e, b.window_ms)
end
return {'ok'}
";

/// Revocations, limits, grants and approvals in one Redis database.
pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    revocations: watch::Sender<Arc<Revocations>>,
    bundles: watch::Sender<String>,
    live: Arc<AtomicBool>,
    script: redis::Script,
    url: String,
    subscriber: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisStore {
    // The client's connection info may carry a password: only the
    // redacted URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn key(kind: &str, rest: &str) -> String {
    format!("{PREFIX}{kind}:{rest}")
}

fn grant_key(agent: &str, session: &str, action: &str, resource: &str) -> String {
    let mut h = Sha256::new();
    for part in [agent, session, action, resource] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    key("grant", &hex::encode(h.finalize()))
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!(
            "no answer within {} ms",
            CALL_TIMEOUT.as_millis()
        ))),
    }
}

async fn read_revocations(conn: &mut MultiplexedConnection) -> Result<Revocations, StoreError> {
    let members: BTreeSet<String> = timed(
        redis::cmd("SMEMBERS")
            .arg(key("revoked", "set"))
            .query_async(conn),
    )
    .await?;
    let mut r = Revocations::default();
    for m in members {
        match m.split_once(':') {
            Some(("agent", id)) => {
                r.agents.insert(id.to_owned());
            }
            Some(("session", id)) => {
                r.sessions.insert(id.to_owned());
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Keeps `tx` equal to the revocations in Redis: subscribe, read the set,
/// then re-read on every message and every second; `live` is true only
/// while that holds.
async fn follow_revocations(
    client: redis::Client,
    tx: watch::Sender<Arc<Revocations>>,
    bundles: watch::Sender<String>,
    live: Arc<AtomicBool>,
) {
    let channel = key("events", "revocations");
    let bundle_channel = key("events", "bundles");
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut pubsub = timed(client.get_async_pubsub()).await?;
            timed(pubsub.subscribe(&channel)).await?;
            timed(pubsub.subscribe(&bundle_channel)).await?;
            let mut conn = timed(client.get_multiplexed_async_connection()).await?;
            Ok::<_, StoreError>((pubsub, conn.clone(), read_revocations(&mut conn).await?))
        };
        match attempt.await {
            Ok((mut pubsub, mut conn, first)) => {
                tx.send_if_modified(|cur| replace_if_changed(cur, first));
                live.store(true, Ordering::SeqCst);
                pause = Duration::from_millis(50);
                let mut messages = pubsub.on_message();
                let mut tick = tokio::time::interval(REREAD_EVERY);
                tick.tick().await;
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            None => break,
                            Some(m) if m.get_channel_name() == bundle_channel => {
                                if let Ok(hash) = m.get_payload::<String>() {
                                    bundles.send_replace(hash);
                                }
                                continue;
                            }
                            Some(_) => {}
                        },
                        _ = tick.tick() => {}
                    }
                    match read_revocations(&mut conn).await {
                        Ok(r) => {
                            tx.send_if_modified(|cur| replace_if_changed(cur, r));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot re-read revocations");
                            break;
                        }
                    }
                }
                live.store(false, Ordering::SeqCst);
                tracing::warn!("the revocation feed from redis is down; failing closed");
            }
            Err(e) => {
                live.store(false, Ordering::SeqCst);
                tracing::debug!(error = %e, "cannot subscribe to revocations");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn replace_if_changed(cur: &mut Arc<Revocations>, next: Revocations) -> bool {
    if **cur == next {
        return false;
    }
    *cur = Arc::new(next);
    true
}

impl RedisStore {
    /// Connects, reads the revocations and starts following them. Fails
    /// when Redis cannot be reached within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Failed(e.to_string()))?;
        let mut conn = timed(client.get_multiplexed_async_connection()).await?;
        let first = read_revocations(&mut conn).await?;
        let revocations = watch::Sender::new(Arc::new(first));
        let live = Arc::new(AtomicBool::new(false));
        let bundles = watch::Sender::new(String::new());
        let subscriber = tokio::spawn(follow_revocations(
            client.clone(),
            revocations.clone(),
            bundles.clone(),
            live.clone(),
        ));
        // The store vouches for the revocations only once subscribed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !live.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() > deadline {
                subscriber.abort();
                return Err(unavailable("cannot subscribe to the revocation channel"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            client,
            conn: Mutex::new(Some(conn)),
            revocations,
            bundles,
            live,
            script: redis::Script::new(APPLY_LIMITS),
            url: redact_url(url),
            subscriber,
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let cached = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = timed(self.client.get_multiplexed_async_connection()).await?;
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on a connection; a failure drops the connection so that
    /// the next call reconnects.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        let result = timed(f(conn)).await;
        if result.is_err() {
            *self
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        result
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        k: String,
    ) -> Result<Option<T>, StoreError> {
        let v: Option<String> = self
            .call(|mut c| async move { redis::cmd("GET").arg(k).query_async(&mut c).await })
            .await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn set_json(&self, k: String, v: String, ttl_ms: u64) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(v)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}

/// The URL without a password, for logs.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn outcome_from(v: &[String]) -> Result<LimitOutcome, StoreError> {
    let num = |i: usize| -> u64 { v.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
    match v.first().map(String::as_str) {
        Some("ok") => Ok(LimitOutcome::Ok),
        Some("keys") => Ok(LimitOutcome::KeysExhausted),
        Some("rate") => Ok(LimitOutcome::RateLimited {
            limit: v.get(1).cloned().unwrap_or_default(),
            retry_after_ms: num(2),
        }),
        Some("budget") => Ok(LimitOutcome::BudgetExceeded {
            budget: v.get(1).cloned().unwrap_or_default(),
            spent: num(2),
            reserved: num(3),
            limit: num(4),
        }),
        _ => Err(StoreError::Failed(format!(
            "unexpected answer from the limit script: {v:?}"
        ))),
    }
}

impl ControlStore for RedisStore {
    fn revocations(&self) -> Result<Arc<Revocations>, StoreError> {
        if !self.live.load(Ordering::SeqCst) {
            return Err(unavailable(
                "the revocation feed from redis is down, so revocations may be stale",
            ));
        }
        Ok(self.revocations.borrow().clone())
    }

    fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        self.revocations.subscribe()
    }

    fn revoke<'a>(
        &'a self,
        agent: bool,
        id: &'a str,
        restore: bool,
    ) -> BoxFuture<'a, Result<Arc<Revocations>, StoreError>> {
        Box::pin(async move {
            let member = format!("{}:{id}", if agent { "agent" } else { "session" });
            self.call(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd(if restore { "SREM" } else { "SADD" })
                    .arg(key("revoked", "set"))
                    .arg(member)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(key("events", "revocations"))
                    .arg("changed")
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            let mut conn = self.connection().await?;
            let r = read_revocations(&mut conn).await?;
            self.revocations
                .send_if_modified(|cur| replace_if_changed(cur, r));
            Ok(self.revocations.borrow().clone())
        })
    }

    fn apply_limits<'a>(
        &'a self,
        plan: &'a LimitPlan,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<LimitOutcome, StoreError>> {
        Box::pin(async move {
            let json =
                serde_json::to_string(plan).map_err(|e| StoreError::Failed(e.to_string()))?;
            let answer: Vec<String> = self
                .call(|mut c| async move {
                    self.script
                        .key(key("keys", "index"))
                        .arg(json)
                        .arg(now_ms)
                        .arg(PREFIX)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            outcome_from(&answer)
        })
    }

    fn release(
        &self,
        reservations: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if reservations.is_empty() {
                return Ok(());
            }
            self.call(|mut c| async move {
                let mut p = redis::pipe();
                for (k, id) in reservations {
                    p.cmd("HDEL")
                        .arg(key("budget", &k))
                        .arg(format!("r:{id}"))
                        .ignore();
                }
                p.query_async::<()>(&mut c).await
            })
            .await
        })
    }

    fn find_grant<'a>(
        &'a self,
        event: &'a Event,
        action: &'a str,
        resource: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        Box::pin(async move {
            let k = grant_key(&event.agent_id, &event.session_id, action, resource);
            let g: Option<Grant> = self.get_json(k).await?;
            Ok(g.filter(|g| g.allows(event, action, resource, now_ms)))
        })
    }

    fn remember_approval<'a>(
        &'a self,
        id: &'a str,
        approval: Approval,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let v =
                serde_json::to_string(&approval).map_err(|e| StoreError::Failed(e.to_string()))?;
            self.set_json(key("approval", id), v, APPROVAL_TTL_MS).await
        })
    }

    fn grant<'a>(
        &'a self,
        approval_id: &'a str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        Box::pin(async move {
            let Some(a) = self
                .get_json::<Approval>(key("approval", approval_id))
                .await?
            else {
                return Ok(None);
            };
            let g = Grant {
                approval_id: approval_id.to_owned(),
                agent_id: a.agent_id,
                session_id: a.session_id,
                action: a.action,
                resource: a.resource,
                expires_ms: now_ms.saturating_add(ttl_ms),
            };
            let v = serde_json::to_string(&g).map_err(|e| StoreError::Failed(e.to_string()))?;
            let k = grant_key(&g.agent_id, &g.session_id, &g.action, &g.resource);
            self.set_json(k, v, ttl_ms).await?;
            Ok(Some(g))
        })
    }

    fn announce_bundle(&self, hash: &str) {
        let (client, hash) = (self.client.clone(), hash.to_owned());
        tokio::spawn(async move {
            let sent = async {
                let mut c = timed(client.get_multiplexed_async_connection()).await?;
                timed(
                    redis::cmd("PUBLISH")
                        .arg(key("events", "bundles"))
                        .arg(&hash)
                        .query_async::<()>(&mut c),
                )
                .await
            };
            if let Err(e) = sent.await {
                tracing::warn!(error = %e, "cannot announce the bundle to other replicas");
            }
        });
    }

    fn bundle_announcements(&self) -> Option<watch::Receiver<String>> {
        Some(self.bundles.subscribe())
    }

    fn health(&self) -> Result<(), String> {
        if self.live.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("the state store (redis) is unreachable".into())
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
