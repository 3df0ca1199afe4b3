//! Every target the MIME walk fills, from one hand-written multipart message.

use moat_filter::{EnvelopeFacts, Limits, extract};
use moat_rules::{Field, Target};

const MESSAGE: &str = "From: =?UTF-8?B?UHLDpHNpZGVudA==?= <boss@corp.example>\r
To: victim@example.org\r
Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_M=FCnchen?=\r
X-Mailer: Bulk Sender 2.0\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary=\"outer\"\r
\r
preamble\r
--outer\r
Content-Type: multipart/alternative; boundary=\"alt\"\r
\r
--alt\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
Caf=C3=A9 offer: visit www.plain.example today or hxxp://defanged[.]example/x\r
--alt\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: base64\r
\r
PHA+SGVsbG8gPGEgaHJlZj0iaHR0cHM6Ly9jbGljay5leGFtcGxlL3A/aWQ9MSI+Y2xpY2s8L2E+PC9wPg==\r
--alt--\r
--outer\r
Content-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r
Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r
Content-Transfer-Encoding: base64\r
\r
TVqQAAMAAAAEAAAA\r
--outer\r
Content-Type: message/rfc822\r
\r
Subject: inner\r
Content-Type: text/plain\r
\r
inner text with http://inner.example/\r
--outer--\r
";

fn values(ex: &moat_filter::Extracted<'_>, target: &Target) -> Vec<String> {
    let mut out = Vec::new();
    ex.targets.for_each_value(target, |v| {
        out.push(String::from_utf8_lossy(v).into_owned())
    });
    out
}

#[test]
fn every_target() {
    // Text parts (at any depth) are searched for URLs before HTML parts.
    let env = EnvelopeFacts {
        mail_from: "bounce@bulk.example".into(),
        rcpt_to: vec!["victim@example.org".into(), "other@example.org".into()],
        helo: Some("bulk-sender.example".into()),
        client_ip: Some("192.0.2.7".into()),
    };
    let ex = extract(MESSAGE.as_bytes(), &env, &Limits::default());
    assert_eq!(ex.limit, None);
    let f = |field| Target::Field(field);
    // (target, check) where check is either an exact value list or a substring of value 0.
    enum Want<'a> {
        Exact(&'a [&'a str]),
        Contains(&'a [&'a str]),
    }
    let cases: Vec<(Target, Want<'_>)> = vec![
        (f(Field::Subject), Want::Exact(&["Grüße aus München"])),
        (f(Field::FromName), Want::Exact(&["Präsident"])),
        (f(Field::FromAddress), Want::Exact(&["boss@corp.example"])),
        (
            Target::Header("x-mailer".into()),
            Want::Exact(&["Bulk Sender 2.0"]),
        ),
        (
            Target::Header("subject".into()),
            Want::Exact(&["Grüße aus München"]),
        ),
        (
            Target::AllHeaders,
            Want::Contains(&["From: Präsident <boss@corp.example>"]),
        ),
        (f(Field::Text), Want::Contains(&["Café offer"])),
        (
            f(Field::HtmlRaw),
            Want::Contains(&["<a href=\"https://click.example/p?id=1\">"]),
        ),
        (f(Field::HtmlText), Want::Contains(&["Hello click"])),
        (
            f(Field::Body),
            Want::Contains(&["Café offer", "Hello click", "inner text"]),
        ),
        (
            f(Field::RawBody),
            Want::Contains(&["preamble", "PHA+SGVsbG8"]),
        ),
        (
            f(Field::Full),
            Want::Contains(&["X-Mailer: Bulk Sender 2.0", "preamble"]),
        ),
        (
            f(Field::Url),
            Want::Exact(&[
                "http://www.plain.example",
                "http://defanged.example/x",
                "http://inner.example/",
                "https://click.example/p?id=1",
            ]),
        ),
        (
            f(Field::UrlHost),
            Want::Exact(&[
                "www.plain.example",
                "defanged.example",
                "inner.example",
                "click.example",
            ]),
        ),
        (f(Field::AttachmentName), Want::Exact(&["invoice.pdf.exe"])),
        (
            f(Field::AttachmentType),
            Want::Exact(&[
                "text/plain",
                "text/html",
                "application/octet-stream",
                "message/rfc822",
                "text/plain",
            ]),
        ),
        (f(Field::MailFrom), Want::Exact(&["bounce@bulk.example"])),
        (
            f(Field::RcptTo),
            Want::Exact(&["victim@example.org", "other@example.org"]),
        ),
        (f(Field::Helo), Want::Exact(&["bulk-sender.example"])),
        (f(Field::ClientIp), Want::Exact(&["192.0.2.7"])),
    ];
    for (target, want) in cases {
        let got = values(&ex, &target);
        match want {
            Want::Exact(w) => assert_eq!(got, w, "{target}"),
            Want::Contains(w) => {
                let joined = got.join("\n");
                for s in w {
                    assert!(joined.contains(s), "{target}: {s:?} not in {joined:?}");
                }
            }
        }
    }
    // The raw body is not decoded; the text target is.
    assert!(!values(&ex, &f(Field::RawBody))[0].contains("Café"));
    // root (0) → alternative (1) → text (2); rfc822 part (1) → inner message (2).
    assert_eq!(ex.depth, 2);
    assert_eq!(ex.parts, 7);
}

