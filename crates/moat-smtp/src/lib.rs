//! Moat's SMTP front end (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, CHUNKING and STARTTLS; AUTH PLAIN/LOGIN after STARTTLS).
//!
//! Main types:
//! - [`Connector`]: a receive connector (bind address, role, client and relay ranges, PROXY
//!   balancers, TLS and AUTH requirements, [`Limits`]).
//! - [`Listener`]: binds a connector and runs one [`Session`] task per connection.
//! - [`Session`]: the state machine of one SMTP session over any byte stream.
//! - [`replies`]: every reply the front end sends.
//!
//! Sessions run over any `AsyncRead + AsyncWrite` stream, so tests drive them through an
//! in-memory duplex:
//!
//! ```
//! # use std::sync::Arc;
//! # use moat_core::{Envelope, MessageStore, QueueId, SessionInfo, Shutdown, StoreFuture};
//! # use moat_smtp::{Connector, Role, ServerContext, Session, SmtpMetrics};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! struct Discard;
//! impl MessageStore for Discard {
//!     fn store<'a>(&'a self, _: &'a SessionInfo, _: &'a Envelope, _: &'a [u8]) -> StoreFuture<'a> {
//!         Box::pin(async { Ok(QueueId("X1".into())) })
//!     }
//! }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let conn = Arc::new(Connector::new("mx", "127.0.0.1:25".parse().unwrap(), Role::Mx));
//! let ctx = Arc::new(ServerContext {
//!     hostname: "mx.example.test".into(),
//!     accepted_domains: vec!["example.test".into()],
//!     store: Arc::new(Discard),
//!     stages: vec![],
//! });
//! let info = SessionInfo {
//!     connector: "mx".into(), client: "192.0.2.1:5000".parse().unwrap(),
//!     local: "127.0.0.1:25".parse().unwrap(), helo: None, esmtp: false, tls: None,
//!     auth_user: None, may_relay: false,
//! };
//! let (mut client, server) = tokio::io::duplex(4096);
//! let metrics = SmtpMetrics::unregistered().connector("mx");
//! tokio::spawn(Session::new(server, conn, ctx, metrics, Shutdown::never(), info).run());
//! client.write_all(b"QUIT\r\n").await.unwrap();
//! let mut out = String::new();
//! client.read_to_string(&mut out).await.unwrap();
//! assert_eq!(out, "220 mx.example.test ESMTP Moat\r\n221 2.0.0 Bye\r\n");
//! # });
//! ```

pub mod address;
pub mod auth;
mod connector;
pub mod data;
mod limits;
pub mod metrics;
pub mod proxy;
pub mod replies;
mod server;
mod session;
mod stream;
pub mod tls;

pub use connector::{Connector, Role, contains};
pub use limits::Limits;
pub use metrics::{ConnectorMetrics, SmtpMetrics};
pub use server::Listener;
pub use session::{ServerContext, Session};

/// Errors building a connector from configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The users file is unreadable or malformed.
    #[error("users file: {0}")]
    Users(String),
    /// The certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
}
