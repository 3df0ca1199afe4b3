//! Antivirus and attachment stages in the node, over SMTP, against a real clamd on loopback
//! (signature database with the EICAR test file only, written at test time).

mod common;

#[path = "../../moat-av/tests/common/mod.rs"]
#[allow(unused_imports)]
mod av;

use std::time::{Duration, Instant};

use common::*;
use mail_parser::MimeHeaders;

fn node_with_clamd(clamd: &av::Clamd, on_failure: &str, extra: &str) -> Node {
    Node::start_with(Options {
        top: format!(
            "[antivirus]\nenabled = true\non_failure = \"{on_failure}\"\n\
             [[antivirus.engine]]\nname = \"clamd\"\ntype = \"clamd\"\naddress = \"{}\"\n\
             scan_timeout = \"2s\"\n{extra}",
            clamd.tcp
        ),
        ..Options::default()
    })
}

/// Sends `message` and returns the reply to the end of data.
fn send(node: &Node, message: &[u8]) -> String {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    // Dot-stuff and end the data.
    let text = String::from_utf8_lossy(message).replace("\r\n.", "\r\n..");
    c.send(&text);
    if !text.ends_with("\r\n") {
        c.send("\r\n");
    }
    c.send(".\r\n");
    let r = c.reply();
    c.cmd("QUIT", "221");
    r
}

#[test]
fn eicar_in_every_wrapping_is_rejected_and_clean_mail_passes_unchanged() {
    let Some(clamd) = av::Clamd::start("10M") else {
        return;
    };
    let node = node_with_clamd(&clamd, "fail-closed", "");
    let eicar = av::eicar();
    let zip = av::zip_stored("eicar.com", &eicar);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "plain attachment",
            av::with_attachment("eicar.com", "application/octet-stream", &eicar),
        ),
        (
            "zip",
            av::with_attachment("files.zip", "application/zip", &zip),
        ),
        (
            "zip in zip",
            av::with_attachment(
                "outer.zip",
                "application/zip",
                &av::zip_stored("inner.zip", &zip),
            ),
        ),
        (
            "message/rfc822",
            av::forwarded(&av::with_attachment(
                "eicar.com",
                "application/octet-stream",
                &eicar,
            )),
        ),
    ];
    for (what, msg) in &cases {
        let r = send(&node, msg);
        assert!(
            r.starts_with("554 5.7.1") && r.contains("Moat.Test.EICAR"),
            "{what}: {r}\n{}",
            node.log_text()
        );
    }
    let clean = av::with_attachment(
        "report.txt",
        "text/plain",
        b"quarterly numbers, nothing else",
    );
    let r = send(&node, &clean);
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let delivered = std::fs::read(&node.wait_delivered(1)[0]).unwrap();
    assert!(
        delivered.ends_with(&clean) || delivered.ends_with(&[&clean[..], b"\r\n"].concat()),
        "a clean message passes byte for byte apart from the headers Moat adds"
    );
    let s = node.scrape();
    assert_eq!(
        sample(
            &s,
            "moat_smtp_transactions_total",
            &[("connector", "mx"), ("result", "rejected")]
        ),
        4.0
    );
}

