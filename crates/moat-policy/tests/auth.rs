//! SPF, DKIM, DMARC and ARC through [`AuthStage`] against a real DNS server on loopback
//! (dnsmasq) serving SPF records, DKIM keys made at test time and DMARC policies.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Dns, Zone, metric};
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
use moat_core::{Envelope, SessionInfo, Stage, Verdict};
use moat_policy::{
    AuthConfig, AuthMetrics, AuthResult, AuthStage, DmarcPolicy, DmarcQuarantineAction,
    DmarcRejectAction, DnsConfig, SpfAction,
};

const HOST: &str = "mx.moat.test";
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Keys made for one fixture: an Ed25519 key (ring, through mail-auth) and, when asked, an
/// RSA key made with the `openssl` program.
struct Keys {
    ed_pkcs8: Vec<u8>,
    ed_public: String,
    rsa_pem: Option<String>,
    rsa_public: Option<String>,
}

impl Keys {
    fn new(rsa: bool) -> Option<Self> {
        let ed_pkcs8 = Ed25519Key::generate_pkcs8().expect("ed25519 key");
        let ed_public = B64.encode(
            Ed25519Key::from_pkcs8_der(&ed_pkcs8)
                .expect("ed25519 key")
                .public_key(),
        );
        let (rsa_pem, rsa_public) = if rsa {
            let (pem, public) = rsa_key()?;
            (Some(pem), Some(public))
        } else {
            (None, None)
        };
        Some(Keys {
            ed_pkcs8,
            ed_public,
            rsa_pem,
            rsa_public,
        })
    }

    fn ed(&self) -> Ed25519Key {
        Ed25519Key::from_pkcs8_der(&self.ed_pkcs8).expect("ed25519 key")
    }
}

/// A 2048-bit RSA key from `openssl`: (PKCS#8 PEM, base64 SubjectPublicKeyInfo).
fn rsa_key() -> Option<(String, String)> {
    let openssl = common::program("openssl", "openssl")?;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("pub.der");
    let ok = std::process::Command::new(&openssl)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let ok = std::process::Command::new(&openssl)
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl pkey -pubout failed");
    Some((
        std::fs::read_to_string(&key).unwrap(),
        B64.encode(std::fs::read(&public).unwrap()),
    ))
}

/// The test zone: one domain per SPF result, DKIM keys under `pass.test` (and `fwd.test`
/// for ARC), DMARC policies, and `slow.test` whose queries are never answered; any other
/// name under `test` does not exist (NXDOMAIN).
fn zone(keys: &Keys, blackhole: std::net::SocketAddr) -> Zone {
    let mut zone = Zone::new()
        .txt("pass.test", "v=spf1 ip4:192.0.2.10 -all")
        .txt("mail.pass.test", "v=spf1 ip4:192.0.2.10 -all")
        .txt("fail.test", "v=spf1 ip4:198.51.100.1 -all")
        .txt("softfail.test", "v=spf1 ip4:198.51.100.1 ~all")
        .a("none.test", Ipv4Addr::new(198, 51, 100, 2))
        .txt("_dmarc.pass.test", "v=DMARC1; p=reject")
        .txt("_dmarc.reject.test", "v=DMARC1; p=reject")
        .txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine")
        .txt(
            "ed._domainkey.pass.test",
            &format!("v=DKIM1; k=ed25519; p={}", keys.ed_public),
        )
        .txt(
            "arc._domainkey.fwd.test",
            &format!("v=DKIM1; k=ed25519; p={}", keys.ed_public),
        )
        .unanswered("slow.test", blackhole)
        .nxdomain("test");
    if let Some(rsa) = &keys.rsa_public {
        zone = zone.txt(
            "rsa._domainkey.pass.test",
            &format!("v=DKIM1; k=rsa; p={rsa}"),
        );
    }
    zone
}

struct Fixture {
    stage: AuthStage,
    registry: prometheus::Registry,
    keys: Keys,
    dns: Dns,
}

/// Starts dnsmasq with the test zone and builds the stage; `None` when a program is
/// missing outside CI.
fn fixture(config: AuthConfig, rsa: bool) -> Option<Fixture> {
    let keys = Keys::new(rsa)?;
    let blackhole = Dns::blackhole();
    let zone = zone(&keys, blackhole.local_addr().unwrap());
    let dns = Dns::start(&zone, blackhole)?;
    let resolver = DnsConfig {
        servers: vec![dns.addr],
        timeout_ms: 300,
        ..Default::default()
    }
    .resolver()
    .expect("resolver");
    let registry = prometheus::Registry::new();
    let stage = config
        .build(resolver, HOST, AuthMetrics::new(&registry).unwrap())
        .expect("stage");
    Some(Fixture {
        stage,
        registry,
        keys,
        dns,
    })
}

