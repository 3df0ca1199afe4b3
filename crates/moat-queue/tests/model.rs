//! Model-based test: random sequences of enqueue, delivery attempts, admin calls and crashes
//! (with torn, unacknowledged tails) against a real spool, compared with an in-memory model
//! after every step. Small segments and immediate compaction make rotation, copy-forward and
//! segment removal happen all the time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use moat_core::{Envelope, QueueId};
use moat_queue::{
    Dsn, Job, MessageState, Outcome, Queue, QueueConfig, QueueMetrics, RcptOutcome, RcptStatus,
    RetryPolicy,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        rcpts: usize,
        null_sender: bool,
        size: usize,
    },
    Take,
    /// Outcome codes per recipient, cycled: 0 delivered, 1 transient, 2 permanent.
    Complete(Vec<u8>),
    DropJob,
    Hold(usize),
    Release(usize),
    Delete(usize),
    Retry(usize),
    /// Stop without finishing the job in hand, append these bytes (a torn, unacknowledged
    /// write) to the newest segment, and open the spool again.
    Crash(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..4, any::<bool>(), 0usize..3000)
            .prop_map(|(rcpts, null_sender, size)| Op::Enqueue { rcpts, null_sender, size }),
        4 => Just(Op::Take),
        4 => proptest::collection::vec(0u8..3, 1..4).prop_map(Op::Complete),
        1 => Just(Op::DropJob),
        1 => any::<usize>().prop_map(Op::Hold),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => any::<usize>().prop_map(Op::Retry),
        1 => prop_oneof![Just(Vec::new()), proptest::collection::vec(any::<u8>(), 1..40)]
            .prop_map(Op::Crash),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    Pending,
    Deferred(u32),
    Delivered,
    Bounced,
}

impl M {
    fn is_final(&self) -> bool {
        matches!(self, M::Delivered | M::Bounced)
    }
}

#[derive(Debug, Clone)]
struct ModelMsg {
    mail_from: String,
    rcpts: Vec<(String, M)>,
    held: bool,
    /// A job for it was dropped: not due for a few seconds (memory only).
    delayed: bool,
    body: Vec<u8>,
}

#[derive(Default)]
struct Model {
    msgs: BTreeMap<QueueId, ModelMsg>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<QueueId> {
        if self.msgs.is_empty() {
            return None;
        }
        self.msgs.keys().nth(i % self.msgs.len()).cloned()
    }

