use std::fmt;
use std::io;

use thiserror::Error;

/// What went wrong, as a closed set (also the `result` label of failed scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AvErrorKind {
    /// The configuration is inconsistent (no engines, a zero limit, a bad address).
    Config,
    /// The engine could not be reached (refused, no such socket, connect timed out).
    Connect,
    /// The connection broke while a scan was in flight.
    Io,
    /// The engine did not answer within the scan timeout.
    Timeout,
    /// The engine answered something this client does not understand.
    Protocol,
    /// The engine answered with an error of its own (for example out of memory).
    Engine,
    /// The engine's circuit breaker is open: the engine was not asked.
    CircuitOpen,
    /// Every permit of the engine's concurrency limit stayed taken for the whole timeout.
    Overloaded,
    /// Registering metrics failed (a name registered twice on one registry).
    Metrics,
}

impl AvErrorKind {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AvErrorKind::Config => "config",
            AvErrorKind::Connect => "connect",
            AvErrorKind::Io => "io",
            AvErrorKind::Timeout => "timeout",
            AvErrorKind::Protocol => "protocol",
            AvErrorKind::Engine => "engine",
            AvErrorKind::CircuitOpen => "circuit-open",
            AvErrorKind::Overloaded => "overloaded",
            AvErrorKind::Metrics => "metrics",
        }
    }
}

impl fmt::Display for AvErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The operator's: the configuration must change.
    Operator,
    /// The scanning engine's (down, slow, confused): a later attempt may succeed.
    Engine,
    /// Ours: this node is saturated or its wiring is wrong.
    Internal,
}

/// The one error type of this crate.
///
/// A scan that completes is never an error, whatever it found: [`crate::ScanResult`] carries
/// clean, infected and unscannable. An error means the engine could not give an answer.
#[derive(Debug, Error)]
#[error("{}", self.render())]
pub struct AvError {
    kind: AvErrorKind,
    detail: String,
    #[source]
    source: Option<io::Error>,
}

impl AvError {
    pub(crate) fn new(kind: AvErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    pub(crate) fn io(kind: AvErrorKind, detail: impl Into<String>, source: io::Error) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: Some(source),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> AvErrorKind {
        self.kind
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self.kind {
            AvErrorKind::Config | AvErrorKind::Metrics => Fault::Operator,
            AvErrorKind::Overloaded => Fault::Internal,
            AvErrorKind::Connect
            | AvErrorKind::Io
            | AvErrorKind::Timeout
            | AvErrorKind::Protocol
            | AvErrorKind::Engine
            | AvErrorKind::CircuitOpen => Fault::Engine,
        }
    }

    /// Whether the same scan may succeed later (so an SMTP client should be told 4xx).
    pub fn is_retryable(&self) -> bool {
        !matches!(self.kind, AvErrorKind::Config | AvErrorKind::Metrics)
    }

    /// Whether this failure says something about the engine's health (and so counts towards
    /// its circuit breaker). Overload is ours and an open circuit is already counted.
    pub(crate) fn counts_against_engine(&self) -> bool {
        matches!(
            self.kind,
            AvErrorKind::Connect
                | AvErrorKind::Io
                | AvErrorKind::Timeout
                | AvErrorKind::Protocol
                | AvErrorKind::Engine
        )
    }

    fn render(&self) -> String {
        match &self.source {
            Some(e) => format!("antivirus {}: {}: {e}", self.kind, self.detail),
            None => format!("antivirus {}: {}", self.kind, self.detail),
        }
    }
}

impl From<prometheus::Error> for AvError {
    fn from(e: prometheus::Error) -> Self {
        AvError::new(
            AvErrorKind::Metrics,
            format!("cannot register metrics: {e}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases = [
            (AvErrorKind::Config, Fault::Operator, false, false),
            (AvErrorKind::Connect, Fault::Engine, true, true),
            (AvErrorKind::Timeout, Fault::Engine, true, true),
            (AvErrorKind::CircuitOpen, Fault::Engine, true, false),
            (AvErrorKind::Overloaded, Fault::Internal, true, false),
            (AvErrorKind::Metrics, Fault::Operator, false, false),
        ];
        for (kind, fault, retry, counts) in cases {
            let e = AvError::new(kind, "x");
            assert_eq!(e.fault(), fault, "{kind}");
            assert_eq!(e.is_retryable(), retry, "{kind}");
            assert_eq!(e.counts_against_engine(), counts, "{kind}");
        }
        let e = AvError::io(
            AvErrorKind::Connect,
            "127.0.0.1:1",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert!(
            e.to_string()
                .starts_with("antivirus connect: 127.0.0.1:1: ")
        );
    }
}
