//! Rate limits: connections, messages and recipients per window, per client IP and per
//! client network (/24 for IPv4, /64 for IPv6).
//!
//! The counting lives behind [`RateStore`], an object-safe async trait, so the state can be
//! local ([`MemoryRateStore`]) or shared between nodes.
//!
//! # The shared (Redis) backend
//!
//! [`crate::RedisRateStore`] implements [`RateStore::add`] as a fixed window keyed by
//! [`RateKey::store_key`] and the window index (`unix_seconds / window_seconds`, so every
//! node agrees on the window given clocks kept by NTP): `INCRBY` and `EXPIREAT` in one
//! `MULTI` round trip, bounded by a short timeout, failing with
//! [`PolicyError::rate_store`]. The stage fails open on store errors (the transaction goes
//! on, the error is logged and counted); [`crate::SharedRateStore`], which
//! [`crate::RedisConfig::build`] makes, instead falls back to a [`MemoryRateStore`] while
//! Redis is away, so each node keeps enforcing its local limit.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{ErrorKind, PolicyError};
use crate::iplist::{canonical, client_net};

/// What is counted. Also the closed set of `counter` metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Connections (counted at connect).
    Connections,
    /// Messages (counted at MAIL FROM).
    Messages,
    /// Recipients (counted at each RCPT TO).
    Recipients,
}

impl Counter {
    /// All counters.
    pub const ALL: [Counter; 3] = [Counter::Connections, Counter::Messages, Counter::Recipients];

    /// Lower-case name, used in keys, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Connections => "connections",
            Counter::Messages => "messages",
            Counter::Recipients => "recipients",
        }
    }
}

/// Whose count: one address, or its network. Also the closed set of `scope` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The client's address.
    Ip,
    /// The client's /24 (IPv4) or /64 (IPv6).
    Net,
}

impl Scope {
    /// Both scopes.
    pub const ALL: [Scope; 2] = [Scope::Ip, Scope::Net];

    /// Lower-case name, used in keys, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Net => "net",
        }
    }
}

/// One counter of one client address or network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// What is counted.
    pub counter: Counter,
    /// Address or network.
    pub scope: Scope,
    /// The address (as a host network) or the network.
    pub net: IpNet,
}

impl RateKey {
    /// The key of `counter` for `ip` in `scope`; IPv4-mapped addresses count as IPv4.
    pub fn new(counter: Counter, scope: Scope, ip: IpAddr) -> Self {
        let net = match scope {
            Scope::Ip => IpNet::from(canonical(ip)),
            Scope::Net => client_net(ip),
        };
        Self {
            counter,
            scope,
            net,
        }
    }

    /// A stable text form for shared stores: `connections:ip:192.0.2.1/32`.
    pub fn store_key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.counter.as_str(),
            self.scope.as_str(),
            self.net
        )
    }
}

/// The boxed future [`RateStore::add`] returns.
pub type RateFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, PolicyError>> + Send + 'a>>;

/// Where rate counts live. Object-safe; see the module docs for a shared backend.
pub trait RateStore: Send + Sync {
    /// Short static name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Adds `amount` to `key`'s count in the current window of length `window` and returns
    /// the count in that window after the addition.
    fn add<'a>(&'a self, key: &'a RateKey, amount: u64, window: Duration) -> RateFuture<'a>;
}

/// Where [`MemoryRateStore`] gets the time; tests pass a clock they move by hand.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Counts in this process's memory: fixed windows that start at a key's first hit.
///
/// Memory is bounded: when `max_keys` keys are held, expired windows are dropped, and if
/// none has expired the call fails (the stage then fails open and counts the error).
pub struct MemoryRateStore {
    clock: Clock,
    max_keys: usize,
    windows: Mutex<HashMap<RateKey, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    length: Duration,
    count: u64,
}

