//! How far a match of a regex can reach around a byte string it must contain.
//!
//! Every match of a regex consists only of bytes its syntax can consume (its *alphabet*)
//! and is at most its maximum length long. So a match that contains the occurrence
//! `start..end` of a required factor lies inside the run of alphabet bytes around that
//! occurrence, cut to the maximum length on each side. Searching only those windows, with
//! the whole value still visible to look-around assertions, finds exactly the matches a
//! search of the whole value finds (see `scan::search_windows`).
//!
//! For SpamAssassin's body rules the window is usually the line (`.` excludes `\n`) or a
//! few dozen bytes (bounded repetitions), instead of the whole body.

use regex_syntax::hir::{Class, Hir, HirKind};

use crate::rarity::frequency;

/// The bytes a regex's matches can contain and their longest length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Bit `b` set: byte `b` may occur in a match.
    alphabet: [u64; 4],
    /// Longest match in bytes; `None` when unbounded.
    max_len: Option<usize>,
    /// Every byte may occur and the length is unbounded: the window is always the value.
    whole: bool,
}

/// A byte range of a value to search; `closed` when both ends stop at a byte outside the
/// alphabet (or the value's ends), so no window computed from inside it reaches further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) closed: bool,
}

impl Reach {
    /// The reach of a regex from its syntax tree (parsed as it is compiled).
    pub(crate) fn of(hir: &Hir) -> Reach {
        let mut alphabet = [0u64; 4];
        add_bytes(hir, &mut alphabet);
        let max_len = hir.properties().maximum_len();
        let whole = max_len.is_none() && alphabet.iter().all(|w| *w == u64::MAX);
        Reach {
            alphabet,
            max_len,
            whole,
        }
    }

    /// True when every window is the whole value.
    pub(crate) fn is_whole(&self) -> bool {
        self.whole
    }

    /// Longest match in bytes; `None` when unbounded.
    pub(crate) fn max_len(&self) -> Option<usize> {
        self.max_len
    }