#[test]
fn eicar_through_icap_is_rejected() {
    let Some(clamd) = av::Clamd::start("10M") else {
        return;
    };
    let Some(icap) = av::Icap::start(&clamd) else {
        return;
    };
    let node = Node::start_with(Options {
        top: format!(
            "[antivirus]\nenabled = true\n[[antivirus.engine]]\nname = \"icap\"\ntype = \"icap\"\n\
             address = \"{}\"\nservice = \"avscan\"\nscan_timeout = \"5s\"\n",
            icap.addr
        ),
        ..Options::default()
    });
    let eicar = av::eicar();
    let zip = av::zip_stored("eicar.com", &eicar);
    for (what, msg) in [
        (
            "plain attachment",
            av::with_attachment("eicar.com", "application/octet-stream", &eicar),
        ),
        (
            "zip in zip",
            av::with_attachment(
                "outer.zip",
                "application/zip",
                &av::zip_stored("inner.zip", &zip),
            ),
        ),
        (
            "message/rfc822",
            av::forwarded(&av::with_attachment(
                "eicar.com",
                "application/octet-stream",
                &eicar,
            )),
        ),
    ] {
        let r = send(&node, &msg);
        assert!(
            r.starts_with("554 5.7.1"),
            "{what}: {r}\n{}",
            node.log_text()
        );
    }
    let r = send(&node, &av::plain(b"nothing to see"));
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

#[test]
fn clamd_down_fail_closed_then_back() {
    let Some(mut clamd) = av::Clamd::start("10M") else {
        return;
    };
    let node = node_with_clamd(&clamd, "fail-closed", "");
    let clean = av::plain(b"hello");
    assert!(send(&node, &clean).starts_with("250"));
    clamd.stop();
    for _ in 0..5 {
        let r = send(&node, &clean);
        assert!(
            r.starts_with("451 4.7.0"),
            "nothing is accepted unscanned: {r}"
        );
    }
    clamd.restart();
    // Scanning resumes by itself (breaker probe or the next message).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(&node, &clean);
        if r.starts_with("250") {
            break;
        }
        assert!(Instant::now() < deadline, "scanning did not resume: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(node.wait_delivered(2).len(), 2);
}

#[test]
fn clamd_down_fail_open_accepts_and_tags() {
    let Some(mut clamd) = av::Clamd::start("10M") else {
        return;
    };
    let node = node_with_clamd(&clamd, "fail-open", "");
    clamd.stop();
    let r = send(&node, &av::plain(b"hello"));
    assert!(r.starts_with("250"), "{r}");
    let delivered = std::fs::read_to_string(&node.wait_delivered(1)[0]).unwrap();
    assert!(delivered.contains("X-Moat-Virus-Scan: "), "{delivered}");
}

#[test]
fn policy_per_connector_and_engine_state_in_readyz() {
    let Some(mut clamd) = av::Clamd::start("10M") else {
        return;
    };
    // [antivirus] says reject and fail-closed; the mx connector quarantines and fails open.
    // Submission keeps the fail-closed default, so engines down make the node not ready.
    let node = node_with_clamd(
        &clamd,
        "fail-closed",
        "[antivirus.connector.mx]\non_detection = \"quarantine\"\non_failure = \"fail-open\"\n",
    );
    assert_eq!(node.http_get("/readyz"), Some((200, "ready\n".into())));
    let infected = av::with_attachment("eicar.com", "application/octet-stream", &av::eicar());
    let r = send(&node, &infected);
    assert!(
        r.starts_with("250"),
        "mx quarantines instead of rejecting: {r}"
    );
    let s = node.scrape();
    assert_eq!(
        sample(
            &s,
            "moat_smtp_transactions_total",
            &[("connector", "mx"), ("result", "quarantined")]
        ),
        1.0
    );

    clamd.stop();
    // Three failures open the engine's breaker (the default).
    for _ in 0..3 {
        let r = send(&node, &av::plain(b"hello"));
        assert!(r.starts_with("250"), "mx fails open: {r}");
    }
    for path in node.wait_delivered(3) {
        let delivered = std::fs::read_to_string(path).unwrap();
        assert!(delivered.contains("X-Moat-Virus-Scan: "), "{delivered}");
    }
    // The breaker is open; the fail-closed connector makes that critical.
    assert!(
        eventually(Duration::from_secs(15), || node.http_get("/readyz")
            == Some((503, "not ready: antivirus\n".into()))),
        "readyz did not follow the engines: {:?}",
        node.http_get("/readyz")
    );

    clamd.restart();
    assert!(
        eventually(Duration::from_secs(30), || node.http_get("/readyz")
            == Some((200, "ready\n".into()))),
        "readyz did not recover with clamd"
    );
}

#[test]
fn unknown_connector_in_antivirus_policy_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    std::fs::write(
        &path,
        "[antivirus]\nenabled = true\n[[antivirus.engine]]\nname = \"c\"\ntype = \"clamd\"\n\
         address = \"127.0.0.1:3310\"\n[antivirus.connector.partners]\non_failure = \"fail-open\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("antivirus.connector.partners") && err.contains("no connector is named"),
        "{err}"
    );
}

#[test]
fn attachments_true_type_and_strip() {
    // No engine needed: the attachment rules alone.
    let node = Node::start_with(Options {
        top: "[attachments]\nenabled = true\naction = \"strip\"\n".into(),
        ..Options::default()
    });
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.extend_from_slice(&[0u8; 64]);
    let msg = av::with_attachment("invoice.pdf", "application/pdf", &elf);
    let r = send(&node, &msg);
    assert!(r.starts_with("250"), "{r}");
    let delivered = std::fs::read_to_string(&node.wait_delivered(1)[0]).unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered.as_bytes())
        .expect("the stripped message is valid MIME");
    assert!(
        parsed
            .attachments()
            .all(|a| a.attachment_name() != Some("invoice.pdf")),
        "{delivered}"
    );
    assert!(delivered.contains("was removed"), "{delivered}");

    let node = Node::start_with(Options {
        top: "[attachments]\nenabled = true\naction = \"reject\"\n".into(),
        ..Options::default()
    });
    let r = send(&node, &msg);
    assert!(
        r.starts_with("554 5.7.1"),
        "an executable named invoice.pdf is caught: {r}"
    );
}
