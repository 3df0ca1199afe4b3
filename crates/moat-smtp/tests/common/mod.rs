//! Shared harness for SMTP transcript tests over an in-memory stream.
#![allow(dead_code, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_core::{Envelope, MessageStore, QueueId, SessionInfo, Shutdown, StoreError, StoreFuture};
use moat_smtp::{Connector, Role, ServerContext, Session, SmtpMetrics};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// An in-memory store that records what the session accepted.
#[derive(Default)]
pub struct MemoryStore {
    pub messages: Mutex<Vec<(Envelope, Vec<u8>)>>,
    pub quarantined: Mutex<Vec<Vec<u8>>>,
    pub fail: bool,
}

impl MemoryStore {
    pub fn failing() -> Self {
        Self {
            fail: true,
            ..Self::default()
        }
    }
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
    pub fn last(&self) -> (Envelope, Vec<u8>) {
        self.messages
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a stored message")
    }
}

impl MessageStore for MemoryStore {
    fn store<'a>(
        &'a self,
        _session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a> {
        Box::pin(async move {
            if self.fail {
                return Err(StoreError {
                    reason: "disk full (test)".into(),
                });
            }
            let mut m = self.messages.lock().unwrap();
            m.push((env.clone(), message.to_vec()));
            Ok(QueueId(format!("T{}", m.len())))
        })
    }

    fn quarantine<'a>(
        &'a self,
        _session: &'a SessionInfo,
        _env: &'a Envelope,
        message: &'a [u8],
    ) -> StoreFuture<'a> {
        Box::pin(async move {
            let mut q = self.quarantined.lock().unwrap();
            q.push(message.to_vec());
            Ok(QueueId(format!("Q{}", q.len())))
        })
    }
}

pub fn mx() -> Connector {
    Connector::new("mx", "127.0.0.1:25".parse().unwrap(), Role::Mx)
}

pub fn info(client: &str) -> SessionInfo {
    SessionInfo {
        connector: "test".into(),
        client: format!("{client}:40000").parse().unwrap(),
        local: "127.0.0.1:25".parse().unwrap(),
        helo: None,
        esmtp: false,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

pub fn context(store: Arc<MemoryStore>) -> Arc<ServerContext> {
    Arc::new(ServerContext {
        hostname: "mx.example.test".into(),
        accepted_domains: vec!["example.test".into()],
        store,
        stages: vec![],
    })
}

/// A client end of a session.
pub struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Self {
            io: BufReader::new(io),
        }
    }

    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    pub async fn send(&mut self, text: &str) {
        self.send_raw(text.as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Reads one whole reply (all lines); returns them joined by `\n`. Empty at EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("reply within 10 s")
                .unwrap();
            if n == 0 {
                break;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                break;
            }
        }
        all.join("\n")
    }

    /// Reads a reply and asserts its last line starts with `prefix`.
    pub async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await;
        let last = r.lines().last().unwrap_or("");
        assert!(
            last.starts_with(prefix),
            "expected a reply starting {prefix:?}, got {r:?}"
        );
        r
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }
}

/// Starts a session over an in-memory duplex and returns the client end.
pub fn start(
    conn: Connector,
    ctx: Arc<ServerContext>,
    client: &str,
    shutdown: Shutdown,
) -> Client<tokio::io::DuplexStream> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let metrics = SmtpMetrics::unregistered().connector(&conn.name);
    tokio::spawn(Session::new(s, Arc::new(conn), ctx, metrics, shutdown, info(client)).run());
    Client::new(c)
}

/// Runs a transcript: `C: text` lines are sent with CRLF, `S: prefix` lines read one reply
/// each and check its last line starts with the prefix, `S: <closed>` checks EOF.
pub async fn transcript<S: AsyncRead + AsyncWrite + Unpin>(client: &mut Client<S>, script: &str) {
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "C:" {
            client.send("\r\n").await;
        } else if let Some(cmd) = line.strip_prefix("C: ") {
            client.send(&format!("{cmd}\r\n")).await;
        } else if let Some(want) = line.strip_prefix("S: ") {
            if want == "<closed>" {
                assert!(client.closed().await, "expected the server to close");
            } else {
                client.expect(want).await;
            }
        } else {
            panic!("bad transcript line {line:?}");
        }
    }
}
