//! Moat's relay: empties the [`moat_queue::Queue`] towards the hub servers.
//!
//! - **Next hops** are an ordered list (host, port, TLS required / opportunistic / off).
//!   [`Mode::Failover`] tries them in order, the first available one taking the message (as
//!   Exchange does); [`Mode::Balance`] starts at a different hop for each message, so load
//!   spreads across the healthy ones, and fails over the same way.
//! - **Sessions** are reused for several messages, use PIPELINING when the hop offers it, and
//!   are limited per hop (`max_connections`, idle connections included).
//! - **Circuit breaker**: after `breaker_failures` consecutive connection or session failures a
//!   hop is skipped for `breaker_open_for`, then probed by one delivery; the
//!   `moat_relay_hop_circuit_open{hop}` gauge says so. When a hop answers again, every
//!   deferred message is made due at once instead of waiting for its next retry.
//! - **Per-recipient results**: 2xx delivered, 4xx retried (by the queue's schedule), 5xx
//!   bounced. A connection-level failure (refused, timeout, 421, TLS required but missing)
//!   sends the message to the next hop instead.
//! - **DSN**: bounced recipients produce one RFC 3464 report to the envelope sender, queued in
//!   the same commit as the bounce; never for the null sender.
//! - **Embedded default**: with no hops configured, messages are written into a local
//!   Maildir-style folder (`tmp/`, then an atomic rename into `new/`).
//!
//! # Example
//!
//! ```
//! use moat_core::{Envelope, ShutdownTrigger};
//! use moat_queue::{Queue, QueueConfig, QueueMetrics};
//! use moat_relay::{Relay, RelayConfig, RelayMetrics};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let registry = prometheus::Registry::new();
//! let (queue, _) = Queue::open(QueueConfig::new(dir.path().join("spool")), QueueMetrics::new(&registry)?)?;
//!
//! // No hubs configured: deliver into a local Maildir.
//! let mut config = RelayConfig::new("edge.example");
//! config.maildir = dir.path().join("Maildir");
//! let relay = Relay::new(queue.clone(), config, RelayMetrics::new(&registry)?)?;
//! let (trigger, shutdown) = ShutdownTrigger::new();
//! let running = tokio::spawn(async move { relay.run(shutdown).await });
//!
//! let env = Envelope {
//!     mail_from: "alice@example.org".into(),
//!     rcpt_to: vec!["bob@example.net".into()],
//!     ..Envelope::default()
//! };
//! queue.enqueue("192.0.2.7", &env, b"Subject: hi\r\n\r\nhello\r\n").await?;
//! while queue.stats().messages > 0 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! assert_eq!(std::fs::read_dir(dir.path().join("Maildir/new"))?.count(), 1);
//! trigger.drain();
//! running.await?;
//! queue.close().await;
//! # Ok(())
//! # }
//! ```

mod dsn;
mod error;
mod hop;
mod maildir;
mod metrics;
mod smtp;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moat_core::Shutdown;
use moat_queue::{Job, Outcome, Queue, QueueError, RcptOutcome};

pub use error::RelayError;
pub use metrics::RelayMetrics;

use crate::hop::{Hop, Transition};
use crate::maildir::Maildir;
use crate::smtp::{Reply, SessionError, Timeouts, TlsSetup};

/// Whether a hop's session must, may or must not use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS with a certificate that chains to the configured roots, or no delivery.
    Required,
    /// STARTTLS when offered, without authenticating the hop; plain text otherwise.
    Opportunistic,
    /// Never STARTTLS.
    Off,
}

/// How next hops share the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The first available hop in order takes every message.
    Failover,
    /// Each message starts at the next hop in turn; unavailable ones are skipped.
    Balance,
}

/// One hub server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Short name, used in logs and as the `hop` metric label (`[A-Za-z0-9_.-]`, 1–64).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port (25 or 587 usually).
    pub port: u16,
    /// STARTTLS policy.
    pub tls: TlsMode,
    /// Most connections open to this hop at once, idle ones included.
    pub max_connections: usize,
}

