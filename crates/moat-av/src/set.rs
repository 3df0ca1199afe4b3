//! Engines at run time: each wrapped in a scan timeout, a concurrency limit and a circuit
//! breaker, and grouped into a set that scans with `all` of them or the first that works.
//!
//! Layer order around one engine, outermost first: circuit breaker (fail fast while open) →
//! concurrency limit (waiting at most the scan timeout, else overload) → scan timeout →
//! engine. The stage's message timeout bounds the sum.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use moat_core::Shutdown;
use tokio::sync::Semaphore;

use crate::engine::{AntivirusEngine, ScanResult};
use crate::error::{AvError, AvErrorKind};
use crate::metrics::{AvMetrics, EngineHandles};

/// How several engines share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every engine scans every buffer; any detection wins; any failure is a failure.
    All,
    /// Engines in order: the first one that answers decides; a failed or open one is skipped.
    Failover,
}

/// Limits applied around one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Bound on one scan; the wait for a concurrency permit is bounded by the same amount.
    pub scan_timeout: Duration,
    /// Most scans in flight on this engine.
    pub concurrency: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses scans before one probe is let through.
    pub breaker_open_for: Duration,
}

impl Default for EngineLimits {
    /// 30 s per scan, 8 in flight, open after 3 failures for 10 s.
    fn default() -> Self {
        Self {
            scan_timeout: Duration::from_secs(30),
            concurrency: 8,
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(10),
        }
    }
}

/// One engine as configured: a name (the `engine` metric label), the engine and its limits.
pub struct EngineSpec {
    /// Configured name; unique within a set.
    pub name: String,
    /// The engine.
    pub engine: Arc<dyn AntivirusEngine>,
    /// Timeout, concurrency and breaker settings.
    pub limits: EngineLimits,
}

/// A circuit breaker's state, as shown to `/readyz` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Scans go through.
    Closed,
    /// Scans are refused until the open period ends.
    Open,
    /// One probe scan (or health check) is deciding whether to close.
    Probing,
}

impl BreakerState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::Probing => "probing",
        }
    }
}

/// One engine's state, for `/readyz` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// Configured name.
    pub name: String,
    /// Breaker state.
    pub state: BreakerState,
    /// Consecutive failures counted so far.
    pub consecutive_failures: u32,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    Probing { since: Instant },
}

#[derive(Debug)]
struct Breaker {
    failures: u32,
    state: State,
}

enum Allow {
    Yes,
    Probe,
    No,
}

impl Breaker {
    fn allow(&mut self, now: Instant, probe_window: Duration) -> Allow {
        match self.state {
            State::Closed => Allow::Yes,
            State::Open { until } if now >= until => {
                self.state = State::Probing { since: now };
                Allow::Probe
            }
            State::Open { .. } => Allow::No,
            // A probe whose caller went away (cancelled) must not keep the breaker shut forever.
            State::Probing { since } if now.duration_since(since) > probe_window => {
                self.state = State::Probing { since: now };
                Allow::Probe
            }
            State::Probing { .. } => Allow::No,
        }
    }

    /// Returns true when this closed a breaker that was not closed.
    fn success(&mut self) -> bool {
        self.failures = 0;
        let was_closed = matches!(self.state, State::Closed);
        self.state = State::Closed;
        !was_closed
    }

    /// Returns true when this opened a closed breaker.
    fn failure(&mut self, threshold: u32, open_for: Duration, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let was_closed = matches!(self.state, State::Closed);
        if !was_closed || self.failures >= threshold {
            self.state = State::Open {
                until: now + open_for,
            };
        }
        was_closed && !matches!(self.state, State::Closed)
    }

    /// A probe that could not run (overload) hands the probe slot back.
    fn release_probe(&mut self, now: Instant) {
        if matches!(self.state, State::Probing { .. }) {
            self.state = State::Open { until: now };
        }
    }

    fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::Probing { .. } => BreakerState::Probing,
        }
    }
}

fn lock(m: &Mutex<Breaker>) -> MutexGuard<'_, Breaker> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Guarded {
    name: String,
    engine: Arc<dyn AntivirusEngine>,
    limits: EngineLimits,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    metrics: EngineHandles,
}

