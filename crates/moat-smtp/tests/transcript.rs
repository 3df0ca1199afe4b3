//! SMTP transcripts over an in-memory stream: every verb and every error reply.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use moat_core::{Shutdown, ShutdownTrigger};

fn fresh() -> (Arc<MemoryStore>, Client<tokio::io::DuplexStream>) {
    let store = Arc::new(MemoryStore::default());
    let client = start(
        mx(),
        context(store.clone()),
        "192.0.2.10",
        Shutdown::never(),
    );
    (store, client)
}

#[tokio::test]
async fn ehlo_advertises_extensions() {
    let (_, mut c) = fresh();
    c.expect("220 mx.example.test ESMTP").await;
    c.send("EHLO client.test\r\n").await;
    let r = c.expect("250 ").await;
    for ext in [
        "250-mx.example.test",
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(r.contains(ext), "{ext} missing from {r}");
    }
    // No TLS configured on this connector: neither STARTTLS nor AUTH is offered.
    assert!(!r.contains("STARTTLS") && !r.contains("AUTH"), "{r}");
}

#[tokio::test]
async fn full_transaction_is_stored_with_received_header() {
    let (store, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: HELO client.test
         S: 250 mx.example.test
         C: MAIL FROM:<alice@sender.test>
         S: 250 2.1.0
         C: RCPT TO:<bob@example.test>
         S: 250 2.1.5
         C: DATA
         S: 354
         C: Subject: hi
         C:
         C: ..leading dot
         C: body
         C: .
         S: 250 2.0.0 Ok: queued as T1
         C: QUIT
         S: 221 2.0.0
         S: <closed>",
    )
    .await;
    let (env, msg) = store.last();
    assert_eq!(env.mail_from, "alice@sender.test");
    assert_eq!(env.rcpt_to, vec!["bob@example.test"]);
    let text = String::from_utf8(msg).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([192.0.2.10])\r\n\tby mx.example.test (Moat) with SMTP"
        ),
        "{text}"
    );
    assert!(text.contains("\tfor <bob@example.test>;\r\n"), "{text}");
    assert!(
        text.ends_with("Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn simple_verbs() {
    let (_, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: NOOP
         S: 250 2.0.0
         C: VRFY bob
         S: 252 2.5.2
         C: HELP
         S: 214 2.0.0
         C: EXPN staff
         S: 502 5.5.1
         C: ETRN example.test
         S: 502 5.5.1
         C: FOO bar
         S: 500 5.5.2
         C: EHLO client.test
         S: 250
         C: RSET
         S: 250 2.0.0
         C: QUIT
         S: 221
         S: <closed>",
    )
    .await;
}

#[tokio::test]
async fn sequence_errors() {
    let (_, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: MAIL FROM:<a@sender.test>
         S: 503 5.5.1
         C: EHLO client.test
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 503 5.5.1
         C: DATA
         S: 503 5.5.1
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: DATA
         S: 554 5.5.1
         C: MAIL FROM:<b@sender.test>
         S: 503 5.5.1
         C: RSET
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 503 5.5.1
         C: MAIL FROM:<bad address
         S: 501
         C: MAIL FROM:<a@sender.test> FOO=BAR
         S: 555 5.5.4",
    )
    .await;
}

#[tokio::test]
async fn relay_is_denied_for_every_address_form() {
    for rcpt in [
        "<bob@other.test>",
        "<bob%other.test@example.test>",
        "<\"bob@other.test\"@example.test>",
        "<@example.test:bob@other.test>",
        "<bob@other.test@example.test>",
        "<bob@example.test.>",
        "<bob@[192.0.2.1]>",
    ] {
        let (_, mut c) = fresh();
        c.expect("220").await;
        c.send("EHLO c\r\nMAIL FROM:<a@sender.test>\r\n").await;
        c.expect("250").await;
        c.expect("250").await;
        c.send(&format!("RCPT TO:{rcpt}\r\n")).await;
        let r = c.reply().await;
        assert!(
            r.starts_with("550 5.7.1") || r.starts_with("501"),
            "{rcpt}: {r}"
        );
    }
}

#[tokio::test]
async fn relay_ranges_may_relay() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.relay_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@example.test>
         S: 250
         C: RCPT TO:<bob@other.test>
         S: 250 2.1.5",
    )
    .await;
}

