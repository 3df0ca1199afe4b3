//! The public handle: store, schedule, complete, administer.

use std::fs::{File, OpenOptions};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use moat_core::{Envelope, MessageStore, QueueId, SessionInfo, StoreError, StoreFuture};
use tokio::sync::oneshot;

use crate::record::{self, MessageMeta, RcptStatus};
use crate::spool::{self, Committer, Pending, Request, Shared, State};
use crate::{QueueConfig, QueueError, QueueMetrics, RecoveryReport, format_id, parse_id};

pub(crate) enum Msg {
    Append(Request),
    Stop(oneshot::Sender<()>),
}

/// A handle on an open spool. Cheap to clone; every clone talks to the same committer.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

/// How a message stands, for `list` and the `moat_queue_messages{state}` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Accepted, not attempted yet.
    Pending,
    /// At least one temporary failure; waiting for its next attempt.
    Deferred,
    /// A delivery is under way.
    Active,
    /// Held by an operator: not delivered until released.
    Held,
}

impl MessageState {
    /// Lower-case name, used in metric labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Deferred => "deferred",
            MessageState::Active => "active",
            MessageState::Held => "held",
        }
    }
}

/// One line of `moat queue list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// The queue id.
    pub id: QueueId,
    /// When it was accepted.
    pub received: SystemTime,
    /// Size of the stored message in bytes.
    pub size: usize,
    /// Envelope sender (empty for `<>`).
    pub mail_from: String,
    /// Recipients without a final status.
    pub rcpts_pending: usize,
    /// All recipients.
    pub rcpts_total: usize,
    /// Its state.
    pub state: MessageState,
    /// When the next attempt is due, unless held or active.
    pub next_attempt: Option<SystemTime>,
}

/// `moat queue show ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDetail {
    /// The summary line.
    pub summary: MessageSummary,
    /// Where it came from (the client's address, or `dsn` for a bounce Moat generated).
    pub origin: String,
    /// Every recipient with its status.
    pub rcpts: Vec<(String, RcptStatus)>,
}

/// `moat queue stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the queue.
    pub messages: usize,
    /// …of which not attempted yet.
    pub pending: usize,
    /// …of which deferred.
    pub deferred: usize,
    /// …of which being delivered.
    pub active: usize,
    /// …of which held.
    pub held: usize,
    /// Recipients without a final status.
    pub rcpts_pending: usize,
    /// Age of the oldest message.
    pub oldest_age: Option<Duration>,
    /// Bytes of segment files.
    pub spool_bytes: u64,
    /// Segment files.
    pub segments: usize,
}

/// What a delivery attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: accepted by the next hop.
    Delivered(String),
    /// 4xx or a connection problem: try again later.
    Transient(String),
    /// 5xx: refused for good; bounce.
    Permanent(String),
}

/// One recipient's result, by its index in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Index of the recipient (as in [`Job::rcpts`]).
    pub rcpt: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// Recipients that just became bounced, handed to the DSN builder of [`Queue::complete`].
#[derive(Debug, Clone)]
pub struct Bounce<'a> {
    /// The original message's id.
    pub id: QueueId,
    /// The original envelope sender, never empty here.
    pub mail_from: &'a str,
    /// When the original was accepted.
    pub received: SystemTime,
    /// (recipient, reply or reason, expired rather than refused).
    pub rcpts: Vec<(String, String, bool)>,
}

/// A DSN to queue along with the bounce that caused it: recipients and the whole message.
/// Its envelope sender is always `<>`.
#[derive(Debug, Clone)]
pub struct Dsn {
    /// Where the DSN goes: the original envelope sender.
    pub rcpt_to: String,
    /// The RFC 3464 message.
    pub message: Vec<u8>,
}

/// What [`Queue::complete`] recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// Recipients delivered.
    pub delivered: usize,
    /// Recipients deferred.
    pub deferred: usize,
    /// Recipients bounced.
    pub bounced: usize,
    /// The DSN queued, if any.
    pub dsn: Option<QueueId>,
}

/// A message taken for delivery. Give it back with [`Queue::complete`]; if it is dropped
/// instead, the message is due again a few seconds later.
pub struct Job {
    shared: Arc<Shared>,
    id: u64,
    qid: QueueId,
    mail_from: String,
    rcpts: Vec<(u32, String)>,
    received: SystemTime,
    attempts: u32,
    eight_bit: bool,
    smtputf8: bool,
    done: bool,
}