impl Guarded {
    async fn scan(&self, data: &[u8]) -> Result<ScanResult, AvError> {
        let probe = match lock(&self.breaker).allow(Instant::now(), self.limits.scan_timeout) {
            Allow::Yes => false,
            Allow::Probe => true,
            Allow::No => {
                self.metrics.error(AvErrorKind::CircuitOpen);
                return Err(AvError::new(
                    AvErrorKind::CircuitOpen,
                    format!("engine {} is not being asked (circuit open)", self.name),
                ));
            }
        };
        // The wait for a permit has its own bound: a scan that queued behind others still
        // gets its whole timeout, so overload (ours) is never charged to the engine.
        let permit =
            match tokio::time::timeout(self.limits.scan_timeout, self.permits.acquire()).await {
                Ok(Ok(p)) => p,
                _ => {
                    if probe {
                        lock(&self.breaker).release_probe(Instant::now());
                    }
                    self.metrics.error(AvErrorKind::Overloaded);
                    return Err(AvError::new(
                        AvErrorKind::Overloaded,
                        format!(
                            "engine {}: all {} scan slots busy for the whole timeout",
                            self.name, self.limits.concurrency
                        ),
                    ));
                }
            };
        let start = Instant::now();
        let result =
            match tokio::time::timeout(self.limits.scan_timeout, self.engine.scan(data)).await {
                Ok(r) => r,
                Err(_) => Err(AvError::new(
                    AvErrorKind::Timeout,
                    format!(
                        "engine {}: no answer within {:?}",
                        self.name, self.limits.scan_timeout
                    ),
                )),
            };
        drop(permit);
        self.metrics.seconds(start.elapsed().as_secs_f64());
        match &result {
            Ok(r) => {
                self.metrics.result(r.as_str());
                if lock(&self.breaker).success() {
                    self.metrics.up.set(1);
                    tracing::info!(engine = %self.name, "antivirus engine answers again; circuit closed");
                }
            }
            Err(e) => {
                self.metrics.error(e.kind());
                if e.counts_against_engine() {
                    self.failed(e);
                } else if probe {
                    lock(&self.breaker).release_probe(Instant::now());
                }
            }
        }
        result
    }

    fn failed(&self, e: &AvError) {
        let opened = lock(&self.breaker).failure(
            self.limits.breaker_failures,
            self.limits.breaker_open_for,
            Instant::now(),
        );
        if opened {
            self.metrics.up.set(0);
            tracing::warn!(engine = %self.name, error = %e, "antivirus engine failing; circuit opened");
        } else {
            tracing::debug!(engine = %self.name, error = %e, "antivirus engine failure");
        }
    }

    /// Health-checks an engine whose open period is over; closes the breaker on success.
    async fn probe(&self) -> Option<Result<String, AvError>> {
        if !matches!(
            lock(&self.breaker).allow(Instant::now(), self.limits.scan_timeout),
            Allow::Probe
        ) {
            return None;
        }
        let r = match tokio::time::timeout(self.limits.scan_timeout, self.engine.health()).await {
            Ok(r) => r,
            Err(_) => Err(AvError::new(
                AvErrorKind::Timeout,
                format!("engine {}: health check timed out", self.name),
            )),
        };
        match &r {
            Ok(version) => {
                if lock(&self.breaker).success() {
                    self.metrics.up.set(1);
                    tracing::info!(engine = %self.name, %version, "antivirus engine healthy again; circuit closed");
                }
            }
            Err(e) => self.failed(e),
        }
        Some(r)
    }

    fn status(&self) -> EngineStatus {
        let b = lock(&self.breaker);
        EngineStatus {
            name: self.name.clone(),
            state: b.state(),
            consecutive_failures: b.failures,
        }
    }
}

/// Engines with their limits and breakers, used as one scanner.
pub struct EngineSet {
    mode: Mode,
    engines: Vec<Guarded>,
}

