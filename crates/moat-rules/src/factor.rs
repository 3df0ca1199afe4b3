//! Required literal factors of a regex: a set of byte strings at least one of which occurs
//! in every match. The compiler puts them into the target's automaton so the regex runs
//! only on values where one was found.
//!
//! Factors are chosen by how often they are expected to occur in mail
//! ([`crate::rarity`]): every occurrence is an automaton hit and may cost a regex search.

use regex_syntax::hir::literal::{ExtractKind, Extractor};
use std::collections::HashMap;

use regex_syntax::hir::{
    Capture, Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange, Hir, HirKind,
    Repetition,
};

use crate::literals::{canon, canonical};
use crate::rarity;

/// Shortest factor worth a place in the automaton (a shorter one is too common, and a
/// rare single byte is handled by [`crate::reach::RareBytes`]).
const MIN_LEN: usize = 3;
/// Largest factor set worth a place in the automaton.
const MAX_SET: usize = 64;
/// How many start positions of a concatenation to try.
const MAX_STARTS: usize = 16;
/// Most expected hits per KiB of mail for the factors that make a regex a candidate: a
/// regex whose factors are commoner is cheaper to run in a regex set over the whole value.
const MAX_TRIGGER_PER_KIB: f64 = 16.0;
/// Most expected hits per KiB of a factor set required *in addition* to the best one: a
/// commoner one costs more automaton hits than the regex searches it saves.
const MAX_EXTRA_PER_KIB: f64 = 0.5;

/// A factor set, folded like the literal search folds values, with every literal that
/// contains another member removed (for a set of prefixes: that begins with another).
#[derive(Debug, Clone, PartialEq)]
struct Factors {
    lits: Vec<Vec<u8>>,
    min_len: usize,
    /// Expected automaton hits per KiB of mail text.
    per_kib: f64,
}

impl Factors {
    /// The set of `lits`. With `prefixes`, the literals begin every match, and only a
    /// literal that begins with another member is dropped, so that they still do.
    fn new(lits: impl IntoIterator<Item = Vec<u8>>, prefixes: bool) -> Option<Factors> {
        let mut lits: Vec<Vec<u8>> = lits.into_iter().map(|l| canonical(&l)).collect();
        lits.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        lits.dedup();
        // Containment removal is quadratic; far too many literals will not shrink enough.
        if lits.len() > 4 * MAX_SET {
            return None;
        }
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(lits.len());
        for l in lits {
            let redundant = if prefixes {
                kept.iter().any(|k| l.starts_with(k))
            } else {
                kept.iter().any(|k| contains(&l, k))
            };
            if !redundant {
                kept.push(l);
            }
        }
        let min_len = kept.iter().map(Vec::len).min()?;
        (min_len >= MIN_LEN && kept.len() <= MAX_SET).then(|| Factors {
            per_kib: rarity::set_per_kib(kept.iter().map(Vec::as_slice)),
            lits: kept,
            min_len,
        })
    }

    /// True when `self` is a better prefilter than `other`: fewer expected hits; on a tie
    /// (strings the estimate cannot tell apart), longer, then fewer literals.
    fn beats(&self, other: &Factors) -> bool {
        match self.per_kib.total_cmp(&other.per_kib) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                (self.min_len, std::cmp::Reverse(self.lits.len()))
                    > (other.min_len, std::cmp::Reverse(other.lits.len()))
            }
        }
    }
}

/// `hir` with every byte folded by [`canon`] (ASCII letters lower-cased, white space as a
/// space), in literals and classes: the factors of the result are factors of the original
/// for the literal search, which folds values the same way. A case-insensitive regex
/// (`[Pp][Aa][Ss][Ss]`) yields one literal instead of sixteen variants, which keeps the
/// extractor within its limits, and `\s` becomes a space, so factors span words.
fn fold(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => hir.clone(),
        HirKind::Literal(l) => Hir::literal(canonical(&l.0)),
        HirKind::Class(Class::Bytes(c)) => {
            let mut set = [false; 256];
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    set[usize::from(canon(b))] = true;
                }
            }
            let bytes: Vec<u8> = (0..=255u8).filter(|b| set[usize::from(*b)]).collect();
            match bytes[..] {
                [b] => Hir::literal(vec![b]),
                _ => Hir::class(Class::Bytes(ClassBytes::new(
                    bytes.into_iter().map(|b| ClassBytesRange::new(b, b)),
                ))),
            }
        }
        HirKind::Class(Class::Unicode(c)) => {
            let mut ranges = Vec::new();
            for r in c.ranges() {
                let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                if lo < 0x80 {
                    for b in lo as u8..=hi.min(0x7f) as u8 {
                        let l = char::from(canon(b));
                        ranges.push(ClassUnicodeRange::new(l, l));
                    }
                }
                if hi >= 0x80 {
                    ranges.push(ClassUnicodeRange::new(r.start().max('\u{80}'), r.end()));
                }
            }
            let class = ClassUnicode::new(ranges);
            match class.ranges() {
                [r] if r.start() == r.end() => Hir::literal(r.start().to_string().into_bytes()),
                _ => Hir::class(Class::Unicode(class)),
            }
        }
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(fold(&r.sub)),
            ..r.clone()
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            sub: Box::new(fold(&c.sub)),
            ..c.clone()
        }),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(fold).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.iter().map(fold).collect()),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || (needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle))
}

