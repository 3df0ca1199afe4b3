//! Conversion of SpamAssassin rule files into a Moat pack.
//!
//! `header`, `body`, `rawbody`, `uri`, `full` and `meta` rules are converted with their
//! scores (the first score set: no Bayes, no network tests) and descriptions. Every rule
//! that cannot be converted is listed with the reason: `eval:` tests (Perl code), Perl regex
//! features Rust's `regex` crate does not have (look-around, back-references, atomic groups,
//! possessive quantifiers), regexes over the size limits, and meta rules that refer to
//! rules that were not converted.
//!
//! Regexes are compiled in byte mode with Unicode classes off (`(?-u)`), which is how Perl
//! matches SpamAssassin's byte strings: `\w`, `\d`, `\s` and `/i` are ASCII.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::compile::CompileOptions;
use crate::error::Error;
use crate::meta::{self, NameRef};

/// Settings of the generated pack.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Pack name.
    pub name: String,
    /// Pack version.
    pub version: String,
    /// Thresholds written into the pack (SpamAssassin's `required_score` is 5).
    pub thresholds: crate::Thresholds,
    /// Limits the converted regexes must compile within.
    pub compile: CompileOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            name: "spamassassin".into(),
            version: "imported".into(),
            thresholds: crate::Thresholds {
                tag: Some(5.0),
                quarantine: None,
                reject: None,
            },
            compile: CompileOptions::default(),
        }
    }
}

/// A rule that was not converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Rule name.
    pub rule: String,
    /// File it was defined in.
    pub file: PathBuf,
    /// 1-based line of the definition.
    pub line: usize,
    /// Why it was not converted.
    pub reason: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The pack, as TOML text ready to be written into a rules folder.
    pub pack: String,
    /// Rules converted.
    pub converted: usize,
    /// Rules not converted, with the reason, sorted by rule name.
    pub skipped: Vec<Skipped>,
}

impl ImportReport {
    /// Lists the rules not converted, one per line: `file:line: RULE: reason`.
    pub fn write_skipped(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for s in &self.skipped {
            writeln!(
                out,
                "{}:{}: {}: {}",
                s.file.display(),
                s.line,
                s.rule,
                s.reason
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Regex {
        targets: Vec<String>,
        pattern: String,
        nocase: bool,
        negate: bool,
    },
    Meta(String),
}

#[derive(Debug, Clone)]
struct Def {
    name: String,
    file: PathBuf,
    line: usize,
    kind: Result<Kind, String>,
}

/// Strips a SpamAssassin comment: everything from the first `#` not preceded by `\`.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1] != b'\\') {
            return &line[..i];
        }
    }
    line
}

/// The first whitespace-separated word and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Splits `/re/flags`, `m{re}flags`, `m!re!flags` into pattern and flags.
fn split_perl_regex(s: &str) -> Result<(String, String), String> {
    let s = s.trim();
    let (open, body) = if let Some(rest) = s.strip_prefix('m') {
        let c = rest.chars().next().ok_or("empty regex")?;
        (c, &rest[c.len_utf8()..])
    } else if let Some(rest) = s.strip_prefix('/') {
        ('/', rest)
    } else {
        return Err(format!("not a regex: {s:?}"));
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        c => c,
    };
    let end = body.rfind(close).ok_or("unterminated regex")?;
    let flags = body[end + close.len_utf8()..].trim().to_string();
    if let Some(bad) = flags.chars().find(|c| !matches!(c, 'i' | 'm' | 's' | 'x')) {
        return Err(format!("unsupported regex flag {bad:?}"));
    }
    Ok((body[..end].to_string(), flags))
}

