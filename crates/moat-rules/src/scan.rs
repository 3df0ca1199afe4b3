//! Scanning extracted targets with a [`CompiledRules`]: one automaton pass per target value,
//! candidate regexes, the regex sets, then meta rules, scores and verdicts.

use regex_automata::{Anchored, Input, PatternSet};
use serde::{Deserialize, Serialize};

use crate::compile::{CompiledRules, Consumer, LiteralUse, RegexRule, RuleKind, TargetMatcher};
use crate::schema::Thresholds;
use crate::target::{Target, Targets};

/// Longest matched text kept in a [`Hit`], in bytes.
const MAX_MATCHED: usize = 120;

/// What a pack decides for a message, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Below every threshold.
    Continue,
    /// Add headers (and the subject prefix).
    Tag,
    /// Hold for an operator.
    Quarantine,
    /// Refuse with 550 5.7.1.
    Reject,
}

impl Action {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Tag => "tag",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }
}

impl Thresholds {
    /// The most severe action whose threshold `score` reaches.
    pub fn action(&self, score: f64) -> Action {
        let reached = |t: Option<f64>| t.is_some_and(|t| score >= t);
        if reached(self.reject) {
            Action::Reject
        } else if reached(self.quarantine) {
            Action::Quarantine
        } else if reached(self.tag) {
            Action::Tag
        } else {
            Action::Continue
        }
    }
}

/// One rule that hit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Rule id.
    pub rule: String,
    /// The rule's score.
    pub score: f64,
    /// Matches counted (literals: occurrences; regexes: matches, at most 1,000 per value;
    /// meta: 1).
    pub count: u32,
    /// Target of the first match (none for meta rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Text of the first match, lossily decoded and cut at 120 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
}

/// One pack's result for a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackResult {
    /// Pack name.
    pub pack: String,
    /// Pack version.
    pub version: String,
    /// Sum of the scores of the rules that hit.
    pub score: f64,
    /// The pack's verdict under its own thresholds.
    pub action: Action,
    /// Rules that hit, in pack order.
    pub hits: Vec<Hit>,
}

/// The result of scanning one message against every pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanResult {
    /// One entry per pack, in pack order.
    pub packs: Vec<PackResult>,
}

impl ScanResult {
    /// The pack result that decides: the most severe action, then the highest score.
    pub fn decisive(&self) -> Option<&PackResult> {
        self.packs
            .iter()
            .max_by(|a, b| a.action.cmp(&b.action).then(a.score.total_cmp(&b.score)))
    }

    /// The most severe action over all packs.
    pub fn action(&self) -> Action {
        self.decisive().map_or(Action::Continue, |p| p.action)
    }

    /// The result of one pack.
    pub fn pack(&self, name: &str) -> Option<&PackResult> {
        self.packs.iter().find(|p| p.pack == name)
    }
}

/// The values one matcher scans in a message.
enum Values<'a> {
    /// The values of a `header:Name` target, found for it beforehand: (matcher, index in
    /// the message's headers).
    Headers(&'a [(usize, usize)]),
    /// Every value of its target.
    All,
}

/// What the scan of one message found per rule.
#[derive(Default)]
struct Found {
    /// Matches counted per rule (dense: one per rule of the snapshot).
    counts: Vec<u32>,
    /// For each rule that matched, in the order they first matched: (rule, matcher, text
    /// of its first match, cut to [`MAX_MATCHED`]).
    first: Vec<(usize, usize, Vec<u8>)>,
}

#[derive(Default)]
struct Scratch {
    /// The headers that have a `header:Name` matcher: (matcher, index in the headers).
    headers: Vec<(usize, usize)>,
    /// A header name, lower-cased.
    name: String,
    /// Literal occurrences in the current value.
    occurrences: Vec<crate::literals::Occurrence>,
    /// The current value folded for the literal search.
    folded: Vec<u8>,
    found: Found,
    candidates: Candidates,
    spans: Vec<(usize, usize)>,
    /// Which members of a regex set matched, indexed by the set's size (a pattern set
    /// whose capacity is the set's size lets the search stop once every member matched).
    patsets: Vec<PatternSet>,
}

