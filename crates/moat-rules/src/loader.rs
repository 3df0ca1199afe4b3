//! Reads a rules folder: every `*.toml` file directly in it is a pack; list and message
//! files named by a pack are read relative to the pack file.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::error::{Error, Problem, Step};
use crate::schema::PackFile;

/// A parsed pack file and the files it refers to.
#[derive(Debug, Clone)]
pub(crate) struct LoadedPack {
    /// The pack file.
    pub(crate) path: PathBuf,
    /// Its text, for line numbers.
    pub(crate) source: String,
    /// The parsed content.
    pub(crate) file: PackFile,
    /// `list_file` name → its entries, or the problem reading it.
    pub(crate) lists: BTreeMap<String, Result<Vec<String>, String>>,
    /// `message_file` name → its bytes, or the problem reading it.
    pub(crate) messages: BTreeMap<String, Result<Vec<u8>, String>>,
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    Lines::new(source).line_of(offset)
}

/// Where each line of a text starts, to turn many byte offsets into line numbers without
/// counting from the start each time.
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(source: &str) -> Self {
        Lines(memchr::memchr_iter(b'\n', source.as_bytes()).collect())
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

/// Parses one pack from text; `path` is used for messages and to resolve relative files.
pub(crate) fn parse_pack(path: &Path, source: String) -> Result<LoadedPack, Problem> {
    let file: PackFile = toml::from_str(&source).map_err(|e| {
        let line = e.span().map(|s| line_of(&source, s.start));
        Problem::new(path, format!("invalid pack file: {}", e.message())).at(line)
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut lists = BTreeMap::new();
    for rule in &file.rules {
        if let Some(name) = &rule.list_file {
            lists
                .entry(name.clone())
                .or_insert_with(|| read_list(&base.join(name)));
        }
    }
    let mut messages = BTreeMap::new();
    for test in &file.tests {
        if let Some(name) = &test.message_file {
            messages.entry(name.clone()).or_insert_with(|| {
                std::fs::read(base.join(name)).map_err(|e| format!("cannot read {name}: {e}"))
            });
        }
    }
    Ok(LoadedPack {
        path: path.to_path_buf(),
        source,
        file,
        lists,
        messages,
    })
}

/// One entry per line; blank lines and lines starting with `#` are skipped.
fn read_list(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read list file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Loads every pack in `dir`, with a fingerprint of all the bytes read.
pub(crate) fn load_dir(dir: &Path) -> Result<(Vec<LoadedPack>, u64), Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut hasher = DefaultHasher::new();
    let mut packs = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem::new(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        path.hash(&mut hasher);
        source.hash(&mut hasher);
        match parse_pack(&path, source) {
            Ok(pack) => {
                pack.lists.hash(&mut hasher);
                pack.messages.hash(&mut hasher);
                packs.push(pack);
            }
            Err(p) => problems.push(p),
        }
    }
    if packs.is_empty() && problems.is_empty() {
        problems.push(Problem::new(dir, "no rule packs (*.toml) in the folder"));
    }
    if !problems.is_empty() {
        return Err(Error::refused(Step::Load, problems));
    }
    Ok((packs, hasher.finish()))
}
