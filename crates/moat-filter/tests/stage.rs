//! The stage: rule store → scan → verdict, as the SMTP front end will call it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use moat_core::{Enhanced, Envelope, SessionInfo, Stage, Verdict};
use moat_filter::{ContentFilter, FilterConfig, MimeExtractor};
use moat_rules::{CompileOptions, RuleStore, Thresholds};

const PACK: &str = r#"
[pack]
name = "stage"
version = "7"
reject_text = "spam refused"
[thresholds]
tag = 2.0
quarantine = 4.0
reject = 6.0
[[rule]]
id = "TWO"
target = "subject"
words = ["two"]
score = 2.0
[[rule]]
id = "FOUR"
target = "subject"
words = ["four"]
score = 4.0
[[rule]]
id = "BAD_HELO"
target = "helo"
literals = ["spammer"]
score = 6.0
[[rule]]
id = "TO_TRAP"
target = "rcpt-to"
literals = ["trap@"]
score = 6.0
[[rule]]
id = "FROM_IP"
target = "client-ip"
regex = '^203\.0\.113\.'
score = 2.0
"#;

fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the filter stage never waits"),
    }
}

fn session(connector: &str, helo: &str, client: &str) -> SessionInfo {
    SessionInfo {
        connector: connector.into(),
        client: client.parse::<SocketAddr>().unwrap(),
        local: "192.0.2.1:25".parse().unwrap(),
        helo: Some(helo.into()),
        esmtp: true,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

fn filter(config: FilterConfig) -> (tempfile::TempDir, ContentFilter) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stage.toml"), PACK).unwrap();
    let store = RuleStore::open(
        dir.path(),
        CompileOptions::default(),
        Some(Arc::new(MimeExtractor::default())),
    )
    .unwrap();
    (dir, ContentFilter::new(Arc::new(store), config))
}

#[test]
fn verdicts_table() {
    let mut config = FilterConfig {
        scl_stamp: true,
        ..FilterConfig::default()
    };
    config.connector_thresholds.insert(
        "strict".into(),
        Thresholds {
            tag: None,
            quarantine: None,
            reject: Some(2.0),
        },
    );
    let (_dir, f) = filter(config);
    assert_eq!(f.name(), "content");
    let env = |rcpt: &str| Envelope {
        mail_from: "a@example.org".into(),
        rcpt_to: vec![rcpt.into()],
        ..Envelope::default()
    };
    // (connector, helo, client, rcpt, subject, expected)
    enum Want {
        Continue,
        Tag(&'static str, &'static str),
        Quarantine(&'static str),
        Reject,
    }
    let cases = [
        (
            "in",
            "mx.example",
            "192.0.2.9:4000",
            "u@example.org",
            "hello",
            Want::Continue,
        ),
        (
            "in",
            "mx.example",
            "192.0.2.9:4000",
            "u@example.org",
            "two",
            Want::Tag("2", "6"),
        ),
        (
            "in",
            "mx.example",
            "203.0.113.5:4000",
            "u@example.org",
            "two",
            Want::Quarantine("rules=TWO,FROM_IP"),
        ),
        (
            "in",
            "mx.example",
            "192.0.2.9:4000",
            "u@example.org",
            "four",
            Want::Quarantine("rules=FOUR"),
        ),
        (
            "in",
            "spammer.example",
            "192.0.2.9:4000",
            "u@example.org",
            "hello",
            Want::Reject,
        ),
        (
            "in",
            "mx.example",
            "192.0.2.9:4000",
            "trap@example.org",
            "hello",
            Want::Reject,
        ),
        (
            "strict",
            "mx.example",
            "192.0.2.9:4000",
            "u@example.org",
            "two",
            Want::Reject,
        ),
        (
            "strict",
            "mx.example",
            "192.0.2.9:4000",
            "u@example.org",
            "hello",
            Want::Continue,
        ),
    ];
    for (connector, helo, client, rcpt, subject, want) in cases {
        let s = session(connector, helo, client);
        let e = env(rcpt);
        let msg = format!("Subject: {subject}\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n");
        let v = now(f.data(&s, &e, msg.as_bytes()));
        let label = format!("{connector} {helo} {client} {rcpt} {subject}");
        match want {
            Want::Continue => assert_eq!(v, Verdict::Continue, "{label}"),
            Want::Tag(score, scl) => {
                let Verdict::Tag(h) = &v else {
                    panic!("{label}: {v:?}")
                };
                let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
                assert_eq!(get("X-Moat-Score"), Some(score), "{label}");
                let status = get("X-Moat-Status").unwrap();
                assert!(status.starts_with("tag; score="), "{status}");
                assert!(status.contains("pack=stage 7"), "{status}");
                assert_eq!(get("X-MS-Exchange-Organization-SCL"), Some(scl), "{label}");
            }
            Want::Quarantine(rules) => {
                let Verdict::Quarantine(why) = &v else {
                    panic!("{label}: {v:?}")
                };
                assert!(why.contains(rules), "{label}: {why}");
            }
            Want::Reject => {
                let Verdict::Reject(r) = &v else {
                    panic!("{label}: {v:?}")
                };
                assert_eq!(r.code(), 550);
                assert_eq!(r.enhanced(), Some(Enhanced::new(5, 7, 1)));
                assert_eq!(r.text(), "spam refused");
            }
        }
    }
}

#[test]
fn tagging_with_a_subject_prefix_replaces_the_message() {
    let (dir, f) = filter(FilterConfig::default());
    let pack = PACK.replace("reject_text", "subject_prefix = \"[SPAM]\"\nreject_text");
    std::fs::write(dir.path().join("stage.toml"), pack).unwrap();
    f.store().reload().unwrap();
    let s = session("in", "mx.example", "192.0.2.9:4000");
    let e = Envelope::default();
    let v = now(f.data(&s, &e, b"From: a@b\r\nSubject: two\r\n\r\nx\r\n"));
    let Verdict::Replace(message, why) = &v else {
        panic!("{v:?}")
    };
    let message = String::from_utf8_lossy(message);
    assert!(message.starts_with("X-Moat-Score: 2\r\n"), "{message}");
    assert!(
        message.ends_with("From: a@b\r\nSubject: [SPAM] two\r\n\r\nx\r\n"),
        "{message}"
    );
    assert!(why.contains("[SPAM]"), "{why}");
    // Below the tag threshold the message is left as it is.
    let v = now(f.data(&s, &e, b"Subject: hello\r\n\r\nx\r\n"));
    assert_eq!(v, Verdict::Continue);
}

#[test]
fn reload_swaps_and_keeps_old_on_failure() {
    let (dir, f) = filter(FilterConfig::default());
    let s = session("in", "mx.example", "192.0.2.9:4000");
    let e = Envelope::default();
    let msg = b"Subject: two\r\n\r\nx\r\n";
    assert!(matches!(now(f.data(&s, &e, msg)), Verdict::Tag(_)));
    // A message in flight keeps its snapshot across a reload.
    let held = f.store().snapshot();
    // A broken pack (bad regex) is refused; the old rules keep working.
    std::fs::write(
        dir.path().join("stage.toml"),
        PACK.replace("literals = [\"spammer\"]", "regex = 'spam(mer'"),
    )
    .unwrap();
    let err = f.store().reload().unwrap_err().to_string();
    assert!(
        err.contains("stage.toml:") && err.contains("rule BAD_HELO: bad regex"),
        "{err}"
    );
    assert!(matches!(now(f.data(&s, &e, msg)), Verdict::Tag(_)));
    // A good new version is applied.
    std::fs::write(
        dir.path().join("stage.toml"),
        PACK.replace("version = \"7\"", "version = \"8\"").replace(
            "score = 2.0\n[[rule]]\nid = \"FOUR\"",
            "score = 0.5\n[[rule]]\nid = \"FOUR\"",
        ),
    )
    .unwrap();
    let applied = f.store().reload().unwrap();
    assert!(
        matches!(&applied, moat_rules::ReloadOutcome::Applied { versions, .. } if versions == "stage 8"),
        "{applied:?}"
    );
    assert_eq!(now(f.data(&s, &e, msg)), Verdict::Continue);
    assert_eq!(
        f.store().reload().unwrap(),
        moat_rules::ReloadOutcome::Unchanged
    );
    assert_eq!(held.packs()[0].version, "7");
}

#[test]
fn import_writes_a_pack_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cf = dir.path().join("local.cf");
    std::fs::write(
        &cf,
        "body LOCAL_OFFER /special offer/i\nscore LOCAL_OFFER 3.0\nbody LOOK /a(?=b)/\n",
    )
    .unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    let out = rules_dir.join("sa.toml");
    let report = moat_filter::cli::import_spamassassin(
        &[dir.path().to_path_buf()],
        &out,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(report.converted, 1);
    assert_eq!(report.skipped.len(), 1);
    let rules = moat_rules::load(&rules_dir, &CompileOptions::default()).unwrap();
    assert_eq!(rules.rules()[0].id, "LOCAL_OFFER");
    assert_eq!(rules.rules()[0].score, 3.0);
}
