use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// The one error type of this crate: building a relay from its configuration.
///
/// Delivery failures are not errors of the relay: they become per-recipient outcomes
/// (delivered, deferred, bounced) recorded in the queue.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The configuration is inconsistent; the operator must fix it. Not retryable.
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// A file named by the configuration could not be read or created.
    #[error("relay i/o failed: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The TLS setup was refused by rustls.
    #[error("tls setup failed: {0}")]
    Tls(String),
    /// Registering metrics failed (a name registered twice on one registry).
    #[error("cannot register relay metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl RelayError {
    /// Every relay error is the operator's to fix: retrying the same configuration fails again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RelayError::Io { .. })
    }
}