#[test]
fn garbage_gives_values_not_panics() {
    let inputs: &[&[u8]] = &[
        b"",
        b"\r\n\r\n",
        b"no headers at all",
        b"Subject: \xff\xfe\r\n\r\n\xff\xff",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n--x--",
        b"Content-Type: text/plain; charset=klingon\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64",
        b"From: <<<@@@>>>\r\nSubject: =?utf-8?B?====?=\r\n\r\nx",
    ];
    for raw in inputs {
        let ex = extract(raw, &EnvelopeFacts::default(), &Limits::default());
        assert_eq!(ex.limit, None);
        assert_eq!(ex.targets.field(Field::Full)[0].as_ref(), *raw);
    }
}

#[test]
fn headers_keep_their_written_form() {
    let raw =
        b"Message-ID: <abc.123@mx.example>\r\nReferences: <a@x.example>\r\n <b@y.example>\r\n\
From: \"Doe, Jane\" <jane@example.org>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
X-Folded: first\r\n\tsecond =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n";
    let ex = extract(raw, &EnvelopeFacts::default(), &Limits::default());
    let cases: &[(&str, &str)] = &[
        ("message-id", "<abc.123@mx.example>"),
        ("references", "<a@x.example> <b@y.example>"),
        ("from", "\"Doe, Jane\" <jane@example.org>"),
        ("date", "Tue, 24 Nov 2026 10:00:00 +0000"),
        ("x-folded", "first second café"),
    ];
    for (name, want) in cases {
        assert_eq!(
            values(&ex, &Target::Header((*name).into())),
            [*want],
            "{name}"
        );
    }
}

/// A message with one text part of `text` and one HTML part of `html` (both 8-bit).
fn two_parts(text: &str, html: &str) -> Vec<u8> {
    format!(
        "Subject: long\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {text}\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--b--\r\n"
    )
    .into_bytes()
}

