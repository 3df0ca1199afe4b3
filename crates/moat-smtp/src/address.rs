//! Recipient checks that keep Moat from ever being an open relay.
//!
//! The SMTP parser has already removed angle brackets, quotes and source routes
//! (`@a,@b:user@c` becomes `user@c`), so what reaches [`relay_decision`] is `local@domain`.
//! For a client that may not relay, the recipient must be exactly `local@accepted-domain`,
//! and the local part must not itself carry routing (`%`, `@`, `!`), which some next hops
//! would still honour: `user%other@accepted`, `"user@other"@accepted` and `user@other@accepted`
//! are all relay attempts. Address literals (`user@[192.0.2.1]`) and domains with a trailing
//! dot are never local.

/// The outcome of the relay check for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDecision {
    /// The recipient is in an accepted domain.
    Local,
    /// The client may relay (relay range or authenticated) and the recipient is elsewhere.
    Relay,
    /// Refused: 550 5.7.1.
    Denied,
}

/// The domain part (after the last `@`), if there is a non-empty local part and domain.
pub fn split(address: &str) -> Option<(&str, &str)> {
    let at = address.rfind('@')?;
    let (local, domain) = (&address[..at], &address[at + 1..]);
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// Whether `domain` is one of `accepted` (already lower-case, no trailing dot).
pub fn is_accepted_domain(domain: &str, accepted: &[String]) -> bool {
    accepted.iter().any(|a| a.eq_ignore_ascii_case(domain))
}

/// Decides whether a recipient may be accepted from this client.
pub fn relay_decision(address: &str, accepted: &[String], may_relay: bool) -> RelayDecision {
    let local = split(address).is_some_and(|(local, domain)| {
        !local.contains(['@', '%', '!'])
            && !domain.starts_with('[')
            && !domain.ends_with('.')
            && is_accepted_domain(domain, accepted)
    });
    match (local, may_relay) {
        (true, _) => RelayDecision::Local,
        (false, true) => RelayDecision::Relay,
        (false, false) => RelayDecision::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let accepted = vec!["example.test".to_string()];
        use RelayDecision::*;
        let cases = [
            ("user@example.test", false, Local),
            ("User@EXAMPLE.test", false, Local),
            ("user@other.test", false, Denied),
            ("user@other.test", true, Relay),
            ("user%other.test@example.test", false, Denied),
            ("user@other.test@example.test", false, Denied),
            ("user!other.test@example.test", false, Denied),
            ("user@example.test.", false, Denied),
            ("user@[192.0.2.1]", false, Denied),
            ("user@sub.example.test", false, Denied),
            ("@example.test", false, Denied),
            ("user@", false, Denied),
            ("user", false, Denied),
            ("user%other.test@example.test", true, Relay),
        ];
        for (addr, may_relay, want) in cases {
            assert_eq!(
                relay_decision(addr, &accepted, may_relay),
                want,
                "{addr} may_relay={may_relay}"
            );
        }
    }
}
