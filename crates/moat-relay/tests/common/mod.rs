//! A small SMTP sink on loopback for relay tests: it records what arrives and answers each
//! recipient by its local part (`reject…` → 550, `later…` → 451, anything else → 250).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_core::Envelope;
use moat_queue::{Queue, QueueConfig, QueueMetrics, RetryPolicy};
use moat_relay::{Mode, NextHop, RelayConfig, TlsMode};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One transaction as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// RCPT arrived in the same read as MAIL (the client pipelined).
    pub pipelined: bool,
}

#[derive(Clone, Default)]
pub struct SinkOptions {
    pub pipelining: bool,
    /// Offer STARTTLS with this certificate chain and key (DER).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Reply to the end of data (default `250 2.0.0 Ok`).
    pub data_reply: Option<String>,
    /// Answer the greeting with this instead of 220.
    pub greeting: Option<String>,
    /// Close the connection right after answering the end of data (an idle timeout that
    /// strikes while the client keeps the connection in its pool).
    pub close_after_data: bool,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    pub max_concurrent: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(opts: SinkOptions) -> Sink {
        Self::start_on(0, opts).await
    }

    pub async fn start_on(port: u16, opts: SinkOptions) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let acceptor = opts.tls.as_ref().map(|(cert, key)| {
            let cert = rustls_pki_types::CertificateDer::from(cert.clone());
            let key = rustls_pki_types::PrivateKeyDer::try_from(key.clone()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (rec, conns, maxc) = (
            received.clone(),
            connections.clone(),
            max_concurrent.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                maxc.fetch_max(now, Ordering::SeqCst);
                let (rec, opts, acceptor, current) =
                    (rec.clone(), opts.clone(), acceptor.clone(), current.clone());
                tokio::spawn(async move {
                    let _ = session(stream, rec, opts, acceptor).await;
                    current.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Sink {
            addr,
            received,
            connections,
            max_concurrent,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn hop(&self, name: &str) -> NextHop {
        NextHop {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            tls: TlsMode::Off,
            max_connections: 4,
        }
    }
}

enum Step {
    Quit,
    StartTls,
}

async fn session(
    stream: tokio::net::TcpStream,
    rec: Arc<Mutex<Vec<Received>>>,
    opts: SinkOptions,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let greeting = opts
        .greeting
        .clone()
        .unwrap_or_else(|| "220 sink ESMTP".into());
    reader
        .get_mut()
        .write_all(format!("{greeting}\r\n").as_bytes())
        .await?;
    if !greeting.starts_with("220") {
        return Ok(());
    }
    match converse(&mut reader, &rec, &opts, false, acceptor.is_some()).await? {
        Step::Quit => Ok(()),
        Step::StartTls => {
            let Some(acceptor) = acceptor else {
                return Ok(());
            };
            let tls = acceptor.accept(reader.into_inner()).await?;
            let mut reader = BufReader::new(tls);
            converse(&mut reader, &rec, &opts, true, false).await?;
            Ok(())
        }
    }
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    rec: &Arc<Mutex<Vec<Received>>>,
    opts: &SinkOptions,
    tls: bool,
    offer_tls: bool,
) -> std::io::Result<Step> {
    let mut mail_from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut pipelined = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(Step::Quit);
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut r = String::from("250-sink\r\n");
            if opts.pipelining {
                r.push_str("250-PIPELINING\r\n");
            }
            if offer_tls {
                r.push_str("250-STARTTLS\r\n");
            }
            r.push_str("250-8BITMIME\r\n250-SIZE 100000000\r\n250 ENHANCEDSTATUSCODES");
            r
        } else if upper == "STARTTLS" && offer_tls {
            reader
                .get_mut()
                .write_all(b"220 2.0.0 go ahead\r\n")
                .await?;
            return Ok(Step::StartTls);
        } else if upper.starts_with("MAIL FROM:") {
            let addr = cmd[10..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<');
            mail_from = Some(addr.to_string());
            rcpts.clear();
            pipelined = !reader.buffer().is_empty();
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = cmd[8..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            if addr.starts_with("reject") {
                "550 5.1.1 no such user".into()
            } else if addr.starts_with("later") {
                "451 4.3.0 try again later".into()
            } else {
                rcpts.push(addr);
                "250 2.1.5 Ok".into()
            }
        } else if upper == "DATA" {
            if mail_from.is_none() || rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                reader
                    .get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if reader.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(Step::Quit);
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let l = if l.starts_with(b"..") {
                        &l[1..]
                    } else {
                        &l[..]
                    };
                    data.extend_from_slice(l);
                }
                let reply = opts
                    .data_reply
                    .clone()
                    .unwrap_or_else(|| "250 2.0.0 Ok: queued".into());
                if reply.starts_with('2') {
                    rec.lock().unwrap().push(Received {
                        mail_from: mail_from.take().unwrap_or_default(),
                        rcpts: std::mem::take(&mut rcpts),
                        data,
                        tls,
                        pipelined,
                    });
                }
                if opts.close_after_data {
                    reader
                        .get_mut()
                        .write_all(format!("{reply}\r\n").as_bytes())
                        .await?;
                    return Ok(Step::Quit);
                }
                reply
            }
        } else if upper == "RSET" {
            mail_from = None;
            rcpts.clear();
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            reader.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(Step::Quit);
        } else if upper == "NOOP" {
            "250 2.0.0 Ok".into()
        } else {
            "502 5.5.2 command not recognized".into()
        };
        reader
            .get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
    }
}

/// A free loopback port with nothing listening on it (connections are refused).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn test_config(dir: &std::path::Path, hops: Vec<NextHop>) -> RelayConfig {
    let mut c = RelayConfig::new("edge.test");
    c.hops = hops;
    c.mode = Mode::Failover;
    c.maildir = dir.join("Maildir");
    c.workers = 4;
    c.connect_timeout = Duration::from_secs(2);
    c.command_timeout = Duration::from_secs(5);
    c.data_timeout = Duration::from_secs(5);
    c
}

pub fn open_queue(dir: &std::path::Path, registry: &prometheus::Registry) -> Queue {
    let mut c = QueueConfig::new(dir.join("spool"));
    c.retry = RetryPolicy::default();
    Queue::open(c, QueueMetrics::new(registry).unwrap())
        .unwrap()
        .0
}

pub fn env(from: &str, to: &[&str]) -> Envelope {
    Envelope {
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        ..Envelope::default()
    }
}

/// Waits until `cond` holds, up to `secs` seconds.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for fam in registry.gather() {
        if fam.name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let all = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if all {
                return match fam.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
            }
        }
    }
    panic!("no metric {name} {labels:?}");
}
