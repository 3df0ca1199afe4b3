//! ICAP (RFC 3507) `RESPMOD` with preview and `204`: how commercial engines are reached.
//!
//! The bytes to scan travel as the body of an encapsulated HTTP response. With a preview, the
//! first bytes go first and a small part is answered in one round trip (`0; ieof`); a larger
//! one continues after the server's `100 Continue`. `204` means clean; a threat header
//! (`X-Infection-Found: …Threat=NAME;`, `X-Virus-ID`, `X-Virus-Name`) means infected. One
//! connection per scan, as for clamd.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::engine::{AntivirusEngine, HealthFuture, ScanFuture, ScanResult};
use crate::error::{AvError, AvErrorKind};
use crate::printable;

/// Longest ICAP response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Body chunk size on the wire.
const CHUNK: usize = 64 * 1024;

/// How to reach one ICAP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcapConfig {
    /// Server address.
    pub address: SocketAddr,
    /// Service name in the ICAP URI (for c-icap's virus scanner, `avscan`).
    pub service: String,
    /// Preview size in bytes; `None` sends the whole body without a preview.
    pub preview: Option<usize>,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Bound on an `OPTIONS` exchange (scans are bounded by the engine set).
    pub command_timeout: Duration,
}

impl IcapConfig {
    /// Defaults for `address` and `service`: preview 1024 bytes, connect 2 s, command 5 s.
    pub fn new(address: SocketAddr, service: impl Into<String>) -> Self {
        Self {
            address,
            service: service.into(),
            preview: Some(1024),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
        }
    }

    /// Checks the configuration and makes the engine.
    pub fn build(self) -> Result<IcapEngine, AvError> {
        let s = &self.service;
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'#'))
        {
            return Err(AvError::new(
                AvErrorKind::Config,
                format!("icap service name {s:?} must be printable ASCII without '/'"),
            ));
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(AvError::new(
                AvErrorKind::Config,
                "icap timeouts must be greater than zero",
            ));
        }
        let uri = format!("icap://{}/{}", self.address, self.service);
        Ok(IcapEngine { cfg: self, uri })
    }
}

/// An ICAP engine. Holds no connection between calls.
#[derive(Debug)]
pub struct IcapEngine {
    cfg: IcapConfig,
    uri: String,
}

/// A parsed ICAP response head.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl IcapEngine {
    async fn connect(&self) -> Result<TcpStream, AvError> {
        let what = format!("icap {}", self.cfg.address);
        match tokio::time::timeout(
            self.cfg.connect_timeout,
            TcpStream::connect(self.cfg.address),
        )
        .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(AvError::io(AvErrorKind::Connect, what, e)),
            Err(_) => Err(AvError::new(
                AvErrorKind::Connect,
                format!("{what}: connect timed out"),
            )),
        }
    }

    fn request_head(&self, len: usize, preview: Option<usize>) -> Vec<u8> {
        let req = "GET /moat/scan HTTP/1.1\r\nHost: moat.invalid\r\n\r\n";
        let res = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
        );
        let mut h = format!(
            "RESPMOD {} ICAP/1.0\r\nHost: {}\r\nAllow: 204\r\nConnection: close\r\n",
            self.uri,
            self.cfg.address.ip()
        );
        if let Some(p) = preview {
            h.push_str(&format!("Preview: {p}\r\n"));
        }
        h.push_str(&format!(
            "Encapsulated: req-hdr=0, res-hdr={}, res-body={}\r\n\r\n{req}{res}",
            req.len(),
            req.len() + res.len()
        ));
        h.into_bytes()
    }

    async fn respmod(&self, data: &[u8]) -> Result<ScanResult, AvError> {
        let conn = self.connect().await?;
        let (mut rd, mut wr) = tokio::io::split(conn);
        let io = |what: &'static str| move |e| AvError::io(AvErrorKind::Io, what, e);
        let mut rest = data;
        if let Some(p) = self.cfg.preview {
            let p = p.min(data.len());
            let mut out = self.request_head(data.len(), Some(p));
            push_chunk(&mut out, &data[..p]);
            out.extend_from_slice(if p == data.len() {
                b"0; ieof\r\n\r\n"
            } else {
                b"0\r\n\r\n"
            });
            wr.write_all(&out).await.map_err(io("sending preview"))?;
            wr.flush().await.map_err(io("sending preview"))?;
            let head = read_head(&mut rd).await?;
            if head.status != 100 || p == data.len() {
                return interpret(&head);
            }
            rest = &data[p..];
        } else {
            let head = self.request_head(data.len(), None);
            wr.write_all(&head).await.map_err(io("sending request"))?;
        }
        // The rest of the body, reading concurrently: the server may answer early.
        let send = async move {
            let mut buf = Vec::with_capacity(CHUNK + 16);
            for piece in rest.chunks(CHUNK) {
                buf.clear();
                push_chunk(&mut buf, piece);
                wr.write_all(&buf).await?;
            }
            wr.write_all(b"0\r\n\r\n").await?;
            wr.flush().await
        };
        let recv = read_head(&mut rd);
        tokio::pin!(send, recv);
        let head = tokio::select! {
            biased;
            h = &mut recv => h?,
            s = &mut send => match s {
                Ok(()) => recv.await?,
                Err(e) => match recv.await {
                    Ok(h) => h,
                    Err(_) => return Err(AvError::io(AvErrorKind::Io, "sending body", e)),
                },
            },
        };
        interpret(&head)
    }
}

