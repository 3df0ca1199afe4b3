//! Wiring of a running node: listeners, admin endpoint, signals and graceful shutdown.
//!
//! Shutdown (SIGTERM or SIGINT): `/readyz` turns 503 and the listeners stop accepting at once;
//! open sessions finish their current transaction; when the grace period ends the remaining
//! sessions get `421 4.3.2` and close; then the admin listener stops and the process exits.

use std::sync::Arc;

use anyhow::Context;
use moat_core::ShutdownTrigger;
use moat_metrics::{Admin, Readiness};
use moat_smtp::{Listener, ServerContext, SmtpMetrics};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Runtime;
use crate::spool::FileSpool;

/// Runs a node until SIGTERM/SIGINT and its graceful shutdown complete.
pub async fn run(rt: Runtime) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let admin = Admin::new(registry);
    let smtp_metrics = SmtpMetrics::new(admin.registry()).context("registering SMTP metrics")?;

    let spool = FileSpool::open(&rt.spool_dir)
        .with_context(|| format!("opening spool {}", rt.spool_dir.display()))?;
    let ctx = Arc::new(ServerContext {
        hostname: rt.hostname.clone(),
        accepted_domains: rt.accepted_domains.clone(),
        store: Arc::new(spool),
        stages: Vec::new(),
    });

    let admin_listener = Admin::bind(rt.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", rt.admin_listen))?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let admin_stop = {
        let mut s = trigger.subscribe();
        async move { s.aborting().await }
    };
    let admin_task = tokio::spawn(Admin::serve(admin_listener, admin.router(), admin_stop));

    let mut listeners = Vec::new();
    for conn in rt.connectors {
        let name = conn.name.clone();
        let bind = conn.bind;
        let metrics = smtp_metrics.connector(&name);
        let l = Listener::bind(Arc::new(conn), ctx.clone(), metrics)
            .await
            .with_context(|| format!("connector {name}: binding {bind}"))?;
        tracing::info!(connector = %name, listen = %l.local_addr()?, "listening");
        listeners.push(tokio::spawn(l.serve(shutdown.clone())));
    }
    if rt.self_signed {
        tracing::warn!("no certificate configured: STARTTLS uses a self-signed certificate");
    }
    admin.set_readiness(Readiness::Ready);
    tracing::info!(hostname = %rt.hostname, admin = %rt.admin_listen, "node ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    admin.set_readiness(Readiness::Draining);
    trigger.drain();

    let all_closed = async {
        for l in listeners {
            let _ = l.await;
        }
    };
    tokio::pin!(all_closed);
    tokio::select! {
        _ = &mut all_closed => {}
        _ = tokio::time::sleep(rt.grace) => {
            tracing::info!(grace = ?rt.grace, "grace period over: closing remaining sessions");
            trigger.abort();
            all_closed.await;
        }
        _ = term.recv() => {
            tracing::info!("second signal: closing remaining sessions");
            trigger.abort();
            all_closed.await;
        }
    }
    trigger.abort();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
