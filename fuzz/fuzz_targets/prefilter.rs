//! The content filter's fast path against its reference: regexes from the input, compiled
//! into a pack, scanned over a value from the input.
//!
//! Input: up to four regexes, one per line, an empty line, then the value. Invariant: the
//! scan (factors in the automaton, windows around their occurrences, rare bytes, runs,
//! regex sets) finds exactly what running every regex over every whole value finds: the
//! same rules, counts and matched text. Patterns the compiler refuses are skipped; the
//! compiler itself must not panic on them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_rules::{CompileOptions, Field, Targets, compile_str};

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.windows(2).position(|w| w == b"\n\n") else {
        return;
    };
    let (head, value) = (&data[..split], &data[split + 2..]);
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let mut pack = String::from(
        "[pack]\nname = \"fuzz\"\nversion = \"1\"\n[thresholds]\ntag = 1.0\nreject = 10.0\n",
    );
    for (i, pattern) in head.lines().take(4).enumerate() {
        // The rule's options come from its index: case, count-once, one or two targets.
        pack.push_str(&format!(
            "[[rule]]\nid = \"R{i}\"\ntarget = {}\nscore = 1.0\nregex = {}\ncase_sensitive = {}\n{}",
            if i % 2 == 0 { "\"body\"" } else { "[\"body\", \"subject\"]" },
            toml::Value::String(pattern.to_string()),
            i == 1,
            if i >= 2 { "max_hits = 1\n" } else { "" },
        ));
    }
    let options = CompileOptions {
        regex_size_limit: 1 << 16,
        dfa_size_limit: 1 << 16,
        ..CompileOptions::default()
    };
    let Ok(rules) = compile_str(&pack, &options) else {
        return;
    };
    let mut targets = Targets::new();
    targets.push(Field::Body, value.to_vec());
    // A short second value: anchored and end-of-value regexes start over.
    targets.push(Field::Body, value[..value.len().min(40)].to_vec());
    targets.push(Field::Subject, value[value.len() / 2..].to_vec());
    let fast = rules.scan(&targets);
    let reference = rules.scan_reference(&targets);
    assert_eq!(fast, reference, "pack:\n{pack}");
});
