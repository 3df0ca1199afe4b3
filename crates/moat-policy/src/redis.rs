//! Rate counts in Redis, shared by the nodes behind one MX, with a local fallback.
//!
//! - [`RedisRateStore`]: a [`RateStore`] in Redis. Fixed windows aligned to wall-clock epochs:
//!   the count of a [`RateKey`] in a window of `w` seconds lives at
//!   `{key_prefix}{store_key}:{unix_seconds / w}`, so every node (clocks kept by NTP) counts
//!   into the same key. One round trip per add: `MULTI; INCRBY key n; EXPIREAT key end; EXEC`,
//!   where `end` is the end of the window plus [`EXPIRY_SLACK_SECS`] (slack for clock skew
//!   between nodes). Every call is bounded by a short timeout; the connection is a
//!   [`redis::aio::ConnectionManager`], which reconnects by itself after a drop.
//! - [`SharedRateStore`]: Redis first, a local [`MemoryRateStore`] when Redis fails or
//!   times out. The limit still applies, per node, while Redis is away; no transaction
//!   fails because Redis is gone. After a failure Redis is tried again at most once per
//!   `retry_ms`, and the adds in between go to the local store without touching the network.
//!   The switch is logged once each way (warn to local, info back to Redis) and exposed in
//!   [`RateStoreMetrics`].
//! - [`RedisConfig`]: the `[policy.redis]` section; [`RedisConfig::build`] makes the
//!   [`SharedRateStore`] without waiting for Redis, so a node starts while Redis is down.
//!
//! Counts made locally during an outage are not copied to Redis when it comes back: for the
//! rest of that window the shared count is lower than the true one. A limit is a guard
//! against floods, not an invoice, and the window ends soon.
//!
//! ```toml
//! [policy.redis]
//! url = "redis://127.0.0.1:6379/"
//! key_prefix = "moat:rate:"
//! timeout_ms = 200
//! retry_ms = 1000
//! local_max_keys = 100000
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use crate::error::PolicyError;
use crate::rate::{MemoryRateStore, RateFuture, RateKey, RateStore};

/// Seconds a window's key outlives the window's end, for clock skew between nodes.
pub const EXPIRY_SLACK_SECS: u64 = 60;

const MAX_TIMEOUT_MS: u64 = 10_000;
const MAX_PREFIX_LEN: usize = 128;

/// The `[policy.redis]` section: where the shared rate counts live.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host[:port][/db]` (or `redis+unix:///path`).
    pub url: String,
    /// Prefix of every key this node writes; nodes that share limits use the same one.
    pub key_prefix: String,
    /// Bound on one Redis call (connect included), in milliseconds. A stalled Redis costs
    /// an SMTP command at most this long, then the local count is used.
    pub timeout_ms: u64,
    /// After a failure, Redis is tried again at most this often (milliseconds); the adds in
    /// between are counted locally.
    pub retry_ms: u64,
    /// Most keys the local fallback store holds.
    pub local_max_keys: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "moat:rate:".into(),
            timeout_ms: 200,
            retry_ms: 1000,
            local_max_keys: 100_000,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_ms", &self.retry_ms)
            .field("local_max_keys", &self.local_max_keys)
            .finish()
    }
}

impl RedisConfig {
    /// Checks every field; all problems are reported together. Makes no connection.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            problems.push(format!(
                "url {:?} is not a usable Redis URL: {e}",
                redact_url(&self.url)
            ));
        }
        if self.key_prefix.len() > MAX_PREFIX_LEN {
            problems.push(format!("key_prefix is longer than {MAX_PREFIX_LEN} bytes"));
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push("key_prefix must not contain spaces or control characters".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            problems.push(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"));
        }
        if self.retry_ms == 0 {
            problems.push("retry_ms must be above zero".into());
        }
        if self.local_max_keys == 0 {
            problems.push("local_max_keys must be above zero".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::config(format!(
                "policy.redis: {}",
                problems.join("; ")
            )))
        }
    }

    /// The per-call bound.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The pause between attempts on a failed Redis.
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }

    /// Validates and builds a [`SharedRateStore`] without waiting for Redis: calls try Redis
    /// (each bounded by the timeout) until it first answers or fails; after a failure they
    /// count locally, retrying Redis every `retry_ms`. When called inside
    /// a Tokio runtime, a first connection is attempted in the background at once.
    pub fn build(&self, metrics: RateStoreMetrics) -> Result<Arc<dyn RateStore>, PolicyError> {
        self.validate()?;
        let store = Arc::new(SharedRateStore::new(
            RedisRateStore::new(self)?,
            MemoryRateStore::new(self.local_max_keys),
            self.retry(),
            metrics,
        ));
        store.connect_in_background();
        Ok(store)
    }
}

