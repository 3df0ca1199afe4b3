//! The clamd engine and the antivirus stage against a real clamd on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Clamd, EICAR_SIG, eicar, forwarded, plain, with_attachment, zip_stored};
use moat_av::{
    AntivirusEngine, AntivirusStage, AvErrorKind, AvMetrics, AvPolicy, BreakerState, CacheConfig,
    ClamdAddress, ClamdConfig, EngineLimits, EngineSet, EngineSpec, Mode, OnDetection, OnFailure,
    ScanResult, ScanTargets, VerdictCache,
};
use moat_core::{Envelope, SessionInfo, Stage, Verdict};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn session() -> SessionInfo {
    SessionInfo {
        connector: "inbound".into(),
        client: "192.0.2.1:40000".parse().unwrap(),
        local: "127.0.0.1:25".parse().unwrap(),
        helo: Some("client.example".into()),
        esmtp: true,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

fn envelope() -> Envelope {
    Envelope {
        mail_from: "a@example.org".into(),
        rcpt_to: vec!["b@example.net".into()],
        ..Envelope::default()
    }
}

fn clamd_engine(addr: ClamdAddress) -> Arc<dyn AntivirusEngine> {
    Arc::new(ClamdConfig::new(addr).build().unwrap())
}

fn set(
    mode: Mode,
    engines: Vec<(&str, Arc<dyn AntivirusEngine>)>,
    limits: EngineLimits,
    metrics: &AvMetrics,
) -> Arc<EngineSet> {
    let specs = engines
        .into_iter()
        .map(|(name, engine)| EngineSpec {
            name: name.into(),
            engine,
            limits,
        })
        .collect();
    Arc::new(EngineSet::new(mode, specs, metrics).unwrap())
}

/// A metric's value from the registry's text exposition.
fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let ok = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if ok {
                return match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    t => panic!("metric {name} has type {t:?}"),
                };
            }
        }
    }
    panic!("metric {name} {labels:?} not found");
}

fn infected_name(r: &ScanResult) -> &str {
    match r {
        ScanResult::Infected(n) => n,
        other => panic!("expected a detection, got {other:?}"),
    }
}

