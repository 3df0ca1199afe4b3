//! MIME bombs get a definite verdict within the limits, quickly.

use std::time::{Duration, Instant};

use moat_core::{Enhanced, Verdict};
use moat_filter::{
    EnvelopeFacts, FilterConfig, LimitExceeded, Limits, extract, scan_message, verdict,
};
use moat_rules::{Action, CompileOptions};

fn rules() -> moat_rules::CompiledRules {
    moat_rules::compile_str(
        "[pack]\nname = \"t\"\nversion = \"1\"\n[thresholds]\nreject = 5.0\n\
         [[rule]]\nid = \"HELLO\"\ntarget = \"body\"\nwords = [\"hello\"]\nscore = 1.0\n",
        &CompileOptions::default(),
    )
    .unwrap()
}

fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut m = String::from("Subject: deep\r\n");
    for i in 0..depth {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("Content-Type: text/plain\r\n\r\nhello\r\n");
    for i in (0..depth).rev() {
        m.push_str(&format!("--b{i}--\r\n"));
    }
    m.into_bytes()
}

fn nested_messages(depth: usize) -> Vec<u8> {
    let mut m = String::new();
    for i in 0..depth {
        m.push_str(&format!(
            "Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n"
        ));
    }
    m.push_str("Subject: inner\r\n\r\nhello\r\n");
    m.into_bytes()
}

fn many_parts(n: usize) -> Vec<u8> {
    let mut m =
        String::from("Subject: parts\r\nContent-Type: multipart/mixed; boundary=\"p\"\r\n\r\n");
    for i in 0..n {
        m.push_str(&format!(
            "--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    m.push_str("--p--\r\n");
    m.into_bytes()
}

/// Parts without their own Content-Type header (defaulting to text/plain) defeat the
/// header pre-count, so the walk itself must stop.
fn many_bare_parts(n: usize) -> Vec<u8> {
    let mut m =
        String::from("Subject: parts\r\nContent-Type: multipart/mixed; boundary=\"p\"\r\n\r\n");
    for i in 0..n {
        m.push_str(&format!("--p\r\n\r\npart {i}\r\n"));
    }
    m.push_str("--p--\r\n");
    m.into_bytes()
}

/// Base64 inside base64 inside base64: each layer is an attached message whose body is
/// the next layer, encoded.
fn decoding_bomb(layers: usize, payload: usize) -> Vec<u8> {
    use base64_like::encode;
    let mut inner = format!("Subject: core\r\n\r\n{}\r\n", "A".repeat(payload)).into_bytes();
    for i in 0..layers {
        let mut m = format!(
            "Subject: layer {i}\r\nContent-Type: multipart/mixed; boundary=\"z\"\r\n\r\n--z\r\n\
             Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        .into_bytes();
        m.extend_from_slice(encode(&inner).as_bytes());
        m.extend_from_slice(b"\r\n--z--\r\n");
        inner = m;
    }
    inner
}

/// A small base64 encoder, enough for building test messages.
mod base64_like {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::new();
        for (n, chunk) in data.chunks(3).enumerate() {
            if n > 0 && n % 19 == 0 {
                out.push_str("\r\n");
            }
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn bombs_get_a_definite_verdict() {
    let limits = Limits {
        max_depth: 20,
        max_parts: 1_000,
        max_decoded_bytes: 1 << 20,
        max_urls: 100,
        ..Limits::default()
    };
    let config = FilterConfig {
        limits,
        ..FilterConfig::default()
    };
    let rules = rules();
    let cases: Vec<(&str, Vec<u8>, Option<LimitExceeded>)> = vec![
        ("nesting within limits", nested_multipart(10), None),
        (
            "deep multipart nesting",
            nested_multipart(5_000),
            Some(LimitExceeded::Parts),
        ),
        (
            "deep multipart nesting, few parts",
            nested_multipart(50),
            Some(LimitExceeded::Depth),
        ),
        (
            "deep message/rfc822 nesting",
            nested_messages(500),
            Some(LimitExceeded::Depth),
        ),
        (
            "10,000 parts",
            many_parts(10_000),
            Some(LimitExceeded::Parts),
        ),
        (
            "10,000 bare parts",
            many_bare_parts(10_000),
            Some(LimitExceeded::Parts),
        ),
        (
            "decoding bomb",
            decoding_bomb(3, 2 << 20),
            Some(LimitExceeded::DecodedSize),
        ),
    ];
    for (name, raw, want) in cases {
        let started = Instant::now();
        let ex = extract(&raw, &EnvelopeFacts::default(), &limits);
        assert_eq!(ex.limit, want, "{name}");
        assert!(
            ex.parts <= limits.max_parts + 1,
            "{name}: walked {} parts",
            ex.parts
        );
        assert!(
            ex.depth <= limits.max_depth + 1,
            "{name}: depth {}",
            ex.depth
        );
        let outcome = scan_message(&rules, &raw, &EnvelopeFacts::default(), &config, None);
        let v = verdict(&outcome, &config);
        match want {
            Some(_) => {
                assert_eq!(outcome.action, Action::Reject, "{name}");
                let Verdict::Reject(reply) = v else {
                    panic!("{name}: {v:?}")
                };
                assert_eq!(
                    (reply.code(), reply.enhanced()),
                    (552, Some(Enhanced::new(5, 3, 4)))
                );
            }
            None => assert_eq!(v, Verdict::Continue, "{name}"),
        }
        // Generous even for an unoptimised build on a shared machine.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn over_limit_action_is_configurable() {
    let config = FilterConfig {
        limits: Limits {
            max_parts: 10,
            ..Limits::default()
        },
        over_limit: Action::Quarantine,
        ..FilterConfig::default()
    };
    let raw = many_parts(50);
    let outcome = scan_message(&rules(), &raw, &EnvelopeFacts::default(), &config, None);
    assert_eq!(outcome.limit, Some(LimitExceeded::Parts));
    let v = verdict(&outcome, &config);
    assert!(
        matches!(&v, Verdict::Quarantine(s) if s.contains("limit=parts")),
        "{v:?}"
    );
}