/// Rewrites Perl regex syntax into Rust `regex` syntax, or says why it cannot.
pub(crate) fn perl_to_rust(
    pattern: &str,
    flags: &str,
    opts: &CompileOptions,
) -> Result<String, String> {
    let checks: [(&str, &str); 8] = [
        ("(?=", "look-ahead is not supported by the regex crate"),
        (
            "(?!",
            "negative look-ahead is not supported by the regex crate",
        ),
        ("(?<=", "look-behind is not supported by the regex crate"),
        (
            "(?<!",
            "negative look-behind is not supported by the regex crate",
        ),
        ("(?>", "atomic groups are not supported by the regex crate"),
        (
            "(?#",
            "inline comments are not supported by the regex crate",
        ),
        ("(?{", "embedded Perl code is not supported"),
        (
            "(?|",
            "branch reset groups are not supported by the regex crate",
        ),
    ];
    for (needle, why) in checks {
        if pattern.contains(needle) {
            return Err(why.into());
        }
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    // Perl's flags switched on, then Unicode off: a flag after `-` would be switched off.
    out.push_str("(?");
    for f in flags.chars().filter(|c| matches!(c, 'm' | 's' | 'x')) {
        out.push(f);
    }
    out.push_str("-u)");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&n) = chars.get(i + 1) else {
                return Err("trailing backslash".into());
            };
            match n {
                '1'..='9' => {
                    return Err("back-references are not supported by the regex crate".into());
                }
                'K' | 'G' | 'Q' | 'E' | 'X' | 'C' | 'R' | 'N' | 'g' | 'k' => {
                    return Err(format!("\\{n} is not supported by the regex crate"));
                }
                'Z' => out.push_str(r"(?:\n?\z)"),
                'h' => out.push_str(r"[\t ]"),
                'H' => out.push_str(r"[^\t ]"),
                'v' => out.push_str(r"[\n\x0B\f\r]"),
                'V' => out.push_str(r"[^\n\x0B\f\r]"),
                'e' => out.push_str(r"\x1B"),
                '0' => out.push_str(r"\x00"),
                'c' => {
                    return Err("control escapes \\c are not supported by the regex crate".into());
                }
                _ => {
                    out.push('\\');
                    out.push(n);
                }
            }
            i += 2;
            continue;
        }
        // Possessive quantifiers: `*+`, `++`, `?+`, `}+`.
        if c == '+'
            && i > 0
            && matches!(chars[i - 1], '*' | '+' | '?' | '}')
            && !(i > 1 && chars[i - 2] == '\\')
        {
            return Err("possessive quantifiers are not supported by the regex crate".into());
        }
        // Perl reads `{,n}` and a `{` that starts no quantifier as literal text.
        if c == '{' {
            let rest: String = chars[i + 1..].iter().take_while(|c| **c != '}').collect();
            let is_quant = !rest.is_empty()
                && i + 1 + rest.len() < chars.len()
                && rest.chars().all(|c| c.is_ascii_digit() || c == ',')
                && !rest.starts_with(',')
                && rest.matches(',').count() <= 1;
            if !is_quant {
                out.push_str(r"\{");
                i += 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    let eff = if flags.contains('i') {
        format!("(?i){out}")
    } else {
        out.clone()
    };
    regex::bytes::RegexBuilder::new(&eff)
        .size_limit(opts.regex_size_limit)
        .dfa_size_limit(opts.dfa_size_limit)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            let last = msg
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .unwrap_or(&msg);
            format!(
                "regex does not compile: {}",
                last.trim_start_matches("error:").trim()
            )
        })?;
    Ok(out)
}

