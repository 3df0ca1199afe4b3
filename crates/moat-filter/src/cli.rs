//! Library side of `moat scan` and `moat rules check`: the binary only parses arguments.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use moat_rules::{Action, CheckReport, CompileOptions, CompiledRules, PackResult};

use crate::Error;
use crate::extract::{EnvelopeFacts, LimitExceeded, MimeExtractor};
use crate::stage::{FilterConfig, scan_message};

/// The result for one scanned file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// The verdict.
    pub verdict: Action,
    /// Score of the deciding pack.
    pub score: f64,
    /// Set when the MIME walk stopped at a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitExceeded>,
    /// Parts the rules saw only up to a scan size limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub truncated_parts: usize,
    /// Per-pack results with the rules that hit and their matched text.
    pub packs: Vec<PackResult>,
    /// Scan time in microseconds.
    pub micros: u64,
    /// Why the file could not be scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Every regular file under `paths` (folders walked recursively, hidden entries skipped),
/// sorted.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            for e in entries.flatten() {
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if !hidden {
                    stack.push(e.path());
                }
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Scans one file.
pub fn scan_file(rules: &CompiledRules, path: &Path, config: &FilterConfig) -> FileReport {
    match std::fs::read(path) {
        Ok(bytes) => {
            let o = scan_message(rules, &bytes, &EnvelopeFacts::default(), config, None);
            FileReport {
                path: path.to_path_buf(),
                bytes: bytes.len(),
                verdict: o.action,
                score: o.score,
                limit: o.limit,
                truncated_parts: o.truncated_parts,
                packs: o.result.packs,
                micros: o.elapsed.as_micros() as u64,
                error: None,
            }
        }
        Err(e) => FileReport {
            path: path.to_path_buf(),
            bytes: 0,
            verdict: Action::Continue,
            score: 0.0,
            limit: None,
            truncated_parts: 0,
            packs: Vec::new(),
            micros: 0,
            error: Some(e.to_string()),
        },
    }
}

/// `moat scan FILE|DIR...`: compiles and tests the packs in `rules_dir`, then scans every
/// file in parallel (rayon's global pool; set `RAYON_NUM_THREADS` to bound it).
pub fn scan_paths(
    rules_dir: &Path,
    paths: &[PathBuf],
    options: &CompileOptions,
    config: &FilterConfig,
) -> Result<Vec<FileReport>, Error> {
    let extractor = MimeExtractor {
        limits: config.limits,
    };
    let rules = moat_rules::build(rules_dir, options, Some(&extractor))?;
    let files = collect_files(paths)?;
    Ok(files
        .par_iter()
        .map(|f| scan_file(&rules, f, config))
        .collect())
}

/// Writes reports: one JSON object per line with `json`, else one readable block per file.
pub fn write_reports(
    reports: &[FileReport],
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for r in reports {
        if json {
            serde_json::to_writer(&mut *out, r)?;
            writeln!(out)?;
            continue;
        }
        write!(
            out,
            "{}: {} score={}",
            r.path.display(),
            r.verdict.as_str(),
            r.score
        )?;
        if let Some(l) = r.limit {
            write!(out, " limit={}", l.as_str())?;
        }
        if r.truncated_parts > 0 {
            write!(out, " truncated={}", r.truncated_parts)?;
        }
        if let Some(e) = &r.error {
            write!(out, " error={e}")?;
        }
        writeln!(out)?;
        for p in &r.packs {
            for h in &p.hits {
                write!(out, "  {}/{} {:+}", p.pack, h.rule, h.score)?;
                if let (Some(t), Some(m)) = (&h.target, &h.matched) {
                    write!(out, " {t}: {m:?}")?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// `moat rules check DIR`: compiles the packs and runs their tests, message tests included.
pub fn check_dir(dir: &Path, options: &CompileOptions) -> Result<CheckReport, Error> {
    Ok(moat_rules::check_dir(
        dir,
        options,
        Some(&MimeExtractor::default()),
    )?)
}

/// `moat rules import-spamassassin FILE.cf|DIR... -o OUT.toml`: converts the rule files
/// (folders are searched for `.cf` files, in path order; later definitions win) and writes
/// the pack to `out`. The report lists the rules not converted
/// ([`moat_rules::import::ImportReport::write_skipped`]).
pub fn import_spamassassin(
    inputs: &[PathBuf],
    out: &Path,
    options: &moat_rules::import::ImportOptions,
) -> Result<moat_rules::import::ImportReport, Error> {
    let files: Vec<PathBuf> = collect_files(inputs)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cf"))
        .collect();
    let report = moat_rules::import::spamassassin(&files, options)?;
    std::fs::write(out, &report.pack).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(report)
}