fn push_chunk(out: &mut Vec<u8>, piece: &[u8]) {
    if piece.is_empty() {
        return; // a zero-length chunk would end the body
    }
    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
}

/// Reads one response head (status line and headers, up to the empty line).
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Head, AvError> {
    let mut buf = Vec::with_capacity(512);
    let mut tmp = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return parse_head(&buf[..end]);
        }
        if buf.len() > MAX_HEAD {
            return Err(AvError::new(
                AvErrorKind::Protocol,
                "icap response head too long",
            ));
        }
        let n = r
            .read(&mut tmp)
            .await
            .map_err(|e| AvError::io(AvErrorKind::Io, "reading icap response", e))?;
        if n == 0 {
            return Err(AvError::new(
                AvErrorKind::Io,
                "icap server closed the connection without a complete response",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, AvError> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad(status_line));
    };
    let Some(status) = proto
        .starts_with("ICAP/")
        .then(|| code.parse::<u16>().ok())
        .flatten()
    else {
        return Err(bad(status_line));
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding: continues the previous header.
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Head { status, headers })
}

fn bad(line: &str) -> AvError {
    AvError::new(
        AvErrorKind::Protocol,
        format!("unexpected icap status line: {}", printable(line, 120)),
    )
}

/// Maps a final response to a result.
fn interpret(head: &Head) -> Result<ScanResult, AvError> {
    if let Some(threat) = threat(head) {
        return Ok(ScanResult::Infected(threat));
    }
    match head.status {
        204 => Ok(ScanResult::Clean),
        200 => Ok(ScanResult::Unscannable(
            "icap server modified the content without naming a threat".into(),
        )),
        413 => Ok(ScanResult::Unscannable("icap object too large".into())),
        100 => Err(AvError::new(
            AvErrorKind::Protocol,
            "icap server asked to continue after the end of the body",
        )),
        s @ 500..=599 => Err(AvError::new(
            AvErrorKind::Engine,
            format!("icap server error {s}"),
        )),
        s => Err(AvError::new(
            AvErrorKind::Protocol,
            format!("unexpected icap status {s}"),
        )),
    }
}

/// The threat name from the headers engines use for it.
fn threat(head: &Head) -> Option<String> {
    if let Some(v) = head.get("X-Infection-Found") {
        let name = v
            .split(';')
            .filter_map(|kv| kv.trim().strip_prefix("Threat="))
            .next()
            .unwrap_or("unnamed");
        return Some(clean_name(name));
    }
    ["X-Virus-ID", "X-Virus-Name"]
        .iter()
        .find_map(|h| head.get(h))
        .map(clean_name)
}

fn clean_name(s: &str) -> String {
    let n = printable(s.trim(), 120);
    if n.is_empty() { "unnamed".into() } else { n }
}

