use std::fmt;
use std::path::Path;

/// What went wrong, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A list file could not be read.
    Io,
    /// A list entry (inline or in a file) is not valid.
    Syntax,
    /// The configuration is inconsistent (a zero limit, a zero window).
    Config,
    /// The rate store could not answer (full, unreachable, timed out).
    RateStore,
    /// Registering metrics failed (a name registered twice on one registry).
    Metrics,
}

impl ErrorKind {
    /// Lower-case name, usable in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Config => "config",
            ErrorKind::RateStore => "rate-store",
            ErrorKind::Metrics => "metrics",
        }
    }
}

/// Whose fault an error is, and so whether retrying may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The operator's: a file or the configuration must change. Retrying does not help.
    Operator,
    /// A backing service's (the rate store): a later attempt may succeed.
    Backend,
    /// Ours: the wiring is wrong (metrics registered twice).
    Internal,
}

/// The one error type of this crate.
///
/// List errors name their source (a file path, or `inline` for entries given in the
/// configuration) and the 1-based line, so an operator can go straight to the bad entry.
#[derive(Debug)]
pub struct PolicyError {
    kind: ErrorKind,
    source_name: Option<String>,
    line: Option<usize>,
    message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source_name, self.line) {
            (Some(src), Some(line)) => write!(f, "{src}:{line}: {}", self.message),
            (Some(src), None) => write!(f, "{src}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            source_name: None,
            line: None,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, err: &std::io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            source_name: Some(path.display().to_string()),
            line: None,
            message: format!("cannot read list file: {err}"),
        }
    }

    pub(crate) fn syntax(source_name: &str, line: usize, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Syntax,
            source_name: Some(source_name.to_owned()),
            line: Some(line),
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn metrics(err: prometheus::Error) -> Self {
        Self::new(
            ErrorKind::Metrics,
            format!("cannot register metrics: {err}"),
        )
    }

    /// A rate store failure, for [`crate::RateStore`] backends outside this crate (a Redis
    /// store maps timeouts and connection errors here). Transient: the stage fails open.
    pub fn rate_store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateStore, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self.kind {
            ErrorKind::Io | ErrorKind::Syntax | ErrorKind::Config => Fault::Operator,
            ErrorKind::RateStore => Fault::Backend,
            ErrorKind::Metrics => Fault::Internal,
        }
    }

    /// Whether a later attempt may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        self.fault() == Fault::Backend
    }

    /// The file (or `inline`) the error is about, if any.
    pub fn source_name(&self) -> Option<&str> {
        self.source_name.as_deref()
    }

    /// The 1-based line of the bad entry, if any.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

/// Reads a list file, mapping failure to an error naming the file.
pub(crate) fn read_list_file(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, &e))
}

/// The name used in errors for a list file.
pub(crate) fn file_name(path: &Path) -> String {
    path.display().to_string()
}

/// Entries of a list text: `(1-based line, entry)`, comments (`#` to end of line) and blank
/// lines skipped, surrounding white space trimmed.
pub(crate) fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let entry = line.split('#').next().unwrap_or("").trim();
        (!entry.is_empty()).then_some((i + 1, entry))
    })
}

/// What a `reload()` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// A new snapshot was built and swapped in.
    Applied,
    /// The sources gave the same snapshot as the current one; nothing was swapped.
    Unchanged,
}

impl ReloadOutcome {
    /// Lower-case name, used as the `result` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Unchanged => "unchanged",
        }
    }
}