/// The relay's configuration. [`RelayConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// This node's name: EHLO argument and the DSNs' `Reporting-MTA`.
    pub hostname: String,
    /// How hops share the traffic.
    pub mode: Mode,
    /// Hub servers, in order. Empty: deliver into `maildir`.
    pub hops: Vec<NextHop>,
    /// The local Maildir used when no hop is configured.
    pub maildir: PathBuf,
    /// Messages delivered at once (32).
    pub workers: usize,
    /// TCP connect timeout (10 s).
    pub connect_timeout: Duration,
    /// Timeout for each command's reply (60 s).
    pub command_timeout: Duration,
    /// Timeout for sending the data and reading its final reply (180 s).
    pub data_timeout: Duration,
    /// An idle connection is reused within this time, closed after it (10 s).
    pub idle_timeout: Duration,
    /// A connection is closed after this many transactions (100).
    pub max_messages_per_connection: usize,
    /// Consecutive failures that open a hop's circuit (3).
    pub breaker_failures: u32,
    /// How long an open circuit skips its hop before a probe (30 s).
    pub breaker_open_for: Duration,
    /// PEM roots that hops with [`TlsMode::Required`] must chain to.
    pub ca_file: Option<PathBuf>,
}

impl RelayConfig {
    /// Defaults, delivering into `./maildir` until hops are added.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            mode: Mode::Failover,
            hops: Vec::new(),
            maildir: PathBuf::from("maildir"),
            workers: 32,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(180),
            idle_timeout: Duration::from_secs(10),
            max_messages_per_connection: 100,
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(30),
            ca_file: None,
        }
    }

    /// Checks the configuration; reports every problem at once.
    pub fn validate(&self) -> Result<(), RelayError> {
        let mut errors = Vec::new();
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_whitespace()) {
            errors.push(format!("hostname {:?} is not a host name", self.hostname));
        }
        if self.workers == 0 {
            errors.push("workers must be at least 1".into());
        }
        if self.max_messages_per_connection == 0 {
            errors.push("max_messages_per_connection must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hops.iter().enumerate() {
            let valid_name = (1..=64).contains(&h.name.len())
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && h.name != "local"
                && h.name != "none";
            if !valid_name {
                errors.push(format!(
                    "hops[{i}].name {:?}: use 1-64 of A-Z a-z 0-9 _ . - (not local or none)",
                    h.name
                ));
            }
            if !seen.insert(h.name.as_str()) {
                errors.push(format!("hops[{i}].name {:?} is used twice", h.name));
            }
            if h.host.is_empty() {
                errors.push(format!("hops[{i}].host is empty"));
            }
            if h.port == 0 {
                errors.push(format!("hops[{i}].port must not be 0"));
            }
            if h.max_connections == 0 {
                errors.push(format!("hops[{i}].max_connections must be at least 1"));
            }
            if h.tls == TlsMode::Required && self.ca_file.is_none() {
                errors.push(format!(
                    "hops[{i}] requires TLS but no ca_file names the roots to trust"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RelayError::Config(errors.join("; ")))
        }
    }
}

struct Inner {
    queue: Queue,
    cfg: RelayConfig,
    hops: Vec<Hop>,
    maildir: Option<Maildir>,
    tls: TlsSetup,
    next: AtomicUsize,
    metrics: RelayMetrics,
}

/// The running relay: workers that take due messages from the queue and deliver them.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("mode", &self.inner.cfg.mode)
            .field("hops", &self.inner.cfg.hops)
            .finish_non_exhaustive()
    }
}

/// No control characters, spaces or angle brackets: safe inside `<…>` on a command line.
fn address_is_safe(a: &str) -> bool {
    a.len() <= 512
        && a.chars()
            .all(|c| !c.is_control() && c != ' ' && c != '<' && c != '>')
}

