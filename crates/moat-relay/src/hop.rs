//! One next hop at run time: its connection pool, concurrency limit and circuit breaker.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::smtp::{Conn, SessionError, Timeouts, TlsSetup};
use crate::{NextHop, RelayMetrics};

/// An idle connection keeps its concurrency permit: open connections never exceed the limit.
struct Idle {
    conn: Conn,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

/// A connection checked out of the pool (or freshly opened).
pub(crate) struct Lease {
    pub conn: Conn,
    permit: OwnedSemaphorePermit,
    pub reused: bool,
}

/// Counts consecutive failures; after `threshold` of them the hop is skipped for `open_for`,
/// then one probe is let through (half-open). A success closes it.
#[derive(Debug)]
pub(crate) struct Breaker {
    consecutive: u32,
    open_until: Option<Instant>,
}

/// What a breaker transition means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new() -> Self {
        Self {
            consecutive: 0,
            open_until: None,
        }
    }

    /// May a delivery be tried now? While half-open, only one probe per `probe_window`.
    pub fn allow(&mut self, now: Instant, probe_window: Duration) -> bool {
        match self.open_until {
            Some(t) if now < t => false,
            Some(_) => {
                self.open_until = Some(now + probe_window);
                true
            }
            None => true,
        }
    }

    pub fn success(&mut self) -> Transition {
        self.consecutive = 0;
        if self.open_until.take().is_some() {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    pub fn failure(&mut self, now: Instant, threshold: u32, open_for: Duration) -> Transition {
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive < threshold.max(1) {
            return Transition::None;
        }
        let was_open = self.open_until.is_some();
        self.open_until = Some(now + open_for);
        if was_open {
            Transition::None
        } else {
            Transition::Opened
        }
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now < t)
    }

    /// Open, and its time is up: a probe may find out whether the hop is back.
    pub fn wants_probe(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now >= t)
    }
}

pub(crate) struct Hop {
    pub cfg: NextHop,
    limit: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    returned: Notify,
    breaker: Mutex<Breaker>,
    pub metrics: RelayMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hop {
    pub fn new(cfg: NextHop, metrics: RelayMetrics) -> Self {
        metrics.register_hop(&cfg.name);
        Self {
            limit: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            cfg,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            breaker: Mutex::new(Breaker::new()),
            metrics,
        }
    }

    pub fn allow(&self, probe_window: Duration) -> bool {
        lock(&self.breaker).allow(Instant::now(), probe_window)
    }

    pub fn is_open(&self) -> bool {
        lock(&self.breaker).is_open(Instant::now())
    }

    pub fn wants_probe(&self) -> bool {
        lock(&self.breaker).wants_probe(Instant::now())
    }

    pub fn success(&self) -> Transition {
        let t = lock(&self.breaker).success();
        if t == Transition::Closed {
            self.metrics
                .circuit_open
                .with_label_values(&[&self.cfg.name])
                .set(0);
            tracing::info!(hop = %self.cfg.name, "next hop answers again; circuit closed");
        }
        t
    }

    pub fn failure(&self, threshold: u32, open_for: Duration, error: &SessionError) -> Transition {
        self.metrics
            .failures
            .with_label_values(&[&self.cfg.name])
            .inc();
        let t = lock(&self.breaker).failure(Instant::now(), threshold, open_for);
        if t == Transition::Opened {
            self.metrics
                .circuit_open
                .with_label_values(&[&self.cfg.name])
                .set(1);
            tracing::warn!(
                hop = %self.cfg.name,
                error = %error,
                open_for_s = open_for.as_secs(),
                "next hop failing; circuit opened"
            );
        }
        t
    }

    /// An idle connection if one is fresh enough, else a new one within the concurrency limit.
    pub async fn checkout(
        &self,
        helo: &str,
        tls: &TlsSetup,
        t: Timeouts,
        idle_timeout: Duration,
    ) -> Result<Lease, SessionError> {
        loop {
            let notified = self.returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let idle = lock(&self.idle).pop();
            if let Some(i) = idle {
                if i.since.elapsed() < idle_timeout {
                    self.metrics
                        .reuse
                        .with_label_values(&[&self.cfg.name])
                        .inc();
                    return Ok(Lease {
                        conn: i.conn,
                        permit: i.permit,
                        reused: true,
                    });
                }
                // Stale: close it, which frees its permit.
                tokio::spawn(i.conn.quit(t));
                continue;
            }
            tokio::select! {
                permit = self.limit.clone().acquire_owned() => {
                    let Ok(permit) = permit else {
                        return Err(SessionError::Protocol("hop closed".into()));
                    };
                    self.metrics.connections.with_label_values(&[&self.cfg.name]).inc();
                    let conn = Conn::open(&self.cfg, helo, tls, t).await?;
                    tracing::debug!(hop = %self.cfg.name, tls = conn.tls, "connected to next hop");
                    return Ok(Lease { conn, permit, reused: false });
                }
                () = &mut notified => {}
            }
        }
    }

    /// Returns a healthy connection to the pool, or closes it once it has carried enough.
    pub fn checkin(&self, lease: Lease, max_transactions: usize, t: Timeouts) {
        if lease.conn.transactions >= max_transactions {
            tokio::spawn(lease.conn.quit(t));
            drop(lease.permit);
            self.returned.notify_one();
            return;
        }
        lock(&self.idle).push(Idle {
            conn: lease.conn,
            permit: lease.permit,
            since: Instant::now(),
        });
        self.returned.notify_one();
    }

    /// A connection that failed is simply dropped; its permit returns with it.
    pub fn discard(&self, lease: Lease) {
        drop(lease);
        self.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_half_opens_and_closes() {
        let mut b = Breaker::new();
        let t0 = Instant::now();
        let open_for = Duration::from_secs(30);
        let probe = Duration::from_secs(5);
        assert_eq!(b.failure(t0, 3, open_for), Transition::None);
        assert_eq!(b.failure(t0, 3, open_for), Transition::None);
        assert!(b.allow(t0, probe));
        assert_eq!(b.failure(t0, 3, open_for), Transition::Opened);
        assert!(!b.allow(t0 + Duration::from_secs(29), probe));
        assert!(b.is_open(t0));
        // Half-open: one probe, then closed again until the probe reports.
        let later = t0 + Duration::from_secs(31);
        assert!(b.allow(later, probe));
        assert!(!b.allow(later, probe));
        // The probe fails: open again at once (no new transition to report).
        assert_eq!(b.failure(later, 3, open_for), Transition::None);
        assert!(!b.allow(later + Duration::from_secs(10), probe));
        let again = later + Duration::from_secs(31);
        assert!(b.allow(again, probe));
        assert_eq!(b.success(), Transition::Closed);
        assert!(b.allow(again, probe));
        assert_eq!(b.success(), Transition::None);
    }
}
