//! Sender filtering at MAIL FROM: blocked addresses, domains and sub-domains, and the
//! blank-sender (`MAIL FROM:<>`) policy.

use std::collections::HashSet;

use serde::Deserialize;

use crate::address::{domain_and_parents, normalize_address, normalize_domain, split};
use crate::error::PolicyError;

/// What to do with the null reverse path `<>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlankSender {
    /// Accept it, as RFC 5321 requires for delivery status notifications.
    #[default]
    Accept,
    /// Refuse it (`550 5.7.1`); only for connectors that never receive bounces.
    Reject,
}

/// The sender filter's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Full addresses refused at MAIL FROM (case-insensitive).
    pub blocked_senders: Vec<String>,
    /// Domains refused at MAIL FROM; only the domain itself, not its sub-domains.
    pub blocked_domains: Vec<String>,
    /// Domains refused at MAIL FROM together with all their sub-domains.
    pub blocked_domains_and_subdomains: Vec<String>,
    /// What to do with the blank sender `<>`.
    pub blank_sender: BlankSender,
}

/// Why the sender filter refused a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenderDecision {
    /// Not refused.
    Accept,
    /// The address is on the blocked list.
    BlockedAddress,
    /// The domain (or a parent domain) is blocked.
    BlockedDomain,
    /// The blank sender, refused by policy.
    BlankSender,
}

/// A compiled sender filter. Immutable.
#[derive(Debug, Clone, Default)]
pub struct SenderFilter {
    addresses: HashSet<String>,
    domains: HashSet<String>,
    domain_trees: HashSet<String>,
    blank: BlankSender,
}

impl SenderFilter {
    /// Validates and compiles the configuration; all bad entries are reported together.
    pub fn new(config: &SenderConfig) -> Result<Self, PolicyError> {
        let mut problems = Vec::new();
        let mut addresses = HashSet::new();
        for a in &config.blocked_senders {
            let n = normalize_address(a);
            if split(&n).is_none() {
                problems.push(format!("blocked_senders: not an address: {a:?}"));
            }
            addresses.insert(n);
        }
        let mut domain_set = |list: &[String], field: &str| {
            let mut set = HashSet::new();
            for d in list {
                let n = normalize_domain(d);
                if n.is_empty() || n.contains('@') || n.contains(char::is_whitespace) {
                    problems.push(format!("{field}: not a domain: {d:?}"));
                }
                set.insert(n);
            }
            set
        };
        let domains = domain_set(&config.blocked_domains, "blocked_domains");
        let domain_trees = domain_set(
            &config.blocked_domains_and_subdomains,
            "blocked_domains_and_subdomains",
        );
        if !problems.is_empty() {
            return Err(PolicyError::config(format!(
                "sender filter: {}",
                problems.join("; ")
            )));
        }
        Ok(Self {
            addresses,
            domains,
            domain_trees,
            blank: config.blank_sender,
        })
    }

    /// Decides about a reverse path (empty for `<>`).
    pub fn check(&self, mail_from: &str) -> SenderDecision {
        let addr = normalize_address(mail_from);
        if addr.is_empty() {
            return match self.blank {
                BlankSender::Accept => SenderDecision::Accept,
                BlankSender::Reject => SenderDecision::BlankSender,
            };
        }
        if self.addresses.contains(&addr) {
            return SenderDecision::BlockedAddress;
        }
        let Some((_, domain)) = split(&addr) else {
            return SenderDecision::Accept;
        };
        if self.domains.contains(domain)
            || domain_and_parents(domain).any(|d| self.domain_trees.contains(d))
        {
            return SenderDecision::BlockedDomain;
        }
        SenderDecision::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let filter = SenderFilter::new(&SenderConfig {
            blocked_senders: vec!["Spammer@Example.org".into()],
            blocked_domains: vec!["bad.example".into()],
            blocked_domains_and_subdomains: vec!["evil.test.".into()],
            blank_sender: super::BlankSender::Reject,
        })
        .unwrap();
        use SenderDecision::*;
        let cases = [
            ("spammer@example.org", BlockedAddress),
            ("<SPAMMER@example.ORG>", BlockedAddress),
            ("friend@example.org", Accept),
            ("a@bad.example", BlockedDomain),
            ("a@sub.bad.example", Accept),
            ("a@evil.test", BlockedDomain),
            ("a@mx.mail.evil.test", BlockedDomain),
            ("a@notevil.test", Accept),
            ("", BlankSender),
            ("<>", BlankSender),
        ];
        for (from, want) in cases {
            assert_eq!(filter.check(from), want, "{from:?}");
        }
        let open = SenderFilter::new(&SenderConfig::default()).unwrap();
        assert_eq!(open.check(""), Accept);
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let err = SenderFilter::new(&SenderConfig {
            blocked_senders: vec!["nobody".into()],
            blocked_domains: vec!["a@b".into()],
            blocked_domains_and_subdomains: vec![" ".into()],
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        for field in [
            "blocked_senders",
            "blocked_domains:",
            "blocked_domains_and_subdomains",
        ] {
            assert!(msg.contains(field), "{msg}");
        }
    }
}
