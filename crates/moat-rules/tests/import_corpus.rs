//! Imports SpamAssassin's own rule files (from `../shared/corpora/spamassassin-rules`, never
//! committed) and compiles the result. Skips with a message when the corpus is absent.

use std::path::{Path, PathBuf};

use moat_rules::import::{ImportOptions, spamassassin};

fn cf_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            cf_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "cf") {
            out.push(p);
        }
    }
}

#[test]
fn spamassassin_rules_import_and_compile() {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/spamassassin-rules");
    if !root.is_dir() {
        eprintln!("SKIPPED: ../shared/corpora/spamassassin-rules is not present (fresh clone)");
        return;
    }
    let mut files = Vec::new();
    // Sandbox rules first, so the released rules in rules/ win where both define a name.
    cf_files(&root.join("rulesrc"), &mut files);
    cf_files(&root.join("rules"), &mut files);
    let report = spamassassin(&files, &ImportOptions::default()).unwrap();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for s in &report.skipped {
        let key: String = s
            .reason
            .split([':', '('])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        *reasons.entry(key).or_default() += 1;
    }
    eprintln!(
        "converted {} rules from {} files, skipped {}: {reasons:#?}",
        report.converted,
        files.len(),
        report.skipped.len()
    );
    assert!(
        report.converted > 1500,
        "converted only {}",
        report.converted
    );
    let started = std::time::Instant::now();
    let rules = moat_rules::compile_str(&report.pack, &moat_rules::CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "compiled {} rules in {:?}",
        rules.rules().len(),
        started.elapsed()
    );
    // Negated header rules add one helper rule each.
    assert!(rules.rules().len() >= report.converted);
}
