//! Test fixture: a private clamd on loopback with a signature database written at test time
//! (the EICAR test file only), plus message and zip builders. No live malware anywhere.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The EICAR anti-virus test file (harmless by design), split so this source file is not
/// itself flagged by a scanner reading the repository.
pub fn eicar() -> Vec<u8> {
    let mut v = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR".to_vec();
    v.extend_from_slice(b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    v
}

/// Name our database gives the EICAR body signature (clamd appends `.UNOFFICIAL`).
pub const EICAR_SIG: &str = "Moat.Test.EICAR";

/// Finds the clamd program. Without it: under CI (`CI` set) a failure, because `.ci/run`
/// installs `clamav-daemon`; elsewhere `None` after printing why the test is skipped.
pub fn clamd_program() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("clamd"))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/clamd")).filter(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "clamd is missing under CI: .ci/run should have installed clamav-daemon"
        );
        println!(
            "SKIPPED: clamd not found (install the Debian package clamav-daemon, or run .ci/run)"
        );
    }
    found
}

/// A clamd we started; stopped by its pid when dropped.
pub struct Clamd {
    program: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TCP address (127.0.0.1, a free port).
    pub tcp: SocketAddr,
    /// Unix socket path.
    pub unix: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Clamd {
    /// Starts clamd with the EICAR-only database and `StreamMaxLength` of `stream_max`;
    /// `None` (skipped) when clamd is not installed outside CI.
    pub fn start(stream_max: &str) -> Option<Self> {
        let program = clamd_program()?;
        let dir = tempfile::Builder::new()
            .prefix("moat-av-clamd-")
            .tempdir()
            .expect("tempdir");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        // A body pattern (any position) and an MD5 of the whole file: enough for clamd to find
        // EICAR in mail, base64, zip, nested zip and attached messages after its own unpacking.
        let hex: String = eicar().iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("moat-test.ndb"), format!("{EICAR_SIG}:0:*:{hex}\n")).unwrap();
        let md5 = "44d88612fea8a8f36de82e1278abb02f";
        std::fs::write(
            db.join("moat-test.hdb"),
            format!("{md5}:{}:Moat.Test.EICAR.HDB\n", eicar().len()),
        )
        .unwrap();
        let unix = dir.path().join("clamd.sock");
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let conf = format!(
            "Foreground true\n\
             LogFile {log}\n\
             LogTime true\n\
             DatabaseDirectory {db}\n\
             TemporaryDirectory {tmp}\n\
             LocalSocket {sock}\n\
             FixStaleSocket true\n\
             TCPSocket {port}\n\
             TCPAddr 127.0.0.1\n\
             MaxThreads 8\n\
             StreamMaxLength {stream_max}\n\
             ReadTimeout 30\n\
             IdleTimeout 30\n\
             ScanMail true\n\
             ScanArchive true\n\
             SelfCheck 0\n\
             Bytecode false\n",
            log = dir.path().join("clamd.log").display(),
            db = db.display(),
            tmp = dir.path().join("tmp").display(),
            sock = unix.display(),
            port = tcp.port(),
        );
        std::fs::write(dir.path().join("clamd.conf"), conf).unwrap();
        let mut c = Clamd {
            program,
            dir,
            child: None,
            tcp,
            unix,
        };
        c.spawn();
        Some(c)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("clamd.conf").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn clamd");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("clamd exited at start ({status}); log:\n{}", self.log());
            }
            if ping(&self.unix) && ping_tcp(self.tcp) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "clamd did not answer PING within 60 s; log:\n{}",
            self.log()
        );
    }

    /// Stops this clamd (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Refused from now on, not "no such file" vs "refused" depending on timing.
        let _ = std::fs::remove_file(&self.unix);
    }

    /// Starts it again on the same sockets.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(sock: &Path) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    s.write_all(b"zPING\0").is_ok() && s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"PONG")
}

fn ping_tcp(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    s.write_all(b"zPING\0").is_ok() && s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"PONG")
}

/// Base64 with 76-character lines and CRLF, as mail carries it.
pub fn b64(data: &[u8]) -> String {
    let s = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::new();
    for line in s.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push_str("\r\n");
    }
    out
}

/// A multipart/mixed message: a text body and one base64 attachment.
pub fn with_attachment(filename: &str, ctype: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nPlease see attached.\r\n\
         --b1\r\nContent-Type: {ctype}; name=\"{filename}\"\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\
         --b1--\r\n",
        b64(data)
    )
    .into_bytes()
}

/// A single-part text message with `body` as is.
pub fn plain(body: &[u8]) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: plain\r\n\r\n".to_vec();
    m.extend_from_slice(body);
    m.extend_from_slice(b"\r\n");
    m
}