#[test]
fn long_parts_are_scanned_up_to_the_scan_limits() {
    // 20,000 words of five bytes, then a marker far past the limits.
    let words = "word ".repeat(20_000);
    let text = format!("{words}MARKERTEXT http://late.example/");
    let html = format!("<p>{words}MARKERHTML</p>");
    let raw = two_parts(&text, &html);
    let limits = Limits {
        max_text_scan_bytes: 1_000,
        max_raw_scan_bytes: 5_000,
        ..Limits::default()
    };
    let ex = extract(&raw, &EnvelopeFacts::default(), &limits);
    assert!(
        ex.limit.is_none(),
        "a long part is cut, not an over-limit message"
    );
    // The text part, the rendered HTML (with its markup) and the raw body.
    assert_eq!(ex.truncated_parts, 3);
    for (field, max) in [
        (Field::Text, 1_000),
        (Field::HtmlText, 1_000),
        (Field::HtmlRaw, 5_000),
        (Field::RawBody, 5_000),
    ] {
        for v in values(&ex, &Target::Field(field)) {
            assert!(v.len() <= max, "{field:?}: {} bytes", v.len());
            // Cut at white space: no word is split.
            assert!(v.ends_with(' ') || v.ends_with("word"), "{field:?}: {v:?}");
            assert!(!v.contains("MARKER"), "{field:?}");
        }
    }
    // The body joins the cut parts.
    let body = values(&ex, &Target::Field(Field::Body)).concat();
    assert!(
        body.len() <= 2_002 && !body.contains("MARKER"),
        "{}",
        body.len()
    );
    // URLs still come from the whole part; the whole message is never cut.
    assert_eq!(
        values(&ex, &Target::Field(Field::Url)),
        ["http://late.example/"]
    );
    let full = values(&ex, &Target::Field(Field::Full)).concat();
    assert!(full.contains("MARKERTEXT") && full.contains("MARKERHTML"));

    // 0 is no limit; the defaults hold this message whole too.
    for limits in [
        Limits {
            max_text_scan_bytes: 0,
            max_raw_scan_bytes: 0,
            ..Limits::default()
        },
        Limits::default(),
    ] {
        let ex = extract(&raw, &EnvelopeFacts::default(), &limits);
        if limits.max_text_scan_bytes == 0 {
            assert_eq!(ex.truncated_parts, 0);
            let text = values(&ex, &Target::Field(Field::Text)).concat();
            assert!(text.contains("MARKERTEXT"));
        } else {
            // 100 KB parts: over the default 50,000 bytes of text, under 500,000 of raw.
            assert_eq!(ex.truncated_parts, 2);
            let raw_body = values(&ex, &Target::Field(Field::RawBody)).concat();
            assert!(raw_body.contains("MARKERHTML"));
        }
    }
}

#[test]
fn a_cut_without_white_space_keeps_characters_whole() {
    // Three-byte characters and no white space: the cut backs up to a character's start.
    let text = "€".repeat(2_000);
    let raw = two_parts(&text, "<p>x</p>");
    for max in [1_000, 1_001, 1_002, 1_003] {
        let limits = Limits {
            max_text_scan_bytes: max,
            ..Limits::default()
        };
        let ex = extract(&raw, &EnvelopeFacts::default(), &limits);
        let got = values(&ex, &Target::Field(Field::Text)).concat();
        assert_eq!(got.len(), max / 3 * 3, "max {max}");
        assert!(got.chars().all(|c| c == '€'));
        assert_eq!(ex.truncated_parts, 1);
    }
}

#[test]
fn header_blocks_hold_every_header_in_order() {
    let raw = b"Received: from a\r\n\tby b\r\nFrom: A <a@x.test>\r\n\
        Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: B <b@x.test>\r\n\r\nbody\r\n";
    let ex = extract(raw, &EnvelopeFacts::default(), &Limits::default());
    // Decoded and unfolded, one header per line, each line ended.
    assert_eq!(
        values(&ex, &Target::Field(Field::HeaderBlock)),
        ["Received: from a by b\nFrom: A <a@x.test>\nSubject: café\nFrom: B <b@x.test>\n"]
    );
    // As received, without the blank line.
    let raw_block = "Received: from a\r\n\tby b\r\nFrom: A <a@x.test>\r\n\
        Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: B <b@x.test>\r\n";
    assert_eq!(
        values(&ex, &Target::Field(Field::RawHeaderBlock)),
        [raw_block]
    );
    // Bare line feeds, and a message that is all header.
    for (raw, block) in [
        (&b"From: a\nTo: b\n\nbody\n"[..], "From: a\nTo: b\n"),
        (b"From: a\r\nTo: b\r\n", "From: a\r\nTo: b\r\n"),
    ] {
        let ex = extract(raw, &EnvelopeFacts::default(), &Limits::default());
        assert_eq!(values(&ex, &Target::Field(Field::RawHeaderBlock)), [block]);
        assert_eq!(
            values(&ex, &Target::Field(Field::HeaderBlock)),
            ["From: a\nTo: b\n"]
        );
    }
    // The raw block is cut like the raw body.
    let limits = Limits {
        max_raw_scan_bytes: 40,
        ..Limits::default()
    };
    let ex = extract(raw, &EnvelopeFacts::default(), &limits);
    let cut = values(&ex, &Target::Field(Field::RawHeaderBlock)).concat();
    assert!(cut.len() <= 40 && raw_block.starts_with(&cut), "{cut:?}");
    assert_eq!(ex.truncated_parts, 1);
}