    fn due(&self) -> BTreeSet<QueueId> {
        self.msgs
            .iter()
            .filter(|(_, m)| !m.held && !m.delayed)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn config(dir: &Path) -> QueueConfig {
    let mut c = QueueConfig::new(dir);
    c.segment_size = 2048;
    c.compact_after = Duration::ZERO;
    c.retry = RetryPolicy {
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        max_lifetime: Duration::from_secs(86_400),
    };
    c
}

fn open(dir: &Path) -> (Queue, moat_queue::RecoveryReport) {
    let metrics = QueueMetrics::new(&prometheus::Registry::new()).unwrap();
    Queue::open(config(dir), metrics).unwrap()
}

fn check(q: &Queue, model: &Model, bodies: bool) -> Result<(), TestCaseError> {
    let listed: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
    let expected: Vec<QueueId> = model.msgs.keys().cloned().collect();
    prop_assert_eq!(&listed, &expected);
    for (id, m) in &model.msgs {
        let d = q.show(id).unwrap();
        prop_assert_eq!(&d.summary.mail_from, &m.mail_from);
        prop_assert_eq!(d.summary.state == MessageState::Held, m.held);
        prop_assert_eq!(d.rcpts.len(), m.rcpts.len());
        for ((addr, got), (want_addr, want)) in d.rcpts.iter().zip(&m.rcpts) {
            prop_assert_eq!(addr, want_addr);
            let got = match got {
                RcptStatus::Pending => M::Pending,
                RcptStatus::Deferred { attempts, .. } => M::Deferred(*attempts),
                RcptStatus::Delivered { .. } => M::Delivered,
                RcptStatus::Bounced { .. } => M::Bounced,
            };
            prop_assert_eq!(&got, want, "{} {}", id, addr);
        }
        if bodies {
            prop_assert_eq!(&q.message(id).unwrap(), &m.body);
        }
    }
    Ok(())
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap()
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path());
    let mut model = Model::default();
    let mut job: Option<Job> = None;
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Enqueue {
                rcpts,
                null_sender,
                size,
            } => {
                n += 1;
                let mail_from = if null_sender {
                    String::new()
                } else {
                    format!("s{n}@x.org")
                };
                let rcpt_to: Vec<String> = (0..rcpts).map(|r| format!("r{r}-{n}@y.org")).collect();
                let body: Vec<u8> = (0..size).map(|i| (i * 7 + n) as u8).collect();
                let env = Envelope {
                    mail_from: mail_from.clone(),
                    rcpt_to: rcpt_to.clone(),
                    ..Envelope::default()
                };
                let id = q.enqueue("192.0.2.1", &env, &body).await.unwrap();
                model.msgs.insert(
                    id,
                    ModelMsg {
                        mail_from,
                        rcpts: rcpt_to.into_iter().map(|r| (r, M::Pending)).collect(),
                        held: false,
                        delayed: false,
                        body,
                    },
                );
            }
            Op::Take => {
                if job.is_none() {
                    let due = model.due();
                    match q.try_next_job() {
                        Some(j) => {
                            prop_assert!(due.contains(j.id()), "took {} not due", j.id());
                            let m = &model.msgs[j.id()];
                            let want: Vec<(u32, String)> = m
                                .rcpts
                                .iter()
                                .enumerate()
                                .filter(|(_, (_, s))| !s.is_final())
                                .map(|(i, (a, _))| (i as u32, a.clone()))
                                .collect();
                            prop_assert_eq!(j.rcpts(), want.as_slice());
                            job = Some(j);
                        }
                        None => prop_assert!(due.is_empty(), "nothing taken but {:?} due", due),
                    }
                }
            }
            Op::Complete(codes) => {
                if let Some(j) = job.take() {
                    let id = j.id().clone();
                    let outcomes: Vec<RcptOutcome> = j
                        .rcpts()
                        .iter()
                        .zip(codes.iter().cycle())
                        .map(|((i, _), c)| RcptOutcome {
                            rcpt: *i,
                            outcome: match c {
                                0 => Outcome::Delivered("250 ok".into()),
                                1 => Outcome::Transient("451 later".into()),
                                _ => Outcome::Permanent("550 no".into()),
                            },
                        })
                        .collect();
                    let done = q
                        .complete(j, &outcomes, |b| {
                            Some(Dsn {
                                rcpt_to: b.mail_from.to_string(),
                                message: format!("dsn for {}", b.id).into_bytes(),
                            })
                        })
                        .await
                        .unwrap();
                    if let Some(m) = model.msgs.get_mut(&id) {
                        let mut bounced = false;
                        for o in &outcomes {
                            let s = &mut m.rcpts[o.rcpt as usize].1;
                            *s = match (&o.outcome, &*s) {
                                (Outcome::Delivered(_), _) => M::Delivered,
                                (Outcome::Permanent(_), _) => {
                                    bounced = true;
                                    M::Bounced
                                }
                                (Outcome::Transient(_), M::Deferred(a)) => M::Deferred(a + 1),
                                (Outcome::Transient(_), _) => M::Deferred(1),
                            };
                        }
                        let sender = m.mail_from.clone();
                        if m.rcpts.iter().all(|r| r.1.is_final()) {
                            model.msgs.remove(&id);
                        }
                        if bounced && !sender.is_empty() {
                            let dsn = done.dsn.clone().expect("a DSN for a bounce");
                            model.msgs.insert(
                                dsn,
                                ModelMsg {
                                    mail_from: String::new(),
                                    rcpts: vec![(sender, M::Pending)],
                                    held: false,
                                    delayed: false,
                                    body: format!("dsn for {id}").into_bytes(),
                                },
                            );
                        } else {
                            prop_assert_eq!(done.dsn, None);
                        }
                    } else {
                        // Deleted while in flight: nothing recorded.
                        prop_assert_eq!(done, Default::default());
                    }
                }
            }
            Op::DropJob => {
                if let Some(j) = job.take() {
                    if let Some(m) = model.msgs.get_mut(j.id()) {
                        m.delayed = true;
                    }
                    drop(j);
                }
            }
            Op::Hold(i) => {
                if let Some(id) = model.pick(i) {
                    q.hold(&id).await.unwrap();
                    model.msgs.get_mut(&id).unwrap().held = true;
                }
            }
            Op::Release(i) => {
                if let Some(id) = model.pick(i) {
                    q.release(&id).await.unwrap();
                    let m = model.msgs.get_mut(&id).unwrap();
                    m.held = false;
                    m.delayed = false;
                }
            }
            Op::Delete(i) => {
                if let Some(id) = model.pick(i) {
                    q.delete(&id).await.unwrap();
                    model.msgs.remove(&id);
                }
            }
            Op::Retry(i) => {
                if let Some(id) = model.pick(i) {
                    q.retry(&id).unwrap();
                    model.msgs.get_mut(&id).unwrap().delayed = false;
                }
            }
            Op::Crash(torn) => {
                // The job in hand dies with the process; its message is simply due again.
                if let Some(j) = job.take() {
                    std::mem::forget(j);
                }
                q.close().await;
                if !torn.is_empty() {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(newest_segment(dir.path()))
                        .unwrap();
                    f.write_all(&torn).unwrap();
                }
                let (q2, report) = open(dir.path());
                q = q2;
                prop_assert_eq!(
                    report.corrupt.is_empty(),
                    torn.is_empty(),
                    "{:?}",
                    report.corrupt
                );
                prop_assert_eq!(report.messages, model.msgs.len());
                for m in model.msgs.values_mut() {
                    m.delayed = false;
                }
                check(&q, &model, true)?;
            }
        }
        check(&q, &model, false)?;
    }
    if let Some(j) = job.take() {
        drop(j);
    }
    check(&q, &model, true)?;
    q.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model(ops in proptest::collection::vec(op(), 1..50)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
