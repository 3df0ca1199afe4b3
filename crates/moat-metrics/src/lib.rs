//! Moat's admin listener: the Prometheus registry every crate registers its handles on, and
//! the axum router serving `/metrics`, `/healthz` and `/readyz`.
//!
//! - `/metrics`: the text exposition format (version 0.0.4) of the node's explicit registry.
//! - `/healthz`: 200 while the process is alive and serving its admin listener.
//! - `/readyz`: 200 only while the node accepts mail; 503 while starting and while draining,
//!   so a load balancer stops sending new connections before the listeners close.
//!
//! ```
//! use moat_metrics::{Admin, Readiness};
//! let admin = Admin::new(prometheus::Registry::new());
//! assert_eq!(admin.readiness(), Readiness::Starting);
//! admin.set_readiness(Readiness::Ready);
//! let _router: axum::Router = admin.router();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};

/// Whether the node should receive new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Configuration loaded, listeners not yet bound.
    Starting = 0,
    /// Accepting mail.
    Ready = 1,
    /// Shutting down: listeners closed or closing.
    Draining = 2,
}

impl Readiness {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Readiness::Ready,
            2 => Readiness::Draining,
            _ => Readiness::Starting,
        }
    }
}

/// A dependency `/readyz` asks about (antivirus engines, say).
struct Check {
    name: &'static str,
    critical: bool,
    up: Box<dyn Fn() -> bool + Send + Sync>,
}

struct Inner {
    registry: Registry,
    readiness: AtomicU8,
    ready_gauge: IntGauge,
    checks: std::sync::RwLock<Vec<Check>>,
}

/// The shared state of the admin listener. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

impl Admin {
    /// Wraps the node's registry and registers `moat_ready` on it.
    pub fn new(registry: Registry) -> Self {
        let ready_gauge = IntGauge::new("moat_ready", "1 while the node accepts mail, else 0")
            .expect("valid metric");
        // A registry that already has the gauge (a second Admin over it) keeps the first.
        let _ = registry.register(Box::new(ready_gauge.clone()));
        Self {
            inner: Arc::new(Inner {
                registry,
                readiness: AtomicU8::new(Readiness::Starting as u8),
                ready_gauge,
                checks: std::sync::RwLock::new(Vec::new()),
            }),
        }
    }

    /// Adds a dependency to `/readyz`. While the node is ready and `up` says no, a
    /// `critical` one makes `/readyz` answer 503 `not ready: NAME` (the node would refuse
    /// mail, so a load balancer should send it elsewhere); another one leaves 200 and says
    /// `ready (degraded: NAME)`.
    pub fn add_check(
        &self,
        name: &'static str,
        critical: bool,
        up: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let check = Check {
            name,
            critical,
            up: Box::new(up),
        };
        self.inner
            .checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    /// The checks that fail now: (critical ones, others).
    fn failing(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let checks = self.inner.checks.read().unwrap_or_else(|e| e.into_inner());
        let mut critical = Vec::new();
        let mut other = Vec::new();
        for c in checks.iter().filter(|c| !(c.up)()) {
            if c.critical {
                critical.push(c.name);
            } else {
                other.push(c.name);
            }
        }
        (critical, other)
    }

    /// The registry, for crates to register their handles on.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Current readiness.
    pub fn readiness(&self) -> Readiness {
        Readiness::from_u8(self.inner.readiness.load(Ordering::Acquire))
    }

    /// Changes readiness.
    pub fn set_readiness(&self, r: Readiness) {
        self.inner.readiness.store(r as u8, Ordering::Release);
        self.inner.ready_gauge.set(i64::from(r == Readiness::Ready));
    }

    /// The text exposition of every registered family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.inner.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The router with `/metrics`, `/healthz` and `/readyz`; the binary merges its admin
    /// routes into it.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Serves `router` on `listener` until `shutdown` resolves.
    pub async fn serve(
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` for the admin listener.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(addr).await
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.render(),
    )
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.readiness() {
        Readiness::Ready => match admin.failing() {
            (critical, _) if !critical.is_empty() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", critical.join(", ")),
            ),
            (_, degraded) if !degraded.is_empty() => (
                StatusCode::OK,
                format!("ready (degraded: {})\n", degraded.join(", ")),
            ),
            _ => (StatusCode::OK, "ready\n".to_string()),
        },
        Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string()),
        Readiness::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_over_http() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("moat_test_total", "test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let admin = Admin::new(registry);
        let listener = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Admin::serve(
            listener,
            admin.router(),
            std::future::pending(),
        ));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        admin.set_readiness(Readiness::Ready);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let value = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value("moat_test_total"),
            Some(prometheus_parse::Value::Counter(3.0))
        );
        assert_eq!(
            value("moat_ready"),
            Some(prometheus_parse::Value::Gauge(1.0))
        );

        admin.set_readiness(Readiness::Draining);
        assert_eq!(get(addr, "/readyz").await, (503, "draining\n".to_string()));
    }

    #[tokio::test]
    async fn readyz_follows_dependency_checks() {
        use std::sync::atomic::AtomicBool;
        let admin = Admin::new(Registry::new());
        let av_up = Arc::new(AtomicBool::new(true));
        let cache_up = Arc::new(AtomicBool::new(true));
        let (a, c) = (av_up.clone(), cache_up.clone());
        admin.add_check("antivirus", true, move || a.load(Ordering::SeqCst));
        admin.add_check("redis", false, move || c.load(Ordering::SeqCst));
        let listener = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Admin::serve(
            listener,
            admin.router(),
            std::future::pending(),
        ));

        // Starting wins over the checks.
        assert_eq!(get(addr, "/readyz").await, (503, "starting\n".to_string()));
        admin.set_readiness(Readiness::Ready);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
        cache_up.store(false, Ordering::SeqCst);
        assert_eq!(
            get(addr, "/readyz").await,
            (200, "ready (degraded: redis)\n".to_string())
        );
        av_up.store(false, Ordering::SeqCst);
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: antivirus\n".to_string())
        );
        av_up.store(true, Ordering::SeqCst);
        cache_up.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
    }
}
