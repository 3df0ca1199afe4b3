//! Criterion benchmark of the content filter with SpamAssassin's rules imported.
//!
//! Workload (outside the repository, never committed):
//! - rules: every `.cf` file under `../shared/corpora/spamassassin-rules`, imported with
//!   `moat_rules::import::spamassassin` and compiled once;
//! - messages: the public spam and ham of `../shared/corpora/spamassassin-public-corpus`
//!   and `../shared/corpora/csdmc2010-spam`, MIME-decoded once before measuring.
//!
//! Groups (all single-threaded, `Throughput::Bytes`):
//! - `sa-rules/decoded-body`: every imported rule over the decoded body text only
//!   (bytes = decoded body bytes);
//! - `sa-rules/decoded-body-literal-pass-alone`: the floor under that scan, the body
//!   target's literal pass alone (one aho-corasick DFA, overlapping, no regex run) over
//!   the same text folded beforehand (bytes = decoded body bytes);
//! - `sa-rules/all-targets`: every imported rule over all targets of each message
//!   (bytes = raw message bytes);
//! - `sa-rules/walk-and-scan`: MIME walk plus scan from raw bytes (bytes = raw bytes).
//!
//! Run: `cargo bench -p moat-filter --bench rules-scan`. Without the corpora it prints why
//! and measures nothing.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moat_filter::{EnvelopeFacts, Limits, extract};
use moat_rules::{CompileOptions, Field, Target, Targets};

fn corpora() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora");
    dir.is_dir().then_some(dir)
}

fn files_under(dir: &Path, ext: Option<&str>, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if ext.is_none_or(|e| p.extension().is_some_and(|x| x == e)) {
            out.push(p);
        }
    }
}

fn bench(c: &mut Criterion) {
    let Some(root) = corpora() else {
        eprintln!("rules-scan: ../shared/corpora is not present; nothing to measure");
        return;
    };
    let mut cf = Vec::new();
    files_under(
        &root.join("spamassassin-rules/rulesrc"),
        Some("cf"),
        &mut cf,
    );
    files_under(&root.join("spamassassin-rules/rules"), Some("cf"), &mut cf);
    let report = moat_rules::import::spamassassin(&cf, &Default::default()).expect("import");
    let started = std::time::Instant::now();
    let rules = moat_rules::compile_str(&report.pack, &CompileOptions::default()).expect("compile");
    eprintln!(
        "rules-scan: {} rules imported ({} skipped), compiled in {:?}",
        report.converted,
        report.skipped.len(),
        started.elapsed()
    );

    let mut paths = Vec::new();
    for sub in [
        "spamassassin-public-corpus/public/spam",
        "spamassassin-public-corpus/public/ham",
        "csdmc2010-spam/public/spam",
        "csdmc2010-spam/public/ham",
    ] {
        files_under(&root.join(sub), None, &mut paths);
    }
    let raws: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    let limits = Limits::default();
    let env = EnvelopeFacts::default();
    let extracted: Vec<Targets<'_>> = raws
        .iter()
        .map(|r| extract(r, &env, &limits).targets)
        .collect();
    let bodies: Vec<Targets<'static>> = extracted
        .iter()
        .map(|t| {
            let mut b = Targets::new();
            for v in t.field(Field::Body) {
                b.push(Field::Body, v.to_vec());
            }
            b
        })
        .collect();
    let raw_bytes: usize = raws.iter().map(Vec::len).sum();
    let body_bytes: usize = bodies.iter().map(|b| b.total_len()).sum();
    eprintln!(
        "rules-scan: {} messages, {} raw bytes, {} decoded body bytes",
        raws.len(),
        raw_bytes,
        body_bytes
    );

    let mut g = c.benchmark_group("sa-rules");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(body_bytes as u64));
    g.bench_function("decoded-body", |b| {
        b.iter(|| {
            for t in &bodies {
                black_box(rules.scan(t));
            }
        })
    });
    // The floor under the body scan: its one literal pass alone, by an aho-corasick DFA
    // over the body target's patterns, on values folded beforehand, with no regex run.
    // Any scan that searches these literals in one aho-corasick pass costs at least this.
    let patterns = rules.automaton_patterns(&Target::Field(Field::Body));
    let automaton = AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .build(patterns)
        .expect("automaton");
    let folded: Vec<Vec<u8>> = bodies
        .iter()
        .flat_map(|t| t.field(Field::Body))
        .map(|v| moat_rules::fold(v))
        .collect();
    eprintln!(
        "rules-scan: the body target's automaton has {} patterns",
        patterns.len()
    );
    g.bench_function("decoded-body-literal-pass-alone", |b| {
        b.iter(|| {
            folded
                .iter()
                .map(|v| automaton.find_overlapping_iter(v).count())
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Bytes(raw_bytes as u64));
    g.bench_function("all-targets", |b| {
        b.iter(|| {
            for t in &extracted {
                black_box(rules.scan(t));
            }
        })
    });
    g.bench_function("walk-and-scan", |b| {
        b.iter(|| {
            for r in &raws {
                black_box(rules.scan(&extract(r, &env, &limits).targets));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
