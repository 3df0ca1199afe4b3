//! The attachment stage over whole messages: names (RFC 2231, RFC 2047, double extensions,
//! bidi tricks), declared types, true types, zip contents and limits, and the three actions.

mod common;

use base64::Engine as _;
use common::{b64, zip_stored};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use moat_av::{
    AttachmentAction, AttachmentPolicy, AttachmentRule, AttachmentStage, AvMetrics, ScanResult,
};
use moat_core::{Envelope, SessionInfo, Stage, Verdict};

/// A multipart/mixed message: a text part, then each `(content-type line params,
/// disposition params, bytes)` as a base64 attachment.
fn mixed(attachments: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut m = String::from(
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         preamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Hello, files attached.\r\n",
    );
    for (ctype, disp, data) in attachments {
        m.push_str(&format!(
            "--b1\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; {disp}\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}",
            b64(data)
        ));
    }
    m.push_str("--b1--\r\n");
    m.into_bytes()
}

fn elf() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00".to_vec();
    v.resize(512, 0);
    v
}

fn mz() -> Vec<u8> {
    let mut v = b"MZ\x90\x00\x03\x00\x00\x00".to_vec();
    v.resize(512, 0);
    v
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n".to_vec()
}

fn stage(policy: AttachmentPolicy) -> (AttachmentStage, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = AvMetrics::new(&registry).unwrap();
    (AttachmentStage::new(policy, metrics).unwrap(), registry)
}

