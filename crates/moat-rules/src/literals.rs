//! Finding every occurrence of a target's literals (rule literals and regex factors),
//! overlapping, in the value folded by [`canon`] (ASCII case and white space).
//!
//! A small set goes to an aho-corasick automaton. A large one (the thousands of factors of
//! an imported SpamAssassin pack) makes that automaton's transition table too big for the
//! CPU caches, and every byte of the value costs a cache miss. For those, each literal is
//! anchored on its rarest three bytes ([`crate::rarity`]); one pass hashes every
//! three-byte window of the folded value into an 8 KiB bit filter, and only the windows
//! whose bit is set look up the literals anchored there and compare them. This is the
//! idea of Hyperscan's FDR, without its SIMD.
//!
//! Both report the same occurrences in the same order: by end, then longest first (the
//! order of an overlapping aho-corasick search), so the first occurrence a rule records
//! does not depend on the searcher.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::rarity;

/// Length of the anchors.
const ANCHOR: usize = 3;
/// Literal sets at least this large use the anchor filter.
const FILTER_FROM: usize = 500;
/// Bits of the filter's hash (2^16 bits = 8 KiB).
const FILTER_BITS: u32 = 16;

/// One occurrence: literal number, start, end.
pub(crate) type Occurrence = (u32, usize, usize);

/// The searcher for one target's literals.
#[derive(Debug, Clone)]
pub(crate) enum Literals {
    Automaton(AhoCorasick),
    Filter(Box<AnchorFilter>),
}

/// A literal found through its anchor.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    lit: u32,
    /// Offset of the anchor in the literal.
    off: u32,
    len: u32,
    /// The literal's first (up to) eight bytes, little-endian, and the mask of those bytes:
    /// most candidates that do not match are told apart by one comparison.
    head: u64,
    mask: u64,
}

/// Literals found through their anchors.
#[derive(Debug, Clone)]
pub(crate) struct AnchorFilter {
    /// Bit `hash(anchor)` set for every anchor.
    filter: Vec<u64>,
    /// Open addressing over anchors: (anchor + 1, first candidate, candidate count);
    /// anchor 0 marks an empty slot.
    slots: Vec<(u32, u32, u32)>,
    slot_bits: u32,
    /// The literals, grouped by anchor.
    candidates: Vec<Candidate>,
    lits: Vec<Box<[u8]>>,
    /// Literals shorter than an anchor: their automaton and their literal numbers.
    short: Option<(AhoCorasick, Vec<u32>)>,
}

fn automaton(patterns: &[Vec<u8>]) -> Result<AhoCorasick, String> {
    let bytes: usize = patterns.iter().map(Vec::len).sum();
    let mut b = AhoCorasick::builder();
    b.match_kind(MatchKind::Standard);
    // A DFA is the fastest searcher; keep it for automata of reasonable size.
    if bytes <= 256 * 1024 {
        b.kind(Some(AhoCorasickKind::DFA));
    }
    b.build(patterns).map_err(|e| e.to_string())
}

/// The byte the literal search sees for `b`: ASCII letters lower-cased, and every ASCII
/// white-space byte (`\t \n \v \f \r`) as a space. Literals and regex factors are
/// folded the same way, so `\s` in a regex is a space in its factors (`click\s+here`
/// yields the factor `click `).
#[inline]
pub(crate) fn canon(b: u8) -> u8 {
    const TABLE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            t[i] = match b {
                b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => b' ',
                _ => b.to_ascii_lowercase(),
            };
            i += 1;
        }
        t
    };
    TABLE[usize::from(b)]
}

/// `bytes` folded with [`canon`].
pub(crate) fn canonical(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|&b| canon(b)).collect()
}

#[inline]
fn key(a: u8, b: u8, c: u8) -> u32 {
    u32::from(a) | u32::from(b) << 8 | u32::from(c) << 16
}

#[inline]
fn spread(key: u32) -> u32 {
    key.wrapping_mul(0x9E37_79B1)
}

