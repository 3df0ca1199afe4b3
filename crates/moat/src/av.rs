//! Antivirus and attachment stages built from the configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use moat_av::{
    AntivirusStage, AttachmentAction, AttachmentPolicy, AttachmentStage, AvMetrics, AvPolicy,
    CacheConfig, ClamdAddress, ClamdConfig, EngineLimits, EngineSet, EngineSpec, IcapConfig, Mode,
    OnDetection, OnFailure, OnUnscannable, VerdictCache,
};
use moat_core::{PerConnector, Shutdown, Stage};

use crate::config::{
    AntivirusSection, AttachmentActionConfig, AttachmentsSection, AvConnectorSection, AvModeConfig,
    EngineKind, OnDetectionConfig, OnFailureConfig, OnUnscannableConfig,
};

/// The antivirus stage of a node and what readiness needs to know of it.
pub struct Antivirus {
    /// One [`AntivirusStage`] per connector policy, sharing the engines and the cache.
    pub stage: Arc<dyn Stage>,
    /// The engines (breaker state for `/readyz`).
    pub engines: Arc<EngineSet>,
    /// Some connector scans fail-closed: without engines it refuses mail.
    pub fail_closed: bool,
}

/// Builds the antivirus stage, one policy per connector over one engine set and one verdict
/// cache; the engines are probed in the background so a recovered engine is used again even
/// without mail.
pub fn antivirus(
    cfg: &AntivirusSection,
    metrics: &AvMetrics,
    shutdown: Shutdown,
) -> anyhow::Result<Antivirus> {
    let mut specs = Vec::new();
    for e in &cfg.engine {
        let mut limits = EngineLimits::default();
        if let Some(t) = e.scan_timeout {
            limits.scan_timeout = t.0;
        }
        if let Some(c) = e.concurrency {
            limits.concurrency = c;
        }
        let engine: Arc<dyn moat_av::AntivirusEngine> = match e.kind {
            EngineKind::Clamd => {
                let address = if e.address.starts_with('/') {
                    ClamdAddress::Unix(PathBuf::from(&e.address))
                } else {
                    ClamdAddress::Tcp(e.address.parse()?)
                };
                Arc::new(
                    ClamdConfig::new(address)
                        .build()
                        .with_context(|| format!("engine {}", e.name))?,
                )
            }
            EngineKind::Icap => Arc::new(
                IcapConfig::new(
                    e.address.parse()?,
                    e.service.clone().unwrap_or_else(|| "avscan".into()),
                )
                .build()
                .with_context(|| format!("engine {}", e.name))?,
            ),
        };
        specs.push(EngineSpec {
            name: e.name.clone(),
            engine,
            limits,
        });
    }
    let mode = match cfg.mode {
        AvModeConfig::All => Mode::All,
        AvModeConfig::Failover => Mode::Failover,
    };
    let engines = Arc::new(EngineSet::new(mode, specs, metrics)?);
    engines.spawn_prober(Duration::from_secs(5), shutdown);
    let cache = Arc::new(VerdictCache::new(CacheConfig {
        capacity: cfg.cache_entries,
        ttl: cfg.cache_ttl.0,
        ..CacheConfig::default()
    }));
    // Fail-closed anywhere means a node without engines refuses mail there: not ready.
    let mut fail_closed = false;
    let mut stage = |o: AvConnectorSection| -> anyhow::Result<Option<Arc<dyn Stage>>> {
        if o.enabled == Some(false) {
            return Ok(None);
        }
        let stage = AntivirusStage::new(
            engines.clone(),
            Some(cache.clone()),
            policy(cfg, o),
            metrics.clone(),
        )?;
        fail_closed |= stage.policy().on_failure == OnFailure::FailClosed;
        Ok(Some(Arc::new(stage)))
    };
    let mut routed = PerConnector::new("antivirus", stage(AvConnectorSection::default())?);
    for (name, o) in &cfg.connector {
        routed = routed.with(name.clone(), stage(*o)?);
    }
    Ok(Antivirus {
        stage: Arc::new(routed),
        engines,
        fail_closed,
    })
}

/// The antivirus policy of a connector: `[antivirus]` with its overrides.
fn policy(cfg: &AntivirusSection, o: AvConnectorSection) -> AvPolicy {
    AvPolicy {
        on_detection: match o.on_detection.unwrap_or(cfg.on_detection) {
            OnDetectionConfig::Reject => OnDetection::Reject,
            OnDetectionConfig::Quarantine => OnDetection::Quarantine,
            OnDetectionConfig::Strip => OnDetection::Strip,
        },
        on_failure: match o.on_failure.unwrap_or(cfg.on_failure) {
            OnFailureConfig::FailClosed => OnFailure::FailClosed,
            OnFailureConfig::FailOpen => OnFailure::FailOpen,
        },
        on_unscannable: match o.on_unscannable.unwrap_or(cfg.on_unscannable) {
            OnUnscannableConfig::Reject => OnUnscannable::Reject,
            OnUnscannableConfig::Accept => OnUnscannable::Accept,
        },
        message_timeout: cfg.message_timeout.0,
        targets: moat_av::ScanTargets {
            parts: cfg.scan_parts,
            whole_message: cfg.scan_whole_message,
            ..moat_av::ScanTargets::default()
        },
        ..AvPolicy::default()
    }
}

/// Builds the attachment stage: every rule of the default policy, with one action.
pub fn attachments(
    cfg: &AttachmentsSection,
    metrics: &AvMetrics,
) -> anyhow::Result<Arc<dyn Stage>> {
    let action = match cfg.action {
        AttachmentActionConfig::Reject => AttachmentAction::Reject,
        AttachmentActionConfig::Strip => AttachmentAction::Strip,
        AttachmentActionConfig::SilentDelete => AttachmentAction::SilentDelete,
    };
    let d = AttachmentPolicy::default();
    let with = |a: Option<AttachmentAction>| a.map(|_| action);
    let policy = AttachmentPolicy {
        on_extension: with(d.on_extension),
        on_double_extension: with(d.on_double_extension),
        on_deceptive_name: with(d.on_deceptive_name),
        on_declared_type: with(d.on_declared_type),
        on_true_type: with(d.on_true_type),
        on_encrypted_archive: d.on_encrypted_archive,
        on_archive_limit: d.on_archive_limit,
        ..d
    };
    Ok(Arc::new(AttachmentStage::new(policy, metrics.clone())?))
}
