//! The policy stages that need other servers, in the node over SMTP on loopback: DNS lists
//! and SPF/DMARC against a real dnsmasq serving zones written at test time, and rate limits
//! shared by two nodes through a real Redis.

mod common;

#[path = "../../moat-policy/tests/common/mod.rs"]
#[allow(unused_imports)]
mod fx;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use fx::{Dns, Redis, Zone};

const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[test]
fn weighted_dns_lists_refuse_at_the_threshold_skip_allowed_clients_and_survive_timeouts() {
    let blackhole = Dns::blackhole();
    let zone = Zone::new()
        .nxdomain("test")
        .listed("bl1.test", ip(3), LISTED)
        .listed("bl2.test", ip(3), Ipv4Addr::new(127, 0, 0, 4))
        .listed("bl1.test", ip(5), LISTED)
        .listed("bl1.test", ip(6), LISTED)
        .listed("bl2.test", ip(6), LISTED)
        .unanswered("slow.test", blackhole.local_addr().unwrap());
    let Some(dns) = Dns::start(&zone, blackhole) else {
        return;
    };
    let node = Node::start_with(Options {
        top: format!(
            r#"
[policy.ip_lists.allow]
inline = ["127.0.0.6"]
[policy.dns]
servers = ["{}"]
timeout_ms = 400
[policy.dnsbl]
threshold = 3
[[policy.dnsbl.zones]]
zone = "bl1.test"
weight = 2
[[policy.dnsbl.zones]]
zone = "bl2.test"
weight = 2
[[policy.dnsbl.zones]]
zone = "slow.test"
weight = 2
"#,
            dns.addr
        ),
        ..Options::default()
    });
    let greet = |from: &str| {
        let started = Instant::now();
        let r = Smtp::connect_from(from, node.mx).reply();
        (r, started.elapsed())
    };
    // Listed in two lists (2 + 2 ≥ 3): refused before the greeting, naming both.
    let (r, _) = greet("127.0.0.3");
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(r.contains("bl1.test") && r.contains("bl2.test"), "{r}");
    // Listed in one (2 < 3): served. The silent list costs its timeout, no more.
    let (r, took) = greet("127.0.0.5");
    assert!(r.starts_with("220"), "{r}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Allow-listed: no lookups at all, although listed in both.
    let (r, _) = greet("127.0.0.6");
    assert!(r.starts_with("220"), "{r}");

    let s = node.scrape();
    let lookups = |zone: &str, result: &str| {
        sample(
            &s,
            "moat_policy_dnsbl_lookups_total",
            &[("zone", zone), ("result", result)],
        )
    };
    assert_eq!(lookups("bl1.test", "listed"), 2.0, "127.0.0.3 and .5 only");
    assert_eq!(lookups("bl2.test", "listed"), 1.0);
    assert_eq!(
        lookups("slow.test", "timeout"),
        2.0,
        "a timeout is counted, not listed"
    );
    assert_eq!(
        sample(
            &s,
            "moat_policy_dnsbl_decisions_total",
            &[("decision", "allowlisted")]
        ),
        1.0
    );
}

fn send_from(node: &Node, mail_from: &str, header_from: &str) -> (String, String) {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send(&format!("MAIL FROM:<{mail_from}>\r\n"));
    let mail = c.reply();
    if !mail.starts_with("250") {
        return (mail, String::new());
    }
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(&format!(
        "From: <{header_from}>\r\nTo: <bob@example.test>\r\nSubject: auth\r\n\
         Message-ID: <{}@client.test>\r\n\r\nhello\r\n.\r\n",
        mail_from.replace('@', ".")
    ));
    let data = c.reply();
    c.cmd("QUIT", "221");
    (mail, data)
}

#[test]
fn spf_and_dmarc_decide_and_authentication_results_is_added() {
    let zone = Zone::new()
        .nxdomain("test")
        .txt("pass.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all")
        .txt("strict.test", "v=spf1 ip4:192.0.2.1 ~all")
        .txt("_dmarc.strict.test", "v=DMARC1; p=reject");
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let node = Node::start_with(Options {
        top: format!(
            "[policy.dns]\nservers = [\"{}\"]\n[policy.auth]\nenabled = true\n",
            dns.addr
        ),
        ..Options::default()
    });
    let (mail, _) = send_from(&node, "a@fail.test", "a@fail.test");
    assert!(
        mail.starts_with("550 5.7.23"),
        "SPF fail refused at MAIL: {mail}"
    );

    let (_, data) = send_from(&node, "a@pass.test", "a@pass.test");
    assert!(data.starts_with("250"), "{data}");
    let (_, data) = send_from(&node, "a@soft.test", "a@soft.test");
    assert!(
        data.starts_with("250"),
        "softfail is recorded, not refused: {data}"
    );
    let (_, data) = send_from(&node, "a@strict.test", "a@strict.test");
    assert!(
        data.starts_with("550 5.7.1"),
        "DMARC p=reject honoured at the end of DATA: {data}"
    );

    let delivered: Vec<String> = node
        .wait_delivered(2)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let header = |mail_from: &str| -> String {
        let m = delivered
            .iter()
            .find(|m| m.contains(&format!("Message-ID: <{}", mail_from.replace('@', "."))))
            .unwrap_or_else(|| panic!("{mail_from} delivered"));
        let start = m.find("Authentication-Results: mx.example.test;").expect(m);
        // The header, unfolded.
        let mut h = String::new();
        for (i, line) in m[start..].lines().enumerate() {
            if i > 0 && !line.starts_with([' ', '\t']) {
                break;
            }
            h.push_str(line.trim());
            h.push(' ');
        }
        h
    };
    let pass = header("a@pass.test");
    assert!(
        pass.contains("spf=pass") && pass.contains("smtp.mailfrom=a@pass.test"),
        "{pass}"
    );
    assert!(
        pass.contains("dkim=none") && pass.contains("dmarc=none"),
        "{pass}"
    );
    let soft = header("a@soft.test");
    assert!(soft.contains("spf=softfail"), "{soft}");
}

fn mail_reply(node: &Node) -> String {
    let mut c = Smtp::connect_from("127.0.0.3", node.mx);
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send("MAIL FROM:<a@sender.test>\r\n");
    let r = c.reply();
    c.cmd("QUIT", "221");
    r
}

#[test]
fn two_nodes_share_one_rate_limit_through_redis_and_fall_back_when_it_goes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let options = || Options {
        top: format!(
            "[policy.rate_limits]\nmessages_per_ip = {{ max = 3, window_secs = 3600 }}\n\
             [policy.redis]\nurl = \"{}\"\ntimeout_ms = 200\nretry_ms = 300\n",
            redis.url()
        ),
        ..Options::default()
    };
    let a = Node::start_with(options());
    let b = Node::start_with(options());
    let shared = |n: &Node| sample(&n.scrape(), "moat_policy_rate_store_shared", &[]);
    // Both reach Redis (the first answer arrives in the background).
    assert!(
        eventually(Duration::from_secs(10), || shared(&a) == 1.0
            && shared(&b) == 1.0),
        "nodes did not reach Redis"
    );
    for node in [&a, &a, &b] {
        let r = mail_reply(node);
        assert!(r.starts_with("250"), "{r}");
    }
    // The fourth message from this client, on either node, is over the one shared limit.
    for node in [&a, &b] {
        let r = mail_reply(node);
        assert!(r.starts_with("451 4.7.1"), "{r}");
    }

    redis.stop();
    // No transaction fails because Redis is gone: each node counts locally, and its own
    // limit still applies.
    for i in 0..3 {
        let r = mail_reply(&a);
        assert!(r.starts_with("250"), "local count {i}: {r}");
    }
    let r = mail_reply(&a);
    assert!(r.starts_with("451 4.7.1"), "the local limit holds: {r}");
    assert!(mail_reply(&b).starts_with("250"), "b counts on its own");
    assert_eq!(shared(&a), 0.0);
    assert!(sample(&a.scrape(), "moat_policy_rate_store_fallbacks_total", &[]) >= 4.0);
    assert!(
        a.log_text().contains("Redis unreachable"),
        "the fallback is logged"
    );
}