/// The factor occurrences in one value, and the factored regexes they make candidates
/// (those with every factor set of a clause found).
#[derive(Default)]
struct Candidates {
    /// Per clause: the value number its mask belongs to.
    stamp: Vec<u64>,
    /// Per clause: factor sets found in the current value.
    mask: Vec<u8>,
    /// Per factored regex: the value number it was queued for.
    queued: Vec<u64>,
    queue: Vec<usize>,
    /// Factor occurrences in the current value: (factored regex, start, end).
    hits: Vec<(usize, usize, usize)>,
    spans: Vec<(usize, usize)>,
    value_no: u64,
}

impl Candidates {
    /// Makes room for the clauses and regexes of `m`, before its first value.
    fn reset(&mut self, m: &TargetMatcher) {
        self.stamp.clear();
        self.stamp.resize(m.clauses.len(), 0);
        self.mask.clear();
        self.mask.resize(m.clauses.len(), 0);
        self.queued.clear();
        self.queued.resize(m.factored.len(), 0);
    }

    /// Starts a value.
    fn next_value(&mut self) {
        self.value_no += 1;
        self.queue.clear();
        self.hits.clear();
    }

    /// Notes the occurrence `start..end` of factor set `bit` of clause `c` of `m`.
    #[inline(always)]
    fn note(&mut self, m: &TargetMatcher, c: usize, bit: u8, start: usize, end: usize) {
        if self.stamp[c] != self.value_no {
            self.stamp[c] = self.value_no;
            self.mask[c] = 0;
        }
        self.mask[c] |= 1 << bit;
        let cl = m.clauses[c];
        // An anchored regex is searched at its triggers' occurrences only.
        if bit == 0 || !m.factored[cl.regex].anchored {
            self.hits.push((cl.regex, start, end));
        }
        if self.mask[c] == cl.full_mask && self.queued[cl.regex] != self.value_no {
            self.queued[cl.regex] = self.value_no;
            self.queue.push(cl.regex);
        }
    }

    /// Calls `f` with each candidate regex and the occurrences of its factors in value
    /// order.
    #[inline]
    fn for_each(&mut self, mut f: impl FnMut(usize, &[(usize, usize)])) {
        if self.queue.is_empty() {
            return;
        }
        let (queued, no) = (&self.queued, self.value_no);
        self.hits.retain(|h| queued[h.0] == no);
        self.hits.sort_unstable();
        self.hits.dedup();
        let mut rest = &self.hits[..];
        while let Some(&(idx, _, _)) = rest.first() {
            let n = rest.iter().take_while(|h| h.0 == idx).count();
            self.spans.clear();
            self.spans.extend(rest[..n].iter().map(|h| (h.1, h.2)));
            rest = &rest[n..];
            f(idx, &self.spans);
        }
    }
}

