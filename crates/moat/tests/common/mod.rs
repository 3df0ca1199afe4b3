//! Starts the real `moat` binary on loopback with a generated configuration, certificate and
//! users file, and stops it by its pid.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse battery staple";

/// A running node.
pub struct Node {
    child: Option<Child>,
    pub mx: u16,
    pub sub: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// Polls `f` every 100 ms until it holds (true) or `within` passes (false).
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port nobody listens on (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for the generated configuration.
#[derive(Default)]
pub struct Options {
    /// Extra keys for the `mx` connector (TOML lines).
    pub mx_extra: String,
    /// Extra `limits` keys for the `mx` connector (inline-table entries, comma-separated).
    pub mx_limits: String,
    /// Extra top-level keys.
    pub top: String,
    /// Extra `[relay]` keys (and `[[relay.hop]]` tables).
    pub relay: String,
    /// A `[filter]` section; without one the content filter is off.
    pub filter: String,
}

impl Node {
    pub fn start() -> Node {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let hash = moat_smtp::auth::hash_password(PASSWORD).unwrap();
        std::fs::write(dir.path().join("users"), format!("{USER}:{hash}\n")).unwrap();
        let (mx, sub, admin) = (free_port(), free_port(), free_port());
        let d = dir.path().display();
        let limits = if opts.mx_limits.is_empty() {
            "command_timeout = \"3s\", proxy_timeout = \"1s\"".to_string()
        } else {
            opts.mx_limits.clone()
        };
        let config = format!(
            r#"
hostname = "mx.example.test"
accepted_domains = ["example.test"]
{top}

[queue]
dir = "{d}/queue"

[relay]
maildir = "{d}/maildir"
{relay}

[admin]
listen = "127.0.0.1:{admin}"
token_file = "{d}/admin.token"

{filter}

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"

[shutdown]
grace = "3s"

[[connector]]
name = "mx"
listen = "127.0.0.1:{mx}"
role = "mx"
relay_ranges = ["127.0.0.2"]
proxy_from = ["127.0.0.4"]
auth = true
users_file = "{d}/users"
limits = {{ {limits} }}
{mx_extra}

[[connector]]
name = "submission"
listen = "127.0.0.1:{sub}"
role = "submission"
relay_ranges = ["127.0.0.2"]
users_file = "{d}/users"
"#,
            top = opts.top,
            relay = opts.relay,
            filter = if opts.filter.is_empty() {
                "[filter]\nenabled = false\n".to_string()
            } else {
                opts.filter.clone()
            },
            mx_extra = opts.mx_extra,
        );
        let config_path = dir.path().join("moat.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("moat.log");
        let child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("MOAT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            child: Some(child),
            mx,
            sub,
            admin,
            dir,
            log,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat exited with {status}: {}", self.log_text());
            }
            if self.http_get("/readyz").map(|(c, _)| c) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moat not ready in 30 s: {}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Messages delivered into the local Maildir (the default next hop), one file per
    /// recipient.
    pub fn delivered(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("maildir/new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until `n` messages were delivered (no more may come for `settle` afterwards).
    pub fn wait_delivered(&self, n: usize) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.delivered();
            if got.len() >= n || Instant::now() > deadline {
                assert_eq!(got.len(), n, "delivered messages");
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin token the node made.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("moat.toml")
    }

    /// A plain HTTP/1.1 GET on the admin listener: (status, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.get(9..12)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
        Some((code, body))
    }

    /// Parses `/metrics` with a Prometheus text parser.
    pub fn scrape(&self) -> prometheus_parse::Scrape {
        let (code, body) = self.http_get("/metrics").expect("metrics endpoint");
        assert_eq!(code, 200);
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moat did not exit within {within:?}: {}", self.log_text());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Value of the first sample of `name` whose labels include all of `labels`.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// A blocking line-oriented SMTP client from a chosen source address.
pub struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    pub fn connect_from(source: &str, port: u16) -> Smtp {
        let sock = socket2_connect(source, port);
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Smtp {
            r: BufReader::new(sock.try_clone().unwrap()),
            w: sock,
        }
    }

    pub fn from_stream(sock: TcpStream) -> Smtp {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Smtp {
            r: BufReader::new(sock.try_clone().unwrap()),
            w: sock,
        }
    }

    pub fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// One whole reply; empty at EOF.
    pub fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line.trim_end().to_string());
            if last {
                break;
            }
        }
        all.join("\n")
    }

    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply();
        assert!(
            r.lines().last().unwrap_or("").starts_with(prefix),
            "expected {prefix:?}, got {r:?}"
        );
        r
    }

    pub fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.expect(prefix)
    }
}

/// Connects to 127.0.0.1:`port` from the loopback address `source`.
pub fn socket2_connect(source: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
            .unwrap();
        let s = sock
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Runs a helper program; returns (success, stdout+stderr). `None` when it is not installed.
pub fn run_tool(program: &str, args: &[&str]) -> Option<(bool, String)> {
    let out = match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{program}: {e}"),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}

/// Whether `program` can run here. When it cannot: under CI (`CI` set) that is a failure,
/// because `.ci/run` installs it; elsewhere the test is skipped with a printed reason.
pub fn have_tool(program: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is missing under CI: .ci/run should have installed {package}"
        );
        println!(
            "SKIPPED: {program} not found (install the Debian package {package}, or run .ci/run)"
        );
    }
    found
}

/// Path of a Python helper script next to this file.
pub fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
        .display()
        .to_string()
}