fn session() -> SessionInfo {
    SessionInfo {
        connector: "mx".into(),
        client: (CLIENT, 40000).into(),
        local: "192.0.2.250:25".parse().unwrap(),
        helo: Some("mail.pass.test".into()),
        esmtp: true,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

fn env(mail_from: &str) -> Envelope {
    Envelope {
        mail_from: mail_from.into(),
        rcpt_to: vec!["bob@example.test".into()],
        ..Default::default()
    }
}

/// A message from `from`, as the session hands it to the stages (our Received first).
fn message(from: &str) -> String {
    format!(
        "From: Alice <{from}>\r\n\
To: bob@example.test\r\n\
Subject: quarterly figures\r\n\
Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@pass.test>\r\n\
\r\n\
Hello Bob,\r\n\
the figures are attached.\r\n"
    )
}

fn received() -> &'static str {
    "Received: from mail.pass.test ([192.0.2.10]) by mx.moat.test with ESMTP; Mon, 2 Nov 2026 10:00:01 +0000\r\n"
}

fn sign(keys: &Keys, selector: &str, msg: &str) -> String {
    let headers = ["From", "To", "Subject", "Date", "Message-ID"];
    let sig = match selector {
        "ed" => DkimSigner::from_key(keys.ed())
            .domain("pass.test")
            .selector("ed")
            .headers(headers)
            .sign(msg.as_bytes()),
        // The suggested replacement takes a rustls-pki-types key, not a dependency here.
        #[allow(deprecated)]
        "rsa" => DkimSigner::from_key(
            RsaKey::<Sha256>::from_pkcs8_pem(keys.rsa_pem.as_deref().unwrap()).expect("rsa key"),
        )
        .domain("pass.test")
        .selector("rsa")
        .headers(headers)
        .sign(msg.as_bytes()),
        other => panic!("no selector {other}"),
    }
    .expect("sign");
    format!("{}{msg}", sig.to_header())
}

/// The header the stage added (unfolded), or what else it said.
fn tagged(v: &Verdict) -> String {
    match v {
        Verdict::Tag(h) => {
            assert_eq!(h.len(), 1, "one header: {h:?}");
            assert_eq!(h[0].0, "Authentication-Results");
            unfold(&h[0].1)
        }
        other => panic!("expected a tag, got {other:?}"),
    }
}

fn unfold(s: &str) -> String {
    s.replace("\r\n\t", " ")
}

/// The `method=…` clause of an unfolded header (up to the next `;`).
fn clause<'a>(header: &'a str, method: &str) -> &'a str {
    header
        .split("; ")
        .find(|c| c.starts_with(&format!("{method}=")))
        .unwrap_or_else(|| panic!("no {method} in {header}"))
}

/// Wire form of a refusal's code and enhanced code, or the verdict's kind.
fn wire(v: &Verdict) -> String {
    match v {
        Verdict::Reject(r) | Verdict::TempFail(r) => r.to_string().get(..10).unwrap().to_owned(),
        Verdict::Continue => "continue".into(),
        Verdict::Tag(_) => "tag".into(),
        Verdict::Quarantine(_) => "quarantine".into(),
        Verdict::Replace(..) => "replace".into(),
        Verdict::Discard(_) => "discard".into(),
    }
}

async fn data(f: &Fixture, session: &SessionInfo, mail_from: &str, msg: &str) -> Verdict {
    let full = format!("{}{msg}", received());
    f.stage
        .data(session, &env(mail_from), full.as_bytes())
        .await
}

