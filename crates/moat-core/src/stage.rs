use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

/// A stage chosen by the session's receive connector: the MX connector may scan with one
/// policy and submission with another, or not at all. Connectors not named use the default;
/// `None` (as default or for a connector) means no stage there.
pub struct PerConnector {
    name: &'static str,
    default: Option<Arc<dyn Stage>>,
    by_connector: HashMap<String, Option<Arc<dyn Stage>>>,
}

impl PerConnector {
    /// Routes to `default` unless a connector is given its own stage with [`Self::with`].
    pub fn new(name: &'static str, default: Option<Arc<dyn Stage>>) -> Self {
        Self {
            name,
            default,
            by_connector: HashMap::new(),
        }
    }

    /// Uses `stage` (or nothing) for sessions on `connector`.
    pub fn with(mut self, connector: impl Into<String>, stage: Option<Arc<dyn Stage>>) -> Self {
        self.by_connector.insert(connector.into(), stage);
        self
    }

    /// The stage for a connector, if any.
    pub fn stage_for(&self, connector: &str) -> Option<&Arc<dyn Stage>> {
        match self.by_connector.get(connector) {
            Some(s) => s.as_ref(),
            None => self.default.as_ref(),
        }
    }
}

impl Stage for PerConnector {
    fn name(&self) -> &'static str {
        self.name
    }

    fn connect<'a>(&'a self, session: &'a SessionInfo) -> StageFuture<'a> {
        match self.stage_for(&session.connector) {
            Some(s) => s.connect(session),
            None => Box::pin(async { Verdict::Continue }),
        }
    }

    fn helo<'a>(&'a self, session: &'a SessionInfo) -> StageFuture<'a> {
        match self.stage_for(&session.connector) {
            Some(s) => s.helo(session),
            None => Box::pin(async { Verdict::Continue }),
        }
    }

    fn mail<'a>(&'a self, session: &'a SessionInfo, env: &'a Envelope) -> StageFuture<'a> {
        match self.stage_for(&session.connector) {
            Some(s) => s.mail(session, env),
            None => Box::pin(async { Verdict::Continue }),
        }
    }

    fn rcpt<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        rcpt: &'a str,
    ) -> StageFuture<'a> {
        match self.stage_for(&session.connector) {
            Some(s) => s.rcpt(session, env, rcpt),
            None => Box::pin(async { Verdict::Continue }),
        }
    }

    fn data<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StageFuture<'a> {
        match self.stage_for(&session.connector) {
            Some(s) => s.data(session, env, message),
            None => Box::pin(async { Verdict::Continue }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Enhanced;

    /// Refuses every RCPT with its own text, so a test can tell which stage answered.
    struct Refuse(&'static str);

    impl Stage for Refuse {
        fn name(&self) -> &'static str {
            "refuse"
        }
        fn rcpt<'a>(
            &'a self,
            _session: &'a SessionInfo,
            _env: &'a Envelope,
            _rcpt: &'a str,
        ) -> StageFuture<'a> {
            Box::pin(
                async move { Verdict::Reject(Reply::new(550, Enhanced::new(5, 7, 1), self.0)) },
            )
        }
    }

    fn session(connector: &str) -> SessionInfo {
        SessionInfo {
            connector: connector.into(),
            client: "192.0.2.1:4000".parse().unwrap(),
            local: "192.0.2.2:25".parse().unwrap(),
            helo: None,
            esmtp: true,
            tls: None,
            auth_user: None,
            may_relay: false,
        }
    }

    async fn rcpt(stage: &PerConnector, connector: &str) -> Verdict {
        stage
            .rcpt(&session(connector), &Envelope::default(), "a@example.com")
            .await
    }

    #[tokio::test]
    async fn per_connector_routes_by_connector_name_with_a_default() {
        let stage = PerConnector::new("av", Some(Arc::new(Refuse("default"))))
            .with("submission", None)
            .with("partners", Some(Arc::new(Refuse("partners"))));
        let text = |v: Verdict| v.refusal().map(|r| r.to_string());
        assert!(text(rcpt(&stage, "mx").await).unwrap().contains("default"));
        assert!(
            text(rcpt(&stage, "partners").await)
                .unwrap()
                .contains("partners")
        );
        assert_eq!(rcpt(&stage, "submission").await, Verdict::Continue);
        let none = PerConnector::new("av", None);
        assert_eq!(rcpt(&none, "mx").await, Verdict::Continue);
    }
}
