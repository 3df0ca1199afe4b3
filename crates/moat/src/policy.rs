//! The connection, sender and recipient stages built from `[policy]`, and their reloads.
//!
//! List files (IP allow and block lists, the recipient directory) reload the way rule packs
//! do: a debounced watcher on their folders and SIGHUP ask for one reload; a broken file
//! keeps the running list (logged and counted by the policy metrics).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use moat_core::{PerConnector, Shutdown, Stage};
use moat_policy::{
    AuthMetrics, DnsblMetrics, DnsblStage, MemoryRateStore, PolicyConfig, PolicyMetrics,
    PolicyStage, RateStore, RateStoreMetrics,
};
use prometheus::Registry;

/// Rate-limit keys the local store keeps at most.
const LOCAL_RATE_KEYS: usize = 100_000;

/// The policy stages of a node.
pub struct Policy {
    /// The stages, in order, each applied on the configured connectors only.
    pub stages: Vec<Arc<dyn Stage>>,
    lists: Arc<PolicyStage>,
    _watches: Vec<moat_rules::WatchHandle>,
}

impl Policy {
    /// Builds the stages, starts the list watchers and the directory-age refresh.
    pub async fn start(
        cfg: &PolicyConfig,
        hostname: &str,
        registry: &Registry,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let metrics = PolicyMetrics::new(registry).context("registering policy metrics")?;
        // Rate counts: shared in Redis when configured (falling back to local counts while
        // it is away), else in this node's memory.
        let store: Arc<dyn RateStore> = match &cfg.redis {
            Some(redis) => {
                let m =
                    RateStoreMetrics::new(registry).context("registering rate store metrics")?;
                tracing::info!(redis = ?redis, "rate limits shared through Redis");
                redis.build(m).context("policy.redis")?
            }
            None => Arc::new(MemoryRateStore::new(LOCAL_RATE_KEYS)),
        };
        let lists = Arc::new(
            cfg.build(store, metrics)
                .context("building the policy stage")?,
        );
        let route = |stage: Arc<dyn Stage>, name: &'static str| -> Arc<dyn Stage> {
            let mut routed = PerConnector::new(name, None);
            for c in &cfg.connectors {
                routed = routed.with(c.clone(), Some(stage.clone()));
            }
            Arc::new(routed)
        };
        let mut stages = vec![route(lists.clone(), "policy")];

        // One resolver for the DNS lists and message authentication, with one TTL cache.
        let needs_dns = !cfg.dnsbl.zones.is_empty() || cfg.auth.as_ref().is_some_and(|a| a.enabled);
        if needs_dns {
            let resolver = cfg.dns.resolver().context("policy.dns")?;
            if !cfg.dnsbl.zones.is_empty() {
                let m = DnsblMetrics::new(registry).context("registering DNS list metrics")?;
                let dnsbl = cfg
                    .dnsbl
                    .build(resolver.clone(), &cfg.dns, m)
                    .context("policy.dnsbl")?;
                let stage = DnsblStage::new(dnsbl, cfg.dnsbl.action, lists.ip_lists().clone());
                stages.push(route(Arc::new(stage), "dnsbl"));
            }
            if let Some(auth) = cfg.auth.as_ref().filter(|a| a.enabled) {
                let m = AuthMetrics::new(registry).context("registering authentication metrics")?;
                let stage = auth.build(resolver, hostname, m).context("policy.auth")?;
                stages.push(route(Arc::new(stage), "auth"));
            }
        }

        let mut watches = Vec::new();
        for dir in list_folders(cfg) {
            let l = lists.clone();
            let handle = moat_rules::watch(&dir, Duration::from_millis(500), move || {
                reload(&l);
            })
            .with_context(|| format!("watching the list folder {}", dir.display()))?;
            watches.push(handle);
        }
        // The directory's age moves on a quiet node too.
        if cfg.recipients.directory.is_some() {
            let l = lists.clone();
            let mut stop = shutdown;
            tokio::spawn(async move {
                loop {
                    l.refresh_directory_metrics(SystemTime::now());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                        _ = stop.draining() => break,
                    }
                }
            });
        }
        Ok(Self {
            stages,
            lists,
            _watches: watches,
        })
    }

    /// Re-reads every list file now (SIGHUP).
    pub fn reload(&self) {
        reload(&self.lists);
    }
}

fn reload(lists: &PolicyStage) {
    // Each logs and counts its own outcome; a broken file keeps the running list.
    let _ = lists.reload_ip_lists();
    let _ = lists.reload_directory();
}

/// Folders holding the list files, each watched once.
fn list_folders(cfg: &PolicyConfig) -> BTreeSet<PathBuf> {
    let files = cfg
        .ip_lists
        .allow
        .files
        .iter()
        .chain(&cfg.ip_lists.block.files)
        .chain(cfg.recipients.directory.iter());
    files
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}
