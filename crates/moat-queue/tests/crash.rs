//! Crash test: a child process stores and delivers messages concurrently and reports every
//! acknowledgement on stdout; it is killed with SIGKILL at a random moment, five times over
//! the same spool. After each kill, every acknowledged message whose delivery had not begun
//! must still be in the queue, and none whose delivery was recorded may come back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use moat_core::{Envelope, QueueId};
use moat_queue::{Outcome, Queue, QueueConfig, QueueMetrics, RcptOutcome};

const CHILD_ENV: &str = "MOAT_QUEUE_CRASH_CHILD_DIR";

fn config(dir: &std::path::Path) -> QueueConfig {
    let mut c = QueueConfig::new(dir);
    // Small segments so rotation and compaction happen while the child is killed.
    c.segment_size = 256 * 1024;
    c
}

fn open(dir: &std::path::Path) -> (Queue, moat_queue::RecoveryReport) {
    Queue::open(
        config(dir),
        QueueMetrics::new(&prometheus::Registry::new()).unwrap(),
    )
    .unwrap()
}

/// The child's work: 8 writers and 2 deliverers until killed. Run by `crash_survivors` only.
#[test]
#[ignore = "helper process for crash_survivors"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (q, _) = open(std::path::Path::new(&dir));
        // The test harness has printed "test crash_child ... " without a line end: end that
        // line so our first report is not glued to it.
        let mut stdout = std::io::stdout();
        writeln!(stdout).unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(stdout));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (q, out) = (q.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let env = Envelope {
                    mail_from: "a@x.test".into(),
                    rcpt_to: vec![format!("r{w}@y.test")],
                    ..Envelope::default()
                };
                let body = vec![b'm'; 1500 + w * 100];
                loop {
                    let id = q.enqueue("192.0.2.1", &env, &body).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {id}").unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for _ in 0..2 {
            let (q, out) = (q.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let job = q.next_job().await;
                    let id = job.id().clone();
                    let outcomes: Vec<RcptOutcome> = job
                        .rcpts()
                        .iter()
                        .map(|(i, _)| RcptOutcome {
                            rcpt: *i,
                            outcome: Outcome::Delivered("250 ok".into()),
                        })
                        .collect();
                    {
                        // Said before the result is recorded: killed in between, the message
                        // may be either finished or still queued.
                        let mut o = out.lock().unwrap();
                        writeln!(o, "TRY {id}").unwrap();
                        o.flush().unwrap();
                    }
                    q.complete(job, &outcomes, |_| None).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "DONE {id}").unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn note(
    line: &str,
    acked: &mut BTreeSet<QueueId>,
    tried: &mut BTreeSet<QueueId>,
    done: &mut BTreeSet<QueueId>,
) {
    let (set, id) = if let Some(id) = line.strip_prefix("ACK ") {
        (acked, id)
    } else if let Some(id) = line.strip_prefix("TRY ") {
        (tried, id)
    } else if let Some(id) = line.strip_prefix("DONE ") {
        (done, id)
    } else {
        return;
    };
    set.insert(QueueId(id.to_string()));
}

#[test]
fn crash_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeSet<QueueId> = BTreeSet::new();
    let mut done: BTreeSet<QueueId> = BTreeSet::new();
    let mut tried: BTreeSet<QueueId> = BTreeSet::new();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = 100 + (seed.wrapping_mul(round + 7) % 400);
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if line.starts_with("ACK ") {
                seen += 1;
            }
            note(&line, &mut acked, &mut tried, &mut done);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements already written to the pipe before the kill count too.
        for line in lines.map_while(Result::ok) {
            note(&line, &mut acked, &mut tried, &mut done);
        }
        assert!(seen >= kill_after, "child stopped early in round {round}");

        let (q, report) = open(dir.path());
        let present: BTreeSet<QueueId> = q.list().into_iter().map(|m| m.id).collect();
        let missing: Vec<_> = acked
            .iter()
            .filter(|id| !tried.contains(*id) && !present.contains(*id))
            .collect();
        assert!(missing.is_empty(), "round {round}: lost {missing:?}");
        let resurrected: Vec<_> = done.intersection(&present).collect();
        assert!(
            resurrected.is_empty(),
            "round {round}: came back {resurrected:?}"
        );
        for c in &report.corrupt {
            // Only an unacknowledged, torn tail may be found after a kill.
            assert_eq!(c.kind, moat_queue::CorruptKind::Truncated, "{c:?}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(q.close());
    }
    assert!(acked.len() >= 500);
    // Drain what is left: everything is readable and deliverable.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (q, _) = open(dir.path());
        let mut n = 0;
        while let Some(job) = q.try_next_job() {
            q.read_message(&job).unwrap();
            let o: Vec<RcptOutcome> = job
                .rcpts()
                .iter()
                .map(|(i, _)| RcptOutcome {
                    rcpt: *i,
                    outcome: Outcome::Delivered("250 ok".into()),
                })
                .collect();
            q.complete(job, &o, |_| None).await.unwrap();
            n += 1;
        }
        assert_eq!(q.stats().messages, 0);
        assert!(n > 0 || done.len() == acked.len());
        q.close().await;
    });
}
