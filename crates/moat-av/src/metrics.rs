use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::attach::{AttachmentAction, AttachmentRule};
use crate::error::AvErrorKind;

/// Closed set of `result` label values of `moat_av_scans_total`.
pub(crate) const SCAN_RESULTS: &[&str] = &[
    "clean",
    "infected",
    "unscannable",
    "connect",
    "io",
    "timeout",
    "protocol",
    "engine",
    "circuit-open",
    "overloaded",
];

/// Closed set of `outcome` label values of `moat_av_messages_total`.
pub(crate) const MESSAGE_OUTCOMES: &[&str] = &[
    "clean",
    "rejected",
    "quarantined",
    "stripped",
    "tempfailed",
    "accepted-unscanned",
    "unscannable-rejected",
    "unscannable-accepted",
];

/// The antivirus Prometheus handles, registered on an explicit [`Registry`].
///
/// Labels: `engine` is the configured name of an engine (bounded by the configuration);
/// `result` and `outcome` come from the closed sets below; nothing from a message.
///
/// | name | type | labels |
/// | --- | --- | --- |
/// | `moat_av_scans_total` | counter | `engine`, `result` (`clean`, `infected`, `unscannable`, or the error kind: `connect`, `io`, `timeout`, `protocol`, `engine`, `circuit-open`, `overloaded`) |
/// | `moat_av_scan_seconds` | histogram | `engine` (scans that reached the engine) |
/// | `moat_av_engine_up` | gauge | `engine` (1 while its circuit breaker is closed) |
/// | `moat_av_cache_lookups_total` | counter | `result` (`hit`, `miss`) |
/// | `moat_av_messages_total` | counter | `outcome` (`clean`, `rejected`, `quarantined`, `stripped`, `tempfailed`, `accepted-unscanned`, `unscannable-rejected`, `unscannable-accepted`) |
/// | `moat_av_message_seconds` | histogram | — (whole antivirus stage per message) |
/// | `moat_av_attachment_actions_total` | counter | `rule` (`extension`, `double-extension`, `deceptive-name`, `declared-type`, `true-type`, `encrypted-archive`, `archive-limit`), `action` (`reject`, `strip`, `silent-delete`) |
#[derive(Clone, Debug)]
pub struct AvMetrics {
    scans: IntCounterVec,
    scan_seconds: HistogramVec,
    engine_up: IntGaugeVec,
    cache: IntCounterVec,
    messages: IntCounterVec,
    message_seconds: Histogram,
    attachments: IntCounterVec,
}

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl AvMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let scans = IntCounterVec::new(
            Opts::new(
                "moat_av_scans_total",
                "Antivirus scans by engine and result.",
            ),
            &["engine", "result"],
        )?;
        let scan_seconds = HistogramVec::new(
            HistogramOpts::new(
                "moat_av_scan_seconds",
                "Time an engine took to answer one scan.",
            )
            .buckets(BUCKETS.to_vec()),
            &["engine"],
        )?;
        let engine_up = IntGaugeVec::new(
            Opts::new(
                "moat_av_engine_up",
                "1 while an antivirus engine's circuit breaker is closed, 0 while open or probing.",
            ),
            &["engine"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "moat_av_cache_lookups_total",
                "Verdict cache lookups by result.",
            ),
            &["result"],
        )?;
        let messages = IntCounterVec::new(
            Opts::new(
                "moat_av_messages_total",
                "Messages through the antivirus stage by outcome.",
            ),
            &["outcome"],
        )?;
        let message_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "moat_av_message_seconds",
                "Time the antivirus stage spent on one message.",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        let attachments = IntCounterVec::new(
            Opts::new(
                "moat_av_attachment_actions_total",
                "Attachment rule matches by rule and action.",
            ),
            &["rule", "action"],
        )?;
        registry.register(Box::new(attachments.clone()))?;
        registry.register(Box::new(scans.clone()))?;
        registry.register(Box::new(scan_seconds.clone()))?;
        registry.register(Box::new(engine_up.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(message_seconds.clone()))?;
        for r in ["hit", "miss"] {
            cache.with_label_values(&[r]);
        }
        for r in AttachmentRule::ALL {
            for a in [
                AttachmentAction::Reject,
                AttachmentAction::Strip,
                AttachmentAction::SilentDelete,
            ] {
                attachments.with_label_values(&[r.as_str(), a.as_str()]);
            }
        }
        for o in MESSAGE_OUTCOMES {
            messages.with_label_values(&[o]);
        }
        Ok(Self {
            scans,
            scan_seconds,
            engine_up,
            cache,
            messages,
            message_seconds,
            attachments,
        })
    }

    /// Resolves every series of an engine so it is exported from the start.
    pub(crate) fn register_engine(&self, engine: &str) -> EngineHandles {
        for r in SCAN_RESULTS {
            self.scans.with_label_values(&[engine, r]);
        }
        let up = self.engine_up.with_label_values(&[engine]);
        up.set(1);
        EngineHandles {
            scans: self.scans.clone(),
            seconds: self.scan_seconds.with_label_values(&[engine]),
            up,
            engine: engine.to_owned(),
        }
    }

    pub(crate) fn cache_lookup(&self, hit: bool) {
        self.cache
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }

    pub(crate) fn attachment(&self, rule: AttachmentRule, action: AttachmentAction) {
        self.attachments
            .with_label_values(&[rule.as_str(), action.as_str()])
            .inc();
    }

    pub(crate) fn message(&self, outcome: &'static str, seconds: f64) {
        debug_assert!(MESSAGE_OUTCOMES.contains(&outcome));
        self.messages.with_label_values(&[outcome]).inc();
        self.message_seconds.observe(seconds);
    }
}

/// One engine's pre-resolved handles.
#[derive(Clone, Debug)]
pub(crate) struct EngineHandles {
    scans: IntCounterVec,
    seconds: Histogram,
    pub(crate) up: IntGauge,
    engine: String,
}

impl EngineHandles {
    pub(crate) fn result(&self, result: &'static str) {
        self.scans.with_label_values(&[&self.engine, result]).inc();
    }

    pub(crate) fn error(&self, kind: AvErrorKind) {
        self.result(kind.as_str());
    }

    pub(crate) fn seconds(&self, s: f64) {
        self.seconds.observe(s);
    }
}
