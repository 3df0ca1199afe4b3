//! Bad input never panics: arbitrary bytes and mutated MIME messages through the walk and
//! the scan with the repository's default pack.

use std::sync::OnceLock;

use moat_filter::{EnvelopeFacts, FilterConfig, scan_message};
use proptest::prelude::*;

fn rules() -> &'static moat_rules::CompiledRules {
    static RULES: OnceLock<moat_rules::CompiledRules> = OnceLock::new();
    RULES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
        moat_rules::load(&dir, &moat_rules::CompileOptions::default()).unwrap()
    })
}

const SAMPLE: &[u8] = b"From: \"A\" <a@example.org>\r\nSubject: =?utf-8?Q?h=C3=A9?=\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://x.example/\">x</a>\r\n--b\r\n\
Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let o = scan_message(rules(), &raw, &EnvelopeFacts::default(), &FilterConfig::default(), None);
        prop_assert!(o.score.is_finite());
    }

    #[test]
    fn mutated_mime(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..24)) {
        let mut raw = SAMPLE.to_vec();
        for (at, byte, op) in edits {
            let at = at % (raw.len() + 1);
            match op {
                0 => raw.insert(at, byte),
                1 if at < raw.len() => { raw.remove(at); }
                _ if at < raw.len() => raw[at] = byte,
                _ => {}
            }
        }
        let o = scan_message(rules(), &raw, &EnvelopeFacts::default(), &FilterConfig::default(), None);
        prop_assert!(o.score.is_finite());
    }
}
