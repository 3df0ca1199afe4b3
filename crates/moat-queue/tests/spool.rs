//! Behaviour of a real spool on disk: restart, retries, bounces, admin calls, group commit and
//! deliberate corruption.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_core::{Envelope, QueueId};
use moat_queue::{
    CorruptKind, Dsn, MessageState, Outcome, Queue, QueueConfig, QueueMetrics, RcptOutcome,
    RcptStatus, RetryPolicy,
};
use prometheus::Registry;

fn env(from: &str, to: &[&str]) -> Envelope {
    Envelope {
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        ..Envelope::default()
    }
}

fn open(config: QueueConfig) -> (Queue, moat_queue::RecoveryReport, Registry) {
    let registry = Registry::new();
    let metrics = QueueMetrics::new(&registry).unwrap();
    let (q, report) = Queue::open(config, metrics).unwrap();
    (q, report, registry)
}

fn metric(registry: &Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    for fam in registry.gather() {
        if fam.name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let matches = label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            });
            if matches {
                return match fam.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => m.get_histogram().get_sample_count() as f64,
                };
            }
        }
    }
    panic!("no metric {name} {label:?}");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn body(n: usize) -> Vec<u8> {
    format!("Subject: message {n}\r\n\r\n{}\r\n", "x".repeat(200 + n)).into_bytes()
}

fn deliver_all(job: &moat_queue::Job) -> Vec<RcptOutcome> {
    job.rcpts()
        .iter()
        .map(|(i, _)| RcptOutcome {
            rcpt: *i,
            outcome: Outcome::Delivered("250 2.0.0 ok".into()),
        })
        .collect()
}

#[tokio::test]
async fn messages_survive_a_restart_and_finished_ones_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(QueueConfig::new(dir.path()));
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = q
            .enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(n))
            .await
            .unwrap();
        ids.push(id);
    }
    // Deliver two of them.
    for _ in 0..2 {
        let job = q.try_next_job().expect("a due message");
        let outcomes = deliver_all(&job);
        q.complete(job, &outcomes, |_| None).await.unwrap();
    }
    // A third is taken but the process "dies" before the result is recorded.
    let taken = q.try_next_job().unwrap();
    let taken_id = taken.id().clone();
    std::mem::forget(taken);
    q.close().await;

    let (q, report, _) = open(QueueConfig::new(dir.path()));
    assert!(report.corrupt.is_empty());
    assert_eq!(report.messages, 3);
    let listed: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ids[2..].to_vec());
    assert!(
        listed.contains(&taken_id),
        "an unrecorded attempt is retried"
    );
    for (n, id) in ids.iter().enumerate().skip(2) {
        assert_eq!(q.message(id).unwrap(), body(n));
        assert_eq!(q.show(id).unwrap().summary.state, MessageState::Pending);
    }
    // All three are due at once after the restart.
    for _ in 0..3 {
        let job = q.try_next_job().expect("resumed message is due");
        let outcomes = deliver_all(&job);
        q.complete(job, &outcomes, |_| None).await.unwrap();
    }
    assert_eq!(q.stats().messages, 0);
    q.close().await;
}

