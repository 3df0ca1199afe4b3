//! Moat's durable queue: every message answered with `250` stays here until each of its
//! recipients is delivered or bounced, whatever crashes happen in between.
//!
//! # Invariants (the full specification is in `DESIGN.md`)
//!
//! 1. **Durable before 250.** [`Queue`] implements [`moat_core::MessageStore`]; its future
//!    resolves `Ok` only once the record holding the envelope and the whole message has been
//!    written and `fdatasync`ed, in a segment whose directory entry is already durable.
//! 2. **Group commit.** One committer thread appends every waiting request with one write and
//!    one fsync, so concurrent sessions share fsyncs; each caller still waits for its own data.
//! 3. **Logged before acted on.** Delivery results, holds and deletes are appended (and fsynced)
//!    before memory changes. A DSN is committed together with the bounce that caused it.
//! 4. **Deleted only when final.** A message's records become dead only once every recipient
//!    is delivered or bounced (or an operator deleted it); segments are removed head first,
//!    only when no live message is stored in them, after copying live messages forward.
//! 5. **Corruption is moved aside, never dropped silently, never blocking.** Every record has
//!    a payload CRC-32C and a header CRC-32C bound to its segment and offset. At open, bad
//!    records (truncated, bad checksum, malformed) are logged, counted, listed in the
//!    [`RecoveryReport`]; the scan goes on at the next valid record, and the segments that held
//!    them are moved into `corrupt/` beside a text report once their good messages are copied.
//! 6. **Restart resumes.** Opening a spool schedules every unfinished recipient at its recorded
//!    next-attempt time.
//!
//! # Main types
//!
//! - [`Queue`]: open a spool, [`enqueue`](Queue::enqueue) (or [`moat_core::MessageStore::store`]), take
//!   due messages with [`next_job`](Queue::next_job), record results with
//!   [`complete`](Queue::complete); admin calls [`list`](Queue::list), [`show`](Queue::show),
//!   [`retry`](Queue::retry), [`hold`](Queue::hold), [`release`](Queue::release),
//!   [`delete`](Queue::delete), [`stats`](Queue::stats).
//! - [`QueueConfig`] and [`RetryPolicy`] (Postfix-like defaults).
//! - [`QueueMetrics`]: Prometheus handles on an explicit registry.
//!
//! # Example
//!
//! ```
//! use moat_core::Envelope;
//! use moat_queue::{Outcome, Queue, QueueConfig, QueueMetrics, RcptOutcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let metrics = QueueMetrics::new(&prometheus::Registry::new())?;
//! let (queue, report) = Queue::open(QueueConfig::new(dir.path()), metrics)?;
//! assert!(report.corrupt.is_empty());
//!
//! let env = Envelope {
//!     mail_from: "alice@example.org".into(),
//!     rcpt_to: vec!["bob@example.net".into()],
//!     ..Envelope::default()
//! };
//! let id = queue.enqueue("192.0.2.7", &env, b"Subject: hi\r\n\r\nhello\r\n").await?;
//!
//! // The relay's side: take the due message, deliver it, record the result.
//! let job = queue.next_job().await;
//! assert_eq!(job.id(), &id);
//! let body = queue.read_message(&job)?;
//! assert!(body.starts_with(b"Subject: hi"));
//! let outcome = RcptOutcome { rcpt: 0, outcome: Outcome::Delivered("250 2.0.0 ok".into()) };
//! let done = queue.complete(job, &[outcome], |_| None).await?;
//! assert_eq!(done.delivered, 1);
//! assert_eq!(queue.stats().messages, 0);
//! queue.close().await;
//! # Ok(())
//! # }
//! ```

mod error;
mod metrics;
mod queue;
mod record;
mod spool;

use std::path::PathBuf;
use std::time::Duration;

pub use error::{Fault, QueueError};
pub use metrics::QueueMetrics;
pub use moat_core::QueueId;
pub use queue::{
    Bounce, Completed, Dsn, Job, MessageDetail, MessageState, MessageSummary, Outcome, Queue,
    QueueStats, RcptOutcome,
};
pub use record::RcptStatus;

/// When to try again after a temporary failure, and when to give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure (Postfix `minimal_backoff_time`, 300 s).
    pub min_backoff: Duration,
    /// Longest delay between attempts (Postfix `maximal_backoff_time`, 4000 s).
    pub max_backoff: Duration,
    /// A message older than this is bounced on its next temporary failure (Postfix
    /// `maximal_queue_lifetime`, 5 days).
    pub max_lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4000),
            max_lifetime: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failure: `min_backoff` doubled for each earlier
    /// failure, capped at `max_backoff`.
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// Where and how the spool lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The spool directory (created if missing).
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it would grow past this (16 MiB).
    pub segment_size: u64,
    /// A sealed head segment that still holds live messages is compacted after this long
    /// (1 hour); a mostly dead one at once.
    pub compact_after: Duration,
    /// Retries and lifetime.
    pub retry: RetryPolicy,
}

impl QueueConfig {
    /// Defaults for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 16 << 20,
            compact_after: Duration::from_secs(3600),
            retry: RetryPolicy::default(),
        }
    }
}

/// What kind of damage a record had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CorruptKind {
    /// The file ends inside the record (a torn tail, or a truncated file).
    Truncated,
    /// A checksum does not match.
    Checksum,
    /// The checksums hold but the contents cannot be decoded.
    Malformed,
    /// The whole segment could not be opened or read (an i/o error).
    Unreadable,
}

impl CorruptKind {
    /// Lower-case name, used as the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CorruptKind::Truncated => "truncated",
            CorruptKind::Checksum => "checksum",
            CorruptKind::Malformed => "malformed",
            CorruptKind::Unreadable => "unreadable",
        }
    }
}

/// One unreadable record found when the spool was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
    /// What was wrong.
    pub kind: CorruptKind,
    /// The message id, when the damaged record still shows it.
    pub message: Option<String>,
}

/// What opening a spool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: usize,
    /// Valid records replayed.
    pub records: usize,
    /// Messages with work left, now scheduled.
    pub messages: usize,
    /// Unreadable records; their segments were moved into `corrupt/`.
    pub corrupt: Vec<CorruptRecord>,
}

/// The text form of a queue id: 16 upper-case hex digits.
pub(crate) fn format_id(id: u64) -> String {
    format!("{id:016X}")
}

pub(crate) fn parse_id(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 4000, 4000]);
        assert_eq!(p.delay(u32::MAX).as_secs(), 4000);
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_id(&format_id(0xABCDEF)), Some(0xABCDEF));
        for bad in ["", "XYZ", "0123456789ABCDEF0", "+123456789ABCDEF"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