/// How long a message taken by a job that was dropped (or whose result could not be
/// recorded) waits before it is due again.
const DROPPED_JOB_DELAY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.qid)
            .field("rcpts", &self.rcpts)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// The queue id.
    pub fn id(&self) -> &QueueId {
        &self.qid
    }
    /// Envelope sender (empty for `<>`).
    pub fn mail_from(&self) -> &str {
        &self.mail_from
    }
    /// The recipients due now, each with its index in the message.
    pub fn rcpts(&self) -> &[(u32, String)] {
        &self.rcpts
    }
    /// When the message was accepted.
    pub fn received(&self) -> SystemTime {
        self.received
    }
    /// The most failed attempts of any recipient in this job.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// The client declared `BODY=8BITMIME`.
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }
    /// The client declared `SMTPUTF8`.
    pub fn smtputf8(&self) -> bool {
        self.smtputf8
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.shared.lock();
        if let Some(e) = st.msgs.get_mut(&self.id) {
            e.in_flight = false;
            e.hold_off = Some(SystemTime::now() + DROPPED_JOB_DELAY);
        }
        st.reschedule(self.id);
        drop(st);
        self.shared.due.notify_waiters();
    }
}

pub(crate) fn stats_of(st: &State) -> QueueStats {
    let now = SystemTime::now();
    let mut s = QueueStats {
        messages: st.msgs.len(),
        segments: st.segs.len(),
        spool_bytes: st.segs.values().map(|s| s.size).sum(),
        ..QueueStats::default()
    };
    let mut oldest: Option<SystemTime> = None;
    for e in st.msgs.values() {
        match state_of(e) {
            MessageState::Pending => s.pending += 1,
            MessageState::Deferred => s.deferred += 1,
            MessageState::Active => s.active += 1,
            MessageState::Held => s.held += 1,
        }
        s.rcpts_pending += e.meta.rcpts.iter().filter(|r| !r.1.is_final()).count();
        oldest = Some(oldest.map_or(e.meta.received, |o| o.min(e.meta.received)));
    }
    s.oldest_age = oldest.map(|o| now.duration_since(o).unwrap_or_default());
    s
}

fn state_of(e: &spool::Entry) -> MessageState {
    if e.meta.held {
        MessageState::Held
    } else if e.in_flight {
        MessageState::Active
    } else if e.meta.rcpts.iter().any(|r| r.1.attempts() > 0) {
        MessageState::Deferred
    } else {
        MessageState::Pending
    }
}

fn summary_of(id: u64, e: &spool::Entry) -> MessageSummary {
    MessageSummary {
        id: QueueId(format_id(id)),
        received: e.meta.received,
        size: e.loc.body_len as usize,
        mail_from: e.meta.mail_from.clone(),
        rcpts_pending: e.meta.rcpts.iter().filter(|r| !r.1.is_final()).count(),
        rcpts_total: e.meta.rcpts.len(),
        state: state_of(e),
        next_attempt: e.due,
    }
}

