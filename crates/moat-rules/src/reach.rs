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

use crate::rarity::byte_frequency;

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
        contains(&self.alphabet, b)
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

    /// The window of `value` that holds every match containing at least one byte of
    /// `start..end`, a run of bytes of the alphabet: the union of the windows around its
    /// first and last byte (the window around any byte between lies inside that union).
    pub(crate) fn run_window(&self, value: &[u8], start: usize, end: usize) -> Window {
        let first = self.window(value, start, start + 1);
        let last = self.window(value, end - 1, end);
        Window {
            start: first.start,
            end: last.end,
            closed: first.closed && last.closed,
        }
    }
}

/// A set of bytes every match of a regex contains at least one of (or a run of at least
/// `run` of), chosen to be rare in mail text: a prefilter for regexes without a literal
/// factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RareBytes {
    bits: [u64; 4],
    /// The bytes themselves when there are at most three (searched with `memchr`).
    few: Vec<u8>,
    /// Length of the run of set bytes every match contains: 1 for a single byte; more for a
    /// run such as `\s{15}` or `[^\r\n]{998}`, whose bytes need not be rare one by one.
    run: usize,
}

/// Highest estimated frequency (per 10,000 bytes of mail text) a set may have.
const MAX_RARE_COST: u32 = 40;

fn cost(bits: &[u64; 4]) -> u32 {
    (0..=255u8)
        .filter(|&b| contains(bits, b))
        .map(byte_frequency)
        .sum()
}

/// Highest estimated frequency (per 10,000 bytes of mail text) a run may have: lower than
/// for single bytes, because each run found costs a regex search while a regex set that
/// the target runs anyway takes one member more at little cost.
const MAX_RUN_COST: u32 = MAX_RARE_COST / 4;

/// Estimated starts, per 10,000 bytes, of a run of `len` bytes of the set `bits`. Bytes of
/// mail are not independent (indentation, padding, tables, hex strings), so a run is
/// priced as if it were half as long as it is. `total` is the frequency of all bytes
/// together.
fn run_cost(bits: &[u64; 4], len: usize, total: u32) -> u32 {
    let p = f64::from(cost(bits)) / f64::from(total);
    let len = i32::try_from(len.div_ceil(2)).unwrap_or(i32::MAX);
    (10_000.0 * p.min(1.0).powi(len)).ceil() as u32
}

impl RareBytes {
    /// The rarest byte set, or run of bytes of a set, that every match of `hir` must
    /// contain, if it is rare enough.
    pub(crate) fn of(hir: &Hir) -> Option<RareBytes> {
        let mut sets = Vec::new();
        required_sets(hir, &mut sets);
        let mut runs = Vec::new();
        required_runs(hir, &mut runs);
        let total: u32 = (0..=255u8).map(byte_frequency).sum();
        let (bits, run, c) = sets
            .into_iter()
            .map(|s| {
                let c = cost(&s);
                (s, 1, c)
            })
            .chain(
                runs.into_iter()
                    .filter(|&(_, len)| len >= 2)
                    .map(|(s, len)| (s, len, run_cost(&s, len, total)))
                    .filter(|&(_, _, c)| c <= MAX_RUN_COST),
            )
            .min_by_key(|&(_, run, c)| (c, std::cmp::Reverse(run)))?;
        if c > MAX_RARE_COST || bits == [0; 4] {
            return None;
        }
        let few: Vec<u8> = (0..=255u8).filter(|&b| contains(&bits, b)).collect();
        Some(RareBytes {
            bits,
            few: if few.len() <= 3 && run == 1 {
                few
            } else {
                Vec::new()
            },
            run,
        })
    }

    #[inline]
    fn has(&self, b: u8) -> bool {
        contains(&self.bits, b)
    }

    /// Length of the run every match contains (1: a single byte).
    pub(crate) fn run(&self) -> usize {
        self.run
    }

