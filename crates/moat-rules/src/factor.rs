//! Required literal factors of a regex: a set of byte strings at least one of which occurs
//! in every match. The compiler puts them into the target's automaton so the regex runs
//! only on values where one was found.

use regex_syntax::hir::literal::{ExtractKind, Extractor};
use std::collections::HashMap;

use regex_syntax::hir::{Hir, HirKind};

/// Shortest factor worth a place in the automaton.
const MIN_LEN: usize = 4;
/// Largest factor set worth a place in the automaton.
const MAX_SET: usize = 64;
/// How many start positions of a concatenation to try.
const MAX_STARTS: usize = 16;

/// A factor set, ASCII-lowercased (the automaton matches ASCII case-insensitively), with
/// every literal that contains another member removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Factors {
    lits: Vec<Vec<u8>>,
    min_len: usize,
}

impl Factors {
    fn new(lits: impl IntoIterator<Item = Vec<u8>>) -> Option<Factors> {
        let mut lits: Vec<Vec<u8>> = lits.into_iter().map(|l| l.to_ascii_lowercase()).collect();
        lits.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        lits.dedup();
        // Containment removal is quadratic; far too many literals will not shrink enough.
        if lits.len() > 4 * MAX_SET {
            return None;
        }
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(lits.len());
        for l in lits {
            if !kept.iter().any(|k| contains(&l, k)) {
                kept.push(l);
            }
        }
        let min_len = kept.iter().map(Vec::len).min()?;
        (min_len >= MIN_LEN && kept.len() <= MAX_SET).then_some(Factors {
            lits: kept,
            min_len,
        })
    }

    /// Higher is better: two points per byte of the shortest literal (up to 6 bytes,
    /// beyond which literals are rare enough), minus one per doubling of the literal
    /// count; ties go to longer, then fewer literals.
    fn rank(&self) -> (i64, usize, std::cmp::Reverse<usize>) {
        let doublings = i64::from(usize::BITS - (self.lits.len().max(1) - 1).leading_zeros());
        (
            2 * self.min_len.min(6) as i64 - doublings,
            self.min_len,
            std::cmp::Reverse(self.lits.len()),
        )
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || (needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle))
}