/// One counter or histogram count from the registry's text exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_pass_fail_softfail_none_at_mail_and_in_the_header() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let tagging = fixture(
        AuthConfig {
            spf_fail: SpfAction::Tag,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let strict = fixture(
        AuthConfig {
            spf_softfail: SpfAction::Reject,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let s = session();
    // (stage, MAIL FROM, verdict at MAIL, spf clause at DATA or None when refused)
    let cases: &[(&Fixture, &str, &str, Option<&str>)] = &[
        (
            &f,
            "alice@pass.test",
            "continue",
            Some(
                "spf=pass (mx.moat.test: domain of alice@pass.test designates 192.0.2.10 as permitted sender) smtp.mailfrom=alice@pass.test",
            ),
        ),
        (&f, "alice@fail.test", "550 5.7.23", None),
        (
            &tagging,
            "alice@fail.test",
            "continue",
            Some(
                "spf=fail (mx.moat.test: domain of alice@fail.test does not designate 192.0.2.10 as permitted sender) smtp.mailfrom=alice@fail.test",
            ),
        ),
        (
            &f,
            "alice@softfail.test",
            "continue",
            Some(
                "spf=softfail (mx.moat.test: domain of alice@softfail.test reports soft fail for 192.0.2.10) smtp.mailfrom=alice@softfail.test",
            ),
        ),
        (&strict, "alice@softfail.test", "550 5.7.23", None),
        (
            &f,
            "alice@none.test",
            "continue",
            Some(
                "spf=none (mx.moat.test: no SPF records found for alice@none.test) smtp.mailfrom=alice@none.test",
            ),
        ),
        // No such domain at all: also none.
        (
            &f,
            "alice@nowhere.test",
            "continue",
            Some(
                "spf=none (mx.moat.test: no SPF records found for alice@nowhere.test) smtp.mailfrom=alice@nowhere.test",
            ),
        ),
        // The null sender: the HELO identity.
        (
            &f,
            "",
            "continue",
            Some(
                "spf=pass (mx.moat.test: domain of postmaster@mail.pass.test designates 192.0.2.10 as permitted sender) smtp.helo=mail.pass.test",
            ),
        ),
    ];
    for (stage, from, at_mail, at_data) in cases {
        let v = stage.stage.mail(&s, &env(from)).await;
        assert_eq!(wire(&v), *at_mail, "MAIL FROM:<{from}>: {v:?}");
        if let Verdict::Reject(r) = &v {
            let domain = from.rsplit_once('@').unwrap().1;
            assert_eq!(
                r.to_string(),
                format!(
                    "550 5.7.23 SPF validation failed: 192.0.2.10 is {}permitted to send for {domain}\r\n",
                    if domain.starts_with("soft") {
                        "probably not "
                    } else {
                        "not "
                    }
                )
            );
        }
        match at_data {
            Some(want) => {
                let h = tagged(&data(stage, &s, from, &message("alice@none.test")).await);
                assert!(h.starts_with("mx.moat.test; spf="), "{h}");
                assert_eq!(clause(&h, "spf"), *want, "{from}");
            }
            None => {
                // Refused again at DATA (the stage keeps no state), same reply.
                let v = data(stage, &s, from, &message("alice@none.test")).await;
                assert_eq!(wire(&v), *at_mail, "DATA for {from}: {v:?}");
            }
        }
    }
    // MAIL results: pass x2 (pass.test, HELO), fail, softfail, none x2, for `f`.
    let r = &f.registry;
    let spf = |result| {
        metric(
            r,
            "moat_policy_auth_results_total",
            &[("method", "spf"), ("result", result)],
        )
    };
    assert_eq!(
        (spf("pass"), spf("fail"), spf("softfail"), spf("none")),
        (2.0, 1.0, 1.0, 2.0)
    );
    assert_eq!(
        metric(
            r,
            "moat_policy_auth_refusals_total",
            &[("reason", "spf_fail")]
        ),
        2.0,
        "at MAIL and again at DATA"
    );
    assert_eq!(
        metric(
            &strict.registry,
            "moat_policy_auth_refusals_total",
            &[("reason", "spf_softfail")]
        ),
        2.0
    );
    assert_eq!(
        metric(r, "moat_policy_auth_verify_seconds", &[("phase", "mail")]),
        6.0
    );
    assert_eq!(
        metric(r, "moat_policy_auth_verify_seconds", &[("phase", "data")]),
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_pass_for_signed_mail_and_fail_once_altered() {
    let Some(f) = fixture(AuthConfig::default(), true) else {
        return;
    };
    let s = session();
    // MAIL FROM a domain whose SPF is not aligned with From:, so DMARC rests on DKIM.
    let from = "bounce@softfail.test";
    let msg = message("alice@pass.test");
    for selector in ["ed", "rsa"] {
        let signed = sign(&f.keys, selector, &msg);
        let h = tagged(&data(&f, &s, from, &signed).await);
        let dkim = clause(&h, "dkim");
        assert!(
            dkim.starts_with(&format!(
                "dkim=pass header.d=pass.test header.s={selector} header.b="
            )),
            "{h}"
        );
        assert_eq!(
            clause(&h, "dmarc"),
            "dmarc=pass header.from=pass.test policy.dmarc=reject"
        );

        // The body altered after signing.
        let altered = signed.replace("attached", "attached, and the bank details changed");
        let v = data(&f, &s, from, &altered).await;
        assert_eq!(
            wire(&v),
            "550 5.7.1 ",
            "DKIM fails, SPF not aligned: DMARC p=reject"
        );
        let report = f.stage.verify(&s, &env(from), altered.as_bytes()).await;
        assert_eq!(report.dkim, AuthResult::Fail);
        assert_eq!(report.dmarc, AuthResult::Fail);
        let h = unfold(&report.header);
        assert!(
            clause(&h, "dkim").starts_with(&format!(
                "dkim=fail (body hash did not verify) header.d=pass.test header.s={selector} header.b="
            )),
            "{h}"
        );
        assert_eq!(
            clause(&h, "dmarc"),
            "dmarc=fail (policy not aligned) header.from=pass.test policy.dmarc=reject"
        );

        // A signed header altered after signing.
        let altered = signed.replace("quarterly figures", "urgent payment");
        let report = f.stage.verify(&s, &env(from), altered.as_bytes()).await;
        assert_eq!(report.dkim, AuthResult::Fail, "{}", report.header);
        assert!(
            unfold(&report.header).contains("dkim=fail (verification failed) header.d=pass.test"),
            "{}",
            report.header
        );
    }
    // Unsigned: dkim=none.
    let h = tagged(&data(&f, &s, "alice@pass.test", &msg).await);
    assert_eq!(clause(&h, "dkim"), "dkim=none");

    let dkim = |result| {
        metric(
            &f.registry,
            "moat_policy_auth_results_total",
            &[("method", "dkim"), ("result", result)],
        )
    };
    assert_eq!((dkim("pass"), dkim("fail"), dkim("none")), (2.0, 2.0, 1.0));
    assert_eq!(
        metric(
            &f.registry,
            "moat_policy_auth_refusals_total",
            &[("reason", "dmarc_reject")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_reject_and_quarantine_as_configured() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let s = session();
    // SPF passes for the envelope domain, but From: is another domain with a policy and
    // there is no DKIM signature: DMARC fails.
    let from = "alice@pass.test";

    let v = data(&f, &s, from, &message("ceo@reject.test")).await;
    let Verdict::Reject(reply) = &v else {
        panic!("p=reject: {v:?}")
    };
    assert_eq!(
        reply.to_string(),
        "550 5.7.1 Message rejected by the DMARC policy of reject.test\r\n"
    );

    let v = data(&f, &s, from, &message("ceo@quarantine.test")).await;
    assert_eq!(
        v,
        Verdict::Quarantine("DMARC policy of quarantine.test".into())
    );

    let report = f
        .stage
        .verify(&s, &env(from), message("ceo@reject.test").as_bytes())
        .await;
    assert_eq!(
        (
            report.dmarc,
            report.dmarc_policy,
            report.from_domain.as_str()
        ),
        (AuthResult::Fail, DmarcPolicy::Reject, "reject.test")
    );

    // Only tagged when so configured.
    let tag = fixture(
        AuthConfig {
            dmarc_reject: DmarcRejectAction::Tag,
            dmarc_quarantine: DmarcQuarantineAction::Tag,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let h = tagged(&data(&tag, &s, from, &message("ceo@reject.test")).await);
    assert_eq!(
        clause(&h, "dmarc"),
        "dmarc=fail (policy not aligned) header.from=reject.test policy.dmarc=reject"
    );
    let h = tagged(&data(&tag, &s, from, &message("ceo@quarantine.test")).await);
    assert_eq!(
        clause(&h, "dmarc"),
        "dmarc=fail (policy not aligned) header.from=quarantine.test policy.dmarc=quarantine"
    );

    // p=reject held instead of refused.
    let hold = fixture(
        AuthConfig {
            dmarc_reject: DmarcRejectAction::Quarantine,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let v = data(&hold, &s, from, &message("ceo@reject.test")).await;
    assert_eq!(v, Verdict::Quarantine("DMARC policy of reject.test".into()));

    // No DMARC record for the From: domain: none, accepted.
    let h = tagged(&data(&f, &s, from, &message("alice@none.test")).await);
    assert_eq!(
        clause(&h, "dmarc"),
        "dmarc=none header.from=none.test policy.dmarc=none"
    );
    // Aligned SPF pass: DMARC passes without DKIM.
    let h = tagged(&data(&f, &s, from, &message("alice@pass.test")).await);
    assert_eq!(
        clause(&h, "dmarc"),
        "dmarc=pass header.from=pass.test policy.dmarc=reject"
    );

    let r = &f.registry;
    let dmarc = |result| {
        metric(
            r,
            "moat_policy_auth_results_total",
            &[("method", "dmarc"), ("result", result)],
        )
    };
    assert_eq!(
        (dmarc("fail"), dmarc("none"), dmarc("pass")),
        (2.0, 1.0, 1.0)
    );
    let refusals = |reason| metric(r, "moat_policy_auth_refusals_total", &[("reason", reason)]);
    assert_eq!(
        (refusals("dmarc_reject"), refusals("dmarc_quarantine")),
        (1.0, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_timeout_gives_temperror_not_a_refusal() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let s = session();
    let from = "alice@slow.test";
    let started = Instant::now();
    assert_eq!(f.stage.mail(&s, &env(from)).await, Verdict::Continue);
    // A message signed for a domain whose key cannot be fetched.
    let msg = message("alice@slow.test");
    let sig = DkimSigner::from_key(f.keys.ed())
        .domain("slow.test")
        .selector("ed")
        .headers(["From", "Subject"])
        .sign(msg.as_bytes())
        .unwrap();
    let signed = format!("{}{msg}", sig.to_header());
    let h = tagged(&data(&f, &s, from, &signed).await);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by the resolver's timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        clause(&h, "spf"),
        "spf=temperror (mx.moat.test: temporary dns error validating alice@slow.test) smtp.mailfrom=alice@slow.test"
    );
    assert!(
        clause(&h, "dkim").starts_with("dkim=temperror (dns error) header.d=slow.test header.s=ed"),
        "{h}"
    );
    assert!(
        clause(&h, "dmarc").starts_with("dmarc=temperror (dns error) header.from=slow.test"),
        "{h}"
    );
    assert_eq!(
        metric(
            &f.registry,
            "moat_policy_auth_results_total",
            &[("method", "spf"), ("result", "temperror")]
        ),
        1.0
    );

    // The stage's own per-check timeout also ends in temperror.
    let Some(short) = fixture(
        AuthConfig {
            timeout_ms: 50,
            ..Default::default()
        },
        false,
    ) else {
        return;
    };
    let h = tagged(&data(&short, &s, from, &message("alice@slow.test")).await);
    assert!(clause(&h, "spf").starts_with("spf=temperror"), "{h}");
    assert!(clause(&h, "dmarc").starts_with("dmarc=temperror"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_and_relaying_clients_are_skipped() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let authenticated = SessionInfo {
        auth_user: Some("alice".into()),
        may_relay: true,
        ..session()
    };
    let relaying = SessionInfo {
        may_relay: true,
        ..session()
    };
    for s in [&authenticated, &relaying] {
        assert_eq!(
            f.stage.mail(s, &env("alice@fail.test")).await,
            Verdict::Continue
        );
        assert_eq!(
            data(&f, s, "alice@fail.test", &message("ceo@reject.test")).await,
            Verdict::Continue
        );
    }
    assert_eq!(
        metric(&f.registry, "moat_policy_auth_skipped_total", &[]),
        2.0
    );
    assert_eq!(
        metric(&f.registry, "moat_policy_auth_results_total", &[]),
        0.0
    );

    // Checked when configured so.
    let checked = fixture(
        AuthConfig {
            skip_authenticated: false,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(
        wire(
            &checked
                .stage
                .mail(&authenticated, &env("alice@fail.test"))
                .await
        ),
        "550 5.7.23"
    );

    // Disabled: nothing checked, nothing counted.
    let off = fixture(
        AuthConfig {
            enabled: false,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let s = session();
    assert_eq!(
        off.stage.mail(&s, &env("alice@fail.test")).await,
        Verdict::Continue
    );
    assert_eq!(
        data(&off, &s, "alice@fail.test", &message("ceo@reject.test")).await,
        Verdict::Continue
    );
    assert_eq!(
        metric(&off.registry, "moat_policy_auth_skipped_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_with_our_id_are_replaced_others_kept() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let s = session();
    let forged = format!(
        "Authentication-Results: mx.moat.test;\r\n\tspf=pass smtp.mailfrom=ceo@reject.test;\r\n\tdmarc=pass\r\n\
Authentication-Results: upstream.example; spf=pass\r\n{}",
        message("alice@pass.test")
    );
    let v = data(&f, &s, "alice@pass.test", &forged).await;
    let Verdict::Replace(bytes, _) = &v else {
        panic!("expected a rewrite: {v:?}")
    };
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with("Authentication-Results: mx.moat.test;\r\n\tspf=pass (mx.moat.test: domain of alice@pass.test"),
        "ours first: {text}"
    );
    assert_eq!(
        text.matches("Authentication-Results: mx.moat.test;")
            .count(),
        1,
        "the forged one is gone: {text}"
    );
    assert!(!text.contains("smtp.mailfrom=ceo@reject.test"));
    assert!(text.contains("\r\nAuthentication-Results: upstream.example; spf=pass\r\n"));
    assert!(text.contains(received()), "the rest is kept: {text}");
    assert!(text.ends_with(&message("alice@pass.test")));
    assert_eq!(
        metric(&f.registry, "moat_policy_auth_forged_removed_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_none_and_pass_for_a_chain_sealed_at_test_time() {
    let Some(f) = fixture(AuthConfig::default(), false) else {
        return;
    };
    let s = session();
    let msg = message("alice@pass.test");
    let h = tagged(&data(&f, &s, "alice@pass.test", &msg).await);
    assert_eq!(clause(&h, "arc"), "arc=none smtp.remote-ip=192.0.2.10");
    assert!(
        h.starts_with("mx.moat.test; spf=pass")
            && h.contains("; dkim=none; dmarc=pass")
            && h.ends_with("; arc=none smtp.remote-ip=192.0.2.10"),
        "order spf, dkim, dmarc, arc: {h}"
    );

    // A forwarder (fwd.test) seals the message with an ARC set.
    let signed = sign(&f.keys, "ed", &msg);
    let resolver = DnsConfig {
        servers: vec![f.dns.addr],
        timeout_ms: 300,
        ..Default::default()
    }
    .resolver()
    .unwrap();
    let auth = MessageAuthenticator(resolver);
    let parsed = AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
    let arc = auth.verify_arc(&parsed).await;
    let dkim = auth.verify_dkim(&parsed).await;
    let results = AuthenticationResults::new("fwd.test").with_dkim_results(&dkim, "pass.test");
    let set = ArcSealer::from_key(f.keys.ed())
        .domain("fwd.test")
        .selector("arc")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &arc)
        .expect("seal");
    let sealed = format!("{}{signed}", set.to_header());
    let report = f
        .stage
        .verify(&s, &env("alice@pass.test"), sealed.as_bytes())
        .await;
    assert_eq!(report.arc, Some(AuthResult::Pass), "{}", report.header);
    assert_eq!(
        clause(&unfold(&report.header), "arc"),
        "arc=pass smtp.remote-ip=192.0.2.10"
    );

    // Broken after sealing.
    let broken = sealed.replace("quarterly", "annual");
    let report = f
        .stage
        .verify(&s, &env("alice@pass.test"), broken.as_bytes())
        .await;
    assert_eq!(report.arc, Some(AuthResult::Fail), "{}", report.header);

    // ARC off: no arc clause.
    let off = fixture(
        AuthConfig {
            arc: false,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let h = tagged(&data(&off, &s, "alice@pass.test", &msg).await);
    assert!(!h.contains("; arc="), "{h}");
}

#[test]
fn the_authserv_id_defaults_to_the_host_name_and_must_be_a_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resolver = DnsConfig::default().resolver().unwrap();
        let stage = AuthConfig::default()
            .build(
                resolver.clone(),
                "mx.example.net",
                AuthMetrics::unregistered(),
            )
            .unwrap();
        assert_eq!(stage.authserv_id(), "mx.example.net");
        let stage = AuthConfig {
            authserv_id: Some("auth.example.net".into()),
            ..Default::default()
        }
        .build(
            resolver.clone(),
            "mx.example.net",
            AuthMetrics::unregistered(),
        )
        .unwrap();
        assert_eq!(stage.authserv_id(), "auth.example.net");
        let err = AuthConfig::default()
            .build(resolver, "bad host;name", AuthMetrics::unregistered())
            .unwrap_err();
        assert!(err.to_string().contains("policy.auth.authserv_id"), "{err}");
    });
}
