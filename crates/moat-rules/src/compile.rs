//! Validation and compilation of loaded packs into an immutable [`CompiledRules`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use regex::bytes::RegexBuilder;
use regex_automata::meta as ra;

use crate::error::{Error, Problem, Step};
use crate::literals::Literals;
use crate::loader::{Lines, LoadedPack};
use crate::meta::{self, Expr, NameRef};
use crate::reach::{RareBytes, Reach};
use crate::schema::{TestDef, Thresholds};
use crate::target::Target;
use crate::{factor, packtest, rarity};

/// Limits applied while compiling; patterns are untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// Compiled program size limit of each regex, in bytes (`RegexBuilder::size_limit`).
    pub regex_size_limit: usize,
    /// Lazy DFA cache limit of each regex, in bytes (`RegexBuilder::dfa_size_limit`).
    pub dfa_size_limit: usize,
    /// Longest accepted regex source, in bytes.
    pub max_regex_len: usize,
    /// Most rules accepted over all packs.
    pub max_rules: usize,
    /// Regexes without a usable literal factor run together in multi-pattern sets, one
    /// lazy DFA pass each. A set grows while its lazy DFA needs at most this many bytes
    /// to scan the reference mail text: regexes whose union stays small share a pass,
    /// while regexes whose union blows up (counted repetitions of words, say) would thrash
    /// the cache of one shared DFA, and get sets of their own.
    pub regex_set_budget: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            regex_size_limit: 1 << 20,
            dfa_size_limit: 1 << 20,
            max_regex_len: 8 * 1024,
            max_rules: 100_000,
            regex_set_budget: 256 * 1024,
        }
    }
}

/// What kind of matcher a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Literal substrings and/or words.
    Literals,
    /// A regex.
    Regex,
    /// A meta expression.
    Meta,
}

/// A compiled rule's description.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// Rule id, unique in its pack.
    pub id: String,
    /// Index of the pack in [`CompiledRules::packs`].
    pub pack: usize,
    /// Description from the pack.
    pub description: String,
    /// Score added when it hits.
    pub score: f64,
    /// Matcher kind.
    pub kind: RuleKind,
    /// Targets (empty for meta rules).
    pub targets: Vec<Target>,
    /// Matches counted at most (`max_hits`; `u32::MAX` when not set).
    pub max_hits: u32,
}

/// A compiled pack's description and verdict settings.
#[derive(Debug, Clone)]
pub struct PackInfo {
    /// Pack name.
    pub name: String,
    /// Pack version.
    pub version: String,
    /// Description.
    pub description: String,
    /// The pack file.
    pub file: PathBuf,
    /// Score thresholds.
    pub thresholds: Thresholds,
    /// Text of the 550 reply.
    pub reject_text: String,
    /// Subject prefix for tagged messages.
    pub subject_prefix: Option<String>,
    /// Global indices of its rules.
    pub rules: std::ops::Range<usize>,
}

/// How one target's matcher is built (see [`CompiledRules::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStats {
    /// The target.
    pub target: Target,
    /// Patterns in its automaton (literals, words and regex factors, deduplicated).
    pub patterns: usize,
    /// Regexes run only where one of their factors was found.
    pub factored_regexes: usize,
    /// Regexes without a usable factor but with a rare byte every match contains, run
    /// only around occurrences of that byte.
    pub byte_filtered_regexes: usize,
    /// Regexes with neither, run as a set.
    pub set_regexes: usize,
}

/// A literal or word of a rule, as the literal search finds it.
#[derive(Debug, Clone)]
pub(crate) struct LiteralUse {
    pub(crate) rule: usize,
    /// Set when case must match.
    pub(crate) exact: Option<Box<[u8]>>,
    /// Set when the literal holds white space, which the search folds (a tab finds a space).
    pub(crate) caseless: Option<Box<[u8]>>,
    pub(crate) word: bool,
    /// The rule's `max_hits`.
    pub(crate) limit: u32,
}

/// What an automaton pattern feeds when it is found.
#[derive(Debug, Clone)]
pub(crate) enum Consumer {
    /// A literal or word of a rule.
    Literal(LiteralUse),
    /// A literal of factor set `bit` of prefilter clause `clause`; the clause's regex
    /// becomes a candidate on a value once every set of the clause has been found there.
    Factor { clause: usize, bit: u8 },
}

/// A regex and the rule it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct RegexRule {
    pub(crate) rule: usize,
    /// The rule's `max_hits`.
    pub(crate) limit: u32,
    /// Built as `regex::bytes::Regex` builds it, on its first search; used directly for
    /// searches of a window of a value that still see the whole value for look-around.
    /// Shared by the rule's targets.
    pub(crate) re: Arc<LazyRegex>,
    /// Where its matches can lie around a factor it must contain.
    pub(crate) reach: Reach,
    /// Every match starts at an occurrence of a trigger factor (bit 0 of its clauses): it
    /// is searched anchored there instead of in windows.
    pub(crate) anchored: bool,
    /// Every match starts at the start of the value (`^` outside multi-line mode).
    pub(crate) at_start: bool,
}

/// One way for a factored regex to become a candidate: all of its factor sets found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clause {
    /// Index into `TargetMatcher::factored`.
    pub(crate) regex: usize,
    /// One bit per factor set of the clause.
    pub(crate) full_mask: u8,
}