/// `url` without its password, for logs and errors.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The Redis key and expiry of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WindowKey {
    key: String,
    /// Unix seconds: the window's end plus [`EXPIRY_SLACK_SECS`].
    expire_at: u64,
}

/// The window of `window_secs` (at least 1) holding `unix_secs`.
fn window_key(prefix: &str, store_key: &str, window_secs: u64, unix_secs: u64) -> WindowKey {
    let w = window_secs.max(1);
    let index = unix_secs / w;
    WindowKey {
        key: format!("{prefix}{store_key}:{index}"),
        expire_at: index
            .saturating_add(1)
            .saturating_mul(w)
            .saturating_add(EXPIRY_SLACK_SECS),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a Redis call failed. Also the closed set of `kind` metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedisFailure {
    /// No answer within the timeout.
    Timeout,
    /// No connection: refused, dropped, unreachable.
    Connection,
    /// Redis answered with an error (out of memory, authentication, wrong type), or the
    /// call could not be made (no Tokio runtime).
    Error,
}

impl RedisFailure {
    /// All kinds.
    pub const ALL: [RedisFailure; 3] = [
        RedisFailure::Timeout,
        RedisFailure::Connection,
        RedisFailure::Error,
    ];

    /// Lower-case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::Timeout => "timeout",
            RedisFailure::Connection => "connection",
            RedisFailure::Error => "error",
        }
    }

    fn of(e: &redis::RedisError) -> Self {
        if e.is_timeout() {
            RedisFailure::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            RedisFailure::Connection
        } else {
            RedisFailure::Error
        }
    }
}

/// A failed Redis call: its kind and a message without secrets.
#[derive(Debug)]
struct Failure {
    kind: RedisFailure,
    message: String,
}

impl Failure {
    fn into_policy_error(self) -> PolicyError {
        PolicyError::rate_store(self.message)
    }
}

/// A [`RateStore`] in Redis: fixed windows aligned to wall-clock epochs, one round trip per
/// add, each call bounded by the timeout. Errors (timeout, no connection, a Redis error)
/// are returned as [`PolicyError::rate_store`]; [`SharedRateStore`] turns them into a
/// local fallback.
///
/// Makes no connection until the first call; needs a Tokio runtime (with timers) to be
/// polled in.
pub struct RedisRateStore {
    client: redis::Client,
    /// Host and port (or socket path), for messages; never the password.
    addr: String,
    prefix: String,
    timeout: Duration,
    manager: OnceLock<ConnectionManager>,
}