    /// Calls `f(start, end)` for every byte of the set in `value` (`end = start + 1`), or,
    /// for a run, for every maximal run of set bytes at least that long; in order.
    pub(crate) fn for_each(&self, value: &[u8], mut f: impl FnMut(usize, usize)) {
        match self.few[..] {
            [a] => memchr::memchr_iter(a, value).for_each(|i| f(i, i + 1)),
            [a, b] => memchr::memchr2_iter(a, b, value).for_each(|i| f(i, i + 1)),
            [a, b, c] => memchr::memchr3_iter(a, b, c, value).for_each(|i| f(i, i + 1)),
            _ if self.run > 1 => self.for_each_run(value, f),
            _ => {
                for (i, &b) in value.iter().enumerate() {
                    if self.has(b) {
                        f(i, i + 1)
                    }
                }
            }
        }
    }

    /// The maximal runs of at least `self.run` set bytes. Every such run holds one of the
    /// positions `run - 1`, `2 * run - 1`, ... after the end of the previous run, so only
    /// those are read until one is a set byte; then the run around it is measured.
    fn for_each_run(&self, value: &[u8], mut f: impl FnMut(usize, usize)) {
        let k = self.run;
        // Runs cannot start before `from`: `value[from - 1]` is not a set byte.
        let mut from = 0;
        let mut i = k - 1;
        while i < value.len() {
            if !self.has(value[i]) {
                from = i + 1;
                i += k;
                continue;
            }
            let mut start = i;
            while start > from && self.has(value[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < value.len() && self.has(value[end]) {
                end += 1;
            }
            if end - start >= k {
                f(start, end);
            }
            from = end + 1;
            i = end + k;
        }
    }
}

/// Runs `(set, least length)` of which every match of `hir` contains one each: a repeated
/// class (`\s{15}`), a literal's repeated byte, and adjacent items of a concatenation
/// taken together (`[a-z]{6}\d{3}`: nine bytes of `[a-z0-9]`). Look-arounds consume no
/// byte, so they do not end a stretch: `(?:[A-Z][a-z]*\b\s){18}` needs 36 bytes of
/// `[A-Za-z\s]` in a row.
fn required_runs(hir: &Hir, out: &mut Vec<([u64; 4], usize)>) {
    /// The byte set and least length of an item whose every match is made of bytes of that
    /// set alone (a zero-width item: the empty set and length 0).
    fn item(hir: &Hir) -> Option<([u64; 4], usize)> {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => Some(([0; 4], 0)),
            HirKind::Class(_) => {
                let mut s = [0; 4];
                add_bytes(hir, &mut s);
                Some((s, 1))
            }
            HirKind::Literal(l) => {
                let mut s = [0; 4];
                add_bytes(hir, &mut s);
                Some((s, l.0.len()))
            }
            HirKind::Repetition(r) => {
                let (s, n) = item(&r.sub)?;
                Some((s, n.saturating_mul(r.min as usize)))
            }
            HirKind::Capture(c) => item(&c.sub),
            HirKind::Concat(subs) => subs.iter().try_fold(([0; 4], 0usize), |(u, len), sub| {
                let (s, n) = item(sub)?;
                Some((union(u, s), len.saturating_add(n)))
            }),
            HirKind::Alternation(subs) => {
                subs.iter().try_fold(([0; 4], usize::MAX), |(u, len), sub| {
                    let (s, n) = item(sub)?;
                    Some((union(u, s), len.min(n)))
                })
            }
        }
    }
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) => {}
        HirKind::Alternation(_) => out.extend(item(hir)),
        HirKind::Literal(l) => {
            // Each stretch of one repeated byte.
            for chunk in l.0.chunk_by(|a, b| a == b) {
                let mut s = [0; 4];
                set(&mut s, chunk[0], chunk[0]);
                out.push((s, chunk.len()));
            }
        }
        HirKind::Repetition(r) => {
            if let Some((s, n)) = item(hir) {
                out.push((s, n));
            }
            if r.min >= 1 {
                required_runs(&r.sub, out);
            }
        }
        HirKind::Capture(c) => required_runs(&c.sub, out),
        HirKind::Concat(subs) => {
            // The runs inside each item, and each maximal stretch of adjacent items as one
            // run over their union.
            let mut stretch: Option<([u64; 4], usize)> = None;
            for sub in subs {
                required_runs(sub, out);
                match item(sub) {
                    Some((s, n)) => {
                        let (u, len) = stretch.get_or_insert(([0; 4], 0));
                        *u = union(*u, s);
                        *len = len.saturating_add(n);
                    }
                    None => out.extend(stretch.take()),
                }
            }
            out.extend(stretch);
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
            let mut all = [0u64; 4];
            for a in alts {
                let mut v = Vec::new();
                required_sets(a, &mut v);
                let Some(best) = v.into_iter().min_by_key(cost) else {
                    return;
                };
                all = union(all, best);
            }
            out.push(all);
        }
    }
}

