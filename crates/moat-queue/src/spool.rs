//! The spool: in-memory state rebuilt from the log, the committer thread that alone appends to
//! the log and applies what it wrote, and recovery at open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use crate::queue::Msg;
use crate::record::{self, FRAME_LEN, MessageMeta, RcptStatus, Record, SEGMENT_HEADER_LEN, Scan};
use crate::{CorruptKind, CorruptRecord, QueueConfig, QueueError, QueueMetrics, RecoveryReport};

/// Where a live message's current Message record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u64,
    /// File offset of the payload.
    pub payload_at: u64,
    pub payload_len: u32,
    pub pcrc: u32,
    /// Offset of the body within the payload.
    pub body_offset: u32,
    pub body_len: u32,
}

impl Loc {
    /// Bytes the record occupies in its segment.
    fn record_bytes(&self) -> u64 {
        FRAME_LEN as u64 + u64::from(self.payload_len)
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: MessageMeta,
    pub loc: Loc,
    /// A delivery job holds it (memory only: after a crash it is simply due again).
    pub in_flight: bool,
    /// Its key in `State::schedule`, if scheduled.
    pub due: Option<SystemTime>,
    /// Not due before this (memory only: set when a job was dropped without a result).
    pub hold_off: Option<SystemTime>,
}

impl Entry {
    /// When the message is next due: the earliest non-final recipient, unless held or taken.
    fn compute_due(&self) -> Option<SystemTime> {
        if self.meta.held || self.in_flight {
            return None;
        }
        let due = self
            .meta
            .rcpts
            .iter()
            .filter_map(|(_, s)| s.due(self.meta.received))
            .min()?;
        Some(self.hold_off.map_or(due, |h| h.max(due)))
    }

    pub fn is_done(&self) -> bool {
        self.meta.rcpts.iter().all(|(_, s)| s.is_final())
    }
}

#[derive(Debug)]
pub(crate) struct SegInfo {
    pub file: Arc<File>,
    pub size: u64,
    pub live_msgs: usize,
    pub live_bytes: u64,
    pub sealed_at: Option<Instant>,
    pub corrupt: Vec<CorruptRecord>,
}

/// Everything the queue knows, rebuilt by replaying the log.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub msgs: HashMap<u64, Entry>,
    pub schedule: BTreeSet<(SystemTime, u64)>,
    pub segs: BTreeMap<u64, SegInfo>,
}

/// What applying a record changed, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub retries: u64,
    pub bounces: u64,
}

impl State {
    pub fn reschedule(&mut self, id: u64) {
        let Some(e) = self.msgs.get_mut(&id) else {
            return;
        };
        let due = e.compute_due();
        if due == e.due {
            return;
        }
        if let Some(old) = e.due {
            self.schedule.remove(&(old, id));
        }
        if let Some(new) = due {
            self.schedule.insert((new, id));
        }
        e.due = due;
    }

    fn unschedule(&mut self, id: u64) {
        if let Some(e) = self.msgs.get_mut(&id)
            && let Some(old) = e.due.take()
        {
            self.schedule.remove(&(old, id));
        }
    }

    fn remove(&mut self, id: u64) {
        self.unschedule(id);
        if let Some(e) = self.msgs.remove(&id)
            && let Some(s) = self.segs.get_mut(&e.loc.seg)
        {
            s.live_msgs = s.live_msgs.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(e.loc.record_bytes());
        }
    }

    /// Applies one record, read back from (or just written to) the log at `loc`.
    /// Recovery and the committer share this function, so memory is what the log says.
    pub fn apply(&mut self, rec: Record, loc: Loc) -> Applied {
        let mut applied = Applied::default();
        let id = rec.id();
        match rec {
            Record::Message { meta, .. } => {
                // A second Message record for an id is a copy made by compaction: it wins.
                let (in_flight, hold_off) = self
                    .msgs
                    .get(&id)
                    .map_or((false, None), |e| (e.in_flight, e.hold_off));
                self.remove(id);
                let entry = Entry {
                    meta,
                    loc,
                    in_flight,
                    due: None,
                    hold_off,
                };
                if entry.is_done() {
                    return applied;
                }
                if let Some(s) = self.segs.get_mut(&loc.seg) {
                    s.live_msgs += 1;
                    s.live_bytes += loc.record_bytes();
                }
                self.msgs.insert(id, entry);
            }
            Record::Status { rcpt, status, .. } => {
                let Some(e) = self.msgs.get_mut(&id) else {
                    return applied;
                };
                let Some(slot) = e.meta.rcpts.get_mut(rcpt as usize) else {
                    return applied;
                };
                match &status {
                    RcptStatus::Deferred { .. } => applied.retries += 1,
                    RcptStatus::Bounced { .. } => applied.bounces += 1,
                    _ => {}
                }
                slot.1 = status;
                if e.is_done() {
                    self.remove(id);
                    return applied;
                }
            }
            Record::Hold { held, .. } => {
                let Some(e) = self.msgs.get_mut(&id) else {
                    return applied;
                };
                e.meta.held = held;
            }
            Record::Delete { .. } => {
                self.remove(id);
                return applied;
            }
        }
        self.reschedule(id);
        applied
    }
}

