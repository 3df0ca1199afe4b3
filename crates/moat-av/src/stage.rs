//! The antivirus stage: MIME walk → scans (through the cache) → one outcome → a verdict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::{Message, MessageParser, PartType};
use moat_core::{Enhanced, Envelope, Reply, SessionInfo, Stage, StageFuture, Verdict};

use crate::cache::{self, VerdictCache};
use crate::engine::ScanResult;
use crate::error::{AvError, AvErrorKind};
use crate::metrics::AvMetrics;
use crate::set::EngineSet;

/// What a detection does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDetection {
    /// `554 5.7.1` naming the signature; nothing is accepted.
    Reject,
    /// Accept and hold for an operator.
    Quarantine,
    /// Remove the infected parts and add a notice ([`AntivirusStage::strip`]). A [`Verdict`]
    /// cannot carry a rewritten message yet, so through [`Stage::data`] this quarantines with
    /// a reason starting `antivirus strip:` (the infected part is never delivered).
    Strip,
}

/// What a scan that could not be done (engine down, timeout, overload) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnFailure {
    /// `451 4.7.0`: the client keeps the message and retries; nothing is accepted unscanned.
    FailClosed,
    /// Accept, add the scan header saying the message was not scanned, count it.
    FailOpen,
}

/// What content the engines could not judge (over the engine's size limit, too many parts)
/// does. A retry would not help, so there is no temporary-failure choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnUnscannable {
    /// `554 5.7.1` saying the content cannot be scanned.
    Reject,
    /// Accept with the scan header saying why it was not scanned.
    Accept,
}

/// What the stage scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTargets {
    /// Every decoded leaf part (text, html, attachments, parts of attached messages). These
    /// go through the verdict cache.
    pub parts: bool,
    /// The raw message as received, so the engine's own MIME parser sees what a mail client
    /// would (guards against parser differences). Never cached: it differs per recipient.
    pub whole_message: bool,
    /// Most leaf parts scanned one by one; beyond that the message is unscannable unless
    /// `whole_message` is on.
    pub max_parts: usize,
    /// Deepest nesting of attached messages walked.
    pub max_depth: usize,
}

impl Default for ScanTargets {
    /// Parts and the whole message, 100 parts, depth 8.
    fn default() -> Self {
        Self {
            parts: true,
            whole_message: true,
            max_parts: 100,
            max_depth: 8,
        }
    }
}

/// The per-connector antivirus policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvPolicy {
    /// What a detection does.
    pub on_detection: OnDetection,
    /// What an engine failure does.
    pub on_failure: OnFailure,
    /// What unscannable content does.
    pub on_unscannable: OnUnscannable,
    /// What is scanned.
    pub targets: ScanTargets,
    /// Bound on the whole stage for one message (all its scans).
    pub message_timeout: Duration,
    /// Name of the header added when a message is accepted unscanned (and, with
    /// `tag_clean`, when it is clean).
    pub header: String,
    /// Also tag clean messages (`<header>: clean`).
    pub tag_clean: bool,
}

impl Default for AvPolicy {
    /// Reject, fail closed, reject unscannable, parts and whole message, 120 s,
    /// `X-Moat-Virus-Scan`, clean messages untagged.
    fn default() -> Self {
        Self {
            on_detection: OnDetection::Reject,
            on_failure: OnFailure::FailClosed,
            on_unscannable: OnUnscannable::Reject,
            targets: ScanTargets::default(),
            message_timeout: Duration::from_secs(120),
            header: "X-Moat-Virus-Scan".into(),
            tag_clean: false,
        }
    }
}

/// What the scans of one message found, before policy.
#[derive(Debug)]
pub enum AvOutcome {
    /// Everything scanned, nothing found.
    Clean,
    /// At least one detection.
    Infected(Detection),
    /// The engines could not judge some content.
    Unscannable(String),
    /// No answer could be had.
    Failed(AvError),
}

/// What was found in an infected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Signature names, each once, in the order found.
    pub signatures: Vec<String>,
    /// Indices of the top-level MIME parts that hold a detection (the attached message for a
    /// part inside one). All of them only with [`OnDetection::Strip`]; otherwise the scan
    /// stops at the first. Empty when only the whole-message scan found something.
    pub parts: Vec<usize>,
}

/// Scans messages with an [`EngineSet`] and applies an [`AvPolicy`]. One per connector; the
/// engine set, the cache and the metrics are shared.
#[derive(Debug, Clone)]
pub struct AntivirusStage {
    engines: Arc<EngineSet>,
    cache: Option<Arc<VerdictCache>>,
    policy: AvPolicy,
    metrics: AvMetrics,
}

