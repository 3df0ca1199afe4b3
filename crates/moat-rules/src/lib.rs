//! Moat's rule packs: schema, loader, validator, compiler and the hot-swapped store.
//!
//! A rules folder holds pack files (`*.toml`, format in `rules/README.md`). [`load`] reads
//! and compiles them into an immutable [`CompiledRules`]: per [`Target`], one literal search
//! over every literal, every word and the required literal factors of every regex (an
//! aho-corasick automaton, or for large sets a filter on each literal's rarest three bytes);
//! factors are chosen by how often they are expected in mail. A regex runs only on values
//! where its factors were found, and there only anchored at the literals its matches start
//! with or in the windows around the factor's occurrences that a match can reach. Regexes
//! without a usable factor run around a rare byte, or a run of bytes (`\s{15}`), that
//! every match contains, or, without one,
//! together in multi-pattern sets, which grow while the lazy DFA of their union stays
//! small. Meta rules combine other rules' hits.
//! [`RuleStore`] keeps the active snapshot in an `ArcSwap` and has one reload path
//! (load → compile → run the packs' tests → swap).
//!
//! ```
//! use moat_rules::{Action, CompileOptions, Field, Targets};
//!
//! let pack = r#"
//! [pack]
//! name = "demo"
//! version = "1"
//! [thresholds]
//! tag = 2.0
//! [[rule]]
//! id = "MONEY"
//! target = "body"
//! regex = '\$\d+ million'
//! score = 1.5
//! [[rule]]
//! id = "URGENT"
//! target = "subject"
//! words = ["urgent"]
//! score = 1.0
//! [[rule]]
//! id = "BOTH"
//! meta = "MONEY && URGENT"
//! score = 0.5
//! "#;
//! let rules = moat_rules::compile_str(pack, &CompileOptions::default()).unwrap();
//! let mut t = Targets::new();
//! t.push_str(Field::Subject, "URGENT reply");
//! t.push_str(Field::Body, "claim your $25 million today");
//! let result = rules.scan(&t);
//! let demo = result.pack("demo").unwrap();
//! assert_eq!(demo.score, 3.0);
//! assert_eq!(demo.action, Action::Tag);
//! assert_eq!(demo.hits[0].matched.as_deref(), Some("$25 million"));
//! ```

mod compile;
mod error;
mod factor;
pub mod import;
mod literals;
mod loader;
mod meta;
mod packtest;
mod rarity;
mod reach;
mod scan;
pub mod schema;
mod store;
mod target;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use compile::{CompileOptions, CompiledRules, PackInfo, RuleInfo, RuleKind, TargetStats};
pub use error::{Error, Problem, Step};
pub use scan::{Action, Hit, PackResult, ScanResult, profile_scan};
pub use schema::{TestEnvelope, Thresholds};
pub use store::{ReloadOutcome, RuleStore, WatchHandle, watch};
pub use target::{Field, Target, Targets};

/// Turns a whole message (and a test envelope) into targets. Implemented by the MIME walk
/// of `moat-filter`; needed to run pack tests that carry whole messages.
pub trait Extractor: Send + Sync {
    /// Extracts every target of `message`.
    fn extract<'a>(&self, message: &'a [u8], envelope: &TestEnvelope) -> Targets<'a>;
}

/// Loads and compiles every pack in `dir`, without running the packs' tests.
pub fn load(dir: &Path, options: &CompileOptions) -> Result<CompiledRules, Error> {
    let (loaded, fingerprint) = loader::load_dir(dir)?;
    compile::compile(&loaded, fingerprint, options)
}

/// Loads, compiles and tests: what every reload and `moat rules check` run.
pub fn build(
    dir: &Path,
    options: &CompileOptions,
    extractor: Option<&dyn Extractor>,
) -> Result<CompiledRules, Error> {
    let rules = load(dir, options)?;
    compile::run_tests(&rules, extractor)?;
    Ok(rules)
}

/// Compiles one pack from text (tests, tools). List and message files are not available.
pub fn compile_str(source: &str, options: &CompileOptions) -> Result<CompiledRules, Error> {
    let path = Path::new("<inline>");
    let pack = loader::parse_pack(path, source.to_string())
        .map_err(|p| Error::refused(Step::Load, vec![p]))?;
    compile::compile(std::slice::from_ref(&pack), 0, options)
}

/// Runs the tests a compiled rule set carries; returns how many ran.
pub fn run_tests(rules: &CompiledRules, extractor: Option<&dyn Extractor>) -> Result<usize, Error> {
    compile::run_tests(rules, extractor)
}

/// `bytes` as the literal search sees them: ASCII letters lower-cased, ASCII white space
/// as a space (see [`CompiledRules::automaton_patterns`]).
pub fn fold(bytes: &[u8]) -> Vec<u8> {
    literals::canonical(bytes)
}

/// Summary of a successful `moat rules check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// `(name, version, rule count)` of each pack.
    pub packs: Vec<(String, String, usize)>,
    /// Pack tests run (all passed).
    pub tests: usize,
    /// Compile time in milliseconds.
    pub compile_ms: u128,
}

/// `moat rules check DIR`: compiles the packs in `dir` and runs their tests.
///
/// Message tests need `extractor` (`moat_filter::cli::check_dir` passes the MIME walk).
pub fn check_dir(
    dir: &Path,
    options: &CompileOptions,
    extractor: Option<&dyn Extractor>,
) -> Result<CheckReport, Error> {
    let rules = load(dir, options)?;
    let tests = compile::run_tests(&rules, extractor)?;
    Ok(CheckReport {
        packs: rules
            .packs()
            .iter()
            .map(|p| (p.name.clone(), p.version.clone(), p.rules.len()))
            .collect(),
        tests,
        compile_ms: rules.compile_time().as_millis(),
    })
}