/// State shared by the queue handles and the committer thread.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Woken whenever something may have become due.
    pub due: Notify,
    pub next_id: AtomicU64,
    pub metrics: QueueMetrics,
    pub config: QueueConfig,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the log inconsistent (memory only
        // mirrors it), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new message id: time-ordered and unique across restarts.
    pub fn new_id(&self) -> u64 {
        let floor = record::to_ms(SystemTime::now()) << 12;
        let mut cur = self.next_id.load(Ordering::Relaxed);
        loop {
            let id = cur.max(floor);
            match self.next_id.compare_exchange_weak(
                cur,
                id + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return id,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Updates the gauges from the state.
    pub fn refresh_gauges(&self) {
        let stats = crate::queue::stats_of(&self.lock());
        let m = &self.metrics;
        m.messages
            .with_label_values(&["pending"])
            .set(stats.pending as i64);
        m.messages
            .with_label_values(&["deferred"])
            .set(stats.deferred as i64);
        m.messages
            .with_label_values(&["active"])
            .set(stats.active as i64);
        m.messages
            .with_label_values(&["held"])
            .set(stats.held as i64);
        m.oldest_age
            .set(stats.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
        m.bytes.set(stats.spool_bytes as i64);
        m.segments.set(stats.segments as i64);
    }
}

/// One payload to append, with its checksum computed by the caller.
pub(crate) struct Pending {
    pub payload: Vec<u8>,
    pub pcrc: u32,
    /// A live record rewritten by compaction: not a new message for the metrics.
    pub copy: bool,
}

impl Pending {
    pub fn new(payload: Vec<u8>) -> Self {
        let pcrc = record::payload_crc(&payload);
        Self {
            payload,
            pcrc,
            copy: false,
        }
    }

    /// A record copied forward by compaction.
    fn copied(payload: Vec<u8>) -> Self {
        Self {
            copy: true,
            ..Self::new(payload)
        }
    }
}

/// A request to the committer: append these records together and answer once durable.
pub(crate) struct Request {
    pub records: Vec<Pending>,
    pub reply: oneshot::Sender<Result<(), QueueError>>,
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:020}.seg"))
}

fn fsync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| QueueError::io("fsync directory", dir, e))
}

/// The thread that owns the active segment.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    seg_dir: PathBuf,
    corrupt_dir: PathBuf,
    /// The active segment: number and file. `None` after a failed write until the next
    /// batch opens a fresh one.
    active: Option<(u64, Arc<File>)>,
    next_seg: u64,
    buf: Vec<u8>,
}

const MAX_BATCH_BYTES: usize = 8 << 20;
const MAX_BATCH_REQUESTS: usize = 1024;

impl Committer {
    /// Opens (and recovers) the spool in `config.dir`; returns the committer, ready to run.
    pub fn open(shared: Arc<Shared>) -> Result<(Self, RecoveryReport), QueueError> {
        let dir = shared.config.dir.clone();
        let seg_dir = dir.join("segments");
        let corrupt_dir = dir.join("corrupt");
        for d in [&dir, &seg_dir, &corrupt_dir] {
            fs::create_dir_all(d).map_err(|e| QueueError::io("create directory", d, e))?;
        }
        let mut c = Committer {
            shared,
            seg_dir,
            corrupt_dir,
            active: None,
            next_seg: 1,
            buf: Vec::new(),
        };
        let report = c.recover()?;
        c.open_segment()?;
        // Copy live messages out of every segment up to the last corrupt one, then move the
        // corrupt ones aside (DESIGN.md, invariant 7).
        let last_corrupt = report.corrupt.iter().map(|c| c.segment).max();
        c.housekeeping(last_corrupt);
        let left = c
            .shared
            .lock()
            .segs
            .values()
            .filter(|s| !s.corrupt.is_empty())
            .count();
        if left > 0 {
            tracing::error!(
                segments = left,
                "corrupt spool segments could not be moved aside yet"
            );
        }
        Ok((c, report))
    }

