//! Measures durable stores per second against concurrency: the group-committing queue beside
//! a file-per-message baseline (write, fsync the file, fsync the directory) on the same disk.
//!
//! ```text
//! cargo run --release -p moat-queue --example commit_throughput -- [DIR] [MESSAGES] [SIZE]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use moat_core::Envelope;
use moat_queue::{Queue, QueueConfig, QueueMetrics};

fn env() -> Envelope {
    Envelope {
        mail_from: "sender@example.org".into(),
        rcpt_to: vec!["rcpt@example.net".into()],
        ..Envelope::default()
    }
}

async fn queue_run(dir: &Path, n: usize, conc: usize, body: Arc<Vec<u8>>) -> (f64, u64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let registry = prometheus::Registry::new();
    let (q, _) = Queue::open(QueueConfig::new(dir), QueueMetrics::new(&registry).unwrap()).unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let q = q.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let e = env();
            for _ in (w..n).step_by(conc) {
                q.enqueue("192.0.2.1", &e, &body).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let fsyncs = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "moat_queue_commits_total")
        .map_or(0, |f| f.get_metric()[0].get_counter().get_value() as u64);
    let commit_ms = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "moat_queue_commit_seconds")
        .map_or(0.0, |f| {
            let h = f.get_metric()[0].get_histogram();
            1000.0 * h.get_sample_sum() / h.get_sample_count().max(1) as f64
        });
    q.close().await;
    (rate, fsyncs, commit_ms)
}

fn file_store(dir: &Path, i: usize, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{i}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(format!("{i}.msg")))?;
    std::fs::File::open(dir)?.sync_all()
}

async fn files_run(dir: &Path, n: usize, conc: usize, body: Arc<Vec<u8>>) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let body = body.clone();
        let dir: PathBuf = dir.to_path_buf();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(conc) {
                let body = body.clone();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || file_store(&dir, i, &body))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = PathBuf::from(args.next().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("moat-queue-bench")
            .display()
            .to_string()
    }));
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let body = Arc::new(vec![b'x'; size]);
    println!("messages={n} size={size}");
    for conc in [1, 4, 20, 64] {
        let (rate, fsyncs, commit_ms) = queue_run(&base.join("queue"), n, conc, body.clone()).await;
        let files = files_run(&base.join("files"), n, conc, body.clone()).await;
        println!(
            "RESULT concurrency={conc} queue_msgs_per_s={rate:.0} queue_msgs_per_fsync={:.1} queue_commit_ms={commit_ms:.2} file_per_msg_per_s={files:.0}",
            n as f64 / fsyncs.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