fn better(a: Option<Factors>, b: Option<Factors>) -> Option<Factors> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.beats(&a) { b } else { a }),
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
    // The tree is folded, so its literals are too.
    let lits: Vec<Vec<u8>> = seq
        .literals()?
        .iter()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    // Prefixes of required literals are required too; a shorter cut may collapse variants
    // (`kick` and `kic` + KELVIN SIGN into `kic`).
    let longest = lits.iter().map(Vec::len).max().unwrap_or(0);
    let mut found = None;
    // A few cut lengths are enough; trying every length made compiling large packs slow.
    let cuts = [MIN_LEN, 4, 5, 6, 8, 12, longest];
    for cut in cuts.into_iter().filter(|c| *c >= MIN_LEN && *c <= longest) {
        let cut_lits = lits.iter().map(|l| l[..l.len().min(cut)].to_vec());
        found = better(found, Factors::new(cut_lits, true));
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
            better(prefixes(hir), union.and_then(|u| Factors::new(u, false)))
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
pub(crate) fn clauses(hir: &Hir) -> Vec<FactorClause> {
    let folded = fold(hir);
    let found = folded_clauses(&folded);
    // Each clause's first set is its trigger; a regex is a candidate when any clause is
    // complete, so what it costs is the sum of those.
    let trigger: f64 = found.iter().map(|c| c.0[0].per_kib).sum();
    if trigger > MAX_TRIGGER_PER_KIB {
        return Vec::new();
    }
    found
        .into_iter()
        .map(|(sets, starts)| FactorClause {
            sets: sets.into_iter().map(|f| f.lits).collect(),
            starts,
        })
        .collect()
}

/// One prefilter clause: factor sets every match (of one branch) contains a literal of
/// each of, the first being the trigger.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FactorClause {
    pub(crate) sets: Vec<Vec<Vec<u8>>>,
    /// Every match starts with a literal of the first set, exactly where it occurs: the
    /// regex can be searched anchored at those occurrences instead of in windows.
    pub(crate) starts: bool,
}

/// Links as mail carries them, written for this estimate: the factor frequencies above are
/// measured on prose, where `http://` is rare, but a URL value nearly always has one.
const URL_SAMPLE: [&str; 16] = [
    "http://www.example.com/",
    "https://www.example.com/account/login",
    "http://example.org/index.html",
    "https://example.net/newsletter/2024/03/issue.htm",
    "http://click.example.com/track?id=8812&u=a7f3",
    "https://www.example.co.uk/offers/spring-sale",
    "http://images.example.com/logo.gif",
    "https://cdn.example.net/img/banner_600x120.jpg",
    "http://www.example.com/unsubscribe.php?email=user%40example.org",
    "https://lists.example.org/mailman/listinfo/users",
    "http://example.com/~user/page",
    "https://shop.example.de/produkte/angebot?ref=mail",
    "http://192.0.2.17/cgi-bin/view.cgi",
    "https://example.com",
    "http://www.example.info/a/b/c/d.html",
    "https://m.example.com/s/AbC12xY",
];

/// True when one of `clauses` is complete in at least half of typical URLs: a URL-target
/// regex with such factors would be searched for nearly every link, and costs less in a
/// regex set.
pub(crate) fn common_in_urls(clauses: &[FactorClause]) -> bool {
    // Folded like the factors, once for all the regexes of a compile.
    static FOLDED: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
        URL_SAMPLE
            .iter()
            .map(|url| canonical(url.as_bytes()))
            .collect()
    });
    let triggered = FOLDED
        .iter()
        .filter(|url| {
            clauses.iter().any(|c| {
                c.sets
                    .iter()
                    .all(|set| set.iter().any(|l| contains(url, l)))
            })
        })
        .count();
    2 * triggered >= URL_SAMPLE.len()
}

fn folded_clauses(hir: &Hir) -> Vec<(Vec<Factors>, bool)> {
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
        if per_branch.iter().all(|c| !c.0.is_empty()) {
            return per_branch;
        }
        return Vec::new();
    }
    let all = required_all(hir, &mut Memo::default());
    if all.0.is_empty() {
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
    best(&fold(hir), &mut Memo::default()).map(|f| f.lits)
}

