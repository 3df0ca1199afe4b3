//! The closed set of policy decisions and the one place their SMTP replies are defined.

use moat_core::{Enhanced, Phase, Reply, Verdict};

use crate::rate::{Counter, Scope};

/// Why the policy stage decided what it did. Also the closed set of `reason` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The client is on the allow list (block list and rate limits skipped).
    IpAllowed,
    /// The client is on the block list.
    IpBlocked,
    /// Too many connections from the client's address.
    ConnectionRateIp,
    /// Too many connections from the client's network.
    ConnectionRateNet,
    /// The sender address is blocked.
    SenderBlocked,
    /// The sender's domain is blocked.
    SenderDomainBlocked,
    /// The blank sender is refused by policy.
    BlankSender,
    /// Too many messages from the client's address.
    MessageRateIp,
    /// Too many messages from the client's network.
    MessageRateNet,
    /// The recipient is blocked.
    RecipientBlocked,
    /// The recipient is not in the directory.
    RecipientUnknown,
    /// Not in the directory, accepted because the directory is stale.
    RecipientStaleAccept,
    /// Too many recipients from the client's address.
    RecipientRateIp,
    /// Too many recipients from the client's network.
    RecipientRateNet,
    /// The rate store failed; the limit was not applied (fail open).
    RateStoreError,
}

impl Reason {
    /// Every reason, for pre-registering metric handles.
    pub const ALL: [Reason; 15] = [
        Reason::IpAllowed,
        Reason::IpBlocked,
        Reason::ConnectionRateIp,
        Reason::ConnectionRateNet,
        Reason::SenderBlocked,
        Reason::SenderDomainBlocked,
        Reason::BlankSender,
        Reason::MessageRateIp,
        Reason::MessageRateNet,
        Reason::RecipientBlocked,
        Reason::RecipientUnknown,
        Reason::RecipientStaleAccept,
        Reason::RecipientRateIp,
        Reason::RecipientRateNet,
        Reason::RateStoreError,
    ];

    /// Lower-case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::IpAllowed => "ip_allowed",
            Reason::IpBlocked => "ip_blocked",
            Reason::ConnectionRateIp => "connection_rate_ip",
            Reason::ConnectionRateNet => "connection_rate_net",
            Reason::SenderBlocked => "sender_blocked",
            Reason::SenderDomainBlocked => "sender_domain_blocked",
            Reason::BlankSender => "blank_sender",
            Reason::MessageRateIp => "message_rate_ip",
            Reason::MessageRateNet => "message_rate_net",
            Reason::RecipientBlocked => "recipient_blocked",
            Reason::RecipientUnknown => "recipient_unknown",
            Reason::RecipientStaleAccept => "recipient_stale_accept",
            Reason::RecipientRateIp => "recipient_rate_ip",
            Reason::RecipientRateNet => "recipient_rate_net",
            Reason::RateStoreError => "rate_store_error",
        }
    }

    /// The reason a rate-limit rejection gives.
    pub fn for_rate(counter: Counter, scope: Scope) -> Self {
        match (counter, scope) {
            (Counter::Connections, Scope::Ip) => Reason::ConnectionRateIp,
            (Counter::Connections, Scope::Net) => Reason::ConnectionRateNet,
            (Counter::Messages, Scope::Ip) => Reason::MessageRateIp,
            (Counter::Messages, Scope::Net) => Reason::MessageRateNet,
            (Counter::Recipients, Scope::Ip) => Reason::RecipientRateIp,
            (Counter::Recipients, Scope::Net) => Reason::RecipientRateNet,
        }
    }

    /// The phases a reason can be given in (rate store errors in any limited phase).
    pub fn phases(self) -> &'static [Phase] {
        match self {
            Reason::IpAllowed | Reason::IpBlocked => &[Phase::Connect],
            Reason::ConnectionRateIp | Reason::ConnectionRateNet => &[Phase::Connect],
            Reason::SenderBlocked
            | Reason::SenderDomainBlocked
            | Reason::BlankSender
            | Reason::MessageRateIp
            | Reason::MessageRateNet => &[Phase::Mail],
            Reason::RecipientBlocked
            | Reason::RecipientUnknown
            | Reason::RecipientStaleAccept
            | Reason::RecipientRateIp
            | Reason::RecipientRateNet => &[Phase::Rcpt],
            Reason::RateStoreError => &[Phase::Connect, Phase::Mail, Phase::Rcpt],
        }
    }

    /// The verdict this reason gives: every SMTP reply of the policy stage is here.
    pub fn verdict(self) -> Verdict {
        let reject =
            |code, e: Enhanced, text: &'static str| Verdict::Reject(Reply::new(code, e, text));
        let tempfail =
            |code, e: Enhanced, text: &'static str| Verdict::TempFail(Reply::new(code, e, text));
        match self {
            Reason::IpAllowed | Reason::RecipientStaleAccept | Reason::RateStoreError => {
                Verdict::Continue
            }
            Reason::IpBlocked => reject(
                554,
                Enhanced::new(5, 7, 1),
                "Client host rejected: access denied",
            ),
            Reason::ConnectionRateIp | Reason::ConnectionRateNet => tempfail(
                421,
                Enhanced::new(4, 7, 0),
                "Too many connections from your network, try again later",
            ),
            Reason::SenderBlocked | Reason::SenderDomainBlocked => reject(
                550,
                Enhanced::new(5, 7, 1),
                "Sender address rejected: access denied",
            ),
            Reason::BlankSender => reject(
                550,
                Enhanced::new(5, 7, 1),
                "Null sender is not accepted here",
            ),
            Reason::MessageRateIp | Reason::MessageRateNet => tempfail(
                451,
                Enhanced::new(4, 7, 1),
                "Too many messages from your network, try again later",
            ),
            Reason::RecipientBlocked => reject(
                550,
                Enhanced::new(5, 7, 1),
                "Recipient address rejected: access denied",
            ),
            Reason::RecipientUnknown => reject(
                550,
                Enhanced::new(5, 1, 1),
                "Recipient address rejected: user unknown",
            ),
            Reason::RecipientRateIp | Reason::RecipientRateNet => tempfail(
                451,
                Enhanced::new(4, 7, 1),
                "Too many recipients from your network, try again later",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        // (reason, wire form or None for Continue)
        let cases = [
            (Reason::IpAllowed, None),
            (Reason::IpBlocked, Some("554 5.7.1")),
            (Reason::ConnectionRateIp, Some("421 4.7.0")),
            (Reason::ConnectionRateNet, Some("421 4.7.0")),
            (Reason::SenderBlocked, Some("550 5.7.1")),
            (Reason::BlankSender, Some("550 5.7.1")),
            (Reason::MessageRateNet, Some("451 4.7.1")),
            (Reason::RecipientUnknown, Some("550 5.1.1")),
            (Reason::RecipientBlocked, Some("550 5.7.1")),
            (Reason::RecipientRateIp, Some("451 4.7.1")),
            (Reason::RecipientStaleAccept, None),
            (Reason::RateStoreError, None),
        ];
        for (reason, want) in cases {
            let v = reason.verdict();
            match (v.refusal(), want) {
                (None, None) => assert_eq!(v, Verdict::Continue),
                (Some(r), Some(prefix)) => {
                    assert!(r.to_string().starts_with(prefix), "{reason:?}: {r}");
                    assert_eq!(r.is_transient(), matches!(v, Verdict::TempFail(_)));
                }
                (got, want) => panic!("{reason:?}: {got:?} vs {want:?}"),
            }
        }
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
