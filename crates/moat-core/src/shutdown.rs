use tokio::sync::watch;

/// Held by the owner of the process; [`ShutdownTrigger::drain`] starts a graceful shutdown
/// and [`ShutdownTrigger::abort`] ends the grace period.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<u8>,
}

/// A cloneable view of the shutdown state, handed to every service and session.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u8>,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

impl ShutdownTrigger {
    /// A new trigger and its first receiver.
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(RUNNING);
        (Self { tx }, Shutdown { rx })
    }

    /// Stop accepting: listeners close, sessions finish their current transaction.
    pub fn drain(&self) {
        self.tx.send_if_modified(|s| {
            let changed = *s < DRAINING;
            *s = (*s).max(DRAINING);
            changed
        });
    }

    /// The grace period is over: sessions still open reply 421 and close.
    pub fn abort(&self) {
        self.tx.send_replace(ABORTING);
    }

    /// A receiver for a new service.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A signal that never fires (tests, one-shot tools).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(RUNNING);
        // Keep the sender alive for the life of the process so `changed()` never errors.
        std::mem::forget(tx);
        Self { rx }
    }

    /// True once draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() >= DRAINING
    }

    /// True once the grace period has ended.
    pub fn is_aborting(&self) -> bool {
        *self.rx.borrow() >= ABORTING
    }

    /// Resolves when draining begins (at once if it already has).
    pub async fn draining(&mut self) {
        let _ = self.rx.wait_for(|s| *s >= DRAINING).await;
    }

    /// Resolves when the grace period ends (at once if it already has).
    pub async fn aborting(&mut self) {
        let _ = self.rx.wait_for(|s| *s >= ABORTING).await;
    }
}
