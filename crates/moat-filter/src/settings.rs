//! The filter's section of the node configuration, as data; [`FilterSettings::build`]
//! makes the runtime objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_rules::{Action, CompileOptions, RuleStore, Thresholds};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::extract::{Limits, MimeExtractor};
use crate::stage::{ContentFilter, FilterConfig};

/// Content filter settings (for example the `[filter]` table of the node's config file).
/// Every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSettings {
    /// Folder holding the rule packs (`*.toml`) and their list and test files.
    pub rules_dir: PathBuf,
    /// Deepest nesting of multiparts and attached messages walked.
    pub max_depth: usize,
    /// Most MIME parts walked, over all nesting levels.
    pub max_parts: usize,
    /// Most decoded bytes over all parts.
    pub max_decoded_bytes: usize,
    /// Most URLs collected per message.
    pub max_urls: usize,
    /// Verdict for a message over a walk limit: `tag`, `quarantine` or `reject`.
    pub over_limit: Action,
    /// Stamp tagged messages with `X-MS-Exchange-Organization-SCL`.
    pub scl_stamp: bool,
    /// Compiled program size limit of each regex, in bytes.
    pub regex_size_limit: usize,
    /// Lazy DFA cache limit of each regex, in bytes.
    pub dfa_size_limit: usize,
    /// How long the rules folder must be quiet before a change is reloaded, in milliseconds.
    pub watch_debounce_ms: u64,
    /// Threshold overrides by receive connector name (they replace every pack's thresholds).
    pub connectors: BTreeMap<String, Thresholds>,
}

impl Default for FilterSettings {
    fn default() -> Self {
        let limits = Limits::default();
        let compile = CompileOptions::default();
        Self {
            rules_dir: PathBuf::from("rules"),
            max_depth: limits.max_depth,
            max_parts: limits.max_parts,
            max_decoded_bytes: limits.max_decoded_bytes,
            max_urls: limits.max_urls,
            over_limit: Action::Reject,
            scl_stamp: false,
            regex_size_limit: compile.regex_size_limit,
            dfa_size_limit: compile.dfa_size_limit,
            watch_debounce_ms: 250,
            connectors: BTreeMap::new(),
        }
    }
}

impl FilterSettings {
    /// The MIME walk limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_depth,
            max_parts: self.max_parts,
            max_decoded_bytes: self.max_decoded_bytes,
            max_urls: self.max_urls,
        }
    }

    /// The rule compiler's limits.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            regex_size_limit: self.regex_size_limit,
            dfa_size_limit: self.dfa_size_limit,
            ..CompileOptions::default()
        }
    }

    /// How scores become verdicts.
    pub fn filter_config(&self) -> FilterConfig {
        FilterConfig {
            limits: self.limits(),
            over_limit: self.over_limit,
            scl_stamp: self.scl_stamp,
            connector_thresholds: self.connectors.clone().into_iter().collect(),
        }
    }

    /// The watcher's debounce.
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.watch_debounce_ms)
    }

    /// Loads, compiles and tests the rule packs; the store the stage and reloads share.
    pub fn open_store(&self) -> Result<Arc<RuleStore>, Error> {
        let extractor = Arc::new(MimeExtractor {
            limits: self.limits(),
        });
        Ok(Arc::new(RuleStore::open(
            &self.rules_dir,
            self.compile_options(),
            Some(extractor),
        )?))
    }

    /// The stage, with a freshly opened store.
    pub fn build(&self) -> Result<ContentFilter, Error> {
        Ok(ContentFilter::new(self.open_store()?, self.filter_config()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_fields() {
        let s: FilterSettings = toml::from_str(
            "rules_dir = \"packs\"\nover_limit = \"quarantine\"\nmax_parts = 50\n\
             [connectors.partners]\nreject = 20.0\n",
        )
        .unwrap();
        assert_eq!(s.rules_dir, PathBuf::from("packs"));
        assert_eq!(s.over_limit, Action::Quarantine);
        assert_eq!(s.limits().max_parts, 50);
        assert_eq!(s.limits().max_depth, Limits::default().max_depth);
        assert_eq!(s.connectors["partners"].reject, Some(20.0));
        assert_eq!(s.filter_config().connector_thresholds["partners"].tag, None);
        let err = toml::from_str::<FilterSettings>("max_part = 5\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(toml::from_str::<FilterSettings>("over_limit = \"explode\"\n").is_err());
    }

    #[test]
    fn builds_the_stage_from_the_repository_packs() {
        let s = FilterSettings {
            rules_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../rules"),
            ..FilterSettings::default()
        };
        let f = s.build().unwrap();
        assert!(
            f.store()
                .snapshot()
                .packs()
                .iter()
                .any(|p| p.name == "default")
        );
        let missing = FilterSettings {
            rules_dir: PathBuf::from("no-such-folder"),
            ..FilterSettings::default()
        };
        assert!(matches!(missing.build(), Err(Error::Rules(e)) if e.is_transient()));
    }
}
