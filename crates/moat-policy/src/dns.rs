//! The DNS resolver every policy lookup shares (DNS block lists, SPF, DKIM, DMARC).
//!
//! One [`TokioResolver`] per node: its cache is bounded (`cache_size` entries) and honours
//! the records' TTLs, so a client that reconnects, or the same sender domain seen again,
//! costs no second query while the answer is fresh. Queries go to the configured servers
//! only (no `/etc/resolv.conf`, no search domains): an edge node names its resolver.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::Deserialize;

use crate::error::PolicyError;

/// `[policy.dns]`: where and how to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Recursive resolvers to ask, in order (`"127.0.0.1:53"`).
    pub servers: Vec<SocketAddr>,
    /// Time to wait for one answer, in milliseconds.
    pub timeout_ms: u64,
    /// Tries per server before a lookup counts as failed.
    pub attempts: usize,
    /// Answers kept in the cache (bounded; each expires with its TTL).
    pub cache_size: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout_ms: 2_000,
            attempts: 1,
            cache_size: 10_000,
        }
    }
}

impl DnsConfig {
    /// The per-answer timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the values and builds the shared resolver. Must be called inside a Tokio
    /// runtime.
    pub fn resolver(&self) -> Result<TokioResolver, PolicyError> {
        if self.servers.is_empty() {
            return Err(PolicyError::config(
                "policy.dns.servers: at least one server is needed",
            ));
        }
        if self.timeout_ms == 0 || self.attempts == 0 {
            return Err(PolicyError::config(
                "policy.dns: timeout_ms and attempts must be greater than zero",
            ));
        }
        let servers = self
            .servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut opts = ResolverOpts::default();
        opts.timeout = self.timeout();
        opts.attempts = self.attempts;
        opts.cache_size = self.cache_size;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are always absolute here (reversed addresses under a zone, domains).
        opts.ndots = 0;
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| PolicyError::config(format!("policy.dns: {e}")))
    }
}
