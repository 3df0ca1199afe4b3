//! The shared resolver against a real DNS server on loopback.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Dns, Zone};
use moat_policy::DnsConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_from_the_configured_server_and_times_out_on_a_silent_one() {
    let blackhole = Dns::blackhole();
    let zone = Zone::new()
        .a("host.moat.test", Ipv4Addr::new(192, 0, 2, 7))
        .txt("long.moat.test", &"x".repeat(600))
        .unanswered("silent.test", blackhole.local_addr().unwrap());
    let Some(dns) = Dns::start(&zone, blackhole) else {
        return;
    };
    let config = DnsConfig {
        servers: vec![dns.addr],
        timeout_ms: 300,
        ..Default::default()
    };
    let resolver = config.resolver().expect("resolver");

    let a = resolver
        .ipv4_lookup("host.moat.test.")
        .await
        .expect("A lookup");
    let ips: Vec<Ipv4Addr> = a
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec![Ipv4Addr::new(192, 0, 2, 7)]);

    let txt = resolver
        .txt_lookup("long.moat.test.")
        .await
        .expect("TXT lookup");
    let joined: usize = txt
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::TXT(t) => {
                Some(t.txt_data.iter().map(|s| s.len()).sum::<usize>())
            }
            _ => None,
        })
        .sum();
    assert_eq!(
        joined, 600,
        "a long TXT value comes back whole, in 255-octet strings"
    );

    assert!(
        resolver.ipv4_lookup("nothing.moat.test.").await.is_err(),
        "NXDOMAIN is an error"
    );

    let start = Instant::now();
    assert!(resolver.ipv4_lookup("a.silent.test.").await.is_err());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a silent server costs about the timeout, not more: {:?}",
        start.elapsed()
    );
}

#[test]
fn rejects_an_empty_server_list() {
    let config = DnsConfig {
        servers: vec![],
        ..Default::default()
    };
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { config.resolver().err() })
        .expect("refused");
    assert!(err.to_string().contains("policy.dns.servers"), "{err}");
}