/// Maps a SpamAssassin header name (with `:raw`, `:addr`, `:name`) to Moat targets.
fn header_targets(spec: &str) -> Result<Vec<String>, String> {
    let (name, modifier) = spec.split_once(':').unwrap_or((spec, ""));
    let plain = |n: &str| format!("header:{n}");
    let targets = match (name, modifier) {
        // SpamAssassin's `ALL` is the whole header block as one string (`\nFrom:.*\nFrom:`
        // finds a repeated header). Moat does not tell trusted relays from untrusted ones,
        // so the `ALL-*` subsets read every header.
        ("ALL" | "ALL-EXTERNAL" | "ALL-TRUSTED" | "ALL-UNTRUSTED" | "ALL-INTERNAL", m) => match m {
            "" => vec!["header-block".into()],
            "raw" => vec!["raw-header-block".into()],
            _ => return Err(format!("header {spec:?} has no Moat target")),
        },
        ("ToCc", m) if m.is_empty() || m == "raw" => vec![plain("To"), plain("Cc")],
        ("EnvelopeFrom", _) => vec!["mail-from".into()],
        ("MESSAGEID", _) => vec![plain("Message-ID"), plain("Resent-Message-ID")],
        ("From", "addr") => vec!["from-address".into()],
        ("From", "name") => vec!["from-name".into()],
        ("Subject", "" | "raw") => vec!["subject".into()],
        (n, "" | "raw" | "addr" | "name") if !n.is_empty() && !n.starts_with("X-Spam-Relays") => {
            vec![plain(n)]
        }
        _ => return Err(format!("header {spec:?} has no Moat target")),
    };
    // SpamAssassin takes any word as a header name; a target names a printable one.
    if targets.iter().any(|t| crate::Target::parse(t).is_none()) {
        return Err(format!("header {spec:?} is not a header name"));
    }
    Ok(targets)
}

fn parse_line(kind: &str, rest: &str, opts: &CompileOptions) -> Result<Kind, String> {
    let rest = rest.trim();
    if rest.starts_with("eval:") {
        return Err("eval: tests run Perl code".into());
    }
    match kind {
        "meta" => Ok(Kind::Meta(rest.to_string())),
        "header" => {
            if let Some(h) = rest.strip_prefix("exists:") {
                return Ok(Kind::Regex {
                    targets: header_targets(h.trim())?,
                    pattern: "^".into(),
                    nocase: false,
                    negate: false,
                });
            }
            let (spec, op_re) = rest
                .split_once(char::is_whitespace)
                .ok_or("header rule without operator")?;
            let op_re = op_re.trim();
            let (negate, re) = if let Some(r) = op_re.strip_prefix("=~") {
                (false, r)
            } else if let Some(r) = op_re.strip_prefix("!~") {
                (true, r)
            } else {
                return Err(format!("unknown header operator in {op_re:?}"));
            };
            // `[if-unset: ...]` gives a default for a missing header; Moat sees no value.
            let re = re.split(" [if-unset:").next().unwrap_or(re);
            let (pattern, flags) = split_perl_regex(re)?;
            Ok(Kind::Regex {
                targets: header_targets(spec)?,
                pattern: perl_to_rust(&pattern, &flags, opts)?,
                nocase: flags.contains('i'),
                negate,
            })
        }
        "body" | "rawbody" | "uri" | "full" => {
            let (pattern, mut flags) = split_perl_regex(rest)?;
            // SpamAssassin matches body rules paragraph by paragraph; Moat's body is one
            // value, so `^` and `$` are made to work at line starts and ends.
            if matches!(kind, "body" | "rawbody") && !flags.contains('m') {
                flags.push('m');
            }
            let targets = match kind {
                "body" => vec!["body".to_string()],
                "rawbody" => vec!["text".into(), "html-raw".into()],
                "uri" => vec!["url".into()],
                _ => vec!["full".into()],
            };
            Ok(Kind::Regex {
                targets,
                pattern: perl_to_rust(&pattern, &flags, opts)?,
                nocase: flags.contains('i'),
                negate: false,
            })
        }
        _ => Err(format!("{kind} rules are not converted")),
    }
}

/// Reads SpamAssassin `.cf` files and converts their rules into a pack.
pub fn spamassassin(files: &[PathBuf], options: &ImportOptions) -> Result<ImportReport, Error> {
    let mut sources = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|source| Error::Io {
            path: f.clone(),
            source,
        })?;
        sources.push((f.clone(), bytes));
    }
    Ok(spamassassin_sources(&sources, options))
}

