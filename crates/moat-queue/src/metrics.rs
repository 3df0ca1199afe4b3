use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::CorruptKind;

/// The queue's Prometheus handles, registered once on an explicit [`Registry`] and resolved at
/// construction. Label values come from closed enums only.
///
/// | name | type | labels |
/// | --- | --- | --- |
/// | `moat_queue_messages` | gauge | `state` = pending, deferred, active, held |
/// | `moat_queue_oldest_message_age_seconds` | gauge | |
/// | `moat_queue_bytes` | gauge | (bytes of live segments) |
/// | `moat_queue_segments` | gauge | |
/// | `moat_queue_enqueued_total` | counter | |
/// | `moat_queue_retries_total` | counter | (recipients deferred) |
/// | `moat_queue_bounces_total` | counter | (recipients bounced) |
/// | `moat_queue_dsn_total` | counter | (DSNs queued) |
/// | `moat_queue_corrupt_records_total` | counter | `kind` = truncated, checksum, malformed, unreadable |
/// | `moat_queue_commits_total` | counter | (fsyncs of the log) |
/// | `moat_queue_commit_records` | histogram | (records per fsync) |
/// | `moat_queue_commit_seconds` | histogram | (write + fsync time) |
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    pub(crate) messages: IntGaugeVec,
    pub(crate) oldest_age: Gauge,
    pub(crate) bytes: IntGauge,
    pub(crate) segments: IntGauge,
    pub(crate) enqueued: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) bounces: IntCounter,
    pub(crate) dsns: IntCounter,
    pub(crate) corrupt: IntCounterVec,
    pub(crate) commits: IntCounter,
    pub(crate) commit_records: Histogram,
    pub(crate) commit_seconds: Histogram,
}

impl QueueMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let messages = IntGaugeVec::new(
            Opts::new("moat_queue_messages", "Messages in the queue by state."),
            &["state"],
        )?;
        let oldest_age = Gauge::new(
            "moat_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue.",
        )?;
        let bytes = IntGauge::new("moat_queue_bytes", "Bytes of spool segments on disk.")?;
        let segments = IntGauge::new("moat_queue_segments", "Spool segments on disk.")?;
        let enqueued = IntCounter::new("moat_queue_enqueued_total", "Messages made durable.")?;
        let retries = IntCounter::new(
            "moat_queue_retries_total",
            "Recipients deferred after a temporary failure.",
        )?;
        let bounces = IntCounter::new(
            "moat_queue_bounces_total",
            "Recipients bounced (permanent failure or expired).",
        )?;
        let dsns = IntCounter::new(
            "moat_queue_dsn_total",
            "Delivery status notifications queued.",
        )?;
        let corrupt = IntCounterVec::new(
            Opts::new(
                "moat_queue_corrupt_records_total",
                "Unreadable spool records found and moved aside, by kind.",
            ),
            &["kind"],
        )?;
        let commits = IntCounter::new("moat_queue_commits_total", "Group commits (fsyncs).")?;
        let commit_records = Histogram::with_opts(
            HistogramOpts::new(
                "moat_queue_commit_records",
                "Records made durable per fsync.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "moat_queue_commit_seconds",
                "Write plus fsync time per commit.",
            )
            .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 14)?),
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(segments.clone()))?;
        registry.register(Box::new(enqueued.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(bounces.clone()))?;
        registry.register(Box::new(dsns.clone()))?;
        registry.register(Box::new(corrupt.clone()))?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(commit_records.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        // Resolve every label value now so each series exists from the start.
        for kind in [
            CorruptKind::Truncated,
            CorruptKind::Checksum,
            CorruptKind::Malformed,
            CorruptKind::Unreadable,
        ] {
            corrupt.with_label_values(&[kind.as_str()]);
        }
        for state in ["pending", "deferred", "active", "held"] {
            messages.with_label_values(&[state]);
        }
        Ok(Self {
            messages,
            oldest_age,
            bytes,
            segments,
            enqueued,
            retries,
            bounces,
            dsns,
            corrupt,
            commits,
            commit_records,
            commit_seconds,
        })
    }

    pub(crate) fn corrupt(&self, kind: CorruptKind) {
        self.corrupt.with_label_values(&[kind.as_str()]).inc();
    }
}
