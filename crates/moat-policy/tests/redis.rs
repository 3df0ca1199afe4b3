//! The Redis rate store against a real redis-server on loopback: two limiters (two nodes)
//! sharing one limit, the local fallback while Redis is stopped or stalled, and the return
//! to shared counts after a restart. Metrics are read from the registry's text exposition.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::Redis;
use moat_policy::{
    Counter, EXPIRY_SLACK_SECS, RateKey, RateLimit, RateLimiter, RateLimitsConfig, RateStore,
    RateStoreMetrics, RedisConfig, RedisRateStore, Scope,
};
use prometheus::Registry;

/// Long enough that a test never straddles a window boundary in practice.
const WINDOW_SECS: u64 = 3600;
const MAX: u64 = 5;

/// One node: its limiter, store and registry.
struct Node {
    limiter: RateLimiter,
    store: Arc<dyn RateStore>,
    registry: Registry,
}

fn config(url: &str, prefix: &str, timeout_ms: u64, retry_ms: u64) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout_ms,
        retry_ms,
        local_max_keys: 1000,
    }
}

fn node(config: &RedisConfig) -> Node {
    let registry = Registry::new();
    let store = config
        .build(RateStoreMetrics::new(&registry).unwrap())
        .unwrap();
    let limiter = RateLimiter::new(
        RateLimitsConfig {
            connections_per_ip: Some(RateLimit {
                max: MAX,
                window_secs: WINDOW_SECS,
            }),
            ..Default::default()
        },
        store.clone(),
    )
    .unwrap();
    Node {
        limiter,
        store,
        registry,
    }
}

impl Node {
    /// One connection from `client`: `true` when refused. A store error is a test failure:
    /// the shared store must never surface one because Redis is gone.
    async fn refused(&self, client: IpAddr) -> bool {
        self.limiter
            .hit(Counter::Connections, client)
            .await
            .expect("no error reaches the caller")
            .is_some()
    }

    /// A metric's value (0 when absent), labels given as `(name, value)`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::metric(&self.registry, name, labels)
    }

    fn shared(&self) -> f64 {
        self.metric("moat_policy_rate_store_shared", &[])
    }

    fn fallbacks(&self) -> f64 {
        self.metric("moat_policy_rate_store_fallbacks_total", &[])
    }

    fn switches_to(&self, to: &str) -> f64 {
        self.metric("moat_policy_rate_store_switches_total", &[("to", to)])
    }

    /// Adds to a key no limit looks at until the store counts in Redis again; returns how
    /// long that took.
    async fn wait_shared(&self, within: Duration) -> Duration {
        let start = Instant::now();
        let probe = RateKey::new(Counter::Messages, Scope::Ip, ip("198.51.100.99"));
        while self.shared() != 1.0 {
            assert!(
                start.elapsed() < within,
                "still on local counts after {:?}",
                start.elapsed()
            );
            self.store
                .add(&probe, 1, Duration::from_secs(WINDOW_SECS))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The Redis key of `client`'s connection count in the current window.
fn key_of(config: &RedisConfig, client: IpAddr) -> String {
    RedisRateStore::new(config).unwrap().key_at(
        &RateKey::new(Counter::Connections, Scope::Ip, client),
        Duration::from_secs(WINDOW_SECS),
        SystemTime::now(),
    )
}

#[tokio::test]
async fn two_nodes_share_one_limit_fall_back_and_return() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let retry = Duration::from_millis(300);
    let timeout = Duration::from_millis(200);
    let cfg = config(
        &redis.url(),
        "moat:test:",
        timeout.as_millis() as u64,
        retry.as_millis() as u64,
    );
    let a = node(&cfg);
    let b = node(&cfg);
    let client = ip("192.0.2.1");

    // Shared: 3 from A and 2 from B are within max 5; B's 3rd (the 6th) is refused, and so
    // is A's next.
    for _ in 0..3 {
        assert!(!a.refused(client).await);
    }
    for _ in 0..2 {
        assert!(!b.refused(client).await);
    }
    assert!(b.refused(client).await, "6th connection across both nodes");
    assert!(a.refused(client).await, "7th connection across both nodes");
    assert_eq!((a.shared(), b.shared()), (1.0, 1.0));
    assert_eq!((a.fallbacks(), b.fallbacks()), (0.0, 0.0));

    // One key per window, counting both nodes, expiring after the window plus slack.
    let key = key_of(&cfg, client);
    assert!(
        key.starts_with("moat:test:connections:ip:192.0.2.1/32:"),
        "{key}"
    );
    let mut conn = redis_conn(&redis.url()).await;
    let count: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 7);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl as u64 <= WINDOW_SECS + EXPIRY_SLACK_SECS,
        "ttl {ttl}"
    );
    drop(conn);

    // Redis stops: each node counts locally and still enforces the limit on its own; the
    // caller never sees an error, and each call is bounded.
    redis.stop();
    let other = ip("192.0.2.2");
    for n in [&a, &b] {
        for i in 0..MAX {
            let start = Instant::now();
            assert!(!n.refused(other).await, "local hit {i}");
            assert!(start.elapsed() < timeout * 3, "{:?}", start.elapsed());
        }
        assert!(n.refused(other).await, "6th local hit on one node");
        assert_eq!(n.shared(), 0.0);
        assert!(n.fallbacks() >= (MAX + 1) as f64, "{}", n.fallbacks());
        assert!(
            n.metric("moat_policy_rate_store_redis_failures_total", &[]) >= 1.0,
            "failures counted"
        );
        // Logged (and counted) once, not once per call.
        assert_eq!(n.switches_to("local"), 1.0);
    }

    // Redis comes back (empty): each node returns to shared counts by itself within about
    // one retry interval, and the two count one limit together again.
    redis.restart();
    let bound = retry + timeout + Duration::from_millis(500);
    let took_a = a.wait_shared(bound).await;
    let took_b = b.wait_shared(bound).await;
    eprintln!("back to Redis after {took_a:?} (A) and {took_b:?} (B)");
    for n in [&a, &b] {
        assert_eq!(n.switches_to("redis"), 2.0, "start, then the return");
        assert_eq!(n.switches_to("local"), 1.0);
    }
    let fresh = ip("192.0.2.3");
    for _ in 0..3 {
        assert!(!a.refused(fresh).await);
    }
    for _ in 0..2 {
        assert!(!b.refused(fresh).await);
    }
    assert!(
        b.refused(fresh).await,
        "6th across both nodes after the restart"
    );
    let mut conn = redis_conn(&redis.url()).await;
    let count: u64 = redis::cmd("GET")
        .arg(key_of(&cfg, fresh))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 6);
}

