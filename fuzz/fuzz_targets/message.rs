//! The MIME walk and the scan over any message bytes, with the repository's rule pack.
//!
//! Invariants: the walk stays within its limits (depth, parts), or stops at the first part
//! past one and says so; the scan's fast path finds what every regex over every whole
//! value finds; a verdict comes out. Small limits make the fuzzer reach the over-limit
//! paths.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moat_filter::{EnvelopeFacts, Limits, extract};
use moat_rules::{CompileOptions, CompiledRules};

fn rules() -> &'static CompiledRules {
    static RULES: OnceLock<CompiledRules> = OnceLock::new();
    RULES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        moat_rules::load(&dir, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("the repository's rules do not compile: {e}"))
    })
}

/// mail-parser has debug assertions that malformed input trips (a part id without its
/// multipart, say); release builds compile them out, and `extract` catches the panic and
/// scans the message from its raw forms. libFuzzer's panic hook would abort on them, so
/// they alone unwind to that catch; every other panic still ends the run.
fn let_parser_assertions_unwind() {
    let fuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_parser = info
            .location()
            .is_some_and(|l| l.file().contains("/mail-parser-"));
        if !in_parser {
            fuzzer_hook(info);
        }
    }));
}

fuzz_target!(init: let_parser_assertions_unwind(), |data: &[u8]| {
    let limits = Limits {
        max_depth: 4,
        max_parts: 16,
        max_decoded_bytes: 64 << 10,
        max_urls: 32,
        max_text_scan_bytes: 4096,
        max_raw_scan_bytes: 8192,
    };
    let env = EnvelopeFacts::default();
    let walked = extract(data, &env, &limits);
    // The walk stops at the first part past a limit, and says which limit.
    let past = usize::from(walked.limit.is_some());
    assert!(
        walked.depth <= limits.max_depth + past,
        "depth {}",
        walked.depth
    );
    assert!(
        walked.parts <= limits.max_parts + past,
        "parts {}",
        walked.parts
    );
    let rules = rules();
    let fast = rules.scan(&walked.targets);
    assert_eq!(fast, rules.scan_reference(&walked.targets));
});