/// `inner` attached as message/rfc822.
pub fn forwarded(inner: &[u8]) -> Vec<u8> {
    let mut m =
        b"From: c@example.org\r\nTo: b@example.net\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: text/plain\r\n\r\nForwarded message attached.\r\n\
--outer\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
            .to_vec();
    m.extend_from_slice(inner);
    m.extend_from_slice(b"\r\n--outer--\r\n");
    m
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A zip archive holding one stored (uncompressed) file.
pub fn zip_stored(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = crc32(data);
    let len = data.len() as u32;
    let n = name.len() as u16;
    let mut z = Vec::new();
    // Local file header.
    z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd_offset = z.len() as u32;
    // Central directory entry.
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // made by, needed, flags, method, time, date
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&[0; 12]); // extra, comment, disk, internal attrs, external attrs (4)
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() as u32 - cd_offset;
    // End of central directory.
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_offset.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

/// A c-icap server with its virus_scan service backed by a [`Clamd`] (through clamd's unix
/// socket); stopped by its pid (SIGTERM, which also ends its worker processes) when dropped.
pub struct Icap {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Finds c-icap and its virus_scan module. Without them: under CI a failure (`.ci/run`
/// installs `c-icap` and `libc-icap-mod-virus-scan`); elsewhere `None` after printing why.
pub fn icap_programs() -> Option<(PathBuf, PathBuf)> {
    let program = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("c-icap"))
            .find(|p| p.is_file())
    });
    // The module directory is multiarch (/usr/lib/<triplet>/c_icap) on Debian.
    let mut dirs = vec![
        PathBuf::from("/usr/lib/c_icap"),
        PathBuf::from("/usr/local/lib/c_icap"),
    ];
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        dirs.extend(rd.flatten().map(|e| e.path().join("c_icap")));
    }
    let modules = dirs.into_iter().find(|d| d.join("virus_scan.so").is_file());
    match (program, modules) {
        (Some(p), Some(m)) => Some((p, m)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "c-icap or its virus_scan module is missing under CI: .ci/run should have \
                 installed c-icap and libc-icap-mod-virus-scan"
            );
            println!(
                "SKIPPED: c-icap with virus_scan not found (install the Debian packages c-icap \
                 and libc-icap-mod-virus-scan, or run .ci/run)"
            );
            None
        }
    }
}

impl Icap {
    /// Starts c-icap on a free loopback port, scanning through `clamd`.
    pub fn start(clamd: &Clamd) -> Option<Self> {
        let (program, modules) = icap_programs()?;
        let dir = tempfile::Builder::new()
            .prefix("moat-av-icap-")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = dir.path().display();
        let magic = Path::new("/etc/c-icap/c-icap.magic");
        let magic = if magic.is_file() {
            format!("LoadMagicFile {}\n", magic.display())
        } else {
            String::new()
        };
        let conf = format!(
            "PidFile {d}/c-icap.pid\n\
             CommandsSocket {d}/c-icap.ctl\n\
             Timeout 30\n\
             StartServers 1\n\
             MaxServers 1\n\
             MinSpareThreads 2\n\
             MaxSpareThreads 16\n\
             ThreadsPerChild 16\n\
             Port {addr}\n\
             TmpDir {d}\n\
             DebugLevel 1\n\
             ModulesDir {m}\n\
             ServicesDir {m}\n\
             TemplateDir /usr/share/c_icap/templates/\n\
             TemplateDefaultLanguage en\n\
             {magic}\
             ServerLog {d}/server.log\n\
             AccessLog {d}/access.log\n\
             Module common clamd_mod.so\n\
             clamd_mod.ClamdSocket {sock}\n\
             Service antivirus_module virus_scan.so\n\
             ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple\n\
             virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n\
             virus_scan.DefaultEngine clamd\n\
             virus_scan.MaxObjectSize 25M\n",
            m = modules.display(),
            sock = clamd.unix.display(),
        );
        std::fs::write(dir.path().join("c-icap.conf"), conf).unwrap();
        let child = Command::new(program)
            .arg("-N")
            .arg("-f")
            .arg(dir.path().join("c-icap.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn c-icap");
        let mut icap = Icap {
            dir,
            child: Some(child),
            addr,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = icap
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("c-icap exited at start ({status}); log:\n{}", icap.log());
            }
            if options_ok(addr) {
                return Some(icap);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "c-icap did not answer OPTIONS within 30 s; log:\n{}",
            icap.log()
        );
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops it by its pid: SIGTERM (it stops its workers), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // The shell's built-in kill: no dependency on procps being installed.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", c.id()))
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Icap {
    fn drop(&mut self) {
        self.stop();
    }
}

fn options_ok(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "OPTIONS icap://{addr}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Encapsulated: null-body=0\r\n\r\n"
    );
    let mut buf = [0u8; 64];
    s.write_all(req.as_bytes()).is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"ICAP/1.0 200"))
}