#[tokio::test]
async fn postmaster_without_domain_is_accepted() {
    let (store, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<>
         S: 250
         C: RCPT TO:<Postmaster>
         S: 250
         C: DATA
         S: 354
         C: x
         C: .
         S: 250",
    )
    .await;
    assert_eq!(store.last().0.rcpt_to, vec!["postmaster@example.test"]);
    assert_eq!(store.last().0.mail_from, "");
}

#[tokio::test]
async fn recipient_limit() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.max_recipients = 2;
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: RCPT TO:<b@example.test>
         S: 250
         C: RCPT TO:<c@example.test>
         S: 452 4.5.3",
    )
    .await;
}

#[tokio::test]
async fn size_limits() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.max_message_size = 100;
    let mut c = start(
        conn,
        context(store.clone()),
        "192.0.2.10",
        Shutdown::never(),
    );
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test> SIZE=101
         S: 552 5.3.4
         C: MAIL FROM:<a@sender.test> SIZE=50
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354",
    )
    .await;
    c.send(&format!("{}\r\n.\r\n", "x".repeat(150))).await;
    c.expect("552 5.3.4").await;
    assert_eq!(store.count(), 0);
    // The session is still usable.
    transcript(&mut c, "C: NOOP\nS: 250").await;
}

#[tokio::test]
async fn line_length_limits() {
    let (store, mut c) = fresh();
    c.expect("220").await;
    c.send(&format!("NOOP {}\r\n", "x".repeat(1200))).await;
    c.expect("500 5.5.2").await;
    transcript(
        &mut c,
        "C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354",
    )
    .await;
    c.send(&format!("{}\r\n.\r\n", "y".repeat(1100))).await;
    c.expect("550 5.6.0").await;
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn smuggled_commands_after_bare_lf_dot_are_not_executed() {
    for smuggle in [
        "a\n.\nMAIL FROM:<x@sender.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\nsmuggled\r\n",
        "a\r\n.\nMAIL FROM:<x@sender.test>\r\n",
        "a\n.\r\nMAIL FROM:<x@sender.test>\r\n",
        "a\r.\rMAIL FROM:<x@sender.test>\r\n",
    ] {
        let (store, mut c) = fresh();
        transcript(
            &mut c,
            "S: 220
             C: EHLO c
             S: 250
             C: MAIL FROM:<a@sender.test>
             S: 250
             C: RCPT TO:<a@example.test>
             S: 250
             C: DATA
             S: 354",
        )
        .await;
        c.send(smuggle).await;
        c.send(".\r\nNOOP\r\n").await;
        // Exactly one reply for the message (a refusal), then the NOOP's: nothing in the
        // data was taken for a command.
        c.expect("550 5.6.0").await;
        c.expect("250 2.0.0 Ok").await;
        assert_eq!(store.count(), 0, "{smuggle:?}");
    }
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.max_errors = 3;
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: BAD1
         S: 500
         C: BAD2
         S: 500
         C: BAD3
         S: 500
         S: 421 4.7.0
         S: <closed>",
    )
    .await;
}

#[tokio::test]
async fn command_timeout_closes_with_421() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.command_timeout = Duration::from_millis(100);
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    transcript(&mut c, "S: 220\nS: 421 4.4.2\nS: <closed>").await;
}