impl Literals {
    /// A searcher for `patterns` (folded with [`canon`], non-empty, distinct).
    pub(crate) fn new(patterns: &[Vec<u8>]) -> Result<Literals, String> {
        if patterns.len() < FILTER_FROM {
            return automaton(patterns).map(Literals::Automaton);
        }
        let mut short = Vec::new();
        let mut anchored: Vec<(u32, u32, u32)> = Vec::new();
        // Literals sharing an anchor are all compared wherever it occurs: an anchor's cost
        // grows with the literals already on it, which spreads large lists of similar
        // literals over several anchors.
        let mut load: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for (i, p) in patterns.iter().enumerate() {
            if p.len() < ANCHOR {
                short.push(i);
                continue;
            }
            let cost = |off: usize| {
                let k = key(p[off], p[off + 1], p[off + 2]);
                let shared = load.get(&k).copied().unwrap_or(0) as f64;
                rarity::per_kib(&p[off..off + ANCHOR]).max(0.01) * (1.0 + shared / 32.0)
            };
            let off = (0..=p.len() - ANCHOR)
                .min_by(|a, b| cost(*a).total_cmp(&cost(*b)))
                .unwrap_or(0);
            let k = key(p[off], p[off + 1], p[off + 2]);
            *load.entry(k).or_default() += 1;
            anchored.push((k, i as u32, off as u32));
        }
        anchored.sort_unstable();
        let mut filter = vec![0u64; 1 << (FILTER_BITS - 6)];
        let groups = anchored.chunk_by(|a, b| a.0 == b.0).count();
        let slot_bits = (2 * groups).next_power_of_two().trailing_zeros().max(4);
        let mut slots = vec![(0u32, 0u32, 0u32); 1 << slot_bits];
        let mut candidates = Vec::with_capacity(anchored.len());
        for group in anchored.chunk_by(|a, b| a.0 == b.0) {
            let k = group[0].0;
            let bit = spread(k) >> (32 - FILTER_BITS);
            filter[(bit >> 6) as usize] |= 1 << (bit & 63);
            let mut slot = (spread(k) >> (32 - slot_bits)) as usize;
            while slots[slot].0 != 0 {
                slot = (slot + 1) & ((1 << slot_bits) - 1);
            }
            slots[slot] = (k + 1, candidates.len() as u32, group.len() as u32);
            candidates.extend(group.iter().map(|&(_, lit, off)| {
                let p = &patterns[lit as usize];
                let n = p.len().min(8);
                let mut head = [0u8; 8];
                head[..n].copy_from_slice(&p[..n]);
                Candidate {
                    lit,
                    off,
                    len: p.len() as u32,
                    head: u64::from_le_bytes(head),
                    mask: if n == 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * n)) - 1
                    },
                }
            }));
        }
        let short = if short.is_empty() {
            None
        } else {
            let pats: Vec<Vec<u8>> = short.iter().map(|&i| patterns[i].clone()).collect();
            Some((automaton(&pats)?, short.iter().map(|&i| i as u32).collect()))
        };
        Ok(Literals::Filter(Box::new(AnchorFilter {
            filter,
            slots,
            slot_bits,
            candidates,
            lits: patterns
                .iter()
                .map(|p| p.clone().into_boxed_slice())
                .collect(),
            short,
        })))
    }

    /// Every occurrence in `hay` of a literal, both folded with [`canon`], appended to
    /// `out` (cleared first) by end, longest first. `folded` is scratch space.
    pub(crate) fn find_all(&self, hay: &[u8], out: &mut Vec<Occurrence>, folded: &mut Vec<u8>) {
        out.clear();
        folded.clear();
        folded.extend(hay.iter().map(|&b| canon(b)));
        let hay = &folded[..];
        match self {
            Literals::Automaton(ac) => out.extend(
                ac.find_overlapping_iter(hay)
                    .map(|m| (m.pattern().as_u32(), m.start(), m.end())),
            ),
            Literals::Filter(a) => {
                a.find_all(hay, out);
                if let Some((ac, ids)) = &a.short {
                    out.extend(
                        ac.find_overlapping_iter(hay)
                            .map(|m| (ids[m.pattern().as_usize()], m.start(), m.end())),
                    );
                }
                out.sort_unstable_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(&b.1)));
            }
        }
    }
}

