//! The content filter in the node: verdicts over SMTP, quarantine administration, and rule
//! packs swapped (watcher, SIGHUP, admin call) while the node is under load.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A pack with a tag, a quarantine and a reject rule; `version` and an extra rule line vary.
fn pack(version: &str, extra: &str) -> String {
    format!(
        r#"
[pack]
name = "swap"
version = "{version}"
description = "test pack"
reject_text = "refused by the swap pack"
subject_prefix = "[TAGGED]"

[thresholds]
tag = 1.0
quarantine = 5.0
reject = 10.0

[[rule]]
id = "TAG_ME"
description = "tag"
target = "subject"
literals = ["tag me"]
score = 1.0

[[rule]]
id = "HOLD_ME"
description = "quarantine"
target = "subject"
literals = ["hold me"]
score = 5.0

[[rule]]
id = "REJECT_ME"
description = "reject"
target = "body"
literals = ["reject this body"]
score = 10.0
{extra}

[[test]]
name = "reject rule"
snippet = {{ body = "please reject this body" }}
must_hit = ["REJECT_ME"]
verdict = "reject"
"#
    )
}

fn rules_dir(node_dir: &Path, text: &str) -> std::path::PathBuf {
    let dir = node_dir.join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("swap.toml"), text).unwrap();
    dir
}

fn start(rules_text: &str) -> (Node, std::path::PathBuf) {
    start_with_filter(rules_text, "")
}

/// A node whose `[filter]` section also holds `extra` (lines of keys); its rules folder.
fn start_with_filter(rules_text: &str, extra: &str) -> (Node, std::path::PathBuf) {
    // The rules folder must exist before the node starts: create it in a folder of its own.
    let holder = tempfile::tempdir().unwrap().keep();
    let dir = rules_dir(&holder, rules_text);
    let node = Node::start_with(Options {
        top: String::new(),
        relay: String::new(),
        mx_extra: String::new(),
        mx_limits: String::new(),
        filter: format!(
            "[filter]\nenabled = true\nrules_dir = \"{}\"\ndebounce = \"200ms\"\n{extra}",
            dir.display()
        ),
    });
    (node, dir)
}

fn transaction(node: &Node, subject: &str, body: &str) -> String {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(&format!(
        "From: <a@sender.test>\r\nSubject: {subject}\r\nMessage-ID: <x@sender.test>\r\n\r\n{body}\r\n.\r\n"
    ));
    let r = c.reply();
    c.cmd("QUIT", "221");
    r
}

fn active_version(node: &Node) -> Option<String> {
    node.scrape()
        .samples
        .iter()
        .find(|s| s.metric == "moat_rules_active_info")
        .and_then(|s| s.labels.get("version").map(str::to_string))
}

