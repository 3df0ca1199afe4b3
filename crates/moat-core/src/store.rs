use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::{Envelope, SessionInfo};

/// The identifier a store gives an accepted message; sent in `250 2.0.0 Ok: queued as ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub String);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message could not be made durable. Always a temporary failure for the client
/// (451 4.3.0): nothing was acknowledged, so the client keeps the message and retries.
#[derive(Debug)]
pub struct StoreError {
    /// What went wrong, for the log (never sent to the client).
    pub reason: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot store message: {}", self.reason)
    }
}

impl std::error::Error for StoreError {}

/// The boxed future [`MessageStore::store`] returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<QueueId, StoreError>> + Send + 'a>>;

/// Where the SMTP front end hands an accepted message.
///
/// Contract: when the future resolves `Ok`, the message and its envelope are durable (on disk
/// and fsynced, directory entry included); only then may the session answer 250.
pub trait MessageStore: Send + Sync {
    /// Makes `message` (with the `Received:` header already prepended) durable.
    fn store<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a>;

    /// Makes `message` durable in quarantine: kept and never delivered until an operator
    /// releases it. Same durability contract as [`MessageStore::store`]; the held state must
    /// be part of the same write, so a crash can never turn a quarantined message into a
    /// delivered one. Stores that cannot hold messages refuse, and the client gets a
    /// temporary failure.
    fn quarantine<'a>(
        &'a self,
        _session: &'a SessionInfo,
        _env: &'a Envelope,
        _message: &'a [u8],
    ) -> StoreFuture<'a> {
        Box::pin(async {
            Err(StoreError {
                reason: "this store cannot quarantine messages".into(),
            })
        })
    }
}