#[tokio::test]
async fn data_timeout_closes_with_421_and_stores_nothing() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.data_block_timeout = Duration::from_millis(100);
    let mut c = start(
        conn,
        context(store.clone()),
        "192.0.2.10",
        Shutdown::never(),
    );
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354
         C: partial line
         S: 421 4.4.2
         S: <closed>",
    )
    .await;
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn bdat_chunks() {
    let (store, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250",
    )
    .await;
    c.send("BDAT 12\r\nSubject: x\r\nBDAT 6 LAST\r\nbody\r\n")
        .await;
    c.expect("250 2.0.0 12 octets").await;
    c.expect("250 2.0.0 Ok: queued as T1").await;
    let (_, msg) = store.last();
    assert!(msg.ends_with(b"Subject: x\r\nbody\r\n"));

    // BDAT out of sequence: the chunk is consumed, then refused.
    c.send("BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n").await;
    c.expect("503 5.5.1").await;
    c.expect("250").await;

    // Bare LF in a chunk is refused too.
    transcript(
        &mut c,
        "C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250",
    )
    .await;
    c.send("BDAT 4 LAST\r\na\nb\n").await;
    c.expect("550 5.6.0").await;
    assert_eq!(store.count(), 1);
}

#[tokio::test]
async fn store_failure_is_a_temporary_error() {
    let store = Arc::new(MemoryStore::failing());
    let mut c = start(mx(), context(store), "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354
         C: x
         C: .
         S: 451 4.3.0",
    )
    .await;
}

#[tokio::test]
async fn pipelined_group_gets_replies_in_order() {
    let (store, mut c) = fresh();
    c.expect("220").await;
    c.send(
        "EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.test>\r\n\
         RCPT TO:<y@other.test>\r\nRCPT TO:<z@example.test>\r\nDATA\r\n",
    )
    .await;
    for want in [
        "250 ",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.7.1",
        "250 2.1.5",
        "354",
    ] {
        c.expect(want).await;
    }
    c.send("hello\r\n.\r\nQUIT\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    assert_eq!(
        store.last().0.rcpt_to,
        vec!["x@example.test", "z@example.test"]
    );
}

#[tokio::test]
async fn smtputf8_addresses_need_the_parameter() {
    let (_, mut c) = fresh();
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<jörg@sender.test>
         S: 553 5.6.7
         C: MAIL FROM:<jörg@sender.test> SMTPUTF8 BODY=8BITMIME
         S: 250
         C: RCPT TO:<müller@example.test>
         S: 250",
    )
    .await;
}

#[tokio::test]
async fn proxy_header_from_untrusted_peer_is_refused() {
    let (_, mut c) = fresh();
    c.expect("220").await;
    c.send("PROXY TCP4 203.0.113.5 127.0.0.1 5000 25\r\nEHLO c\r\n")
        .await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn submission_requires_tls_then_auth() {
    let store = Arc::new(MemoryStore::default());
    let conn = moat_smtp::Connector::new(
        "submission",
        "127.0.0.1:587".parse().unwrap(),
        moat_smtp::Role::Submission,
    );
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
         S: 538 5.7.11
         C: MAIL FROM:<a@example.test>
         S: 530 5.7.0
         C: STARTTLS
         S: 502",
    )
    .await;
}

#[tokio::test]
async fn drain_waits_for_the_transaction_then_421() {
    let store = Arc::new(MemoryStore::default());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let mut c = start(mx(), context(store.clone()), "192.0.2.10", shutdown);
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250",
    )
    .await;
    trigger.drain();
    tokio::time::sleep(Duration::from_millis(50)).await;
    transcript(
        &mut c,
        "C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354
         C: x
         C: .
         S: 250 2.0.0
         S: 421 4.3.2
         S: <closed>",
    )
    .await;
    assert_eq!(store.count(), 1);

    // An idle session is told at once.
    let (trigger, shutdown) = ShutdownTrigger::new();
    let mut c = start(mx(), context(store), "192.0.2.10", shutdown);
    c.expect("220").await;
    trigger.drain();
    c.expect("421 4.3.2").await;
}

#[tokio::test]
async fn abort_ends_a_transaction_with_421() {
    let store = Arc::new(MemoryStore::default());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let mut c = start(mx(), context(store.clone()), "192.0.2.10", shutdown);
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<a@example.test>
         S: 250
         C: DATA
         S: 354
         C: some data",
    )
    .await;
    trigger.drain();
    trigger.abort();
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    assert_eq!(store.count(), 0);
}

