//! IP allow and block lists: addresses and CIDR ranges, compiled into sorted, merged
//! ranges searched by binary search, held in an [`ArcSwap`] snapshot.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use crate::error::{PolicyError, ReloadOutcome, entries, file_name, read_list_file};

pub use moat_core::{canonical, client_net};

/// Where one list's entries come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpListSource {
    /// Addresses or CIDR ranges given in the configuration (`192.0.2.7`, `2001:db8::/32`).
    pub inline: Vec<String>,
    /// Files with one address or range per line; `#` starts a comment.
    pub files: Vec<PathBuf>,
}

/// The configuration of the IP lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpListsConfig {
    /// Clients that skip the block list and the rate limits (and, in the node, the checks
    /// the configuration names, such as DNS block lists).
    pub allow: IpListSource,
    /// Clients refused at connect (`554 5.7.1`).
    pub block: IpListSource,
}

/// A compiled list of addresses and ranges. Immutable; matching is two binary searches.
///
/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) matches the IPv4 entries, since a
/// dual-stack listener reports IPv4 clients that way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpList {
    /// Builds a list from networks.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Parses one entry: an address or a CIDR range. Host bits of a range are ignored
    /// (`192.0.2.7/24` means `192.0.2.0/24`). A mapped IPv6 entry is stored as IPv4.
    pub fn parse_entry(entry: &str) -> Result<IpNet, String> {
        let net = if entry.contains('/') {
            entry
                .parse::<IpNet>()
                .map_err(|_| format!("not an address or CIDR range: {entry:?}"))?
                .trunc()
        } else {
            IpNet::from(
                entry
                    .parse::<IpAddr>()
                    .map_err(|_| format!("not an address or CIDR range: {entry:?}"))?,
            )
        };
        Ok(match net {
            IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
                Some(v4) if n.prefix_len() >= 96 => {
                    // Prefix lengths of 96 and above stay within the mapped range.
                    IpNet::V4(
                        Ipv4Net::new(v4, n.prefix_len() - 96).unwrap_or_else(|_| Ipv4Net::from(v4)),
                    )
                }
                _ => IpNet::V6(n),
            },
            v4 => v4,
        })
    }

    /// Parses list text (one entry per line, `#` comments). `source_name` names the text in
    /// errors (a path, or `inline`).
    pub fn parse(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let mut nets = Vec::new();
        for (line, entry) in entries(text) {
            nets.push(
                Self::parse_entry(entry).map_err(|m| PolicyError::syntax(source_name, line, m))?,
            );
        }
        Ok(Self::from_nets(nets))
    }

    /// Reads inline entries and files of one source.
    pub fn load(source: &IpListSource) -> Result<Self, PolicyError> {
        let mut nets = Vec::new();
        for (i, entry) in source.inline.iter().enumerate() {
            nets.push(
                Self::parse_entry(entry.trim())
                    .map_err(|m| PolicyError::syntax("inline", i + 1, m))?,
            );
        }
        for path in &source.files {
            let text = read_list_file(path)?;
            let name = file_name(path);
            for (line, entry) in entries(&text) {
                nets.push(
                    Self::parse_entry(entry).map_err(|m| PolicyError::syntax(&name, line, m))?,
                );
            }
        }
        Ok(Self::from_nets(nets))
    }

    /// Whether `ip` is in the list.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of disjoint ranges after merging overlapping and adjacent entries.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

fn merge<T: Ord + Copy + Bounded>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = out.last_mut()
            && (start <= last.1 || last.1.succ() == Some(start))
        {
            last.1 = last.1.max(end);
            continue;
        }
        out.push((start, end));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only candidate.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && ranges[i - 1].1 >= x
}

trait Bounded: Sized {
    fn succ(self) -> Option<Self>;
}

impl Bounded for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bounded for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// How a client address stands with the lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpClass {
    /// On the allow list (which wins over the block list).
    Allowed,
    /// On the block list and not on the allow list.
    Blocked,
    /// On neither.
    Neutral,
}

/// One consistent pair of allow and block lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpLists {
    /// The allow list.
    pub allow: IpList,
    /// The block list.
    pub block: IpList,
}

impl IpLists {
    /// Reads and compiles both lists.
    pub fn load(config: &IpListsConfig) -> Result<Self, PolicyError> {
        Ok(Self {
            allow: IpList::load(&config.allow)?,
            block: IpList::load(&config.block)?,
        })
    }

    /// Classifies a client address. The allow list wins.
    pub fn classify(&self, ip: IpAddr) -> IpClass {
        if self.allow.contains(ip) {
            IpClass::Allowed
        } else if self.block.contains(ip) {
            IpClass::Blocked
        } else {
            IpClass::Neutral
        }
    }
}

/// The live IP lists: a snapshot readers load without locking, and the sources to rebuild
/// it from on [`IpListStore::reload`].
#[derive(Debug)]
pub struct IpListStore {
    config: IpListsConfig,
    current: ArcSwap<IpLists>,
}

impl IpListStore {
    /// Loads the lists; fails (naming file and line) if any source is broken.
    pub fn new(config: IpListsConfig) -> Result<Self, PolicyError> {
        let lists = IpLists::load(&config)?;
        Ok(Self {
            config,
            current: ArcSwap::from_pointee(lists),
        })
    }

