//! The real `moat` binary over loopback, driven by clients written elsewhere (Python's
//! smtplib, Postfix's smtp-source) and by raw sockets for PROXY, limits and shutdown.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn smtplib_plain_starttls_and_auth() {
    if !have_tool("python3", "python3") {
        return;
    }
    let node = Node::start();
    let (ok, out) = run_tool(
        "python3",
        &[
            &script("smtplib_client.py"),
            &node.mx.to_string(),
            &node.sub.to_string(),
            USER,
            PASSWORD,
        ],
    )
    .expect("python3 is needed for this test");
    assert!(ok, "{out}\n--- node log ---\n{}", node.log_text());
    let tls_msg = node
        .wait_delivered(3)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains("Subject: submission"))
        .unwrap();
    assert!(tls_msg.contains("with ESMTPSA"), "{tls_msg}");
    assert!(tls_msg.contains("(using TLSv1.3 with cipher"), "{tls_msg}");
}

#[test]
fn open_relay_table_over_both_connectors() {
    if !have_tool("python3", "python3") {
        return;
    }
    let node = Node::start();
    let (ok, out) = run_tool(
        "python3",
        &[
            &script("relay_table.py"),
            &node.mx.to_string(),
            &node.sub.to_string(),
            USER,
            PASSWORD,
        ],
    )
    .expect("python3 is needed for this test");
    println!("{out}");
    assert!(ok, "{out}\n--- node log ---\n{}", node.log_text());
    assert!(out.contains("80 cases, 0 failures"), "{out}");
}

#[test]
fn smtp_source_20_concurrent_sessions() {
    if !have_tool("smtp-source", "postfix") {
        return;
    }
    let node = Node::start();
    let target = format!("127.0.0.1:{}", node.mx);
    let Some((ok, out)) = run_tool(
        if Path::new("/usr/sbin/smtp-source").exists() {
            "/usr/sbin/smtp-source"
        } else {
            "smtp-source"
        },
        &[
            "-s",
            "20",
            "-m",
            "400",
            "-l",
            "4096",
            "-f",
            "load@sender.test",
            "-t",
            "bob@example.test",
            "-M",
            "client.test",
            &target,
        ],
    ) else {
        panic!("smtp-source (Debian package postfix) is needed; .ci/run installs it");
    };
    assert!(ok, "{out}");
    // Every message accepted is delivered to the default next hop.
    node.wait_delivered(400);
    let scrape = node.scrape();
    assert_eq!(
        sample(
            &scrape,
            "moat_smtp_transactions_total",
            &[("connector", "mx"), ("result", "accepted")]
        ),
        400.0
    );
    assert_eq!(
        sample(&scrape, "moat_smtp_sessions_active", &[("connector", "mx")]),
        0.0
    );
}

#[test]
fn metrics_and_health_endpoints() {
    let node = Node::start();
    assert_eq!(node.http_get("/healthz").unwrap().0, 200);
    assert_eq!(node.http_get("/readyz").unwrap().0, 200);
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<x@other.test>", "550 5.7.1");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.send("Subject: m\r\n\r\nbody\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued as ");
    c.cmd("QUIT", "221");
    std::thread::sleep(Duration::from_millis(100));
    let s = node.scrape();
    let mx = ("connector", "mx");
    assert_eq!(
        sample(
            &s,
            "moat_smtp_connections_total",
            &[mx, ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "moat_smtp_transactions_total",
            &[mx, ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        sample(&s, "moat_smtp_replies_total", &[mx, ("class", "5xx")]),
        1.0
    );
    assert_eq!(
        sample(&s, "moat_smtp_replies_total", &[mx, ("class", "3xx")]),
        1.0
    );
    assert!(sample(&s, "moat_smtp_received_bytes_total", &[mx]) >= 20.0);
    assert_eq!(sample(&s, "moat_ready", &[]), 1.0);
    // Histograms parse too: one store observation.
    let store_count = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "moat_stage_duration_seconds" && x.labels.get("stage") == Some("store")
        })
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => -1.0,
        });
    assert_eq!(store_count, Some(1.0));
}

fn proxy_v2(src: &str, dst: &str) -> Vec<u8> {
    ppp_header(src, dst)
}