impl AntivirusEngine for IcapEngine {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn scan<'a>(&'a self, data: &'a [u8]) -> ScanFuture<'a> {
        Box::pin(self.respmod(data))
    }

    fn health(&self) -> HealthFuture<'_> {
        Box::pin(async move {
            let exchange = async {
                let mut c = self.connect().await?;
                let req = format!(
                    "OPTIONS {} ICAP/1.0\r\nHost: {}\r\nConnection: close\r\nEncapsulated: null-body=0\r\n\r\n",
                    self.uri,
                    self.cfg.address.ip()
                );
                c.write_all(req.as_bytes())
                    .await
                    .map_err(|e| AvError::io(AvErrorKind::Io, "sending OPTIONS", e))?;
                read_head(&mut c).await
            };
            let head = match tokio::time::timeout(self.cfg.command_timeout, exchange).await {
                Ok(h) => h?,
                Err(_) => {
                    return Err(AvError::new(
                        AvErrorKind::Timeout,
                        format!("{}: no OPTIONS reply within the command timeout", self.uri),
                    ));
                }
            };
            if head.status != 200 {
                return Err(AvError::new(
                    AvErrorKind::Engine,
                    format!("{}: OPTIONS answered {}", self.uri, head.status),
                ));
            }
            let service = head.get("Service").unwrap_or("");
            let istag = head.get("ISTag").unwrap_or("");
            Ok(printable(&format!("{service} {istag}"), 200)
                .trim()
                .to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap()
    }

    #[test]
    fn responses() {
        let cases: &[(&str, Option<ScanResult>)] = &[
            (
                "ICAP/1.0 204 Unmodified\r\nISTag: \"x\"",
                Some(ScanResult::Clean),
            ),
            (
                "ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test;",
                Some(ScanResult::Infected("Eicar-Test".into())),
            ),
            (
                "ICAP/1.0 403 Forbidden\r\nX-Virus-ID: W32/Bad\r\n",
                Some(ScanResult::Infected("W32/Bad".into())),
            ),
            (
                "ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0;\r\n Threat=Folded;",
                Some(ScanResult::Infected("Folded".into())),
            ),
            (
                "ICAP/1.0 200 OK\r\nServer: x",
                Some(ScanResult::Unscannable(
                    "icap server modified the content without naming a threat".into(),
                )),
            ),
            ("ICAP/1.0 500 Server Error", None),
            ("ICAP/1.0 404 Service Not Found", None),
        ];
        for (raw, want) in cases {
            assert_eq!(&interpret(&head(raw)).ok(), want, "{raw:?}");
        }
        assert_eq!(
            interpret(&head("ICAP/1.0 503 x")).unwrap_err().kind(),
            AvErrorKind::Engine
        );
        assert!(parse_head(b"HTTP/1.1 200 OK").is_err());
        assert!(parse_head(b"ICAP/1.0 abc").is_err());
        assert!(parse_head(b"").is_err());
    }

    #[test]
    fn request_layout() {
        let e = IcapConfig::new("127.0.0.1:1344".parse().unwrap(), "avscan")
            .build()
            .unwrap();
        let h = String::from_utf8(e.request_head(5, Some(5))).unwrap();
        assert!(h.starts_with("RESPMOD icap://127.0.0.1:1344/avscan ICAP/1.0\r\n"));
        // The offsets in Encapsulated point at the two encapsulated heads.
        let enc = h.lines().find(|l| l.starts_with("Encapsulated:")).unwrap();
        let body = &h[h.find("\r\n\r\n").unwrap() + 4..];
        let res_hdr: usize = enc
            .split("res-hdr=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let res_body: usize = enc.split("res-body=").nth(1).unwrap().parse().unwrap();
        assert!(body[res_hdr..].starts_with("HTTP/1.1 200 OK"));
        assert_eq!(res_body, body.len());
        let bad = IcapConfig::new("127.0.0.1:1344".parse().unwrap(), "a/b").build();
        assert_eq!(bad.unwrap_err().kind(), AvErrorKind::Config);
    }
}
