//! The listener of one receive connector: accepts connections, applies the connection
//! limits and the PROXY protocol, and runs one task per session.
//!
//! Order of checks for a new connection: total connections on the connector (421 4.7.0) →
//! PROXY header when the peer is a trusted balancer (refused without a reply when missing or
//! invalid) → connections per client address and per client network, /24 or /64 (421 4.7.0) → the connector's remote ranges
//! (554 5.7.1) → stages' connect phase → greeting.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use moat_core::{Reply, SessionInfo, Shutdown, client_net};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::connector::Connector;
use crate::metrics::{ConnResult, ConnectorMetrics};
use crate::proxy;
use crate::replies;
use crate::session::{ServerContext, Session};

/// Connection counts of one connector, total and per client address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_net: HashMap<IpNet, usize>,
}

fn release<K: Eq + std::hash::Hash>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// Decrements the counts when a connection ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(ip) = self.ip {
            release(&mut c.per_ip, ip);
            release(&mut c.per_net, client_net(ip));
        }
    }
}

/// A bound connector, ready to serve.
pub struct Listener {
    listener: TcpListener,
    connector: Arc<Connector>,
    ctx: Arc<ServerContext>,
    metrics: ConnectorMetrics,
    counts: Arc<Mutex<Counts>>,
}

impl Listener {
    /// Binds the connector's address.
    pub async fn bind(
        connector: Arc<Connector>,
        ctx: Arc<ServerContext>,
        metrics: ConnectorMetrics,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(connector.bind).await?;
        Ok(Self {
            listener,
            connector,
            ctx,
            metrics,
            counts: Arc::default(),
        })
    }

    /// The bound address (useful when the configuration asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until draining begins, then waits for the sessions, which finish
    /// their transaction (or, once the grace period ends, reply 421) and close.
    pub async fn serve(self, shutdown: Shutdown) {
        let mut sessions = JoinSet::new();
        let mut drain = shutdown.clone();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let conn = ConnectionTask {
                            connector: self.connector.clone(),
                            ctx: self.ctx.clone(),
                            metrics: self.metrics.clone(),
                            counts: self.counts.clone(),
                            shutdown: shutdown.clone(),
                        };
                        sessions.spawn(conn.run(stream, peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(connector = %self.connector.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = drain.draining() => break,
            }
        }
        drop(self.listener);
        tracing::info!(connector = %self.connector.name, open = sessions.len(), "listener closed, draining sessions");
        while sessions.join_next().await.is_some() {}
    }
}

struct ConnectionTask {
    connector: Arc<Connector>,
    ctx: Arc<ServerContext>,
    metrics: ConnectorMetrics,
    counts: Arc<Mutex<Counts>>,
    shutdown: Shutdown,
}

impl ConnectionTask {
    async fn run(self, mut stream: TcpStream, peer: SocketAddr) {
        let conn = &self.connector;
        let mut slot = {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            c.total += 1;
            Slot {
                counts: self.counts.clone(),
                ip: None,
            }
        };
        if self.count_total() > conn.max_connections {
            self.metrics.connection(ConnResult::Limit);
            tracing::info!(connector = %conn.name, client = %peer.ip(), "connection limit reached");
            refuse(&mut stream, replies::too_many_connections()).await;
            return;
        }
        let local = stream.local_addr().unwrap_or(conn.bind);
        let (client, local) = if conn.expects_proxy(peer.ip()) {
            match proxy::read_header(&mut stream, conn.limits.proxy_timeout).await {
                Ok(addrs) => (
                    addrs.source.unwrap_or(peer),
                    addrs.destination.unwrap_or(local),
                ),
                Err(e) => {
                    self.metrics.connection(ConnResult::Proxy);
                    tracing::warn!(connector = %conn.name, balancer = %peer.ip(), error = %e, "PROXY header refused");
                    return;
                }
            }
        } else {
            (peer, local)
        };
        let ip = client.ip();
        let (per_ip, per_net) = {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.per_ip.entry(ip).or_insert(0);
            *n += 1;
            let per_ip = *n;
            let n = c.per_net.entry(client_net(ip)).or_insert(0);
            *n += 1;
            slot.ip = Some(ip);
            (per_ip, *n)
        };
        if per_ip > conn.max_connections_per_ip || per_net > conn.max_connections_per_net {
            self.metrics.connection(ConnResult::Limit);
            tracing::info!(connector = %conn.name, client = %ip, per_ip, per_net, "per-client connection limit reached");
            refuse(&mut stream, replies::too_many_connections()).await;
            return;
        }
        if !conn.allows_client(ip) {
            self.metrics.connection(ConnResult::ClientRange);
            tracing::info!(connector = %conn.name, client = %ip, "client outside the connector's remote ranges");
            refuse(&mut stream, replies::client_not_allowed()).await;
            return;
        }
        if self.shutdown.is_draining() {
            refuse(&mut stream, replies::shutting_down(&self.ctx.hostname)).await;
            return;
        }
        self.metrics.connection(ConnResult::Accepted);
        self.metrics.sessions_active.inc();
        tracing::debug!(connector = %conn.name, client = %client, "session start");
        let info = SessionInfo {
            connector: conn.name.clone(),
            client,
            local,
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            may_relay: false,
        };
        Session::new(
            stream,
            conn.clone(),
            self.ctx.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
            info,
        )
        .run()
        .await;
        self.metrics.sessions_active.dec();
        drop(slot);
    }

    fn count_total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Sends one reply and closes, without waiting long for a client that does not read.
async fn refuse(stream: &mut TcpStream, reply: Reply) {
    let wire = reply.to_string();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = stream.write_all(wire.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
