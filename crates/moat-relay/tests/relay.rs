//! The relay against real SMTP peers on loopback: a recording sink written for these tests,
//! and Postfix's smtp-sink when it is installed.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use moat_core::ShutdownTrigger;
use moat_queue::{MessageState, Queue, RcptStatus};
use moat_relay::{Mode, Relay, RelayConfig, RelayMetrics, TlsMode};
use prometheus::Registry;

struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    relay: Relay,
}

fn start(queue: &Queue, config: RelayConfig, registry: &Registry) -> Running {
    let relay = Relay::new(queue.clone(), config, RelayMetrics::new(registry).unwrap()).unwrap();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let r = relay.clone();
    let task = tokio::spawn(async move { r.run(shutdown).await });
    Running {
        trigger,
        task,
        relay,
    }
}

impl Running {
    async fn stop(self) {
        self.trigger.drain();
        self.task.await.unwrap();
    }
}

/// What every test starts from: a folder (removed when dropped), a registry and the queue
/// spooling into the folder.
fn rig() -> (tempfile::TempDir, Registry, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let queue = open_queue(dir.path(), &registry);
    (dir, registry, queue)
}

/// Stops the relay, then closes the queue it delivered from.
async fn stop(relay: Running, queue: &Queue) {
    relay.stop().await;
    queue.close().await;
}