    fn recover(&mut self) -> Result<RecoveryReport, QueueError> {
        let mut report = RecoveryReport::default();
        let mut segs = Vec::new();
        let rd = fs::read_dir(&self.seg_dir)
            .map_err(|e| QueueError::io("list directory", &self.seg_dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| QueueError::io("list directory", &self.seg_dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            match name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n > 0 => segs.push(n),
                _ => tracing::warn!(file = %name, "ignoring unknown file in spool segments"),
            }
        }
        segs.sort_unstable();
        let mut max_id = 0u64;
        let mut state = self.shared.lock();
        for &seg in &segs {
            let path = seg_path(&self.seg_dir, seg);
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .and_then(|f| fs::read(&path).map(|b| (f, b)));
            let (file, bytes) = match opened {
                Ok(fb) => fb,
                Err(e) => {
                    // An unreadable segment must not stop the others from being delivered.
                    self.set_aside_unreadable(seg, &path, &e);
                    report.corrupt.push(CorruptRecord {
                        segment: seg,
                        offset: 0,
                        kind: CorruptKind::Unreadable,
                        message: None,
                    });
                    self.shared.metrics.corrupt(CorruptKind::Unreadable);
                    continue;
                }
            };
            state.segs.insert(
                seg,
                SegInfo {
                    file: Arc::new(file),
                    size: bytes.len() as u64,
                    live_msgs: 0,
                    live_bytes: 0,
                    sealed_at: Some(Instant::now()),
                    corrupt: Vec::new(),
                },
            );
            report.segments += 1;
            let mut corrupt = Vec::new();
            let mut note = |offset: usize, kind: CorruptKind, id: Option<u64>| {
                let c = CorruptRecord {
                    segment: seg,
                    offset: offset as u64,
                    kind,
                    message: id.map(crate::format_id),
                };
                tracing::warn!(
                    segment = seg,
                    offset,
                    kind = kind.as_str(),
                    message = c.message.as_deref().unwrap_or("-"),
                    "unreadable spool record; the segment will be moved aside"
                );
                self.shared.metrics.corrupt(kind);
                corrupt.push(c);
            };
            let mut at = SEGMENT_HEADER_LEN;
            if !record::check_segment_header(seg, &bytes) {
                let kind = if bytes.len() < SEGMENT_HEADER_LEN {
                    CorruptKind::Truncated
                } else {
                    CorruptKind::Checksum
                };
                note(0, kind, None);
            }
            while at < bytes.len() {
                match record::scan_at(seg, &bytes, at) {
                    Scan::Record { start, len } => {
                        let payload = &bytes[start..start + len];
                        match record::decode(payload) {
                            Ok(rec) => {
                                max_id = max_id.max(rec.id());
                                let loc = loc_of(seg, start, payload, &rec);
                                state.apply(rec, loc);
                                report.records += 1;
                            }
                            Err(m) => {
                                tracing::debug!(reason = m.0, "malformed payload");
                                note(at, CorruptKind::Malformed, record::peek_id(payload));
                            }
                        }
                        at = start + len;
                    }
                    Scan::BadPayload { len } => {
                        let start = at + FRAME_LEN;
                        note(
                            at,
                            CorruptKind::Checksum,
                            record::peek_id(&bytes[start..start + len]),
                        );
                        at = start + len;
                    }
                    Scan::Truncated => {
                        note(at, CorruptKind::Truncated, None);
                        at = bytes.len();
                    }
                    Scan::BadHeader => {
                        let next = record::resync(seg, &bytes, at + 1);
                        // Garbage that runs to the end of the file is a cut-off record.
                        let kind = if next.is_none() {
                            CorruptKind::Truncated
                        } else {
                            CorruptKind::Checksum
                        };
                        note(at, kind, None);
                        at = next.unwrap_or(bytes.len());
                    }
                }
            }
            if let Some(s) = state.segs.get_mut(&seg) {
                s.corrupt = corrupt.clone();
            }
            report.corrupt.extend(corrupt);
        }
        report.messages = state.msgs.len();
        drop(state);
        self.next_seg = segs.last().map_or(1, |s| s + 1);
        self.shared
            .next_id
            .fetch_max(max_id.saturating_add(1), Ordering::Relaxed);
        Ok(report)
    }

    /// Moves a segment that cannot be opened or read into `corrupt/` (best effort: if even
    /// that fails it stays where it is and is reported again at the next start).
    fn set_aside_unreadable(&self, seg: u64, path: &Path, error: &std::io::Error) {
        let aside = self.corrupt_dir.join(format!("{seg:020}.seg"));
        let report = self.corrupt_dir.join(format!("{seg:020}.txt"));
        let moved = fs::write(
            &report,
            format!("segment {seg} moved aside: unreadable: {error}\n"),
        )
        .and_then(|()| fs::rename(path, &aside));
        tracing::error!(
            segment = seg,
            error = %error,
            moved_aside = moved.is_ok(),
            "unreadable spool segment skipped"
        );
    }

    /// Creates the next segment and makes its directory entry durable.
    fn open_segment(&mut self) -> Result<(), QueueError> {
        // Never reuse a number, even if creating this one fails half-way.
        let seg = self.next_seg;
        self.next_seg += 1;
        let path = seg_path(&self.seg_dir, seg);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| QueueError::io("create segment", &path, e))?;
        file.write_all(&record::segment_header(seg))
            .and_then(|()| file.sync_all())
            .map_err(|e| QueueError::io("write segment header", &path, e))?;
        fsync_dir(&self.seg_dir)?;
        let file = Arc::new(file);
        self.shared.lock().segs.insert(
            seg,
            SegInfo {
                file: file.clone(),
                size: SEGMENT_HEADER_LEN as u64,
                live_msgs: 0,
                live_bytes: 0,
                sealed_at: None,
                corrupt: Vec::new(),
            },
        );
        tracing::debug!(segment = seg, "opened spool segment");
        self.active = Some((seg, file));
        Ok(())
    }

