//! Property tests: random and SMTP-shaped byte streams never panic or hang the session, every
//! reply is well formed, and every message acknowledged with 250 is in the store (and nothing
//! else is).
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use moat_core::Shutdown;
use moat_smtp::{Session, SmtpMetrics};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn command() -> impl Strategy<Value = Vec<u8>> {
    let addr = prop_oneof![
        Just("bob@example.test".to_string()),
        Just("x@other.test".to_string()),
        Just("".to_string()),
        "[a-z%@.\"!:\\[\\]0-9]{0,20}",
    ];
    let data_line = prop_oneof![
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r.\r".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        "[ -~]{0,60}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        Just(b"EHLO client.test\r\n".to_vec()),
        Just(b"HELO client.test\r\n".to_vec()),
        addr.clone()
            .prop_map(|a| format!("MAIL FROM:<{a}>\r\n").into_bytes()),
        addr.prop_map(|a| format!("RCPT TO:<{a}>\r\n").into_bytes()),
        Just(b"DATA\r\n".to_vec()),
        proptest::collection::vec(data_line, 0..6).prop_map(|lines| {
            let mut out = Vec::new();
            for l in lines {
                out.extend_from_slice(&l);
                out.extend_from_slice(b"\r\n");
            }
            out
        }),
        Just(b".\r\n".to_vec()),
        (
            0usize..64,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(n, last, body)| {
                let mut out =
                    format!("BDAT {n}{}\r\n", if last { " LAST" } else { "" }).into_bytes();
                out.extend_from_slice(&body);
                out
            }),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"AUTH PLAIN AGEAYg==\r\n".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..200),
        Just(vec![b'x'; 1500]),
    ]
}

/// A valid transaction with random content and, sometimes, a random command spliced in.
fn transaction() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        proptest::collection::vec("[ -~]{0,80}", 0..10),
        proptest::option::of(command()),
        0usize..6,
    )
        .prop_map(|(lines, extra, at)| {
            let mut v = vec![
                b"EHLO c\r\n".to_vec(),
                b"MAIL FROM:<a@sender.test>\r\n".to_vec(),
                b"RCPT TO:<bob@example.test>\r\n".to_vec(),
                b"DATA\r\n".to_vec(),
            ];
            let mut body = Vec::new();
            for l in lines {
                body.extend_from_slice(l.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            v.push(body);
            v.push(b".\r\n".to_vec());
            if let Some(e) = extra {
                v.insert(at.min(v.len()), e);
            }
            v
        })
}

fn stream() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        proptest::collection::vec(transaction(), 1..4).prop_map(|t| t.concat()),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        proptest::collection::vec(command(), 0..40),
    ]
}

async fn drive(chunks: Vec<Vec<u8>>) -> Result<usize, TestCaseError> {
    let store = Arc::new(MemoryStore::default());
    let mut conn = mx();
    conn.limits.command_timeout = Duration::from_millis(300);
    conn.limits.data_block_timeout = Duration::from_millis(300);
    conn.limits.max_message_size = 2048;
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let metrics = SmtpMetrics::unregistered().connector("mx");
    let task = tokio::spawn(
        Session::new(
            server,
            Arc::new(conn),
            context(store.clone()),
            metrics,
            Shutdown::never(),
            info("192.0.2.1"),
        )
        .run(),
    );
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let writer = async {
        for c in &chunks {
            if wr.write_all(c).await.is_err() {
                break; // the server closed (QUIT, too many errors)
            }
        }
        let _ = wr.shutdown().await;
    };
    let mut out = Vec::new();
    let reader = rd.read_to_end(&mut out);
    let (_, read) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(writer, reader)
    })
    .await
    .map_err(|_| TestCaseError::fail("session hung"))?;
    prop_assert!(read.is_ok());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .map_err(|_| TestCaseError::fail("session task did not end"))?
        .map_err(|e| TestCaseError::fail(format!("session task panicked: {e}")))?;

    let text = String::from_utf8_lossy(&out);
    let mut queued = 0;
    for line in text.split_terminator("\r\n") {
        let b = line.as_bytes();
        prop_assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'),
            "malformed reply line {line:?}"
        );
        if line.starts_with("250 2.0.0 Ok: queued as ") {
            queued += 1;
        }
    }
    prop_assert!(text.is_empty() || text.ends_with("\r\n"));
    prop_assert_eq!(queued, store.count(), "every 250 matches a stored message");
    Ok(queued)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn session_survives_any_input(chunks in stream()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(drive(chunks))?;
    }
}

#[test]
fn valid_transactions_are_exercised() {
    // Guards the generator: the property above must see accepted messages, not only errors.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..50 {
        let chunks = transaction().new_tree(&mut runner).unwrap().current();
        accepted += rt.block_on(drive(chunks)).unwrap();
    }
    assert!(
        accepted >= 25,
        "only {accepted} of 50 transactions accepted"
    );
}
