//! The node relaying to hub servers (a recording sink standing in for each hub): outage and
//! recovery, failover, bounces, and queue administration through `moat queue`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A recording SMTP sink (tests/py/sink.py) on a loopback port, stopped by its pid.
struct Sink {
    child: Child,
    dir: PathBuf,
}

impl Sink {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Sink {
        let child = Command::new("python3")
            .arg(script("sink.py"))
            .arg(port.to_string())
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sink did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sink {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hop(name: &str, port: u16) -> String {
    format!(
        "\n[[relay.hop]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"off\"\n"
    )
}

fn send(node: &Node, from: &str, to: &str, subject: &str) -> String {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd(&format!("MAIL FROM:<{from}>"), "250");
    c.cmd(&format!("RCPT TO:<{to}>"), "250");
    c.cmd("DATA", "354");
    c.send(&format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n"
    ));
    let r = c.expect("250 2.0.0 Ok: queued as ");
    c.cmd("QUIT", "221");
    r.rsplit(' ').next().unwrap().to_string()
}

fn moat(node: &Node, args: &[&str]) -> (bool, String) {
    let config = node.config();
    let mut all = vec!["queue", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_tool(env!("CARGO_BIN_EXE_moat"), &all).unwrap()
}

#[test]
fn hub_outage_then_recovery_with_queue_administration() {
    if !have_tool("python3", "python3") {
        return;
    }
    let port = free_port();
    let node = Node::start_with(Options {
        relay: format!(
            "breaker_open_for = \"1s\"\nconnect_timeout = \"1s\"\n{}",
            hop("hub", port)
        ),
        ..Options::default()
    });
    // The only hub is down: the message waits in the queue.
    let id = send(&node, "alice@sender.test", "bob@example.test", "waits");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = moat(&node, &["show", &id]);
        assert!(ok, "{out}");
        if out.contains("deferred") {
            break;
        }
        assert!(Instant::now() < deadline, "never deferred: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, list) = moat(&node, &["list"]);
    assert!(
        ok && list.contains(&id) && list.contains("1 message(s)"),
        "{list}"
    );
    let (ok, stats) = moat(&node, &["stats"]);
    assert!(ok && stats.contains("messages:           1"), "{stats}");

    // Held, it is not delivered even when the hub comes back.
    assert!(moat(&node, &["hold", &id]).0);
    let (_, out) = moat(&node, &["show", &id]);
    assert!(out.contains("state:    held"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(port, dir.path(), &[]);
    let (ok, out) = moat(&node, &["retry", &id]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(sink.messages().is_empty(), "a held message was delivered");

    // Released, it goes through the recovered hub without waiting for its retry time (5 min).
    assert!(moat(&node, &["release", &id]).0);
    let got = sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "{}", node.log_text());
    assert!(got[0].contains("Subject: waits"));
    let (ok, list) = moat(&node, &["list"]);
    assert!(ok && list.contains("0 message(s)"), "{list}");

    // Unknown ids and a wrong token are refused.
    let (ok, out) = moat(&node, &["show", "0000000000000000"]);
    assert!(!ok && out.contains("404"), "{out}");
    std::fs::write(node.dir.path().join("admin.token"), "wrong\n").unwrap();
    let (ok, out) = moat(&node, &["list"]);
    assert!(!ok && out.contains("401"), "{out}");
}

#[test]
fn failover_to_the_second_hub_without_waiting() {
    if !have_tool("python3", "python3") {
        return;
    }
    let (down, up) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(up, dir.path(), &[]);
    let node = Node::start_with(Options {
        relay: format!(
            "connect_timeout = \"1s\"\n{}{}",
            hop("first", down),
            hop("second", up)
        ),
        ..Options::default()
    });
    for i in 0..10 {
        send(
            &node,
            "alice@sender.test",
            "bob@example.test",
            &format!("failover {i}"),
        );
    }
    let started = Instant::now();
    let got = sink.wait_for(10, Duration::from_secs(20));
    assert_eq!(got.len(), 10, "{}", node.log_text());
    assert!(started.elapsed() < Duration::from_secs(20));
    let s = node.scrape();
    assert_eq!(
        sample(
            &s,
            "moat_relay_deliveries_total",
            &[("hop", "second"), ("result", "delivered")]
        ),
        10.0
    );
}

#[test]
fn permanent_refusal_bounces_once_and_never_to_the_null_sender() {
    if !have_tool("python3", "python3") {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(port, dir.path(), &["--reject-prefix", "nobody"]);
    let node = Node::start_with(Options {
        relay: hop("hub", port),
        ..Options::default()
    });
    send(
        &node,
        "alice@sender.test",
        "nobody@example.test",
        "bounce me",
    );
    send(&node, "", "nobody@example.test", "no dsn for null sender");
    send(&node, "alice@sender.test", "bob@example.test", "marker");
    // The marker and exactly one DSN arrive; the DSN goes to alice, never to <>.
    let got = sink.wait_for(2, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    let got_after = sink.messages();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got_after.len(), 2, "no further messages: {got_after:#?}");
    let dsn: Vec<&String> = got_after
        .iter()
        .filter(|m| m.contains("multipart/report"))
        .collect();
    assert_eq!(dsn.len(), 1, "{got_after:#?}");
    assert!(
        dsn[0].contains("X-Sink-From: <>"),
        "a DSN is sent from <>: {}",
        dsn[0]
    );
    assert!(
        dsn[0].contains("X-Sink-To: <alice@sender.test>"),
        "{}",
        dsn[0]
    );
    assert!(dsn[0].contains("nobody@example.test"), "{}", dsn[0]);
}