    fn seal_active(&mut self) {
        if let Some((seg, _)) = self.active.take()
            && let Some(s) = self.shared.lock().segs.get_mut(&seg)
        {
            s.sealed_at = Some(Instant::now());
        }
    }

    /// Appends `records` to the active segment with one write and one fdatasync, then applies
    /// them to the state. Returns what applying changed.
    fn append(&mut self, records: &[&Pending]) -> Result<Applied, QueueError> {
        let total: usize = records.iter().map(|p| FRAME_LEN + p.payload.len()).sum();
        let size = match &self.active {
            Some((seg, _)) => self.shared.lock().segs.get(seg).map_or(0, |s| s.size),
            None => 0,
        };
        if self.active.is_none()
            || (size > SEGMENT_HEADER_LEN as u64
                && size + total as u64 > self.shared.config.segment_size)
        {
            self.seal_active();
            self.open_segment()?;
        }
        let Some((seg, file)) = self.active.clone() else {
            return Err(QueueError::Closed);
        };
        let start = self.shared.lock().segs.get(&seg).map_or(0, |s| s.size);
        self.buf.clear();
        let mut placed = Vec::with_capacity(records.len());
        for p in records {
            let offset = start + self.buf.len() as u64;
            let len = u32::try_from(p.payload.len())
                .map_err(|_| QueueError::TooLarge(p.payload.len()))?;
            self.buf
                .extend_from_slice(&record::frame(seg, offset, len, p.pcrc));
            placed.push(offset + FRAME_LEN as u64);
            self.buf.extend_from_slice(&p.payload);
        }
        let t0 = Instant::now();
        let written = file
            .write_all_at(&self.buf, start)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // The tail of this segment is now unknown: never append to it again.
            tracing::error!(segment = seg, error = %e, "spool write failed");
            self.seal_active();
            return Err(QueueError::io(
                "append to segment",
                seg_path(&self.seg_dir, seg),
                e,
            ));
        }
        let m = &self.shared.metrics;
        m.commits.inc();
        m.commit_records.observe(records.len() as f64);
        m.commit_seconds.observe(t0.elapsed().as_secs_f64());