/// A test stage with fixed rules, standing in for the hygiene stages of later crates.
struct RulesForTest;

impl moat_core::Stage for RulesForTest {
    fn name(&self) -> &'static str {
        "rules-for-test"
    }
    fn helo<'a>(&'a self, s: &'a moat_core::SessionInfo) -> moat_core::StageFuture<'a> {
        Box::pin(async move {
            if s.helo.as_deref() == Some("bad.helo") {
                moat_core::Verdict::Reject(moat_core::Reply::new(
                    550,
                    moat_core::Enhanced::new(5, 7, 1),
                    "HELO refused",
                ))
            } else {
                moat_core::Verdict::Continue
            }
        })
    }
    fn mail<'a>(
        &'a self,
        _: &'a moat_core::SessionInfo,
        env: &'a moat_core::Envelope,
    ) -> moat_core::StageFuture<'a> {
        Box::pin(async move {
            if env.mail_from.starts_with("spammer@") {
                moat_core::Verdict::Reject(moat_core::Reply::new(
                    550,
                    moat_core::Enhanced::new(5, 7, 1),
                    "Sender refused",
                ))
            } else {
                moat_core::Verdict::Continue
            }
        })
    }
    fn rcpt<'a>(
        &'a self,
        _: &'a moat_core::SessionInfo,
        _: &'a moat_core::Envelope,
        rcpt: &'a str,
    ) -> moat_core::StageFuture<'a> {
        Box::pin(async move {
            if rcpt.starts_with("blocked@") {
                moat_core::Verdict::Reject(moat_core::Reply::new(
                    550,
                    moat_core::Enhanced::new(5, 1, 1),
                    "No such user",
                ))
            } else {
                moat_core::Verdict::Continue
            }
        })
    }
    fn data<'a>(
        &'a self,
        _: &'a moat_core::SessionInfo,
        _: &'a moat_core::Envelope,
        msg: &'a [u8],
    ) -> moat_core::StageFuture<'a> {
        Box::pin(async move {
            let text = String::from_utf8_lossy(msg);
            if text.contains("DISCARD") {
                moat_core::Verdict::Discard("test says so".into())
            } else if text.contains("STRIPME") {
                moat_core::Verdict::Replace(
                    text.replace("STRIPME", "[removed]").into_bytes(),
                    "test strip".into(),
                )
            } else if text.contains("QUARANTINE") {
                moat_core::Verdict::Quarantine("looks odd".into())
            } else if text.contains("TEMPFAIL") {
                moat_core::Verdict::TempFail(moat_core::Reply::new(
                    451,
                    moat_core::Enhanced::new(4, 7, 1),
                    "Try later",
                ))
            } else if text.contains("REJECT") {
                moat_core::Verdict::Reject(moat_core::Reply::new(
                    550,
                    moat_core::Enhanced::new(5, 7, 1),
                    "Content refused",
                ))
            } else {
                moat_core::Verdict::Tag(vec![("X-Test-Tag".into(), "yes".into())])
            }
        })
    }
}

