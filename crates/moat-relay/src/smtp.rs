//! The SMTP client side of one connection to a next hop: greeting, EHLO, STARTTLS, and mail
//! transactions (pipelined when the hop offers PIPELINING). Replies are parsed by smtp-proto.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::{NextHop, TlsMode};

/// Longest reply we accept (smtp-proto caps a reply's text at 4 KiB too).
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A byte stream: plain TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// Why a session with a hop failed as a whole (as opposed to a reply about one recipient).
/// Each of these makes the relay try the next hop.
#[derive(Debug)]
pub(crate) enum SessionError {
    Connect(io::Error),
    Timeout(&'static str),
    Io(io::Error),
    Protocol(String),
    /// The hop answered the greeting, EHLO or STARTTLS with a refusal, or 421 at any point.
    Refused(Reply),
    /// TLS is required but the hop does not offer STARTTLS.
    TlsUnavailable,
    Tls(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Connect(e) => write!(f, "connect failed: {e}"),
            SessionError::Timeout(what) => write!(f, "timeout waiting for {what}"),
            SessionError::Io(e) => write!(f, "connection lost: {e}"),
            SessionError::Protocol(e) => write!(f, "protocol error: {e}"),
            SessionError::Refused(r) => write!(f, "refused: {r}"),
            SessionError::TlsUnavailable => write!(f, "TLS required but STARTTLS not offered"),
            SessionError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

/// A reply from a hop, flattened to one line for logs, statuses and DSNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    /// Enhanced status code when the hop gave one.
    pub enhanced: Option<[u8; 3]>,
    pub text: String,
}

impl Reply {
    pub fn class(&self) -> u16 {
        self.code / 100
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some([a, b, c]) => write!(f, "{} {a}.{b}.{c} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

impl From<smtp_proto::Response<String>> for Reply {
    fn from(r: smtp_proto::Response<String>) -> Self {
        let text = r
            .message
            .split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Reply {
            code: r.code,
            enhanced: (r.esc[0] != 0).then_some(r.esc),
            text,
        }
    }
}

/// A stream with its read buffer.
struct Wire<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Reads one complete reply; returns it with its raw bytes (for EHLO capabilities).
    async fn read_reply(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<(Reply, Vec<u8>), SessionError> {
        let mut rx = ResponseReceiver::default();
        let mut raw = Vec::new();
        loop {
            if !self.buf.is_empty() {
                let mut it = self.buf.iter();
                let res = rx.parse(&mut it);
                let consumed = self.buf.len() - it.len();
                raw.extend_from_slice(&self.buf[..consumed]);
                self.buf.drain(..consumed);
                match res {
                    Ok(r) => return Ok((Reply::from(r), raw)),
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => return Err(SessionError::Protocol(format!("bad reply: {e:?}"))),
                }
                if raw.len() > MAX_REPLY_BYTES {
                    return Err(SessionError::Protocol("reply too long".into()));
                }
            }
            let n = timeout(limit, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| SessionError::Timeout(what))?
                .map_err(SessionError::Io)?;
            if n == 0 {
                return Err(SessionError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8], limit: Duration) -> Result<(), SessionError> {
        timeout(limit, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| SessionError::Timeout("write"))?
        .map_err(SessionError::Io)
    }

    async fn command(
        &mut self,
        line: &str,
        limit: Duration,
        what: &'static str,
    ) -> Result<(Reply, Vec<u8>), SessionError> {
        self.send(line.as_bytes(), limit).await?;
        self.read_reply(limit, what).await
    }

    /// EHLO; returns the capability bits.
    async fn ehlo(&mut self, helo: &str, limit: Duration) -> Result<u32, SessionError> {
        let (r, raw) = self
            .command(&format!("EHLO {helo}\r\n"), limit, "EHLO reply")
            .await?;
        if r.code != 250 {
            return Err(SessionError::Refused(r));
        }
        Ok(EhloResponse::parse(&mut raw.iter()).map_or(0, |e| e.capabilities))
    }
}

/// TLS client configurations, built once.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    /// Verifies the hop's certificate against the configured roots (TLS required).
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// Encrypts without authenticating (opportunistic, as Postfix's `may`).
    pub opportunistic: Arc<rustls::ClientConfig>,
}

/// One open, greeted connection to a hop.
pub(crate) struct Conn {
    wire: Wire<Box<dyn Io>>,
    caps: u32,
    pub tls: bool,
    pub transactions: usize,
}

impl Conn {
    /// Connects, reads the greeting, says EHLO and negotiates STARTTLS as the hop requires.
    pub async fn open(
        hop: &NextHop,
        helo: &str,
        tls: &TlsSetup,
        t: Timeouts,
    ) -> Result<Conn, SessionError> {
        let tcp = timeout(t.connect, TcpStream::connect((hop.host.as_str(), hop.port)))
            .await
            .map_err(|_| SessionError::Timeout("connect"))?
            .map_err(SessionError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut wire = Wire {
            io: tcp,
            buf: Vec::with_capacity(4096),
        };
        let (greeting, _) = wire.read_reply(t.command, "greeting").await?;
        if greeting.code != 220 {
            return Err(SessionError::Refused(greeting));
        }
        let caps = wire.ehlo(helo, t.command).await?;
        let offered = caps & EXT_START_TLS != 0;
        let config = match hop.tls {
            TlsMode::Off => None,
            TlsMode::Required if !offered => return Err(SessionError::TlsUnavailable),
            TlsMode::Required => Some(
                tls.verified
                    .clone()
                    .ok_or_else(|| SessionError::Tls("no trusted roots configured".into()))?,
            ),
            TlsMode::Opportunistic if offered => Some(tls.opportunistic.clone()),
            TlsMode::Opportunistic => None,
        };
        let Some(config) = config else {
            return Ok(Conn {
                wire: Wire {
                    io: Box::new(wire.io),
                    buf: wire.buf,
                },
                caps,
                tls: false,
                transactions: 0,
            });
        };
        let (r, _) = wire
            .command("STARTTLS\r\n", t.command, "STARTTLS reply")
            .await?;
        if r.code != 220 {
            return Err(SessionError::Refused(r));
        }
        if !wire.buf.is_empty() {
            // Bytes sent before the handshake would be trusted as if they came after it.
            return Err(SessionError::Protocol(
                "data pipelined after STARTTLS".into(),
            ));
        }
        let name = ServerName::try_from(hop.host.clone())
            .map_err(|e| SessionError::Tls(format!("bad server name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = timeout(t.command, connector.connect(name, wire.io))
            .await
            .map_err(|_| SessionError::Timeout("TLS handshake"))?
            .map_err(|e| SessionError::Tls(e.to_string()))?;
        let mut wire: Wire<Box<dyn Io>> = Wire {
            io: Box::new(stream),
            buf: Vec::with_capacity(4096),
        };
        let caps = wire.ehlo(helo, t.command).await?;
        Ok(Conn {
            wire,
            caps,
            tls: true,
            transactions: 0,
        })
    }

    pub fn pipelining(&self) -> bool {
        self.caps & EXT_PIPELINING != 0
    }

    /// Sends one message. Returns, for each recipient, the reply that decides its fate: the
    /// refusal of MAIL or of its RCPT, or the reply to the end of data. A 421 or a broken
    /// connection is a [`SessionError`]: nothing is decided and the message may go elsewhere.
    pub async fn send(
        &mut self,
        mail_from: &str,
        rcpts: &[(u32, String)],
        message: &[u8],
        eight_bit: bool,
        smtputf8: bool,
        t: Timeouts,
    ) -> Result<Vec<(u32, Reply)>, SessionError> {
        if smtputf8 && self.caps & EXT_SMTP_UTF8 == 0 {
            // RFC 6531 3.2: a message that needs SMTPUTF8 must not go to a server without it.
            let r = Reply {
                code: 553,
                enhanced: Some([5, 6, 7]),
                text: "next hop does not support SMTPUTF8".into(),
            };
            return Ok(rcpts.iter().map(|(i, _)| (*i, r.clone())).collect());
        }
        let mut mail = format!("MAIL FROM:<{mail_from}>");
        if self.caps & EXT_SIZE != 0 {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if eight_bit && self.caps & EXT_8BIT_MIME != 0 {
            mail.push_str(" BODY=8BITMIME");
        }
        if smtputf8 && self.caps & EXT_SMTP_UTF8 != 0 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|(_, a)| format!("RCPT TO:<{a}>\r\n"))
            .collect();
        self.transactions += 1;

        let refuse_421 = |r: Reply| -> Result<Reply, SessionError> {
            if r.code == 421 {
                Err(SessionError::Refused(r))
            } else {
                Ok(r)
            }
        };

        let mut decided: Vec<(u32, Reply)> = Vec::with_capacity(rcpts.len());
        let mut accepted: Vec<u32> = Vec::with_capacity(rcpts.len());
        let data_reply;
        if self.pipelining() {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
            let mut batch = mail.into_bytes();
            for l in &rcpt_lines {
                batch.extend_from_slice(l.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.wire.send(&batch, t.command).await?;
            let mail_r = refuse_421(self.wire.read_reply(t.command, "MAIL reply").await?.0)?;
            for (idx, _) in rcpts {
                let r = refuse_421(self.wire.read_reply(t.command, "RCPT reply").await?.0)?;
                if mail_r.class() != 2 {
                    decided.push((*idx, mail_r.clone()));
                } else if r.class() == 2 {
                    accepted.push(*idx);
                } else {
                    decided.push((*idx, r));
                }
            }
            data_reply = refuse_421(self.wire.read_reply(t.command, "DATA reply").await?.0)?;
        } else {
            let mail_r = refuse_421(self.wire.command(&mail, t.command, "MAIL reply").await?.0)?;
            if mail_r.class() != 2 {
                self.rset(t).await?;
                return Ok(rcpts.iter().map(|(i, _)| (*i, mail_r.clone())).collect());
            }
            for ((idx, _), line) in rcpts.iter().zip(&rcpt_lines) {
                let r = refuse_421(self.wire.command(line, t.command, "RCPT reply").await?.0)?;
                if r.class() == 2 {
                    accepted.push(*idx);
                } else {
                    decided.push((*idx, r));
                }
            }
            if accepted.is_empty() {
                self.rset(t).await?;
                return Ok(decided);
            }
            data_reply = refuse_421(
                self.wire
                    .command("DATA\r\n", t.command, "DATA reply")
                    .await?
                    .0,
            )?;
        }

        if data_reply.code != 354 {
            // No recipient accepted (the pipelined DATA is refused), or DATA itself refused.
            for idx in &accepted {
                decided.push((*idx, data_reply.clone()));
            }
            self.rset(t).await?;
            return Ok(decided);
        }
        if accepted.is_empty() {
            // A server that said 354 although no recipient was accepted: end the empty
            // message; nobody receives it.
            self.wire.send(b".\r\n", t.command).await?;
            let _ = self.wire.read_reply(t.data, "end of data reply").await?;
            return Ok(decided);
        }
        let stuffed = dot_stuff(message);
        self.wire.send(&stuffed, t.data).await?;
        let end = refuse_421(self.wire.read_reply(t.data, "end of data reply").await?.0)?;
        for idx in accepted {
            decided.push((idx, end.clone()));
        }
        Ok(decided)
    }

    async fn rset(&mut self, t: Timeouts) -> Result<(), SessionError> {
        let (r, _) = self
            .wire
            .command("RSET\r\n", t.command, "RSET reply")
            .await?;
        if r.class() != 2 {
            return Err(SessionError::Refused(r));
        }
        Ok(())
    }

    /// Says goodbye; errors do not matter any more.
    pub async fn quit(mut self, t: Timeouts) {
        let _ = self.wire.command("QUIT\r\n", t.command, "QUIT reply").await;
    }
}

/// The DATA payload: CRLF line ends, leading dots doubled, ended by `CRLF . CRLF`.
pub(crate) fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut line_start = true;
    let mut prev_cr = false;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && !prev_cr {
            out.push(b'\r');
        }
        out.push(b);
        line_start = b == b'\n';
        prev_cr = b == b'\r';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
            (b"bare\nlf\n.dot", b"bare\r\nlf\r\n..dot\r\n.\r\n"),
            (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                dot_stuff(input),
                *want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn replies_are_read_across_partial_reads_and_kept_apart() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut wire = Wire {
            io: client,
            buf: Vec::new(),
        };
        let t = Duration::from_secs(5);
        tokio::spawn(async move {
            for chunk in [
                &b"250-mx.example"[..],
                b"\r\n250-PIPELINING\r\n250 SIZE 1000\r\n451 4.3.0 tr",
                b"y later\r\n550 5.1.1 no such user\r\n",
            ] {
                server.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (r, raw) = wire.read_reply(t, "x").await.unwrap();
        assert_eq!(r.code, 250);
        let caps = EhloResponse::parse(&mut raw.iter()).unwrap().capabilities;
        assert!(caps & EXT_PIPELINING != 0 && caps & EXT_SIZE != 0);
        assert!(caps & EXT_START_TLS == 0);
        let (r, _) = wire.read_reply(t, "x").await.unwrap();
        assert_eq!(r.to_string(), "451 4.3.0 try later");
        assert_eq!(r.class(), 4);
        let (r, _) = wire.read_reply(t, "x").await.unwrap();
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        // The peer closed: an error, not a hang or a panic.
        assert!(matches!(
            wire.read_reply(t, "x").await,
            Err(SessionError::Io(_))
        ));
    }

    #[tokio::test]
    async fn garbage_replies_are_protocol_errors() {
        for bad in [&b"hello there\r\n"[..], b"25\x00 x\r\n", b"999999 x\r\n"] {
            let (client, mut server) = tokio::io::duplex(64);
            let mut wire = Wire {
                io: client,
                buf: Vec::new(),
            };
            server.write_all(bad).await.unwrap();
            drop(server);
            let r = wire.read_reply(Duration::from_secs(1), "x").await;
            assert!(
                r.is_err(),
                "{:?} accepted: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