/// Everything that runs over one target.
#[derive(Debug, Clone)]
pub(crate) struct TargetMatcher {
    pub(crate) target: Target,
    pub(crate) literals: Option<Literals>,
    /// Indexed by automaton pattern id.
    pub(crate) consumers: Vec<Vec<Consumer>>,
    /// The automaton's patterns (lower-cased), for diagnostics.
    pub(crate) patterns: Vec<Vec<u8>>,
    /// Regexes with factors, run only on values where one of their clauses is complete.
    pub(crate) factored: Vec<RegexRule>,
    pub(crate) clauses: Vec<Clause>,
    /// Regexes without a usable factor, run only around the rare bytes they contain.
    pub(crate) byte_filtered: Vec<(RareBytes, RegexRule)>,
    /// Regexes with neither, run in small sets: one multi-pattern regex each (overlapping
    /// matches), telling which members match a value.
    pub(crate) sets: Vec<(ra::Regex, Vec<RegexRule>)>,
}

/// A meta rule, in evaluation order.
#[derive(Debug, Clone)]
pub(crate) struct MetaRule {
    pub(crate) rule: usize,
    pub(crate) expr: Expr<usize>,
    /// Every rule the expression refers to.
    pub(crate) deps: Box<[usize]>,
}

/// A pack test resolved against its pack.
#[derive(Debug, Clone)]
pub(crate) struct CompiledTest {
    pub(crate) pack: usize,
    pub(crate) line: Option<usize>,
    pub(crate) def: TestDef,
    pub(crate) message: Option<Vec<u8>>,
}

/// An immutable, compiled rule set: every pack of a folder, one automaton per target.
///
/// Cheap to share behind an `Arc`; scanning never mutates it.
#[derive(Debug)]
pub struct CompiledRules {
    pub(crate) packs: Vec<PackInfo>,
    pub(crate) rules: Vec<RuleInfo>,
    pub(crate) matchers: Vec<TargetMatcher>,
    /// Meta rules in evaluation order (dependencies first).
    pub(crate) metas: Vec<MetaRule>,
    /// Per rule, its count on a message no rule matched: 0 for matchers, the value of
    /// each meta rule then. A meta rule whose references all still have these counts
    /// has its baseline value without being evaluated.
    pub(crate) baseline: Vec<u32>,
    /// Lower-case header name → the matcher of its `header:Name` target, so that a scan
    /// looks each header of a message up once.
    pub(crate) header_matchers: HashMap<String, usize>,
    pub(crate) tests: Vec<CompiledTest>,
    pub(crate) fingerprint: u64,
    pub(crate) compile_time: Duration,
}

impl CompiledRules {
    /// The packs, in file-name order.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// All rules of all packs.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// The rule with this id in this pack.
    pub fn rule(&self, pack: &str, id: &str) -> Option<&RuleInfo> {
        let p = self.packs.iter().find(|p| p.name == pack)?;
        self.rules[p.rules.clone()].iter().find(|r| r.id == id)
    }

