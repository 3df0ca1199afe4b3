//! DNS block and allow lists against a real DNS server (dnsmasq) on loopback, with the
//! listings written at test time.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Dns, Zone};
use moat_core::{Envelope, Reply, SessionInfo, Stage, Verdict};
use moat_policy::{
    DnsConfig, Dnsbl, DnsblAction, DnsblConfig, DnsblMetrics, DnsblStage, DnsblZoneConfig,
    IpListStore, IpListsConfig,
};
use prometheus::Registry;

const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LISTED_4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// The lists over a resolver pointed at `dns`, with metrics on a fresh registry.
fn lists(dns: &Dns, config: &DnsblConfig) -> (Dnsbl, Registry) {
    let dns_config = DnsConfig {
        servers: vec![dns.addr],
        timeout_ms: 300,
        ..Default::default()
    };
    let resolver = dns_config.resolver().expect("resolver");
    let registry = Registry::new();
    let metrics = DnsblMetrics::new(&registry).expect("metrics");
    let dnsbl = config
        .build(resolver, &dns_config, metrics)
        .expect("valid config");
    (dnsbl, registry)
}

fn config(zones: Vec<DnsblZoneConfig>, threshold: i32) -> DnsblConfig {
    DnsblConfig {
        zones,
        threshold,
        ..Default::default()
    }
}

fn stage(dnsbl: Dnsbl, action: DnsblAction, allow: &[&str]) -> DnsblStage {
    let mut lists = IpListsConfig::default();
    lists.allow.inline = allow.iter().map(|s| s.to_string()).collect();
    let store = IpListStore::new(lists).expect("ip lists");
    DnsblStage::new(dnsbl, action, Arc::new(store))
}

fn session(ip: IpAddr) -> SessionInfo {
    SessionInfo {
        connector: "mx".into(),
        client: (ip, 40000).into(),
        local: "192.0.2.250:25".parse().unwrap(),
        helo: None,
        esmtp: false,
        tls: None,
        auth_user: None,
        may_relay: false,
    }
}

