//! Queue plus relay, end to end: SESSIONS concurrent writers store MESSAGES messages of SIZE
//! bytes (each fsynced before it counts as accepted) while the relay delivers them to an SMTP
//! hub at HOST:PORT (for example Postfix's smtp-sink). Prints accepted and delivered rates.
//!
//! ```text
//! cargo run --release -p moat-relay --example relay_throughput -- HOST PORT [MESSAGES] [SESSIONS] [SIZE] [SPOOL_DIR]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_core::{Envelope, ShutdownTrigger};
use moat_queue::{Queue, QueueConfig, QueueMetrics};
use moat_relay::{NextHop, Relay, RelayConfig, RelayMetrics, TlsMode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: relay_throughput HOST PORT [MESSAGES] [SESSIONS] [SIZE] [SPOOL_DIR]");
        std::process::exit(2);
    }
    let host = args[0].clone();
    let port: u16 = args[1].parse()?;
    let n: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let sessions: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let size: usize = args.get(4).map_or(Ok(4096), |s| s.parse())?;
    let spool = args.get(5).map_or_else(
        || std::env::temp_dir().join("moat-relay-bench"),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&spool);

    let registry = prometheus::Registry::new();
    let (queue, _) = Queue::open(QueueConfig::new(&spool), QueueMetrics::new(&registry)?)?;
    let mut config = RelayConfig::new("bench.moat.test");
    config.hops = vec![NextHop {
        name: "hub".into(),
        host,
        port,
        tls: TlsMode::Off,
        max_connections: 20,
    }];
    config.workers = 40;
    let relay = Relay::new(queue.clone(), config, RelayMetrics::new(&registry)?)?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let running = tokio::spawn(async move { relay.run(shutdown).await });

    let mut body = b"Subject: bench\r\nFrom: <a@bench.test>\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n",
        );
    }
    body.truncate(size.max(48));
    let body = Arc::new(body);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let q = queue.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let env = Envelope {
                mail_from: "a@bench.test".into(),
                rcpt_to: vec![format!("r{s}@hub.test")],
                ..Envelope::default()
            };
            for _ in (s..n).step_by(sessions) {
                q.enqueue("127.0.0.1", &env, &body).await.expect("stored");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let accepted = t0.elapsed();
    while queue.stats().messages > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = t0.elapsed();
    trigger.drain();
    running.await?;
    let stats = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "moat_queue_commits_total")
        .map_or(0.0, |f| f.get_metric()[0].get_counter().get_value());
    queue.close().await;
    let _ = std::fs::remove_dir_all(&spool);
    println!(
        "RESULT messages={n} sessions={sessions} size={size} accepted_per_s={:.0} end_to_end_per_s={:.0} fsyncs={stats}",
        n as f64 / accepted.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    Ok(())
}
