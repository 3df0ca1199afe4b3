//! Antivirus for Moat: engines behind one trait, and the stage that scans each message.
//!
//! - [`AntivirusEngine`]: scan a buffer → [`ScanResult`] (clean, infected with the signature
//!   name, or unscannable with the reason); a health check. [`ClamdEngine`] speaks clamd's
//!   `zINSTREAM` over TCP or a unix socket; [`IcapEngine`] speaks ICAP (RFC 3507) `RESPMOD`
//!   with preview and `204`, how commercial engines are reached.
//! - [`EngineSet`]: engines wrapped in a scan timeout, a concurrency limit and a circuit
//!   breaker each, scanning in [`Mode::All`] or [`Mode::Failover`]. Its breaker states feed
//!   `/readyz` ([`EngineSet::is_ready`], [`EngineSet::status`]) and the `moat_av_engine_up`
//!   gauge.
//! - [`VerdictCache`]: SHA-256 of a part → verdict, bounded, with a TTL, so one attachment
//!   sent to many recipients is scanned once.
//! - [`AntivirusStage`]: a [`moat_core::Stage`] whose `data` hook walks the MIME parts, scans
//!   each decoded part and the whole message, and maps the outcome through an [`AvPolicy`]:
//!   `554 5.7.1` naming the signature, quarantine, `451 4.7.0` when the scanner is down
//!   (fail-closed) or a header saying the message was not scanned (fail-open).
//! - [`AttachmentStage`]: a [`moat_core::Stage`] with rules by file name (extension, double
//!   extension, bidi tricks; RFC 2231 and RFC 2047 names decoded), declared type, true type
//!   from magic bytes ([`sniff`]) and zip contents within [`ArchiveLimits`]; actions reject,
//!   strip and silent delete ([`AttachmentAction`]).
//! - [`AvMetrics`]: the Prometheus handles, on an explicit registry.
//!
//! ```no_run
//! use std::sync::Arc;
//! use moat_av::{
//!     AntivirusStage, AvMetrics, AvPolicy, CacheConfig, ClamdAddress, ClamdConfig, EngineLimits,
//!     EngineSet, EngineSpec, Mode, VerdictCache,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = prometheus::Registry::new();
//! let metrics = AvMetrics::new(&registry)?;
//! let clamd = ClamdConfig::new(ClamdAddress::Tcp("127.0.0.1:3310".parse()?)).build()?;
//! let engines = Arc::new(EngineSet::new(
//!     Mode::Failover,
//!     vec![EngineSpec { name: "clamd".into(), engine: Arc::new(clamd), limits: EngineLimits::default() }],
//!     &metrics,
//! )?);
//! let cache = Arc::new(VerdictCache::new(CacheConfig::default()));
//! let stage = AntivirusStage::new(engines, Some(cache), AvPolicy::default(), metrics)?;
//! # let _ = stage; Ok(()) }
//! ```
//!
//! Message content is untrusted: the MIME walk is bounded ([`ScanTargets`]), replies from an
//! engine are length-limited, and signature names are reduced to printable ASCII before they
//! go into an SMTP reply.

mod archive;
mod attach;
mod cache;
mod clamd;
mod engine;
mod error;
mod icap;
mod magic;
mod metrics;
mod set;
mod stage;

pub use archive::{ArchiveFinding, ArchiveLimits, inspect_zip};
pub use attach::{
    AttachmentAction, AttachmentFinding, AttachmentPolicy, AttachmentReport, AttachmentRule,
    AttachmentStage, DEFAULT_BLOCKED_EXTENSIONS, DEFAULT_BLOCKED_TYPES, extensions,
};
pub use cache::{CacheConfig, Digest, VerdictCache, digest};
pub use clamd::{ClamdAddress, ClamdConfig, ClamdEngine};
pub use engine::{AntivirusEngine, HealthFuture, ScanFuture, ScanResult};
pub use error::{AvError, AvErrorKind, Fault};
pub use icap::{IcapConfig, IcapEngine};
pub use magic::{TrueType, sniff};
pub use metrics::AvMetrics;
pub use set::{BreakerState, EngineLimits, EngineSet, EngineSpec, EngineStatus, Mode};
pub use stage::{
    AntivirusStage, AvOutcome, AvPolicy, Detection, OnDetection, OnFailure, OnUnscannable,
    ScanTargets,
};

/// `s` cut to printable ASCII and spaces, at most `max` characters: safe in an SMTP reply
/// line, a header value and a log line (an engine's or a file's words, never its controls).
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}
