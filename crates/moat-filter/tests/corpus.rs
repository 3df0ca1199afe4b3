//! Every message of the shared corpora scans without a panic and within the limits.
//!
//! The corpora live outside the repository (`../shared/corpora` from the repository root);
//! when that folder is absent the test prints why and passes without scanning.

use std::path::{Path, PathBuf};

use moat_filter::{EnvelopeFacts, FilterConfig, cli, scan_message};
use rayon::prelude::*;

const FOLDERS: [&str; 4] = [
    "spamassassin-public-corpus/public",
    "csdmc2010-spam/public",
    "spamassassin-test-messages",
    "rspamd-test-messages",
];

fn corpora() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora");
    dir.is_dir().then_some(dir)
}

#[test]
fn corpora_scan_within_limits() {
    let Some(root) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora is not present (fresh clone); nothing scanned");
        return;
    };
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let rules = moat_rules::load(&rules_dir, &moat_rules::CompileOptions::default()).unwrap();
    let config = FilterConfig::default();
    let mut files = Vec::new();
    for f in FOLDERS {
        let dir = root.join(f);
        if !dir.is_dir() {
            eprintln!("SKIPPED folder {f}: not present");
            continue;
        }
        files.extend(
            cli::collect_files(&[dir])
                .unwrap()
                .into_iter()
                .filter(|p| !matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "tsv"))),
        );
    }
    assert!(
        files.len() > 1000,
        "only {} corpus files found",
        files.len()
    );
    let over: Vec<String> = files
        .par_iter()
        .filter_map(|p| {
            let raw = std::fs::read(p).unwrap();
            let o = scan_message(&rules, &raw, &EnvelopeFacts::default(), &config, None);
            if o.parser_failed {
                eprintln!("note: the MIME parser gave up on {}", p.display());
            }
            o.limit.map(|l| format!("{}: {}", p.display(), l.as_str()))
        })
        .collect();
    assert!(over.is_empty(), "over-limit walks:\n{}", over.join("\n"));
    eprintln!("scanned {} corpus messages", files.len());
}

#[test]
fn gtube_from_the_corpus_is_rejected() {
    let Some(root) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora is not present (fresh clone)");
        return;
    };
    let gtube = root.join("spamassassin-test-messages/spam/gtube.eml");
    if !gtube.is_file() {
        eprintln!("SKIPPED: {} not present", gtube.display());
        return;
    }
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let reports = cli::scan_paths(
        &rules_dir,
        &[gtube],
        &moat_rules::CompileOptions::default(),
        &FilterConfig::default(),
    )
    .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].verdict, moat_rules::Action::Reject);
    let mut out = Vec::new();
    cli::write_reports(&reports, true, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["verdict"], "reject");
    assert!(
        v["packs"][0]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["rule"] == "GTUBE")
    );
}
