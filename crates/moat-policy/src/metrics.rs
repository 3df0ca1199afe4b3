//! The policy stage's Prometheus handles, registered on an explicit [`Registry`] and
//! resolved once, with label values from closed sets only.

use std::collections::HashMap;
use std::time::Duration;

use moat_core::Phase;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::{PolicyError, ReloadOutcome};
use crate::rate::{Counter, Scope};
use crate::reason::Reason;

/// Which reloadable list a reload was about. Also the closed set of `list` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListName {
    /// The IP allow and block lists.
    IpLists,
    /// The recipient directory.
    Directory,
}

impl ListName {
    /// Lower-case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ListName::IpLists => "ip_lists",
            ListName::Directory => "directory",
        }
    }
}

/// The policy stage's metrics.
///
/// - `moat_policy_decisions_total{stage, reason}`
/// - `moat_policy_limiter_rejections_total{counter, scope}`
/// - `moat_policy_limiter_errors_total`
/// - `moat_policy_reloads_total{list, result}` (`applied`, `unchanged`, `rejected`)
/// - `moat_policy_directory_age_seconds`, `moat_policy_directory_stale`
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    decisions: HashMap<(Phase, Reason), IntCounter>,
    rejections: HashMap<(Counter, Scope), IntCounter>,
    limiter_errors: IntCounter,
    reloads: HashMap<(ListName, &'static str), IntCounter>,
    directory_age: Gauge,
    directory_stale: IntGauge,
}

impl PolicyMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, PolicyError> {
        Self::build(registry).map_err(PolicyError::metrics)
    }

    /// Handles registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::build(&Registry::new()).unwrap_or_else(|e| unreachable!("fresh registry: {e}"))
    }

    fn build(registry: &Registry) -> Result<Self, prometheus::Error> {
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_decisions_total",
                "Connection, sender and recipient policy decisions by stage and reason.",
            ),
            &["stage", "reason"],
        )?;
        let rejections_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_limiter_rejections_total",
                "Rate-limit rejections by counter and scope.",
            ),
            &["counter", "scope"],
        )?;
        let limiter_errors = IntCounter::new(
            "moat_policy_limiter_errors_total",
            "Rate store failures; the limit was not applied for that check.",
        )?;
        let reloads_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_reloads_total",
                "Reloads of the IP lists and the recipient directory by result.",
            ),
            &["list", "result"],
        )?;
        let directory_age = Gauge::new(
            "moat_policy_directory_age_seconds",
            "Seconds since the recipient directory file was last modified.",
        )?;
        let directory_stale = IntGauge::new(
            "moat_policy_directory_stale",
            "1 when the recipient directory is older than its configured limit.",
        )?;
        registry.register(Box::new(decisions_vec.clone()))?;
        registry.register(Box::new(rejections_vec.clone()))?;
        registry.register(Box::new(limiter_errors.clone()))?;
        registry.register(Box::new(reloads_vec.clone()))?;
        registry.register(Box::new(directory_age.clone()))?;
        registry.register(Box::new(directory_stale.clone()))?;

        let mut decisions = HashMap::new();
        for reason in Reason::ALL {
            for &phase in reason.phases() {
                decisions.insert(
                    (phase, reason),
                    decisions_vec.with_label_values(&[phase.as_str(), reason.as_str()]),
                );
            }
        }
        let mut rejections = HashMap::new();
        for counter in Counter::ALL {
            for scope in Scope::ALL {
                rejections.insert(
                    (counter, scope),
                    rejections_vec.with_label_values(&[counter.as_str(), scope.as_str()]),
                );
            }
        }
        let mut reloads = HashMap::new();
        for list in [ListName::IpLists, ListName::Directory] {
            for result in [
                ReloadOutcome::Applied.as_str(),
                ReloadOutcome::Unchanged.as_str(),
                "rejected",
            ] {
                reloads.insert(
                    (list, result),
                    reloads_vec.with_label_values(&[list.as_str(), result]),
                );
            }
        }
        Ok(Self {
            decisions,
            rejections,
            limiter_errors,
            reloads,
            directory_age,
            directory_stale,
        })
    }

    /// Counts one decision.
    pub fn decision(&self, phase: Phase, reason: Reason) {
        if let Some(c) = self.decisions.get(&(phase, reason)) {
            c.inc();
        }
    }

    /// Counts one rate-limit rejection.
    pub fn rejection(&self, counter: Counter, scope: Scope) {
        if let Some(c) = self.rejections.get(&(counter, scope)) {
            c.inc();
        }
    }

    /// Counts one rate store failure.
    pub fn limiter_error(&self) {
        self.limiter_errors.inc();
    }

    /// Counts one reload: `Ok` outcomes by name, errors as `rejected`.
    pub fn reload(&self, list: ListName, result: &Result<ReloadOutcome, PolicyError>) {
        let label = match result {
            Ok(o) => o.as_str(),
            Err(_) => "rejected",
        };
        if let Some(c) = self.reloads.get(&(list, label)) {
            c.inc();
        }
    }

    /// Sets the directory's age and staleness.
    pub fn directory(&self, age: Duration, stale: bool) {
        self.directory_age.set(age.as_secs_f64());
        self.directory_stale.set(i64::from(stale));
    }
}
