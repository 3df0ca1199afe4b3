use std::future::Future;
use std::pin::Pin;

use crate::AvError;

/// What an engine found in the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScanResult {
    /// Nothing found.
    Clean,
    /// A signature matched; its name as the engine reported it (already made safe to put in
    /// an SMTP reply: printable ASCII, bounded length).
    Infected(String),
    /// The engine worked but could not judge these bytes (for example over its size limit).
    Unscannable(String),
}

impl ScanResult {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScanResult::Clean => "clean",
            ScanResult::Infected(_) => "infected",
            ScanResult::Unscannable(_) => "unscannable",
        }
    }
}

/// The boxed future [`AntivirusEngine::scan`] returns (object-safe async).
pub type ScanFuture<'a> = Pin<Box<dyn Future<Output = Result<ScanResult, AvError>> + Send + 'a>>;

/// The boxed future [`AntivirusEngine::health`] returns: the engine's version on success.
pub type HealthFuture<'a> = Pin<Box<dyn Future<Output = Result<String, AvError>> + Send + 'a>>;

/// A virus scanner reachable from this node.
///
/// An engine does one thing per call and owns only what the protocol needs (addresses,
/// connect timeout). Scan timeouts, concurrency limits, circuit breaking and metrics are
/// applied around it by [`crate::EngineSet`], so every engine gets them the same way.
pub trait AntivirusEngine: Send + Sync {
    /// Short description for logs (for example `clamd tcp 127.0.0.1:3310`).
    fn describe(&self) -> String;

    /// Scans one buffer: a whole message or one decoded MIME part.
    fn scan<'a>(&'a self, data: &'a [u8]) -> ScanFuture<'a>;

    /// Asks the engine whether it is alive; returns its version string.
    fn health(&self) -> HealthFuture<'_>;
}
