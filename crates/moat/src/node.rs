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

use crate::admin::{self, AdminApi};
use crate::config::Runtime;
use crate::filter;

/// Runs a node until SIGTERM/SIGINT and its graceful shutdown complete.
pub async fn run(rt: Runtime) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let admin = Admin::new(registry);
    let smtp_metrics = SmtpMetrics::new(admin.registry()).context("registering SMTP metrics")?;

    let queue_metrics =
        moat_queue::QueueMetrics::new(admin.registry()).context("registering queue metrics")?;
    let relay_metrics =
        moat_relay::RelayMetrics::new(admin.registry()).context("registering relay metrics")?;
    let queue_dir = rt.queue.dir.clone();
    let queue_config = rt.queue.clone();
    let (queue, report) =
        tokio::task::spawn_blocking(move || moat_queue::Queue::open(queue_config, queue_metrics))
            .await?
            .with_context(|| format!("opening the queue in {}", queue_dir.display()))?;
    tracing::info!(
        dir = %queue_dir.display(),
        messages = report.messages,
        corrupt = report.corrupt.len(),
        "queue opened"
    );
    let relay = moat_relay::Relay::new(queue.clone(), rt.relay.clone(), relay_metrics)
        .context("starting the relay")?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    // Stages in order of cost: connection, sender and recipient policy (decided before
    // DATA), attachment rules, antivirus, then the content filter.
    let mut stages: Vec<Arc<dyn moat_core::Stage>> = Vec::new();
    let policy = Arc::new(
        crate::policy::Policy::start(&rt.policy, &rt.hostname, admin.registry(), shutdown.clone())
            .await?,
    );
    stages.extend(policy.stages.iter().cloned());
    let av_metrics = if rt.antivirus.is_some() || rt.attachments.is_some() {
        Some(moat_av::AvMetrics::new(admin.registry()).context("registering antivirus metrics")?)
    } else {
        None
    };
    if let (Some(cfg), Some(m)) = (&rt.attachments, &av_metrics) {
        stages.push(crate::av::attachments(cfg, m)?);
    }
    if let (Some(cfg), Some(m)) = (&rt.antivirus, &av_metrics) {
        let av = crate::av::antivirus(cfg, m, shutdown.clone())?;
        // Engines down behind a fail-closed policy: this node refuses mail, so `/readyz`
        // says not ready; behind fail-open it accepts unscanned mail: degraded.
        let engines = av.engines.clone();
        admin.add_check("antivirus", av.fail_closed, move || engines.is_ready());
        stages.push(av.stage);
    }
    // Content filter: the rule snapshot, the one reload task, the watcher and SIGHUP.
    let mut reloader = None;
    let mut _watch = None;
    if let Some(f) = rt.filter {
        let metrics =
            filter::FilterMetrics::new(admin.registry()).context("registering filter metrics")?;
        let dir = f.rules_dir.clone();
        let extractor: Arc<dyn moat_rules::Extractor> = Arc::new(moat_filter::MimeExtractor {
            limits: f.config.limits,
        });
        let store = tokio::task::spawn_blocking(move || {
            moat_rules::RuleStore::open(dir, moat_rules::CompileOptions::default(), Some(extractor))
        })
        .await?
        .with_context(|| format!("loading the rule packs in {}", f.rules_dir.display()))?;
        let store = Arc::new(store);
        tracing::info!(dir = %f.rules_dir.display(), versions = %store.snapshot().versions(), "rules loaded");
        let r = filter::spawn_reloader(store.clone(), metrics.clone());
        if f.watch {
            _watch = Some(
                filter::watch(&store, f.debounce, r.clone())
                    .context("watching the rules folder")?,
            );
        }
        stages.push(Arc::new(filter::FilterStage::new(store, f.config, metrics)));
        reloader = Some(r);
    }

    // SIGHUP: one reload of everything loaded from files (rule packs, policy lists).
    let mut hup = signal(SignalKind::hangup())?;
    let on_hup = (reloader.clone(), policy.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(r) = &on_hup.0 {
                r.request(filter::Trigger::Signal);
            }
            let p = on_hup.1.clone();
            let _ = tokio::task::spawn_blocking(move || p.reload()).await;
        }
    });

    let token = admin::load_or_create_token(&rt.admin_token_file)
        .with_context(|| format!("admin token file {}", rt.admin_token_file.display()))?;
    let api = Arc::new(AdminApi {
        queue: queue.clone(),
        relay: relay.clone(),
        token,
        reloader,
    });

    let ctx = Arc::new(ServerContext {
        hostname: rt.hostname.clone(),
        accepted_domains: rt.accepted_domains.clone(),
        store: Arc::new(queue.clone()),
        stages,
    });

    let admin_listener = Admin::bind(rt.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", rt.admin_listen))?;
    let admin_stop = {
        let mut s = trigger.subscribe();
        async move { s.aborting().await }
    };
    let router = admin.router().merge(admin::routes(api));
    let admin_task = tokio::spawn(Admin::serve(admin_listener, router, admin_stop));
    let relay_task = {
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { relay.run(shutdown).await })
    };

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
    // Deliveries under way finish and are recorded; then the queue's last commit.
    let _ = relay_task.await;
    queue.close().await;
    trigger.abort();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