/// How much commoner than the best factor set the set every match starts with may be and
/// still be preferred as the trigger: an anchored search at a known start costs a fraction
/// of a search of the window around an inner factor.
const START_ALLOWANCE: f64 = 4.0;

/// Up to [`MAX_SETS`] factor sets that every match contains one literal of *each* of: the
/// trigger, then rare sets of other parts of a top-level concatenation. A regex runs only
/// on values where all of them were found. The trigger is the set every match starts with
/// when there is one not much commoner than the best set overall (the flag says so), else
/// the best set. Empty when the regex has no usable factor.
fn required_all(hir: &Hir, memo: &mut Memo) -> (Vec<Factors>, bool) {
    let mut top = hir;
    while let HirKind::Capture(c) = top.kind() {
        top = &c.sub;
    }
    let Some(best_set) = best(top, memo) else {
        return (Vec::new(), false);
    };
    // What every match starts with; for a concatenation `best` has just worked it out.
    let start_set = match top.kind() {
        HirKind::Concat(subs) => tail(top, subs, 0, memo),
        _ => prefixes(top),
    };
    let (first, starts) = match start_set {
        Some(p) if p.per_kib <= best_set.per_kib * START_ALLOWANCE + LITERAL_FLOOR_SLACK => {
            (p, true)
        }
        _ => (best_set, false),
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
        parts.sort_by(|a, b| a.per_kib.total_cmp(&b.per_kib));
        for p in parts {
            if chosen.len() == MAX_SETS || p.per_kib > MAX_EXTRA_PER_KIB {
                break;
            }
            if !chosen.iter().any(|c| implies(c, &p) || implies(&p, c)) {
                chosen.push(p);
            }
        }
    }
    (chosen, starts)
}

/// Expected hits per KiB a start set may exceed the allowance by: sets so rare that the
/// estimate cannot tell them apart compare equal.
const LITERAL_FLOOR_SLACK: f64 = 0.5;

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
            // one literal, rarer than the two variants together.
            (r"(?i)click\s+here", Some(&["clic"])),
            // `k` also matches KELVIN SIGN: the text before it, or the sign itself (three
            // bytes in UTF-8).
            (r"(?i)kick\s+\d", Some(&["kic", "\u{212a}"])),
            // White space is folded to a space, so `\s` adds no variants.
            (r"(?i-u)click\s+here", Some(&["click "])),
            (r"\d+% off", Some(&["% off"])),
            // One rare literal beats two rarer ones.
            ("(?:cheap|discount) meds", Some(&[" meds"])),
            ("(?:cheapest|discount)", Some(&["cheapest", "discount"])),
            (r"(?:ab|discount)\d", None),
            (r"\w+@\w+", None),
            (".*", None),
            ("a.b", None),
            ("(?:winner)+!", Some(&["winner"])),
            ("(?:winner)?!!!!", Some(&["!!!!"])),
            // Three bytes will do when they are rare; two will not.
            (r"(?:winner)?\$\$!", Some(&["$$!"])),
            (r"(?:winner)?\$!", None),
            // `s` folds to LONG S too; the part after the last `s` needs no variant.
            (r"(?i)unsubscribe(?:\s+here)?", Some(&["cribe"])),
            // ASCII case folding costs no variants.
            (r"(?i-u)unsubscribe(?:\s+here)?", Some(&["unsubscribe"])),
        ];
        for (re, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(factors(re), want, "{re}");
        }
    }

    #[test]
    fn runs_of_one_byte_are_not_factors() {
        // Eight spaces would be found at every offset of every longer run of white space.
        for re in [r"(?i-u)[a-z0-9]{6}\s{8}[a-z0-9]{5}", "(?:winner)?!!!!"] {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(re)
                .unwrap();
            assert!(clauses(&hir).is_empty(), "{re}");
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
            required_all(&fold(&hir), &mut Memo::default())
                .0
                .into_iter()
                .map(|set| {
                    set.lits
                        .into_iter()
                        .map(|l| String::from_utf8_lossy(&l).into_owned())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        // Every match starts with `your `: it triggers an anchored search (it is not much
        // commoner than the best set), and the rarer `login`/`passw` must be found too.
        assert_eq!(
            sets(r"(?i-u)\byour\s+(?:password|login)\b"),
            [vec!["your "], vec!["login", "passw"]]
        );
        // A set implied by another (a literal of one contains the other) is not repeated.
        assert_eq!(sets("lottery winner"), [vec!["lottery winner"]]);
        assert_eq!(sets(r"\d+"), Vec::<Vec<String>>::new());
        assert_eq!(
            sets(r"(?:abcd|defg)\d+wxyz\s+uvwx"),
            [vec!["abcd", "defg"], vec!["wxyz"], vec!["uvwx"]]
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