        let mut applied = Applied::default();
        let mut state = self.shared.lock();
        if let Some(s) = state.segs.get_mut(&seg) {
            s.size = start + self.buf.len() as u64;
        }
        for (p, &payload_at) in records.iter().zip(&placed) {
            // We encoded it ourselves a moment ago; decoding it is what recovery will do.
            match record::decode(&p.payload) {
                Ok(rec) => {
                    if !p.copy && matches!(rec, Record::Message { .. }) {
                        m.enqueued.inc();
                    }
                    let loc = loc_at(seg, payload_at, &p.payload, p.pcrc, &rec);
                    let a = state.apply(rec, loc);
                    applied.retries += a.retries;
                    applied.bounces += a.bounces;
                }
                Err(e) => tracing::error!(reason = e.0, "appended a record it cannot decode"),
            }
        }
        drop(state);
        m.retries.inc_by(applied.retries);
        m.bounces.inc_by(applied.bounces);
        self.shared.due.notify_waiters();
        Ok(applied)
    }

    /// Runs until every queue handle is dropped (returns `None`) or a stop request arrives
    /// (returns its acknowledgement, to be sent once the spool lock is released).
    pub fn run(mut self, rx: Receiver<Msg>) -> Option<oneshot::Sender<()>> {
        let mut last_gauges = Instant::now();
        let mut stop = None;
        self.shared.refresh_gauges();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Append(r)) => r,
                Ok(Msg::Stop(ack)) => return Some(ack),
                Err(RecvTimeoutError::Timeout) => {
                    self.housekeeping(None);
                    self.shared.refresh_gauges();
                    last_gauges = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            };
            let mut batch = vec![first];
            let mut bytes: usize = batch[0].records.iter().map(|p| p.payload.len()).sum();
            while bytes < MAX_BATCH_BYTES && batch.len() < MAX_BATCH_REQUESTS {
                match rx.try_recv() {
                    Ok(Msg::Append(r)) => {
                        bytes += r.records.iter().map(|p| p.payload.len()).sum::<usize>();
                        batch.push(r);
                    }
                    Ok(Msg::Stop(ack)) => {
                        stop = Some(ack);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let records: Vec<&Pending> = batch.iter().flat_map(|r| r.records.iter()).collect();
            let result = self.append(&records);
            drop(records);
            for r in batch {
                let answer = match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(QueueError::Io {
                        op: "group commit",
                        path: self.seg_dir.clone(),
                        source: std::io::Error::other(e.to_string()),
                    }),
                };
                // The caller may have gone away (client disconnected); nothing to do then.
                let _ = r.reply.send(answer);
            }
            if stop.is_some() {
                tracing::debug!("queue committer stopped");
                return stop;
            }
            self.housekeeping(None);
            if last_gauges.elapsed() >= Duration::from_secs(1) {
                self.shared.refresh_gauges();
                last_gauges = Instant::now();
            }
        }
    }

    /// Deletes dead segments at the head and compacts the head when it is mostly dead, old, or
    /// at or before `force_through` (a corrupt segment found at recovery).
    pub fn housekeeping(&mut self, force_through: Option<u64>) {
        // Only segments sealed before this call: copies made now land in newer ones, which
        // must not be compacted again in the same call.
        let limit = self.active.as_ref().map_or(self.next_seg, |(s, _)| *s);
        loop {
            let head = {
                let state = self.shared.lock();
                let Some((&seg, info)) = state.segs.iter().next() else {
                    return;
                };
                if seg >= limit {
                    return;
                }
                let old = info
                    .sealed_at
                    .is_some_and(|t| t.elapsed() >= self.shared.config.compact_after);
                let mostly_dead = info.live_bytes * 2 < info.size;
                let forced = force_through.is_some_and(|f| seg <= f);
                if info.live_msgs > 0 && !(old || mostly_dead || forced) {
                    return;
                }
                (seg, info.live_msgs)
            };
            let (seg, live) = head;
            if live > 0
                && let Err(e) = self.copy_forward(seg)
            {
                tracing::error!(segment = seg, error = %e, "compaction failed; will retry");
                return;
            }
            if let Err(e) = self.remove_segment(seg) {
                tracing::error!(segment = seg, error = %e, "cannot remove spool segment");
                return;
            }
        }
    }

    /// Re-appends the live messages of `seg` with their current statuses.
    fn copy_forward(&mut self, seg: u64) -> Result<(), QueueError> {
        let (file, live): (Arc<File>, Vec<(u64, Loc, MessageMeta)>) = {
            let state = self.shared.lock();
            let Some(info) = state.segs.get(&seg) else {
                return Ok(());
            };
            let live = state
                .msgs
                .iter()
                .filter(|(_, e)| e.loc.seg == seg)
                .map(|(id, e)| (*id, e.loc, e.meta.clone()))
                .collect();
            (info.file.clone(), live)
        };
        let mut pending = Vec::with_capacity(live.len());
        for (id, loc, meta) in &live {
            let body = read_body(&file, loc).map_err(|e| match e {
                QueueError::Corrupt(_) => QueueError::Corrupt(crate::format_id(*id)),
                e => e,
            })?;
            pending.push(Pending::copied(record::encode_message(meta, &body).0));
        }
        let n = pending.len();
        // Keep each commit bounded so a big head does not make one enormous write.
        let mut chunk: Vec<&Pending> = Vec::new();
        let mut bytes = 0;
        for p in &pending {
            bytes += p.payload.len();
            chunk.push(p);
            if bytes >= MAX_BATCH_BYTES {
                self.append(&chunk)?;
                chunk.clear();
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.append(&chunk)?;
        }
        tracing::info!(segment = seg, messages = n, "compacted spool segment");
        Ok(())
    }

    /// Unlinks a dead head segment, or moves it aside with a report if it held corruption.
    fn remove_segment(&mut self, seg: u64) -> Result<(), QueueError> {
        let info = {
            let mut state = self.shared.lock();
            match state.segs.get(&seg) {
                Some(i) if i.live_msgs == 0 => {}
                _ => return Ok(()),
            }
            state.segs.remove(&seg)
        };
        let Some(info) = info else { return Ok(()) };
        let path = seg_path(&self.seg_dir, seg);
        if info.corrupt.is_empty() {
            fs::remove_file(&path).map_err(|e| QueueError::io("remove segment", &path, e))?;
            fsync_dir(&self.seg_dir)?;
            tracing::debug!(segment = seg, "removed spool segment");
        } else {
            let aside = self.corrupt_dir.join(format!("{seg:020}.seg"));
            let report = self.corrupt_dir.join(format!("{seg:020}.txt"));
            let mut text = format!(
                "segment {seg} moved aside: {} unreadable record(s)\n",
                info.corrupt.len()
            );
            for c in &info.corrupt {
                text.push_str(&format!(
                    "offset {} kind {} message {}\n",
                    c.offset,
                    c.kind.as_str(),
                    c.message.as_deref().unwrap_or("unknown")
                ));
            }
            fs::write(&report, text).map_err(|e| QueueError::io("write report", &report, e))?;
            fs::rename(&path, &aside)
                .map_err(|e| QueueError::io("move segment aside", &path, e))?;
            fsync_dir(&self.corrupt_dir)?;
            fsync_dir(&self.seg_dir)?;
            tracing::warn!(
                segment = seg,
                path = %aside.display(),
                records = info.corrupt.len(),
                "moved corrupt spool segment aside"
            );
        }
        Ok(())
    }
}

