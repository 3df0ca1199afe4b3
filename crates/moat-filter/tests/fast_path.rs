//! The scan's fast path (factors in the automaton, windows around factor hits, regex sets)
//! finds exactly what running every regex over every whole value finds: the same rules,
//! match counts and matched text, for SpamAssassin's rules imported over every message of
//! the shared corpora.
//!
//! The corpora live outside the repository (`../shared/corpora` from the repository root).
//! Without them (a fresh clone) the test prints why it is skipped and passes, like every
//! test that reads `../shared`.

use std::path::{Path, PathBuf};

use moat_filter::{EnvelopeFacts, Limits, cli, extract};
use moat_rules::CompileOptions;
use rayon::prelude::*;

const FOLDERS: [&str; 4] = [
    "spamassassin-public-corpus/public",
    "csdmc2010-spam/public",
    "spamassassin-test-messages",
    "rspamd-test-messages",
];

fn corpora() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora");
    if dir.is_dir() {
        return Some(dir);
    }
    println!("SKIPPED: ../shared/corpora is not present (fresh clone); nothing compared");
    None
}

#[test]
fn fast_path_agrees_with_every_regex_over_whole_values() {
    let Some(root) = corpora() else {
        return;
    };
    let cf: Vec<PathBuf> = cli::collect_files(&[root.join("spamassassin-rules")])
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cf"))
        .collect();
    assert!(!cf.is_empty(), "no .cf files under spamassassin-rules");
    let report = moat_rules::import::spamassassin(&cf, &Default::default()).unwrap();
    let rules = moat_rules::compile_str(&report.pack, &CompileOptions::default()).unwrap();

    let mut files = Vec::new();
    for f in FOLDERS {
        let dir = root.join(f);
        if dir.is_dir() {
            files.extend(
                cli::collect_files(&[dir]).unwrap().into_iter().filter(|p| {
                    !matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "tsv"))
                }),
            );
        }
    }
    assert!(
        files.len() > 1000,
        "only {} corpus files found",
        files.len()
    );
    let limits = Limits::default();
    let env = EnvelopeFacts::default();
    let differ: Vec<String> = files
        .par_iter()
        .filter_map(|p| {
            let raw = std::fs::read(p).unwrap();
            let targets = extract(&raw, &env, &limits).targets;
            let fast = rules.scan(&targets);
            let reference = rules.scan_reference(&targets);
            (fast != reference).then(|| {
                let (f, r) = (&fast.packs[0].hits, &reference.packs[0].hits);
                let only_fast: Vec<_> = f.iter().filter(|h| !r.contains(h)).collect();
                let only_ref: Vec<_> = r.iter().filter(|h| !f.contains(h)).collect();
                format!(
                    "{}:\n  fast path only: {only_fast:?}\n  reference only: {only_ref:?}",
                    p.display()
                )
            })
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} messages differ:\n{}",
        differ.len(),
        files.len(),
        differ
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "{} corpus messages: fast path and reference agree",
        files.len()
    );
}