impl fmt::Debug for MemoryRateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateStore")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl MemoryRateStore {
    /// A store holding at most `max_keys` keys, on the system's monotonic clock.
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Arc::new(Instant::now))
    }

    /// A store on the given clock.
    pub fn with_clock(max_keys: usize, clock: Clock) -> Self {
        Self {
            clock,
            max_keys: max_keys.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Number of keys held (expired windows included until the next sweep).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RateKey, Window>> {
        // A panic while holding the lock leaves counts that are still usable.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The synchronous core of [`RateStore::add`].
    pub fn add_now(
        &self,
        key: &RateKey,
        amount: u64,
        window: Duration,
    ) -> Result<u64, PolicyError> {
        let now = (self.clock)();
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= self.max_keys {
            map.retain(|_, w| now < w.start + w.length);
            if map.len() >= self.max_keys {
                return Err(PolicyError::new(
                    ErrorKind::RateStore,
                    format!("memory rate store is full ({} keys)", self.max_keys),
                ));
            }
        }
        let w = map.entry(*key).or_insert(Window {
            start: now,
            length: window,
            count: 0,
        });
        if now >= w.start + w.length {
            *w = Window {
                start: now,
                length: window,
                count: 0,
            };
        }
        w.count = w.count.saturating_add(amount);
        Ok(w.count)
    }
}

impl RateStore for MemoryRateStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn add<'a>(&'a self, key: &'a RateKey, amount: u64, window: Duration) -> RateFuture<'a> {
        let result = self.add_now(key, amount, window);
        Box::pin(async move { result })
    }
}

/// One limit: at most `max` in `window_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The most allowed in one window; the next one is refused.
    pub max: u64,
    /// The window length in seconds.
    pub window_secs: u64,
}

/// The rate limits; a limit left out is not enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Connections per client address (`421 4.7.0`).
    pub connections_per_ip: Option<RateLimit>,
    /// Connections per client network (`421 4.7.0`).
    pub connections_per_net: Option<RateLimit>,
    /// Messages (MAIL FROM) per client address (`451 4.7.1`).
    pub messages_per_ip: Option<RateLimit>,
    /// Messages per client network (`451 4.7.1`).
    pub messages_per_net: Option<RateLimit>,
    /// Recipients (RCPT TO) per client address (`451 4.7.1`).
    pub recipients_per_ip: Option<RateLimit>,
    /// Recipients per client network (`451 4.7.1`).
    pub recipients_per_net: Option<RateLimit>,
}

impl RateLimitsConfig {
    /// The limit of one counter and scope.
    pub fn limit(&self, counter: Counter, scope: Scope) -> Option<RateLimit> {
        match (counter, scope) {
            (Counter::Connections, Scope::Ip) => self.connections_per_ip,
            (Counter::Connections, Scope::Net) => self.connections_per_net,
            (Counter::Messages, Scope::Ip) => self.messages_per_ip,
            (Counter::Messages, Scope::Net) => self.messages_per_net,
            (Counter::Recipients, Scope::Ip) => self.recipients_per_ip,
            (Counter::Recipients, Scope::Net) => self.recipients_per_net,
        }
    }

    /// Checks every limit; all problems are reported together.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        for counter in Counter::ALL {
            for scope in Scope::ALL {
                if let Some(l) = self.limit(counter, scope) {
                    let field = format!("{}_per_{}", counter.as_str(), scope.as_str());
                    if l.max == 0 {
                        problems.push(format!("{field}.max must be above zero"));
                    }
                    if l.window_secs == 0 {
                        problems.push(format!("{field}.window_secs must be above zero"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::config(format!(
                "rate limits: {}",
                problems.join("; ")
            )))
        }
    }
}

/// Applies [`RateLimitsConfig`] over a [`RateStore`].
#[derive(Clone)]
pub struct RateLimiter {
    limits: RateLimitsConfig,
    store: Arc<dyn RateStore>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("store", &self.store.name())
            .finish()
    }
}

impl RateLimiter {
    /// Validates the limits.
    pub fn new(limits: RateLimitsConfig, store: Arc<dyn RateStore>) -> Result<Self, PolicyError> {
        limits.validate()?;
        Ok(Self { limits, store })
    }