    /// The targets that have at least one rule.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.matchers.iter().map(|m| &m.target)
    }

    /// A hash of every file the rule set was built from.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// How long validation and compilation took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// How many pack test cases the rule set carries.
    pub fn test_count(&self) -> usize {
        self.tests.len()
    }

    /// Per target: automaton patterns, regexes behind a factor, regexes in the set.
    pub fn stats(&self) -> Vec<TargetStats> {
        self.matchers
            .iter()
            .map(|m| TargetStats {
                target: m.target.clone(),
                patterns: m.consumers.len(),
                factored_regexes: m.factored.len(),
                byte_filtered_regexes: m.byte_filtered.len(),
                set_regexes: m.sets.iter().map(|s| s.1.len()).sum(),
            })
            .collect()
    }

    /// The patterns of `target`'s one-pass literal search, folded as the search sees them
    /// ([`crate::fold`]); empty when no rule is on `target`. For diagnostics, and for the
    /// benchmark that times the literal pass alone.
    pub fn automaton_patterns(&self, target: &Target) -> &[Vec<u8>] {
        self.matcher(target).map_or(&[], |m| &m.patterns)
    }

    /// The matcher of `target`, if any rule is on it.
    pub(crate) fn matcher(&self, target: &Target) -> Option<&TargetMatcher> {
        self.matchers.iter().find(|m| &m.target == target)
    }

    /// `name version` of every pack, comma-separated (for logs and headers).
    pub fn versions(&self) -> String {
        self.packs
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    let mut b = id.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

fn valid_pack_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Parses a verdict name as used in pack tests.
pub(crate) fn parse_action(s: &str) -> Option<crate::Action> {
    use crate::Action;
    Some(match s {
        "continue" => Action::Continue,
        "tag" => Action::Tag,
        "quarantine" => Action::Quarantine,
        "reject" => Action::Reject,
        _ => return None,
    })
}

/// A literal or regex entry of one rule before it is placed into target matchers.
enum Entry {
    Lit { bytes: Vec<u8>, word: bool },
    Regex { pattern: String },
}

struct PendingRule {
    global: usize,
    file: PathBuf,
    line: usize,
    case_sensitive: bool,
    entries: Vec<Entry>,
}

/// Validates and compiles loaded packs.
pub(crate) fn compile(
    loaded: &[LoadedPack],
    fingerprint: u64,
    opts: &CompileOptions,
) -> Result<CompiledRules, Error> {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut packs = Vec::new();
    let mut rules = Vec::new();
    let mut pending = Vec::new();
    let mut meta_src: Vec<(usize, PathBuf, usize, String)> = Vec::new();
    let mut tests = Vec::new();
    let mut seen_packs: HashMap<String, PathBuf> = HashMap::new();

    for (pi, lp) in loaded.iter().enumerate() {
        let f = &lp.file;
        let path = &lp.path;
        if !valid_pack_name(&f.pack.name) {
            problems.push(Problem::new(
                path,
                format!("invalid pack name {:?}", f.pack.name),
            ));
        }
        if let Some(other) = seen_packs.insert(f.pack.name.clone(), path.clone()) {
            problems.push(Problem::new(
                path,
                format!(
                    "pack name {:?} is also used by {}",
                    f.pack.name,
                    other.display()
                ),
            ));
        }
        check_thresholds(&f.thresholds, path, &mut problems);
        let first = rules.len();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let lines = Lines::new(&lp.source);
        for def in &f.rules {
            let id = def.id.get_ref().as_str();
            let line = lines.line_of(def.id.span().start);
            let problem = |m: String| Problem::new(path, m).at(Some(line)).rule(id);
            if !valid_id(id) {
                problems.push(problem("invalid rule id".into()));
            }
            if ids.insert(id, line).is_some() {
                problems.push(problem("duplicate rule id in this pack".into()));
            }
            if !def.score.is_finite() {
                problems.push(problem("score is not a finite number".into()));
            }
            let has_lits =
                !def.literals.is_empty() || !def.words.is_empty() || def.list_file.is_some();
            let kinds = [has_lits, def.regex.is_some(), def.meta.is_some()];
            let kind = match kinds {
                [true, false, false] => RuleKind::Literals,
                [false, true, false] => RuleKind::Regex,
                [false, false, true] => RuleKind::Meta,
                [false, false, false] => {
                    problems.push(problem(
                        "no matcher: give literals, words, list_file, regex or meta".into(),
                    ));
                    RuleKind::Literals
                }
                _ => {
                    problems.push(problem(
                        "more than one matcher kind (literals/words/list_file, regex, meta)".into(),
                    ));
                    RuleKind::Literals
                }
            };
            let mut targets = Vec::new();
            match (&def.target, kind) {
                (Some(_), RuleKind::Meta) => {
                    problems.push(problem("a meta rule takes no target".into()))
                }
                (None, RuleKind::Literals | RuleKind::Regex) => {
                    problems.push(problem("missing target".into()))
                }
                (Some(t), _) => {
                    for name in t.to_vec() {
                        match Target::parse(&name) {
                            Some(t) if !targets.contains(&t) => targets.push(t),
                            Some(_) => {}
                            None => problems.push(problem(format!("unknown target {name:?}"))),
                        }
                    }
                    if targets.is_empty() {
                        problems.push(problem("empty target list".into()));
                    }
                }
                (None, RuleKind::Meta) => {}
            }
            match (def.max_hits, kind) {
                (Some(_), RuleKind::Meta) => {
                    problems.push(problem("max_hits is not for meta rules".into()))
                }
                (Some(0), _) => problems.push(problem("max_hits must be at least 1".into())),
                _ => {}
            }
            let global = rules.len();
            let mut entries = Vec::new();
            match kind {
                RuleKind::Literals => {
                    for (list, word) in [(&def.literals, false), (&def.words, true)] {
                        for l in list {
                            if l.is_empty() {
                                problems.push(problem("empty literal or word".into()));
                            }
                            entries.push(Entry::Lit {
                                bytes: l.as_bytes().to_vec(),
                                word,
                            });
                        }
                    }
                    if let Some(name) = &def.list_file {
                        match lp.lists.get(name) {
                            Some(Ok(items)) if items.is_empty() => {
                                problems.push(problem(format!("list file {name} is empty")))
                            }
                            Some(Ok(items)) => entries.extend(items.iter().map(|l| Entry::Lit {
                                bytes: l.as_bytes().to_vec(),
                                word: def.list_as_words,
                            })),
                            Some(Err(e)) => problems.push(problem(e.clone())),
                            None => problems.push(problem(format!("list file {name} not loaded"))),
                        }
                    }
                }
                RuleKind::Regex => {
                    let pattern = def.regex.clone().unwrap_or_default();
                    if pattern.len() > opts.max_regex_len {
                        problems.push(problem(format!(
                            "regex longer than {} bytes",
                            opts.max_regex_len
                        )));
                    } else {
                        entries.push(Entry::Regex { pattern });
                    }
                }
                RuleKind::Meta => meta_src.push((
                    global,
                    path.clone(),
                    line,
                    def.meta.clone().unwrap_or_default(),
                )),
            }
            if !entries.is_empty() {
                pending.push(PendingRule {
                    global,
                    file: path.clone(),
                    line,
                    case_sensitive: def.case_sensitive,
                    entries,
                });
            }
            rules.push(RuleInfo {
                id: id.to_string(),
                pack: pi,
                description: def.description.clone(),
                score: def.score,
                kind,
                targets,
                max_hits: def.max_hits.unwrap_or(u32::MAX),
            });
        }
        packs.push(PackInfo {
            name: f.pack.name.clone(),
            version: f.pack.version.clone(),
            description: f.pack.description.clone(),
            file: path.clone(),
            thresholds: f.thresholds,
            reject_text: f.pack.reject_text.clone(),
            subject_prefix: f.pack.subject_prefix.clone(),
            rules: first..rules.len(),
        });
        for t in &f.tests {
            let line = Some(lines.line_of(t.name.span().start));
            let tproblem = |m: String| {
                Problem::new(path, format!("test {:?}: {m}", t.name.get_ref())).at(line)
            };
            let sources = [
                t.message.is_some(),
                t.message_file.is_some(),
                t.snippet.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                problems.push(tproblem(
                    "give exactly one of message, message_file, snippet".into(),
                ));
            }
            for id in t.must_hit.iter().chain(&t.must_not_hit) {
                if !ids.contains_key(id.as_str()) {
                    problems.push(tproblem(format!("unknown rule {id}")).rule(id.clone()));
                }
            }
            if let Some(v) = &t.verdict
                && parse_action(v).is_none()
            {
                problems.push(tproblem(format!("unknown verdict {v:?}")));
            }
            if let Some(snippet) = &t.snippet {
                for key in snippet.keys() {
                    if Target::parse(key).is_none() {
                        problems.push(tproblem(format!("unknown snippet target {key:?}")));
                    }
                }
            }
            let mut message = t.message.clone().map(String::into_bytes);
            if let Some(name) = &t.message_file {
                match lp.messages.get(name) {
                    Some(Ok(bytes)) => message = Some(bytes.clone()),
                    Some(Err(e)) => problems.push(tproblem(e.clone())),
                    None => problems.push(tproblem(format!("{name} not loaded"))),
                }
            }
            tests.push(CompiledTest {
                pack: pi,
                line,
                def: t.clone(),
                message,
            });
        }
    }
    if rules.len() > opts.max_rules {
        problems.push(Problem::new(
            loaded.first().map(|p| p.path.clone()).unwrap_or_default(),
            format!(
                "{} rules, more than the limit of {}",
                rules.len(),
                opts.max_rules
            ),
        ));
    }

    let metas = compile_metas(&packs, &rules, meta_src, &mut problems);
    if !problems.is_empty() {
        return Err(Error::refused(Step::Validate, problems));
    }

    let validated = started.elapsed();
    // Regexes compile in parallel: a large imported pack has thousands.
    let compiled: Vec<Result<Vec<CompiledRegex>, Problem>> = pending
        .par_iter()
        .map(|p| {
            p.entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Regex { pattern } => Some(pattern),
                    Entry::Lit { .. } => None,
                })
                .map(|pattern| {
                    compile_regex(
                        pattern,
                        p.case_sensitive,
                        &pricings(&rules[p.global].targets),
                        opts,
                    )
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|m| {
                    Problem::new(&p.file, m)
                        .at(Some(p.line))
                        .rule(rules[p.global].id.clone())
                })
        })
        .collect();
    let mut regexes = Vec::with_capacity(pending.len());
    for r in compiled {
        match r {
            Ok(v) => regexes.push(v),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(Error::refused(Step::Compile, problems));
    }

    let regexes_built = started.elapsed();
    // Group entries by target.
    let mut by_target: BTreeMap<Target, TargetBuild> = BTreeMap::new();
    for (p, res) in pending.iter().zip(regexes) {
        let mut res = res.into_iter();
        for entry in &p.entries {
            let regex = match entry {
                Entry::Regex { .. } => res.next(),
                Entry::Lit { .. } => None,
            };
            for target in &rules[p.global].targets {
                let tb = by_target.entry(target.clone()).or_default();
                match (entry, &regex) {
                    (Entry::Lit { bytes, word }, _) => tb.add_literal(
                        bytes,
                        Consumer::Literal(LiteralUse {
                            rule: p.global,
                            exact: p.case_sensitive.then(|| bytes.clone().into_boxed_slice()),
                            caseless: (!p.case_sensitive
                                && bytes.iter().any(|b| crate::literals::canon(*b) == b' '))
                            .then(|| bytes.clone().into_boxed_slice()),
                            word: *word,
                            limit: rules[p.global].max_hits,
                        }),
                    ),
                    (Entry::Regex { .. }, Some(c)) => {
                        let plan = c.plan(pricing(target));
                        let factors = &plan.clauses;
                        let rr = RegexRule {
                            rule: p.global,
                            limit: rules[p.global].max_hits,
                            re: c.re.clone(),
                            reach: c.reach.clone(),
                            anchored: !factors.is_empty() && factors.iter().all(|f| f.starts),
                            at_start: c.at_start,
                        };
                        if let Some(rare) = &plan.rare {
                            tb.byte_filtered.push((rare.clone(), rr));
                        } else if factors.is_empty()
                            || (*target == Target::Field(crate::target::Field::Url)
                                && factor::common_in_urls(factors))
                        {
                            tb.set_rules.push(rr);
                        } else {
                            let idx = tb.factored.len();
                            tb.factored.push(rr);
                            for clause in factors {
                                let ci = tb.clauses.len();
                                tb.clauses.push(Clause {
                                    regex: idx,
                                    full_mask: ((1u16 << clause.sets.len()) - 1) as u8,
                                });
                                for (bit, set) in clause.sets.iter().enumerate() {
                                    for l in set {
                                        let bit = bit as u8;
                                        tb.add_literal(l, Consumer::Factor { clause: ci, bit });
                                    }
                                }
                            }
                        }
                    }
                    (Entry::Regex { .. }, None) => {}
                }
            }
        }
    }
    let built: Vec<Result<TargetMatcher, Problem>> = by_target
        .into_iter()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(target, tb)| tb.build(target, opts))
        .collect();
    let mut matchers = Vec::new();
    for b in built {
        match b {
            Ok(m) => matchers.push(m),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(Error::refused(Step::Compile, problems));
    }
    tracing::debug!(
        rules = rules.len(),
        validate_ms = validated.as_millis() as u64,
        regex_ms = (regexes_built - validated).as_millis() as u64,
        automata_ms = (started.elapsed() - regexes_built).as_millis() as u64,
        "rules compiled"
    );
    let mut baseline = vec![0u32; rules.len()];
    let metas: Vec<MetaRule> = metas
        .into_iter()
        .map(|(rule, expr)| {
            let mut deps = Vec::new();
            expr.visit(&mut |r| deps.push(*r));
            deps.sort_unstable();
            deps.dedup();
            baseline[rule] = u32::from(expr.eval(&baseline) != 0.0);
            MetaRule {
                rule,
                expr,
                deps: deps.into(),
            }
        })
        .collect();
    let header_matchers = matchers
        .iter()
        .enumerate()
        .filter_map(|(mi, m)| match &m.target {
            Target::Header(name) => Some((name.clone(), mi)),
            _ => None,
        })
        .collect();
    Ok(CompiledRules {
        packs,
        rules,
        matchers,
        metas,
        baseline,
        header_matchers,
        tests,
        fingerprint,
        compile_time: started.elapsed(),
    })
}

fn check_thresholds(t: &Thresholds, path: &PathBuf, problems: &mut Vec<Problem>) {
    let named = [
        ("tag", t.tag),
        ("quarantine", t.quarantine),
        ("reject", t.reject),
    ];
    for (name, v) in named {
        if v.is_some_and(|v| !v.is_finite()) {
            problems.push(Problem::new(
                path,
                format!("threshold {name} is not finite"),
            ));
        }
    }
    let present: Vec<(&str, f64)> = named
        .iter()
        .filter_map(|(n, v)| v.map(|v| (*n, v)))
        .collect();
    for w in present.windows(2) {
        if w[0].1 > w[1].1 {
            problems.push(Problem::new(
                path,
                format!(
                    "threshold {} ({}) is above {} ({})",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
}

/// The pattern as compiled: case-insensitivity folded into the pattern so that a regex and
/// a regex set built from it agree.
fn effective(pattern: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        pattern.to_string()
    } else {
        format!("(?i){pattern}")
    }
}

/// A regex, how it is prefiltered in each pricing context of its targets, and its reach.
struct CompiledRegex {
    re: Arc<LazyRegex>,
    plans: Vec<(rarity::Context, Plan)>,
    reach: Reach,
    at_start: bool,
}

impl CompiledRegex {
    /// The plan for a target priced in `ctx`. Every target of the rule has one (the
    /// plans are made for `pricings` of its targets); the first is a fallback only.
    fn plan(&self, ctx: rarity::Context) -> &Plan {
        self.plans
            .iter()
            .find(|(c, _)| *c == ctx)
            .map_or(&self.plans[0].1, |(_, p)| p)
    }
}

/// A regex's prefilter where its target's text is priced one way: its clauses (empty: no
/// usable factor), or else the rare bytes every match holds.
struct Plan {
    clauses: Vec<factor::FactorClause>,
    rare: Option<RareBytes>,
}

/// A rule's regex, built on its first search.
///
/// Most regexes of a large pack are searched rarely: a factored regex only where its
/// factors were found, a set member only for the text of a match its set reported. The
/// compiler checks each one (syntax, and the size of its compiled program against
/// [`CompileOptions::regex_size_limit`]) but leaves building the searcher, the costliest
/// part of compiling a pack, to the first search that needs it. A snapshot is shared by
/// every scanning thread; the first of them to need a regex builds it, the others wait.
#[derive(Debug)]
pub(crate) struct LazyRegex {
    pattern: Arc<str>,
    opts: CompileOptions,
    re: std::sync::OnceLock<ra::Regex>,
}

impl LazyRegex {
    /// Checks `pattern` (parsed as `hir`) against the size limit; the searcher is built
    /// later.
    fn checked(
        pattern: Arc<str>,
        hir: &regex_syntax::hir::Hir,
        opts: &CompileOptions,
    ) -> Result<Self, String> {
        regex_automata::nfa::thompson::Compiler::new()
            .configure(
                regex_automata::nfa::thompson::Config::new()
                    .nfa_size_limit(Some(opts.regex_size_limit)),
            )
            .build_from_hir(hir)
            .map_err(|e| bad_regex(&pattern, &e.to_string(), opts))?;
        Ok(Self {
            pattern,
            opts: *opts,
            re: std::sync::OnceLock::new(),
        })
    }

    /// The pattern as compiled (with the rule's case flag), for sets and diagnostics.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The searcher, built on first use.
    pub(crate) fn get(&self) -> &ra::Regex {
        self.re.get_or_init(|| {
            build_meta(&self.pattern, &self.opts).unwrap_or_else(|e| {
                // Not expected: the pattern was checked with the same limits. Its reverse
                // program may still exceed them, so it is built without the limit rather
                // than dropped; the forward one proved it bounded.
                tracing::warn!(pattern = %self.pattern, error = %e, "regex rebuilt without its size limit");
                let unlimited = CompileOptions {
                    regex_size_limit: usize::MAX,
                    ..self.opts
                };
                build_meta(&self.pattern, &unlimited)
                    .unwrap_or_else(|_| ra::Regex::new_many::<&str>(&[]).expect("empty set"))
            })
        })
    }

    /// Whether the searcher has been built.
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.re.get().is_some()
    }
}

/// Builds `pattern` exactly as `regex::bytes::RegexBuilder` does (leftmost-first, bytes
/// syntax, empty matches may split UTF-8), with the configured size limits.
fn build_meta(pattern: &str, opts: &CompileOptions) -> Result<ra::Regex, String> {
    let config = ra::Config::new()
        .match_kind(regex_automata::MatchKind::LeftmostFirst)
        .utf8_empty(false)
        .nfa_size_limit(Some(opts.regex_size_limit))
        .hybrid_cache_capacity(opts.dfa_size_limit);
    ra::Builder::new()
        .configure(config)
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .build(pattern)
        .map_err(|e| bad_regex(pattern, &e.to_string(), opts))
}

/// The message for a regex that does not build: the regex crate words its errors for
/// people, so its message is used when it has one.
fn bad_regex(pattern: &str, fallback: &str, opts: &CompileOptions) -> String {
    let msg = match RegexBuilder::new(pattern)
        .size_limit(opts.regex_size_limit)
        .dfa_size_limit(opts.dfa_size_limit)
        .build()
    {
        Err(re) => re.to_string(),
        Ok(_) => fallback.to_string(),
    };
    format!("bad regex: {}", one_line(&msg))
}

/// How a regex's factors are priced on `target`: for headers on header text, for markup
/// on HTML as written, otherwise as mail text.
fn pricing(target: &Target) -> rarity::Context {
    use crate::target::Field;
    match target {
        Target::AllHeaders
        | Target::Header(_)
        | Target::Field(Field::HeaderBlock | Field::RawHeaderBlock) => rarity::Context::Headers,
        Target::Field(Field::HtmlRaw) => rarity::Context::Markup,
        _ => rarity::Context::Text,
    }
}

/// The pricing contexts of a rule's targets, each once.
fn pricings(targets: &[Target]) -> Vec<rarity::Context> {
    let mut v: Vec<rarity::Context> = Vec::with_capacity(1);
    for c in targets.iter().map(pricing) {
        if !v.contains(&c) {
            v.push(c);
        }
    }
    if v.is_empty() {
        v.push(rarity::Context::Text);
    }
    v
}

fn compile_regex(
    pattern: &str,
    case_sensitive: bool,
    pricings: &[rarity::Context],
    opts: &CompileOptions,
) -> Result<CompiledRegex, String> {
    let eff: Arc<str> = Arc::from(effective(pattern, case_sensitive));
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(&eff)
        .map_err(|e| bad_regex(&eff, &e.to_string(), opts))?;
    let re = Arc::new(LazyRegex::checked(eff, &hir, opts)?);
    let plans = pricings
        .iter()
        .map(|&ctx| {
            let clauses = rarity::priced_for(ctx, || factor::clauses(&hir));
            let rare = if clauses.is_empty() {
                rarity::priced_for(ctx, || RareBytes::of(&hir))
            } else {
                None
            };
            (ctx, Plan { clauses, rare })
        })
        .collect();
    Ok(CompiledRegex {
        re,
        plans,
        reach: Reach::of(&hir),
        at_start: hir
            .properties()
            .look_set_prefix()
            .contains(regex_syntax::hir::Look::Start),
    })
}

/// Most members of one regex set, which bounds the work of growing the sets.
const MAX_SET_MEMBERS: usize = 64;

/// Lazy DFA memory that `patterns`, as one overlapping set, needs to scan the reference
/// mail text; `None` if they do not build.
fn set_memory(patterns: &[&str], opts: &CompileOptions) -> Option<usize> {
    use regex_automata::hybrid::dfa::DFA;
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(regex_automata::MatchKind::All)
                .cache_capacity(opts.dfa_size_limit.saturating_mul(patterns.len()))
                .minimum_cache_clear_count(None)
                // Like the meta regex: a Unicode `\b` is searched by the lazy DFA in ASCII
                // text (the reference text is ASCII).
                .unicode_word_boundary(true),
        )
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .thompson(
            regex_automata::nfa::thompson::Config::new()
                .nfa_size_limit(Some(opts.regex_size_limit.saturating_mul(patterns.len()))),
        )
        .build_many(patterns)
        .ok()?;
    let mut cache = dfa.create_cache();
    let mut found = regex_automata::PatternSet::new(patterns.len());
    // The text as one value, then each line as a value of its own: short values (a
    // subject, a header) start over at every value, where anchored regexes count.
    let text = rarity::REFERENCE.as_bytes();
    for value in std::iter::once(text).chain(text.split(|&b| b == b'\n')) {
        found.clear();
        dfa.try_which_overlapping_matches(
            &mut cache,
            &regex_automata::Input::new(value),
            &mut found,
        )
        .ok()?;
    }
    Some(cache.memory_usage())
}

/// Kinds of set regexes that never share a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Matches the reference text within its first 256 bytes.
    Early,
    /// Matches only at the start of a value: dies within a few bytes of most values.
    Anchored,
    Other,
}

/// Groups the regexes of one target that run in sets, as lists of indexes.
///
/// - A set's search ends early only once every member matched. So regexes that match
///   almost any text go together (their set stops within a few bytes), and never with the
///   others: one member that does not match early keeps a set searching to the end of the
///   value.
/// - Regexes anchored at the start of a value go together too: their search dies within
///   a few bytes of most values, where beside unanchored regexes their counted starts
///   (`^.{16}`) would multiply the states of every short value.
/// - Within a kind, regexes are taken from the one whose own lazy DFA is smallest on the
///   reference text, and a set grows while the DFA of its union stays within
///   [`CompileOptions::regex_set_budget`] there. Unions of regexes that each keep few
///   threads alive (obfuscated drug names, amounts of money) stay small, so dozens share
///   one pass; counted repetitions of words multiply each other's states and are kept
///   apart.
fn set_groups(rules: &[RegexRule], opts: &CompileOptions) -> Vec<Vec<usize>> {
    let mut order: Vec<(Kind, usize, usize)> = rules
        .par_iter()
        .enumerate()
        .map(|(i, rr)| {
            let kind = if rr
                .re
                .get()
                .find(rarity::REFERENCE.as_bytes())
                .is_some_and(|m| m.end() <= 256)
            {
                Kind::Early
            } else if rr.at_start {
                Kind::Anchored
            } else {
                Kind::Other
            };
            let alone = set_memory(&[rr.re.pattern()], opts).unwrap_or(usize::MAX);
            (kind, alone, i)
        })
        .collect();
    order.sort_unstable();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for kind in order.chunk_by(|a, b| a.0 == b.0) {
        let ids: Vec<usize> = kind.iter().map(|k| k.2).collect();
        let mut rest = &ids[..];
        while !rest.is_empty() {
            let n = longest_fitting(rest.len().min(MAX_SET_MEMBERS), |k| {
                let pats: Vec<&str> = rest[..k].iter().map(|&j| rules[j].re.pattern()).collect();
                set_memory(&pats, opts).is_some_and(|m| m <= opts.regex_set_budget)
            });
            groups.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
    }
    groups
}

/// The longest length in `1..=max` for which `fits` holds, when it holds up to some length
/// and not beyond (a set's DFA grows with its members); 1 always fits. Doubling, then
/// halving the gap, costs about 2·log2(max) calls of `fits` where trying each length in
/// turn costs `max`, and each call builds a set of that many members.
fn longest_fitting(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    // `lo` fits; `hi` does not (`max + 1`: nothing beyond `max` is tried).
    let (mut lo, mut hi) = (1, max + 1);
    while lo < max {
        let k = (lo * 2).min(max);
        if fits(k) {
            lo = k;
        } else {
            hi = k;
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct TargetBuild {
    patterns: Vec<Vec<u8>>,
    index: HashMap<Vec<u8>, usize>,
    consumers: Vec<Vec<Consumer>>,
    factored: Vec<RegexRule>,
    clauses: Vec<Clause>,
    byte_filtered: Vec<(RareBytes, RegexRule)>,
    set_rules: Vec<RegexRule>,
}

impl TargetBuild {
    /// Patterns are keyed by their folded form (the literal search folds ASCII case and
    /// white space); exact-case literals and literals with white space are verified on
    /// each hit.
    fn add_literal(&mut self, bytes: &[u8], consumer: Consumer) {
        let key = crate::literals::canonical(bytes);
        let id = match self.index.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.patterns.len();
                self.patterns.push(key.clone());
                self.index.insert(key, id);
                self.consumers.push(Vec::new());
                id
            }
        };
        self.consumers[id].push(consumer);
    }

    fn build(self, target: Target, opts: &CompileOptions) -> Result<TargetMatcher, Problem> {
        let literals = if self.patterns.is_empty() {
            None
        } else {
            Some(Literals::new(&self.patterns).map_err(|e| {
                Problem::new("", format!("cannot build the automaton for {target}: {e}"))
            })?)
        };
        let groups = set_groups(&self.set_rules, opts);
        let mut sets = Vec::new();
        for members in groups {
            let pats: Vec<&str> = members
                .iter()
                .map(|&i| self.set_rules[i].re.pattern())
                .collect();
            let rules: Vec<RegexRule> =
                members.iter().map(|&i| self.set_rules[i].clone()).collect();
            let config = ra::Config::new()
                .match_kind(regex_automata::MatchKind::All)
                .utf8_empty(false)
                .nfa_size_limit(Some(opts.regex_size_limit.saturating_mul(pats.len())))
                .hybrid_cache_capacity(opts.dfa_size_limit.saturating_mul(pats.len()));
            let set = ra::Builder::new()
                .configure(config)
                .syntax(regex_automata::util::syntax::Config::new().utf8(false))
                .build_many(&pats)
                .map_err(|e| {
                    Problem::new(
                        "",
                        format!(
                            "cannot build a regex set for {target}: {}",
                            one_line(&e.to_string())
                        ),
                    )
                })?;
            sets.push((set, rules));
        }
        Ok(TargetMatcher {
            target,
            literals,
            consumers: self.consumers,
            patterns: self.patterns,
            factored: self.factored,
            clauses: self.clauses,
            byte_filtered: self.byte_filtered,
            sets,
        })
    }
}

fn compile_metas(
    packs: &[PackInfo],
    rules: &[RuleInfo],
    src: Vec<(usize, PathBuf, usize, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<(usize, Expr<usize>)> {
    let mut exprs: HashMap<usize, Expr<usize>> = HashMap::new();
    for (global, file, line, text) in src {
        let rule = &rules[global];
        let range = packs[rule.pack].rules.clone();
        let problem = |m: String| Problem::new(&file, m).at(Some(line)).rule(rule.id.clone());
        let parsed = match meta::parse(&text) {
            Ok(e) => e,
            Err(e) => {
                problems.push(problem(format!("bad meta expression: {e}")));
                continue;
            }
        };
        let resolved = parsed.resolve(&mut |r: NameRef| match r {
            NameRef::Exact(name) => range
                .clone()
                .find(|i| rules[*i].id == name)
                .map(|i| vec![i])
                .ok_or_else(|| format!("meta refers to unknown rule {name}")),
            NameRef::Prefix(p) => {
                let v: Vec<usize> = range
                    .clone()
                    .filter(|i| rules[*i].id.starts_with(&p) && *i != global)
                    .collect();
                if v.is_empty() {
                    Err(format!("meta prefix {p}* matches no rule"))
                } else {
                    Ok(v)
                }
            }
        });
        match resolved {
            Ok(e) => {
                exprs.insert(global, e);
            }
            Err(m) => problems.push(problem(m)),
        }
    }
    // Order metas so each is evaluated after the metas it refers to; report cycles.
    let mut order = Vec::new();
    let mut state: HashMap<usize, u8> = HashMap::new(); // 1 = visiting, 2 = done
    let mut keys: Vec<usize> = exprs.keys().copied().collect();
    keys.sort_unstable();
    for start in keys {
        // Iterative DFS: (node, next child index).
        let mut stack: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        if state.get(&start) == Some(&2) {
            continue;
        }
        let deps = |n: usize| {
            let mut v = Vec::new();
            if let Some(e) = exprs.get(&n) {
                e.visit(&mut |r| {
                    if exprs.contains_key(r) {
                        v.push(*r)
                    }
                });
            }
            v
        };
        state.insert(start, 1);
        stack.push((start, deps(start), 0));
        while let Some((node, children, next)) = stack.last_mut() {
            if let Some(&child) = children.get(*next) {
                *next += 1;
                match state.get(&child) {
                    Some(2) => {}
                    Some(_) => {
                        let r = &rules[child];
                        let lp = &packs[r.pack];
                        problems.push(
                            Problem::new(
                                &lp.file,
                                format!("meta rules form a cycle through {}", rules[*node].id),
                            )
                            .rule(r.id.clone()),
                        );
                    }
                    None => {
                        state.insert(child, 1);
                        let d = deps(child);
                        stack.push((child, d, 0));
                    }
                }
            } else {
                let node = *node;
                state.insert(node, 2);
                order.push(node);
                stack.pop();
            }
        }
    }
    order
        .into_iter()
        .filter_map(|i| exprs.remove(&i).map(|e| (i, e)))
        .collect()
}

/// Runs the packs' own tests; `extractor` turns test messages into targets.
pub(crate) fn run_tests(
    rules: &CompiledRules,
    extractor: Option<&dyn crate::Extractor>,
) -> Result<usize, Error> {
    let problems: Vec<Problem> = rules
        .tests
        .par_iter()
        .flat_map_iter(|t| packtest::run(rules, t, extractor))
        .collect();
    if problems.is_empty() {
        Ok(rules.tests.len())
    } else {
        Err(Error::refused(Step::Test, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The search finds the length that trying each length in turn finds, with fewer
        /// trials once sets grow past a few members.
        #[test]
        fn longest_fitting_equals_the_linear_search(max in 1usize..200, limit in 1usize..250) {
            let tried = std::cell::Cell::new(0usize);
            let found = longest_fitting(max, |k| {
                tried.set(tried.get() + 1);
                assert!((2..=max).contains(&k), "{k} tried, max {max}");
                k <= limit
            });
            let linear = (1..=max).take_while(|&k| k <= limit).last().unwrap_or(1);
            prop_assert_eq!(found, linear);
            let bound = 2 * (usize::BITS - max.leading_zeros()) as usize;
            prop_assert!(tried.get() <= bound, "{} trials for max {}", tried.get(), max);
        }
    }
}
