//! The SpamAssassin importer over any rule file text.
//!
//! Invariant: whatever the input, the importer writes a pack that compiles; rules it
//! cannot convert are listed, never written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_rules::import::{ImportOptions, spamassassin_sources};

fuzz_target!(|data: &[u8]| {
    let options = ImportOptions::default();
    let report = spamassassin_sources(&[("fuzz.cf".into(), data.to_vec())], &options);
    if let Err(e) = moat_rules::compile_str(&report.pack, &options.compile) {
        panic!("imported pack does not compile: {e}\n{}", report.pack);
    }
});
