//! Client addresses as the stages and limits see them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack listener
/// reports IPv4 clients) turned back into IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The network a client address counts in for per-network limits: its /24 for IPv4
/// (mapped addresses included), its /64 for IPv6.
pub fn client_net(ip: IpAddr) -> IpNet {
    match canonical(ip) {
        IpAddr::V4(a) => IpNet::V4(
            Ipv4Net::new(a, 24)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::UNSPECIFIED)),
        ),
        IpAddr::V6(a) => IpNet::V6(
            Ipv6Net::new(a, 64)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv6Net::from(Ipv6Addr::UNSPECIFIED)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_networks_are_slash_24_and_slash_64() {
        let net = |s: &str| client_net(s.parse().unwrap()).to_string();
        assert_eq!(net("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(net("::ffff:192.0.2.77"), "192.0.2.0/24");
        assert_eq!(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let c = |s: &str| canonical(s.parse().unwrap()).to_string();
        assert_eq!(c("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(c("2001:db8::1"), "2001:db8::1");
        assert_eq!(c("192.0.2.1"), "192.0.2.1");
    }
}