    /// Counts one more `counter` for `ip`, address first, then network. Returns the scope
    /// whose limit is now exceeded, if any. A store error is returned as is; the caller
    /// decides whether to fail open.
    pub async fn hit(&self, counter: Counter, ip: IpAddr) -> Result<Option<Scope>, PolicyError> {
        for scope in Scope::ALL {
            let Some(limit) = self.limits.limit(counter, scope) else {
                continue;
            };
            let key = RateKey::new(counter, scope, ip);
            let count = self
                .store
                .add(&key, 1, Duration::from_secs(limit.window_secs))
                .await?;
            if count > limit.max {
                return Ok(Some(scope));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clock moved by hand.
    #[derive(Clone)]
    pub(crate) struct ManualClock {
        base: Instant,
        offset: Arc<Mutex<Duration>>,
    }

    impl ManualClock {
        pub(crate) fn new() -> Self {
            Self {
                base: Instant::now(),
                offset: Arc::new(Mutex::new(Duration::ZERO)),
            }
        }

        pub(crate) fn advance(&self, by: Duration) {
            *self.offset.lock().unwrap() += by;
        }

        pub(crate) fn clock(&self) -> Clock {
            let me = self.clone();
            Arc::new(move || me.base + *me.offset.lock().unwrap())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        let cases = [
            (
                Counter::Connections,
                Scope::Ip,
                "192.0.2.9",
                "connections:ip:192.0.2.9/32",
            ),
            (
                Counter::Messages,
                Scope::Net,
                "::ffff:192.0.2.9",
                "messages:net:192.0.2.0/24",
            ),
            (
                Counter::Recipients,
                Scope::Net,
                "2001:db8::1",
                "recipients:net:2001:db8::/64",
            ),
            (
                Counter::Recipients,
                Scope::Ip,
                "2001:db8::1",
                "recipients:ip:2001:db8::1/128",
            ),
        ];
        for (counter, scope, addr, want) in cases {
            assert_eq!(RateKey::new(counter, scope, ip(addr)).store_key(), want);
        }
    }

    #[test]
    fn memory_windows() {
        let clock = ManualClock::new();
        let store = MemoryRateStore::with_clock(100, clock.clock());
        let key = RateKey::new(Counter::Messages, Scope::Ip, ip("192.0.2.1"));
        let w = Duration::from_secs(60);
        // (advance before the call, amount, expected count)
        let steps = [
            (0, 1, 1),
            (10, 1, 2),
            (49, 3, 5),
            (1, 1, 1), // 60 s after the first hit: a new window
            (59, 1, 2),
            (1, 1, 1),
        ];
        for (i, (advance, amount, want)) in steps.into_iter().enumerate() {
            clock.advance(Duration::from_secs(advance));
            assert_eq!(store.add_now(&key, amount, w).unwrap(), want, "step {i}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let clock = ManualClock::new();
        let store = MemoryRateStore::with_clock(2, clock.clock());
        let w = Duration::from_secs(10);
        let k = |s| RateKey::new(Counter::Connections, Scope::Ip, ip(s));
        store.add_now(&k("192.0.2.1"), 1, w).unwrap();
        store.add_now(&k("192.0.2.2"), 1, w).unwrap();
        let err = store.add_now(&k("192.0.2.3"), 1, w).unwrap_err();
        assert!(err.is_transient());
        // Existing keys still count.
        assert_eq!(store.add_now(&k("192.0.2.1"), 1, w).unwrap(), 2);
        // Once windows expire, they are swept to make room.
        clock.advance(w);
        assert_eq!(store.add_now(&k("192.0.2.3"), 1, w).unwrap(), 1);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn limiter_ip_then_net() {
        let clock = ManualClock::new();
        let store = Arc::new(MemoryRateStore::with_clock(1000, clock.clock()));
        let limiter = RateLimiter::new(
            RateLimitsConfig {
                connections_per_ip: Some(RateLimit {
                    max: 2,
                    window_secs: 60,
                }),
                connections_per_net: Some(RateLimit {
                    max: 3,
                    window_secs: 60,
                }),
                ..Default::default()
            },
            store,
        )
        .unwrap();
        // (client, expected)
        let steps = [
            ("192.0.2.1", None),
            ("192.0.2.1", None),
            ("192.0.2.1", Some(Scope::Ip)),
            ("192.0.2.2", None), // net count 3 (the refused ip hit did not count at net)
            ("192.0.2.3", Some(Scope::Net)),
            ("::ffff:192.0.2.4", Some(Scope::Net)),
            ("198.51.100.1", None),
        ];
        for (i, (client, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                limiter.hit(Counter::Connections, ip(client)).await.unwrap(),
                want,
                "step {i} {client}"
            );
        }
        // Messages are not limited here.
        assert_eq!(
            limiter
                .hit(Counter::Messages, ip("192.0.2.1"))
                .await
                .unwrap(),
            None
        );
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            limiter
                .hit(Counter::Connections, ip("192.0.2.1"))
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn validation_reports_all_problems() {
        let err = RateLimitsConfig {
            messages_per_ip: Some(RateLimit {
                max: 0,
                window_secs: 1,
            }),
            recipients_per_net: Some(RateLimit {
                max: 1,
                window_secs: 0,
            }),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("messages_per_ip.max"), "{msg}");
        assert!(msg.contains("recipients_per_net.window_secs"), "{msg}");
    }
}