    /// The current snapshot; keep it for the whole decision.
    pub fn snapshot(&self) -> Arc<IpLists> {
        self.current.load_full()
    }

    /// Re-reads the sources. On any error the current snapshot stays in place and the error
    /// is returned for the caller to log and count.
    pub fn reload(&self) -> Result<ReloadOutcome, PolicyError> {
        let lists = IpLists::load(&self.config)?;
        if *self.current.load_full() == lists {
            return Ok(ReloadOutcome::Unchanged);
        }
        self.current.store(Arc::new(lists));
        Ok(ReloadOutcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matching() {
        let list = IpList::parse(
            "192.0.2.0/24\n198.51.100.7 # one host\n\n# comment\n2001:db8::/32\n10.0.0.0/8\n10.1.0.0/16\n::ffff:203.0.113.0/120\n",
            "t",
        )
        .unwrap();
        // 10.1/16 merges into 10/8; the mapped /120 becomes 203.0.113.0/24.
        assert_eq!(list.ranges(), 5);
        let cases = [
            ("192.0.2.0", true),
            ("192.0.2.255", true),
            ("192.0.3.0", false),
            ("192.0.1.255", false),
            ("198.51.100.7", true),
            ("198.51.100.8", false),
            ("::ffff:192.0.2.9", true),
            ("::ffff:192.0.3.9", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("203.0.113.77", true),
            ("::ffff:203.0.113.77", true),
            ("::1", false),
        ];
        for (addr, want) in cases {
            assert_eq!(list.contains(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn adjacent_and_full_ranges_merge() {
        let list = IpList::parse("0.0.0.0/1\n128.0.0.0/1\n::/0\n", "t").unwrap();
        assert_eq!(list.ranges(), 2);
        for addr in ["0.0.0.0", "255.255.255.255", "::", "ffff::1"] {
            assert!(list.contains(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn syntax_errors_name_source_and_line() {
        let cases = [
            ("192.0.2.1\nnot-an-ip\n", 2),
            ("# c\n\n192.0.2.0/33\n", 3),
            ("192.0.2.1/", 1),
        ];
        for (text, line) in cases {
            let err = IpList::parse(text, "lists/block.txt").unwrap_err();
            assert_eq!(err.source_name(), Some("lists/block.txt"), "{text:?}");
            assert_eq!(err.line(), Some(line), "{text:?}");
            assert!(
                err.to_string()
                    .starts_with(&format!("lists/block.txt:{line}: "))
            );
            assert!(!err.is_transient());
        }
        let err = IpList::load(&IpListSource {
            inline: vec!["192.0.2.1".into(), "bogus".into()],
            files: vec![],
        })
        .unwrap_err();
        assert_eq!((err.source_name(), err.line()), (Some("inline"), Some(2)));
    }

    #[test]
    fn allow_wins_over_block() {
        let lists = IpLists {
            allow: IpList::parse("192.0.2.10\n", "a").unwrap(),
            block: IpList::parse("192.0.2.0/24\n", "b").unwrap(),
        };
        let cases = [
            ("192.0.2.10", IpClass::Allowed),
            ("192.0.2.11", IpClass::Blocked),
            ("::ffff:192.0.2.11", IpClass::Blocked),
            ("198.51.100.1", IpClass::Neutral),
        ];
        for (addr, want) in cases {
            assert_eq!(lists.classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn reload_keeps_old_snapshot_on_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block.txt");
        std::fs::write(&path, "192.0.2.0/24\n").unwrap();
        let store = IpListStore::new(IpListsConfig {
            block: IpListSource {
                inline: vec![],
                files: vec![path.clone()],
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(store.reload().unwrap(), ReloadOutcome::Unchanged);

        // Broken: the old list stays.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "198.51.100.0/24\n300.1.2.3").unwrap();
        let err = store.reload().unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("block.txt:3:"));
        let snap = store.snapshot();
        assert_eq!(snap.classify(ip("192.0.2.1")), IpClass::Blocked);
        assert_eq!(snap.classify(ip("198.51.100.1")), IpClass::Neutral);

        // Missing file: the old list stays too.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(store.reload().unwrap_err().kind(), crate::ErrorKind::Io);
        assert_eq!(store.snapshot().classify(ip("192.0.2.1")), IpClass::Blocked);

        // Fixed: the new list applies.
        std::fs::write(&path, "198.51.100.0/24\n").unwrap();
        assert_eq!(store.reload().unwrap(), ReloadOutcome::Applied);
        let snap = store.snapshot();
        assert_eq!(snap.classify(ip("192.0.2.1")), IpClass::Neutral);
        assert_eq!(snap.classify(ip("198.51.100.1")), IpClass::Blocked);
    }

    #[test]
    fn client_nets() {
        let cases = [
            ("192.0.2.77", "192.0.2.0/24"),
            ("::ffff:192.0.2.77", "192.0.2.0/24"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ];
        for (addr, want) in cases {
            assert_eq!(client_net(ip(addr)).to_string(), want, "{addr}");
        }
    }
}
