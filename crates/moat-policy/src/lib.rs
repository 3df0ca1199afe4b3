//! Connection, sender and recipient hygiene for Moat: the cheap checks, decided before DATA,
//! that stop most unwanted mail.
//!
//! - [`IpListStore`]: IP allow and block lists (addresses and CIDR ranges, IPv4 and IPv6,
//!   IPv4-mapped addresses matching IPv4 ranges), inline or from list files, held in an
//!   atomically swapped snapshot; [`IpListStore::reload`] keeps the old lists when a file
//!   is broken.
//! - [`SenderFilter`]: blocked senders, domains and sub-domains; the blank-sender policy.
//! - [`RecipientFilter`]: blocked recipients and a recipient directory (one address or
//!   `*@domain` per line) for the accepted domains, with a staleness check.
//! - [`RateStore`], [`MemoryRateStore`], [`RateLimiter`]: connections, messages and
//!   recipients per window per client address and per /24 (/64 for IPv6).
//! - [`RedisConfig`], [`SharedRateStore`], [`RedisRateStore`]: rate counts in Redis, shared
//!   by the nodes behind one MX, with a local fallback while Redis is away
//!   ([`RateStoreMetrics`]).
//! - [`PolicyStage`]: all of the above as one [`moat_core::Stage`], with every reply
//!   defined in [`Reason::verdict`] and metrics in [`PolicyMetrics`].
//! - [`AuthConfig`], [`AuthStage`]: SPF, DKIM, DMARC and ARC verification with an
//!   `Authentication-Results` header and a policy per result; metrics in [`AuthMetrics`].
//! - [`DnsblConfig`], [`Dnsbl`], [`DnsblStage`]: DNS block and allow lists weighted per
//!   zone and answer code, refusing at connect or at RCPT; metrics in [`DnsblMetrics`].
//!
//! List files hold one entry per line; `#` starts a comment. Errors name the file and line.
//!
//! ```
//! use std::sync::Arc;
//! use moat_policy::{MemoryRateStore, PolicyConfig, PolicyMetrics, RateLimit};
//!
//! let mut config = PolicyConfig::default();
//! config.ip_lists.block.inline = vec!["192.0.2.0/24".into()];
//! config.sender.blocked_domains_and_subdomains = vec!["spam.example".into()];
//! config.rate_limits.connections_per_ip = Some(RateLimit { max: 30, window_secs: 60 });
//!
//! let registry = prometheus::Registry::new();
//! let stage = config
//!     .build(Arc::new(MemoryRateStore::new(100_000)), PolicyMetrics::new(&registry)?)?;
//! let ip = "192.0.2.9".parse()?;
//! assert_eq!(
//!     stage.ip_lists().snapshot().classify(ip),
//!     moat_policy::IpClass::Blocked
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod address;
mod auth;
mod dns;
mod dnsbl;
mod error;
mod iplist;
mod metrics;
mod rate;
mod reason;
mod recipient;
mod redis;
mod sender;
mod stage;

pub use auth::{
    AUTH_RESULTS_HEADER, AuthConfig, AuthMethod, AuthMetrics, AuthReport, AuthResult, AuthStage,
    DmarcPolicy, DmarcQuarantineAction, DmarcRejectAction, SpfAction,
};
pub use dns::DnsConfig;
pub use dnsbl::{
    Dnsbl, DnsblAction, DnsblConfig, DnsblHit, DnsblMetrics, DnsblOutcome, DnsblStage,
    DnsblZoneConfig,
};
pub use error::{ErrorKind, Fault, PolicyError, ReloadOutcome};
pub use iplist::{
    IpClass, IpList, IpListSource, IpListStore, IpLists, IpListsConfig, canonical, client_net,
};
pub use metrics::{ListName, PolicyMetrics};
pub use rate::{
    Clock, Counter, MemoryRateStore, RateFuture, RateKey, RateLimit, RateLimiter, RateLimitsConfig,
    RateStore, Scope,
};
pub use reason::Reason;
pub use recipient::{
    AddressSet, Directory, RcptDecision, RecipientConfig, RecipientFilter, StaleAction,
};
pub use redis::{
    EXPIRY_SLACK_SECS, RateStoreMetrics, RedisConfig, RedisFailure, RedisRateStore, SharedRateStore,
};
pub use sender::{BlankSender, SenderConfig, SenderDecision, SenderFilter};
pub use stage::{PolicyConfig, PolicyStage};
