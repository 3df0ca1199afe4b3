//! The embedded default next hop: a Maildir-style folder. Each recipient's copy is written to
//! `tmp/`, fsynced, then renamed into `new/` (atomic), and `new/` is fsynced.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::RelayError;

#[derive(Debug)]
pub(crate) struct Maildir {
    root: PathBuf,
    host: String,
    counter: AtomicU64,
}

impl Maildir {
    pub fn create(root: &Path, host: &str) -> Result<Self, RelayError> {
        for sub in ["tmp", "new", "cur"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| RelayError::Io {
                op: "create maildir",
                path: d,
                source: e,
            })?;
        }
        // A host name with a slash or a colon would break file names.
        let host = host.replace(['/', ':'], "_");
        Ok(Self {
            root: root.to_path_buf(),
            host,
            counter: AtomicU64::new(0),
        })
    }

    /// Delivers one copy; blocking (call from a blocking task).
    pub fn deliver(&self, mail_from: &str, rcpt: &str, message: &[u8]) -> std::io::Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            self.host
        );
        let tmp = self.root.join("tmp").join(&name);
        let new = self.root.join("new").join(&name);
        let mut f = File::create(&tmp)?;
        let header = format!(
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            mail_from.replace(['\r', '\n'], ""),
            rcpt.replace(['\r', '\n'], "")
        );
        let written = f
            .write_all(header.as_bytes())
            .and_then(|()| f.write_all(message))
            .and_then(|()| f.sync_data());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &new)?;
        File::open(self.root.join("new"))?.sync_all()?;
        Ok(new)
    }
}
