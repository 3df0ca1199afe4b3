use std::future::Future;
use std::pin::Pin;

use crate::{Envelope, Reply, SessionInfo};

/// What a stage decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say; go on to the next stage.
    Continue,
    /// Accept, adding these header lines (name, value) to the message.
    Tag(Vec<(String, String)>),
    /// Accept but hold the message for an operator.
    Quarantine(String),
    /// Accept this rewritten message instead of the one received (an infected or forbidden
    /// part stripped and replaced by a notice); later stages see the new message. The
    /// string says why, for the log.
    Replace(Vec<u8>, String),
    /// Accept and drop: the client gets 250, nothing is delivered (Exchange's silent
    /// delete); logged and counted. The string says why.
    Discard(String),
    /// Refuse for now (4xx); the client may retry.
    TempFail(Reply),
    /// Refuse for good (5xx).
    Reject(Reply),
}

impl Verdict {
    /// The reply that ends the phase, for the verdicts that refuse.
    pub fn refusal(&self) -> Option<&Reply> {
        match self {
            Verdict::TempFail(r) | Verdict::Reject(r) => Some(r),
            _ => None,
        }
    }
}

/// The SMTP phase a stage is asked about. Also the closed set of `stage` metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// After the TCP (and PROXY) handshake, before the greeting.
    Connect,
    /// After HELO/EHLO.
    Helo,
    /// After MAIL FROM.
    Mail,
    /// After each RCPT TO.
    Rcpt,
    /// After the whole message has been received, before it is stored.
    Data,
}

impl Phase {
    /// Lower-case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Helo => "helo",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
        }
    }
}

/// The boxed future a [`Stage`] returns (object-safe async).
pub type StageFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A hygiene stage: asked once per phase, each method defaulting to [`Verdict::Continue`].
///
/// CPU-bound work (matching) belongs in plain sync functions the stage calls; a stage that
/// may block for long must bound itself with a timeout.
pub trait Stage: Send + Sync {
    /// Short static name, used as the `stage` label in metrics.
    fn name(&self) -> &'static str;

    /// Called once the client address is known.
    fn connect<'a>(&'a self, _session: &'a SessionInfo) -> StageFuture<'a> {
        Box::pin(async { Verdict::Continue })
    }

    /// Called after HELO/EHLO (`session.helo` is set).
    fn helo<'a>(&'a self, _session: &'a SessionInfo) -> StageFuture<'a> {
        Box::pin(async { Verdict::Continue })
    }

    /// Called after MAIL FROM was parsed (envelope has the sender only).
    fn mail<'a>(&'a self, _session: &'a SessionInfo, _env: &'a Envelope) -> StageFuture<'a> {
        Box::pin(async { Verdict::Continue })
    }

    /// Called for each RCPT TO; `rcpt` is not yet in `env.rcpt_to`.
    fn rcpt<'a>(
        &'a self,
        _session: &'a SessionInfo,
        _env: &'a Envelope,
        _rcpt: &'a str,
    ) -> StageFuture<'a> {
        Box::pin(async { Verdict::Continue })
    }

    /// Called with the complete message, before it is stored.
    fn data<'a>(
        &'a self,
        _session: &'a SessionInfo,
        _env: &'a Envelope,
        _message: &'a [u8],
    ) -> StageFuture<'a> {
        Box::pin(async { Verdict::Continue })
    }
}