/// The cleared pattern set of capacity `len` from `patsets`.
fn patset(patsets: &mut Vec<PatternSet>, len: usize) -> &mut PatternSet {
    while patsets.len() <= len {
        let n = patsets.len();
        patsets.push(PatternSet::new(n));
    }
    let ps = &mut patsets[len];
    ps.clear();
    ps
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl LiteralUse {
    /// True when the occurrence `start..end` the folded search found in `value` is one of
    /// this literal: the exact case or white space where they matter, whole words for words.
    fn accepts(&self, value: &[u8], start: usize, end: usize) -> bool {
        let span = &value[start..end];
        if self.exact.as_deref().is_some_and(|e| e != span)
            || self
                .caseless
                .as_deref()
                .is_some_and(|e| !e.eq_ignore_ascii_case(span))
        {
            return false;
        }
        !self.word
            || !(start.checked_sub(1).is_some_and(|i| is_word_byte(value[i]))
                || value.get(end).copied().is_some_and(is_word_byte))
    }
}

/// Counts `n` more matches of `rule`, at most `limit`; keeps the first match's text.
fn record(found: &mut Found, rule: usize, matcher: usize, text: &[u8], n: u32, limit: u32) {
    let count = &mut found.counts[rule];
    if *count == 0 {
        let cut = text.len().min(MAX_MATCHED);
        found.first.push((rule, matcher, text[..cut].to_vec()));
    }
    *count = count.saturating_add(n).min(limit);
}

/// Most matches of one regex counted in one value.
const MAX_REGEX_MATCHES: usize = 1000;

/// How many more matches of `rule` are worth counting in the current value: none once its
/// `max_hits` (`limit`) is reached, and at most [`MAX_REGEX_MATCHES`].
fn budget(found: &Found, rule: usize, limit: u32) -> usize {
    (limit.saturating_sub(found.counts[rule]) as usize).min(MAX_REGEX_MATCHES)
}

/// Counts the matches of `rr` in `value` (the first one's text is kept), up to its budget.
/// Only regexes the prefilter let through get here, and counting past the first match
/// happens only for those that match.
fn record_regex(rr: &RegexRule, value: &[u8], found: &mut Found, mi: usize) {
    let budget = budget(found, rr.rule, rr.limit);
    if budget == 0 {
        return;
    }
    let mut it = rr.re.get().find_iter(value);
    if let Some(first) = it.next() {
        let n = 1 + it.take(budget - 1).count();
        record(
            found,
            rr.rule,
            mi,
            &value[first.range()],
            n as u32,
            rr.limit,
        );
    }
}

/// Counts the matches of a factored regex in `value` by searching only the windows around
/// its factor occurrences `hits` (sorted by start), with the same result as
/// [`record_regex`] over the whole value:
///
/// - every match contains an occurrence of a factor, and lies inside that occurrence's
///   window ([`crate::reach::Reach::window`]); overlapping windows are merged, so each
///   match lies inside one merged window;
/// - a search of a window sees the whole value for look-around (`^`, `$`, `\b`), so it
///   finds only real matches, and from any position in a window the leftmost-first match
///   found is the one a search of the whole value finds (its candidates all lie inside the
///   window too);
/// - between windows there is no match, so the non-overlapping iteration over the whole
///   value visits the same matches in the same order.
///
/// With `runs`, each of `hits` is instead a run of alphabet bytes of which every match
/// contains at least one byte ([`crate::reach::Reach::run_window`]).
fn search_windows(
    rr: &RegexRule,
    value: &[u8],
    hits: &[(usize, usize)],
    runs: bool,
    found: &mut Found,
    mi: usize,
) {
    if rr.reach.is_whole() {
        return record_regex(rr, value, found, mi);
    }
    let budget = budget(found, rr.rule, rr.limit);
    if budget == 0 {
        return;
    }
    let mut count = 0usize;
    let mut first: Option<(usize, usize)> = None;
    let mut search = |lo: usize, hi: usize, count: &mut usize| {
        if *count >= budget {
            return;
        }
        for m in rr.re.get().find_iter(Input::new(value).range(lo..hi)) {
            first.get_or_insert((m.start(), m.end()));
            *count += 1;
            if *count >= budget {
                break;
            }
        }
    };
    let mut cur: Option<crate::reach::Window> = None;
    for &(start, end) in hits {
        if count >= budget {
            break;
        }
        if let Some(w) = cur
            && w.closed
            && start >= w.start
            && end <= w.end
        {
            // Inside a window bounded by bytes no match can contain: nothing new.
            continue;
        }
        let w = if runs {
            rr.reach.run_window(value, start, end)
        } else {
            rr.reach.window(value, start, end)
        };
        cur = Some(match cur {
            Some(c) if w.start <= c.end => crate::reach::Window {
                start: c.start.min(w.start),
                end: c.end.max(w.end),
                closed: c.closed && w.closed,
            },
            Some(c) => {
                search(c.start, c.end, &mut count);
                w
            }
            None => w,
        });
    }
    if let Some(c) = cur {
        search(c.start, c.end, &mut count);
    }
    if let Some((s, e)) = first {
        record(found, rr.rule, mi, &value[s..e], count as u32, rr.limit);
    }
}

/// Longest match for which anchored searches are always used: each reads at most this
/// many bytes, however many starts a value holds.
const MAX_ANCHORED_REACH: usize = 1024;
/// Most starts searched anchored in one value when matches are longer: each anchored search
/// may read to the end of the value, so more would cost quadratic time, where the windows
/// are searched once.
const MAX_ANCHORED_STARTS: usize = 16;

/// True when searching at every start in `hits` reads each byte a bounded number of times.
fn anchored_is_linear(rr: &RegexRule, hits: &[(usize, usize)]) -> bool {
    rr.reach.max_len().is_some_and(|m| m <= MAX_ANCHORED_REACH) || hits.len() <= MAX_ANCHORED_STARTS
}

/// Counts the matches of a regex whose every match starts at an occurrence of its trigger
/// factor, by anchored searches at those occurrences (`hits`, sorted by start), with the
/// same result as [`record_regex`] over the whole value: the first occurrence where an
/// anchored search matches is the leftmost match start, an anchored search finds there the
/// match an unanchored search would prefer, and the next match is searched for only from
/// the end of the previous one, as the non-overlapping iteration does.
fn search_anchored(
    rr: &RegexRule,
    value: &[u8],
    hits: &[(usize, usize)],
    found: &mut Found,
    mi: usize,
) {
    let budget = budget(found, rr.rule, rr.limit);
    if budget == 0 {
        return;
    }
    let (mut count, mut first, mut from) = (0usize, None, 0usize);
    let mut tried = None;
    for &(start, _) in hits {
        if start < from || tried == Some(start) {
            continue;
        }
        tried = Some(start);
        let input = Input::new(value).range(start..).anchored(Anchored::Yes);
        if let Some(m) = rr.re.get().search(&input) {
            first.get_or_insert((m.start(), m.end()));
            count += 1;
            from = m.end().max(m.start() + 1);
            if count >= budget {
                break;
            }
        }
    }
    if let Some((s, e)) = first {
        record(found, rr.rule, mi, &value[s..e], count as u32, rr.limit);
    }
}

/// Counts the matches of the factored regex `rr` in `value`, given the occurrences of its
/// factors (`hits`, sorted by start): anchored at its triggers where that reads each byte a
/// bounded number of times, otherwise in the windows around the occurrences.
fn search_factored(
    rr: &RegexRule,
    value: &[u8],
    hits: &[(usize, usize)],
    found: &mut Found,
    mi: usize,
) {
    if rr.anchored && anchored_is_linear(rr, hits) {
        search_anchored(rr, value, hits, found, mi);
    } else {
        search_windows(rr, value, hits, false, found, mi);
    }
}

/// Counts the matches of `rr`, whose every match contains a byte (or a run) of `rare`, by
/// searching the windows around those bytes in `value`; `spans` is scratch space.
fn search_rare(
    rare: &crate::reach::RareBytes,
    rr: &RegexRule,
    value: &[u8],
    spans: &mut Vec<(usize, usize)>,
    found: &mut Found,
    mi: usize,
) {
    spans.clear();
    rare.for_each(value, |start, end| spans.push((start, end)));
    if !spans.is_empty() {
        search_windows(rr, value, spans, rare.run() > 1, found, mi);
    }
}

impl TargetMatcher {
    /// Runs the literal search over `value`: records the rule literals found, and hands
    /// each factor occurrence to `factor` (clause, bit, start, end).
    fn search_literals(
        &self,
        mi: usize,
        value: &[u8],
        s: &mut Scratch,
        mut factor: impl FnMut(&mut Scratch, usize, u8, usize, usize),
    ) {
        let Some(lits) = &self.literals else {
            return;
        };
        let mut occurrences = std::mem::take(&mut s.occurrences);
        lits.find_all(value, &mut occurrences, &mut s.folded);
        for &(pat, start, end) in &occurrences {
            for c in &self.consumers[pat as usize] {
                match c {
                    Consumer::Literal(l) => {
                        if l.accepts(value, start, end) {
                            record(&mut s.found, l.rule, mi, &value[start..end], 1, l.limit);
                        }
                    }
                    Consumer::Factor { clause, bit } => factor(s, *clause, *bit, start, end),
                }
            }
        }
        s.occurrences = occurrences;
    }

    /// The reference for the fast path: literals through the automaton, but every regex of
    /// the target run over the whole value, with no factor, window or set.
    fn scan_value_reference(&self, mi: usize, value: &[u8], s: &mut Scratch) {
        self.search_literals(mi, value, s, |_, _, _, _, _| {});
        let set_members = self.sets.iter().flat_map(|(_, members)| members);
        let byte_filtered = self.byte_filtered.iter().map(|(_, rr)| rr);
        for rr in self.factored.iter().chain(byte_filtered).chain(set_members) {
            record_regex(rr, value, &mut s.found, mi);
        }
    }

    fn scan_value(&self, mi: usize, value: &[u8], s: &mut Scratch) {
        s.candidates.next_value();
        self.search_literals(mi, value, s, |s, c, bit, start, end| {
            s.candidates.note(self, c, bit, start, end);
        });
        let found = &mut s.found;
        s.candidates.for_each(|idx, spans| {
            search_factored(&self.factored[idx], value, spans, found, mi);
        });
        for (rare, rr) in &self.byte_filtered {
            if budget(&s.found, rr.rule, rr.limit) == 0 {
                continue;
            }
            search_rare(rare, rr, value, &mut s.spans, &mut s.found, mi);
        }
        for (set, members) in &self.sets {
            // Members that reached their max_hits need no search.
            if members
                .iter()
                .all(|rr| budget(&s.found, rr.rule, rr.limit) == 0)
            {
                continue;
            }
            let ps = patset(&mut s.patsets, members.len());
            set.which_overlapping_matches(&Input::new(value), ps);
            for p in ps.iter() {
                let rr = &members[p.as_usize()];
                record_regex(rr, value, &mut s.found, mi);
            }
        }
    }
}

impl CompiledRules {
    /// Scans the targets of one message with every pack's thresholds.
    pub fn scan(&self, targets: &Targets<'_>) -> ScanResult {
        self.scan_with(targets, false)
    }

    /// Scans like [`CompiledRules::scan`] but runs every regex over every whole value of
    /// its targets, without factors, windows or regex sets: slow, and the reference the
    /// fast path must agree with exactly (hits, counts and matched text). For tests.
    #[doc(hidden)]
    pub fn scan_reference(&self, targets: &Targets<'_>) -> ScanResult {
        self.scan_with(targets, true)
    }

    fn scan_with(&self, targets: &Targets<'_>, reference: bool) -> ScanResult {
        thread_local! {
            /// Scratch space of the scans on this thread, kept between messages (it keeps
            /// the capacity the largest message scanned here needed).
            static SCRATCH: std::cell::Cell<Option<Box<Scratch>>> =
                const { std::cell::Cell::new(None) };
        }
        let mut s = SCRATCH.take().unwrap_or_default();
        let result = self.scan_in(targets, reference, &mut s);
        SCRATCH.set(Some(s));
        result
    }

    fn scan_in(&self, targets: &Targets<'_>, reference: bool, s: &mut Scratch) -> ScanResult {
        s.found.counts.clear();
        s.found.counts.resize(self.rules.len(), 0);
        s.found.first.clear();
        // Each header goes to the matcher of its name, looked up once.
        let mut headers = std::mem::take(&mut s.headers);
        headers.clear();
        for (i, (n, _)) in targets.headers().iter().enumerate() {
            s.name.clear();
            s.name.push_str(n);
            s.name.make_ascii_lowercase();
            if let Some(&mi) = self.header_matchers.get(s.name.as_str()) {
                headers.push((mi, i));
            }
        }
        // Stable: each matcher sees its values in message order.
        headers.sort_by_key(|h| h.0);
        for (mi, m) in self.matchers.iter().enumerate() {
            let values = match &m.target {
                Target::Header(_) => {
                    let from = headers.partition_point(|h| h.0 < mi);
                    let n = headers[from..].iter().take_while(|h| h.0 == mi).count();
                    if n == 0 {
                        continue;
                    }
                    Values::Headers(&headers[from..from + n])
                }
                Target::AllHeaders if targets.headers().is_empty() => continue,
                Target::Field(f) if targets.field(*f).is_empty() => continue,
                _ => Values::All,
            };
            s.candidates.reset(m);
            let scan = |v: &[u8], s: &mut Scratch| {
                if reference {
                    m.scan_value_reference(mi, v, s);
                } else {
                    m.scan_value(mi, v, s);
                }
            };
            match values {
                Values::Headers(values) => values
                    .iter()
                    .for_each(|&(_, i)| scan(targets.headers()[i].1.as_bytes(), s)),
                Values::All => targets.for_each_value(&m.target, |v| scan(v, s)),
            }
        }
        s.headers = headers;
        let Found { counts, first } = &mut s.found;
        // The rules that hit, in rule order: those that matched, and the meta rules true.
        let mut hit: Vec<usize> = first.iter().map(|f| f.0).collect();
        for m in &self.metas {
            // Most rules match nothing in a message: a meta rule whose references all have
            // their baseline counts has its baseline value.
            let unchanged = m.deps.iter().all(|d| counts[*d] == self.baseline[*d]);
            let value = if unchanged {
                self.baseline[m.rule]
            } else {
                u32::from(m.expr.eval(counts) != 0.0)
            };
            counts[m.rule] = value;
            if value != 0 {
                hit.push(m.rule);
            }
        }
        hit.sort_unstable();
        first.sort_unstable_by_key(|f| f.0);
        let packs = self
            .packs
            .iter()
            .map(|p| {
                let mut score = 0.0;
                let mut hits = Vec::new();
                let from = hit.partition_point(|&i| i < p.rules.start);
                for &i in hit[from..].iter().take_while(|&&i| i < p.rules.end) {
                    let r = &self.rules[i];
                    score += r.score;
                    let matched = first
                        .binary_search_by_key(&i, |f| f.0)
                        .ok()
                        .map(|at| &first[at]);
                    let (target, matched) = match (matched, r.kind) {
                        (Some((_, mi, text)), RuleKind::Literals | RuleKind::Regex) => (
                            Some(target_name(&self.matchers[*mi].target)),
                            Some(String::from_utf8_lossy(text).into_owned()),
                        ),
                        _ => (None, None),
                    };
                    hits.push(Hit {
                        rule: r.id.clone(),
                        score: r.score,
                        count: counts[i],
                        target,
                        matched,
                    });
                }
                // Keep scores readable: sums of decimal scores drift in the last bits.
                let score = (score * 1000.0).round() / 1000.0;
                PackResult {
                    pack: p.name.clone(),
                    version: p.version.clone(),
                    score,
                    action: p.thresholds.action(score),
                    hits,
                }
            })
            .collect();
        ScanResult { packs }
    }
}

fn target_name(t: &Target) -> String {
    t.to_string()
}

/// The `n` largest non-zero values of `v` with their indices, largest first (ties: the
/// higher index first).
fn largest<T: Ord + Copy + Default>(v: &[T], n: usize) -> Vec<(T, usize)> {
    let mut all: Vec<(T, usize)> = v.iter().copied().zip(0..).collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    all.truncate(n);
    all.retain(|(x, _)| *x != T::default());
    all
}

/// Reports where scan time goes (automaton, candidate regexes, regex sets) per target, and
/// the factored regexes that ran most often without matching. A diagnostic for rule
/// authors and benchmarks; not used on the SMTP path.
#[doc(hidden)]
pub fn profile_scan(rules: &CompiledRules, messages: &[Targets<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    use std::time::{Duration, Instant};
    for m in &rules.matchers {
        let (mut t_ac, mut t_re, mut t_set) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut t_rare = Duration::ZERO;
        let mut spent_rare = vec![Duration::ZERO; m.byte_filtered.len()];
        let (mut runs, mut matches, mut set_hits) = (0u64, 0u64, 0u64);
        let (mut ac_hits, mut consumer_visits) = (0u64, 0u64);
        let mut per_pattern = vec![0u64; m.consumers.len()];
        let mut wasted: Vec<u64> = vec![0; m.factored.len()];
        let mut spent: Vec<Duration> = vec![Duration::ZERO; m.factored.len()];
        let mut candidates = Candidates::default();
        candidates.reset(m);
        // Scratch space kept between values, as the scan keeps it.
        let (mut spans, mut occurrences, mut folded) = (Vec::new(), Vec::new(), Vec::new());
        let mut patsets = Vec::new();
        let mut found = Found {
            counts: vec![0; rules.rules.len()],
            first: Vec::new(),
        };
        for t in messages {
            t.for_each_value(&m.target, |value| {
                candidates.next_value();
                let s = Instant::now();
                if let Some(lits) = &m.literals {
                    lits.find_all(value, &mut occurrences, &mut folded);
                    for &(pat, start, end) in &occurrences {
                        ac_hits += 1;
                        per_pattern[pat as usize] += 1;
                        consumer_visits += m.consumers[pat as usize].len() as u64;
                        for c in &m.consumers[pat as usize] {
                            if let Consumer::Factor { clause, bit } = c {
                                candidates.note(m, *clause, *bit, start, end);
                            }
                        }
                    }
                }
                t_ac += s.elapsed();
                candidates.for_each(|i, spans| {
                    runs += 1;
                    // The same search as the scan: anchored or in windows.
                    let rule = m.factored[i].rule;
                    found.counts[rule] = 0;
                    let one = Instant::now();
                    search_factored(&m.factored[i], value, spans, &mut found, 0);
                    let d = one.elapsed();
                    spent[i] += d;
                    t_re += d;
                    if found.counts[rule] > 0 {
                        matches += 1;
                    } else {
                        wasted[i] += 1;
                    }
                    found.first.clear();
                });
                let s = Instant::now();
                for (k, (rare, rr)) in m.byte_filtered.iter().enumerate() {
                    let one = Instant::now();
                    found.counts[rr.rule] = 0;
                    search_rare(rare, rr, value, &mut spans, &mut found, 0);
                    found.first.clear();
                    spent_rare[k] += one.elapsed();
                }
                t_rare += s.elapsed();
                let s = Instant::now();
                for (set, members) in &m.sets {
                    let ps = patset(&mut patsets, members.len());
                    set.which_overlapping_matches(&Input::new(value), ps);
                    set_hits += ps.len() as u64;
                }
                t_set += s.elapsed();
            });
        }
        let _ = writeln!(
            out,
            "{:<20} ac {:>10.3?} ({ac_hits} hits, {consumer_visits} consumer visits) regex {:>10.3?} ({runs} runs, {matches} matched) rare-byte {:>10.3?} set {:>10.3?} ({} regexes, {set_hits} hits)",
            m.target.to_string(),
            t_ac,
            t_re,
            t_rare,
            t_set,
            m.sets.iter().map(|s| s.1.len()).sum::<usize>()
        );
        let mut top: Vec<(u64, usize)> = per_pattern.iter().copied().zip(0..).collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        let top: Vec<String> = top
            .iter()
            .take(12)
            .filter(|(n, _)| *n > 0)
            .map(|(n, i)| format!("{:?}={n}", String::from_utf8_lossy(&m.patterns[*i])))
            .collect();
        if !top.is_empty() {
            let _ = writeln!(out, "    most found: {}", top.join(" "));
        }
        if std::env::var_os("MOAT_PROFILE_FACTORS").is_some() {
            let mut by: Vec<(u64, usize)> = per_pattern.iter().copied().zip(0..).collect();
            by.sort_unstable_by(|a, b| b.cmp(a));
            for (n, i) in by.iter().take(40).filter(|(n, _)| *n > 0) {
                let users: Vec<String> = m.consumers[*i]
                    .iter()
                    .map(|c| match c {
                        Consumer::Literal(l) => rules.rules[l.rule].id.clone(),
                        Consumer::Factor { clause, bit } => format!(
                            "{}#{bit}",
                            rules.rules[m.factored[m.clauses[*clause].regex].rule].id
                        ),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "      {n:>7} {:?}: {}",
                    String::from_utf8_lossy(&m.patterns[*i]),
                    users.join(" ")
                );
            }
            for (n, (set, members)) in m.sets.iter().enumerate() {
                // The set on its own: a clone has empty lazy-DFA caches, so its first pass
                // is cold (what the first messages after a start or a reload pay); warm is
                // the faster of two more passes.
                let set = set.clone();
                let mut ps = PatternSet::new(members.len());
                let mut pass = || {
                    let s = Instant::now();
                    let mut hits = 0usize;
                    for t in messages {
                        t.for_each_value(&m.target, |v| {
                            ps.clear();
                            set.which_overlapping_matches(&Input::new(v), &mut ps);
                            hits += ps.len();
                        });
                    }
                    (s.elapsed(), hits)
                };
                let (cold, hits) = pass();
                let warm = pass().0.min(pass().0);
                let _ = writeln!(
                    out,
                    "      set {n}: {} regexes, {cold:.3?} cold, {warm:.3?} warm, {hits} hits",
                    members.len(),
                );
                for rr in members {
                    let _ = writeln!(
                        out,
                        "      set: {} {}",
                        rules.rules[rr.rule].id,
                        rr.re.pattern()
                    );
                }
            }
        }
        // Each set member on its own, to see which ones are expensive.
        let mut alone: Vec<(Duration, usize)> = Vec::new();
        let members: Vec<&crate::compile::RegexRule> = m.sets.iter().flat_map(|s| &s.1).collect();
        for (i, rr) in members.iter().enumerate() {
            let s = Instant::now();
            for t in messages {
                t.for_each_value(&m.target, |v| {
                    std::hint::black_box(rr.re.get().is_match(v));
                });
            }
            alone.push((s.elapsed(), i));
        }
        let total: Duration = alone.iter().map(|a| a.0).sum();
        alone.sort_unstable_by(|a, b| b.cmp(a));
        if !alone.is_empty() {
            let _ = writeln!(out, "    set members run alone: {total:.3?} in total");
        }
        // One line per regex: what was measured, then the rule id and the pattern.
        let mut line = |what: String, r: &crate::compile::RegexRule| {
            let _ = writeln!(
                out,
                "    {what}: {} {}",
                rules.rules[r.rule].id,
                r.re.pattern()
            );
        };
        for (d, i) in alone.into_iter().take(8) {
            line(format!("{d:>10.3?} alone"), members[i]);
        }
        // The candidate regexes that cost most, searched as the scan searches them.
        for (d, i) in largest(&spent, 5) {
            line(format!("{d:>10.3?} in runs"), &m.factored[i]);
        }
        for (d, i) in largest(&spent_rare, 5) {
            let (rare, r) = &m.byte_filtered[i];
            line(
                format!("{d:>10.3?} around rare bytes (run {})", rare.run()),
                r,
            );
        }
        for (w, i) in largest(&wasted, 5) {
            line(format!("{w:>6} wasted runs"), &m.factored[i]);
        }
    }
    out
}
