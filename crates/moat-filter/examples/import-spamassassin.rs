//! What `moat rules import-spamassassin` will do, as an example:
//! `cargo run --release -p moat-filter --example import-spamassassin -- OUT.toml FILE.cf|DIR...`
//! (folders are searched for `.cf` files). Lists every rule not converted, with the reason.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, inputs)) = args.split_first() else {
        eprintln!("usage: import-spamassassin OUT.toml FILE.cf|DIR...");
        std::process::exit(2);
    };
    let inputs: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
    let files: Vec<PathBuf> = moat_filter::cli::collect_files(&inputs)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cf"))
        .collect();
    let report = moat_rules::import::spamassassin(&files, &Default::default()).unwrap();
    std::fs::write(out, &report.pack).unwrap();
    let mut err = std::io::stderr().lock();
    report.write_skipped(&mut err).unwrap();
    eprintln!(
        "{} rules converted into {out}, {} not converted",
        report.converted,
        report.skipped.len()
    );
}
