//! Receive connectors: a listener bound to an address, with its own role, client ranges,
//! relay ranges, TLS and AUTH requirements and limits (Exchange's model).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::ServerConfig;

use crate::Limits;
use crate::auth::Users;

/// What a connector is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Mail from the internet to the accepted domains (port 25).
    Mx,
    /// Mail from the organisation's own clients (port 587): AUTH after STARTTLS.
    Submission,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
        }
    }
}

/// A runtime receive connector, built from configuration by the binary.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Unique name, used in logs, metrics and the `Received:` header.
    pub name: String,
    /// Address the listener binds.
    pub bind: SocketAddr,
    /// Role.
    pub role: Role,
    /// Client ranges allowed to connect at all (others get 554 5.7.1).
    pub remote_ranges: Vec<IpNet>,
    /// Client ranges allowed to relay to any domain without AUTH.
    pub relay_ranges: Vec<IpNet>,
    /// Load balancers that must send a PROXY header (v1 or v2). Empty: PROXY is refused.
    pub proxy_from: Vec<IpNet>,
    /// MAIL is refused until STARTTLS has completed.
    pub require_tls: bool,
    /// AUTH is offered (after STARTTLS only).
    pub offer_auth: bool,
    /// MAIL is refused until AUTH has succeeded.
    pub require_auth: bool,
    /// TLS configuration for STARTTLS; `None` disables STARTTLS.
    pub tls: Option<Arc<ServerConfig>>,
    /// Accounts for AUTH.
    pub users: Users,
    /// Per-session limits.
    pub limits: Limits,
    /// Simultaneous connections on this connector.
    pub max_connections: usize,
    /// Simultaneous connections from one client address.
    pub max_connections_per_ip: usize,
    /// Simultaneous connections from one client network (/24 for IPv4, /64 for IPv6).
    pub max_connections_per_net: usize,
}

impl Connector {
    /// A connector with safe defaults for its role: connections from anywhere, nobody may
    /// relay; submission requires STARTTLS and AUTH.
    pub fn new(name: impl Into<String>, bind: SocketAddr, role: Role) -> Self {
        let any: Vec<IpNet> = vec![
            "0.0.0.0/0".parse().expect("valid"),
            "::/0".parse().expect("valid"),
        ];
        Self {
            name: name.into(),
            bind,
            role,
            remote_ranges: any,
            relay_ranges: Vec::new(),
            proxy_from: Vec::new(),
            require_tls: role == Role::Submission,
            offer_auth: role == Role::Submission,
            require_auth: role == Role::Submission,
            tls: None,
            users: Users::default(),
            limits: Limits::default(),
            max_connections: 2048,
            max_connections_per_ip: 50,
            max_connections_per_net: 200,
        }
    }

    /// May `ip` connect?
    pub fn allows_client(&self, ip: IpAddr) -> bool {
        contains(&self.remote_ranges, ip)
    }

    /// May `ip` relay without AUTH?
    pub fn allows_relay(&self, ip: IpAddr) -> bool {
        contains(&self.relay_ranges, ip)
    }

    /// Must a connection from `ip` start with a PROXY header?
    pub fn expects_proxy(&self, ip: IpAddr) -> bool {
        contains(&self.proxy_from, ip)
    }
}

/// Whether `ip` is in any of `nets`; IPv4-mapped IPv6 addresses match IPv4 ranges.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = moat_core::canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}
