//! Scanning extracted targets with a [`CompiledRules`]: one automaton pass per target value,
//! candidate regexes, the regex sets, then meta rules, scores and verdicts.

use serde::Serialize;

use crate::compile::{CompiledRules, Consumer, RuleKind, TargetMatcher};
use crate::schema::Thresholds;
use crate::target::{Target, Targets};

/// Longest matched text kept in a [`Hit`], in bytes.
const MAX_MATCHED: usize = 120;

/// What a pack decides for a message, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
    /// Matches counted (literals: occurrences; regexes: values matched; meta: 1).
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

#[derive(Default, Clone)]
struct RuleState {
    count: u32,
    first: Option<(usize, Vec<u8>)>,
}

struct Scratch {
    state: Vec<RuleState>,
    /// Per factored regex: the value number it was last made a candidate for.
    stamp: Vec<u64>,
    candidates: Vec<usize>,
    value_no: u64,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn record(state: &mut RuleState, matcher: usize, text: &[u8], n: u32) {
    state.count = state.count.saturating_add(n);
    if state.first.is_none() {
        let cut = text.len().min(MAX_MATCHED);
        state.first = Some((matcher, text[..cut].to_vec()));
    }
}

impl TargetMatcher {
    fn scan_value(&self, mi: usize, value: &[u8], s: &mut Scratch) {
        s.value_no += 1;
        s.candidates.clear();
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(value) {
                let span = &value[m.start()..m.end()];
                for c in &self.consumers[m.pattern().as_usize()] {
                    match c {
                        Consumer::Literal { rule, exact, word } => {
                            if exact.as_deref().is_some_and(|e| e != span) {
                                continue;
                            }
                            if *word {
                                let before = m.start().checked_sub(1).map(|i| value[i]);
                                let after = value.get(m.end()).copied();
                                if before.is_some_and(is_word_byte)
                                    || after.is_some_and(is_word_byte)
                                {
                                    continue;
                                }
                            }
                            record(&mut s.state[*rule], mi, span, 1);
                        }
                        Consumer::Factor(idx) => {
                            if s.stamp[*idx] != s.value_no {
                                s.stamp[*idx] = s.value_no;
                                s.candidates.push(*idx);
                            }
                        }
                    }
                }
            }
        }
        for &idx in &s.candidates {
            let rr = &self.factored[idx];
            if let Some(m) = rr.re.find(value) {
                record(&mut s.state[rr.rule], mi, m.as_bytes(), 1);
            }
        }
        if let Some(set) = &self.set {
            for i in set.matches(value).iter() {
                let rr = &self.set_rules[i];
                if let Some(m) = rr.re.find(value) {
                    record(&mut s.state[rr.rule], mi, m.as_bytes(), 1);
                }
            }
        }
    }
}

impl CompiledRules {
    /// Scans the targets of one message with every pack's thresholds.
    pub fn scan(&self, targets: &Targets<'_>) -> ScanResult {
        let mut s = Scratch {
            state: vec![RuleState::default(); self.rules.len()],
            stamp: Vec::new(),
            candidates: Vec::new(),
            value_no: 0,
        };
        for (mi, m) in self.matchers.iter().enumerate() {
            s.stamp.clear();
            s.stamp.resize(m.factored.len(), 0);
            targets.for_each_value(&m.target, |v| m.scan_value(mi, v, &mut s));
        }
        let mut counts: Vec<u32> = s.state.iter().map(|r| r.count).collect();
        for (rule, expr) in &self.metas {
            let hit = expr.eval(&counts) != 0.0;
            counts[*rule] = u32::from(hit);
            s.state[*rule].count = u32::from(hit);
        }
        let packs = self
            .packs
            .iter()
            .map(|p| {
                let mut score = 0.0;
                let mut hits = Vec::new();
                for i in p.rules.clone() {
                    let st = &s.state[i];
                    if st.count == 0 {
                        continue;
                    }
                    let r = &self.rules[i];
                    score += r.score;
                    let (target, matched) = match (&st.first, r.kind) {
                        (Some((mi, text)), RuleKind::Literals | RuleKind::Regex) => (
                            Some(target_name(&self.matchers[*mi].target)),
                            Some(String::from_utf8_lossy(text).into_owned()),
                        ),
                        _ => (None, None),
                    };
                    hits.push(Hit {
                        rule: r.id.clone(),
                        score: r.score,
                        count: st.count,
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