#[tokio::test]
async fn a_stalled_redis_is_bounded_by_the_timeout() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let timeout = Duration::from_millis(150);
    let cfg = config(&redis.url(), "moat:stall:", timeout.as_millis() as u64, 400);
    let n = node(&cfg);
    let client = ip("192.0.2.10");
    assert!(!n.refused(client).await);
    assert_eq!(n.shared(), 1.0);

    // Another client pauses every command for 1.5 s: Redis accepts and does not answer.
    let mut conn = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let paused = Instant::now();

    let start = Instant::now();
    assert!(!n.refused(client).await);
    let took = start.elapsed();
    assert!(took >= timeout - Duration::from_millis(20), "{took:?}");
    assert!(took < timeout + Duration::from_millis(400), "{took:?}");
    assert_eq!(n.shared(), 0.0);
    assert_eq!(
        n.metric(
            "moat_policy_rate_store_redis_failures_total",
            &[("kind", "timeout")]
        ),
        1.0
    );

    // Within the retry interval the next calls do not wait for Redis at all.
    let start = Instant::now();
    assert!(!n.refused(client).await);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(n.fallbacks(), 2.0);

    // The pause ends; counts go back to Redis.
    let remaining = Duration::from_millis(1500).saturating_sub(paused.elapsed());
    n.wait_shared(remaining + Duration::from_secs(2)).await;
}

#[tokio::test]
async fn starts_while_redis_is_down() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    redis.stop();
    let cfg = config(&redis.url(), "moat:start:", 200, 300);
    let start = Instant::now();
    let n = node(&cfg);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "build waits for nothing"
    );

    let client = ip("192.0.2.20");
    for _ in 0..MAX {
        assert!(!n.refused(client).await);
    }
    assert!(n.refused(client).await, "the limit applies on local counts");
    assert_eq!(n.shared(), 0.0);
    assert!(n.fallbacks() >= 1.0);

    redis.restart();
    n.wait_shared(Duration::from_secs(2)).await;
    assert!(!n.refused(client).await, "a fresh count in Redis");
    let mut conn = redis_conn(&redis.url()).await;
    let count: u64 = redis::cmd("GET")
        .arg(key_of(&cfg, client))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_redis_store_alone_reports_errors_within_the_timeout() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let cfg = config(&redis.url(), "moat:alone:", 200, 1000);
    let store = RedisRateStore::new(&cfg).unwrap();
    assert_eq!(store.name(), "redis");
    let key = RateKey::new(Counter::Recipients, Scope::Net, ip("2001:db8::1"));
    let w = Duration::from_secs(WINDOW_SECS);
    assert_eq!(store.add(&key, 2, w).await.unwrap(), 2);
    assert_eq!(store.add(&key, 3, w).await.unwrap(), 5);
    store.ping().await.unwrap();

    redis.stop();
    let start = Instant::now();
    let err = store.add(&key, 1, w).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(600));
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.kind(), moat_policy::ErrorKind::RateStore);

    // The connection manager reconnects by itself once Redis is back.
    redis.restart();
    let start = Instant::now();
    loop {
        match store.add(&key, 1, w).await {
            Ok(n) => {
                assert_eq!(n, 1, "the restarted Redis is empty");
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(3), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