#[tokio::test]
async fn per_recipient_results_retry_schedule_bounces_and_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, registry) = open(QueueConfig::new(dir.path()));
    let id = q
        .enqueue(
            "192.0.2.1",
            &env("alice@x.org", &["ok@y.org", "later@y.org", "gone@y.org"]),
            &body(1),
        )
        .await
        .unwrap();
    let job = q.try_next_job().unwrap();
    assert_eq!(job.rcpts().len(), 3);
    let outcomes = [
        RcptOutcome {
            rcpt: 0,
            outcome: Outcome::Delivered("250 ok".into()),
        },
        RcptOutcome {
            rcpt: 1,
            outcome: Outcome::Transient("451 4.3.0 later".into()),
        },
        RcptOutcome {
            rcpt: 2,
            outcome: Outcome::Permanent("550 5.1.1 no such user".into()),
        },
    ];
    let mut bounced = Vec::new();
    let done = q
        .complete(job, &outcomes, |b| {
            bounced = b.rcpts.clone();
            Some(Dsn {
                rcpt_to: b.mail_from.to_string(),
                message: b"Subject: Undelivered Mail\r\n\r\nsorry\r\n".to_vec(),
            })
        })
        .await
        .unwrap();
    assert_eq!((done.delivered, done.deferred, done.bounced), (1, 1, 1));
    assert_eq!(
        bounced,
        vec![(
            "gone@y.org".to_string(),
            "550 5.1.1 no such user".to_string(),
            false
        )]
    );
    let dsn_id = done.dsn.expect("a DSN was queued");

    let detail = q.show(&id).unwrap();
    assert_eq!(detail.summary.state, MessageState::Deferred);
    assert!(matches!(detail.rcpts[0].1, RcptStatus::Delivered { .. }));
    assert!(matches!(
        detail.rcpts[1].1,
        RcptStatus::Deferred { attempts: 1, .. }
    ));
    assert!(matches!(detail.rcpts[2].1, RcptStatus::Bounced { .. }));
    let wait = detail
        .summary
        .next_attempt
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        wait > Duration::from_secs(290) && wait <= Duration::from_secs(300),
        "{wait:?}"
    );

    // The DSN is a message from <> to the sender, due now; the deferred one is not due.
    let dsn = q.show(&dsn_id).unwrap();
    assert_eq!(dsn.summary.mail_from, "");
    assert_eq!(dsn.rcpts[0].0, "alice@x.org");
    let job = q.try_next_job().unwrap();
    assert_eq!(job.id(), &dsn_id);
    assert!(q.try_next_job().is_none());

    // The DSN itself bounces: no DSN of a DSN.
    let outcomes = [RcptOutcome {
        rcpt: 0,
        outcome: Outcome::Permanent("550 no".into()),
    }];
    let done = q
        .complete(job, &outcomes, |_| panic!("never asked for a DSN to <>"))
        .await
        .unwrap();
    assert_eq!(done.dsn, None);
    assert!(q.show(&dsn_id).is_err());
    assert_eq!(
        metric(&registry, "moat_queue_bounces_total", None),
        2.0,
        "two recipients bounced"
    );
    assert_eq!(metric(&registry, "moat_queue_dsn_total", None), 1.0);
    assert_eq!(metric(&registry, "moat_queue_retries_total", None), 1.0);

    // After a restart the deferred recipient keeps its schedule and attempt count.
    q.close().await;
    let (q, _, _) = open(QueueConfig::new(dir.path()));
    assert!(q.try_next_job().is_none(), "not due before its time");
    let detail = q.show(&id).unwrap();
    assert!(matches!(
        detail.rcpts[1].1,
        RcptStatus::Deferred { attempts: 1, .. }
    ));
    // An operator forces a retry: only the unfinished recipient is attempted.
    q.retry(&id).unwrap();
    let job = q.try_next_job().unwrap();
    assert_eq!(job.rcpts(), &[(1, "later@y.org".to_string())]);
    let outcomes = deliver_all(&job);
    q.complete(job, &outcomes, |_| None).await.unwrap();
    assert_eq!(q.stats().messages, 0);
    q.close().await;
}

#[tokio::test]
async fn expired_messages_bounce_on_their_next_temporary_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = QueueConfig::new(dir.path());
    config.retry = RetryPolicy {
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        max_lifetime: Duration::from_millis(50),
    };
    let (q, _, _) = open(config);
    q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(0))
        .await
        .unwrap();
    let job = q.try_next_job().unwrap();
    let t = [RcptOutcome {
        rcpt: 0,
        outcome: Outcome::Transient("421 busy".into()),
    }];
    assert_eq!(q.complete(job, &t, |_| None).await.unwrap().deferred, 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let job = q.try_next_job().unwrap();
    let mut expired = false;
    let done = q
        .complete(job, &t, |b| {
            expired = b.rcpts[0].2;
            None
        })
        .await
        .unwrap();
    assert_eq!(done.bounced, 1);
    assert!(expired);
    assert_eq!(q.stats().messages, 0);
    q.close().await;
}