impl fmt::Debug for RedisRateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateStore")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRateStore {
    /// A store for `config` (its url, key prefix and timeout). Parses the URL; makes no
    /// connection.
    pub fn new(config: &RedisConfig) -> Result<Self, PolicyError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            PolicyError::config(format!(
                "policy.redis: url {:?} is not a usable Redis URL: {e}",
                redact_url(&config.url)
            ))
        })?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Self {
            client,
            addr,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout().max(Duration::from_millis(1)),
            manager: OnceLock::new(),
        })
    }

    /// Where it connects (host and port, or socket path).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Redis key `key` counts into for a window of `window` at `now`.
    pub fn key_at(&self, key: &RateKey, window: Duration, now: SystemTime) -> String {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        window_key(&self.prefix, &key.store_key(), window.as_secs(), secs).key
    }

    /// Sends `PING`, bounded by the timeout.
    pub async fn ping(&self) -> Result<(), PolicyError> {
        self.ping_inner().await.map_err(Failure::into_policy_error)
    }

    fn manager(&self) -> Result<ConnectionManager, Failure> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        // The manager spawns a task at creation: without a runtime that would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Failure {
                kind: RedisFailure::Error,
                message: "redis rate store polled outside a Tokio runtime".into(),
            });
        }
        // Our retry interval paces reconnection: the manager makes one attempt per
        // reconnect instead of its own exponential series.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| self.failure(&e))?;
        // Two first calls may race; one manager wins and the other is dropped.
        Ok(self.manager.get_or_init(|| m).clone())
    }

    fn failure(&self, e: &redis::RedisError) -> Failure {
        Failure {
            kind: RedisFailure::of(e),
            message: format!("redis at {}: {e}", self.addr),
        }
    }

    fn timed_out(&self) -> Failure {
        Failure {
            kind: RedisFailure::Timeout,
            message: format!(
                "redis at {}: no answer within {} ms",
                self.addr,
                self.timeout.as_millis()
            ),
        }
    }

    /// Runs `call` on the manager, once more at once if the connection was found dead (the
    /// manager has then started a new one; the second call waits for it), all within the
    /// timeout. A count may be added twice if a connection drops between the write and the
    /// reply: a rare over-count, which a limiter tolerates.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let manager = self.manager()?;
        let attempts = async {
            match call(manager.clone()).await {
                Err(e) if e.is_io_error() && !e.is_timeout() => call(manager).await,
                r => r,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failure(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn ping_inner(&self) -> Result<(), Failure> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    async fn add_inner(
        &self,
        key: &RateKey,
        amount: u64,
        window: Duration,
    ) -> Result<u64, Failure> {
        let wk = window_key(&self.prefix, &key.store_key(), window.as_secs(), unix_now());
        let pipe = {
            let mut p = redis::pipe();
            p.atomic()
                .cmd("INCRBY")
                .arg(&wk.key)
                .arg(amount)
                .cmd("EXPIREAT")
                .arg(&wk.key)
                .arg(wk.expire_at)
                .ignore();
            p
        };
        let (count,): (u64,) = self
            .call(|mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(count)
    }
}

impl RateStore for RedisRateStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn add<'a>(&'a self, key: &'a RateKey, amount: u64, window: Duration) -> RateFuture<'a> {
        Box::pin(async move {
            self.add_inner(key, amount, window)
                .await
                .map_err(Failure::into_policy_error)
        })
    }
}

/// The shared store's metrics, registered on an explicit [`Registry`].
///
/// - `moat_policy_rate_store_shared`: 1 while counts go to Redis, 0 on local counts
///   (also 0 from start until Redis first answers)
/// - `moat_policy_rate_store_fallbacks_total`: adds counted locally instead of in Redis
/// - `moat_policy_rate_store_redis_failures_total{kind}`: failed Redis calls (`timeout`,
///   `connection`, `error`)
/// - `moat_policy_rate_store_switches_total{to}`: switches between `redis` and `local`
///   (one log line each)
#[derive(Debug, Clone)]
pub struct RateStoreMetrics {
    shared: IntGauge,
    fallbacks: IntCounter,
    failures: [IntCounter; 3],
    to_redis: IntCounter,
    to_local: IntCounter,
}

impl RateStoreMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, PolicyError> {
        Self::build(registry).map_err(PolicyError::metrics)
    }

    /// Handles registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::build(&Registry::new()).unwrap_or_else(|e| unreachable!("fresh registry: {e}"))
    }

    fn build(registry: &Registry) -> Result<Self, prometheus::Error> {
        let shared = IntGauge::new(
            "moat_policy_rate_store_shared",
            "1 while rate counts go to Redis (shared by the nodes), 0 while they are local.",
        )?;
        let fallbacks = IntCounter::new(
            "moat_policy_rate_store_fallbacks_total",
            "Rate-count additions made in the local store because Redis was unavailable.",
        )?;
        let failures_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_rate_store_redis_failures_total",
                "Failed Redis rate-store calls by kind.",
            ),
            &["kind"],
        )?;
        let switches_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_rate_store_switches_total",
                "Switches of the rate store between Redis and local counts.",
            ),
            &["to"],
        )?;
        registry.register(Box::new(shared.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(failures_vec.clone()))?;
        registry.register(Box::new(switches_vec.clone()))?;
        let failures = RedisFailure::ALL.map(|k| failures_vec.with_label_values(&[k.as_str()]));
        Ok(Self {
            shared,
            fallbacks,
            failures,
            to_redis: switches_vec.with_label_values(&["redis"]),
            to_local: switches_vec.with_label_values(&["local"]),
        })
    }

    fn failure(&self, kind: RedisFailure) {
        let i = match kind {
            RedisFailure::Timeout => 0,
            RedisFailure::Connection => 1,
            RedisFailure::Error => 2,
        };
        self.failures[i].inc();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Redis has not answered yet (start).
    Starting,
    /// Counts go to Redis.
    Redis,
    /// Redis failed; counts are local until a retry succeeds.
    Local,
}