impl std::fmt::Debug for EngineSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSet")
            .field("mode", &self.mode)
            .field(
                "engines",
                &self.engines.iter().map(|g| &g.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EngineSet {
    /// Checks the specs (at least one engine, unique names, non-zero limits) and builds the
    /// set; resolves every engine's metric series.
    pub fn new(mode: Mode, specs: Vec<EngineSpec>, metrics: &AvMetrics) -> Result<Self, AvError> {
        let mut problems = Vec::new();
        if specs.is_empty() {
            problems.push("no antivirus engine configured".to_owned());
        }
        for (i, s) in specs.iter().enumerate() {
            if s.name.is_empty() {
                problems.push(format!("engine {i} has an empty name"));
            }
            if specs[..i].iter().any(|o| o.name == s.name) {
                problems.push(format!("engine name {:?} is used twice", s.name));
            }
            if s.limits.concurrency == 0 {
                problems.push(format!(
                    "engine {:?}: concurrency must be at least 1",
                    s.name
                ));
            }
            if s.limits.scan_timeout.is_zero() {
                problems.push(format!("engine {:?}: scan timeout must be > 0", s.name));
            }
            if s.limits.breaker_failures == 0 {
                problems.push(format!(
                    "engine {:?}: breaker failures must be at least 1",
                    s.name
                ));
            }
        }
        if !problems.is_empty() {
            return Err(AvError::new(AvErrorKind::Config, problems.join("; ")));
        }
        let engines = specs
            .into_iter()
            .map(|s| Guarded {
                metrics: metrics.register_engine(&s.name),
                permits: Semaphore::new(s.limits.concurrency),
                breaker: Mutex::new(Breaker {
                    failures: 0,
                    state: State::Closed,
                }),
                name: s.name,
                engine: s.engine,
                limits: s.limits,
            })
            .collect();
        Ok(Self { mode, engines })
    }

    /// The mode this set scans in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Scans one buffer according to the mode.
    pub async fn scan(&self, data: &[u8]) -> Result<ScanResult, AvError> {
        match self.mode {
            Mode::Failover => {
                let mut last = None;
                for g in &self.engines {
                    match g.scan(data).await {
                        Ok(r) => return Ok(r),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| AvError::new(AvErrorKind::Config, "no engine")))
            }
            Mode::All => {
                let futs = self
                    .engines
                    .iter()
                    .map(|g| Box::pin(g.scan(data)) as Pin<Box<dyn Future<Output = _> + Send>>)
                    .collect();
                combine_all(join_all(futs).await)
            }
        }
    }

    /// Each engine's breaker state.
    pub fn status(&self) -> Vec<EngineStatus> {
        self.engines.iter().map(Guarded::status).collect()
    }

    /// Ready when a scan could be answered now: every engine's breaker closed (`all`) or at
    /// least one (`failover`).
    pub fn is_ready(&self) -> bool {
        let closed = |g: &Guarded| g.status().state == BreakerState::Closed;
        match self.mode {
            Mode::All => self.engines.iter().all(closed),
            Mode::Failover => self.engines.iter().any(closed),
        }
    }

    /// Health-checks every engine whose breaker is due a probe (closing it on success), so an
    /// engine comes back even when no mail arrives. Returns how many engines were probed.
    pub async fn probe_open_engines(&self) -> usize {
        let mut n = 0;
        for g in &self.engines {
            if g.probe().await.is_some() {
                n += 1;
            }
        }
        n
    }

    /// Runs [`EngineSet::probe_open_engines`] every `every` until shutdown begins.
    pub fn spawn_prober(
        self: &Arc<Self>,
        every: Duration,
        mut shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let set = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.draining() => return,
                    _ = tick.tick() => { set.probe_open_engines().await; }
                }
            }
        })
    }
}

/// `all` mode: a detection wins over everything; then a failure; then unscannable; else clean.
fn combine_all(results: Vec<Result<ScanResult, AvError>>) -> Result<ScanResult, AvError> {
    let mut failure = None;
    let mut unscannable = None;
    for r in results {
        match r {
            Ok(ScanResult::Infected(s)) => return Ok(ScanResult::Infected(s)),
            Ok(ScanResult::Unscannable(why)) => {
                unscannable.get_or_insert(why);
            }
            Ok(ScanResult::Clean) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(unscannable.map_or(ScanResult::Clean, ScanResult::Unscannable))
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future to completion concurrently on the current task.
async fn join_all<T>(mut futs: Vec<BoxFut<'_, T>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let open_for = Duration::from_secs(10);
        let window = Duration::from_secs(1);
        let mut b = Breaker {
            failures: 0,
            state: State::Closed,
        };
        assert!(!b.failure(3, open_for, t0));
        assert!(!b.failure(3, open_for, t0));
        assert!(b.failure(3, open_for, t0), "third failure opens");
        assert!(matches!(b.allow(t0, window), Allow::No));
        let t1 = t0 + open_for;
        assert!(matches!(b.allow(t1, window), Allow::Probe));
        assert!(
            matches!(b.allow(t1, window), Allow::No),
            "one probe at a time"
        );
        assert!(!b.failure(3, open_for, t1), "failed probe reopens");
        assert_eq!(b.state(), BreakerState::Open);
        let t2 = t1 + open_for;
        assert!(matches!(b.allow(t2, window), Allow::Probe));
        // The probe's caller vanished: after the window another probe may go.
        assert!(matches!(
            b.allow(t2 + window + Duration::from_millis(1), window),
            Allow::Probe
        ));
        assert!(b.success());
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(matches!(b.allow(t2, window), Allow::Yes));
    }

    #[test]
    fn all_mode_combination() {
        let inf = || Ok(ScanResult::Infected("X".into()));
        let err = || Err(AvError::new(AvErrorKind::Connect, "down"));
        let uns = || Ok(ScanResult::Unscannable("big".into()));
        let clean = || Ok(ScanResult::Clean);
        assert_eq!(
            combine_all(vec![err(), inf(), clean()]).unwrap(),
            ScanResult::Infected("X".into())
        );
        assert_eq!(
            combine_all(vec![clean(), uns(), err()]).unwrap_err().kind(),
            AvErrorKind::Connect
        );
        assert_eq!(
            combine_all(vec![clean(), uns()]).unwrap(),
            ScanResult::Unscannable("big".into())
        );
        assert_eq!(
            combine_all(vec![clean(), clean()]).unwrap(),
            ScanResult::Clean
        );
    }
}