fn rejection(verdict: &Verdict) -> &Reply {
    match verdict {
        Verdict::Reject(reply) => reply,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The sum of the samples of counter `name` whose labels include all of `labels`.
fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::samples(registry, name, labels)
        .into_iter()
        .map(|v| match v {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn lookups(registry: &Registry, zone: &str, result: &str) -> f64 {
    counter(
        registry,
        "moat_policy_dnsbl_lookups_total",
        &[("zone", zone), ("result", result)],
    )
}

fn decisions(registry: &Registry, decision: &str) -> f64 {
    counter(
        registry,
        "moat_policy_dnsbl_decisions_total",
        &[("decision", decision)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_in_two_weighted_zones_is_refused_at_connect_and_in_one_is_not() {
    let both = Ipv4Addr::new(192, 0, 2, 10);
    let one = Ipv4Addr::new(192, 0, 2, 11);
    let zone = Zone::new()
        .listed("bl1.test", both, LISTED)
        .listed("bl2.test", both, LISTED_4)
        .listed("bl1.test", one, LISTED)
        .nxdomain("bl1.test")
        .nxdomain("bl2.test");
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("bl1.test", 2),
                DnsblZoneConfig::new("bl2.test", 2),
            ],
            4,
        ),
    );

    let outcome = dnsbl.check(both.into()).await;
    assert_eq!(outcome.score, 4);
    assert!(outcome.refused);
    let hits: Vec<(&str, Ipv4Addr, i32)> = outcome
        .hits
        .iter()
        .map(|h| (&*h.zone, h.code, h.weight))
        .collect();
    assert_eq!(
        hits,
        vec![("bl1.test", LISTED, 2), ("bl2.test", LISTED_4, 2)]
    );
    let outcome = dnsbl.check(one.into()).await;
    assert_eq!((outcome.score, outcome.refused), (2, false));

    let stage = stage(dnsbl, DnsblAction::Connect, &[]);
    assert_eq!(stage.name(), "dnsbl");
    let verdict = stage.connect(&session(both.into())).await;
    let reply = rejection(&verdict);
    assert_eq!(
        reply.to_string(),
        "554 5.7.1 Service unavailable; client [192.0.2.10] blocked using bl1.test, bl2.test\r\n"
    );
    assert_eq!(stage.connect(&session(one.into())).await, Verdict::Continue);

    assert_eq!(decisions(&registry, "refused_connect"), 1.0);
    assert_eq!(decisions(&registry, "passed"), 1.0);
    assert_eq!(lookups(&registry, "bl1.test", "listed"), 4.0);
    assert_eq!(lookups(&registry, "bl2.test", "listed"), 2.0);
    assert_eq!(lookups(&registry, "bl2.test", "not_listed"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_per_return_code_apply() {
    let sbl = Ipv4Addr::new(192, 0, 2, 20);
    let xbl = Ipv4Addr::new(192, 0, 2, 21);
    let both = Ipv4Addr::new(192, 0, 2, 22);
    let zone = Zone::new()
        .listed("zen.test", sbl, LISTED)
        .listed("zen.test", xbl, LISTED_4)
        .listed("zen.test", both, LISTED)
        .listed("zen.test", both, LISTED_4);
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let mut zen = DnsblZoneConfig::new("zen.test", 0);
    zen.weights.insert("127.0.0.2".into(), 5);
    zen.weights.insert("127.0.0.3-127.0.0.7".into(), 1);
    let (dnsbl, _registry) = lists(&dns, &config(vec![zen], 5));

    let outcome = dnsbl.check(sbl.into()).await;
    assert_eq!((outcome.score, outcome.refused), (5, true), "{outcome:?}");
    let outcome = dnsbl.check(xbl.into()).await;
    assert_eq!((outcome.score, outcome.refused), (1, false), "{outcome:?}");
    let outcome = dnsbl.check(both.into()).await;
    let codes: Vec<(Ipv4Addr, i32)> = outcome.hits.iter().map(|h| (h.code, h.weight)).collect();
    assert_eq!(
        codes,
        vec![(LISTED, 5), (LISTED_4, 1)],
        "each code of one answer adds its own weight"
    );
    assert_eq!((outcome.score, outcome.refused), (6, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_zone_with_a_negative_weight_rescues_a_client() {
    let rescued = Ipv4Addr::new(192, 0, 2, 30);
    let blocked = Ipv4Addr::new(192, 0, 2, 31);
    let zone = Zone::new()
        .listed("bl1.test", rescued, LISTED)
        .listed("wl.test", rescued, LISTED)
        .listed("bl1.test", blocked, LISTED);
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("bl1.test", 3),
                DnsblZoneConfig::new("wl.test", -5),
            ],
            3,
        ),
    );
    let stage = stage(dnsbl, DnsblAction::Connect, &[]);
    assert_eq!(
        stage.connect(&session(rescued.into())).await,
        Verdict::Continue
    );
    let outcome = stage.dnsbl().check(rescued.into()).await;
    assert_eq!((outcome.score, outcome.refused), (-2, false));
    let verdict = stage.connect(&session(blocked.into())).await;
    let reply = rejection(&verdict);
    assert!(
        reply.text().ends_with("blocked using bl1.test"),
        "the allow list is not named: {reply}"
    );
    assert_eq!(decisions(&registry, "passed"), 1.0);
    assert_eq!(decisions(&registry, "refused_connect"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_client_skips_the_lookups() {
    let client = Ipv4Addr::new(192, 0, 2, 40);
    let zone = Zone::new()
        .listed("bl1.test", client, LISTED)
        .listed("bl2.test", client, LISTED)
        .log_queries();
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("bl1.test", 1),
                DnsblZoneConfig::new("bl2.test", 1),
            ],
            1,
        ),
    );
    for action in [DnsblAction::Connect, DnsblAction::Rcpt] {
        let stage = stage(dnsbl.clone(), action, &["192.0.2.0/24"]);
        let session = session(client.into());
        assert_eq!(stage.connect(&session).await, Verdict::Continue);
        let env = Envelope::default();
        assert_eq!(
            stage.rcpt(&session, &env, "bob@example.test").await,
            Verdict::Continue
        );
    }
    // Give a (wrongly) spawned background lookup time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(decisions(&registry, "allowlisted"), 2.0);
    assert_eq!(
        counter(&registry, "moat_policy_dnsbl_lookups_total", &[]),
        0.0,
        "no lookups counted"
    );
    assert_eq!(dns.queries("A", "40.2.0.192.bl1.test"), 0, "{}", dns.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_timeout_neither_blocks_nor_refuses_and_is_counted() {
    let blackhole = Dns::blackhole();
    let listed = Ipv4Addr::new(192, 0, 2, 50);
    let clean = Ipv4Addr::new(192, 0, 2, 51);
    let zone = Zone::new()
        .listed("bl1.test", listed, LISTED)
        .nxdomain("bl1.test")
        .unanswered("silent.test", blackhole.local_addr().unwrap());
    let Some(dns) = Dns::start(&zone, blackhole) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("silent.test", 5),
                DnsblZoneConfig::new("bl1.test", 5),
            ],
            5,
        ),
    );
    let stage = stage(dnsbl, DnsblAction::Connect, &[]);

    let start = Instant::now();
    assert_eq!(
        stage.connect(&session(clean.into())).await,
        Verdict::Continue
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "bounded by the resolver's timeout: {took:?}"
    );
    let verdict = stage.connect(&session(listed.into())).await;
    assert!(
        rejection(&verdict)
            .text()
            .ends_with("blocked using bl1.test"),
        "a silent list does not stop the others from refusing"
    );
    assert_eq!(lookups(&registry, "silent.test", "timeout"), 2.0);
    assert_eq!(lookups(&registry, "silent.test", "listed"), 0.0);
    assert_eq!(lookups(&registry, "bl1.test", "not_listed"), 1.0);
    assert_eq!(decisions(&registry, "passed"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_check_of_a_client_is_answered_from_the_cache() {
    let client = Ipv4Addr::new(192, 0, 2, 60);
    let clean = Ipv4Addr::new(192, 0, 2, 61);
    let zone = Zone::new()
        .listed("bl1.test", client, LISTED)
        .authoritative("bl1.test")
        .log_queries();
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(&dns, &config(vec![DnsblZoneConfig::new("bl1.test", 1)], 1));

    // "Not listed" (NXDOMAIN with the zone's SOA, as a real list answers) is cached too.
    let clean_name = "61.2.0.192.bl1.test";
    for _ in 0..3 {
        assert!(!dnsbl.check(clean.into()).await.refused);
    }
    assert_eq!(wait_for_queries(&dns, clean_name, 1).await, 1);
    assert_eq!(lookups(&registry, "bl1.test", "not_listed"), 3.0);

    let name = "60.2.0.192.bl1.test";
    assert!(dnsbl.check(client.into()).await.refused);
    let first = wait_for_queries(&dns, name, 1).await;
    assert_eq!(first, 1, "the first check asks the server: {}", dns.log());

    // With the RCPT action the stage asks again at each RCPT; all from the cache.
    let stage = stage(dnsbl, DnsblAction::Rcpt, &[]);
    let session = session(client.into());
    let env = Envelope::default();
    assert!(dnsbl_again(&stage, &session, &env).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dns.queries("A", name),
        1,
        "no new query reached the server: {}",
        dns.log()
    );
    assert_eq!(dns.queries("A", clean_name), 1, "{}", dns.log());
    assert_eq!(lookups(&registry, "bl1.test", "listed"), 4.0);
    assert_eq!(decisions(&registry, "refused_rcpt"), 2.0);
}

/// Connect, then two RCPTs; whether both RCPTs were refused with 554 5.7.1.
async fn dnsbl_again(stage: &DnsblStage, session: &SessionInfo, env: &Envelope) -> bool {
    assert_eq!(stage.connect(session).await, Verdict::Continue);
    let mut refused = true;
    for rcpt in ["a@example.test", "b@example.test"] {
        let verdict = stage.rcpt(session, env, rcpt).await;
        let reply = rejection(&verdict);
        refused &= reply.to_string().starts_with("554 5.7.1 ");
    }
    refused
}

/// Polls the server's log (written asynchronously) until `want` queries for `name` show.
async fn wait_for_queries(dns: &Dns, name: &str, want: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = dns.queries("A", name);
        if n >= want || start.elapsed() > Duration::from_secs(2) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_is_looked_up_by_reversed_nibbles() {
    let client: Ipv6Addr = "2001:db8::25".parse().unwrap();
    let zone = Zone::new()
        .listed6("bl1.test", client, LISTED)
        .log_queries();
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(&dns, &config(vec![DnsblZoneConfig::new("bl1.test", 1)], 1));
    let stage = stage(dnsbl, DnsblAction::Connect, &[]);
    let verdict = stage.connect(&session(client.into())).await;
    assert_eq!(
        rejection(&verdict).text(),
        "Service unavailable; client [2001:db8::25] blocked using bl1.test"
    );
    let name = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl1.test";
    assert_eq!(wait_for_queries(&dns, name, 1).await, 1, "{}", dns.log());
    assert_eq!(lookups(&registry, "bl1.test", "listed"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_outside_loopback_and_error_signals_are_ignored() {
    let client = Ipv4Addr::new(192, 0, 2, 70);
    let zone = Zone::new()
        .listed("typo.test", client, Ipv4Addr::new(192, 0, 2, 1))
        .listed("refusing.test", client, Ipv4Addr::new(127, 255, 255, 254));
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("typo.test", 10),
                DnsblZoneConfig::new("refusing.test", 10),
            ],
            1,
        ),
    );
    let outcome = dnsbl.check(client.into()).await;
    assert_eq!(
        (outcome.score, outcome.refused, outcome.hits.len()),
        (0, false, 0)
    );
    assert_eq!(lookups(&registry, "typo.test", "bogus_answer"), 1.0);
    assert_eq!(lookups(&registry, "refusing.test", "error"), 1.0);
    assert_eq!(
        counter(
            &registry,
            "moat_policy_dnsbl_lookups_total",
            &[("result", "listed")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_action_lets_the_session_go_on_and_spares_authenticated_clients() {
    let client = Ipv4Addr::new(192, 0, 2, 80);
    let zone = Zone::new().listed("bl1.test", client, LISTED);
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(&dns, &config(vec![DnsblZoneConfig::new("bl1.test", 1)], 1));
    let stage = stage(dnsbl, DnsblAction::Rcpt, &[]);
    let mut session = session(client.into());
    let env = Envelope::default();
    assert!(dnsbl_again(&stage, &session, &env).await);
    session.auth_user = Some("alice".into());
    assert_eq!(
        stage.rcpt(&session, &env, "c@example.test").await,
        Verdict::Continue
    );
    assert_eq!(decisions(&registry, "refused_rcpt"), 2.0);
    assert_eq!(decisions(&registry, "refused_connect"), 0.0);
    assert_eq!(decisions(&registry, "authenticated"), 1.0);
}

/// A UDP server on loopback that answers every query with SERVFAIL; runs until the test
/// process ends (the thread only ever blocks in `recv_from`).
fn servfail_server() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = 0x80 | 0x02; // RA, RCODE 2 = SERVFAIL
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servfail_counts_as_not_listed_and_is_counted() {
    let client = Ipv4Addr::new(192, 0, 2, 90);
    let zone = Zone::new()
        .listed("bl1.test", client, LISTED)
        .unanswered("failing.test", servfail_server());
    let Some(dns) = Dns::start(&zone, Dns::blackhole()) else {
        return;
    };
    let (dnsbl, registry) = lists(
        &dns,
        &config(
            vec![
                DnsblZoneConfig::new("failing.test", 5),
                DnsblZoneConfig::new("bl1.test", 1),
            ],
            5,
        ),
    );
    let outcome = dnsbl.check(client.into()).await;
    assert_eq!((outcome.score, outcome.refused), (1, false), "{outcome:?}");
    assert_eq!(
        lookups(&registry, "failing.test", "servfail"),
        1.0,
        "{}",
        dns.log()
    );
}