#[derive(Debug)]
struct Health {
    mode: Mode,
    /// When Redis may be tried again (mode `Local`).
    next_try: Instant,
}

/// Redis first, a local [`MemoryRateStore`] when Redis fails or times out.
///
/// While Redis answers, every add goes there (one round trip, bounded by the timeout).
/// When a call fails, that add and the following ones go to the local store, so each node
/// keeps enforcing the limit on its own counts; Redis is tried again by one add at most
/// every `retry` (the others stay local meanwhile), and when it answers, counting is
/// shared again. Errors reach the caller only if the local store itself fails (full).
pub struct SharedRateStore {
    redis: RedisRateStore,
    local: MemoryRateStore,
    retry: Duration,
    metrics: RateStoreMetrics,
    health: Mutex<Health>,
}

impl fmt::Debug for SharedRateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRateStore")
            .field("redis", &self.redis)
            .field("local", &self.local)
            .field("retry", &self.retry)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl SharedRateStore {
    /// Redis first, `local` as the fallback, Redis retried at most every `retry`. Makes no
    /// connection: the first add tries Redis (the gauge reads 0 until Redis answers).
    pub fn new(
        redis: RedisRateStore,
        local: MemoryRateStore,
        retry: Duration,
        metrics: RateStoreMetrics,
    ) -> Self {
        metrics.shared.set(0);
        Self {
            redis,
            local,
            retry,
            metrics,
            health: Mutex::new(Health {
                mode: Mode::Starting,
                next_try: Instant::now(),
            }),
        }
    }

    /// Whether counts currently go to Redis.
    pub fn is_shared(&self) -> bool {
        self.lock().mode == Mode::Redis
    }

    /// The Redis store.
    pub fn redis(&self) -> &RedisRateStore {
        &self.redis
    }

    /// Inside a Tokio runtime, pings Redis in a background task so that the mode (and the
    /// log line saying it) is known before the first client; elsewhere does nothing.
    pub fn connect_in_background(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(probe) = self.take_try() else {
            return;
        };
        let me = Arc::clone(self);
        handle.spawn(async move {
            match me.redis.ping_inner().await {
                Ok(()) => me.mark_redis(probe),
                Err(f) => me.mark_local(&f),
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        // The state is two plain fields, consistent even after a panic elsewhere.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this call may use Redis: always while counts are shared or Redis has not
    /// been tried yet, otherwise at most once per retry interval. `Some(true)`: the call is
    /// a probe, whose success makes counting shared.
    fn take_try(&self) -> Option<bool> {
        let mut h = self.lock();
        match h.mode {
            Mode::Redis => return Some(false),
            // Until the first answer or failure every call tries: at start the local
            // counts are empty, and a node must not count alone while Redis is fine.
            Mode::Starting => return Some(true),
            Mode::Local => {}
        }
        let now = Instant::now();
        if now >= h.next_try {
            h.next_try = now + self.retry;
            Some(true)
        } else {
            None
        }
    }

    /// Redis answered. `probe`: this call was the one allowed retry; only such a call brings
    /// counting back to Redis (a late answer to a call made before a failure does not).
    fn mark_redis(&self, probe: bool) {
        let mut h = self.lock();
        if h.mode == Mode::Redis || (h.mode == Mode::Local && !probe) {
            return;
        }
        let was = h.mode;
        h.mode = Mode::Redis;
        drop(h);
        self.metrics.shared.set(1);
        self.metrics.to_redis.inc();
        if was == Mode::Local {
            tracing::info!(redis = %self.redis.addr, "rate limits: Redis is back, using shared counts");
        } else {
            tracing::info!(redis = %self.redis.addr, "rate limits: Redis reachable, using shared counts");
        }
    }

    fn mark_local(&self, f: &Failure) {
        self.metrics.failure(f.kind);
        let mut h = self.lock();
        h.next_try = Instant::now() + self.retry;
        if h.mode == Mode::Local {
            return;
        }
        h.mode = Mode::Local;
        drop(h);
        self.metrics.shared.set(0);
        self.metrics.to_local.inc();
        tracing::warn!(
            redis = %self.redis.addr,
            kind = f.kind.as_str(),
            error = %f.message,
            retry_ms = self.retry.as_millis() as u64,
            "rate limits: Redis unreachable, using local counts"
        );
    }

    async fn add_inner(
        &self,
        key: &RateKey,
        amount: u64,
        window: Duration,
    ) -> Result<u64, PolicyError> {
        if let Some(probe) = self.take_try() {
            match self.redis.add_inner(key, amount, window).await {
                Ok(n) => {
                    self.mark_redis(probe);
                    return Ok(n);
                }
                Err(f) => self.mark_local(&f),
            }
        }
        self.metrics.fallbacks.inc();
        self.local.add_now(key, amount, window)
    }
}

impl RateStore for SharedRateStore {
    fn name(&self) -> &'static str {
        "redis+memory"
    }

    fn add<'a>(&'a self, key: &'a RateKey, amount: u64, window: Duration) -> RateFuture<'a> {
        Box::pin(self.add_inner(key, amount, window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keys() {
        // (window secs, unix secs, key suffix, expire_at)
        let cases = [
            (60, 0, ":0", 60 + EXPIRY_SLACK_SECS),
            (60, 59, ":0", 60 + EXPIRY_SLACK_SECS),
            (60, 60, ":1", 120 + EXPIRY_SLACK_SECS),
            (
                60,
                1_700_000_030,
                ":28333333",
                1_700_000_040 + EXPIRY_SLACK_SECS,
            ),
            (
                3600,
                1_700_000_030,
                ":472222",
                1_700_002_800 + EXPIRY_SLACK_SECS,
            ),
            (1, 5, ":5", 6 + EXPIRY_SLACK_SECS),
            // A zero window counts as one second instead of dividing by zero.
            (0, 5, ":5", 6 + EXPIRY_SLACK_SECS),
            // Far future: saturates instead of overflowing.
            (u64::MAX, u64::MAX - 1, ":0", u64::MAX),
        ];
        for (i, (w, now, suffix, expire_at)) in cases.into_iter().enumerate() {
            let got = window_key("moat:rate:", "connections:ip:192.0.2.1/32", w, now);
            assert_eq!(
                got.key,
                format!("moat:rate:connections:ip:192.0.2.1/32{suffix}"),
                "case {i}"
            );
            assert_eq!(got.expire_at, expire_at, "case {i}");
        }
    }

    #[test]
    fn nodes_agree_on_the_window() {
        // Two nodes calling at different moments of one window write the same key.
        let a = window_key("p:", "k", 300, 1_700_000_100);
        let b = window_key("p:", "k", 300, 1_700_000_399);
        let c = window_key("p:", "k", 300, 1_700_000_400);
        assert_eq!(a, b);
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn key_at_uses_the_prefix_and_store_key() {
        let store = RedisRateStore::new(&RedisConfig {
            key_prefix: "edge:".into(),
            ..RedisConfig::default()
        })
        .unwrap();
        let key = RateKey::new(
            crate::Counter::Messages,
            crate::Scope::Net,
            "192.0.2.9".parse().unwrap(),
        );
        let at = UNIX_EPOCH + Duration::from_secs(120);
        assert_eq!(
            store.key_at(&key, Duration::from_secs(60), at),
            "edge:messages:net:192.0.2.0/24:2"
        );
    }

    #[test]
    fn config_from_toml() {
        let c: RedisConfig = toml::from_str("").unwrap();
        assert_eq!(c, RedisConfig::default());
        c.validate().unwrap();
        let c: RedisConfig = toml::from_str(
            "url = \"redis://10.0.0.5:6380/2\"\nkey_prefix = \"mx1:\"\ntimeout_ms = 50\n\
             retry_ms = 500\nlocal_max_keys = 10",
        )
        .unwrap();
        assert_eq!(c.timeout(), Duration::from_millis(50));
        assert_eq!(c.retry(), Duration::from_millis(500));
        c.validate().unwrap();
        let err = toml::from_str::<RedisConfig>("timeout = 5").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_reports_all_problems() {
        let err = RedisConfig {
            url: "http://example.test/".into(),
            key_prefix: "has space".into(),
            timeout_ms: 0,
            retry_ms: 0,
            local_max_keys: 0,
        }
        .validate()
        .unwrap_err();
        let msg = err.to_string();
        for field in [
            "url",
            "key_prefix",
            "timeout_ms",
            "retry_ms",
            "local_max_keys",
        ] {
            assert!(msg.contains(field), "{field} missing in {msg}");
        }
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        let too_slow = RedisConfig {
            timeout_ms: MAX_TIMEOUT_MS + 1,
            ..RedisConfig::default()
        };
        assert!(too_slow.validate().is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "redis://moat:s3cret@redis.internal/",
                "redis://moat:***@redis.internal/",
            ),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want);
        }
        let c = RedisConfig {
            url: "redis://:s3cret@127.0.0.1:6379/".into(),
            ..RedisConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        let bad = RedisConfig {
            url: "redis://:s3cret@[::1/".into(),
            ..RedisConfig::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn polled_outside_a_runtime_is_an_error_not_a_panic() {
        let store = RedisRateStore::new(&RedisConfig::default()).unwrap();
        let err = store.manager().unwrap_err();
        assert_eq!(err.kind, RedisFailure::Error);
    }

    #[tokio::test]
    async fn after_a_failure_redis_is_retried_at_most_once_per_interval() {
        // Nothing listens on port 1 of loopback: refused at once.
        let config = RedisConfig {
            url: "redis://127.0.0.1:1/".into(),
            retry_ms: 60_000,
            ..RedisConfig::default()
        };
        let registry = Registry::new();
        let store = SharedRateStore::new(
            RedisRateStore::new(&config).unwrap(),
            MemoryRateStore::new(10),
            config.retry(),
            RateStoreMetrics::new(&registry).unwrap(),
        );
        let key = RateKey::new(
            crate::Counter::Connections,
            crate::Scope::Ip,
            "192.0.2.1".parse().unwrap(),
        );
        let w = Duration::from_secs(60);
        for want in 1..=3 {
            assert_eq!(store.add(&key, 1, w).await.unwrap(), want);
        }
        assert!(!store.is_shared());
        assert_eq!(store.metrics.fallbacks.get(), 3);
        assert_eq!(store.metrics.to_local.get(), 1);
        // One attempt only: the two later adds stayed local without calling Redis.
        let failures: u64 = store.metrics.failures.iter().map(|c| c.get()).sum();
        assert_eq!(failures, 1);
    }
}
