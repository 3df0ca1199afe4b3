//! Delivery status notifications (RFC 3464 `multipart/report; report-type=delivery-status`).

use std::time::SystemTime;

use moat_queue::{Bounce, Dsn};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Most header bytes of the original returned in the DSN.
const MAX_RETURNED_HEADERS: usize = 64 * 1024;

fn date(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

/// One line, no control characters: safe in a header field.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The RFC 3463 status for a bounced recipient: the reply's enhanced code when it has one,
/// 4.4.7 when the message expired, else the reply's class with `.0.0`.
pub(crate) fn status_of(reply: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".into();
    }
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(esc) = words.next() {
        let parts: Vec<&str> = esc.split('.').collect();
        let valid = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if valid {
            return esc.to_string();
        }
    }
    match code.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

fn original_headers(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| message.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(message.len());
    &message[..end.min(MAX_RETURNED_HEADERS)]
}

/// Builds the DSN for `bounce`, addressed to the original envelope sender, from the null
/// sender (the queue enforces that), with the original's headers attached.
pub fn build(hostname: &str, bounce: &Bounce<'_>, original: &[u8]) -> Dsn {
    let host = clean(hostname);
    let now = SystemTime::now();
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let boundary = format!("=_moat_{}_{nanos:x}", bounce.id);
    let to = clean(bounce.mail_from);
    let mut m = String::with_capacity(2048);
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {}\r\n\
         Message-ID: <{}.{nanos:x}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {host}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n",
        date(now),
        bounce.id,
    ));
    for (rcpt, reply, expired) in &bounce.rcpts {
        let why = if *expired {
            "could not be delivered in time"
        } else {
            "was refused"
        };
        m.push_str(&format!("<{}>: {why}: {}\r\n", clean(rcpt), clean(reply)));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Moat-Queue-ID: {}\r\n\
         Arrival-Date: {}\r\n",
        bounce.id,
        date(bounce.received)
    ));
    for (rcpt, reply, expired) in &bounce.rcpts {
        let reply = clean(reply);
        let smtp_reply = reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit);
        m.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            clean(rcpt),
            status_of(&reply, *expired)
        ));
        if smtp_reply {
            m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
        } else {
            m.push_str(&format!("Diagnostic-Code: x-moat; {reply}\r\n"));
        }
        m.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    let headers = original_headers(original);
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Dsn {
        rcpt_to: bounce.mail_from.to_string(),
        message: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_core::QueueId;

    #[test]
    fn statuses() {
        let cases = [
            ("550 5.1.1 no such user", false, "5.1.1"),
            ("554 transaction failed", false, "5.0.0"),
            ("552 5.3.4 too big", false, "5.3.4"),
            ("451 4.3.0 later", true, "4.4.7"),
            ("550 9.9.9 odd", false, "5.0.0"),
            ("", false, "5.0.0"),
            ("stored message failed its checksum", false, "5.0.0"),
        ];
        for (reply, expired, want) in cases {
            assert_eq!(status_of(reply, expired), want, "{reply}");
        }
    }

    #[test]
    fn report_has_the_three_parts() {
        let b = Bounce {
            id: QueueId("0000000000000ABC".into()),
            mail_from: "alice@example.org",
            received: SystemTime::now(),
            rcpts: vec![
                (
                    "bob@example.net".into(),
                    "550 5.1.1 no such user".into(),
                    false,
                ),
                (
                    "eve@example.net".into(),
                    "delivery time expired; last error: 451 x".into(),
                    true,
                ),
            ],
        };
        let original = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";
        let d = build("edge.example", &b, original);
        assert_eq!(d.rcpt_to, "alice@example.org");
        let text = String::from_utf8(d.message).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Reporting-MTA: dns; edge.example\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; eve@example.net\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"));
        assert!(
            !text.contains("secret body"),
            "only the headers are returned"
        );
        let boundary = text
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 3);
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
