//! Messages per second through the antivirus stage against a private clamd, and the verdict
//! cache's effect on a batch of messages that share one attachment.
//!
//! ```text
//! cargo run --release -p moat-av --example av-cache -- [MESSAGES=1000] [CONCURRENCY=8]
//! ```
//! Starts its own clamd on loopback (EICAR-only database), like the tests, and stops it by pid.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use moat_av::{
    AntivirusStage, AvMetrics, AvPolicy, CacheConfig, ClamdAddress, ClamdConfig, EngineLimits,
    EngineSet, EngineSpec, Mode, ScanTargets, VerdictCache,
};
use moat_core::{Envelope, SessionInfo, Stage, Verdict};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let c: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let Some(clamd) = common::Clamd::start("25M") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // One 100 KiB attachment (distinct from run to run so clamd's own cache starts cold).
        let mut shared: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        shared[..8].copy_from_slice(&seed.to_le_bytes());
        let messages: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..n)
                .map(|i| {
                    let mut m = format!("Message-ID: <{i}@bench.example>\r\n").into_bytes();
                    m.extend(common::with_attachment(
                        "data.bin",
                        "application/octet-stream",
                        &shared,
                    ));
                    m
                })
                .collect(),
        );
        let bytes: usize = messages.iter().map(Vec::len).sum();
        for (label, whole, cached) in [
            ("parts, no cache", false, false),
            ("parts, cache", false, true),
            ("parts+whole, no cache", true, false),
            ("parts+whole, cache", true, true),
        ] {
            let metrics = AvMetrics::new(&prometheus::Registry::new()).unwrap();
            let engine = ClamdConfig::new(ClamdAddress::Unix(clamd.unix.clone()))
                .build()
                .unwrap();
            let engines = Arc::new(
                EngineSet::new(
                    Mode::Failover,
                    vec![EngineSpec {
                        name: "clamd".into(),
                        engine: Arc::new(engine),
                        limits: EngineLimits {
                            concurrency: c,
                            ..EngineLimits::default()
                        },
                    }],
                    &metrics,
                )
                .unwrap(),
            );
            let cache = cached.then(|| Arc::new(VerdictCache::new(CacheConfig::default())));
            let policy = AvPolicy {
                targets: ScanTargets {
                    whole_message: whole,
                    ..ScanTargets::default()
                },
                ..AvPolicy::default()
            };
            let stage = Arc::new(AntivirusStage::new(engines, cache, policy, metrics).unwrap());
            let start = Instant::now();
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..c {
                let (stage, messages, next) = (stage.clone(), messages.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let session = SessionInfo {
                        connector: "bench".into(),
                        client: "192.0.2.1:1".parse().unwrap(),
                        local: "127.0.0.1:25".parse().unwrap(),
                        helo: None,
                        esmtp: true,
                        tls: None,
                        auth_user: None,
                        may_relay: false,
                    };
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(m) = messages.get(i) else { return };
                        let v = stage.data(&session, &Envelope::default(), m).await;
                        assert_eq!(v, Verdict::Continue, "message {i}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "RESULT av-cache {label:24} n={n} c={c} msgs_per_s={:.0} MB_per_s={:.1}",
                n as f64 / secs,
                bytes as f64 / secs / 1e6
            );
        }
    });
    drop(clamd);
}
