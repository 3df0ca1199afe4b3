//! Connection, sender and recipient hygiene in the node, over SMTP on loopback: the IP
//! lists and the recipient directory reloaded from their files, the staleness fallback,
//! the pregreet test and the per-network connection limit.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// RCPT reply for `rcpt` in a fresh session from 127.0.0.3.
fn rcpt_reply(node: &Node, rcpt: &str) -> String {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.send(&format!("RCPT TO:<{rcpt}>\r\n"));
    let r = c.reply();
    c.cmd("QUIT", "221");
    r
}

fn set_age(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn recipient_directory_refuses_unknown_users_and_reloads_without_restart() {
    let lists = tempfile::tempdir().unwrap();
    let directory = lists.path().join("recipients.txt");
    std::fs::write(&directory, "alice@example.test\n").unwrap();
    let node = Node::start_with(Options {
        top: format!(
            "[policy.recipients]\ndirectory = \"{}\"\nstale_after_secs = 86400\n\
             stale_action = \"accept-all\"\n",
            directory.display()
        ),
        ..Options::default()
    });
    assert!(rcpt_reply(&node, "alice@example.test").starts_with("250"));
    let r = rcpt_reply(&node, "bob@example.test");
    assert!(r.starts_with("550 5.1.1"), "unknown user at RCPT: {r}");

    // The export job adds bob: no restart needed.
    std::fs::write(&directory, "alice@example.test\nbob@example.test\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || rcpt_reply(
            &node,
            "bob@example.test"
        )
        .starts_with("250")),
        "the edited directory took effect"
    );
    // A broken edit keeps the running directory.
    std::fs::write(&directory, "alice@example.test\nnot an address\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(rcpt_reply(&node, "bob@example.test").starts_with("250"));
    let s = node.scrape();
    assert!(
        sample(
            &s,
            "moat_policy_reloads_total",
            &[("list", "directory"), ("result", "rejected")]
        ) >= 1.0,
        "the rejected reload is counted"
    );

    // The job stops: the file ages past stale_after_secs; accept-all lets new users in.
    std::fs::write(&directory, "alice@example.test\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || rcpt_reply(
        &node,
        "bob@example.test"
    )
    .starts_with("550 5.1.1")));
    set_age(&directory, Duration::from_secs(2 * 86_400));
    assert!(
        eventually(Duration::from_secs(5), || rcpt_reply(
            &node,
            "carol@example.test"
        )
        .starts_with("250")),
        "a stale directory falls back to accepting the accepted domains"
    );
    let r = rcpt_reply(&node, "carol@elsewhere.test");
    assert!(
        r.starts_with("554 5.7.1") || r.starts_with("550"),
        "still no open relay: {r}"
    );
    let s = node.scrape();
    assert!(sample(&s, "moat_policy_directory_age_seconds", &[]) > 86_400.0);
}

#[test]
fn ip_block_list_file_reloads_and_a_broken_edit_keeps_the_old_list() {
    let lists = tempfile::tempdir().unwrap();
    let block = lists.path().join("block.txt");
    std::fs::write(&block, "# nobody yet\n").unwrap();
    let node = Node::start_with(Options {
        top: format!(
            "[policy.ip_lists.block]\nfiles = [\"{}\"]\n",
            block.display()
        ),
        ..Options::default()
    });
    let greeting = || Smtp::connect_from("127.0.0.3", node.mx).reply();
    assert!(greeting().starts_with("220"));
    std::fs::write(&block, "127.0.0.3\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || greeting()
            .starts_with("554 5.7.1")),
        "the block list file took effect"
    );
    assert!(
        Smtp::connect_from("127.0.0.5", node.mx)
            .reply()
            .starts_with("220")
    );
    std::fs::write(&block, "127.0.0.3\n300.1.2.3\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(greeting().starts_with("554 5.7.1"), "the old list stays");
    let s = node.scrape();
    assert!(
        sample(
            &s,
            "moat_policy_reloads_total",
            &[("list", "ip_lists"), ("result", "rejected")]
        ) >= 1.0
    );
}

#[test]
fn pregreet_refuses_early_talkers_and_greets_patient_clients_after_the_wait() {
    let node = Node::start_with(Options {
        mx_limits: "command_timeout = \"3s\", pregreet_wait = \"600ms\"".into(),
        ..Options::default()
    });
    let mut bot = Smtp::connect_from("127.0.0.3", node.mx);
    bot.send("EHLO bot.example\r\n");
    let r = bot.reply();
    assert!(r.starts_with("554 5.5.1"), "talked before the banner: {r}");

    let started = Instant::now();
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    assert!(
        waited < Duration::from_millis(1600),
        "not slowed beyond the wait: {waited:?}"
    );
    c.cmd("EHLO patient.example", "250");
    c.cmd("QUIT", "221");
    let s = node.scrape();
    assert_eq!(
        sample(
            &s,
            "moat_smtp_protocol_tests_total",
            &[("connector", "mx"), ("test", "pregreet")]
        ),
        1.0
    );
}

#[test]
fn connections_per_client_network_are_limited() {
    let node = Node::start_with(Options {
        mx_extra: "max_connections_per_net = 2".into(),
        ..Options::default()
    });
    // 127.0.0.3 and 127.0.0.5 share 127.0.0.0/24.
    let mut a = Smtp::connect_from("127.0.0.3", node.mx);
    a.expect("220");
    let mut b = Smtp::connect_from("127.0.0.5", node.mx);
    b.expect("220");
    let r = Smtp::connect_from("127.0.0.6", node.mx).reply();
    assert!(r.starts_with("421 4.7.0"), "third from the /24: {r}");
    a.cmd("QUIT", "221");
    drop(a);
    assert!(eventually(Duration::from_secs(5), || Smtp::connect_from(
        "127.0.0.6",
        node.mx
    )
    .reply()
    .starts_with("220")));
}

#[test]
fn check_config_names_the_file_and_line_of_a_broken_list() {
    let dir = tempfile::tempdir().unwrap();
    let block = dir.path().join("block.txt");
    std::fs::write(&block, "192.0.2.1\n192.0.2.300\n").unwrap();
    let config = dir.path().join("moat.toml");
    std::fs::write(
        &config,
        format!(
            "[policy.ip_lists.block]\nfiles = [\"{}\"]\n[policy.dnsbl]\nthreshold = 0\n",
            block.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("block.txt:2"), "{err}");
    assert!(
        err.contains("policy.dnsbl.threshold"),
        "every problem at once: {err}"
    );
}
