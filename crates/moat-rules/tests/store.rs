//! The rule store: reload outcomes and the debounced watcher.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use moat_rules::{CompileOptions, Error, ReloadOutcome, RuleStore, Step};

fn pack(version: &str, regex: &str, verdict: &str) -> String {
    format!(
        "[pack]\nname = \"w\"\nversion = \"{version}\"\n[thresholds]\ntag = 1.0\n\
         [[rule]]\nid = \"WORD\"\ntarget = \"subject\"\nregex = '{regex}'\nscore = 1.0\n\
         [[rule]]\nid = \"META\"\nmeta = \"WORD\"\n\
         [[test]]\nname = \"subject hits\"\nsnippet = {{ subject = \"spam offer\" }}\nverdict = \"{verdict}\"\n"
    )
}

#[test]
fn reload_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, pack("1", "spam", "tag")).unwrap();
    let store = RuleStore::open(dir.path(), CompileOptions::default(), None).unwrap();
    assert_eq!(store.reload().unwrap(), ReloadOutcome::Unchanged);

    // Three kinds of broken pack; each is refused at its step and names file and rule.
    let broken = [
        (
            pack("2", "spam(", "tag"),
            Step::Compile,
            "rule WORD: bad regex",
        ),
        (
            pack("2", "spam", "tag").replace("meta = \"WORD\"", "meta = \"WORD && NOPE\""),
            Step::Validate,
            "rule META: meta refers to unknown rule NOPE",
        ),
        (
            pack("2", "spam", "reject"),
            Step::Test,
            "test \"subject hits\": verdict tag",
        ),
    ];
    for (text, step, want) in broken {
        std::fs::write(&file, text).unwrap();
        match store.reload() {
            Err(Error::Refused { step: s, problems }) => {
                assert_eq!(s, step);
                let msg = problems[0].to_string();
                assert!(msg.starts_with(&file.display().to_string()), "{msg}");
                assert!(msg.contains(want), "{msg}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(store.snapshot().packs()[0].version, "1");
    }
    std::fs::write(&file, pack("3", "offer", "tag")).unwrap();
    assert!(
        matches!(store.reload().unwrap(), ReloadOutcome::Applied { versions, .. } if versions == "w 3")
    );
    assert_eq!(store.snapshot().packs()[0].version, "3");
}

#[test]
fn watcher_applies_changes_after_debounce() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, pack("1", "spam", "tag")).unwrap();
    let store = Arc::new(RuleStore::open(dir.path(), CompileOptions::default(), None).unwrap());
    let (tx, rx) = mpsc::channel();
    let s2 = store.clone();
    let _watch = moat_rules::watch(dir.path(), Duration::from_millis(200), move || {
        let _ = tx.send(s2.reload().map_err(|e| e.to_string()));
    })
    .unwrap();
    // Several quick writes are one reload.
    for v in ["2", "3", "4"] {
        std::fs::write(&file, pack(v, "spam", "tag")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a reload within 5 s");
    assert!(
        matches!(&first, Ok(ReloadOutcome::Applied { versions, .. }) if versions == "w 4"),
        "{first:?}"
    );
    assert_eq!(store.snapshot().packs()[0].version, "4");
    // A broken write is reported and leaves version 4 active.
    std::fs::write(&file, pack("5", "spam(", "tag")).unwrap();
    let second = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a reload within 5 s");
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.contains("rule WORD: bad regex")),
        "{second:?}"
    );
    assert_eq!(store.snapshot().packs()[0].version, "4");
}