#[tokio::test]
async fn hold_release_delete_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(QueueConfig::new(dir.path()));
    let a = q
        .enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(0))
        .await
        .unwrap();
    let b = q
        .enqueue("192.0.2.1", &env("a@x.org", &["c@y.org"]), &body(1))
        .await
        .unwrap();
    q.hold(&a).await.unwrap();
    q.delete(&b).await.unwrap();
    assert!(q.try_next_job().is_none(), "held and deleted are not due");
    let missing = QueueId("00000000000000FF".into());
    assert!(matches!(
        q.hold(&missing).await,
        Err(moat_queue::QueueError::NotFound(_))
    ));
    assert!(q.show(&QueueId("not an id".into())).is_err());
    q.close().await;

    let (q, _, _) = open(QueueConfig::new(dir.path()));
    assert_eq!(q.list().len(), 1);
    assert_eq!(q.show(&a).unwrap().summary.state, MessageState::Held);
    assert!(q.try_next_job().is_none());
    q.release(&a).await.unwrap();
    let job = q.try_next_job().unwrap();
    assert_eq!(job.id(), &a);
    drop(job); // dropped without a result: due again a little later
    assert!(q.try_next_job().is_none());
    assert_eq!(q.stats().pending, 1);
    q.close().await;
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(QueueConfig::new(dir.path()));
    let again = Queue::open(
        QueueConfig::new(dir.path()),
        QueueMetrics::new(&Registry::new()).unwrap(),
    );
    assert!(matches!(again, Err(moat_queue::QueueError::Locked(_))));
    q.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, registry) = open(QueueConfig::new(dir.path()));
    let n = 400;
    let mut tasks = Vec::new();
    for i in 0..n {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(i))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let commits = metric(&registry, "moat_queue_commits_total", None);
    assert_eq!(q.stats().messages, n);
    assert!(
        commits < n as f64 / 2.0,
        "{commits} fsyncs for {n} concurrent messages"
    );
    q.close().await;
}

#[tokio::test]
async fn segments_rotate_and_dead_ones_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = QueueConfig::new(dir.path());
    config.segment_size = 4096;
    config.compact_after = Duration::ZERO;
    let (q, _, registry) = open(config.clone());
    for i in 0..40 {
        q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(i))
            .await
            .unwrap();
    }
    assert!(segments(dir.path()).len() > 3);
    // Deliver all but the last one: every sealed segment becomes dead or mostly dead.
    for _ in 0..39 {
        let job = q.try_next_job().unwrap();
        let outcomes = deliver_all(&job);
        q.complete(job, &outcomes, |_| None).await.unwrap();
    }
    let keep = q.list()[0].id.clone();
    // One more append triggers housekeeping after its commit.
    q.hold(&keep).await.unwrap();
    assert!(
        segments(dir.path()).len() <= 2,
        "{:?}",
        segments(dir.path())
    );
    // Compaction copies live records forward; that is not a new message.
    assert_eq!(metric(&registry, "moat_queue_enqueued_total", None), 40.0);
    q.close().await;
    let (q, report, _) = open(config);
    assert!(report.corrupt.is_empty());
    assert_eq!(q.list().len(), 1);
    assert_eq!(q.show(&keep).unwrap().summary.state, MessageState::Held);
    assert_eq!(q.message(&keep).unwrap(), body(39));
    q.close().await;
}

/// Writes `count` messages, one per segment, and returns their ids and the spool's segments.
async fn spool_with_one_message_per_segment(
    dir: &Path,
    count: usize,
) -> (Vec<QueueId>, Vec<PathBuf>) {
    let mut config = QueueConfig::new(dir);
    config.segment_size = 64; // every record starts a new segment
    let (q, _, _) = open(config);
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(
            q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(i))
                .await
                .unwrap(),
        );
    }
    q.close().await;
    let segs = segments(dir);
    (ids, segs)
}