fn wait_version(node: &Node, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while active_version(node).as_deref() != Some(want) {
        assert!(
            started.elapsed() < within,
            "version {want} not active within {within:?}; active {:?}\n{}",
            active_version(node),
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}

#[test]
fn verdicts_over_smtp_and_quarantine_administration() {
    let (node, _) = start(&pack("1", ""));
    assert!(transaction(&node, "plain", "nothing").starts_with("250 2.0.0"));
    let r = transaction(&node, "x", "please reject this body");
    assert!(r.starts_with("550 5.7.1 refused by the swap pack"), "{r}");
    assert!(transaction(&node, "tag me", "hello").starts_with("250 2.0.0"));
    let held = transaction(&node, "hold me", "hello");
    assert!(held.starts_with("250 2.0.0 Ok: queued as "), "{held}");
    let held_id = held.rsplit(' ').next().unwrap().to_string();

    // Two delivered: the plain one and the tagged one, with its headers.
    let delivered = node.wait_delivered(2);
    let tagged = delivered
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains("tag me"))
        .unwrap();
    assert!(tagged.contains("Subject: [TAGGED] tag me"), "{tagged}");
    assert!(tagged.contains("X-Moat-Score: 1"), "{tagged}");
    assert!(
        tagged.contains("X-Moat-Status: ") && tagged.contains("TAG_ME"),
        "{tagged}"
    );

    // The quarantined one waits, held, until released.
    let config = node.config();
    let quarantine = |args: &[&str]| {
        let mut all = vec!["quarantine", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        run_tool(env!("CARGO_BIN_EXE_moat"), &all).unwrap()
    };
    let (ok, list) = quarantine(&["list"]);
    assert!(
        ok && list.contains(&held_id) && list.contains("1 message(s)"),
        "{list}"
    );
    let (ok, show) = quarantine(&["show", &held_id]);
    assert!(ok && show.contains("state:    held"), "{show}");
    assert!(quarantine(&["release", &held_id]).0);
    let delivered = node.wait_delivered(3);
    let released = delivered
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains("Subject: hold me"))
        .unwrap();
    assert!(released.contains("X-Moat-Quarantine: "), "{released}");

    let s = node.scrape();
    let mx = ("connector", "mx");
    assert_eq!(
        sample(
            &s,
            "moat_smtp_transactions_total",
            &[mx, ("result", "quarantined")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "moat_smtp_transactions_total",
            &[mx, ("result", "rejected")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "moat_rule_hits_total",
            &[("pack", "swap"), ("rule", "REJECT_ME")]
        ),
        1.0
    );
    assert_eq!(
        sample(&s, "moat_filter_verdicts_total", &[("action", "tag")]),
        1.0
    );
}

#[test]
fn long_parts_are_scanned_up_to_the_configured_size() {
    let (node, dir) = start_with_filter(&pack("1", ""), "max_text_scan_bytes = 2000\n");
    // 5,200 bytes of filler in lines of 52.
    let filler = format!("{}\r\n", "word ".repeat(10)).repeat(100);
    // The reject phrase past the scan limit is not seen: accepted, and the cut counted.
    let late = format!("{filler}please reject this body");
    let r = transaction(&node, "plain", &late);
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Within the limit it is.
    let r = transaction(&node, "x", &format!("please reject this body\r\n{filler}"));
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let s = node.scrape();
    assert_eq!(sample(&s, "moat_filter_truncated_parts_total", &[]), 2.0);

    // `moat scan` with the node's configuration applies the same limit; on the embedded
    // defaults (50,000 bytes) it sees the phrase.
    // Beside the rules folder, not in it.
    let msg = dir.parent().unwrap().join("late.eml");
    std::fs::write(
        &msg,
        format!("From: <a@sender.test>\r\nSubject: plain\r\n\r\n{late}\r\n"),
    )
    .unwrap();
    let config = node.config();
    let scan = |args: &[&str]| {
        let mut all = vec!["scan"];
        all.extend_from_slice(args);
        all.push(msg.to_str().unwrap());
        run_tool(env!("CARGO_BIN_EXE_moat"), &all).unwrap()
    };
    let (ok, out) = scan(&["--config", config.to_str().unwrap()]);
    assert!(
        ok && out.contains(": continue") && out.contains("truncated=1"),
        "{out}"
    );
    assert!(!out.contains("REJECT_ME"), "{out}");
    let (ok, out) = scan(&["--rules", dir.to_str().unwrap()]);
    assert!(
        ok && out.contains(": reject") && out.contains("REJECT_ME"),
        "{out}"
    );
    assert!(!out.contains("truncated"), "{out}");

    // With the filter off in the configuration, the scan says what it runs on instead.
    let off = dir.parent().unwrap().join("off.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("enabled = true"), "{text}");
    std::fs::write(&off, text.replacen("enabled = true", "enabled = false", 1)).unwrap();
    let (ok, out) = scan(&[
        "--config",
        off.to_str().unwrap(),
        "--rules",
        dir.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("REJECT_ME"), "{out}");
    assert!(
        out.contains("the content filter is off in") && out.contains("embedded filter defaults"),
        "{out}"
    );
}

#[test]
fn packs_swap_under_load_without_a_failed_transaction() {
    if !have_tool("smtp-source", "postfix") {
        return;
    }
    let (node, dir) = start(&pack("v0", ""));
    let seconds: u64 = std::env::var("MOAT_SWAP_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // smtp-source sends for the whole run: sessions reuse their connection, many messages.
    let target = format!("127.0.0.1:{}", node.mx);
    let source = if Path::new("/usr/sbin/smtp-source").exists() {
        "/usr/sbin/smtp-source"
    } else {
        "smtp-source"
    };
    let mut load = std::process::Command::new(source)
        .args([
            "-s",
            "8",
            "-m",
            "100000000",
            "-l",
            "2048",
            "-d",
            "-f",
            "load@sender.test",
            "-t",
            "bob@example.test",
            "-M",
            "client.test",
            &target,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let step = Duration::from_millis(seconds * 1000 / 20);
    let mut good = 0;
    let mut worst = Duration::ZERO;
    for i in 1..=20 {
        std::thread::sleep(step.saturating_sub(Duration::from_millis(100)));
        let broken = i % 4 == 0; // 5 of the 20 versions are broken
        let version = format!("v{i}");
        let trigger = i % 3; // watcher, SIGHUP, admin call in turn
        let text = match (broken, i % 3) {
            (false, _) => pack(&version, ""),
            (true, 0) => pack(
                &version,
                "\n[[rule]]\nid = \"BAD_REGEX\"\ndescription = \"x\"\ntarget = \"body\"\nregex = \"(unclosed\"\nscore = 1.0\n",
            ),
            (true, 1) => pack(
                &version,
                "\n[[rule]]\nid = \"BAD_META\"\ndescription = \"x\"\nmeta = \"TAG_ME && NO_SUCH_RULE\"\nscore = 1.0\n",
            ),
            (true, _) => {
                pack(&version, "").replace("verdict = \"reject\"", "verdict = \"continue\"")
            }
        };
        let previous = active_version(&node).unwrap();
        std::fs::write(dir.join("swap.toml.tmp"), &text).unwrap();
        std::fs::rename(dir.join("swap.toml.tmp"), dir.join("swap.toml")).unwrap();
        match trigger {
            0 => {} // the watcher sees the rename
            1 => node.signal("HUP"),
            _ => {
                let (code, body) = admin_post(&node, "/admin/rules/reload");
                if broken {
                    assert_eq!(code, 422, "{body}");
                    assert!(
                        body.contains("swap.toml"),
                        "the error names the file: {body}"
                    );
                } else {
                    assert!(code == 200, "{code} {body}");
                }
            }
        }
        if broken {
            // Refused: the previous version stays.
            std::thread::sleep(Duration::from_millis(800));
            assert_eq!(active_version(&node).as_deref(), Some(previous.as_str()));
        } else {
            worst = worst.max(wait_version(&node, &version, Duration::from_secs(2)));
            good += 1;
        }
    }
    let remaining = Duration::from_secs(seconds).saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    let _ = load.kill();
    let out = load.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    // smtp-source prints every failed transaction; killing it at the end may cut one
    // connection, which it does not report.
    assert!(
        errors.trim().is_empty(),
        "failed transactions under load:\n{errors}"
    );
    let s = node.scrape();
    let accepted = sample(
        &s,
        "moat_smtp_transactions_total",
        &[("connector", "mx"), ("result", "accepted")],
    );
    assert!(accepted > 100.0, "the load ran: {accepted}");
    let tempfailed = sample(
        &s,
        "moat_smtp_transactions_total",
        &[("connector", "mx"), ("result", "tempfailed")],
    );
    assert_eq!(tempfailed, 0.0);
    let rejected: f64 = ["watcher", "sighup", "admin"]
        .iter()
        .map(|t| {
            sample(
                &s,
                "moat_rules_reloads_total",
                &[("trigger", t), ("result", "rejected")],
            )
        })
        .sum();
    assert!(rejected >= 5.0, "{rejected}");
    let log = node.log_text();
    assert!(
        log.contains("BAD_REGEX") && log.contains("NO_SUCH_RULE"),
        "rejections name the rule"
    );
    println!(
        "swapped {good} good versions (slowest active after {worst:?}), refused 5 broken ones, {accepted} messages accepted, 0 failed"
    );
}

fn admin_post(node: &Node, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: moat\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        node.token()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}