#[test]
fn clamd_engine_and_stage() {
    let Some(clamd) = Clamd::start("2M") else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let tcp = ClamdConfig::new(ClamdAddress::Tcp(clamd.tcp)).build().unwrap();
        let unix = ClamdConfig::new(ClamdAddress::Unix(clamd.unix.clone()))
            .build()
            .unwrap();

        // Health and plain scans over both transports.
        for engine in [&tcp, &unix] {
            let version = engine.health().await.unwrap();
            assert!(version.starts_with("ClamAV "), "{version}");
            assert_eq!(
                engine.scan(b"hello, nothing to see").await.unwrap(),
                ScanResult::Clean
            );
            let r = engine.scan(&eicar()).await.unwrap();
            assert!(infected_name(&r).starts_with("Moat.Test.EICAR"), "{r:?}");
            assert_eq!(engine.scan(b"").await.unwrap(), ScanResult::Clean);
        }

        // Many chunks: EICAR split across a chunk boundary is still found (clamd reassembles).
        let mut small_chunks = ClamdConfig::new(ClamdAddress::Tcp(clamd.tcp));
        small_chunks.chunk_size = 7;
        let small_chunks = small_chunks.build().unwrap();
        let mut padded = vec![b'a'; 1000];
        padded.extend_from_slice(&eicar());
        padded.extend_from_slice(&[b'b'; 1000]);
        assert!(matches!(
            small_chunks.scan(&padded).await.unwrap(),
            ScanResult::Infected(_)
        ));

        // Over StreamMaxLength (2M): clamd's "INSTREAM size limit exceeded" → unscannable,
        // on both transports, even though clamd stops reading mid-stream.
        let big = vec![b'x'; 3 << 20];
        for engine in [&tcp, &unix] {
            match engine.scan(&big).await.unwrap() {
                ScanResult::Unscannable(why) => assert!(why.contains("size limit"), "{why}"),
                other => panic!("expected unscannable, got {other:?}"),
            }
        }

        // The stage, with each scan target on its own, over the five carriers of EICAR.
        let inner = with_attachment("eicar.com", "application/octet-stream", &eicar());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("plain body", plain(&eicar())),
            (
                "base64 in multipart",
                with_attachment("eicar.com", "application/octet-stream", &eicar()),
            ),
            (
                "zip",
                with_attachment(
                    "invoice.zip",
                    "application/zip",
                    &zip_stored("eicar.com", &eicar()),
                ),
            ),
            (
                "zip in zip",
                with_attachment(
                    "outer.zip",
                    "application/zip",
                    &zip_stored("inner.zip", &zip_stored("eicar.com", &eicar())),
                ),
            ),
            ("message/rfc822", forwarded(&inner)),
            ("bare bytes, no header block", eicar()),
        ];
        let clean = with_attachment(
            "notes.zip",
            "application/zip",
            &zip_stored("notes.txt", b"harmless notes\r\n"),
        );
        let registry = prometheus::Registry::new();
        let metrics = AvMetrics::new(&registry).unwrap();
        let engines = set(
            Mode::Failover,
            vec![("clamd", Arc::new(tcp) as Arc<dyn AntivirusEngine>)],
            EngineLimits::default(),
            &metrics,
        );
        for (targets_name, parts, whole) in [("parts", true, false), ("whole", false, true)] {
            let policy = AvPolicy {
                targets: ScanTargets {
                    parts,
                    whole_message: whole,
                    ..ScanTargets::default()
                },
                ..AvPolicy::default()
            };
            let stage =
                AntivirusStage::new(engines.clone(), None, policy, metrics.clone()).unwrap();
            for (name, msg) in &cases {
                let v = stage.data(&session(), &envelope(), msg).await;
                let Verdict::Reject(reply) = &v else {
                    panic!("{name} ({targets_name}): expected a rejection, got {v:?}");
                };
                assert_eq!(reply.code(), 554, "{name}");
                assert_eq!(reply.enhanced().unwrap().to_string(), "5.7.1", "{name}");
                assert!(
                    reply.text().contains(EICAR_SIG),
                    "{name} ({targets_name}): {}",
                    reply.text()
                );
            }
            assert_eq!(
                stage.data(&session(), &envelope(), &clean).await,
                Verdict::Continue,
                "clean ({targets_name})"
            );
        }

        // Quarantine policy and the clean tag.
        let stage = AntivirusStage::new(
            engines.clone(),
            None,
            AvPolicy {
                on_detection: OnDetection::Quarantine,
                tag_clean: true,
                ..AvPolicy::default()
            },
            metrics.clone(),
        )
        .unwrap();
        match stage.data(&session(), &envelope(), &cases[1].1).await {
            Verdict::Quarantine(why) => assert!(why.contains(EICAR_SIG), "{why}"),
            v => panic!("expected quarantine, got {v:?}"),
        }
        assert_eq!(
            stage.data(&session(), &envelope(), &clean).await,
            Verdict::Tag(vec![("X-Moat-Virus-Scan".into(), "clean".into())])
        );

        // Strip: every infected part replaced by a notice, the rest kept, valid MIME.
        let strip = AntivirusStage::new(
            engines.clone(),
            None,
            AvPolicy {
                on_detection: OnDetection::Strip,
                ..AvPolicy::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let two = format!(
            "From: a@example.org\r\nSubject: two\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"s\"\r\n\r\n\
             --s\r\nContent-Type: text/plain\r\n\r\nSee the files.\r\n\
             --s\r\nContent-Type: application/octet-stream; name=\"a.com\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{e}\
             --s\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{p}\
             --s\r\nContent-Type: application/zip; name=\"b.zip\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{z}\
             --s--\r\n",
            e = common::b64(&eicar()),
            p = common::b64(b"%PDF-1.4 harmless"),
            z = common::b64(&zip_stored("e.com", &eicar())),
        )
        .into_bytes();
        let moat_av::AvOutcome::Infected(det) = strip.check(&two).await else {
            panic!("expected a detection");
        };
        assert_eq!(det.parts, [2, 4], "both infected parts found: {det:?}");
        let stripped = strip.strip(&two, &det).expect("strippable");
        let parsed = mail_parser::MessageParser::default().parse(&stripped).unwrap();
        assert_eq!(parsed.parts.len(), 5);
        assert_eq!(parsed.body_text(0).as_deref(), Some("See the files."));
        assert_eq!(parsed.parts[3].contents(), b"%PDF-1.4 harmless");
        for i in [2, 4] {
            let notice = std::str::from_utf8(parsed.parts[i].contents()).unwrap();
            assert!(notice.contains("was removed"), "{notice}");
        }
        // The stripped message scans clean, as parts and as a whole.
        assert!(matches!(strip.check(&stripped).await, moat_av::AvOutcome::Clean));
        match strip.data(&session(), &envelope(), &two).await {
            Verdict::Replace(m, r) => {
                assert!(r.starts_with("antivirus strip:"), "{r}");
                assert_eq!(m, stripped, "the stage delivers the stripped message");
            }
            v => panic!("{v:?}"),
        }
        // Found by the whole-message scan only: nothing to strip.
        let whole_only = moat_av::Detection {
            signatures: vec!["x".into()],
            parts: vec![],
        };
        assert_eq!(strip.strip(&two, &whole_only), None);

        // Unscannable (over clamd's 2M StreamMaxLength): rejected by default, or accepted
        // with the reason in the header.
        let huge = with_attachment("big.bin", "application/octet-stream", &vec![7u8; 3 << 20]);
        let v = AntivirusStage::new(engines.clone(), None, AvPolicy::default(), metrics.clone())
            .unwrap()
            .data(&session(), &envelope(), &huge)
            .await;
        assert!(matches!(&v, Verdict::Reject(r) if r.code() == 554), "{v:?}");
        let v = AntivirusStage::new(
            engines.clone(),
            None,
            AvPolicy {
                on_unscannable: moat_av::OnUnscannable::Accept,
                ..AvPolicy::default()
            },
            metrics.clone(),
        )
        .unwrap()
        .data(&session(), &envelope(), &huge)
        .await;
        assert_eq!(
            v,
            Verdict::Tag(vec![(
                "X-Moat-Virus-Scan".into(),
                "not scanned (clamd instream size limit exceeded)".into()
            )])
        );

        // The cache: one attachment sent in 50 messages is scanned once.
        let cache = Arc::new(VerdictCache::new(CacheConfig {
            min_size: 0,
            ..CacheConfig::default()
        }));
        let stage = AntivirusStage::new(
            engines.clone(),
            Some(cache.clone()),
            AvPolicy {
                targets: ScanTargets {
                    whole_message: false,
                    ..ScanTargets::default()
                },
                ..AvPolicy::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let shared = vec![0x5au8; 200_000];
        let scans_before = metric(
            &registry,
            "moat_av_scans_total",
            &[("engine", "clamd"), ("result", "clean")],
        );
        for i in 0..50 {
            let mut msg = format!("X-Seq: {i}\r\n").into_bytes();
            msg.extend_from_slice(&with_attachment("data.bin", "application/octet-stream", &shared));
            assert_eq!(stage.data(&session(), &envelope(), &msg).await, Verdict::Continue);
        }
        let scans = metric(
            &registry,
            "moat_av_scans_total",
            &[("engine", "clamd"), ("result", "clean")],
        ) - scans_before;
        // Two leaf parts per message (same text, same attachment) → two engine scans in all.
        assert_eq!(scans, 2.0, "each distinct part scanned once");
        assert_eq!(metric(&registry, "moat_av_cache_lookups_total", &[("result", "hit")]), 98.0);
        // An infected part is cached as infected and still rejected from the cache.
        for _ in 0..2 {
            assert!(matches!(
                stage.data(&session(), &envelope(), &cases[1].1).await,
                Verdict::Reject(_)
            ));
        }

        // Concurrency: 32 scans at once through a limit of 4 all answer correctly.
        let limited = set(
            Mode::Failover,
            vec![("limited", clamd_engine(ClamdAddress::Unix(clamd.unix.clone())))],
            EngineLimits {
                concurrency: 4,
                ..EngineLimits::default()
            },
            &metrics,
        );
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = limited.clone();
            tasks.push(tokio::spawn(async move {
                let data = if i % 4 == 0 { eicar() } else { vec![b'c'; 50_000] };
                (i, s.scan(&data).await.unwrap())
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(matches!(r, ScanResult::Infected(_)), i % 4 == 0, "{i}: {r:?}");
        }

        // Why no connection pool: a fresh loopback connection costs little next to a scan.
        let engine = ClamdConfig::new(ClamdAddress::Tcp(clamd.tcp)).build().unwrap();
        let n = 100;
        let t = Instant::now();
        for _ in 0..n {
            engine.health().await.unwrap(); // two connections: PING and VERSION
        }
        let per_connect = t.elapsed() / (2 * n);
        let body = vec![b'q'; 48 * 1024];
        let t = Instant::now();
        for i in 0..n {
            let mut b = body.clone();
            b[..4].copy_from_slice(&i.to_be_bytes()); // defeat clamd's clean cache
            engine.scan(&b).await.unwrap();
        }
        let per_scan = t.elapsed() / n;
        println!(
            "FIGURE clamd tcp: connect+PING {per_connect:?}, INSTREAM 48 KiB {per_scan:?} (sequential)"
        );
    });
    drop(clamd);
}

#[test]
fn clamd_outage_fail_closed_fail_open_and_recovery() {
    let Some(mut clamd) = Clamd::start("25M") else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let registry = prometheus::Registry::new();
        let metrics = AvMetrics::new(&registry).unwrap();
        let engines = set(
            Mode::Failover,
            vec![("clamd", clamd_engine(ClamdAddress::Tcp(clamd.tcp)))],
            EngineLimits {
                scan_timeout: Duration::from_secs(5),
                concurrency: 8,
                breaker_failures: 3,
                breaker_open_for: Duration::from_millis(300),
            },
            &metrics,
        );
        let stage = |on_failure| {
            AntivirusStage::new(
                engines.clone(),
                None,
                AvPolicy {
                    on_failure,
                    ..AvPolicy::default()
                },
                metrics.clone(),
            )
            .unwrap()
        };
        let closed = Arc::new(stage(OnFailure::FailClosed));
        let open = Arc::new(stage(OnFailure::FailOpen));
        let clean = with_attachment("a.txt", "text/plain", b"fine\r\n");
        let virus = with_attachment("e.com", "application/octet-stream", &eicar());

        assert_eq!(
            closed.data(&session(), &envelope(), &clean).await,
            Verdict::Continue
        );
        assert!(engines.is_ready());
        assert_eq!(
            metric(&registry, "moat_av_engine_up", &[("engine", "clamd")]),
            1.0
        );

        // Killed mid-load: 40 infected messages in flight while clamd dies. Whatever each
        // one got, none is accepted unscanned: fail-closed gives 554 (scanned in time) or 451;
        // fail-open gives 554 or the "not scanned" tag, never a plain accept.
        let big_virus = {
            let mut v = vec![b'z'; 400_000];
            v.extend_from_slice(&eicar());
            with_attachment("big.bin", "application/octet-stream", &v)
        };
        assert!(matches!(
            closed.data(&session(), &envelope(), &big_virus).await,
            Verdict::Reject(_)
        ));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = if i % 2 == 0 {
                closed.clone()
            } else {
                open.clone()
            };
            let m = big_virus.clone();
            tasks.push(tokio::spawn(async move {
                (i % 2 == 0, s.data(&session(), &envelope(), &m).await)
            }));
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        clamd.stop();
        let mut refused_for_outage = 0;
        for t in tasks {
            match t.await.unwrap() {
                (_, Verdict::Reject(r)) => assert!(r.text().contains(EICAR_SIG)),
                (true, Verdict::TempFail(_)) => refused_for_outage += 1,
                (false, Verdict::Tag(h)) if h[0].1.contains("not scanned") => {
                    refused_for_outage += 1
                }
                (closed, v) => panic!("fail-closed={closed}: accepted unscanned: {v:?}"),
            }
        }
        println!("mid-load kill: {refused_for_outage} of 40 hit the outage");

        // Fail-closed: every transaction gets 451 4.7.0, the infected one too (nothing is
        // accepted unscanned). Run them concurrently, as a load would.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = closed.clone();
            let m = if i % 2 == 0 {
                clean.clone()
            } else {
                virus.clone()
            };
            tasks.push(tokio::spawn(async move {
                s.data(&session(), &envelope(), &m).await
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Verdict::TempFail(r) => {
                    assert_eq!(r.code(), 451);
                    assert_eq!(r.enhanced().unwrap().to_string(), "4.7.0");
                }
                v => panic!("fail-closed accepted or rejected while clamd was down: {v:?}"),
            }
        }
        // Fail-open: accepted and tagged.
        for _ in 0..5 {
            match open.data(&session(), &envelope(), &clean).await {
                Verdict::Tag(h) => {
                    assert_eq!(h.len(), 1);
                    assert_eq!(h[0].0, "X-Moat-Virus-Scan");
                    assert!(h[0].1.contains("not scanned"), "{}", h[0].1);
                }
                v => panic!("fail-open did not tag: {v:?}"),
            }
        }
        let st = &engines.status()[0];
        assert_ne!(st.state, BreakerState::Closed, "{st:?}");
        assert!(!engines.is_ready());
        assert_eq!(
            metric(&registry, "moat_av_engine_up", &[("engine", "clamd")]),
            0.0
        );
        assert!(
            metric(
                &registry,
                "moat_av_scans_total",
                &[("engine", "clamd"), ("result", "circuit-open")]
            ) > 0.0,
            "the open breaker spared the engine"
        );
        assert!(
            metric(
                &registry,
                "moat_av_messages_total",
                &[("outcome", "accepted-unscanned")]
            ) >= 5.0
        );
        // The error seen while down says whose fault it is.
        match engines.scan(b"x").await {
            Err(e) => {
                assert!(
                    matches!(e.kind(), AvErrorKind::Connect | AvErrorKind::CircuitOpen),
                    "{e}"
                );
                assert!(e.is_retryable());
            }
            Ok(r) => panic!("scan answered while clamd was down: {r:?}"),
        }

        // Back: mail alone closes the breaker again (one probe scan after the open period).
        clamd.restart();
        let t = Instant::now();
        loop {
            match closed.data(&session(), &envelope(), &virus).await {
                Verdict::Reject(r) => {
                    assert!(r.text().contains(EICAR_SIG));
                    break;
                }
                Verdict::TempFail(_) if t.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                v => panic!("scanning did not resume: {v:?}"),
            }
        }
        assert!(engines.is_ready());
        assert_eq!(
            metric(&registry, "moat_av_engine_up", &[("engine", "clamd")]),
            1.0
        );
        assert_eq!(
            open.data(&session(), &envelope(), &clean).await,
            Verdict::Continue
        );

        // Without mail: the prober's health check closes it.
        clamd.stop();
        for _ in 0..3 {
            assert!(engines.scan(b"x").await.is_err());
        }
        assert_eq!(engines.status()[0].state, BreakerState::Open);
        clamd.restart();
        let t = Instant::now();
        while !engines.is_ready() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "prober never closed the breaker"
            );
            engines.probe_open_engines().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric(&registry, "moat_av_engine_up", &[("engine", "clamd")]),
            1.0
        );
    });
}