#[tokio::test]
async fn a_truncated_and_a_bad_checksum_entry_are_moved_aside_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, segs) = spool_with_one_message_per_segment(dir.path(), 6).await;
    // Segment n + 1 holds ids[n].
    assert_eq!(segs.len(), 6);
    // Truncate message 1's record half-way.
    let len = std::fs::metadata(&segs[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Flip one byte in message 3's body.
    let mut bytes = std::fs::read(&segs[3]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    std::fs::write(&segs[3], bytes).unwrap();

    let (q, report, registry) = open(QueueConfig::new(dir.path()));
    let kinds: Vec<(u64, CorruptKind)> =
        report.corrupt.iter().map(|c| (c.segment, c.kind)).collect();
    assert_eq!(
        kinds,
        vec![(2, CorruptKind::Truncated), (4, CorruptKind::Checksum)]
    );
    // The damaged payload still names its message when the header survived.
    assert_eq!(
        report.corrupt[1].message.as_deref(),
        Some(ids[3].0.as_str())
    );
    assert_eq!(
        metric(
            &registry,
            "moat_queue_corrupt_records_total",
            Some(("kind", "truncated"))
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "moat_queue_corrupt_records_total",
            Some(("kind", "checksum"))
        ),
        1.0
    );
    // Moved aside with a report, not deleted.
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in [
        "00000000000000000002.seg",
        "00000000000000000002.txt",
        "00000000000000000004.seg",
        "00000000000000000004.txt",
    ] {
        assert!(aside.iter().any(|a| a == name), "{name} in {aside:?}");
    }
    let text =
        std::fs::read_to_string(dir.path().join("corrupt/00000000000000000004.txt")).unwrap();
    assert!(
        text.contains("checksum") && text.contains(&ids[3].0),
        "{text}"
    );

    // Every other message is intact and deliverable.
    let listed: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
    assert_eq!(
        listed,
        vec![
            ids[0].clone(),
            ids[2].clone(),
            ids[4].clone(),
            ids[5].clone()
        ]
    );
    for (n, id) in ids.iter().enumerate() {
        if listed.contains(id) {
            assert_eq!(q.message(id).unwrap(), body(n));
        }
    }
    let mut delivered = 0;
    while let Some(job) = q.try_next_job() {
        let outcomes = deliver_all(&job);
        q.complete(job, &outcomes, |_| None).await.unwrap();
        delivered += 1;
    }
    assert_eq!(delivered, 4);
    q.close().await;

    // The damage is reported once: the next start is clean.
    let (q, report, _) = open(QueueConfig::new(dir.path()));
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(q.stats().messages, 0);
    q.close().await;
}

#[tokio::test]
async fn garbage_between_records_does_not_hide_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = QueueConfig::new(dir.path());
    config.segment_size = 1 << 20;
    let (q, _, _) = open(config);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(i))
                .await
                .unwrap(),
        );
    }
    q.close().await;
    let segs = segments(dir.path());
    // All three records are in the first segment; smash the first record's frame.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    for b in &mut bytes[16..24] {
        *b = 0xEE;
    }
    std::fs::write(&segs[0], bytes).unwrap();
    let (q, report, _) = open(QueueConfig::new(dir.path()));
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].kind, CorruptKind::Checksum);
    let listed: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ids[1..].to_vec());
    assert_eq!(q.message(&ids[2]).unwrap(), body(2));
    q.close().await;
}

#[tokio::test]
async fn an_unreadable_segment_is_set_aside_and_the_rest_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, segs) = spool_with_one_message_per_segment(dir.path(), 3).await;
    // Replace the middle segment with something that cannot be read as a file.
    std::fs::remove_file(&segs[1]).unwrap();
    std::fs::create_dir(&segs[1]).unwrap();
    let (q, report, registry) = open(QueueConfig::new(dir.path()));
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].kind, CorruptKind::Unreadable);
    assert_eq!(report.corrupt[0].segment, 2);
    assert_eq!(
        metric(
            &registry,
            "moat_queue_corrupt_records_total",
            Some(("kind", "unreadable"))
        ),
        1.0
    );
    assert!(dir.path().join("corrupt/00000000000000000002.seg").exists());
    let listed: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(q.message(&ids[2]).unwrap(), body(2));
    // New messages do not reuse the number of the segment set aside.
    q.enqueue("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(9))
        .await
        .unwrap();
    q.close().await;
    let (q, report, _) = open(QueueConfig::new(dir.path()));
    assert!(report.corrupt.is_empty());
    assert_eq!(q.list().len(), 3);
    q.close().await;
}

#[tokio::test]
async fn quarantined_messages_are_held_from_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig::new(dir.path());
    let (q, _, _) = open(config.clone());
    let id = q
        .enqueue_held("192.0.2.1", &env("a@x.org", &["b@y.org"]), &body(1))
        .await
        .unwrap();
    assert!(
        q.try_next_job().is_none(),
        "a held message is not delivered"
    );
    assert_eq!(q.show(&id).unwrap().summary.state, MessageState::Held);
    // Held across a restart too: the flag is in the message record itself.
    q.close().await;
    let (q, _, _) = open(config);
    assert_eq!(q.show(&id).unwrap().summary.state, MessageState::Held);
    assert!(q.try_next_job().is_none());
    q.release(&id).await.unwrap();
    let job = q.try_next_job().expect("released for delivery");
    assert_eq!(job.id(), &id);
    q.close().await;
}