/// Converts rule file contents (file name, bytes) into a pack. Later definitions of a rule
/// replace earlier ones, as in SpamAssassin.
pub fn spamassassin_sources(
    sources: &[(PathBuf, Vec<u8>)],
    options: &ImportOptions,
) -> ImportReport {
    // Pass 1: collect lines per rule (cheap, sequential).
    let mut raw: BTreeMap<String, (PathBuf, usize, String, String)> = BTreeMap::new();
    let mut scores: HashMap<String, f64> = HashMap::new();
    let mut describe: HashMap<String, String> = HashMap::new();
    let mut tflags: HashMap<String, String> = HashMap::new();
    let mut skipped: BTreeMap<String, Skipped> = BTreeMap::new();
    for (file, bytes) in sources {
        // Rule files are Latin-1 or raw bytes; keep every byte as one char so that the
        // regex sees the same bytes (non-ASCII bytes become `\xNN` escapes below).
        let text: String = bytes.iter().map(|b| char::from(*b)).collect();
        for (n, line) in text.lines().enumerate() {
            let line = strip_comment(line).trim();
            let (kw, after) = split_word(line);
            let (name, rest) = split_word(after);
            if name.is_empty() {
                continue;
            }
            let rest = rest.to_string();
            match kw {
                "header" | "body" | "rawbody" | "uri" | "full" | "meta" | "mimeheader" => {
                    skipped.remove(name);
                    raw.insert(
                        name.to_string(),
                        (file.clone(), n + 1, kw.to_string(), rest),
                    );
                }
                "score" => {
                    let vals: Vec<f64> = rest
                        .split_whitespace()
                        .map_while(|v| v.parse().ok())
                        .collect();
                    if let Some(v) = vals.first() {
                        scores.insert(name.to_string(), *v);
                    }
                }
                "describe" => {
                    describe.insert(name.to_string(), rest);
                }
                "tflags" => {
                    tflags.insert(name.to_string(), rest);
                }
                _ => {}
            }
        }
    }
    // Pass 2: convert regexes in parallel (each one is compiled to check it).
    let defs: Vec<Def> = raw
        .into_par_iter()
        .map(|(name, (file, line, kw, rest))| {
            let rest = latin1_to_escapes(&rest);
            let kind = if !crate::compile::valid_id(&name) {
                // SpamAssassin itself only warns about such names.
                Err("the name is not a valid rule id (a letter or `_`, then letters, digits, `_` or `.`)".into())
            } else if kw == "mimeheader" {
                Err("mimeheader: MIME part headers are not a Moat target".into())
            } else {
                parse_line(&kw, &rest, &options.compile)
            };
            Def {
                name,
                file,
                line,
                kind,
            }
        })
        .collect();
    let mut ok: BTreeMap<String, Def> = BTreeMap::new();
    for d in defs {
        match &d.kind {
            Ok(_) => {
                ok.insert(d.name.clone(), d);
            }
            Err(reason) => {
                skipped.insert(
                    d.name.clone(),
                    Skipped {
                        rule: d.name.clone(),
                        file: d.file.clone(),
                        line: d.line,
                        reason: reason.clone(),
                    },
                );
            }
        }
    }
    // Drop metas that do not parse or refer to missing rules, until nothing changes.
    loop {
        let mut drop = Vec::new();
        for d in ok.values() {
            let Ok(Kind::Meta(expr)) = &d.kind else {
                continue;
            };
            let reason = match meta::parse(expr) {
                Err(e) => Some(format!("meta expression does not parse: {e}")),
                Ok(e) => {
                    let mut missing = BTreeSet::new();
                    e.visit(&mut |r| {
                        if let NameRef::Exact(n) = r
                            && !ok.contains_key(n)
                        {
                            missing.insert(n.clone());
                        }
                    });
                    (!missing.is_empty()).then(|| {
                        let list: Vec<String> = missing.into_iter().collect();
                        let why = list
                            .iter()
                            .map(|m| match skipped.get(m) {
                                Some(s) => format!("{m} ({})", s.reason),
                                None => format!("{m} (not defined)"),
                            })
                            .collect::<Vec<_>>()
                            .join(", ");
                        format!("meta refers to unconverted rules: {why}")
                    })
                }
            };
            if let Some(r) = reason {
                drop.push((d.name.clone(), r));
            }
        }
        if drop.is_empty() {
            break;
        }
        for (name, reason) in drop {
            if let Some(d) = ok.remove(&name) {
                skipped.insert(
                    name.clone(),
                    Skipped {
                        rule: name,
                        file: d.file,
                        line: d.line,
                        reason,
                    },
                );
            }
        }
    }
    let pack = write_pack(&ok, &scores, &describe, &tflags, options);
    ImportReport {
        pack,
        converted: ok.len(),
        skipped: skipped.into_values().collect(),
    }
}