fn ppp_header(src: &str, dst: &str) -> Vec<u8> {
    // Built by hand from the specification (the node parses with a crate), so the test does
    // not share code with what it tests.
    let src: std::net::SocketAddrV4 = src.parse().unwrap();
    let dst: std::net::SocketAddrV4 = dst.parse().unwrap();
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[test]
fn proxy_protocol_v1_and_v2_from_trusted_balancer() {
    let node = Node::start();
    // v1: the header claims a client in the relay range, so relaying is allowed although the
    // balancer itself (127.0.0.4) is not in it.
    let mut c = Smtp::connect_from("127.0.0.4", node.mx);
    c.send("PROXY TCP4 127.0.0.2 127.0.0.1 40001 25\r\n");
    c.expect("220");
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<x@other.test>", "250 2.1.5");
    c.cmd("QUIT", "221");

    // v2: a client outside the relay range is refused relaying and logged by its address.
    let mut c = Smtp::connect_from("127.0.0.4", node.mx);
    c.send_raw(&proxy_v2("198.51.100.77:40002", "127.0.0.1:25"));
    c.expect("220");
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<x@other.test>", "550 5.7.1");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.send("Subject: proxied\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.0.0");
    c.cmd("QUIT", "221");
    std::thread::sleep(Duration::from_millis(200));
    let log = node.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("relay denied") && l.contains("client=198.51.100.77")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("queued") && l.contains("client=198.51.100.77")),
        "{log}"
    );
    let msg = std::fs::read_to_string(&node.wait_delivered(1)[0]).unwrap();
    assert!(msg.contains("([198.51.100.77])"), "{msg}");
}

#[test]
fn proxy_protocol_refusals() {
    let node = Node::start();
    // A trusted balancer that sends no header is refused once the PROXY timeout expires,
    // without a greeting.
    let mut c = Smtp::connect_from("127.0.0.4", node.mx);
    let started = Instant::now();
    assert_eq!(c.reply(), "", "no greeting without a PROXY header");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A balancer sending garbage is refused too.
    let mut c = Smtp::connect_from("127.0.0.4", node.mx);
    c.send("EHLO not-a-proxy-header\r\n");
    assert_eq!(c.reply(), "");

    // A peer that is not a trusted balancer may not send one: v1 and v2.
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.send("PROXY TCP4 127.0.0.2 127.0.0.1 40001 25\r\n");
    c.expect("421 4.7.0");
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.send_raw(&proxy_v2("127.0.0.2:1", "127.0.0.1:25"));
    c.expect("421 4.7.0");

    let s = node.scrape();
    assert_eq!(
        sample(
            &s,
            "moat_smtp_connections_total",
            &[("connector", "mx"), ("result", "proxy")]
        ),
        2.0
    );
}

#[test]
fn slow_client_is_cut_at_the_command_timeout() {
    let node = Node::start();
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    let started = Instant::now();
    c.expect("421 4.4.2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(c.reply(), "", "closed after the 421");
}

#[test]
fn a_thousand_idle_connections_do_not_block_a_new_client() {
    let node = Node::start_with(Options {
        mx_limits: "command_timeout = \"60s\", proxy_timeout = \"1s\"".into(),
        // They all come from one /24: lift the per-network limit (200 by default).
        mx_extra: "max_connections_per_net = 2000".into(),
        ..Options::default()
    });
    // 25 client addresses × 40 connections stay under the per-address limit (50).
    let mut idle = Vec::new();
    for i in 0..1000 {
        let source = format!("127.0.1.{}", 10 + i % 25);
        idle.push(socket2_connect(&source, node.mx));
    }
    // Every idle connection got its greeting.
    for s in idle.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"220 ");
    }
    let started = Instant::now();
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.send("Subject: busy\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.0.0");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let s = node.scrape();
    assert!(sample(&s, "moat_smtp_sessions_active", &[("connector", "mx")]) >= 1000.0);
    drop(idle);
}

#[test]
fn per_client_connection_limit() {
    let node = Node::start_with(Options {
        mx_extra: "max_connections_per_ip = 3".into(),
        ..Options::default()
    });
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Smtp::connect_from("127.0.0.5", node.mx);
        c.expect("220");
        held.push(c);
    }
    let mut c = Smtp::connect_from("127.0.0.5", node.mx);
    c.expect("421 4.7.0");
    // Another address is unaffected.
    let mut c = Smtp::connect_from("127.0.0.6", node.mx);
    c.expect("220");
    held.push(c);
}

