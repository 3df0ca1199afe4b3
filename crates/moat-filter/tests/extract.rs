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