/// Turns chars U+0080..U+00FF (bytes of a Latin-1 read) into `\xNN` escapes, which in the
/// `(?-u)` mode of converted regexes match exactly that byte.
fn latin1_to_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) >= 0x80 {
            out.push_str(&format!("\\x{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// SpamAssassin's score for a rule without a `score` line: 0 for `__` sub-rules, 0.01 for
/// `T_` test rules, -1 for rules flagged `nice`, else 1.
fn default_score(name: &str, tflags: Option<&str>) -> f64 {
    if name.starts_with("__") {
        0.0
    } else if name.starts_with("T_") {
        0.01
    } else if tflags.is_some_and(|f| f.split_whitespace().any(|w| w == "nice")) {
        -1.0
    } else {
        1.0
    }
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// SpamAssassin counts a rule once unless its `tflags` say `multiple` (then up to
/// `maxhits=N`, or without limit).
fn max_hits(tflags: Option<&str>) -> Option<u32> {
    let words: Vec<&str> = tflags.unwrap_or("").split_whitespace().collect();
    if !words.contains(&"multiple") {
        return Some(1);
    }
    words
        .iter()
        .find_map(|w| w.strip_prefix("maxhits="))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
}

/// A SpamAssassin meta expression in Moat's syntax: there a rule name stands for its hit
/// count, which for a `multiple` rule is Moat's `hits(NAME)` (a bare name is 0 or 1).
fn counted_meta(expr: &str, tflags: &HashMap<String, String>) -> String {
    let multiple = |name: &str| {
        tflags
            .get(name)
            .is_some_and(|f| f.split_whitespace().any(|w| w == "multiple"))
    };
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if multiple(name) {
            out.push_str(&format!("hits({name})"));
        } else {
            out.push_str(name);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn write_pack(
    ok: &BTreeMap<String, Def>,
    scores: &HashMap<String, f64>,
    describe: &HashMap<String, String>,
    tflags: &HashMap<String, String>,
    o: &ImportOptions,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `moat rules import-spamassassin`; edit the source rules instead."
    );
    let _ = writeln!(
        s,
        "[pack]\nname = {}\nversion = {}",
        q(&o.name),
        q(&o.version)
    );
    let _ = writeln!(
        s,
        "description = {}",
        q("SpamAssassin rules converted to Moat's format")
    );
    let _ = writeln!(s, "\n[thresholds]");
    for (k, v) in [
        ("tag", o.thresholds.tag),
        ("quarantine", o.thresholds.quarantine),
        ("reject", o.thresholds.reject),
    ] {
        if let Some(v) = v {
            let _ = writeln!(s, "{k} = {v:?}");
        }
    }
    for d in ok.values() {
        let score = scores
            .get(&d.name)
            .copied()
            .unwrap_or_else(|| default_score(&d.name, tflags.get(&d.name).map(String::as_str)));
        let desc = describe.get(&d.name).map(String::as_str).unwrap_or("");
        let origin = format!(
            "{}:{}",
            Path::new(&d.file)
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default(),
            d.line
        );
        match &d.kind {
            Ok(Kind::Regex {
                targets,
                pattern,
                nocase,
                negate,
            }) => {
                let id = if *negate {
                    format!("__{}_POSITIVE", d.name.trim_start_matches('_'))
                } else {
                    d.name.clone()
                };
                let _ = writeln!(s, "\n[[rule]]\n# {origin}\nid = {}", q(&id));
                if !*negate {
                    let _ = writeln!(s, "description = {}", q(desc));
                }
                let t: Vec<String> = targets.iter().map(|t| q(t)).collect();
                let _ = writeln!(s, "target = [{}]\nregex = {}", t.join(", "), q(pattern));
                if let Some(n) = max_hits(tflags.get(&d.name).map(String::as_str)) {
                    let _ = writeln!(s, "max_hits = {n}");
                }
                if !*nocase {
                    let _ = writeln!(s, "case_sensitive = true");
                }
                if *negate {
                    let _ = writeln!(
                        s,
                        "\n[[rule]]\nid = {}\ndescription = {}\nmeta = {}",
                        q(&d.name),
                        q(desc),
                        q(&format!("!{id}"))
                    );
                }
                if score != 0.0 {
                    let _ = writeln!(s, "score = {score:?}");
                }
            }
            Ok(Kind::Meta(expr)) => {
                let _ = writeln!(
                    s,
                    "\n[[rule]]\n# {origin}\nid = {}\ndescription = {}\nmeta = {}",
                    q(&d.name),
                    q(desc),
                    q(&counted_meta(expr, tflags))
                );
                if score != 0.0 {
                    let _ = writeln!(s, "score = {score:?}");
                }
            }
            Err(_) => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_regex_table() {
        let o = CompileOptions::default();
        let ok: &[(&str, &str, &str)] = &[
            ("foo", "", "(?-u)foo"),
            ("foo", "i", "(?-u)foo"),
            ("^a.b$", "ms", "(?ms-u)^a.b$"),
            (r"a\Z", "", r"(?-u)a(?:\n?\z)"),
            (r"a\hb", "", r"(?-u)a[\t ]b"),
            (r"\/x\@y", "", r"(?-u)\/x\@y"),
            ("a{,3}", "", r"(?-u)a\{,3}"),
            ("a{2,3}b{4}", "", "(?-u)a{2,3}b{4}"),
            ("x{", "", r"(?-u)x\{"),
        ];
        for (p, f, want) in ok {
            assert_eq!(perl_to_rust(p, f, &o).as_deref(), Ok(*want), "{p}");
        }
        let bad: &[(&str, &str)] = &[
            ("a(?=b)", "look-ahead"),
            ("a(?!b)", "negative look-ahead"),
            ("(?<=a)b", "look-behind"),
            ("(?<!a)b", "negative look-behind"),
            (r"(a)\1", "back-references"),
            ("(?>a)", "atomic"),
            ("a++", "possessive"),
            (r"a\Kb", r"\K"),
            ("a(b", "regex does not compile"),
        ];
        for (p, want) in bad {
            let err = perl_to_rust(p, "", &o).unwrap_err();
            assert!(err.contains(want), "{p}: {err}");
        }
    }

    #[test]
    fn delimiters() {
        assert_eq!(
            split_perl_regex("/a\\/b/i").unwrap(),
            ("a\\/b".into(), "i".into())
        );
        assert_eq!(
            split_perl_regex("m{a/b}i").unwrap(),
            ("a/b".into(), "i".into())
        );
        assert_eq!(split_perl_regex("m!x!").unwrap(), ("x".into(), "".into()));
        assert!(split_perl_regex("/abc").is_err());
        assert!(split_perl_regex("/abc/g").is_err());
        assert!(split_perl_regex("abc").is_err());
    }

    const CF: &str = r#"
# a comment
body     LOTTO_WIN     /\bwon (?:the|our) lottery\b/i
describe LOTTO_WIN     Claims you won a lottery
score    LOTTO_WIN     2.5 2.0 1.5 1.0

body     __CASH        /\$\d+ million/
header   SUBJ_URGENT   Subject =~ /urgent/i
header   __NO_UA       User-Agent !~ /./
header   __HAS_XM      exists:X-Mailer
header   FROM_NAME_X   From:name =~ /support/i
rawbody  HTML_FORM_X   /<form/i
uri      URI_IP        m{^https?://\d+\.\d+\.\d+\.\d+}
full     FULL_GTUBE    /GTUBE/
body     LOOKAROUND    /foo(?!bar)/
header   RBL           eval:check_rbl('x', 'y.')
mimeheader MIME_X      Content-Type =~ /foo/
meta     COMBO         LOTTO_WIN && __CASH && !__NO_UA
meta     BROKEN        LOOKAROUND || LOTTO_WIN
meta     BROKEN2       BROKEN && COMBO
meta     MISSING       NOT_DEFINED_ANYWHERE
body     HASH_ESC      /C\# code/
body     NICE_LIST     /^List-Owner/
tflags   NICE_LIST     nice
body     __LOWER_X     /x/
tflags   __LOWER_X     multiple maxhits=3
meta     MANY_X        __LOWER_X > 2
header   __DUP_FROM    ALL =~ /\nFrom:.*?\nFrom:/is
header   __MISSPACED   ALL:raw =~ /^Subject:\S/ism
uri      YAHOO_RDS%DIR m{^https?://rds\.yahoo\.com/}i
header   __X_IP        exists:X-IP[[ net
"#;

    #[test]
    fn converts_and_lists_the_rest() {
        let r = spamassassin_sources(
            &[(PathBuf::from("test.cf"), CF.as_bytes().to_vec())],
            &ImportOptions::default(),
        );
        let reasons: BTreeMap<&str, &str> = r
            .skipped
            .iter()
            .map(|s| (s.rule.as_str(), s.reason.as_str()))
            .collect();
        let want_skipped = [
            ("LOOKAROUND", "negative look-ahead"),
            ("RBL", "eval:"),
            ("MIME_X", "mimeheader"),
            ("BROKEN", "LOOKAROUND (negative look-ahead"),
            ("BROKEN2", "BROKEN (meta refers"),
            ("MISSING", "NOT_DEFINED_ANYWHERE (not defined)"),
            // SpamAssassin only warns about such a name; a pack would refuse it.
            ("YAHOO_RDS%DIR", "not a valid rule id"),
            ("__X_IP", "is not a header name"),
        ];
        for (rule, why) in want_skipped {
            assert!(
                reasons.get(rule).is_some_and(|r| r.contains(why)),
                "{rule}: {reasons:?}"
            );
        }
        assert_eq!(r.skipped.len(), want_skipped.len());
        let mut listed = Vec::new();
        r.write_skipped(&mut listed).unwrap();
        let listed = String::from_utf8(listed).unwrap();
        assert!(
            listed.contains("test.cf:15: LOOKAROUND: negative look-ahead"),
            "{listed}"
        );
        assert_eq!(listed.lines().count(), want_skipped.len());
        assert_eq!(r.converted, 16);
        // `ALL` is the header block, `ALL:raw` the block as received.
        assert!(
            r.pack
                .contains("id = \"__DUP_FROM\"\ndescription = \"\"\ntarget = [\"header-block\"]"),
            "{}",
            r.pack
        );
        assert!(
            r.pack.contains(
                "id = \"__MISSPACED\"\ndescription = \"\"\ntarget = [\"raw-header-block\"]"
            ),
            "{}",
            r.pack
        );
        // `nice` rules without a score count against spam; body rules see line anchors.
        assert!(r.pack.contains("id = \"NICE_LIST\"\ndescription = \"\"\ntarget = [\"body\"]\nregex = \"(?m-u)^List-Owner\"\nmax_hits = 1\ncase_sensitive = true\nscore = -1.0"), "{}", r.pack);
        // A rule counts once unless its tflags say `multiple`.
        assert!(
            r.pack.contains("regex = \"(?m-u)x\"\nmax_hits = 3\n"),
            "{}",
            r.pack
        );
        assert_eq!(
            r.skipped
                .iter()
                .find(|s| s.rule == "LOOKAROUND")
                .unwrap()
                .line,
            15
        );

        // The pack compiles and behaves like the SpamAssassin rules.
        let rules = crate::compile_str(&r.pack, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{e}\n{}", r.pack));
        let mut t = crate::Targets::new();
        t.push_str(
            crate::Field::Body,
            "You WON THE LOTTERY: $5 million for C# code",
        );
        t.push_header("Subject", "Urgent");
        t.push_str(crate::Field::Subject, "Urgent");
        t.push_header("From", "a@example.org");
        t.push_header("User-Agent", "Mutt");
        t.push_header("From", "b@example.org");
        t.push(
            crate::Field::RawHeaderBlock,
            &b"From: a@example.org\r\nSubject:Urgent\r\n"[..],
        );
        t.push_str(crate::Field::Url, "http://10.1.2.3/x");
        let res = rules.scan(&t);
        let hits: Vec<&str> = res.packs[0].hits.iter().map(|h| h.rule.as_str()).collect();
        for want in [
            "LOTTO_WIN",
            "__CASH",
            "SUBJ_URGENT",
            "URI_IP",
            "COMBO",
            "HASH_ESC",
            "__NO_UA_POSITIVE",
            "__DUP_FROM",
            "__MISSPACED",
        ] {
            assert!(hits.contains(&want), "{want} not in {hits:?}");
        }
        assert!(!hits.contains(&"__NO_UA"), "{hits:?}");
        // Score set 0 is used: 2.5 (LOTTO_WIN) + 1 (SUBJ_URGENT) + 1 (URI_IP) + 1 (COMBO) + 1 (HASH_ESC).
        assert_eq!(res.packs[0].score, 6.5);

        // Line anchors of body rules hold at every line start, as at SpamAssassin's
        // paragraph starts.
        let mut t = crate::Targets::new();
        t.push_str(crate::Field::Body, "hello\nList-Owner: x");
        let res = rules.scan(&t);
        assert!(
            res.packs[0].hits.iter().any(|h| h.rule == "NICE_LIST"),
            "{res:?}"
        );

        // Counting stops at max_hits: once for ordinary rules, three times for __LOWER_X.
        let mut t = crate::Targets::new();
        t.push_str(crate::Field::Body, "$5 million, $6 million; x x x x x");
        let res = rules.scan(&t);
        let count = |id: &str| {
            res.packs[0]
                .hits
                .iter()
                .find(|h| h.rule == id)
                .map(|h| h.count)
        };
        assert_eq!(count("__CASH"), Some(1));
        assert_eq!(count("__LOWER_X"), Some(3));
        assert_eq!(count("MANY_X"), Some(1));
        t = crate::Targets::new();
        t.push_str(crate::Field::Body, "x x");
        assert_eq!(
            rules.scan(&t).packs[0]
                .hits
                .iter()
                .find(|h| h.rule == "MANY_X"),
            None
        );
    }

    #[test]
    fn latin1_bytes_survive() {
        let cf = b"body ACCENT /caf\xe9/\n";
        let r = spamassassin_sources(
            &[(PathBuf::from("l.cf"), cf.to_vec())],
            &ImportOptions::default(),
        );
        assert_eq!(r.converted, 1, "{:?}", r.skipped);
        let rules = crate::compile_str(&r.pack, &CompileOptions::default()).unwrap();
        let mut t = crate::Targets::new();
        t.push(crate::Field::Body, b"un caf\xe9 noir".to_vec());
        assert_eq!(rules.scan(&t).packs[0].hits.len(), 1);
    }
}