fn better(a: Option<Factors>, b: Option<Factors>) -> Option<Factors> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.rank() > a.rank() { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn prefixes(hir: &Hir) -> Option<Factors> {
    let mut ex = Extractor::new();
    ex.kind(ExtractKind::Prefix)
        .limit_class(8)
        .limit_repeat(8)
        .limit_literal_len(32)
        .limit_total(256);
    let seq = ex.extract(hir);
    let lits: Vec<Vec<u8>> = seq
        .literals()?
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    // Prefixes of required literals are required too; a shorter cut may collapse variants
    // (`click\t`, `click\n`, ... into `click`).
    let longest = lits.iter().map(Vec::len).max().unwrap_or(0);
    let mut found = None;
    // A few cut lengths are enough; trying every length made compiling large packs slow.
    let cuts = [MIN_LEN, 5, 6, 8, 12, longest];
    for cut in cuts.into_iter().filter(|c| *c >= MIN_LEN && *c <= longest) {
        let cut_lits = lits.iter().map(|l| l[..l.len().min(cut)].to_vec());
        found = better(found, Factors::new(cut_lits));
    }
    found
}

/// Results already computed for nodes of one regex's syntax tree (keyed by node address,
/// valid while the tree is borrowed): the same sub-trees are reached from several paths.
#[derive(Default)]
struct Memo {
    best: HashMap<usize, Option<Factors>>,
    tails: HashMap<(usize, usize), Option<Factors>>,
}

fn key(h: &Hir) -> usize {
    h as *const Hir as usize
}

/// What must start at position `start` of the concatenation `concat` (children `subs`).
fn tail(concat: &Hir, subs: &[Hir], start: usize, memo: &mut Memo) -> Option<Factors> {
    if let Some(f) = memo.tails.get(&(key(concat), start)) {
        return f.clone();
    }
    let f = prefixes(&Hir::concat(subs[start..].to_vec()));
    memo.tails.insert((key(concat), start), f.clone());
    f
}

fn best(hir: &Hir, memo: &mut Memo) -> Option<Factors> {
    if let Some(f) = memo.best.get(&key(hir)) {
        return f.clone();
    }
    let f = match hir.kind() {
        HirKind::Capture(c) => best(&c.sub, memo),
        HirKind::Repetition(r) if r.min >= 1 => better(prefixes(hir), best(&r.sub, memo)),
        HirKind::Concat(subs) => {
            let mut found = None;
            for start in 0..subs.len().min(MAX_STARTS) {
                found = better(found, tail(hir, subs, start, memo));
            }
            for sub in subs {
                found = better(found, best(sub, memo));
            }
            found
        }
        HirKind::Alternation(alts) => {
            // Every branch must contribute, or a match could avoid all of them.
            let mut union = Some(Vec::new());
            for alt in alts {
                match (best(alt, memo), union.as_mut()) {
                    (Some(f), Some(u)) => u.extend(f.lits),
                    _ => union = None,
                }
            }
            better(prefixes(hir), union.and_then(Factors::new))
        }
        _ => prefixes(hir),
    };
    memo.best.insert(key(hir), f.clone());
    f
}

/// Most alternatives of a top-level alternation handled as separate clauses.
const MAX_CLAUSES: usize = 16;

/// Prefilter clauses of a regex: it can match only where, for at least one clause, a
/// literal of every factor set of that clause occurs. A top-level alternation gives one
/// clause per branch; anything else gives one clause. Empty when some branch has no
/// usable factor.
pub(crate) fn clauses(hir: &Hir) -> Vec<Vec<Vec<Vec<u8>>>> {
    // Look through groups and through assertions around a single item (`\b(?:a|b)\b`):
    // an alternation there is still the whole of what must match.
    let mut top = hir;
    loop {
        match top.kind() {
            HirKind::Capture(c) => top = &c.sub,
            HirKind::Concat(subs) => {
                let mut items = subs
                    .iter()
                    .filter(|h| !matches!(h.kind(), HirKind::Look(_) | HirKind::Empty));
                match (items.next(), items.next()) {
                    (Some(only), None) => top = only,
                    _ => break,
                }
            }
            _ => break,
        }
    }
    if let HirKind::Alternation(alts) = top.kind()
        && alts.len() <= MAX_CLAUSES
    {
        let mut memo = Memo::default();
        let per_branch: Vec<_> = alts.iter().map(|a| required_all(a, &mut memo)).collect();
        if per_branch.iter().all(|c| !c.is_empty()) {
            return per_branch;
        }
        return Vec::new();
    }
    let all = required_all(hir, &mut Memo::default());
    if all.is_empty() {
        Vec::new()
    } else {
        vec![all]
    }
}

/// Most factor sets required together for one regex.
pub(crate) const MAX_SETS: usize = 3;

/// True when every literal of `a` contains a literal of `b`: finding `a` implies `b`, so
/// `b` adds no filtering once `a` is required.
fn implies(a: &Factors, b: &Factors) -> bool {
    a.lits.iter().all(|l| b.lits.iter().any(|k| contains(l, k)))
}

/// The best required factor set of `hir`, or `None` when it has none worth using.
#[cfg(test)]
pub(crate) fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    best(hir, &mut Memo::default()).map(|f| f.lits)
}

