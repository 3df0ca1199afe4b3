//! What `moat scan` will do, as an example: `cargo run --release -p moat-filter --example
//! scan -- RULES_DIR [--json] FILE|DIR...`. Prints one report per message and a summary
//! (messages per second) on stderr. `RAYON_NUM_THREADS=1` measures one core.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    let Some((rules, paths)) = args.split_first() else {
        eprintln!("usage: scan RULES_DIR [--json] FILE|DIR...");
        std::process::exit(2);
    };
    let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let started = Instant::now();
    let reports = match moat_filter::cli::scan_paths(
        rules.as_ref(),
        &paths,
        &moat_rules::CompileOptions::default(),
        &moat_filter::FilterConfig::default(),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let elapsed = started.elapsed();
    let mut out = std::io::stdout().lock();
    moat_filter::cli::write_reports(&reports, json, &mut out).unwrap();
    let mut verdicts = BTreeMap::new();
    for r in &reports {
        *verdicts.entry(r.verdict.as_str()).or_insert(0) += 1;
    }
    let scan_micros: u64 = reports.iter().map(|r| r.micros).sum();
    eprintln!(
        "{} messages in {:.2?} (rules load included): {:.0} messages/s; scan time per message {:.0} µs; verdicts {verdicts:?}",
        reports.len(),
        elapsed,
        reports.len() as f64 / elapsed.as_secs_f64(),
        scan_micros as f64 / reports.len().max(1) as f64
    );
}
