//! The content filter in the node: the stage with its metrics, and the one reload path that
//! the rules-folder watcher, SIGHUP and `POST /admin/rules/reload` share.
//!
//! Reload: a request goes to one task, which runs load → compile → the packs' own tests →
//! swap on a blocking thread (never on the SMTP path) and answers applied, unchanged or
//! rejected. A rejected reload keeps the running snapshot; the error (file, line, rule) is
//! logged and counted. Messages take the snapshot once and keep it, so a swap never changes
//! the rules under a message being scanned.

use std::sync::Arc;
use std::time::Duration;

use moat_core::{Envelope, SessionInfo, Stage, StageFuture};
use moat_filter::{ContentFilter, FilterConfig};
use moat_rules::{ReloadOutcome, RuleStore};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};
use tokio::sync::{mpsc, oneshot};

/// What asked for a reload, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// The debounced watcher on the rules folder.
    Watcher,
    /// SIGHUP.
    Signal,
    /// `POST /admin/rules/reload`.
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Watcher => "watcher",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
        }
    }
}

/// The answer to a reload request.
#[derive(Debug, Clone)]
pub struct ReloadAnswer {
    /// applied | unchanged | rejected
    pub result: &'static str,
    /// Active versions, or the error.
    pub detail: String,
}

/// Sends reload requests to the one reload task.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::Sender<(Trigger, Option<oneshot::Sender<ReloadAnswer>>)>,
}

impl Reloader {
    /// Asks for a reload and waits for its answer.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadAnswer> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((trigger, Some(tx))).await.ok()?;
        rx.await.ok()
    }

    /// Asks for a reload without waiting (watcher thread, signal handler).
    pub fn request(&self, trigger: Trigger) {
        // A full channel means a reload is already queued; it will see these changes too.
        let _ = self.tx.try_send((trigger, None));
    }
}

/// Metrics of the rules and the filter.
#[derive(Clone)]
pub struct FilterMetrics {
    active: IntGaugeVec,
    reloads: IntCounterVec,
    compile_seconds: Histogram,
    hits: IntCounterVec,
    scan_seconds: Histogram,
    verdicts: IntCounterVec,
    truncated: IntCounter,
}

impl FilterMetrics {
    /// Registers the families.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let active = IntGaugeVec::new(
            Opts::new(
                "moat_rules_active_info",
                "Active rule packs (1 per pack and version)",
            ),
            &["pack", "version"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "moat_rules_reloads_total",
                "Rule reloads by trigger and result",
            ),
            &["trigger", "result"],
        )?;
        let compile_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "moat_rules_compile_seconds",
                "Load, compile and pack-test time of applied reloads",
            )
            .buckets(exponential_buckets(0.01, 2.0, 12)?),
        )?;
        let hits = IntCounterVec::new(
            Opts::new("moat_rule_hits_total", "Rule hits by pack and rule id"),
            &["pack", "rule"],
        )?;
        let scan_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "moat_filter_scan_seconds",
                "MIME walk and rule scan per message",
            )
            .buckets(exponential_buckets(0.0001, 2.5, 12)?),
        )?;
        let verdicts = IntCounterVec::new(
            Opts::new("moat_filter_verdicts_total", "Content filter decisions"),
            &["action"],
        )?;
        let truncated = IntCounter::new(
            "moat_filter_truncated_parts_total",
            "Message parts the rules saw only up to a scan size limit",
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(compile_seconds.clone()))?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(scan_seconds.clone()))?;
        registry.register(Box::new(verdicts.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        for trigger in ["watcher", "sighup", "admin", "startup"] {
            for result in ["applied", "unchanged", "rejected"] {
                reloads.with_label_values(&[trigger, result]);
            }
        }
        for action in ["continue", "tag", "quarantine", "reject"] {
            verdicts.with_label_values(&[action]);
        }
        Ok(Self {
            active,
            reloads,
            compile_seconds,
            hits,
            scan_seconds,
            verdicts,
            truncated,
        })
    }

    /// Publishes the packs of the active snapshot.
    fn set_active(&self, store: &RuleStore) {
        self.active.reset();
        for p in store.snapshot().packs() {
            self.active.with_label_values(&[&p.name, &p.version]).set(1);
        }
    }
}