#[test]
fn modes_across_two_engines() {
    let Some(clamd) = Clamd::start("25M") else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let registry = prometheus::Registry::new();
        let metrics = AvMetrics::new(&registry).unwrap();
        let dead: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        }; // listener dropped: connections are refused
        let live = || clamd_engine(ClamdAddress::Unix(clamd.unix.clone()));
        let down = || clamd_engine(ClamdAddress::Tcp(dead));

        // failover: the dead first engine is skipped, the live one decides.
        let s = set(
            Mode::Failover,
            vec![("down", down()), ("live", live())],
            EngineLimits::default(),
            &metrics,
        );
        assert!(matches!(
            s.scan(&eicar()).await.unwrap(),
            ScanResult::Infected(_)
        ));
        assert!(s.is_ready());
        // all: a dead engine makes the scan fail, but a detection by the other still wins.
        let registry2 = prometheus::Registry::new();
        let metrics2 = AvMetrics::new(&registry2).unwrap();
        let a = set(
            Mode::All,
            vec![("live", live()), ("down", down())],
            EngineLimits::default(),
            &metrics2,
        );
        assert_eq!(
            a.scan(b"clean").await.unwrap_err().kind(),
            AvErrorKind::Connect
        );
        assert!(matches!(
            a.scan(&eicar()).await.unwrap(),
            ScanResult::Infected(_)
        ));
        let both = set(
            Mode::All,
            vec![("one", live()), ("two", live())],
            EngineLimits::default(),
            &AvMetrics::new(&prometheus::Registry::new()).unwrap(),
        );
        assert_eq!(both.scan(b"clean").await.unwrap(), ScanResult::Clean);
        assert!(matches!(
            both.scan(&eicar()).await.unwrap(),
            ScanResult::Infected(_)
        ));
    });
}
