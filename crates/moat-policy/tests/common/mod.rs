//! Test fixtures: a private DNS server (dnsmasq) serving zones written at test time, and a
//! private Redis, both on loopback and stopped by their pids. The node's tests include this
//! file too.
//!
//! Without the programs: under CI (`CI` set) a failure, because `.ci/run` installs them;
//! elsewhere the fixture returns `None` after printing why the test is skipped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds `name` on `PATH` or in the sbin folders Debian puts daemons in. See the module
/// comment for what happens when it is missing.
pub fn program(name: &str, package: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing under CI: .ci/run should have installed {package}"
        );
        println!(
            "SKIPPED: {name} not found (install the Debian package {package}, or run .ci/run)"
        );
    }
    found
}

/// A free TCP port on 127.0.0.1 (also free for UDP in practice: nothing else binds here).
/// The values of the samples named `name` whose labels include `labels`, read the way a
/// scraper reads them: the registry's text exposition through a Prometheus parser.
pub fn samples(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<prometheus_parse::Value> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode the registry");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("parse the exposition");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| s.value)
        .collect()
}

/// The sum of [`samples`]: counters, gauges and untyped values as they are, histograms as
/// their count of observations.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(registry, name, labels)
        .iter()
        .map(|v| match v {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Records for the test DNS server.
#[derive(Default, Clone)]
pub struct Zone {
    lines: Vec<String>,
}

impl Zone {
    /// An empty set of records.
    pub fn new() -> Self {
        Self::default()
    }

    /// An A record.
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.lines.push(format!("host-record={name},{ip}"));
        self
    }

    /// A DNSBL listing of `client` in `zone` answering `code` (e.g. 127.0.0.2).
    pub fn listed(self, zone: &str, client: Ipv4Addr, code: Ipv4Addr) -> Self {
        let o = client.octets();
        let name = format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0]);
        self.a(&name, code)
    }

    /// A DNSBL listing of an IPv6 `client` in `zone` (reversed nibbles) answering `code`.
    pub fn listed6(self, zone: &str, client: Ipv6Addr, code: Ipv4Addr) -> Self {
        let mut name = String::new();
        for b in client.octets().iter().rev() {
            name.push_str(&format!("{:x}.{:x}.", b & 0x0f, b >> 4));
        }
        self.a(&format!("{name}{zone}"), code)
    }

    /// Names under `zone` without a record answer NXDOMAIN, as a real list's server does
    /// (without this, dnsmasq refuses queries it has no record and no upstream for).
    pub fn nxdomain(mut self, zone: &str) -> Self {
        self.lines.push(format!("local=/{zone}/"));
        self
    }

    /// Serves `zone` authoritatively, as a real list's server does: NXDOMAIN answers carry
    /// the zone's SOA (negative TTL 60 s), so resolvers cache "not listed" too.
    pub fn authoritative(mut self, zone: &str) -> Self {
        self.lines.push(format!("auth-zone={zone}"));
        self
    }

    /// Makes dnsmasq log every query it receives, for [`Dns::queries`].
    pub fn log_queries(mut self) -> Self {
        self.lines.push("log-queries".into());
        self
    }

    /// A TXT record; long values are split into 255-octet strings as DNS requires.
    pub fn txt(mut self, name: &str, value: &str) -> Self {
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        self.lines
            .push(format!("txt-record={name},{}", parts.join(",")));
        self
    }

    /// Queries for names under `zone` are forwarded to a server that never answers, so
    /// lookups there time out.
    pub fn unanswered(mut self, zone: &str, blackhole: SocketAddr) -> Self {
        self.lines.push(format!(
            "server=/{zone}/{}#{}",
            blackhole.ip(),
            blackhole.port()
        ));
        self
    }
}

/// A dnsmasq we started: authoritative for the zone's names, NXDOMAIN for anything else, no
/// upstream servers (nothing leaves loopback).
pub struct Dns {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    /// A UDP socket that receives and never answers (see [`Zone::unanswered`]).
    pub blackhole: UdpSocket,
}