/// True when byte `b` is in the set `bits`.
#[inline]
fn contains(bits: &[u64; 4], b: u8) -> bool {
    bits[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

fn union(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
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

    fn hir(re: &str) -> Hir {
        regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(re)
            .unwrap()
    }

    fn reach(re: &str) -> Reach {
        Reach::of(&hir(re))
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
            RareBytes::of(&hir(re)).map(|r| {
                assert_eq!(r.run, 1, "{re}");
                (0..=255u8)
                    .filter(|&b| r.has(b))
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
    fn rare_runs_table() {
        // (regex, the run chosen: its bytes and length)
        let runs = |re: &str| {
            RareBytes::of(&hir(re)).map(|r| {
                let bytes = (0..=255u8).filter(|&b| r.has(b)).count();
                (bytes, r.run)
            })
        };
        assert_eq!(runs(r"(?m-u)^[^\r\n]{998}"), Some((254, 998)));
        // The run of white space, not the stretch with the letters around it.
        assert_eq!(runs(r"(?-u)[a-z0-9]{6}\s{15}[a-z0-9]{5}"), Some((6, 15)));
        // Adjacent items taken together: five bytes of `[qz]`.
        assert_eq!(runs(r"(?-u)q{4}z"), Some((2, 5)));
        // Look-arounds consume nothing and do not end a stretch; a repeated group of
        // items is an item: 18 × 9 bytes of `[A-Za-z\s.]`.
        assert_eq!(
            runs(r"(?m-u)\b(?:[A-Z][a-z]{0,16}\b(?:\s[a-z]{1,16}\b){4,6}\.?\s{0,2}){18}"),
            Some((59, 162))
        );
        // An alternation of items: its union, as long as its shortest branch; a literal of
        // several bytes counts them all.
        assert_eq!(runs(r"(?-u)(?:~~|\^\^\^)(?:~\^){4}"), Some((2, 10)));
        // Runs of common bytes are not rare, however long.
        assert_eq!(runs(r"(?-u)\b[a-z]{8,}\b"), None);
        assert_eq!(runs(r"(?-u)\d{3}"), None);
    }

    proptest::proptest! {
        /// The runs found by reading only every `k`-th byte are exactly the maximal runs
        /// of at least `k` set bytes.
        #[test]
        fn runs_found_by_skipping(
            value in proptest::collection::vec(proptest::sample::select(b"ab \n".to_vec()), 0..80),
            k in 1usize..7,
        ) {
            let mut bits = [0u64; 4];
            set(&mut bits, b' ', b' ');
            set(&mut bits, b'\n', b'\n');
            let rare = RareBytes { bits, few: Vec::new(), run: k };
            let mut found = Vec::new();
            rare.for_each_run(&value, |s, e| found.push((s, e)));
            let mut expected = Vec::new();
            let mut i = 0;
            while i < value.len() {
                if rare.has(value[i]) {
                    let start = i;
                    while i < value.len() && rare.has(value[i]) {
                        i += 1;
                    }
                    if i - start >= k {
                        expected.push((start, i));
                    }
                } else {
                    i += 1;
                }
            }
            proptest::prop_assert_eq!(found, expected);
        }
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