#[tokio::test]
async fn stage_verdicts_shape_the_replies() {
    let store = Arc::new(MemoryStore::default());
    let ctx = Arc::new(moat_smtp::ServerContext {
        hostname: "mx.example.test".into(),
        accepted_domains: vec!["example.test".into()],
        store: store.clone(),
        stages: vec![Arc::new(RulesForTest)],
    });
    let mut c = start(mx(), ctx, "192.0.2.10", Shutdown::never());
    transcript(
        &mut c,
        "S: 220
         C: EHLO bad.helo
         S: 550 5.7.1 HELO refused
         C: MAIL FROM:<a@sender.test>
         S: 503 5.5.1
         C: EHLO good.helo
         S: 250
         C: MAIL FROM:<spammer@sender.test>
         S: 550 5.7.1 Sender refused
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<blocked@example.test>
         S: 550 5.1.1 No such user
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: REJECT me
         C: .
         S: 550 5.7.1 Content refused
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: TEMPFAIL me
         C: .
         S: 451 4.7.1 Try later
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: fine
         C: .
         S: 250 2.0.0
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: QUARANTINE me
         C: .
         S: 250 2.0.0 Ok: queued as Q1
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: DISCARD me
         C: .
         S: 250 2.0.0 Ok: queued
         C: MAIL FROM:<a@sender.test>
         S: 250
         C: RCPT TO:<bob@example.test>
         S: 250
         C: DATA
         S: 354
         C: please STRIPME
         C: .
         S: 250 2.0.0 Ok: queued as T2",
    )
    .await;
    // The discarded message is nowhere; the rewritten one is stored as rewritten.
    assert_eq!(store.count(), 2);
    let rewritten = String::from_utf8(store.last().1).unwrap();
    assert!(
        rewritten.contains("please [removed]") && !rewritten.contains("STRIPME"),
        "{rewritten}"
    );
    let held = store.quarantined.lock().unwrap().clone();
    assert_eq!(held.len(), 1);
    assert!(String::from_utf8_lossy(&held[0]).starts_with("X-Moat-Quarantine: looks odd\r\n"));
    let text = String::from_utf8(store.messages.lock().unwrap()[0].1.clone()).unwrap();
    assert!(text.starts_with("X-Test-Tag: yes\r\nReceived: "), "{text}");
}

/// A connect stage that takes its time (a DNS list lookup), then lets the client in.
struct SlowConnect(Duration);

impl moat_core::Stage for SlowConnect {
    fn name(&self) -> &'static str {
        "slow-connect"
    }
    fn connect<'a>(&'a self, _s: &'a moat_core::SessionInfo) -> moat_core::StageFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            moat_core::Verdict::Continue
        })
    }
}

#[tokio::test]
async fn pregreet_talker_is_refused() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.pregreet_wait = Duration::from_millis(300);
    let mut c = start(
        conn,
        context(store.clone()),
        "192.0.2.10",
        Shutdown::never(),
    );
    // A bot that does not wait for the banner.
    transcript(
        &mut c,
        "C: EHLO impatient.example
         S: 554 5.5.1 Protocol error: client spoke before the greeting
         S: <closed>",
    )
    .await;
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn pregreet_wait_overlaps_the_connect_stages() {
    let store = Arc::new(MemoryStore::default());
    let wait = Duration::from_millis(400);
    let ctx = Arc::new(moat_smtp::ServerContext {
        hostname: "mx.example.test".into(),
        accepted_domains: vec!["example.test".into()],
        store,
        stages: vec![Arc::new(SlowConnect(wait))],
    });
    let mut conn = mx();
    conn.limits.pregreet_wait = wait;
    let started = std::time::Instant::now();
    let mut c = start(conn, ctx, "192.0.2.10", Shutdown::never());
    c.expect("220 ").await;
    let took = started.elapsed();
    assert!(took >= wait, "the greeting waits: {took:?}");
    // Run one after the other they would take 800 ms; at once, about 400.
    assert!(
        took < wait * 7 / 4,
        "stages run during the wait, not after it: {took:?}"
    );
    transcript(&mut c, "C: EHLO patient.example\nS: 250\nC: QUIT\nS: 221").await;
}

#[tokio::test]
async fn tarpit_delays_replies_after_errors() {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.tarpit_after_errors = 2;
    conn.limits.tarpit_delay = Duration::from_millis(300);
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    c.expect("220").await;
    let t = std::time::Instant::now();
    c.send("BAD\r\n").await;
    c.expect("500").await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "one error: not yet"
    );
    // The second error reply and every reply after it wait.
    for (line, reply) in [("BAD", "500"), ("NOOP", "250")] {
        let t = std::time::Instant::now();
        c.send(&format!("{line}\r\n")).await;
        c.expect(reply).await;
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{line} tarpitted"
        );
    }
}
