//! The running rule set: an [`ArcSwap`] snapshot, one reload path, and a debounced watcher.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use crate::compile::{CompileOptions, CompiledRules};
use crate::error::Error;
use crate::{Extractor, build};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is active; `versions` lists `name version` of its packs.
    Applied {
        /// Pack names and versions now active.
        versions: String,
        /// Time spent loading, compiling and testing.
        elapsed: Duration,
    },
    /// The files did not change since the active snapshot was built.
    Unchanged,
}

/// Holds the active [`CompiledRules`]; readers take a snapshot once per message and keep it.
///
/// Reloads are serialised; a failed reload leaves the running snapshot in place.
pub struct RuleStore {
    dir: PathBuf,
    options: CompileOptions,
    extractor: Option<Arc<dyn Extractor>>,
    current: ArcSwap<CompiledRules>,
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleStore")
            .field("dir", &self.dir)
            .field("versions", &self.current.load().versions())
            .finish()
    }
}

impl RuleStore {
    /// Loads, compiles and tests the packs in `dir`; fails if they do not pass.
    pub fn open(
        dir: impl Into<PathBuf>,
        options: CompileOptions,
        extractor: Option<Arc<dyn Extractor>>,
    ) -> Result<Self, Error> {
        let dir = dir.into();
        let rules = build(&dir, &options, extractor.as_deref())?;
        Ok(Self {
            dir,
            options,
            extractor,
            current: ArcSwap::from_pointee(rules),
            reload_lock: Mutex::new(()),
        })
    }

    /// The active snapshot. Hold it for the whole of one message.
    pub fn snapshot(&self) -> Arc<CompiledRules> {
        self.current.load_full()
    }

    /// The rules folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The one reload path: load → compile → run the packs' tests → swap.
    ///
    /// On any error the running snapshot stays active and the error names the file, line and
    /// rule. CPU-bound: call it from a blocking thread, never on the SMTP path.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = std::time::Instant::now();
        let (loaded, fingerprint) = crate::loader::load_dir(&self.dir)?;
        if fingerprint == self.current.load().fingerprint() {
            return Ok(ReloadOutcome::Unchanged);
        }
        let rules = crate::compile::compile(&loaded, fingerprint, &self.options)?;
        crate::compile::run_tests(&rules, self.extractor.as_deref())?;
        let versions = rules.versions();
        self.current.store(Arc::new(rules));
        tracing::info!(dir = %self.dir.display(), %versions, "rule packs applied");
        Ok(ReloadOutcome::Applied {
            versions,
            elapsed: started.elapsed(),
        })
    }
}

/// Stops the watcher thread when dropped.
pub struct WatchHandle {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel, which ends the thread.
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watches the store's folder; after changes settle for `debounce`, calls `trigger`.
///
/// `trigger` is where the binary sends its one reload request (shared with SIGHUP and the
/// admin endpoint); for simple uses it can call [`RuleStore::reload`] directly.
pub fn watch(
    dir: &Path,
    debounce: Duration,
    trigger: impl Fn() + Send + 'static,
) -> Result<WatchHandle, Error> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let thread = std::thread::Builder::new()
        .name("moat-rules-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Debounce: wait until no event arrives for `debounce`.
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(()) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                trigger();
            }
        })
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(WatchHandle {
        watcher: Some(watcher),
        thread: Some(thread),
    })
}
