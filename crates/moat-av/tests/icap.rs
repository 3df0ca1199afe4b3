//! The ICAP engine against a real c-icap (virus_scan service backed by a real clamd).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Clamd, EICAR_SIG, Icap, eicar, forwarded, plain, with_attachment, zip_stored};
use moat_av::{
    AntivirusEngine, AntivirusStage, AvErrorKind, AvMetrics, AvPolicy, ClamdAddress, ClamdConfig,
    EngineLimits, EngineSet, EngineSpec, IcapConfig, Mode, OnFailure, ScanResult, ScanTargets,
};
use moat_core::{Envelope, SessionInfo, Stage, Verdict};

fn session() -> SessionInfo {
    SessionInfo {
        connector: "inbound".into(),
        client: "192.0.2.1:40000".parse().unwrap(),
        local: "127.0.0.1:25".parse().unwrap(),
        helo: None,
        esmtp: true,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

#[test]
fn icap_engine_and_stage() {
    let Some(clamd) = Clamd::start("25M") else {
        return;
    };
    let Some(mut icap) = Icap::start(&clamd) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let with_preview = IcapConfig::new(icap.addr, "avscan").build().unwrap();
        let mut np = IcapConfig::new(icap.addr, "avscan");
        np.preview = None;
        let no_preview = np.build().unwrap();
        let health = with_preview.health().await.unwrap();
        assert!(health.contains("C-ICAP"), "{health}");

        // Small bodies fit the preview (one round trip, `ieof`); large ones continue after
        // `100 Continue`, with the signature past the preview.
        let mut big_infected = vec![b'a'; 200_000];
        big_infected.extend_from_slice(&eicar());
        let big_clean: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for engine in [&with_preview, &no_preview] {
            assert_eq!(
                engine.scan(b"nothing here").await.unwrap(),
                ScanResult::Clean,
                "{}",
                icap.log()
            );
            assert_eq!(engine.scan(&big_clean).await.unwrap(), ScanResult::Clean);
            for data in [eicar(), big_infected.clone()] {
                match engine.scan(&data).await.unwrap() {
                    ScanResult::Infected(n) => assert!(n.starts_with(EICAR_SIG), "{n}"),
                    r => panic!("expected a detection, got {r:?}"),
                }
            }
        }

        // Through the stage: the five carriers of EICAR are rejected naming the signature.
        let registry = prometheus::Registry::new();
        let metrics = AvMetrics::new(&registry).unwrap();
        let engines = Arc::new(
            EngineSet::new(
                Mode::Failover,
                vec![
                    EngineSpec {
                        name: "icap".into(),
                        engine: Arc::new(IcapConfig::new(icap.addr, "avscan").build().unwrap()),
                        limits: EngineLimits {
                            breaker_failures: 1,
                            breaker_open_for: Duration::from_secs(60),
                            ..EngineLimits::default()
                        },
                    },
                    EngineSpec {
                        name: "clamd".into(),
                        engine: Arc::new(
                            ClamdConfig::new(ClamdAddress::Unix(clamd.unix.clone()))
                                .build()
                                .unwrap(),
                        ),
                        limits: EngineLimits::default(),
                    },
                ],
                &metrics,
            )
            .unwrap(),
        );
        let stage = AntivirusStage::new(
            engines.clone(),
            None,
            AvPolicy {
                on_failure: OnFailure::FailClosed,
                targets: ScanTargets {
                    whole_message: false,
                    ..ScanTargets::default()
                },
                ..AvPolicy::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let inner = with_attachment("eicar.com", "application/octet-stream", &eicar());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("plain body", plain(&eicar())),
            ("base64 in multipart", inner.clone()),
            (
                "zip",
                with_attachment("a.zip", "application/zip", &zip_stored("e.com", &eicar())),
            ),
            (
                "zip in zip",
                with_attachment(
                    "b.zip",
                    "application/zip",
                    &zip_stored("in.zip", &zip_stored("e.com", &eicar())),
                ),
            ),
            ("message/rfc822", forwarded(&inner)),
        ];
        let clean = with_attachment("n.txt", "text/plain", b"harmless\r\n");
        let check = |label: &'static str| {
            let stage = &stage;
            let cases = &cases;
            let clean = &clean;
            async move {
                for (name, msg) in cases {
                    match stage.data(&session(), &Envelope::default(), msg).await {
                        Verdict::Reject(r) => {
                            assert_eq!(r.code(), 554);
                            assert!(r.text().contains(EICAR_SIG), "{label} {name}: {}", r.text());
                        }
                        v => panic!("{label} {name}: {v:?}"),
                    }
                }
                assert_eq!(
                    stage.data(&session(), &Envelope::default(), clean).await,
                    Verdict::Continue,
                    "{label}"
                );
            }
        };
        check("via icap").await;
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"moat_av_scans_total{engine="icap",result="infected"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"moat_av_scans_total{engine="clamd",result="infected"} 0"#));

        // c-icap goes away: failover carries on through clamd; the ICAP engine reports a
        // classified failure.
        icap.stop();
        let e = IcapConfig::new(icap.addr, "avscan")
            .build()
            .unwrap()
            .scan(b"x")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), AvErrorKind::Connect);
        check("failover to clamd").await;
        assert!(!engines.status()[0].state.as_str().is_empty());
        assert!(
            engines.is_ready(),
            "failover is ready while one engine is up"
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"moat_av_engine_up{engine="icap"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"moat_av_scans_total{engine="clamd",result="infected"} 5"#));
    });
}