/// Starts the reload task; returns the handle every trigger uses.
pub fn spawn_reloader(store: Arc<RuleStore>, metrics: FilterMetrics) -> Reloader {
    metrics.set_active(&store);
    metrics
        .reloads
        .with_label_values(&["startup", "applied"])
        .inc();
    let (tx, mut rx) = mpsc::channel::<(Trigger, Option<oneshot::Sender<ReloadAnswer>>)>(4);
    tokio::spawn(async move {
        while let Some((trigger, answer)) = rx.recv().await {
            let s = store.clone();
            let result = tokio::task::spawn_blocking(move || s.reload()).await;
            let reply = match result {
                Ok(Ok(ReloadOutcome::Applied { versions, elapsed })) => {
                    metrics.compile_seconds.observe(elapsed.as_secs_f64());
                    metrics.set_active(&store);
                    tracing::info!(trigger = trigger.as_str(), versions = %versions, ms = elapsed.as_millis() as u64, "rules reloaded");
                    ReloadAnswer {
                        result: "applied",
                        detail: versions,
                    }
                }
                Ok(Ok(ReloadOutcome::Unchanged)) => ReloadAnswer {
                    result: "unchanged",
                    detail: store.snapshot().versions(),
                },
                Ok(Err(e)) => {
                    tracing::error!(trigger = trigger.as_str(), error = %e, "rules reload rejected; the running rules stay");
                    ReloadAnswer {
                        result: "rejected",
                        detail: e.to_string(),
                    }
                }
                Err(e) => ReloadAnswer {
                    result: "rejected",
                    detail: format!("reload task failed: {e}"),
                },
            };
            metrics
                .reloads
                .with_label_values(&[trigger.as_str(), reply.result])
                .inc();
            if let Some(a) = answer {
                let _ = a.send(reply);
            }
        }
    });
    Reloader { tx }
}

/// Watches the rules folder; changes that settle for `debounce` send one reload request.
pub fn watch(
    store: &RuleStore,
    debounce: Duration,
    reloader: Reloader,
) -> Result<moat_rules::WatchHandle, moat_rules::Error> {
    moat_rules::watch(store.dir(), debounce, move || {
        reloader.request(Trigger::Watcher)
    })
}

/// The content filter stage with its metrics.
pub struct FilterStage {
    filter: ContentFilter,
    metrics: FilterMetrics,
}

impl FilterStage {
    /// A stage over `store`.
    pub fn new(store: Arc<RuleStore>, config: FilterConfig, metrics: FilterMetrics) -> Self {
        Self {
            filter: ContentFilter::new(store, config),
            metrics,
        }
    }
}

impl Stage for FilterStage {
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
            // Matching is CPU-bound: let the runtime move other tasks off this worker.
            let (outcome, verdict) =
                tokio::task::block_in_place(|| self.filter.judge(session, env, message));
            let m = &self.metrics;
            m.scan_seconds.observe(outcome.elapsed.as_secs_f64());
            m.verdicts
                .with_label_values(&[outcome.action.as_str()])
                .inc();
            m.truncated.inc_by(outcome.truncated_parts as u64);
            for p in &outcome.result.packs {
                for h in &p.hits {
                    m.hits.with_label_values(&[&p.pack, &h.rule]).inc();
                }
            }
            tracing::info!(
                connector = %session.connector, client = %session.client_ip(),
                action = outcome.action.as_str(), score = outcome.score,
                truncated_parts = outcome.truncated_parts,
                status = %outcome.status_line(), "content scanned"
            );
            verdict
        })
    }
}