fn loc_of(seg: u64, start: usize, payload: &[u8], rec: &Record) -> Loc {
    loc_at(
        seg,
        start as u64,
        payload,
        record::payload_crc(payload),
        rec,
    )
}

fn loc_at(seg: u64, payload_at: u64, payload: &[u8], pcrc: u32, rec: &Record) -> Loc {
    let (body_offset, body_len) = match rec {
        Record::Message {
            body_offset,
            body_len,
            ..
        } => (*body_offset as u32, *body_len as u32),
        _ => (0, 0),
    };
    Loc {
        seg,
        payload_at,
        payload_len: payload.len() as u32,
        pcrc,
        body_offset,
        body_len,
    }
}

/// Reads a message's bytes back and verifies the record's checksum.
pub(crate) fn read_body(file: &File, loc: &Loc) -> Result<Vec<u8>, QueueError> {
    let mut payload = vec![0u8; loc.payload_len as usize];
    file.read_exact_at(&mut payload, loc.payload_at)
        .map_err(|e| {
            QueueError::io(
                "read segment",
                PathBuf::from(format!("segment {}", loc.seg)),
                e,
            )
        })?;
    if record::payload_crc(&payload) != loc.pcrc {
        return Err(QueueError::Corrupt(String::new()));
    }
    let start = loc.body_offset as usize;
    payload.truncate(start + loc.body_len as usize);
    payload.drain(..start);
    Ok(payload)
}
