//! The content-filter [`Stage`]: takes the rule snapshot once, scans, maps the result to a
//! [`Verdict`] (tagging with a subject prefix rewrites the message). The node's stage wraps
//! [`ContentFilter::judge`] with its metrics, so both decide alike.

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
    /// Parts the rules saw only up to a scan size limit.
    pub truncated_parts: usize,
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
        one_line(&s)
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
        truncated_parts: ex.truncated_parts,
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

/// `s` with every control character (line breaks included) as a space.
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

    /// Scans with the current snapshot, taken once for the whole message, and decides:
    /// the verdict of [`verdict`], except that tagging with the pack's subject prefix
    /// replaces the message with one whose subject carries it.
    pub fn judge(
        &self,
        session: &SessionInfo,
        env: &Envelope,
        message: &[u8],
    ) -> (Outcome, Verdict) {
        let outcome = self.scan(session, env, message);
        let verdict = match (verdict(&outcome, &self.config), &outcome.subject_prefix) {
            (Verdict::Tag(headers), Some(prefix)) if !prefix.is_empty() => Verdict::Replace(
                tag_with_subject_prefix(message, &headers, prefix),
                format!("tagged, subject prefix {prefix:?}"),
            ),
            (v, _) => v,
        };
        (outcome, verdict)
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
            let (outcome, verdict) = self.judge(session, env, message);
            tracing::debug!(
                action = outcome.action.as_str(),
                score = outcome.score,
                limit = outcome.limit.map(LimitExceeded::as_str),
                micros = outcome.elapsed.as_micros() as u64,
                "content scanned"
            );
            verdict
        })
    }
}

/// `message` with `headers` in front and `prefix` put before its Subject (a Subject is added
/// when there is none; a subject that already starts with the prefix is left alone).
fn tag_with_subject_prefix(message: &[u8], headers: &[(String, String)], prefix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 256);
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |p| p + 2);
    let mut line_start = 0;
    let mut subject_at = None;
    while line_start < head_end {
        let line_end = memchr::memmem::find(&message[line_start..head_end], b"\r\n")
            .map_or(head_end, |p| line_start + p + 2);
        let line = &message[line_start..line_end];
        if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            subject_at = Some(line_start + 8);
            break;
        }
        line_start = line_end;
    }
    match subject_at {
        Some(at) => {
            let rest = &message[at..];
            let skip = rest
                .iter()
                .take_while(|b| **b == b' ' || **b == b'\t')
                .count();
            out.extend_from_slice(&message[..at]);
            out.push(b' ');
            if !rest[skip..].starts_with(prefix.as_bytes()) {
                out.extend_from_slice(prefix.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&rest[skip..]);
        }
        None => {
            out.extend_from_slice(format!("Subject: {prefix}\r\n").as_bytes());
            out.extend_from_slice(message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tag_with_subject_prefix;

    #[test]
    fn subject_prefix() {
        let h = vec![("X-Moat-Score".to_string(), "6".to_string())];
        let cases: &[(&str, &str)] = &[
            (
                "Received: x\r\nSubject: hello\r\n\r\nbody\r\n",
                "X-Moat-Score: 6\r\nReceived: x\r\nSubject: [SPAM] hello\r\n\r\nbody\r\n",
            ),
            (
                "subject:hello\r\n\r\nSubject: in body\r\n",
                "X-Moat-Score: 6\r\nsubject: [SPAM] hello\r\n\r\nSubject: in body\r\n",
            ),
            (
                "Subject: [SPAM] again\r\n\r\nb\r\n",
                "X-Moat-Score: 6\r\nSubject: [SPAM] again\r\n\r\nb\r\n",
            ),
            (
                "From: a\r\n\r\nSubject: not a header\r\n",
                "X-Moat-Score: 6\r\nSubject: [SPAM]\r\nFrom: a\r\n\r\nSubject: not a header\r\n",
            ),
        ];
        for (input, want) in cases {
            let got = tag_with_subject_prefix(input.as_bytes(), &h, "[SPAM]");
            assert_eq!(String::from_utf8(got).unwrap(), *want, "{input:?}");
        }
    }
}