impl Queue {
    /// Opens the spool in `config.dir` (creating it if needed), recovers every message in it
    /// and starts the committer thread. Blocking: call it before serving, or from a blocking
    /// task. The report lists what recovery found; corrupt records are also logged and counted.
    pub fn open(
        config: QueueConfig,
        metrics: QueueMetrics,
    ) -> Result<(Queue, RecoveryReport), QueueError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| QueueError::io("create directory", &config.dir, e))?;
        let lock_path = config.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| QueueError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(QueueError::Locked(config.dir.clone()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(QueueError::io("lock spool", &lock_path, e));
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            due: tokio::sync::Notify::new(),
            next_id: std::sync::atomic::AtomicU64::new(0),
            metrics,
            config,
        });
        let (committer, report) = Committer::open(shared.clone())?;
        tracing::info!(
            dir = %shared.config.dir.display(),
            segments = report.segments,
            records = report.records,
            messages = report.messages,
            corrupt = report.corrupt.len(),
            "queue opened"
        );
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("moat-queue-commit".into())
            .spawn(move || run_committer(committer, rx, lock))
            .map_err(|e| QueueError::io("spawn committer", &shared.config.dir, e))?;
        Ok((
            Queue {
                shared,
                tx,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            report,
        ))
    }

    async fn submit(&self, records: Vec<Pending>) -> Result<(), QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Request { records, reply }))
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Makes a message durable and schedules it. Resolves once the record is fsynced.
    pub async fn enqueue(
        &self,
        origin: &str,
        env: &Envelope,
        message: &[u8],
    ) -> Result<QueueId, QueueError> {
        self.enqueue_as(origin, env, message, false).await
    }

    /// Makes a message durable already held (quarantine): the held flag is in the same
    /// record, so no crash can release it. It waits for [`Queue::release`] or
    /// [`Queue::delete`].
    pub async fn enqueue_held(
        &self,
        origin: &str,
        env: &Envelope,
        message: &[u8],
    ) -> Result<QueueId, QueueError> {
        self.enqueue_as(origin, env, message, true).await
    }

    async fn enqueue_as(
        &self,
        origin: &str,
        env: &Envelope,
        message: &[u8],
        held: bool,
    ) -> Result<QueueId, QueueError> {
        if env.rcpt_to.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        if message.len() > (u32::MAX as usize) - 64 * 1024 {
            return Err(QueueError::TooLarge(message.len()));
        }
        let id = self.shared.new_id();
        let meta = MessageMeta {
            id,
            received: record::now(),
            origin: origin.to_owned(),
            mail_from: env.mail_from.clone(),
            rcpts: env
                .rcpt_to
                .iter()
                .map(|r| (r.clone(), RcptStatus::Pending))
                .collect(),
            held,
            eight_bit: env.eight_bit,
            smtputf8: env.smtputf8,
        };
        let (payload, _) = record::encode_message(&meta, message);
        self.submit(vec![Pending::new(payload)]).await?;
        let qid = QueueId(format_id(id));
        tracing::info!(
            queue_id = %qid,
            from = %env.mail_from,
            rcpts = env.rcpt_to.len(),
            size = message.len(),
            held,
            "message queued"
        );
        Ok(qid)
    }

    /// Waits for the next message that is due and takes it for delivery.
    pub async fn next_job(&self) -> Job {
        loop {
            let notified = self.shared.due.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.take_due() {
                Ok(job) => return job,
                Err(wait) => wait,
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            }
        }
    }

    /// Takes the next message that is due now, if any.
    pub fn try_next_job(&self) -> Option<Job> {
        self.take_due().ok()
    }

    /// The job due now, or how long until the next one is due.
    fn take_due(&self) -> Result<Job, Duration> {
        let mut st = self.shared.lock();
        let now = SystemTime::now();
        while let Some((due, id)) = st.schedule.first().copied() {
            if due > now {
                return Err(due.duration_since(now).unwrap_or_default());
            }
            st.schedule.remove(&(due, id));
            let Some(e) = st.msgs.get_mut(&id) else {
                continue;
            };
            e.due = None;
            e.in_flight = true;
            e.hold_off = None;
            let received = e.meta.received;
            let rcpts: Vec<(u32, String)> = e
                .meta
                .rcpts
                .iter()
                .enumerate()
                .filter(|(_, (_, s))| s.due(received).is_some_and(|d| d <= now))
                .map(|(i, (a, _))| (i as u32, a.clone()))
                .collect();
            let attempts = e.meta.rcpts.iter().map(|r| r.1.attempts()).max();
            return Ok(Job {
                shared: self.shared.clone(),
                id,
                qid: QueueId(format_id(id)),
                mail_from: e.meta.mail_from.clone(),
                rcpts,
                received,
                attempts: attempts.unwrap_or(0),
                eight_bit: e.meta.eight_bit,
                smtputf8: e.meta.smtputf8,
                done: false,
            });
        }
        Err(Duration::from_secs(60))
    }

    /// Reads the stored message of a job back, verifying its checksum.
    pub fn read_message(&self, job: &Job) -> Result<Vec<u8>, QueueError> {
        self.read_by_id(job.id)
    }

    fn read_by_id(&self, id: u64) -> Result<Vec<u8>, QueueError> {
        let (file, loc) = {
            let st = self.shared.lock();
            let e = st
                .msgs
                .get(&id)
                .ok_or_else(|| QueueError::NotFound(format_id(id)))?;
            let file = st
                .segs
                .get(&e.loc.seg)
                .map(|s| s.file.clone())
                .ok_or_else(|| QueueError::NotFound(format_id(id)))?;
            (file, e.loc)
        };
        spool::read_body(&file, &loc).map_err(|e| match e {
            QueueError::Corrupt(_) => QueueError::Corrupt(format_id(id)),
            e => e,
        })
    }

    /// Records the results of a delivery attempt, durably, and reschedules what is left.
    ///
    /// Temporary failures are deferred by the retry policy, or bounced once the message is
    /// older than the maximum lifetime. When recipients are bounced and the sender is not
    /// `<>`, `dsn` is called to build the notification, which is queued in the same commit
    /// as the bounces. Recipients of the job without an outcome count as temporary failures.
    pub async fn complete<F>(
        &self,
        mut job: Job,
        outcomes: &[RcptOutcome],
        dsn: F,
    ) -> Result<Completed, QueueError>
    where
        F: FnOnce(&Bounce<'_>) -> Option<Dsn>,
    {
        let now = record::now();
        let policy = &self.shared.config.retry;
        let expired = now
            .duration_since(job.received)
            .is_ok_and(|age| age >= policy.max_lifetime);
        let mut done = Completed::default();
        let mut statuses = Vec::with_capacity(job.rcpts.len());
        let mut bounce = Bounce {
            id: job.qid.clone(),
            mail_from: &job.mail_from,
            received: job.received,
            rcpts: Vec::new(),
        };
        {
            let st = self.shared.lock();
            let Some(e) = st.msgs.get(&job.id) else {
                // Deleted by an operator while it was being delivered.
                job.done = true;
                return Ok(done);
            };
            for (idx, addr) in &job.rcpts {
                let outcome = outcomes
                    .iter()
                    .find(|o| o.rcpt == *idx)
                    .map(|o| o.outcome.clone())
                    .unwrap_or_else(|| Outcome::Transient("4.4.0 no result".into()));
                let prior = e
                    .meta
                    .rcpts
                    .get(*idx as usize)
                    .map_or(0, |r| r.1.attempts());
                let status = match outcome {
                    Outcome::Delivered(reply) => {
                        done.delivered += 1;
                        RcptStatus::Delivered { at: now, reply }
                    }
                    Outcome::Permanent(reply) => {
                        done.bounced += 1;
                        bounce.rcpts.push((addr.clone(), reply.clone(), false));
                        RcptStatus::Bounced { at: now, reply }
                    }
                    Outcome::Transient(reply) if expired => {
                        done.bounced += 1;
                        let reply = format!("delivery time expired; last error: {reply}");
                        bounce.rcpts.push((addr.clone(), reply.clone(), true));
                        RcptStatus::Bounced { at: now, reply }
                    }
                    Outcome::Transient(reply) => {
                        done.deferred += 1;
                        let attempts = prior.saturating_add(1);
                        RcptStatus::Deferred {
                            attempts,
                            next_attempt: record::from_ms(record::to_ms(
                                now + policy.delay(attempts),
                            )),
                            reply,
                        }
                    }
                };
                statuses.push((*idx, status));
            }
        }
        let mut records = Vec::with_capacity(statuses.len() + 1);
        if !bounce.rcpts.is_empty() && !job.mail_from.is_empty() {
            if let Some(d) = dsn(&bounce) {
                let dsn_id = self.shared.new_id();
                let meta = MessageMeta {
                    id: dsn_id,
                    received: now,
                    origin: "dsn".into(),
                    mail_from: String::new(),
                    rcpts: vec![(d.rcpt_to, RcptStatus::Pending)],
                    held: false,
                    eight_bit: true,
                    smtputf8: false,
                };
                records.push(Pending::new(record::encode_message(&meta, &d.message).0));
                done.dsn = Some(QueueId(format_id(dsn_id)));
            }
        } else if !bounce.rcpts.is_empty() {
            tracing::info!(queue_id = %job.qid, "bounce from the null sender: no DSN");
        }
        for (idx, status) in &statuses {
            records.push(Pending::new(record::encode_status(job.id, *idx, status)));
        }
        self.submit(records).await?;
        if done.dsn.is_some() {
            self.shared.metrics.dsns.inc();
        }
        {
            let mut st = self.shared.lock();
            if let Some(e) = st.msgs.get_mut(&job.id) {
                e.in_flight = false;
            }
            st.reschedule(job.id);
        }
        job.done = true;
        self.shared.due.notify_waiters();
        tracing::debug!(
            queue_id = %job.qid,
            delivered = done.delivered,
            deferred = done.deferred,
            bounced = done.bounced,
            "delivery attempt recorded"
        );
        Ok(done)
    }

    fn lookup(&self, id: &QueueId) -> Result<u64, QueueError> {
        let n = parse_id(&id.0).ok_or_else(|| QueueError::NotFound(id.0.clone()))?;
        if self.shared.lock().msgs.contains_key(&n) {
            Ok(n)
        } else {
            Err(QueueError::NotFound(id.0.clone()))
        }
    }

    /// Every message in the queue, oldest first.
    pub fn list(&self) -> Vec<MessageSummary> {
        let st = self.shared.lock();
        let mut v: Vec<_> = st.msgs.iter().map(|(id, e)| summary_of(*id, e)).collect();
        drop(st);
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// One message's envelope and per-recipient status.
    pub fn show(&self, id: &QueueId) -> Result<MessageDetail, QueueError> {
        let n = self.lookup(id)?;
        let st = self.shared.lock();
        let e = st
            .msgs
            .get(&n)
            .ok_or_else(|| QueueError::NotFound(id.0.clone()))?;
        Ok(MessageDetail {
            summary: summary_of(n, e),
            origin: e.meta.origin.clone(),
            rcpts: e.meta.rcpts.clone(),
        })
    }

    /// The stored bytes of a message.
    pub fn message(&self, id: &QueueId) -> Result<Vec<u8>, QueueError> {
        let n = self.lookup(id)?;
        self.read_by_id(n)
    }

    /// Makes every waiting recipient of a message due now (not logged: after a restart the
    /// recorded schedule applies again).
    pub fn retry(&self, id: &QueueId) -> Result<(), QueueError> {
        let n = self.lookup(id)?;
        let mut st = self.shared.lock();
        if let Some(e) = st.msgs.get_mut(&n) {
            let now = record::now();
            e.hold_off = None;
            for (_, s) in &mut e.meta.rcpts {
                if let RcptStatus::Deferred { next_attempt, .. } = s {
                    *next_attempt = now;
                }
            }
        }
        st.reschedule(n);
        drop(st);
        self.shared.due.notify_waiters();
        Ok(())
    }

    /// Makes every deferred message due now (memory only), for example when a next hop
    /// that was down answers again. Returns how many messages were rescheduled.
    pub fn retry_deferred(&self) -> usize {
        let mut st = self.shared.lock();
        let now = record::now();
        let ids: Vec<u64> = st
            .msgs
            .iter()
            .filter(|(_, e)| !e.meta.held && e.meta.rcpts.iter().any(|r| r.1.attempts() > 0))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(e) = st.msgs.get_mut(id) {
                for (_, s) in &mut e.meta.rcpts {
                    if let RcptStatus::Deferred { next_attempt, .. } = s {
                        *next_attempt = now;
                    }
                }
            }
            st.reschedule(*id);
        }
        drop(st);
        self.shared.due.notify_waiters();
        ids.len()
    }

    /// Holds a message: it is not delivered until released. Durable when it resolves.
    pub async fn hold(&self, id: &QueueId) -> Result<(), QueueError> {
        let n = self.lookup(id)?;
        self.submit(vec![Pending::new(record::encode_hold(n, true))])
            .await?;
        tracing::info!(queue_id = %id, "message held");
        Ok(())
    }

    /// Releases a held message and makes it due now.
    pub async fn release(&self, id: &QueueId) -> Result<(), QueueError> {
        let n = self.lookup(id)?;
        self.submit(vec![Pending::new(record::encode_hold(n, false))])
            .await?;
        tracing::info!(queue_id = %id, "message released");
        self.retry(id)
    }

    /// Deletes a message without delivering it and without a DSN. Durable when it resolves.
    pub async fn delete(&self, id: &QueueId) -> Result<(), QueueError> {
        let n = self.lookup(id)?;
        self.submit(vec![Pending::new(record::encode_delete(n))])
            .await?;
        tracing::info!(queue_id = %id, "message deleted by operator");
        Ok(())
    }

    /// Counts for `moat queue stats` (the gauges show the same numbers).
    pub fn stats(&self) -> QueueStats {
        stats_of(&self.shared.lock())
    }

    /// Stops the committer after the requests already sent, and releases the spool lock.
    /// Other clones of this handle get [`QueueError::Closed`] afterwards.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn run_committer(committer: Committer, rx: mpsc::Receiver<Msg>, lock: File) {
    let stop = committer.run(rx);
    drop(lock);
    if let Some(ack) = stop {
        let _ = ack.send(());
    }
}

impl Queue {
    /// The [`MessageStore`] calls: enqueue (held or not) and map the error for the session.
    fn store_as<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
        held: bool,
    ) -> StoreFuture<'a> {
        Box::pin(async move {
            self.enqueue_as(&session.client_ip().to_string(), env, message, held)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, held, "cannot queue message");
                    StoreError {
                        reason: e.to_string(),
                    }
                })
        })
    }
}

impl MessageStore for Queue {
    fn store<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a> {
        self.store_as(session, env, message, false)
    }

    fn quarantine<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a> {
        self.store_as(session, env, message, true)
    }
}
