//! The pack file format, as serde types. `rules/README.md` documents it for operators.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// One pack file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    /// Name, version and verdict settings.
    pub pack: PackHeader,
    /// Score thresholds.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDef>,
    /// The pack's own test cases.
    #[serde(default, rename = "test")]
    pub tests: Vec<TestDef>,
}

/// The `[pack]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackHeader {
    /// Pack name, unique among the loaded packs: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Free-form version, reported in headers, logs and the info metric.
    pub version: String,
    /// What the pack is for.
    #[serde(default)]
    pub description: String,
    /// Text of the 550 reply when this pack rejects a message.
    #[serde(default = "default_reject_text")]
    pub reject_text: String,
    /// Prefix added to the subject of tagged messages, if any.
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

fn default_reject_text() -> String {
    "message refused by content policy".to_string()
}

/// Score thresholds; each is optional. A score at or above a threshold takes that action,
/// the most severe one reached wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Add the `X-Moat-*` headers (and the subject prefix).
    pub tag: Option<f64>,
    /// Hold the message for an operator.
    pub quarantine: Option<f64>,
    /// Refuse with 550 5.7.1 at the end of DATA.
    pub reject: Option<f64>,
}

/// One target name, or several.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice-like vector.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Rule id, unique in the pack: starts with a letter or `_`, then letters, digits, `_`, `.`.
    pub id: Spanned<String>,
    /// What the rule detects, for people.
    #[serde(default)]
    pub description: String,
    /// Where the rule looks (not for meta rules).
    #[serde(default)]
    pub target: Option<OneOrMany>,
    /// Added to the pack's score when the rule hits (may be negative).
    #[serde(default)]
    pub score: f64,
    /// Literal substrings; the rule hits when any occurs.
    #[serde(default)]
    pub literals: Vec<String>,
    /// Whole words; the rule hits when any occurs between non-word bytes.
    #[serde(default)]
    pub words: Vec<String>,
    /// A file beside the pack with one literal (or word, with `list_as_words`) per line.
    #[serde(default)]
    pub list_file: Option<String>,
    /// Treat the entries of `list_file` as words instead of literals.
    #[serde(default)]
    pub list_as_words: bool,
    /// A regular expression over bytes (Rust `regex` syntax).
    #[serde(default)]
    pub regex: Option<String>,
    /// A boolean or counting expression over other rules of the pack.
    #[serde(default)]
    pub meta: Option<String>,
    /// Match case exactly (default: ASCII case-insensitive for literals and words,
    /// Unicode case-insensitive for regexes).
    #[serde(default)]
    pub case_sensitive: bool,
    /// Stop counting matches of this rule in a message at this many (at least 1; not for
    /// meta rules). 1 when only whether it hit matters: the scan then stops looking for
    /// the rule after its first match. Default: every match (regexes: at most 1,000 per
    /// value).
    #[serde(default)]
    pub max_hits: Option<u32>,
}

/// The envelope a message test is scanned with.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestEnvelope {
    /// `MAIL FROM` address.
    #[serde(default)]
    pub mail_from: String,
    /// `RCPT TO` addresses.
    #[serde(default)]
    pub rcpt_to: Vec<String>,
    /// HELO name.
    #[serde(default)]
    pub helo: Option<String>,
    /// Client IP address.
    #[serde(default)]
    pub client_ip: Option<String>,
}

/// One `[[test]]`: a message (inline or in a file beside the pack) or a snippet of target
/// values, with what must and must not hit and the expected verdict.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestDef {
    /// Name shown when the test fails.
    pub name: Spanned<String>,
    /// A whole message (RFC 5322 text).
    #[serde(default)]
    pub message: Option<String>,
    /// A message file, relative to the pack file.
    #[serde(default)]
    pub message_file: Option<String>,
    /// Target name → value(s), scanned as they are (no MIME walk).
    #[serde(default)]
    pub snippet: Option<BTreeMap<String, OneOrMany>>,
    /// Envelope for `message` and `message_file` tests.
    #[serde(default)]
    pub envelope: TestEnvelope,
    /// Rules that must hit.
    #[serde(default)]
    pub must_hit: Vec<String>,
    /// Rules that must not hit.
    #[serde(default)]
    pub must_not_hit: Vec<String>,
    /// Expected verdict of this pack: `continue`, `tag`, `quarantine` or `reject`.
    #[serde(default)]
    pub verdict: Option<String>,
}
