//! clamd over its socket protocol: `zINSTREAM`, `zPING`, `zVERSION`.
//!
//! Each call opens its own connection. clamd closes a connection after one command unless
//! the client opens an `IDSESSION`, and a session makes one slow scan hold up the commands
//! queued behind it. Over loopback a connect costs tens of microseconds against milliseconds
//! for a scan (measured in this crate's tests), so a pool would save little; the number of
//! connections in flight is bounded by the engine's concurrency limit in [`crate::EngineSet`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::engine::{AntivirusEngine, HealthFuture, ScanFuture, ScanResult};
use crate::error::{AvError, AvErrorKind};
use crate::printable;

/// Longest reply accepted from clamd; real replies are under 300 bytes.
const MAX_REPLY: usize = 4096;
/// Longest signature name passed on (it ends up in an SMTP reply).
const MAX_SIGNATURE: usize = 120;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `TCPSocket`/`TCPAddr`.
    Tcp(SocketAddr),
    /// `LocalSocket`.
    Unix(PathBuf),
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddress::Tcp(a) => write!(f, "tcp {a}"),
            ClamdAddress::Unix(p) => write!(f, "unix {}", p.display()),
        }
    }
}

/// How to reach one clamd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClamdConfig {
    /// Where clamd listens.
    pub address: ClamdAddress,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Bound on a `PING` or `VERSION` exchange (scans are bounded by the engine set).
    pub command_timeout: Duration,
    /// Size of each INSTREAM chunk. clamd's default `StreamMaxLength` is 25 MB; a chunk
    /// larger than that is refused, so keep this well below it.
    pub chunk_size: usize,
}

impl ClamdConfig {
    /// Defaults for `address`: connect 2 s, command 5 s, 64 KiB chunks.
    pub fn new(address: ClamdAddress) -> Self {
        Self {
            address,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            chunk_size: 64 * 1024,
        }
    }

    /// Checks the configuration and makes the engine.
    pub fn build(self) -> Result<ClamdEngine, AvError> {
        if self.chunk_size == 0 || self.chunk_size > u32::MAX as usize {
            return Err(AvError::new(
                AvErrorKind::Config,
                format!("clamd chunk size {} is out of range", self.chunk_size),
            ));
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(AvError::new(
                AvErrorKind::Config,
                "clamd timeouts must be greater than zero",
            ));
        }
        Ok(ClamdEngine { cfg: self })
    }
}

/// A clamd engine. Cheap to share behind an `Arc`; holds no connection between calls.
#[derive(Debug)]
pub struct ClamdEngine {
    cfg: ClamdConfig,
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl ClamdEngine {
    /// The configuration this engine was built from.
    pub fn config(&self) -> &ClamdConfig {
        &self.cfg
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, AvError> {
        let what = self.cfg.address.to_string();
        let fut = async {
            match &self.cfg.address {
                ClamdAddress::Tcp(a) => {
                    let s = TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    Ok::<Box<dyn Conn>, std::io::Error>(Box::new(s))
                }
                #[cfg(unix)]
                ClamdAddress::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    Ok(Box::new(s) as Box<dyn Conn>)
                }
                #[cfg(not(unix))]
                ClamdAddress::Unix(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "unix sockets are not supported on this platform",
                )),
            }
        };
        match tokio::time::timeout(self.cfg.connect_timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(AvError::io(AvErrorKind::Connect, what, e)),
            Err(_) => Err(AvError::new(
                AvErrorKind::Connect,
                format!("{what}: connect timed out"),
            )),
        }
    }

    async fn command(&self, cmd: &'static [u8]) -> Result<String, AvError> {
        let exchange = async {
            let mut c = self.connect().await?;
            c.write_all(cmd)
                .await
                .map_err(|e| AvError::io(AvErrorKind::Io, "sending command", e))?;
            read_reply(&mut c)
                .await
                .map_err(|e| AvError::io(AvErrorKind::Io, "reading reply", e))
        };
        match tokio::time::timeout(self.cfg.command_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(AvError::new(
                AvErrorKind::Timeout,
                format!("{}: no reply within the command timeout", self.cfg.address),
            )),
        }
    }

    async fn instream(&self, data: &[u8]) -> Result<ScanResult, AvError> {
        let conn = self.connect().await?;
        let (mut rd, mut wr) = tokio::io::split(conn);
        let chunk = self.cfg.chunk_size;
        let send = async move {
            wr.write_all(b"zINSTREAM\0").await?;
            for piece in data.chunks(chunk) {
                // chunk_size fits in u32 (checked by build()).
                wr.write_all(&(piece.len() as u32).to_be_bytes()).await?;
                wr.write_all(piece).await?;
            }
            wr.write_all(&0u32.to_be_bytes()).await?;
            wr.flush().await
        };
        // clamd may answer before the stream ends (size limit exceeded) and then close; read
        // the reply while sending so it is not lost to a reset.
        let recv = read_reply(&mut rd);
        tokio::pin!(send, recv);
        let reply = tokio::select! {
            biased;
            r = &mut recv => r,
            s = &mut send => match s {
                Ok(()) => recv.await,
                Err(e) => match recv.await {
                    Ok(reply) if !reply.is_empty() => Ok(reply),
                    _ => return Err(AvError::io(AvErrorKind::Io, "sending stream", e)),
                },
            },
        }
        .map_err(|e| AvError::io(AvErrorKind::Io, "reading scan reply", e))?;
        parse_scan_reply(&reply)
    }
}

