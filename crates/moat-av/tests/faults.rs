//! Engine failures over real loopback sockets, without clamd: servers that hang, answer
//! nonsense, hang up, or are not there. Each must become a classified error (never a verdict
//! and never a panic), and repeated failures must open the breaker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_av::{
    AntivirusEngine, AvErrorKind, AvMetrics, BreakerState, ClamdAddress, ClamdConfig, EngineLimits,
    EngineSet, EngineSpec, Fault, Mode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Reads forever, never answers.
    Hang,
    /// Reads the command, answers this and closes.
    Answer(&'static [u8]),
    /// Answers an endless reply without a terminator.
    Flood,
}

/// A fake engine on loopback; returns its address. The task ends with the test's runtime.
async fn server(b: Behaviour) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                match b {
                    Behaviour::Hang => while s.read(&mut buf).await.is_ok_and(|n| n > 0) {},
                    Behaviour::Answer(reply) => {
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(reply).await;
                    }
                    Behaviour::Flood => {
                        let _ = s.read(&mut buf).await;
                        let chunk = [b'A'; 4096];
                        while s.write_all(&chunk).await.is_ok() {}
                    }
                }
            });
        }
    });
    addr
}

fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn engine(addr: SocketAddr) -> Arc<dyn AntivirusEngine> {
    let mut c = ClamdConfig::new(ClamdAddress::Tcp(addr));
    c.command_timeout = Duration::from_millis(300);
    Arc::new(c.build().unwrap())
}

fn one(addr: SocketAddr, limits: EngineLimits) -> (EngineSet, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = AvMetrics::new(&registry).unwrap();
    let set = EngineSet::new(
        Mode::Failover,
        vec![EngineSpec {
            name: "e".into(),
            engine: engine(addr),
            limits,
        }],
        &metrics,
    )
    .unwrap();
    (set, registry)
}

const FAST: EngineLimits = EngineLimits {
    scan_timeout: Duration::from_millis(300),
    concurrency: 2,
    breaker_failures: 2,
    breaker_open_for: Duration::from_secs(60),
};

#[tokio::test]
async fn failures_are_classified_and_open_the_breaker() {
    let cases = [
        (server(Behaviour::Hang).await, AvErrorKind::Timeout),
        (
            server(Behaviour::Answer(b"UNKNOWN COMMAND\0")).await,
            AvErrorKind::Protocol,
        ),
        (
            server(Behaviour::Answer(b"stream: Can't allocate memory ERROR\0")).await,
            AvErrorKind::Engine,
        ),
        (server(Behaviour::Answer(b"")).await, AvErrorKind::Io),
        (server(Behaviour::Flood).await, AvErrorKind::Io),
        (refused_addr(), AvErrorKind::Connect),
    ];
    for (addr, want) in cases {
        let (set, _registry) = one(addr, FAST);
        let t = Instant::now();
        let e = set.scan(b"some bytes").await.unwrap_err();
        assert_eq!(e.kind(), want, "{addr}: {e}");
        assert_eq!(e.fault(), Fault::Engine);
        assert!(e.is_retryable());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{want:?} took {:?}",
            t.elapsed()
        );
        assert_eq!(set.status()[0].state, BreakerState::Closed);
        assert!(set.scan(b"again").await.is_err());
        assert_eq!(set.status()[0].state, BreakerState::Open, "{want:?}");
        // While open the engine is not asked: fails at once.
        let t = Instant::now();
        assert_eq!(
            set.scan(b"x").await.unwrap_err().kind(),
            AvErrorKind::CircuitOpen
        );
        assert!(t.elapsed() < Duration::from_millis(50));
        assert!(!set.is_ready());
    }
}

#[tokio::test]
async fn health_checks_fail_cleanly() {
    for (addr, want) in [
        (
            server(Behaviour::Answer(b"PANG\0")).await,
            AvErrorKind::Protocol,
        ),
        (server(Behaviour::Hang).await, AvErrorKind::Timeout),
        (refused_addr(), AvErrorKind::Connect),
    ] {
        let e = engine(addr).health().await.unwrap_err();
        assert_eq!(e.kind(), want, "{e}");
    }
}

#[tokio::test]
async fn overload_is_ours_and_does_not_open_the_breaker() {
    let addr = server(Behaviour::Hang).await;
    let limits = EngineLimits {
        concurrency: 1,
        breaker_failures: 100,
        ..FAST
    };
    let (set, registry) = one(addr, limits);
    let set = Arc::new(set);
    // A holds the only permit for its whole timeout and B queues behind it; C, arriving
    // last, is still waiting when its bound runs out: overload, not an engine failure.
    let spawn = |data: &'static [u8]| {
        let s = set.clone();
        tokio::spawn(async move { s.scan(data).await })
    };
    let a = spawn(b"a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = spawn(b"b");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = set.scan(b"c").await.unwrap_err();
    assert_eq!(c.kind(), AvErrorKind::Overloaded);
    assert_eq!(c.fault(), Fault::Internal);
    for t in [a, b] {
        assert_eq!(t.await.unwrap().unwrap_err().kind(), AvErrorKind::Timeout);
    }
    assert_eq!(
        set.status()[0].consecutive_failures,
        2,
        "overload not counted"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"moat_av_scans_total{engine="e",result="overloaded"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"moat_av_scans_total{engine="e",result="timeout"} 2"#));
}

#[test]
fn bad_configurations_are_all_reported() {
    let metrics = AvMetrics::new(&prometheus::Registry::new()).unwrap();
    let e = EngineSet::new(Mode::All, vec![], &metrics).unwrap_err();
    assert_eq!(e.kind(), AvErrorKind::Config);
    assert_eq!(e.fault(), Fault::Operator);
    assert!(!e.is_retryable());
    let spec = |name: &str, concurrency| EngineSpec {
        name: name.into(),
        engine: engine(refused_addr()),
        limits: EngineLimits {
            concurrency,
            ..EngineLimits::default()
        },
    };
    let e = EngineSet::new(Mode::All, vec![spec("a", 1), spec("a", 0)], &metrics).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("used twice") && msg.contains("concurrency"),
        "{msg}"
    );
    // Registering the same metrics twice on one registry is an operator error too.
    let r = prometheus::Registry::new();
    AvMetrics::new(&r).unwrap();
    assert!(AvMetrics::new(&r).is_err());
}