#[test]
fn connector_limits_on_total_connections_and_client_ranges() {
    let node = Node::start_with(Options {
        mx_extra: "max_connections = 2\nremote_ranges = [\"127.0.0.0/30\"]".into(),
        ..Options::default()
    });
    // 127.0.0.5 is outside 127.0.0.0/30: 554 and closed.
    let mut c = Smtp::connect_from("127.0.0.5", node.mx);
    c.expect("554 5.7.1");
    assert_eq!(c.reply(), "");
    std::thread::sleep(Duration::from_millis(100));
    let mut a = Smtp::connect_from("127.0.0.2", node.mx);
    a.expect("220");
    let mut b = Smtp::connect_from("127.0.0.3", node.mx);
    b.expect("220");
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("421 4.7.0");
    let s = node.scrape();
    let mx = ("connector", "mx");
    assert_eq!(
        sample(
            &s,
            "moat_smtp_connections_total",
            &[mx, ("result", "limit")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "moat_smtp_connections_total",
            &[mx, ("result", "client_range")]
        ),
        1.0
    );
    drop((a, b));
}

#[test]
fn sigterm_drains_finishes_the_transaction_then_421() {
    let mut node = Node::start();
    let mut busy = Smtp::connect_from("127.0.0.3", node.mx);
    busy.expect("220");
    busy.cmd("EHLO c", "250");
    busy.cmd("MAIL FROM:<a@sender.test>", "250");
    busy.cmd("RCPT TO:<bob@example.test>", "250");
    let mut idle = Smtp::connect_from("127.0.0.3", node.mx);
    idle.expect("220");

    node.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        node.http_get("/readyz").map(|r| r.0),
        Some(503),
        "readyz turns 503 while draining"
    );
    // The idle session is told at once.
    idle.expect("421 4.3.2");
    // New connections are refused: the listener is closed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", node.mx)).is_err());
    // The open transaction finishes.
    busy.cmd("DATA", "354");
    busy.send("Subject: during drain\r\n\r\nx\r\n.\r\n");
    busy.expect("250 2.0.0");
    busy.expect("421 4.3.2");
    assert!(node.wait_exit(Duration::from_secs(10)), "clean exit");
    // Accepted during the drain: in the queue, delivered at the next start at the latest.
}

#[test]
fn grace_period_ends_with_421_for_stuck_transactions() {
    let mut node = Node::start();
    let mut stuck = Smtp::connect_from("127.0.0.3", node.mx);
    stuck.expect("220");
    stuck.cmd("EHLO c", "250");
    stuck.cmd("MAIL FROM:<a@sender.test>", "250");
    let started = Instant::now();
    node.signal("TERM");
    // Grace is 3 s in the test configuration (command timeout too: keep the client alive).
    std::thread::sleep(Duration::from_millis(1500));
    stuck.cmd("RCPT TO:<bob@example.test>", "250");
    stuck.expect("421 4.3.2");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2500), "{waited:?}");
    assert!(node.wait_exit(Duration::from_secs(10)));
    assert!(node.delivered().is_empty());
}

#[test]
fn check_config_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "hostnme = \"x\"\n[[connector]]\nname = \"mx\"\nlisten = \"nowhere\"\nrole = \"relay\"\nrelay_ranges = [\"10.0.0.0/33\"]\n",
    )
    .unwrap();
    let (ok, out) = run_tool(
        env!("CARGO_BIN_EXE_moat"),
        &["check-config", bad.to_str().unwrap()],
    )
    .unwrap();
    assert!(!ok);
    for want in [
        "line 1: hostnme: unknown key",
        "line 4: connector[0].listen",
        "line 5: connector[0].role",
        "line 6: connector[0].relay_ranges[0]",
        "4 error(s)",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/moat.toml");
    let (ok, out) = run_tool(
        env!("CARGO_BIN_EXE_moat"),
        &["check-config", example.to_str().unwrap()],
    )
    .unwrap();
    assert!(ok, "deploy/moat.toml must stay valid: {out}");
}