impl AntivirusStage {
    /// Checks the policy and makes the stage.
    pub fn new(
        engines: Arc<EngineSet>,
        cache: Option<Arc<VerdictCache>>,
        policy: AvPolicy,
        metrics: AvMetrics,
    ) -> Result<Self, AvError> {
        let mut problems = Vec::new();
        if !policy.targets.parts && !policy.targets.whole_message {
            problems.push("antivirus must scan parts, the whole message or both");
        }
        if policy.message_timeout.is_zero() {
            problems.push("antivirus message timeout must be > 0");
        }
        if !valid_header_name(&policy.header) {
            problems.push("antivirus header name must be a valid header field name");
        }
        if !problems.is_empty() {
            return Err(AvError::new(AvErrorKind::Config, problems.join("; ")));
        }
        Ok(Self {
            engines,
            cache,
            policy,
            metrics,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &AvPolicy {
        &self.policy
    }

    /// The engine set (for `/readyz`: [`EngineSet::is_ready`], [`EngineSet::status`]).
    pub fn engines(&self) -> &Arc<EngineSet> {
        &self.engines
    }

    /// Scans one message and returns what was found, without applying the policy.
    pub async fn check(&self, message: &[u8]) -> AvOutcome {
        let timeout = self.policy.message_timeout;
        match tokio::time::timeout(timeout, self.check_inner(message)).await {
            Ok(o) => o,
            Err(_) => AvOutcome::Failed(AvError::new(
                AvErrorKind::Timeout,
                format!("message not scanned within {timeout:?}"),
            )),
        }
    }

    async fn check_inner(&self, message: &[u8]) -> AvOutcome {
        let t = self.policy.targets;
        let mut found: Vec<String> = Vec::new();
        let mut parts: Vec<usize> = Vec::new();
        let mut unscannable = None;
        // Keep going after a detection only when every infected part must be known.
        let exhaustive = self.policy.on_detection == OnDetection::Strip;

        if t.parts {
            let parsed = MessageParser::default().parse(message);
            let mut leaves = Vec::new();
            let mut over = false;
            if let Some(m) = &parsed {
                collect_leaves(m, 0, &t, None, &mut leaves, &mut over);
            }
            // Nothing the parser could split (not MIME at all, or empty parts): the raw
            // bytes are what a client would see, so they are the part to scan.
            if leaves.is_empty() && !t.whole_message && !message.is_empty() {
                leaves.push((0, message));
            }
            if over && !t.whole_message {
                unscannable = Some(format!(
                    "more than {} parts or nesting deeper than {}",
                    t.max_parts, t.max_depth
                ));
            }
            // Identical parts in one message are scanned once.
            let mut seen: HashMap<cache::Digest, ScanResult> = HashMap::new();
            for (top, part) in leaves {
                let key = cache::digest(part);
                let result = match seen.get(&key) {
                    Some(r) => r.clone(),
                    None => match self.scan_cached(part, key).await {
                        Ok(r) => {
                            seen.insert(key, r.clone());
                            r
                        }
                        Err(e) => return AvOutcome::Failed(e),
                    },
                };
                match result {
                    ScanResult::Clean => {}
                    ScanResult::Infected(sig) => {
                        if !found.contains(&sig) {
                            found.push(sig);
                        }
                        if !parts.contains(&top) {
                            parts.push(top);
                        }
                        if !exhaustive {
                            return AvOutcome::Infected(Detection {
                                signatures: found,
                                parts,
                            });
                        }
                    }
                    ScanResult::Unscannable(why) => {
                        unscannable.get_or_insert(why);
                    }
                }
            }
        }
        if t.whole_message {
            match self.engines.scan(message).await {
                Ok(ScanResult::Clean) => {}
                Ok(ScanResult::Infected(sig)) => {
                    if !found.contains(&sig) {
                        found.push(sig);
                    }
                }
                Ok(ScanResult::Unscannable(why)) => {
                    unscannable.get_or_insert(why);
                }
                Err(e) if found.is_empty() => return AvOutcome::Failed(e),
                // A detection already stands; the failure cannot change the verdict.
                Err(_) => {}
            }
        }
        if !found.is_empty() {
            AvOutcome::Infected(Detection {
                signatures: found,
                parts,
            })
        } else if let Some(why) = unscannable {
            AvOutcome::Unscannable(why)
        } else {
            AvOutcome::Clean
        }
    }

    async fn scan_cached(&self, data: &[u8], key: cache::Digest) -> Result<ScanResult, AvError> {
        let cache = self
            .cache
            .as_ref()
            .filter(|c| data.len() >= c.config().min_size);
        if let Some(c) = cache {
            if let Some(r) = c.get(&key) {
                self.metrics.cache_lookup(true);
                return Ok(r);
            }
            self.metrics.cache_lookup(false);
        }
        let r = self.engines.scan(data).await?;
        if let Some(c) = cache {
            c.put(key, &r);
        }
        Ok(r)
    }

    /// For [`OnDetection::Strip`]: `message` with each infected top-level part replaced by a
    /// text notice (boundaries kept, so the result is valid MIME). `None` when there is
    /// nothing that can be stripped: the detection came from the whole-message scan only, or
    /// the infected part is the message body itself; such a message must be rejected or
    /// quarantined instead.
    pub fn strip(&self, message: &[u8], detection: &Detection) -> Option<Vec<u8>> {
        if detection.parts.is_empty() || detection.parts.contains(&0) {
            return None;
        }
        let parsed = MessageParser::default().parse(message)?;
        let mut parts: Vec<(usize, &str)> = detection.parts.iter().map(|&p| (p, "virus")).collect();
        parts.sort_unstable();
        let out = crate::attach::strip_parts(message, &parsed, &parts);
        (out != message).then_some(out)
    }

    /// Applies the policy to an outcome; returns the verdict and the `outcome` metric label.
    pub fn verdict(&self, outcome: &AvOutcome) -> (Verdict, &'static str) {
        let p = &self.policy;
        match outcome {
            AvOutcome::Clean if p.tag_clean => (
                Verdict::Tag(vec![(p.header.clone(), "clean".into())]),
                "clean",
            ),
            AvOutcome::Clean => (Verdict::Continue, "clean"),
            AvOutcome::Infected(d) => {
                let names = d.signatures.join(", ");
                match p.on_detection {
                    OnDetection::Reject => (
                        Verdict::Reject(Reply::new(
                            554,
                            Enhanced::new(5, 7, 1),
                            format!("Message rejected: virus found: {names}"),
                        )),
                        "rejected",
                    ),
                    OnDetection::Quarantine => (
                        Verdict::Quarantine(format!("virus found: {names}")),
                        "quarantined",
                    ),
                    OnDetection::Strip => (
                        Verdict::Quarantine(format!("antivirus strip: virus found: {names}")),
                        "stripped",
                    ),
                }
            }
            AvOutcome::Unscannable(why) => match p.on_unscannable {
                OnUnscannable::Reject => (
                    Verdict::Reject(Reply::new(
                        554,
                        Enhanced::new(5, 7, 1),
                        "Message rejected: content cannot be scanned for viruses",
                    )),
                    "unscannable-rejected",
                ),
                OnUnscannable::Accept => (
                    Verdict::Tag(vec![(
                        p.header.clone(),
                        format!("not scanned ({})", crate::printable(why, 200)),
                    )]),
                    "unscannable-accepted",
                ),
            },
            AvOutcome::Failed(_) => match p.on_failure {
                OnFailure::FailClosed => (
                    Verdict::TempFail(Reply::new(
                        451,
                        Enhanced::new(4, 7, 0),
                        "Virus scanner unavailable, try again later",
                    )),
                    "tempfailed",
                ),
                OnFailure::FailOpen => (
                    Verdict::Tag(vec![(
                        p.header.clone(),
                        "not scanned (scanner unavailable)".into(),
                    )]),
                    "accepted-unscanned",
                ),
            },
        }
    }
}

impl Stage for AntivirusStage {
    fn name(&self) -> &'static str {
        "antivirus"
    }

    fn data<'a>(
        &'a self,
        session: &'a SessionInfo,
        _env: &'a Envelope,
        message: &'a [u8],
    ) -> StageFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let outcome = self.check(message).await;
            let (mut verdict, label) = self.verdict(&outcome);
            // Strip: deliver the message with the infected parts replaced by a notice; when
            // nothing can be stripped (the body itself is infected), it stays quarantined.
            if let (AvOutcome::Infected(d), OnDetection::Strip) =
                (&outcome, self.policy.on_detection)
                && let Some(stripped) = self.strip(message, d)
            {
                verdict = Verdict::Replace(
                    stripped,
                    format!("antivirus strip: {}", d.signatures.join(", ")),
                );
            }
            self.metrics.message(label, start.elapsed().as_secs_f64());
            match &outcome {
                AvOutcome::Clean => {}
                AvOutcome::Infected(d) => tracing::info!(
                    connector = %session.connector, client = %session.client_ip(),
                    outcome = label, signatures = %d.signatures.join(", "), "virus found"
                ),
                AvOutcome::Unscannable(why) => tracing::info!(
                    connector = %session.connector, client = %session.client_ip(),
                    outcome = label, reason = %why, "message not scannable"
                ),
                AvOutcome::Failed(e) => tracing::warn!(
                    connector = %session.connector, client = %session.client_ip(),
                    outcome = label, error = %e, "virus scan failed"
                ),
            }
            verdict
        })
    }
}

/// Collects every decoded leaf part, attached messages included, within the limits.
fn collect_leaves<'m>(
    m: &'m Message<'m>,
    depth: usize,
    t: &ScanTargets,
    top: Option<usize>,
    out: &mut Vec<(usize, &'m [u8])>,
    over: &mut bool,
) {
    for (i, part) in m.parts.iter().enumerate() {
        let at = top.unwrap_or(i);
        let bytes: &[u8] = match &part.body {
            PartType::Text(s) | PartType::Html(s) => s.as_bytes(),
            PartType::Binary(b) | PartType::InlineBinary(b) => b,
            PartType::Message(inner) => {
                if depth + 1 > t.max_depth {
                    *over = true;
                } else {
                    collect_leaves(inner, depth + 1, t, Some(at), out, over);
                }
                continue;
            }
            PartType::Multipart(_) => continue,
        };
        if bytes.is_empty() {
            continue;
        }
        if out.len() >= t.max_parts {
            *over = true;
            return;
        }
        out.push((at, bytes));
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}
