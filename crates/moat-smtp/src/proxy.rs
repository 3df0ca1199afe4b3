//! PROXY protocol v1 and v2 (HAProxy's specification) on connections from trusted load
//! balancers.
//!
//! A connector with `proxy_from` ranges expects every connection from those addresses to start
//! with a PROXY header; the address inside it is then the client for every policy decision and
//! log line. A trusted peer that sends no valid header in time is refused. Parsing is done by
//! the `ppp` crate; this module only reads the right number of octets and maps the result.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, also used to recognise a header sent by an untrusted peer.
pub const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing (or not enough) arrived in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("connection closed before a complete PROXY header")]
    Closed,
    /// The octets are not a valid header.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// A read error.
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    /// The original client, when the header carried one (`None` for v2 LOCAL or v1 UNKNOWN,
    /// which are the balancer's own health checks).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the balancer.
    pub destination: Option<SocketAddr>,
}

/// True when `bytes` starts like a PROXY header (v1 or v2).
pub fn looks_like_proxy(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ") || bytes.starts_with(V2_SIGNATURE)
}

/// Reads exactly one PROXY header from `stream`, leaving everything after it unread.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxiedAddrs, ProxyError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read_header_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxiedAddrs, ProxyError> {
    // Five octets tell the versions apart ("PROXY" or the start of the v2 signature) and
    // are fewer than the shortest v1 header ("PROXY UNKNOWN\r\n").
    let mut buf = vec![0u8; 5];
    read_exact(stream, &mut buf).await?;
    if buf == V2_SIGNATURE[..5] {
        buf.resize(16, 0);
        read_exact(stream, &mut buf[5..]).await?;
        if !buf.starts_with(&V2_SIGNATURE[..12]) {
            return Err(ProxyError::Invalid("bad v2 signature".into()));
        }
        // v2: 12-octet signature, version/command, family, 16-bit length.
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        buf.resize(16 + len, 0);
        read_exact(stream, &mut buf[16..]).await?;
        let header =
            ppp::v2::Header::try_from(&buf[..]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
        let (source, destination) = match (header.command, header.addresses) {
            (ppp::v2::Command::Local, _) => (None, None),
            (_, ppp::v2::Addresses::IPv4(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, ppp::v2::Addresses::IPv6(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, _) => (None, None),
        };
        return Ok(ProxiedAddrs {
            source,
            destination,
        });
    }
    if buf != b"PROXY" {
        return Err(ProxyError::Invalid("neither v1 nor v2 signature".into()));
    }
    // v1: a text line of at most 107 octets ending in CRLF; read one octet at a time so
    // nothing after the header is consumed.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= 107 {
            return Err(ProxyError::Invalid(
                "v1 header longer than 107 octets".into(),
            ));
        }
        let mut b = [0u8; 1];
        read_exact(stream, &mut b).await?;
        buf.push(b[0]);
    }
    let header =
        ppp::v1::Header::try_from(&buf[..]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => ProxiedAddrs {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            destination: Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        },
        ppp::v1::Addresses::Tcp6(a) => ProxiedAddrs {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            destination: Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        },
        ppp::v1::Addresses::Unknown => ProxiedAddrs {
            source: None,
            destination: None,
        },
    })
}

async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), ProxyError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<ProxiedAddrs, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor, Duration::from_secs(1)).await;
        let pos = cursor.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v1_headers() {
        let (r, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\nEHLO x\r\n").await;
        let r = r.unwrap();
        assert_eq!(r.source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(r.destination, Some("10.0.0.1:25".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n");

        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n").await;
        assert_eq!(
            r.unwrap().source,
            Some("[2001:db8::7]:40000".parse().unwrap())
        );

        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap().source, None);

        for bad in [
            &b"PROXY TCP4 999.0.2.7 10.0.0.1 1 25\r\n"[..],
            b"PROXY TCP4 192.0.2.7\r\n",
            b"EHLO example.test\r\n",
        ] {
            assert!(
                matches!(parse(bad).await.0, Err(ProxyError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyError::Closed)
        ));
    }

    #[tokio::test]
    async fn v2_headers() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.9:5555".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:25".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"EHLO x\r\n");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(
            r.unwrap().source,
            Some("198.51.100.9:5555".parse().unwrap())
        );
        assert_eq!(rest, b"EHLO x\r\n");

        // Truncated.
        let (r, _) = parse(&header[..header.len() - 3]).await;
        assert!(matches!(r, Err(ProxyError::Closed)));
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))));
    }
}