    #[inline]
    fn has(&self, b: u8) -> bool {
        self.alphabet[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    /// The window of `value` that holds every match containing `start..end`.
    pub(crate) fn window(&self, value: &[u8], start: usize, end: usize) -> Window {
        if self.whole {
            return Window {
                start: 0,
                end: value.len(),
                closed: true,
            };
        }
        let (lo_bound, hi_bound) = match self.max_len {
            Some(m) => (
                end.saturating_sub(m).min(start),
                start.saturating_add(m).max(end).min(value.len()),
            ),
            None => (0, value.len()),
        };
        let mut lo = start;
        while lo > lo_bound && self.has(value[lo - 1]) {
            lo -= 1;
        }
        let mut hi = end;
        while hi < hi_bound && self.has(value[hi]) {
            hi += 1;
        }
        let closed =
            (lo == 0 || !self.has(value[lo - 1])) && (hi == value.len() || !self.has(value[hi]));
        Window {
            start: lo,
            end: hi,
            closed,
        }
    }
}

/// A set of bytes every match of a regex contains at least one of, chosen to be rare in
/// mail text: a prefilter for regexes without a literal factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RareBytes {
    bits: [u64; 4],
    /// The bytes themselves when there are at most three (searched with `memchr`).
    few: Vec<u8>,
}

/// Highest estimated frequency (per 10,000 bytes of mail text) a set may have.
const MAX_RARE_COST: u32 = 40;

fn cost(bits: &[u64; 4]) -> u32 {
    (0..=255u8)
        .filter(|b| bits[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
        .map(frequency)
        .sum()
}

impl RareBytes {
    /// The rarest byte set every match of `hir` must contain, if it is rare enough.
    pub(crate) fn of(hir: &Hir) -> Option<RareBytes> {
        let mut sets = Vec::new();
        required_sets(hir, &mut sets);
        let (bits, c) = sets
            .into_iter()
            .map(|s| {
                let c = cost(&s);
                (s, c)
            })
            .min_by_key(|(_, c)| *c)?;
        if c > MAX_RARE_COST || bits == [0; 4] {
            return None;
        }
        let few: Vec<u8> = (0..=255u8)
            .filter(|b| bits[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
            .collect();
        Some(RareBytes {
            bits,
            few: if few.len() <= 3 { few } else { Vec::new() },
        })
    }

    /// Calls `f` with the position of every byte of the set in `value`, in order.
    pub(crate) fn for_each(&self, value: &[u8], mut f: impl FnMut(usize)) {
        match self.few[..] {
            [a] => memchr::memchr_iter(a, value).for_each(f),
            [a, b] => memchr::memchr2_iter(a, b, value).for_each(f),
            [a, b, c] => memchr::memchr3_iter(a, b, c, value).for_each(f),
            _ => {
                for (i, &b) in value.iter().enumerate() {
                    if self.bits[usize::from(b >> 6)] & (1 << (b & 63)) != 0 {
                        f(i)
                    }
                }
            }
        }
    }
}

/// Byte sets of which every match of `hir` contains one byte each.
fn required_sets(hir: &Hir, out: &mut Vec<[u64; 4]>) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => {
            for &b in l.0.iter() {
                let mut s = [0; 4];
                set(&mut s, b, b);
                out.push(s);
            }
        }
        HirKind::Class(_) => {
            let mut s = [0; 4];
            add_bytes(hir, &mut s);
            out.push(s);
        }
        HirKind::Repetition(r) => {
            if r.min >= 1 {
                required_sets(&r.sub, out);
            }
        }
        HirKind::Capture(c) => required_sets(&c.sub, out),
        HirKind::Concat(subs) => {
            for s in subs {
                required_sets(s, out);
            }
        }
        HirKind::Alternation(alts) => {
            // A match goes through one branch: the union of each branch's rarest set.
            let mut union = [0u64; 4];
            for a in alts {
                let mut v = Vec::new();
                required_sets(a, &mut v);
                let Some(best) = v.into_iter().min_by_key(cost) else {
                    return;
                };
                for (u, b) in union.iter_mut().zip(best) {
                    *u |= b;
                }
            }
            out.push(union);
        }
    }
}

fn set(alphabet: &mut [u64; 4], lo: u8, hi: u8) {
    for b in lo..=hi {
        alphabet[usize::from(b >> 6)] |= 1 << (b & 63);
    }
}

/// Adds every byte a match of `hir` may consume. Unicode classes add their ASCII part and,
/// for anything above U+007F, every non-ASCII byte (all bytes of UTF-8 sequences are).
fn add_bytes(hir: &Hir, alphabet: &mut [u64; 4]) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => {
            for &b in l.0.iter() {
                set(alphabet, b, b);
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            for r in c.ranges() {
                set(alphabet, r.start(), r.end());
            }
        }
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                if lo < 0x80 {
                    set(alphabet, lo as u8, hi.min(0x7f) as u8);
                }
                if hi >= 0x80 {
                    set(alphabet, 0x80, 0xff);
                }
            }
        }
        HirKind::Repetition(r) => {
            if r.max != Some(0) {
                add_bytes(&r.sub, alphabet);
            }
        }
        HirKind::Capture(c) => add_bytes(&c.sub, alphabet),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            for s in subs {
                add_bytes(s, alphabet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(re: &str) -> Reach {
        let hir = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(re)
            .unwrap();
        Reach::of(&hir)
    }

    #[test]
    fn windows_table() {
        // (regex, value, factor occurrence, expected window)
        type Span = (usize, usize);
        let cases: &[(&str, &str, Span, Span)] = &[
            // `.` stops at line ends: the window is the line.
            ("(?-u)click.*here", "aa\nxx click yy\nbb", (6, 11), (3, 14)),
            // `\s` reaches over line ends; `\w` does not reach `,`.
            (r"(?-u)\w+\s+money", "x, a \n money!", (7, 12), (2, 12)),
            // Bounded length: a match of at most 8 bytes holding a 5-byte factor reaches
            // 3 bytes to either side of it.
            ("(?-u)[a-z]{0,3}money", "abcdefmoneyxyzw", (6, 11), (3, 14)),
            // Everything, unbounded: the whole value.
            ("(?s-u)a.*money", "x\ny money z", (4, 9), (0, 11)),
            // Unicode classes may consume any non-ASCII byte.
            (r"\w+money", "é money \u{e9}money", (11, 16), (9, 16)),
        ];
        for (re, value, (s, e), (ws, we)) in cases {
            let w = reach(re).window(value.as_bytes(), *s, *e);
            assert_eq!((w.start, w.end), (*ws, *we), "{re} on {value:?}");
        }
        assert!(reach("(?s-u).+").is_whole());
        assert!(!reach("(?-u).+").is_whole());
    }

    #[test]
    fn rare_bytes_table() {
        let rare = |re: &str| {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(re)
                .unwrap();
            RareBytes::of(&hir).map(|r| {
                (0..=255u8)
                    .filter(|b| r.bits[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
                    .map(char::from)
                    .collect::<String>()
            })
        };
        assert_eq!(
            rare(r"(?-u)\b[a-z]{3,10}\@[a-z]{3,10}").as_deref(),
            Some("@")
        );
        assert_eq!(rare(r"(?-u)\d+%|\$\d+").as_deref(), Some("$%"));
        assert_eq!(rare(r"(?-u)(?:\$|usd)\d+").as_deref(), None);
        assert_eq!(rare(r"(?-u)[a-z]+\d"), None);
        assert_eq!(rare(r"(?-u)x?\$?"), None);
    }

    #[test]
    fn closed_windows() {
        let r = reach("(?-u)[a-z]{0,3}money");
        // Stopped by the length bound: not closed.
        assert!(!r.window(b"abcdefmoney", 6, 11).closed);
        // Stopped by a byte outside the alphabet and the value's end: closed.
        assert!(r.window(b"ab money", 3, 8).closed);
    }
}