impl Dns {
    /// A socket for [`Zone::unanswered`], bound before the zone is written.
    pub fn blackhole() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").expect("bind blackhole")
    }

    /// Starts dnsmasq with `zone`; `None` when it is not installed (outside CI).
    pub fn start(zone: &Zone, blackhole: UdpSocket) -> Option<Self> {
        let program = program("dnsmasq", "dnsmasq-base")?;
        let dir = tempfile::Builder::new()
            .prefix("moat-dns-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut conf = vec![
            format!("port={port}"),
            "listen-address=127.0.0.1".into(),
            "bind-interfaces".into(),
            "no-resolv".into(),
            "no-hosts".into(),
            "no-poll".into(),
            // Local records answer with this TTL (dnsmasq's default is 0: nothing cached).
            "local-ttl=300".into(),
            "neg-ttl=60".into(),
            "cache-size=0".into(),
            format!("pid-file={}", dir.path().join("dnsmasq.pid").display()),
        ];
        if zone.lines.iter().any(|l| l.starts_with("auth-zone=")) {
            // Authoritative answers are given on the auth-server address, which dnsmasq then
            // listens on itself (a listen-address for the same address would clash).
            conf.retain(|l| !l.starts_with("listen-address="));
            conf.push("auth-server=ns.moat.test,127.0.0.1".into());
            conf.push("auth-ttl=300".into());
            conf.push("auth-soa=1,hostmaster.moat.test,1200,120,604800,60".into());
        }
        conf.extend(zone.lines.iter().cloned());
        let conf_path = dir.path().join("dnsmasq.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n").unwrap();
        let mut cmd = Command::new(program);
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf_path.display()))
            .arg(format!(
                "--log-facility={}",
                dir.path().join("dnsmasq.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // dnsmasq started as root drops to `nobody`, which may not read the temp folder.
        cmd.arg("--user=root");
        let child = cmd.spawn().expect("spawn dnsmasq");
        let mut dns = Dns {
            dir,
            child: Some(child),
            addr,
            blackhole,
        };
        dns.wait_ready();
        Some(dns)
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut err = String::new();
                if let Some(mut e) = self.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("dnsmasq exited at start ({status}): {err}\n{}", self.log());
            }
            if answers(self.addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!("dnsmasq did not answer within 20 s; log:\n{}", self.log());
    }

    /// The log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// How many queries of type `qtype` (`A`, `TXT`, ...) for `name` (no trailing dot) have
    /// reached the server so far; needs [`Zone::log_queries`].
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        // Recursive queries are logged as `query[A] name`, authoritative ones as `auth[A] name`.
        let needle = format!("[{qtype}] {} from ", name).to_ascii_lowercase();
        self.log()
            .lines()
            .map(str::to_ascii_lowercase)
            .filter(|l| {
                l.find(&needle)
                    .is_some_and(|i| l[..i].ends_with("query") || l[..i].ends_with("auth"))
            })
            .count()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a DNS server answers a query for `.` NS on `addr` (any reply will do).
fn answers(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    // Header: id 0x4d4f, RD, one question; question: root, type NS (2), class IN (1).
    let query = [
        0x4d, 0x4f, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1,
    ];
    if sock.send_to(&query, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x4d && buf[1] == 0x4f)
}

/// A redis-server we started, without persistence; stopped by its pid when dropped.
pub struct Redis {
    program: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Redis {
    /// Starts a Redis on a free loopback port; `None` when it is not installed (outside CI).
    pub fn start() -> Option<Self> {
        let program = program("redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("moat-redis-")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut r = Redis {
            program,
            dir,
            child: None,
            addr,
        };
        r.spawn();
        Some(r)
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited at start ({status}); log:\n{}",
                    self.log()
                );
            }
            if redis_ping(self.addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!(
            "redis-server did not answer PING within 20 s; log:\n{}",
            self.log()
        );
    }

    /// Stops it (by pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
