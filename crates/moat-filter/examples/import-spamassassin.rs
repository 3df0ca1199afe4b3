//! What `moat rules import-spamassassin` will do, as an example:
//! `cargo run --release -p moat-filter --example import-spamassassin -- OUT.toml FILE.cf|DIR...`
//! (folders are searched for `.cf` files). Lists every rule not converted, with the reason.

use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, inputs)) = args.split_first() else {
        eprintln!("usage: import-spamassassin OUT.toml FILE.cf|DIR...");
        std::process::exit(2);
    };
    let inputs: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
    let report =
        match moat_filter::cli::import_spamassassin(&inputs, Path::new(out), &Default::default()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    let mut err = std::io::stderr().lock();
    report.write_skipped(&mut err).unwrap();
    eprintln!(
        "{} rules converted into {out}, {} not converted",
        report.converted,
        report.skipped.len()
    );
}
