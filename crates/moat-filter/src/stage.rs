//! The content-filter [`Stage`]: takes the rule snapshot once, scans, maps the result to a
//! [`Verdict`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_core::{Enhanced, Envelope, Reply, SessionInfo, Stage, StageFuture, Verdict};
use moat_rules::{Action, CompiledRules, RuleStore, ScanResult, Thresholds};

use crate::extract::{EnvelopeFacts, LimitExceeded, Limits, extract};

/// How the filter turns scores into verdicts.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// MIME walk limits.
    pub limits: Limits,
    /// Verdict for a message over a limit (default: reject with 552 5.3.4).
    pub over_limit: Action,
    /// Add `X-MS-Exchange-Organization-SCL` (0–9) to tagged messages.
    pub scl_stamp: bool,
    /// Threshold overrides by receive connector name; they replace every pack's thresholds.
    pub connector_thresholds: HashMap<String, Thresholds>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            over_limit: Action::Reject,
            scl_stamp: false,
            connector_thresholds: HashMap::new(),
        }
    }
}

/// Everything one scan found, for the verdict, the CLI and metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The action taken.
    pub action: Action,
    /// Score of the deciding pack (0 when no pack has rules that hit).
    pub score: f64,
    /// Per-pack results.
    pub result: ScanResult,
    /// Set when the MIME walk stopped at a limit.
    pub limit: Option<LimitExceeded>,
    /// The MIME parser gave up; only raw and envelope targets were scanned.
    pub parser_failed: bool,
    /// Subject prefix to apply when tagging, from the deciding pack.
    pub subject_prefix: Option<String>,
    /// Reject text of the deciding pack.
    pub reject_text: String,
    /// Time spent walking and scanning.
    pub elapsed: Duration,
}

impl Outcome {
    /// `X-MS-Exchange-Organization-SCL` value for this outcome.
    pub fn scl(&self) -> u8 {
        match self.action {
            Action::Reject => 9,
            Action::Quarantine => 8,
            Action::Tag => 6,
            Action::Continue if self.score <= 0.0 => 0,
            Action::Continue => 1,
        }
    }

    /// One line naming the action, the deciding pack and the rules that hit.
    pub fn status_line(&self) -> String {
        let mut s = format!("{}; score={}", self.action.as_str(), self.score);
        if let Some(l) = self.limit {
            s.push_str(&format!("; limit={}", l.as_str()));
        }
        for p in &self.result.packs {
            if p.hits.is_empty() {
                continue;
            }
            let rules: Vec<&str> = p.hits.iter().map(|h| h.rule.as_str()).collect();
            s.push_str(&format!(
                "; pack={} {} score={} rules={}",
                p.pack,
                p.version,
                p.score,
                rules.join(",")
            ));
        }
        // Header values must stay on one line.
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// Scans one message against one snapshot. Pure and synchronous: the CLI, pack tests and
/// the stage all call this.
pub fn scan_message(
    rules: &CompiledRules,
    message: &[u8],
    env: &EnvelopeFacts,
    config: &FilterConfig,
    connector: Option<&str>,
) -> Outcome {
    let started = Instant::now();
    let ex = extract(message, env, &config.limits);
    let mut result = rules.scan(&ex.targets);
    if let Some(t) = connector.and_then(|c| config.connector_thresholds.get(c)) {
        for p in &mut result.packs {
            p.action = t.action(p.score);
        }
    }
    let decisive = result.decisive();
    let mut action = result.action();
    if ex.limit.is_some() {
        action = action.max(config.over_limit);
    }
    let pack = decisive.and_then(|d| rules.packs().iter().find(|p| p.name == d.pack));
    Outcome {
        action,
        score: decisive.map_or(0.0, |d| d.score),
        limit: ex.limit,
        parser_failed: ex.parser_failed,
        subject_prefix: pack.and_then(|p| p.subject_prefix.clone()),
        reject_text: pack.map_or_else(
            || "message refused by content policy".to_string(),
            |p| p.reject_text.clone(),
        ),
        result,
        elapsed: started.elapsed(),
    }
}

/// Maps an outcome to the stage verdict.
pub fn verdict(outcome: &Outcome, config: &FilterConfig) -> Verdict {
    match outcome.action {
        Action::Continue => Verdict::Continue,
        Action::Reject if outcome.limit.is_some() && outcome.result.action() < Action::Reject => {
            Verdict::Reject(Reply::new(
                552,
                Enhanced::new(5, 3, 4),
                "message structure too complex to scan",
            ))
        }
        Action::Reject => Verdict::Reject(Reply::new(
            550,
            Enhanced::new(5, 7, 1),
            one_line(&outcome.reject_text),
        )),
        Action::Quarantine => Verdict::Quarantine(outcome.status_line()),
        Action::Tag => {
            let mut headers = vec![
                ("X-Moat-Score".to_string(), outcome.score.to_string()),
                ("X-Moat-Status".to_string(), outcome.status_line()),
            ];
            if config.scl_stamp {
                headers.push((
                    "X-MS-Exchange-Organization-SCL".to_string(),
                    outcome.scl().to_string(),
                ));
            }
            Verdict::Tag(headers)
        }
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The content filter as a pipeline stage (acts at end of DATA).
#[derive(Debug)]
pub struct ContentFilter {
    store: Arc<RuleStore>,
    config: FilterConfig,
}

impl ContentFilter {
    /// A filter reading rules from `store`.
    pub fn new(store: Arc<RuleStore>, config: FilterConfig) -> Self {
        Self { store, config }
    }

    /// The rule store (for reloads and metrics).
    pub fn store(&self) -> &Arc<RuleStore> {
        &self.store
    }

    /// Scans with the current snapshot, taken once for the whole message.
    pub fn scan(&self, session: &SessionInfo, env: &Envelope, message: &[u8]) -> Outcome {
        let rules = self.store.snapshot();
        scan_message(
            &rules,
            message,
            &EnvelopeFacts::from_smtp(session, env),
            &self.config,
            Some(&session.connector),
        )
    }
}

impl Stage for ContentFilter {
    fn name(&self) -> &'static str {
        "content"
    }

    fn data<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StageFuture<'a> {
        Box::pin(async move {
            let outcome = self.scan(session, env, message);
            tracing::debug!(
                action = outcome.action.as_str(),
                score = outcome.score,
                limit = outcome.limit.map(LimitExceeded::as_str),
                micros = outcome.elapsed.as_micros() as u64,
                "content scanned"
            );
            verdict(&outcome, &self.config)
        })
    }
}