fn outcome_of(reply: &Reply) -> Outcome {
    match reply.class() {
        2 => Outcome::Delivered(reply.to_string()),
        4 => Outcome::Transient(reply.to_string()),
        _ => Outcome::Permanent(reply.to_string()),
    }
}

fn result_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Delivered(_) => "delivered",
        Outcome::Transient(_) => "deferred",
        Outcome::Permanent(_) => "bounced",
    }
}

impl Relay {
    /// Validates the configuration and builds the relay (TLS setup, hops, the Maildir when no
    /// hop is configured). Nothing is delivered until [`Relay::run`].
    pub fn new(
        queue: Queue,
        config: RelayConfig,
        metrics: RelayMetrics,
    ) -> Result<Self, RelayError> {
        config.validate()?;
        let tls = tls::setup(config.ca_file.as_deref())?;
        let maildir = if config.hops.is_empty() {
            metrics.register_hop("local");
            Some(Maildir::create(&config.maildir, &config.hostname)?)
        } else {
            None
        };
        metrics.register_hop("none");
        let hops = config
            .hops
            .iter()
            .map(|h| Hop::new(h.clone(), metrics.clone()))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                cfg: config,
                hops,
                maildir,
                tls,
                next: AtomicUsize::new(0),
                metrics,
            }),
        })
    }

    /// Runs the delivery workers until `shutdown` starts draining; deliveries under way are
    /// finished (their results recorded) before it returns.
    pub async fn run(&self, shutdown: Shutdown) {
        let mut workers = tokio::task::JoinSet::new();
        if !self.inner.hops.is_empty() {
            // Probes hops whose circuit is open, so that deferred mail moves as soon as a
            // hop is back even when no new message arrives to try it.
            let relay = self.clone();
            let mut shutdown = shutdown.clone();
            let every = (self.inner.cfg.breaker_open_for / 2).max(Duration::from_millis(50));
            workers.spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.draining() => break,
                        () = tokio::time::sleep(every) => relay.probe_hops().await,
                    }
                }
            });
        }
        for _ in 0..self.inner.cfg.workers {
            let relay = self.clone();
            let mut shutdown = shutdown.clone();
            workers.spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.draining() => break,
                        job = relay.inner.queue.next_job() => relay.deliver(job).await,
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        tracing::info!("relay stopped");
    }

    /// Delivers one job and records the results in the queue.
    pub async fn deliver(&self, job: Job) {
        let inner = &self.inner;
        let message = match inner.queue.read_message(&job) {
            Ok(m) => Some(m),
            Err(QueueError::Corrupt(id)) => {
                tracing::error!(queue_id = %id, "stored message is damaged; bouncing it");
                None
            }
            Err(e) => {
                tracing::error!(queue_id = %job.id(), error = %e, "cannot read message; will retry");
                return;
            }
        };
        let results: Vec<(RcptOutcome, String)> = match &message {
            None => job
                .rcpts()
                .iter()
                .map(|(i, _)| {
                    (
                        RcptOutcome {
                            rcpt: *i,
                            outcome: Outcome::Permanent(
                                "554 5.3.0 the stored copy of the message is damaged".into(),
                            ),
                        },
                        "none".to_string(),
                    )
                })
                .collect(),
            Some(m) if inner.maildir.is_some() => self.to_maildir(&job, m).await,
            Some(m) => self.to_hops(&job, m).await,
        };
        let mut outcomes = Vec::with_capacity(results.len());
        for (o, hop) in results {
            inner
                .metrics
                .deliveries
                .with_label_values(&[&hop, result_label(&o.outcome)])
                .inc();
            tracing::debug!(queue_id = %job.id(), rcpt = o.rcpt, hop = %hop, result = result_label(&o.outcome), "recipient result");
            outcomes.push(o);
        }
        let qid = job.id().clone();
        let original = message.unwrap_or_default();
        let hostname = inner.cfg.hostname.clone();
        match inner
            .queue
            .complete(job, &outcomes, |b| {
                Some(dsn::build(&hostname, b, &original))
            })
            .await
        {
            Ok(done) => tracing::info!(
                queue_id = %qid,
                delivered = done.delivered,
                deferred = done.deferred,
                bounced = done.bounced,
                dsn = done.dsn.as_ref().map_or("-", |d| d.0.as_str()),
                "delivery attempt"
            ),
            Err(e) => {
                tracing::error!(queue_id = %qid, error = %e, "cannot record delivery results")
            }
        }
    }

    async fn to_maildir(&self, job: &Job, message: &[u8]) -> Vec<(RcptOutcome, String)> {
        let relay = self.clone();
        let from = job.mail_from().to_string();
        let rcpts = job.rcpts().to_vec();
        let message = message.to_vec();
        let qid = job.id().clone();
        let done = tokio::task::spawn_blocking(move || {
            let Some(md) = relay.inner.maildir.as_ref() else {
                return Vec::new();
            };
            rcpts
                .iter()
                .map(|(i, rcpt)| {
                    let outcome = match md.deliver(&from, rcpt, &message) {
                        Ok(path) => Outcome::Delivered(format!(
                            "250 2.0.0 delivered to maildir as {}",
                            path.file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                        )),
                        Err(e) => {
                            tracing::error!(queue_id = %qid, error = %e, "maildir delivery failed");
                            Outcome::Transient(format!("451 4.3.0 maildir write failed: {e}"))
                        }
                    };
                    (RcptOutcome { rcpt: *i, outcome }, "local".to_string())
                })
                .collect()
        })
        .await;
        done.unwrap_or_else(|e| {
            tracing::error!(error = %e, "maildir task failed");
            job.rcpts()
                .iter()
                .map(|(i, _)| {
                    (
                        RcptOutcome {
                            rcpt: *i,
                            outcome: Outcome::Transient("451 4.3.0 maildir task failed".into()),
                        },
                        "local".to_string(),
                    )
                })
                .collect()
        })
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.inner.cfg.connect_timeout,
            command: self.inner.cfg.command_timeout,
            data: self.inner.cfg.data_timeout,
        }
    }

    /// Hops in the order to try for the next message.
    fn order(&self) -> Vec<&Hop> {
        let hops = &self.inner.hops;
        let start = match self.inner.cfg.mode {
            Mode::Failover => 0,
            Mode::Balance => self.inner.next.fetch_add(1, Ordering::Relaxed) % hops.len().max(1),
        };
        hops[start..].iter().chain(&hops[..start]).collect()
    }

    async fn to_hops(&self, job: &Job, message: &[u8]) -> Vec<(RcptOutcome, String)> {
        // Addresses go into SMTP command lines: anything that could end or extend a command
        // is refused here, whatever the front end accepted.
        let refuse = |i: u32, why: &str| {
            (
                RcptOutcome {
                    rcpt: i,
                    outcome: Outcome::Permanent(why.to_string()),
                },
                "none".to_string(),
            )
        };
        if !address_is_safe(job.mail_from()) {
            return job
                .rcpts()
                .iter()
                .map(|(i, _)| refuse(*i, "553 5.1.7 sender address cannot be relayed"))
                .collect();
        }
        let mut results = Vec::new();
        let rcpts: Vec<(u32, String)> = job
            .rcpts()
            .iter()
            .filter(|(i, a)| {
                let ok = !a.is_empty() && address_is_safe(a);
                if !ok {
                    results.push(refuse(*i, "553 5.1.3 recipient address cannot be relayed"));
                }
                ok
            })
            .cloned()
            .collect();
        if rcpts.is_empty() {
            return results;
        }
        let t = self.timeouts();
        let probe_window = t.connect + t.command;
        let mut last = None;
        for hop in self.order() {
            if !hop.allow(probe_window) {
                continue;
            }
            match self.try_hop(hop, job, &rcpts, message, t).await {
                Ok(replies) => {
                    results.extend(replies.iter().map(|(i, r)| {
                        (
                            RcptOutcome {
                                rcpt: *i,
                                outcome: outcome_of(r),
                            },
                            hop.cfg.name.clone(),
                        )
                    }));
                    return results;
                }
                Err(e) => {
                    tracing::warn!(queue_id = %job.id(), hop = %hop.cfg.name, error = %e, "next hop failed; trying the next one");
                    last = Some(format!("{}: {e}", hop.cfg.name));
                }
            }
        }
        let reason = format!(
            "451 4.4.1 no next hop took the message ({})",
            last.as_deref().unwrap_or("every next hop is marked down")
        );
        results.extend(rcpts.iter().map(|(i, _)| {
            (
                RcptOutcome {
                    rcpt: *i,
                    outcome: Outcome::Transient(reason.clone()),
                },
                "none".to_string(),
            )
        }));
        results
    }

    async fn try_hop(
        &self,
        hop: &Hop,
        job: &Job,
        rcpts: &[(u32, String)],
        message: &[u8],
        t: Timeouts,
    ) -> Result<Vec<(u32, Reply)>, SessionError> {
        let cfg = &self.inner.cfg;
        let mut stale = 0;
        loop {
            let mut lease = match hop
                .checkout(&cfg.hostname, &self.inner.tls, t, cfg.idle_timeout)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    hop.failure(cfg.breaker_failures, cfg.breaker_open_for, &e);
                    return Err(e);
                }
            };
            let sent = lease
                .conn
                .send(
                    job.mail_from(),
                    rcpts,
                    message,
                    job.eight_bit(),
                    job.smtputf8(),
                    t,
                )
                .await;
            match sent {
                Ok(replies) => {
                    hop.checkin(lease, cfg.max_messages_per_connection, t);
                    if hop.success() == Transition::Closed {
                        let n = self.inner.queue.retry_deferred();
                        tracing::info!(hop = %hop.cfg.name, messages = n, "retrying deferred messages now");
                    }
                    return Ok(replies);
                }
                Err(e) => {
                    let reused = lease.reused;
                    hop.discard(lease);
                    // The hop may have closed an idle connection we still held: try a fresh one.
                    if reused && stale < 2 {
                        stale += 1;
                        tracing::debug!(hop = %hop.cfg.name, error = %e, "reused connection failed");
                        continue;
                    }
                    hop.failure(cfg.breaker_failures, cfg.breaker_open_for, &e);
                    return Err(e);
                }
            }
        }
    }

    async fn probe_hops(&self) {
        let cfg = &self.inner.cfg;
        let t = self.timeouts();
        let window = t.connect + t.command;
        for hop in &self.inner.hops {
            if !hop.wants_probe() || !hop.allow(window) {
                continue;
            }
            let checkout = hop.checkout(&cfg.hostname, &self.inner.tls, t, cfg.idle_timeout);
            match tokio::time::timeout(window, checkout).await {
                Ok(Ok(lease)) => {
                    hop.checkin(lease, cfg.max_messages_per_connection, t);
                    if hop.success() == Transition::Closed {
                        let n = self.inner.queue.retry_deferred();
                        tracing::info!(hop = %hop.cfg.name, messages = n, "probe succeeded; retrying deferred messages now");
                    }
                }
                Ok(Err(e)) => {
                    hop.failure(cfg.breaker_failures, cfg.breaker_open_for, &e);
                }
                Err(_) => {
                    let e = SessionError::Timeout("probe");
                    hop.failure(cfg.breaker_failures, cfg.breaker_open_for, &e);
                }
            }
        }
    }

    /// Whether each hop's circuit is open now, in configuration order (for the admin API).
    pub fn hop_status(&self) -> Vec<(String, bool)> {
        self.inner
            .hops
            .iter()
            .map(|h| (h.cfg.name.clone(), h.is_open()))
            .collect()
    }
}
