//! Where scan time goes with imported SpamAssassin rules:
//! `cargo run --release -p moat-filter --example rules-profile -- RULES.cf... -- MESSAGES...`
//! (folders are walked).
//!
//! - `MOAT_BODY_LOOPS=N` times the decoded-body scan N times and skips the report (for
//!   `perf`); `MOAT_SCAN=all` times all targets instead, `MOAT_SCAN=walk` the MIME walk
//!   alone, and `MOAT_SCAN=fields` each kind of value alone (no value at all, the fixed cost
//!   of a scan; the headers; each field), or only the kind named by `MOAT_FIELD`.
//! - `MOAT_PROFILE_FACTORS=1` lists the automaton patterns found most, with the rules they
//!   feed, and the regexes run in each set.
//! - `MOAT_SET_BUDGET=BYTES` sets `CompileOptions::regex_set_budget`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moat_filter::{EnvelopeFacts, Limits, extract};
use moat_rules::{CompileOptions, CompiledRules, Field, Targets};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let cf = moat_filter::cli::collect_files(
        &args[..split].iter().map(PathBuf::from).collect::<Vec<_>>(),
    )
    .unwrap()
    .into_iter()
    .filter(|p| p.extension().is_some_and(|e| e == "cf"))
    .collect::<Vec<_>>();
    let msg_args: Vec<PathBuf> = args.iter().skip(split + 1).map(PathBuf::from).collect();
    let msgs = moat_filter::cli::collect_files(&msg_args).unwrap();
    let report = moat_rules::import::spamassassin(&cf, &Default::default()).unwrap();
    let mut options = CompileOptions::default();
    if let Some(n) = std::env::var("MOAT_SET_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.regex_set_budget = n;
    }
    let rules = moat_rules::compile_str(&report.pack, &options).unwrap();
    for s in rules.stats() {
        println!(
            "{:<24} patterns {:>5} factored {:>5} rare-byte {:>4} set {:>4}",
            s.target.to_string(),
            s.patterns,
            s.factored_regexes,
            s.byte_filtered_regexes,
            s.set_regexes
        );
    }
    let raws: Vec<Vec<u8>> = msgs.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    let ex: Vec<Targets<'_>> = raws
        .iter()
        .map(|r| extract(r, &EnvelopeFacts::default(), &Limits::default()).targets)
        .collect();
    let bodies: Vec<Targets<'static>> = ex
        .iter()
        .map(|t| {
            let mut b = Targets::new();
            for v in t.field(Field::Body) {
                b.push(Field::Body, v.to_vec());
            }
            b
        })
        .collect();
    let bytes: usize = bodies.iter().map(|b| b.total_len()).sum();
    // `MOAT_BODY_LOOPS=N`: scan the bodies N times and skip the per-part report (for perf).
    let loops: Option<u32> = std::env::var("MOAT_BODY_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok());
    // `MOAT_SCAN=walk`: time the MIME walk alone, from the raw messages.
    if std::env::var("MOAT_SCAN").is_ok_and(|v| v == "walk") {
        let t = Instant::now();
        for _ in 0..loops.unwrap_or(1) {
            for r in &raws {
                std::hint::black_box(extract(r, &EnvelopeFacts::default(), &Limits::default()));
            }
        }
        let el = t.elapsed() / loops.unwrap_or(1);
        let bytes: usize = raws.iter().map(Vec::len).sum();
        println!(
            "walk: {} messages, {bytes} bytes in {el:?} = {:.1} MB/s",
            raws.len(),
            bytes as f64 / el.as_secs_f64() / 1e6
        );
        return;
    }
    // `MOAT_SCAN=fields`: time the scan of each kind of value alone (headers, then each
    // field), and of no value at all (the fixed cost: state, meta rules, results).
    if std::env::var("MOAT_SCAN").is_ok_and(|v| v == "fields") {
        let only = |keep: &dyn Fn(&Targets<'_>, &mut Targets<'static>)| -> Vec<Targets<'static>> {
            ex.iter()
                .map(|t| {
                    let mut o = Targets::new();
                    keep(t, &mut o);
                    o
                })
                .collect()
        };
        let mut kinds: Vec<(String, Vec<Targets<'static>>)> = vec![
            ("nothing".into(), only(&|_, _| {})),
            (
                "headers".into(),
                only(&|t, o| {
                    for (n, v) in t.headers() {
                        o.push_header(n.to_string(), v.to_string());
                    }
                }),
            ),
        ];
        for f in Field::ALL {
            kinds.push((
                f.as_str().into(),
                only(&|t, o| {
                    for v in t.field(f) {
                        o.push(f, v.to_vec());
                    }
                }),
            ));
        }
        // `MOAT_FIELD=NAME` times that kind alone (for perf).
        let pick = std::env::var("MOAT_FIELD").ok();
        for (name, ts) in &kinds {
            if pick.as_ref().is_some_and(|p| p != name) {
                continue;
            }
            let bytes: usize = ts.iter().map(|t| t.total_len()).sum();
            let el = time_scans(&rules, ts, loops.unwrap_or(1));
            println!(
                "{name:<16} {bytes:>10} bytes {:>10.1} ms",
                el.as_secs_f64() * 1e3
            );
        }
        return;
    }
    // `MOAT_SCAN=all`: time every target of the messages instead of the bodies alone.
    let all = std::env::var("MOAT_SCAN").is_ok_and(|v| v == "all");
    let (timed, bytes) = if all {
        (&ex, raws.iter().map(Vec::len).sum())
    } else {
        (&bodies, bytes)
    };
    let el = time_scans(&rules, timed, loops.unwrap_or(1));
    println!(
        "{}: {} bytes in {:?} = {:.1} MB/s",
        if all { "all targets" } else { "body" },
        bytes,
        el,
        bytes as f64 / el.as_secs_f64() / 1e6
    );
    if loops.is_none() {
        print!("{}", moat_rules::profile_scan(&rules, &ex));
    }
}

/// The time of one scan of every message in `messages`, averaged over `loops` rounds.
fn time_scans(rules: &CompiledRules, messages: &[Targets<'_>], loops: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..loops {
        for m in messages {
            std::hint::black_box(rules.scan(m));
        }
    }
    t.elapsed() / loops
}
