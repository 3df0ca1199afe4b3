use std::net::{IpAddr, SocketAddr};

/// What the TLS layer negotiated, for the `Received:` header and for policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// For example `TLSv1_3`.
    pub protocol: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Facts about one SMTP session that every stage may read.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Name of the receive connector that accepted the connection.
    pub connector: String,
    /// The client's address: the one in the PROXY header when a trusted load balancer sent one.
    pub client: SocketAddr,
    /// The address the client connected to (the balancer's, through PROXY).
    pub local: SocketAddr,
    /// The HELO/EHLO argument, once given.
    pub helo: Option<String>,
    /// Whether EHLO (rather than HELO) was used.
    pub esmtp: bool,
    /// TLS parameters once STARTTLS has completed.
    pub tls: Option<TlsInfo>,
    /// The authenticated user, after a successful AUTH.
    pub auth_user: Option<String>,
    /// Whether the client may relay to any domain (connector relay ranges or AUTH).
    pub may_relay: bool,
}

impl SessionInfo {
    /// The client's IP address.
    pub fn client_ip(&self) -> IpAddr {
        self.client.ip()
    }
}

/// One mail transaction's envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    /// Accepted forward paths, in the order given.
    pub rcpt_to: Vec<String>,
    /// The SIZE the client declared, if any.
    pub declared_size: Option<usize>,
    /// `BODY=8BITMIME` was given.
    pub eight_bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
}
