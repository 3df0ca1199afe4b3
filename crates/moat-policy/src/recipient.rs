//! Recipient filtering at RCPT TO: blocked recipients, and a recipient directory for the
//! accepted domains (one address or `*@domain` pattern per line) that is hot-reloadable and
//! checked for staleness.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::address::{normalize_address, normalize_domain, split};
use crate::error::{PolicyError, ReloadOutcome, entries, file_name, read_list_file};

/// What to do once the directory file is older than `stale_after_secs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaleAction {
    /// Keep refusing unknown users from the last directory (log and metric only).
    #[default]
    KeepChecking,
    /// Accept every recipient of an accepted domain until the directory is refreshed, so
    /// new users are not refused by an export job that stopped.
    AcceptAll,
}

/// The recipient filter's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientConfig {
    /// Domains this node accepts mail for. The directory applies to these only; other
    /// domains are a relay decision, made elsewhere.
    pub accepted_domains: Vec<String>,
    /// The recipient directory file: one address or `*@domain` per line, `#` comments.
    /// Without one every recipient of an accepted domain is accepted.
    pub directory: Option<PathBuf>,
    /// Recipients refused at RCPT (`550 5.7.1`), addresses or `*@domain`, any domain.
    pub blocked_recipients: Vec<String>,
    /// Age of the directory file (by modification time) beyond which it counts as stale.
    pub stale_after_secs: Option<u64>,
    /// What to do with a stale directory.
    pub stale_action: StaleAction,
}

/// A set of addresses and `*@domain` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

impl AddressSet {
    /// Parses one entry: `user@domain` or `*@domain`.
    fn insert(&mut self, entry: &str) -> Result<(), String> {
        let n = normalize_address(entry);
        match split(&n) {
            Some(("*", domain)) => {
                self.domains.insert(domain.to_owned());
            }
            Some((local, _)) if !local.contains('*') => {
                self.addresses.insert(n);
            }
            _ => return Err(format!("not an address or *@domain pattern: {entry:?}")),
        }
        Ok(())
    }

    /// Parses list text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let mut set = Self::default();
        for (line, entry) in entries(text) {
            set.insert(entry)
                .map_err(|m| PolicyError::syntax(source_name, line, m))?;
        }
        Ok(set)
    }

    /// Whether a normalized address is in the set.
    fn contains(&self, addr: &str, domain: &str) -> bool {
        self.addresses.contains(addr) || self.domains.contains(domain)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One loaded directory: its entries and the file's modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// The entries.
    pub entries: AddressSet,
    /// The file's modification time when it was read.
    pub modified: SystemTime,
}

impl Directory {
    fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| PolicyError::io(path, &e))?;
        let text = read_list_file(path)?;
        Ok(Self {
            entries: AddressSet::parse(&text, &file_name(path))?,
            modified,
        })
    }

    /// How long ago the file was last modified (zero if its time is in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.modified).unwrap_or_default()
    }
}

/// The recipient filter's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RcptDecision {
    /// Accepted (listed, postmaster, or no directory).
    Accept,
    /// Not an accepted domain: not this filter's business.
    NotLocal,
    /// On the blocked-recipients list.
    Blocked,
    /// An accepted domain, but not in the directory.
    Unknown,
    /// Not in the directory, accepted because the directory is stale and the policy says so.
    StaleAccept,
}

/// The recipient filter: blocked recipients, accepted domains and the live directory.
#[derive(Debug)]
pub struct RecipientFilter {
    accepted: HashSet<String>,
    blocked: AddressSet,
    directory_path: Option<PathBuf>,
    directory: Option<ArcSwap<Directory>>,
    stale_after: Option<Duration>,
    stale_action: StaleAction,
    stale: AtomicBool,
}

impl RecipientFilter {
    /// Validates the configuration and reads the directory.
    pub fn new(config: &RecipientConfig) -> Result<Self, PolicyError> {
        let mut blocked = AddressSet::default();
        for (i, entry) in config.blocked_recipients.iter().enumerate() {
            blocked
                .insert(entry)
                .map_err(|m| PolicyError::syntax("blocked_recipients", i + 1, m))?;
        }
        if config.stale_after_secs == Some(0) {
            return Err(PolicyError::config("stale_after_secs must be above zero"));
        }
        let directory = match &config.directory {
            Some(path) => Some(ArcSwap::from_pointee(Directory::load(path)?)),
            None => None,
        };
        Ok(Self {
            accepted: config
                .accepted_domains
                .iter()
                .map(|d| normalize_domain(d))
                .collect(),
            blocked,
            directory_path: config.directory.clone(),
            directory,
            stale_after: config.stale_after_secs.map(Duration::from_secs),
            stale_action: config.stale_action,
            stale: AtomicBool::new(false),
        })
    }

