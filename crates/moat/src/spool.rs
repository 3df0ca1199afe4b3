//! The interim spool: one file per accepted message, fsynced (file, then directory entry)
//! before the 250 reply. The durable queue replaces it behind the same
//! [`MessageStore`] seam.
//!
//! File layout: `<dir>/<ID>.eml`, the message preceded by its envelope as
//! `Return-Path: <sender>` and one `X-Moat-Envelope-To: <rcpt>` line per recipient. A file is
//! written as `<ID>.tmp` and renamed only once its data is on disk, so a crash leaves either
//! a complete `.eml` or a `.tmp` that no reader takes for a message.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use moat_core::{Envelope, MessageStore, QueueId, SessionInfo, StoreError, StoreFuture};

/// A directory of fsynced message files.
pub struct FileSpool {
    dir: PathBuf,
    counter: AtomicU32,
}

impl FileSpool {
    /// Opens (creating if needed) the spool directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            counter: AtomicU32::new(0),
        })
    }

    /// A new identifier: microseconds since the epoch and a per-process counter, in hex, so
    /// identifiers sort by arrival and never repeat across restarts.
    fn next_id(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        format!("{micros:014X}{n:04X}")
    }
}

fn write_durably(dir: &Path, id: &str, env: &Envelope, message: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{id}.tmp"));
    let fin = dir.join(format!("{id}.eml"));
    let mut head = format!("Return-Path: <{}>\r\n", env.mail_from);
    for r in &env.rcpt_to {
        head.push_str(&format!("X-Moat-Envelope-To: <{r}>\r\n"));
    }
    let mut f = File::create(&tmp)?;
    f.write_all(head.as_bytes())?;
    f.write_all(message)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &fin)?;
    File::open(dir)?.sync_all()
}

impl MessageStore for FileSpool {
    fn store<'a>(
        &'a self,
        _session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a> {
        Box::pin(async move {
            let id = self.next_id();
            let (dir, env, message, id2) =
                (self.dir.clone(), env.clone(), message.to_vec(), id.clone());
            tokio::task::spawn_blocking(move || write_durably(&dir, &id2, &env, &message))
                .await
                .map_err(|e| StoreError {
                    reason: e.to_string(),
                })?
                .map_err(|e| StoreError {
                    reason: e.to_string(),
                })?;
            Ok(QueueId(id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_one_complete_file_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = FileSpool::open(dir.path()).unwrap();
        let env = Envelope {
            mail_from: "a@sender.test".into(),
            rcpt_to: vec!["b@example.test".into(), "c@example.test".into()],
            ..Envelope::default()
        };
        let info = SessionInfo {
            connector: "mx".into(),
            client: "192.0.2.1:1".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            helo: None,
            esmtp: true,
            tls: None,
            auth_user: None,
            may_relay: false,
        };
        let a = spool
            .store(&info, &env, b"Subject: 1\r\n\r\nx\r\n")
            .await
            .unwrap();
        let b = spool
            .store(&info, &env, b"Subject: 2\r\n\r\ny\r\n")
            .await
            .unwrap();
        assert_ne!(a, b);
        let text = fs::read_to_string(dir.path().join(format!("{a}.eml"))).unwrap();
        assert_eq!(
            text,
            "Return-Path: <a@sender.test>\r\nX-Moat-Envelope-To: <b@example.test>\r\n\
             X-Moat-Envelope-To: <c@example.test>\r\nSubject: 1\r\n\r\nx\r\n"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "tmp")
            .collect();
        assert!(leftovers.is_empty());
    }
}