impl AnchorFilter {
    /// The occurrences of the anchored literals in `hay`, already folded.
    fn find_all(&self, hay: &[u8], out: &mut Vec<Occurrence>) {
        if hay.len() >= ANCHOR {
            let mask = (1usize << self.slot_bits) - 1;
            for i in 0..=hay.len() - ANCHOR {
                let k =
                    u32::from(hay[i]) | u32::from(hay[i + 1]) << 8 | u32::from(hay[i + 2]) << 16;
                let h = spread(k);
                let bit = h >> (32 - FILTER_BITS);
                if self.filter[(bit >> 6) as usize] & (1 << (bit & 63)) == 0 {
                    continue;
                }
                let mut slot = (h >> (32 - self.slot_bits)) as usize;
                let (first, count) = loop {
                    let (sk, first, count) = self.slots[slot];
                    if sk == k + 1 {
                        break (first as usize, count as usize);
                    }
                    if sk == 0 {
                        break (0, 0);
                    }
                    slot = (slot + 1) & mask;
                };
                for c in &self.candidates[first..first + count] {
                    let Some(start) = i.checked_sub(c.off as usize) else {
                        continue;
                    };
                    let end = start + c.len as usize;
                    if end > hay.len() {
                        continue;
                    }
                    let found = match hay.get(start..start + 8) {
                        Some(w) => {
                            let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
                            w & c.mask == c.head
                                && (c.len <= 8
                                    || hay[start + 8..end] == self.lits[c.lit as usize][8..])
                        }
                        None => hay[start..end] == *self.lits[c.lit as usize],
                    };
                    if found {
                        out.push((c.lit, start, end));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 600 literals over a small alphabet, so that they overlap, nest and share anchors:
    /// some shorter than an anchor, some with non-ASCII bytes.
    fn patterns() -> Vec<Vec<u8>> {
        let alphabet = b"abcde \xe9";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        while out.len() < 600 {
            let len = 1 + (next() % 7) as usize;
            let p: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    fn both(pats: &[Vec<u8>], hay: &[u8]) -> (Vec<Occurrence>, Vec<Occurrence>) {
        let anchored = Literals::new(pats).unwrap();
        assert!(matches!(anchored, Literals::Filter(_)));
        let plain = Literals::Automaton(automaton(pats).unwrap());
        let (mut a, mut b, mut l) = (Vec::new(), Vec::new(), Vec::new());
        anchored.find_all(hay, &mut a, &mut l);
        plain.find_all(hay, &mut b, &mut l);
        (a, b)
    }

    #[test]
    fn anchored_search_equals_the_automaton() {
        let pats = patterns();
        let hay = b"ABCDE abcde \xe9\xe9 dcba EDCBA aaaa bbbb cacbdbe \xe9a\xe9b ab".repeat(3);
        let (a, b) = both(&pats, &hay);
        assert!(a.len() > 100, "{}", a.len());
        assert_eq!(a, b);
        // Values shorter than an anchor still find the short literals.
        for hay in [&b""[..], b"a", b"ab", b"AB"] {
            let (a, b) = both(&pats, hay);
            assert_eq!(a, b, "{hay:?}");
        }
    }

    proptest! {
        #[test]
        fn anchored_search_equals_the_automaton_on_any_text(
            hay in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'B'), Just(b'c'), Just(b'd'), Just(b'E'),
                            Just(b' '), Just(0xe9u8), any::<u8>()],
                0..200,
            )
        ) {
            let pats = patterns();
            let (a, b) = both(&pats, &hay);
            prop_assert_eq!(a, b);
        }
    }
}