    /// The current directory snapshot, if a directory is configured.
    pub fn directory(&self) -> Option<Arc<Directory>> {
        self.directory.as_ref().map(|d| d.load_full())
    }

    /// Re-reads the directory file. On any error the current directory stays. A file
    /// touched without changes counts as applied, since it resets the age.
    pub fn reload(&self) -> Result<ReloadOutcome, PolicyError> {
        let (Some(path), Some(current)) = (&self.directory_path, &self.directory) else {
            return Ok(ReloadOutcome::Unchanged);
        };
        let fresh = Directory::load(path)?;
        if *current.load_full() == fresh {
            return Ok(ReloadOutcome::Unchanged);
        }
        current.store(Arc::new(fresh));
        Ok(ReloadOutcome::Applied)
    }

    /// The directory's age at `now`, if a directory is configured.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.directory().map(|d| d.age(now))
    }

    /// Whether the directory is stale at `now`. Logs once when it becomes stale and once
    /// when it is fresh again.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        let (Some(limit), Some(age)) = (self.stale_after, self.age(now)) else {
            return false;
        };
        let stale = age > limit;
        if self.stale.swap(stale, Ordering::Relaxed) != stale {
            if stale {
                tracing::warn!(
                    age_secs = age.as_secs(),
                    limit_secs = limit.as_secs(),
                    action = ?self.stale_action,
                    "recipient directory is stale"
                );
            } else {
                tracing::info!(
                    age_secs = age.as_secs(),
                    "recipient directory is fresh again"
                );
            }
        }
        stale
    }

    /// Decides about one recipient at `now` (the time matters for staleness only).
    pub fn check(&self, rcpt: &str, now: SystemTime) -> RcptDecision {
        let addr = normalize_address(rcpt);
        // RFC 5321 4.5.1: bare "postmaster" must always be accepted.
        if addr == "postmaster" {
            return RcptDecision::Accept;
        }
        let Some((local, domain)) = split(&addr) else {
            return RcptDecision::NotLocal;
        };
        if self.blocked.contains(&addr, domain) {
            return RcptDecision::Blocked;
        }
        if !self.accepted.contains(domain) {
            return RcptDecision::NotLocal;
        }
        let Some(dir) = self.directory() else {
            return RcptDecision::Accept;
        };
        if local == "postmaster" || dir.entries.contains(&addr, domain) {
            return RcptDecision::Accept;
        }
        if self.is_stale(now) && self.stale_action == StaleAction::AcceptAll {
            return RcptDecision::StaleAccept;
        }
        RcptDecision::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn set_age(path: &std::path::Path, age: Duration) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    fn filter(dir: &tempfile::TempDir, text: &str, action: StaleAction) -> RecipientFilter {
        let path = dir.path().join("recipients.txt");
        std::fs::write(&path, text).unwrap();
        RecipientFilter::new(&RecipientConfig {
            accepted_domains: vec!["Example.com".into(), "catch.example".into()],
            directory: Some(path),
            blocked_recipients: vec!["ceo@example.com".into(), "*@blocked.example".into()],
            stale_after_secs: Some(3600),
            stale_action: action,
        })
        .unwrap()
    }

    #[test]
    fn decisions() {
        let dir = tempfile::tempdir().unwrap();
        let f = filter(
            &dir,
            "alice@example.com\nBob@Example.com # mixed case\nceo@example.com\n*@catch.example\n",
            StaleAction::KeepChecking,
        );
        let now = SystemTime::now();
        use RcptDecision::*;
        let cases = [
            ("alice@example.com", Accept),
            ("<BOB@example.COM>", Accept),
            ("carol@example.com", Unknown),
            ("ceo@example.com", Blocked),
            ("anyone@catch.example", Accept),
            ("postmaster@example.com", Accept),
            ("postmaster", Accept),
            ("x@blocked.example", Blocked),
            ("x@elsewhere.example", NotLocal),
            ("x@sub.example.com", NotLocal),
        ];
        for (rcpt, want) in cases {
            assert_eq!(f.check(rcpt, now), want, "{rcpt}");
        }
    }

    #[test]
    fn no_directory_accepts_accepted_domains() {
        let f = RecipientFilter::new(&RecipientConfig {
            accepted_domains: vec!["example.com".into()],
            ..Default::default()
        })
        .unwrap();
        let now = SystemTime::now();
        assert_eq!(f.check("anyone@example.com", now), RcptDecision::Accept);
        assert!(f.age(now).is_none());
        assert!(!f.is_stale(now));
        assert_eq!(f.reload().unwrap(), ReloadOutcome::Unchanged);
    }

    #[test]
    fn staleness() {
        // (file age, action, expected decision for an unknown user, expected stale)
        let hour = Duration::from_secs(3600);
        let cases = [
            (
                Duration::ZERO,
                StaleAction::KeepChecking,
                RcptDecision::Unknown,
                false,
            ),
            (
                Duration::ZERO,
                StaleAction::AcceptAll,
                RcptDecision::Unknown,
                false,
            ),
            (
                hour * 2,
                StaleAction::KeepChecking,
                RcptDecision::Unknown,
                true,
            ),
            (
                hour * 2,
                StaleAction::AcceptAll,
                RcptDecision::StaleAccept,
                true,
            ),
        ];
        for (age, action, want, stale) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("recipients.txt");
            std::fs::write(&path, "alice@example.com\n").unwrap();
            set_age(&path, age);
            let f = filter_at(&path, action);
            let now = SystemTime::now();
            assert_eq!(f.is_stale(now), stale, "{age:?} {action:?}");
            assert_eq!(
                f.check("carol@example.com", now),
                want,
                "{age:?} {action:?}"
            );
            // Known users and other domains are unaffected by staleness.
            assert_eq!(f.check("alice@example.com", now), RcptDecision::Accept);
            assert_eq!(f.check("x@other.example", now), RcptDecision::NotLocal);
            let measured = f.age(now).unwrap();
            assert!(measured >= age && measured < age + Duration::from_secs(60));
        }
    }

    fn filter_at(path: &std::path::Path, action: StaleAction) -> RecipientFilter {
        RecipientFilter::new(&RecipientConfig {
            accepted_domains: vec!["example.com".into()],
            directory: Some(path.to_owned()),
            stale_after_secs: Some(3600),
            stale_action: action,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn refreshing_a_stale_directory_makes_it_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients.txt");
        std::fs::write(&path, "alice@example.com\n").unwrap();
        set_age(&path, Duration::from_secs(7200));
        let f = filter_at(&path, StaleAction::AcceptAll);
        assert!(f.is_stale(SystemTime::now()));
        // Same content, new modification time: applied, because the age resets.
        set_age(&path, Duration::ZERO);
        assert_eq!(f.reload().unwrap(), ReloadOutcome::Applied);
        assert!(!f.is_stale(SystemTime::now()));
        assert_eq!(f.reload().unwrap(), ReloadOutcome::Unchanged);
    }

    #[test]
    fn reload_keeps_old_directory_on_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = filter(&dir, "alice@example.com\n", StaleAction::KeepChecking);
        let path = dir.path().join("recipients.txt");
        let now = SystemTime::now();

        std::fs::write(&path, "carol@example.com\n# ok\nnot an address\n").unwrap();
        let err = f.reload().unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("recipients.txt:3:"), "{err}");
        assert_eq!(f.check("alice@example.com", now), RcptDecision::Accept);
        assert_eq!(f.check("carol@example.com", now), RcptDecision::Unknown);

        std::fs::write(&path, "carol@example.com\n").unwrap();
        assert_eq!(f.reload().unwrap(), ReloadOutcome::Applied);
        assert_eq!(f.check("alice@example.com", now), RcptDecision::Unknown);
        assert_eq!(f.check("carol@example.com", now), RcptDecision::Accept);
    }

    #[test]
    fn bad_patterns() {
        for entry in ["nobody", "a*@example.com", "@example.com", "*@"] {
            let err = AddressSet::parse(entry, "d").unwrap_err();
            assert_eq!(err.line(), Some(1), "{entry}");
        }
        let err = RecipientFilter::new(&RecipientConfig {
            blocked_recipients: vec!["ok@example.com".into(), "bad".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            (err.source_name(), err.line()),
            (Some("blocked_recipients"), Some(2))
        );
    }
}