/// Up to [`MAX_SETS`] factor sets that every match contains one literal of *each* of: the
/// best set overall, then the best sets of other parts of a top-level concatenation. A
/// regex runs only on values where all of them were found, which cuts the runs caused by
/// common words. Empty when the regex has no usable factor.
fn required_all(hir: &Hir, memo: &mut Memo) -> Vec<Vec<Vec<u8>>> {
    let mut top = hir;
    while let HirKind::Capture(c) = top.kind() {
        top = &c.sub;
    }
    let Some(first) = best(top, memo) else {
        return Vec::new();
    };
    let mut chosen = vec![first];
    if let HirKind::Concat(subs) = top.kind() {
        // Candidates: what must start at each position, and what each part requires.
        let mut parts: Vec<Factors> = Vec::new();
        for i in 0..subs.len().min(MAX_STARTS) {
            parts.extend(tail(top, subs, i, memo));
        }
        for sub in subs {
            parts.extend(best(sub, memo));
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.rank()));
        for p in parts {
            if chosen.len() == MAX_SETS {
                break;
            }
            // Weak extra sets (short, many variants) cost more automaton hits than they save.
            if p.rank().0 >= 6 && !chosen.iter().any(|c| implies(c, &p) || implies(&p, c)) {
                chosen.push(p);
            }
        }
    }
    chosen.into_iter().map(|f| f.lits).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(re: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(re)
            .unwrap();
        required(&hir).map(|v| {
            v.into_iter()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .collect()
        })
    }

    #[test]
    fn factor_table() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("viagra", Some(&["viagra"])),
            ("(?i)viagra", Some(&["viagra"])),
            (r"\bfree\s+money\b", Some(&["money"])),
            // Unicode case folding: `k` also matches KELVIN SIGN; cutting before it leaves
            // one literal.
            (r"(?i)click\s+here", Some(&["click", "clic\u{fffd}"])),
            // Cut at 4 bytes, which may split a UTF-8 sequence (shown as U+FFFD here).
            (
                r"(?i)kick\s+\d",
                Some(&["kick", "kic\u{fffd}", "\u{212a}i"]),
            ),
            (r"(?i-u)click\s+here", Some(&["click"])),
            (r"\d+% off", Some(&["% off"])),
            (
                "(?:cheap|discount) meds",
                Some(&["cheap meds", "discount med"]),
            ),
            ("(?:cheapest|discount)", Some(&["cheapest", "discount"])),
            (r"(?:ab|discount)\d", None),
            (r"\w+@\w+", None),
            (".*", None),
            ("a.b", None),
            ("(?:winner)+!", Some(&["winner"])),
            ("(?:winner)?!!!!", Some(&["!!!!"])),
            // Shorter than 4 bytes is not selective enough.
            ("(?:winner)?!!!", None),
            // `s` folds to LONG S too, which costs variants; two 6-byte variants win.
            (
                r"(?i)unsubscribe(?:\s+here)?",
                Some(&["ubscrib", "ub\u{17f}crib"]),
            ),
            // Case variants are capped at 256 (2^8), so the literal is cut to 8 bytes.
            (r"(?i-u)unsubscribe(?:\s+here)?", Some(&["unsubscr"])),
        ];
        for (re, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(factors(re), want, "{re}");
        }
    }

    #[test]
    fn several_sets_are_required_together() {
        let sets = |re: &str| {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(re)
                .unwrap();
            required_all(&hir, &mut Memo::default())
                .into_iter()
                .map(|set| {
                    set.into_iter()
                        .map(|l| String::from_utf8_lossy(&l).into_owned())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sets(r"(?i-u)\byour\s+(?:password|login)\b"),
            [vec!["login", "password"], vec!["your"]]
        );
        // A set implied by another (a literal of one contains the other) is not repeated.
        assert_eq!(sets("lottery winner"), [vec!["lottery winner"]]);
        assert_eq!(sets(r"\d+"), Vec::<Vec<String>>::new());
        assert_eq!(
            sets(r"(?:abcd|defg)\d+wxyz\s+uvwx"),
            [vec!["wxyz"], vec!["uvwx"], vec!["abcd", "defg"]]
        );
    }

    #[test]
    fn factor_is_really_required() {
        // Every literal in a factor set must occur in the text a match covers; checked by
        // matching sample texts and verifying one factor occurs (case-insensitively).
        let cases: &[(&str, &[&str])] = &[
            (
                r"(?i)\b(?:cheap|low.cost)\s+(?:rolex|watches)\b",
                &["Cheap ROLEX", "low-cost watches"],
            ),
            (
                r"\$\d+(?:,\d{3})*\s+(?:million|billion)",
                &["$12,000 million", "$5 billion"],
            ),
            (
                r"(?:urgent|confidential)\s+(?:business|proposal)",
                &["URGENT business"],
            ),
        ];
        for (re, samples) in cases {
            let lits = factors(re).unwrap_or_else(|| panic!("{re} has a factor"));
            let rx = regex::Regex::new(&format!("(?i){re}")).unwrap();
            for s in *samples {
                let m = rx.find(s).unwrap_or_else(|| panic!("{re} matches {s}"));
                let text = m.as_str().to_ascii_lowercase();
                assert!(
                    lits.iter().any(|l| text.contains(l.as_str())),
                    "{re} {s} {lits:?}"
                );
            }
        }
    }
}
