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
use moat_core::{Shutdown, Stage};

use crate::config::{
    AntivirusSection, AttachmentActionConfig, AttachmentsSection, AvModeConfig, EngineKind,
    OnDetectionConfig, OnFailureConfig, OnUnscannableConfig,
};

/// Builds the antivirus stage; the engines are probed in the background so a recovered
/// engine is used again even without mail.
pub fn antivirus(
    cfg: &AntivirusSection,
    metrics: &AvMetrics,
    shutdown: Shutdown,
) -> anyhow::Result<(Arc<dyn Stage>, Arc<EngineSet>)> {
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
    let policy = AvPolicy {
        on_detection: match cfg.on_detection {
            OnDetectionConfig::Reject => OnDetection::Reject,
            OnDetectionConfig::Quarantine => OnDetection::Quarantine,
            OnDetectionConfig::Strip => OnDetection::Strip,
        },
        on_failure: match cfg.on_failure {
            OnFailureConfig::FailClosed => OnFailure::FailClosed,
            OnFailureConfig::FailOpen => OnFailure::FailOpen,
        },
        on_unscannable: match cfg.on_unscannable {
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
    };
    let stage = AntivirusStage::new(engines.clone(), Some(cache), policy, metrics.clone())?;
    Ok((Arc::new(stage), engines))
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