impl AntivirusEngine for ClamdEngine {
    fn describe(&self) -> String {
        format!("clamd {}", self.cfg.address)
    }

    fn scan<'a>(&'a self, data: &'a [u8]) -> ScanFuture<'a> {
        Box::pin(self.instream(data))
    }

    fn health(&self) -> HealthFuture<'_> {
        Box::pin(async move {
            let pong = self.command(b"zPING\0").await?;
            if pong != "PONG" {
                return Err(AvError::new(
                    AvErrorKind::Protocol,
                    format!("unexpected reply to PING: {}", printable(&pong, 80)),
                ));
            }
            let version = self.command(b"zVERSION\0").await?;
            Ok(printable(&version, 200))
        })
    }
}

/// Reads one NUL-terminated reply (or up to EOF), at most [`MAX_REPLY`] bytes.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut out = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "reply too long",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
}

/// Maps clamd's answer to an INSTREAM command.
pub(crate) fn parse_scan_reply(reply: &str) -> Result<ScanResult, AvError> {
    if reply.is_empty() {
        return Err(AvError::new(
            AvErrorKind::Io,
            "clamd closed the connection without a reply",
        ));
    }
    if reply.contains("size limit exceeded") {
        return Ok(ScanResult::Unscannable(
            "clamd instream size limit exceeded".into(),
        ));
    }
    let Some(rest) = reply.strip_prefix("stream: ") else {
        return Err(if reply.ends_with("ERROR") {
            AvError::new(
                AvErrorKind::Engine,
                format!("clamd: {}", printable(reply, 200)),
            )
        } else {
            AvError::new(
                AvErrorKind::Protocol,
                format!("unexpected clamd reply: {}", printable(reply, 200)),
            )
        });
    };
    if rest == "OK" {
        return Ok(ScanResult::Clean);
    }
    if let Some(name) = rest.strip_suffix(" FOUND") {
        // ExtendedDetectionInfo appends "(hash:size)"; the name alone is what people search for.
        let name = match name.rfind('(') {
            Some(i) if name.ends_with(')') && i > 0 => &name[..i],
            _ => name,
        };
        let name = printable(name.trim(), MAX_SIGNATURE);
        return Ok(ScanResult::Infected(if name.is_empty() {
            "unnamed".into()
        } else {
            name
        }));
    }
    if rest.ends_with("ERROR") {
        return Err(AvError::new(
            AvErrorKind::Engine,
            format!("clamd: {}", printable(rest, 200)),
        ));
    }
    Err(AvError::new(
        AvErrorKind::Protocol,
        format!("unexpected clamd reply: {}", printable(reply, 200)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_replies() {
        let ok = |r: &str| parse_scan_reply(r).ok();
        let cases: &[(&str, Option<ScanResult>)] = &[
            ("stream: OK", Some(ScanResult::Clean)),
            (
                "stream: Eicar-Test-Signature FOUND",
                Some(ScanResult::Infected("Eicar-Test-Signature".into())),
            ),
            (
                "stream: Moat.EICAR.UNOFFICIAL(44d88612fea8a8f36de82e1278abb02f:68) FOUND",
                Some(ScanResult::Infected("Moat.EICAR.UNOFFICIAL".into())),
            ),
            (
                "stream: Bad\r\nName\x07 FOUND",
                Some(ScanResult::Infected("BadName".into())),
            ),
            (
                "INSTREAM size limit exceeded. ERROR",
                Some(ScanResult::Unscannable(
                    "clamd instream size limit exceeded".into(),
                )),
            ),
            (
                "stream:  FOUND",
                Some(ScanResult::Infected("unnamed".into())),
            ),
            ("", None),
            ("UNKNOWN COMMAND", None),
            ("stream: Can't allocate memory ERROR", None),
        ];
        for (reply, want) in cases {
            assert_eq!(&ok(reply), want, "{reply:?}");
        }
        assert_eq!(
            parse_scan_reply("stream: x ERROR").unwrap_err().kind(),
            AvErrorKind::Engine
        );
        assert_eq!(
            parse_scan_reply("garbage").unwrap_err().kind(),
            AvErrorKind::Protocol
        );
    }

    #[test]
    fn long_names_are_bounded() {
        let reply = format!("stream: {} FOUND", "A".repeat(10_000));
        match parse_scan_reply(&reply) {
            Ok(ScanResult::Infected(n)) => assert_eq!(n.len(), MAX_SIGNATURE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn build_checks() {
        let mut c = ClamdConfig::new(ClamdAddress::Tcp("127.0.0.1:3310".parse().unwrap()));
        c.chunk_size = 0;
        assert_eq!(c.build().unwrap_err().kind(), AvErrorKind::Config);
    }
}