fn body(n: usize) -> Vec<u8> {
    format!("Subject: test {n}\r\nMessage-ID: <{n}@test>\r\n\r\nline one\r\n.starts with a dot\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_recipient_results_and_exactly_one_dsn() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions {
        pipelining: true,
        ..SinkOptions::default()
    })
    .await;
    let relay = start(
        &queue,
        test_config(dir.path(), vec![sink.hop("hub1")]),
        &registry,
    );
    let id = queue
        .enqueue(
            "192.0.2.1",
            &env(
                "alice@x.test",
                &["bob@y.test", "later@y.test", "reject@y.test"],
            ),
            &body(1),
        )
        .await
        .unwrap();
    // The original reaches bob; the DSN (from <>) reaches alice.
    assert!(wait_for(10, || sink.received().len() == 2).await);
    let got = sink.received();
    let original = got.iter().find(|r| r.mail_from == "alice@x.test").unwrap();
    assert_eq!(original.rcpts, vec!["bob@y.test".to_string()]);
    assert_eq!(original.data, body(1), "dot-stuffing undone by the sink");
    assert!(original.pipelined, "the hop offered PIPELINING");
    let dsn = got.iter().find(|r| r.mail_from.is_empty()).unwrap();
    assert_eq!(dsn.rcpts, vec!["alice@x.test".to_string()]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("multipart/report; report-type=delivery-status"));
    assert!(text.contains("Final-Recipient: rfc822; reject@y.test"));
    assert!(text.contains("Status: 5.1.1"));
    assert!(
        !text.contains("later@y.test"),
        "a deferred recipient is not reported"
    );

    // Only the deferred recipient is left, with its retry scheduled.
    assert!(wait_for(5, || queue.stats().messages == 1).await);
    let d = queue.show(&id).unwrap();
    assert_eq!(d.summary.state, MessageState::Deferred);
    assert!(matches!(d.rcpts[0].1, RcptStatus::Delivered { .. }));
    assert!(matches!(
        d.rcpts[1].1,
        RcptStatus::Deferred { attempts: 1, .. }
    ));
    assert!(matches!(d.rcpts[2].1, RcptStatus::Bounced { .. }));
    assert_eq!(
        metric(
            &registry,
            "moat_relay_deliveries_total",
            &[("hop", "hub1"), ("result", "bounced")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "moat_relay_deliveries_total",
            &[("hop", "hub1"), ("result", "delivered")]
        ),
        2.0,
        "bob and the DSN"
    );
    assert_eq!(metric(&registry, "moat_queue_dsn_total", &[]), 1.0);
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_of_a_null_sender_message_makes_no_dsn() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = start(
        &queue,
        test_config(dir.path(), vec![sink.hop("hub1")]),
        &registry,
    );
    queue
        .enqueue("192.0.2.1", &env("", &["reject@y.test"]), &body(1))
        .await
        .unwrap();
    assert!(wait_for(10, || queue.stats().messages == 0).await);
    // Give a DSN, if one were wrongly queued, time to be delivered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.received().is_empty());
    assert_eq!(metric(&registry, "moat_queue_dsn_total", &[]), 0.0);
    assert_eq!(metric(&registry, "moat_queue_bounces_total", &[]), 1.0);
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_bounces_all_its_accepted_recipients_once() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions {
        data_reply: Some("554 5.6.0 content rejected".into()),
        ..SinkOptions::default()
    })
    .await;
    let relay = start(
        &queue,
        test_config(dir.path(), vec![sink.hop("hub1")]),
        &registry,
    );
    queue
        .enqueue(
            "192.0.2.1",
            &env("alice@x.test", &["a@y.test", "b@y.test"]),
            &body(1),
        )
        .await
        .unwrap();
    // The DSN is refused by the same hub, and being from <> it bounces silently.
    assert!(wait_for(10, || queue.stats().messages == 0).await);
    assert_eq!(metric(&registry, "moat_queue_dsn_total", &[]), 1.0);
    assert_eq!(metric(&registry, "moat_queue_bounces_total", &[]), 3.0);
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_to_the_next_hop_at_once_and_opens_the_circuit() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions::default()).await;
    let mut dead = sink.hop("hub1");
    dead.port = dead_port();
    let mut config = test_config(dir.path(), vec![dead, sink.hop("hub2")]);
    config.breaker_open_for = Duration::from_secs(60);
    let relay = start(&queue, config, &registry);
    for n in 0..20 {
        queue
            .enqueue("192.0.2.1", &env("a@x.test", &["b@y.test"]), &body(n))
            .await
            .unwrap();
    }
    assert!(
        wait_for(10, || sink.received().len() == 20).await,
        "everything goes through the second hop without waiting for a retry"
    );
    assert!(wait_for(5, || queue.stats().messages == 0).await);
    assert_eq!(
        metric(&registry, "moat_relay_hop_circuit_open", &[("hop", "hub1")]),
        1.0
    );
    assert!(
        metric(
            &registry,
            "moat_relay_hop_failures_total",
            &[("hop", "hub1")]
        ) >= 3.0
    );
    // Once open, the dead hop is no longer tried.
    assert!(
        metric(
            &registry,
            "moat_relay_hop_failures_total",
            &[("hop", "hub1")]
        ) < 20.0
    );
    assert_eq!(
        metric(
            &registry,
            "moat_relay_deliveries_total",
            &[("hop", "hub2"), ("result", "delivered")]
        ),
        20.0
    );
    assert_eq!(
        relay.relay.hop_status(),
        vec![("hub1".to_string(), true), ("hub2".to_string(), false)]
    );
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_only_hub_is_down_and_go_when_it_returns() {
    let (dir, registry, queue) = rig();
    let port = dead_port();
    let mut hop = Sink::start(SinkOptions::default()).await.hop("hub1");
    hop.port = port;
    let mut config = test_config(dir.path(), vec![hop]);
    config.breaker_failures = 1;
    config.breaker_open_for = Duration::from_millis(200);
    let relay = start(&queue, config, &registry);
    for n in 0..5 {
        queue
            .enqueue("192.0.2.1", &env("a@x.test", &["b@y.test"]), &body(n))
            .await
            .unwrap();
    }
    // All deferred by the normal schedule (minutes away).
    assert!(wait_for(10, || queue.stats().deferred == 5).await);
    // The hub comes back on the same port: the probe notices, deferred mail goes at once.
    let sink = Sink::start_on(port, SinkOptions::default()).await;
    assert!(wait_for(10, || sink.received().len() == 5).await);
    assert!(wait_for(5, || queue.stats().messages == 0).await);
    assert_eq!(
        metric(&registry, "moat_relay_hop_circuit_open", &[("hop", "hub1")]),
        0.0
    );
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_spreads_messages_across_hops() {
    let (dir, registry, queue) = rig();
    let a = Sink::start(SinkOptions::default()).await;
    let b = Sink::start(SinkOptions::default()).await;
    let mut config = test_config(dir.path(), vec![a.hop("a"), b.hop("b")]);
    config.mode = Mode::Balance;
    let relay = start(&queue, config, &registry);
    for n in 0..20 {
        queue
            .enqueue("192.0.2.1", &env("a@x.test", &["b@y.test"]), &body(n))
            .await
            .unwrap();
    }
    assert!(wait_for(10, || a.received().len() + b.received().len() == 20).await);
    assert_eq!(a.received().len(), 10);
    assert_eq!(b.received().len(), 10);
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_and_limited_per_hop() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions {
        pipelining: false,
        ..SinkOptions::default()
    })
    .await;
    let mut hop = sink.hop("hub1");
    hop.max_connections = 2;
    let mut config = test_config(dir.path(), vec![hop]);
    config.workers = 8;
    let relay = start(&queue, config, &registry);
    let mut tasks = Vec::new();
    for n in 0..60 {
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue(
                "192.0.2.1",
                &env("a@x.test", &["b@y.test", "c@y.test"]),
                &body(n),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(wait_for(10, || sink.received().len() == 60).await);
    assert!(sink.max_concurrent.load(Ordering::SeqCst) <= 2);
    assert!(
        sink.connections.load(Ordering::SeqCst) <= 2,
        "reused, not reopened"
    );
    assert!(
        sink.received()
            .iter()
            .all(|r| !r.pipelined && r.rcpts.len() == 2)
    );
    assert!(
        metric(
            &registry,
            "moat_relay_connection_reuse_total",
            &[("hop", "hub1")]
        ) >= 58.0
    );
    stop(relay, &queue).await;
}

fn cert() -> (Vec<u8>, Vec<u8>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        ck.cert.der().to_vec(),
        ck.signing_key.serialize_der(),
        ck.cert.pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_opportunistic_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let (der, key, pem) = cert();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let tls_sink = Sink::start(SinkOptions {
        pipelining: true,
        tls: Some((der, key)),
        ..SinkOptions::default()
    })
    .await;
    let plain_sink = Sink::start(SinkOptions::default()).await;

    for (mode, host, sink, want_tls, delivered) in [
        (TlsMode::Opportunistic, "127.0.0.1", &tls_sink, true, true),
        (
            TlsMode::Opportunistic,
            "127.0.0.1",
            &plain_sink,
            false,
            true,
        ),
        (TlsMode::Required, "localhost", &tls_sink, true, true),
        (TlsMode::Required, "localhost", &plain_sink, false, false),
        (TlsMode::Off, "127.0.0.1", &tls_sink, false, true),
    ] {
        let sub = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let queue = open_queue(sub.path(), &registry);
        let mut hop = sink.hop("hub1");
        hop.tls = mode;
        hop.host = host.into();
        let mut config = test_config(sub.path(), vec![hop]);
        config.ca_file = Some(ca.clone());
        let relay = start(&queue, config, &registry);
        let before = sink.received().len();
        queue
            .enqueue("192.0.2.1", &env("a@x.test", &["b@y.test"]), &body(7))
            .await
            .unwrap();
        let case = format!(
            "{mode:?} to {host} (sink offers TLS: {})",
            std::ptr::eq(sink, &tls_sink)
        );
        if delivered {
            assert!(
                wait_for(10, || sink.received().len() == before + 1).await,
                "{case}"
            );
            assert_eq!(sink.received().last().unwrap().tls, want_tls, "{case}");
        } else {
            assert!(wait_for(10, || queue.stats().deferred == 1).await, "{case}");
            assert_eq!(sink.received().len(), before, "{case}");
        }
        stop(relay, &queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hops_messages_land_in_the_local_maildir() {
    let (dir, registry, queue) = rig();
    let relay = start(&queue, test_config(dir.path(), Vec::new()), &registry);
    queue
        .enqueue(
            "192.0.2.1",
            &env("alice@x.test", &["bob@y.test", "carol@y.test"]),
            &body(3),
        )
        .await
        .unwrap();
    assert!(wait_for(10, || queue.stats().messages == 0).await);
    let md = dir.path().join("Maildir");
    assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    let mut files: Vec<String> = std::fs::read_dir(md.join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    for (f, rcpt) in files.iter().zip(["bob@y.test", "carol@y.test"]) {
        assert!(f.starts_with(&format!(
            "Return-Path: <alice@x.test>\r\nDelivered-To: {rcpt}\r\n"
        )));
        assert!(f.ends_with(std::str::from_utf8(&body(3)).unwrap()));
    }
    assert_eq!(
        metric(
            &registry,
            "moat_relay_deliveries_total",
            &[("hop", "local"), ("result", "delivered")]
        ),
        2.0
    );
    stop(relay, &queue).await;
}

#[test]
fn invalid_configurations_are_reported_together() {
    let mut c = RelayConfig::new("edge example");
    let mut hop = moat_relay::NextHop {
        name: "bad name".into(),
        host: String::new(),
        port: 0,
        tls: TlsMode::Required,
        max_connections: 0,
    };
    c.hops.push(hop.clone());
    hop.name = "ok".into();
    c.hops.push(hop.clone());
    c.hops.push(hop);
    c.workers = 0;
    let err = c.validate().unwrap_err().to_string();
    for part in [
        "hostname",
        "workers",
        "hops[0].name",
        "hops[0].host",
        "hops[0].port",
        "hops[0].max_connections",
        "hops[0] requires TLS",
        "hops[2].name \"ok\" is used twice",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    assert!(RelayConfig::new("edge.example").validate().is_ok());
}

/// Postfix's smtp-sink as the hub: the relay's SMTP must satisfy a real MTA's parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_to_postfix_smtp_sink() {
    let sink_bin = std::path::Path::new("/usr/sbin/smtp-sink");
    if !sink_bin.exists() {
        // CI installs Postfix; elsewhere the test is skipped, and says so.
        assert!(
            std::env::var_os("CI").is_none(),
            "Postfix smtp-sink is required in CI"
        );
        eprintln!("SKIPPED: Postfix smtp-sink is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = dead_port();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    let mut cmd = std::process::Command::new(sink_bin);
    if root {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .arg("-d")
        .arg(format!("{}/", dump.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("64")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it listens, so no message is deferred by a race with its start.
    let listening = wait_for(5, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    if !listening {
        let _ = child.kill();
        let _ = child.wait();
        panic!("smtp-sink did not start on port {port}");
    }
    let registry = Registry::new();
    let queue = open_queue(dir.path(), &registry);
    let mut hop = Sink::start(SinkOptions::default()).await.hop("postfix");
    hop.port = port;
    let relay = start(&queue, test_config(dir.path(), vec![hop]), &registry);
    let n = 30;
    for i in 0..n {
        queue
            .enqueue(
                "192.0.2.1",
                &env("a@x.test", &["b@y.test", "c@y.test"]),
                &body(i),
            )
            .await
            .unwrap();
    }
    let delivered = wait_for(15, || queue.stats().messages == 0).await;
    let files: Vec<String> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    stop(relay, &queue).await;
    // Stop the sink we started, by its pid.
    let _ = child.kill();
    let _ = child.wait();
    assert!(delivered, "queue not empty: {:?}", queue.stats());
    assert_eq!(files.len(), n);
    for i in 0..n {
        let subject = format!("Subject: test {i}");
        let f = files
            .iter()
            .find(|f| f.lines().any(|l| l.trim_end() == subject))
            .unwrap_or_else(|| panic!("{subject} not received"));
        assert!(f.contains("<b@y.test>") && f.contains("<c@y.test>"), "{f}");
        assert!(
            f.lines().any(|l| l.trim_end() == ".starts with a dot"),
            "dot-stuffing undone: {f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_would_inject_commands_are_bounced_not_sent() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = start(
        &queue,
        test_config(dir.path(), vec![sink.hop("hub1")]),
        &registry,
    );
    let id = queue
        .enqueue(
            "192.0.2.1",
            &env(
                "alice@x.test",
                &["bob@y.test", "evil@y.test>\r\nRCPT TO:<victim@z.test"],
            ),
            &body(1),
        )
        .await
        .unwrap();
    // bob's copy and the DSN for the refused recipient arrive; the injected one never does.
    assert!(wait_for(10, || sink.received().len() == 2).await);
    assert!(wait_for(5, || queue.stats().messages == 0).await);
    let got = sink.received();
    assert!(
        got.iter()
            .all(|r| !r.rcpts.iter().any(|a| a.contains("victim")))
    );
    let original = got.iter().find(|r| r.mail_from == "alice@x.test").unwrap();
    assert_eq!(original.rcpts, vec!["bob@y.test".to_string()]);
    let dsn = got.iter().find(|r| r.mail_from.is_empty()).unwrap();
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("Status: 5.1.3"), "{text}");
    assert!(queue.show(&id).is_err());
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_mail_is_not_sent_to_a_hop_without_smtputf8() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = start(
        &queue,
        test_config(dir.path(), vec![sink.hop("hub1")]),
        &registry,
    );
    let mut e = env("alice@x.test", &["bøb@y.test"]);
    e.smtputf8 = true;
    queue.enqueue("192.0.2.1", &e, &body(1)).await.unwrap();
    // Only the DSN (plain ASCII, from <>) reaches the hub.
    assert!(wait_for(10, || sink.received().len() == 1).await);
    assert!(wait_for(5, || queue.stats().messages == 0).await);
    let dsn = &sink.received()[0];
    assert!(dsn.mail_from.is_empty());
    assert!(String::from_utf8_lossy(&dsn.data).contains("Status: 5.6.7"));
    stop(relay, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_hub_is_replaced_without_blame() {
    let (dir, registry, queue) = rig();
    let sink = Sink::start(SinkOptions {
        close_after_data: true,
        ..SinkOptions::default()
    })
    .await;
    let mut hop = sink.hop("hub1");
    hop.max_connections = 1;
    let mut config = test_config(dir.path(), vec![hop]);
    config.workers = 1;
    let relay = start(&queue, config, &registry);
    for n in 0..5 {
        queue
            .enqueue("192.0.2.1", &env("a@x.test", &["b@y.test"]), &body(n))
            .await
            .unwrap();
    }
    assert!(wait_for(10, || sink.received().len() == 5).await);
    assert!(wait_for(5, || queue.stats().messages == 0).await);
    assert_eq!(
        metric(
            &registry,
            "moat_relay_hop_failures_total",
            &[("hop", "hub1")]
        ),
        0.0
    );
    assert_eq!(sink.connections.load(Ordering::SeqCst), 5);
    stop(relay, &queue).await;
}
