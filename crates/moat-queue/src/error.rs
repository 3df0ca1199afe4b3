use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Whose fault an error is, which decides what the caller should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller asked for something that does not exist or is not allowed (admin calls).
    Caller,
    /// This host: the disk, the file system, the spool directory.
    Local,
}

/// The one error type of this crate.
#[derive(Debug, Error)]
pub enum QueueError {
    /// A file operation on the spool failed.
    #[error("spool i/o failed: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the spool's lock.
    #[error("spool {0} is locked by another process")]
    Locked(PathBuf),
    /// No message with this id is in the queue.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// A message without recipients cannot be queued.
    #[error("message has no recipients")]
    NoRecipients,
    /// A message too large for one record (4 GiB).
    #[error("message of {0} bytes is too large for the spool")]
    TooLarge(usize),
    /// The committer has stopped (after a failed write, or at shutdown).
    #[error("the queue is closed")]
    Closed,
    /// A stored record failed its checksum when read back for delivery.
    #[error("stored message {0} failed its checksum when read back")]
    Corrupt(String),
}

impl QueueError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        QueueError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            QueueError::NotFound(_) | QueueError::NoRecipients | QueueError::TooLarge(_) => {
                Fault::Caller
            }
            _ => Fault::Local,
        }
    }

    /// Whether trying the same thing again later may succeed. A message that could not be
    /// stored is always refused with a 4xx, so the client keeps it and retries.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QueueError::Io { .. } | QueueError::Locked(_) | QueueError::Closed
        )
    }
}