fn session() -> SessionInfo {
    SessionInfo {
        connector: "inbound".into(),
        client: "192.0.2.7:5000".parse().unwrap(),
        local: "127.0.0.1:25".parse().unwrap(),
        helo: None,
        esmtp: true,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

fn rules(stage: &AttachmentStage, msg: &[u8]) -> Vec<AttachmentRule> {
    let mut r: Vec<_> = stage.check(msg).findings.iter().map(|f| f.rule).collect();
    r.dedup();
    r
}

#[test]
fn rules_table() {
    use AttachmentRule::*;
    // Expansion limited to 4 MiB so the bomb below stays cheap to build.
    let (st, _) = stage(AttachmentPolicy {
        archive: moat_av::ArchiveLimits {
            max_expanded: 4 << 20,
            ..moat_av::ArchiveLimits::default()
        },
        ..AttachmentPolicy::default()
    });
    let enc2047 = format!(
        "filename=\"=?UTF-8?B?{}?=\"",
        base64::engine::general_purpose::STANDARD.encode("Rechnung.pdf.scr")
    );
    let bidi = format!(
        "filename=\"=?UTF-8?B?{}?=\"",
        base64::engine::general_purpose::STANDARD.encode("invoice\u{202e}fdp.exe")
    );
    // A deflate bomb: 8 MiB of zeros in a zip entry that declares 100 bytes; the inflater
    // stops at the limit instead of trusting the header.
    let bomb = {
        let zeros = vec![0u8; 8 << 20];
        let packed = miniz_oxide::deflate::compress_to_vec(&zeros, 6);
        raw_zip("zeros.bin", &packed, 8, 0, 100)
    };
    let cases: Vec<(&str, Vec<u8>, Vec<AttachmentRule>)> = vec![
        (
            "ELF named invoice.pdf",
            mixed(&[("application/pdf", "filename=\"invoice.pdf\"", &elf())]),
            vec![TrueType],
        ),
        (
            "MZ named invoice.pdf",
            mixed(&[("application/pdf", "filename=\"invoice.pdf\"", &mz())]),
            vec![TrueType],
        ),
        (
            "double extension",
            mixed(&[("application/pdf", "filename=\"invoice.pdf.exe\"", &pdf())]),
            vec![DoubleExtension],
        ),
        (
            "double extension with padding and trailing dot",
            mixed(&[(
                "application/octet-stream",
                "filename=\"invoice.pdf          .js.\"",
                b"x",
            )]),
            vec![DoubleExtension],
        ),
        (
            "RFC 2231 name",
            mixed(&[(
                "application/octet-stream",
                "filename*=UTF-8''invoice%2Epdf%2Ebat",
                b"x",
            )]),
            vec![DoubleExtension],
        ),
        (
            "RFC 2231 continuation",
            mixed(&[(
                "application/octet-stream",
                "filename*0*=UTF-8''set; filename*1*=up%2Eexe",
                b"x",
            )]),
            vec![Extension],
        ),
        (
            "RFC 2047 name",
            mixed(&[("application/octet-stream", &enc2047, b"x")]),
            vec![DoubleExtension],
        ),
        (
            "bidi trick",
            mixed(&[("application/octet-stream", &bidi, b"x")]),
            vec![DeceptiveName, Extension],
        ),
        (
            "declared type",
            mixed(&[("application/x-msdownload", "filename=\"update.bin\"", b"x")]),
            vec![DeclaredType],
        ),
        (
            "exe inside zip",
            mixed(&[(
                "application/zip",
                "filename=\"docs.zip\"",
                &zip_stored("setup.exe", b"hello"),
            )]),
            vec![Extension],
        ),
        (
            "ELF named readme.txt inside zip inside zip",
            mixed(&[(
                "application/zip",
                "filename=\"docs.zip\"",
                &zip_stored("inner.zip", &zip_stored("readme.txt", &elf())),
            )]),
            vec![TrueType],
        ),
        (
            "zip bomb",
            mixed(&[("application/zip", "filename=\"big.zip\"", &bomb)]),
            vec![ArchiveLimit],
        ),
        (
            "encrypted zip",
            mixed(&[(
                "application/zip",
                "filename=\"secret.zip\"",
                &raw_zip("secret.docx", b"ciphertext", 0, 1, 10),
            )]),
            vec![EncryptedArchive],
        ),
        (
            "clean",
            mixed(&[
                ("application/pdf", "filename=\"report.pdf\"", &pdf()),
                (
                    "application/zip",
                    "filename=\"notes.zip\"",
                    &zip_stored("notes.txt", b"plain notes"),
                ),
                ("text/plain", "filename=\"MZ.txt\"", b"MZ is short"),
            ]),
            vec![],
        ),
    ];
    for (name, msg, want) in &cases {
        assert_eq!(&rules(&st, msg), want, "{name}");
        let v = st.verdict(&st.check(msg));
        if want.is_empty() {
            assert_eq!(v, Verdict::Continue, "{name}");
        } else {
            let Verdict::Reject(r) = v else {
                panic!("{name}: {v:?}")
            };
            assert_eq!(
                (r.code(), r.enhanced().unwrap().to_string()),
                (554, "5.7.1".into())
            );
            assert!(r.text().contains(want[0].as_str()), "{name}: {}", r.text());
        }
    }
}

/// A one-entry zip with a chosen method, flags and declared size.
fn raw_zip(name: &str, data: &[u8], method: u16, flags: u16, declared: u32) -> Vec<u8> {
    let mut z = Vec::new();
    let head = |sig: u32, central: bool| {
        let mut h = sig.to_le_bytes().to_vec();
        if central {
            h.extend_from_slice(&20u16.to_le_bytes());
        }
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&method.to_le_bytes());
        h.extend_from_slice(&[0; 8]); // time, date, crc (not checked by inspection)
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&declared.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h
    };
    z.extend(head(0x0403_4b50, false));
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd_off = z.len() as u32;
    let mut cd = head(0x0201_4b50, true);
    cd.extend_from_slice(&[0; 14]);
    cd.extend_from_slice(name.as_bytes());
    z.extend_from_slice(&cd);
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    z.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    z.extend_from_slice(&cd_off.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

#[tokio::test]
async fn strip_keeps_valid_mime_and_the_other_parts() {
    let policy = AttachmentPolicy {
        on_extension: Some(AttachmentAction::Strip),
        on_true_type: Some(AttachmentAction::Strip),
        ..AttachmentPolicy::default()
    };
    let (st, registry) = stage(policy);
    let msg = mixed(&[
        ("application/pdf", "filename=\"report.pdf\"", &pdf()),
        ("application/octet-stream", "filename=\"setup.exe\"", b"x"),
        ("application/pdf", "filename=\"invoice.pdf\"", &mz()),
        (
            "image/png",
            "filename=\"logo.png\"",
            b"\x89PNG\r\n\x1a\nrest",
        ),
    ]);
    let report = st.check(&msg);
    assert_eq!(report.action, Some(AttachmentAction::Strip));
    let out = report.stripped.as_deref().expect("stripped message");
    let parsed = MessageParser::default()
        .parse(out)
        .expect("stripped message parses");
    let leaves: Vec<_> = parsed
        .parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
        .collect();
    assert_eq!(leaves.len(), 5, "every part still there, two as notices");
    assert_eq!(leaves[0].text_contents(), Some("Hello, files attached."));
    assert_eq!(leaves[1].attachment_name(), Some("report.pdf"));
    assert_eq!(leaves[1].contents(), pdf().as_slice(), "kept part intact");
    for (i, name) in [(2, "setup.exe"), (3, "invoice.pdf")] {
        let text = leaves[i].text_contents().expect("notice is text");
        assert!(
            text.contains("was removed") && text.contains(name),
            "{text}"
        );
        assert_eq!(leaves[i].attachment_name(), None);
    }
    assert_eq!(leaves[4].attachment_name(), Some("logo.png"));
    assert!(out.ends_with(b"--b1--\r\n"));
    // The stripped message passes the stage.
    assert_eq!(st.check(out).action, None);
    // Through the Stage interface the stripped message replaces the one received.
    let v = st.data(&session(), &Envelope::default(), &msg).await;
    assert!(
        matches!(&v, Verdict::Replace(m, r) if r.starts_with("attachment strip:") && m.as_slice() == out),
        "{v:?}"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"moat_av_attachment_actions_total{action="strip",rule="extension"} 1"#)
    );
    assert!(
        text.contains(r#"moat_av_attachment_actions_total{action="strip",rule="true-type"} 1"#)
    );

    // A single-part message that is itself the file cannot be stripped: rejected.
    let single = format!(
        "From: a@example.org\r\nSubject: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"run.exe\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}",
        b64(b"x")
    );
    assert_eq!(
        st.check(single.as_bytes()).action,
        Some(AttachmentAction::Reject)
    );
}

#[tokio::test]
async fn silent_delete_and_strongest_action() {
    let (st, _) = stage(AttachmentPolicy {
        on_extension: Some(AttachmentAction::SilentDelete),
        on_true_type: Some(AttachmentAction::Strip),
        ..AttachmentPolicy::default()
    });
    let msg = mixed(&[
        ("application/octet-stream", "filename=\"a.exe\"", b"x"),
        ("application/pdf", "filename=\"b.pdf\"", &elf()),
    ]);
    let v = st.data(&session(), &Envelope::default(), &msg).await;
    assert_eq!(
        v,
        Verdict::Discard("attachment silent-delete: extension".into())
    );
    // Rules switched off do nothing.
    let (off, _) = stage(AttachmentPolicy {
        on_extension: None,
        on_true_type: None,
        ..AttachmentPolicy::default()
    });
    assert_eq!(off.check(&msg).action, None);
}

#[test]
fn hostile_input_never_panics() {
    let (st, _) = stage(AttachmentPolicy::default());
    let msg = mixed(&[
        (
            "application/zip",
            "filename=\"d.zip\"",
            &zip_stored("in.zip", &zip_stored("x.exe", &mz())),
        ),
        ("application/pdf", "filename*=UTF-8''%FF%FE.exe", &elf()),
    ]);
    for cut in (0..msg.len()).step_by(7) {
        let _ = st.check(&msg[..cut]);
    }
    let mut x = 0x2545_f491_u32;
    for _ in 0..200 {
        let mut m = msg.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % m.len();
            m[i] = (x >> 24) as u8;
        }
        let _ = st.check(&m);
    }
    assert!(!st.check(&msg).findings.is_empty());
    // ScanResult is shared vocabulary; make sure the crate's re-exports line up.
    assert_eq!(ScanResult::Clean.as_str(), "clean");
}
