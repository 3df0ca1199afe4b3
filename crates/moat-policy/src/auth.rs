//! SPF, DKIM, DMARC and ARC verification and the `Authentication-Results` header.
//!
//! [`AuthStage`] checks inbound mail with the [`mail_auth`] crate over the node's shared
//! resolver (see [`crate::DnsConfig::resolver`]; its TTL cache is the only cache):
//!
//! - **MAIL**: SPF of the MAIL FROM identity (the HELO identity for the null sender). A
//!   `fail` or `softfail` is refused with `550 5.7.23` (RFC 7372) when [`AuthConfig`] says
//!   `reject`; otherwise the result is only recorded.
//! - **DATA**: SPF again (a cache hit: the stage keeps no per-session state), DKIM, ARC when
//!   enabled, then DMARC for the `From:` domain. A DMARC `fail` under `p=reject` gives
//!   `550 5.7.1`, [`Verdict::Quarantine`] or a tag only, and under `p=quarantine` a
//!   quarantine or a tag only, as configured. Otherwise the message is accepted with one
//!   header, first in the message (RFC 8601):
//!
//! ```text
//! Authentication-Results: mx.example.net;
//!     spf=pass (mx.example.net: domain of alice@sender.test designates 192.0.2.1 as permitted sender) smtp.mailfrom=alice@sender.test;
//!     dkim=pass header.d=sender.test header.s=sel header.b=AbCdEfGh;
//!     dmarc=pass header.from=sender.test policy.dmarc=reject;
//!     arc=none smtp.remote-ip=192.0.2.1
//! ```
//!
//! The content filter's rules read it as the target `header:Authentication-Results`.
//!
//! **Forged results.** A header in the received message that carries *our* authserv-id
//! cannot be ours (RFC 8601 section 5): when there is one, the stage answers
//! [`Verdict::Replace`] with those headers removed and ours prepended, instead of
//! [`Verdict::Tag`]. Headers of other authserv-ids are left alone (downstream readers must
//! trust only their own id). A quarantined message is held as received, without our header.
//!
//! **Failures are not refusals.** A DNS timeout or SERVFAIL, or a check that exceeds
//! `timeout_ms`, gives `temperror` for that method; no transaction is refused or deferred
//! because DNS is unwell. DKIM body-hash mismatches are reported as `fail` (RFC 6376 section
//! 6.3 calls them PERMFAIL), not `neutral` as mail-auth does.
//!
//! Authenticated and relaying clients (`auth_user` or `may_relay`) are skipped by default:
//! submission is not checked as inbound mail.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, Error as MailAuthError, MessageAuthenticator, SpfOutput, SpfResult,
};
use moat_core::{Enhanced, Envelope, Phase, Reply, SessionInfo, Stage, StageFuture, Verdict};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use serde::Deserialize;

use crate::error::PolicyError;
use crate::iplist::canonical;

/// The header name the stage adds.
pub const AUTH_RESULTS_HEADER: &str = "Authentication-Results";

/// `[policy.auth]`: message authentication and what each result does.
///
/// ```toml
/// [policy.auth]
/// enabled = true
/// # authserv_id = "mx.example.net"   # default: the node's host name
/// spf_fail = "reject"                # or "tag"
/// spf_softfail = "tag"               # or "reject"
/// dmarc_reject = "reject"            # p=reject: "reject", "quarantine" or "tag"
/// dmarc_quarantine = "quarantine"    # p=quarantine: "quarantine" or "tag"
/// arc = true
/// skip_authenticated = true
/// timeout_ms = 5000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether mail is checked at all; when off, the stage lets everything through untouched.
    pub enabled: bool,
    /// The authserv-id written in `Authentication-Results` (and whose earlier headers are
    /// removed as forged). Default: the node's host name, given to [`AuthConfig::build`].
    pub authserv_id: Option<String>,
    /// SPF `fail`: refuse at MAIL FROM with `550 5.7.23`, or record it in the header only.
    pub spf_fail: SpfAction,
    /// SPF `softfail`: as `spf_fail`; receivers usually only record it.
    pub spf_softfail: SpfAction,
    /// DMARC `fail` when the domain publishes `p=reject`: `550 5.7.1` at the end of DATA,
    /// quarantine, or record only.
    pub dmarc_reject: DmarcRejectAction,
    /// DMARC `fail` when the domain publishes `p=quarantine`: quarantine or record only.
    pub dmarc_quarantine: DmarcQuarantineAction,
    /// Whether ARC chains are verified and reported (`arc=`); results are recorded only.
    pub arc: bool,
    /// Whether authenticated (AUTH) and relaying clients skip the checks: submission is not
    /// inbound mail.
    pub skip_authenticated: bool,
    /// Time allowed for each check (SPF, DKIM, ARC, DMARC) in milliseconds; a check that
    /// takes longer counts as `temperror`.
    pub timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            authserv_id: None,
            spf_fail: SpfAction::Reject,
            spf_softfail: SpfAction::Tag,
            dmarc_reject: DmarcRejectAction::Reject,
            dmarc_quarantine: DmarcQuarantineAction::Quarantine,
            arc: true,
            skip_authenticated: true,
            timeout_ms: 5_000,
        }
    }
}

/// What an SPF result does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfAction {
    /// Refuse the sender with `550 5.7.23`.
    Reject,
    /// Record the result in `Authentication-Results` only (the content score may use it).
    Tag,
}

/// What a DMARC failure under `p=reject` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcRejectAction {
    /// Refuse the message with `550 5.7.1` at the end of DATA.
    Reject,
    /// Accept and hold it for an operator.
    Quarantine,
    /// Record the result only.
    Tag,
}

/// What a DMARC failure under `p=quarantine` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcQuarantineAction {
    /// Accept and hold it for an operator.
    Quarantine,
    /// Record the result only.
    Tag,
}

impl AuthConfig {
    /// The per-check timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the values, reporting every problem at once.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut errors = Vec::new();
        if let Some(id) = &self.authserv_id
            && let Err(e) = check_authserv_id(id)
        {
            errors.push(format!("policy.auth.authserv_id: {e}"));
        }
        if self.timeout_ms == 0 {
            errors.push("policy.auth.timeout_ms: must be greater than zero".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::config(errors.join("; ")))
        }
    }

    /// Builds the stage over the node's shared resolver. `host_name` is the node's name, the
    /// authserv-id unless `authserv_id` is set.
    pub fn build(
        &self,
        resolver: TokioResolver,
        host_name: &str,
        metrics: AuthMetrics,
    ) -> Result<AuthStage, PolicyError> {
        self.validate()?;
        let authserv_id = match &self.authserv_id {
            Some(id) => id.clone(),
            None => {
                check_authserv_id(host_name).map_err(|e| {
                    PolicyError::config(format!(
                        "policy.auth.authserv_id: the host name {host_name:?} cannot be used ({e}); set authserv_id"
                    ))
                })?;
                host_name.to_owned()
            }
        };
        Ok(AuthStage {
            config: self.clone(),
            authenticator: MessageAuthenticator(resolver),
            authserv_id,
            timeout: self.timeout(),
            metrics,
        })
    }
}

/// An authserv-id must be a plain token: it is written unquoted into the header and the SPF
/// comment.
fn check_authserv_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > 253 {
        return Err("longer than 253 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err("only letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
}

/// An authentication method. Also the closed set of `method` metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// SPF (RFC 7208).
    Spf,
    /// DKIM (RFC 6376).
    Dkim,
    /// DMARC (RFC 7489).
    Dmarc,
    /// ARC (RFC 8617).
    Arc,
}

impl AuthMethod {
    /// Every method.
    pub const ALL: [AuthMethod; 4] = [
        AuthMethod::Spf,
        AuthMethod::Dkim,
        AuthMethod::Dmarc,
        AuthMethod::Arc,
    ];

    /// Lower-case name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Spf => "spf",
            AuthMethod::Dkim => "dkim",
            AuthMethod::Dmarc => "dmarc",
            AuthMethod::Arc => "arc",
        }
    }
}

/// One method's result, as RFC 8601 names it. Also the closed set of `result` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// Verified.
    Pass,
    /// Verification failed.
    Fail,
    /// SPF only: the domain says the host is probably not authorised.
    SoftFail,
    /// SPF: no assertion; DKIM/ARC: a signature that could not be processed.
    Neutral,
    /// Nothing to check (no record, no signature).
    None,
    /// A transient error (DNS timeout or SERVFAIL, check timeout).
    TempError,
    /// A permanent error (a broken record).
    PermError,
}

impl AuthResult {
    /// Every result.
    pub const ALL: [AuthResult; 7] = [
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::None,
        AuthResult::TempError,
        AuthResult::PermError,
    ];

    /// The RFC 8601 result keyword, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }

    fn of_spf(r: SpfResult) -> Self {
        match r {
            SpfResult::Pass => AuthResult::Pass,
            SpfResult::Fail => AuthResult::Fail,
            SpfResult::SoftFail => AuthResult::SoftFail,
            SpfResult::Neutral => AuthResult::Neutral,
            SpfResult::TempError => AuthResult::TempError,
            SpfResult::PermError => AuthResult::PermError,
            SpfResult::None => AuthResult::None,
        }
    }

    fn of_dkim(r: &DkimResult) -> Self {
        match r {
            DkimResult::Pass => AuthResult::Pass,
            DkimResult::Neutral(_) => AuthResult::Neutral,
            DkimResult::Fail(_) => AuthResult::Fail,
            DkimResult::PermError(_) => AuthResult::PermError,
            DkimResult::TempError(_) => AuthResult::TempError,
            DkimResult::None => AuthResult::None,
        }
    }

    fn of_dmarc(r: &DmarcResult) -> Self {
        match r {
            DmarcResult::Pass => AuthResult::Pass,
            DmarcResult::Fail(_) => AuthResult::Fail,
            DmarcResult::TempError(_) => AuthResult::TempError,
            DmarcResult::PermError(_) => AuthResult::PermError,
            DmarcResult::None => AuthResult::None,
        }
    }
}

/// The policy a domain's DMARC record asks for (after `sp=`, `np=` and `t=y` are applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// No record, or `p=none`.
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
}

/// Everything the DATA check found, for the stage's verdict (and for tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthReport {
    /// SPF of the MAIL FROM identity (HELO for the null sender).
    pub spf: AuthResult,
    /// DKIM: `pass` when any signature verified, else the first signature's result, `none`
    /// without signatures.
    pub dkim: AuthResult,
    /// DMARC for the `From:` domain.
    pub dmarc: AuthResult,
    /// The `From:` domain's DMARC policy.
    pub dmarc_policy: DmarcPolicy,
    /// The `From:` domain DMARC was evaluated for (empty when there was none).
    pub from_domain: String,
    /// ARC, when verified.
    pub arc: Option<AuthResult>,
    /// The `Authentication-Results` value (without the name), folded as RFC 8601 shows.
    pub header: String,
}

/// Why the stage refused or held mail. Also the closed set of `reason` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AuthReason {
    SpfFail,
    SpfSoftFail,
    DmarcReject,
    DmarcQuarantine,
}

impl AuthReason {
    const ALL: [AuthReason; 4] = [
        AuthReason::SpfFail,
        AuthReason::SpfSoftFail,
        AuthReason::DmarcReject,
        AuthReason::DmarcQuarantine,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthReason::SpfFail => "spf_fail",
            AuthReason::SpfSoftFail => "spf_softfail",
            AuthReason::DmarcReject => "dmarc_reject",
            AuthReason::DmarcQuarantine => "dmarc_quarantine",
        }
    }
}

/// The authentication stage's Prometheus handles, registered on an explicit registry and
/// resolved once.
///
/// - `moat_policy_auth_results_total{method, result}`: one per checked transaction and
///   method; SPF is counted at MAIL, DKIM, DMARC and ARC at DATA.
/// - `moat_policy_auth_refusals_total{reason}`: `spf_fail`, `spf_softfail` (refused at
///   MAIL, or DATA), `dmarc_reject` (refused at DATA), `dmarc_quarantine` (held).
/// - `moat_policy_auth_skipped_total`: transactions of authenticated or relaying clients.
/// - `moat_policy_auth_forged_removed_total`: earlier headers with our authserv-id removed.
/// - `moat_policy_auth_verify_seconds{phase}`: time spent checking at `mail` and `data`.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    results: HashMap<(AuthMethod, AuthResult), IntCounter>,
    refusals: HashMap<AuthReason, IntCounter>,
    skipped: IntCounter,
    forged: IntCounter,
    seconds_mail: Histogram,
    seconds_data: Histogram,
}

impl AuthMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, PolicyError> {
        Self::build(registry).map_err(PolicyError::metrics)
    }

    /// Handles registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::build(&Registry::new()).unwrap_or_else(|e| unreachable!("fresh registry: {e}"))
    }

    fn build(registry: &Registry) -> Result<Self, prometheus::Error> {
        let results_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_auth_results_total",
                "Message authentication results by method and result.",
            ),
            &["method", "result"],
        )?;
        let refusals_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_auth_refusals_total",
                "Mail refused or quarantined because of an authentication result, by reason.",
            ),
            &["reason"],
        )?;
        let skipped = IntCounter::new(
            "moat_policy_auth_skipped_total",
            "Transactions of authenticated or relaying clients, not checked.",
        )?;
        let forged = IntCounter::new(
            "moat_policy_auth_forged_removed_total",
            "Authentication-Results headers carrying our authserv-id found in received mail and removed.",
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "moat_policy_auth_verify_seconds",
                "Time spent on SPF, DKIM, ARC and DMARC checks, by SMTP phase.",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(results_vec.clone()))?;
        registry.register(Box::new(refusals_vec.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(forged.clone()))?;
        registry.register(Box::new(seconds.clone()))?;

        let mut results = HashMap::new();
        for method in AuthMethod::ALL {
            for result in AuthResult::ALL {
                if result == AuthResult::SoftFail && method != AuthMethod::Spf {
                    continue;
                }
                results.insert(
                    (method, result),
                    results_vec.with_label_values(&[method.as_str(), result.as_str()]),
                );
            }
        }
        let refusals = AuthReason::ALL
            .into_iter()
            .map(|r| (r, refusals_vec.with_label_values(&[r.as_str()])))
            .collect();
        Ok(Self {
            results,
            refusals,
            skipped,
            forged,
            seconds_mail: seconds.with_label_values(&[Phase::Mail.as_str()]),
            seconds_data: seconds.with_label_values(&[Phase::Data.as_str()]),
        })
    }

    fn result(&self, method: AuthMethod, result: AuthResult) {
        if let Some(c) = self.results.get(&(method, result)) {
            c.inc();
        }
    }

    fn refusal(&self, reason: AuthReason) {
        if let Some(c) = self.refusals.get(&reason) {
            c.inc();
        }
    }

    fn seconds(&self, phase: Phase, elapsed: Duration) {
        let h = if phase == Phase::Mail {
            &self.seconds_mail
        } else {
            &self.seconds_data
        };
        h.observe(elapsed.as_secs_f64());
    }
}

/// SPF, DKIM, ARC and DMARC as one [`Stage`] (name `auth`); see the module docs.
pub struct AuthStage {
    config: AuthConfig,
    authenticator: MessageAuthenticator,
    authserv_id: String,
    timeout: Duration,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for AuthStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStage")
            .field("config", &self.config)
            .field("authserv_id", &self.authserv_id)
            .finish_non_exhaustive()
    }
}

/// The SPF identity of a transaction and its result.
struct SpfCheck {
    output: SpfOutput,
    /// The HELO identity was checked (null sender).
    helo_identity: bool,
}

impl AuthStage {
    /// The authserv-id this stage writes.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    fn skipped(&self, session: &SessionInfo) -> bool {
        !self.config.enabled
            || (self.config.skip_authenticated
                && (session.may_relay || session.auth_user.is_some()))
    }

    /// Runs `fut` within the per-check timeout; `None` when it ran out.
    async fn bounded<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.timeout, fut).await.ok()
    }

    /// SPF of the transaction's identity: MAIL FROM, or `postmaster@HELO` for `<>`.
    async fn spf(&self, session: &SessionInfo, mail_from: &str) -> SpfCheck {
        let ip = canonical(session.client_ip());
        let helo = session.helo.as_deref().unwrap_or_default();
        let helo_identity = mail_from.is_empty();
        let domain = if helo_identity {
            helo
        } else {
            mail_from.rsplit_once('@').map_or("", |(_, d)| d)
        };
        let output = if !plausible_domain(domain) {
            // RFC 7208 section 4.3: no valid domain, nothing to check.
            SpfOutput::new(domain.to_owned()).with_result(SpfResult::None)
        } else {
            let params = if helo_identity {
                SpfParameters::verify_ehlo(ip, helo, &self.authserv_id)
            } else {
                SpfParameters::verify_mail_from(ip, helo, &self.authserv_id, mail_from)
            };
            self.bounded(self.authenticator.verify_spf(params))
                .await
                .unwrap_or_else(|| {
                    SpfOutput::new(domain.to_owned()).with_result(SpfResult::TempError)
                })
        };
        SpfCheck {
            output,
            helo_identity,
        }
    }

    /// The refusal an SPF result asks for, if any.
    fn spf_refusal(&self, spf: &SpfCheck, ip: IpAddr) -> Option<(AuthReason, Verdict)> {
        let (reason, action, how) = match spf.output.result() {
            SpfResult::Fail => (AuthReason::SpfFail, self.config.spf_fail, "is not"),
            SpfResult::SoftFail => (
                AuthReason::SpfSoftFail,
                self.config.spf_softfail,
                "is probably not",
            ),
            _ => return None,
        };
        if action != SpfAction::Reject {
            return None;
        }
        let text = format!(
            "SPF validation failed: {ip} {how} permitted to send for {}",
            printable(spf.output.domain(), 255)
        );
        Some((
            reason,
            Verdict::Reject(Reply::new(550, Enhanced::new(5, 7, 23), text)),
        ))
    }

    /// Logs and counts a refusal or quarantine.
    fn refuse(
        &self,
        phase: Phase,
        reason: AuthReason,
        session: &SessionInfo,
        verdict: Verdict,
    ) -> Verdict {
        self.metrics.refusal(reason);
        match verdict.refusal() {
            Some(reply) => tracing::info!(
                stage = phase.as_str(),
                reason = reason.as_str(),
                client = %session.client_ip(),
                code = reply.code(),
                "auth refused"
            ),
            None => tracing::info!(
                stage = phase.as_str(),
                reason = reason.as_str(),
                client = %session.client_ip(),
                "auth quarantined"
            ),
        }
        verdict
    }

    /// Checks a whole message: SPF, DKIM, ARC (when enabled) and DMARC, and builds the
    /// `Authentication-Results` value. Never fails: DNS trouble gives `temperror`.
    pub async fn verify(
        &self,
        session: &SessionInfo,
        env: &Envelope,
        message: &[u8],
    ) -> AuthReport {
        self.verify_with_spf(session, env, message).await.0
    }

    async fn verify_with_spf(
        &self,
        session: &SessionInfo,
        env: &Envelope,
        message: &[u8],
    ) -> (AuthReport, SpfCheck) {
        let ip = canonical(session.client_ip());
        let helo = session.helo.as_deref().unwrap_or_default();
        let parsed = AuthenticatedMessage::parse(message);

        let spf_fut = self.spf(session, &env.mail_from);
        let dkim_fut = async {
            match &parsed {
                Some(m) => self
                    .bounded(self.authenticator.verify_dkim(m))
                    .await
                    .unwrap_or_else(|| vec![DkimOutput::temp_err(timed_out())]),
                None => Vec::new(),
            }
        };
        let arc_fut = async {
            match (&parsed, self.config.arc) {
                (_, false) => None,
                (Some(m), true) => Some(
                    self.bounded(self.authenticator.verify_arc(m))
                        .await
                        .unwrap_or_else(|| {
                            ArcOutput::default().with_result(DkimResult::TempError(timed_out()))
                        }),
                ),
                (None, true) => Some(ArcOutput::default()),
            }
        };
        let (spf, dkim, arc) = tokio::join!(spf_fut, dkim_fut, arc_fut);

        let spf_domain = if spf.helo_identity {
            helo
        } else {
            env.mail_from.rsplit_once('@').map_or("", |(_, d)| d)
        };
        let dmarc = match &parsed {
            Some(m) => {
                let params = DmarcParameters::new(m, &dkim, spf_domain, &spf.output);
                let from_domain = m
                    .from()
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .to_ascii_lowercase();
                self.bounded(self.authenticator.verify_dmarc(params))
                    .await
                    .unwrap_or_else(|| {
                        DmarcOutput::default()
                            .with_domain(&from_domain)
                            .with_spf_result(DmarcResult::TempError(timed_out()))
                            .with_dkim_result(DmarcResult::TempError(timed_out()))
                    })
            }
            None => DmarcOutput::default(),
        };

        // RFC 6376 section 6.3: a body hash mismatch is a failed signature.
        let dkim_reported: Vec<DkimOutput<'_>> = dkim
            .iter()
            .map(|o| match (o.result(), o.signature()) {
                (
                    DkimResult::Neutral(MailAuthError::Dkim(DkimError::FailedBodyHashMatch)),
                    Some(sig),
                ) => DkimOutput::fail(MailAuthError::Dkim(DkimError::FailedBodyHashMatch))
                    .with_signature(sig),
                _ => o.clone(),
            })
            .collect();

        let header = self.header(
            ip,
            helo,
            &env.mail_from,
            &spf,
            &dkim_reported,
            &dmarc,
            arc.as_ref(),
        );
        let dkim_result = if dkim_reported
            .iter()
            .any(|o| matches!(o.result(), DkimResult::Pass))
        {
            AuthResult::Pass
        } else {
            dkim_reported
                .first()
                .map_or(AuthResult::None, |o| AuthResult::of_dkim(o.result()))
        };
        let report = AuthReport {
            spf: AuthResult::of_spf(spf.output.result()),
            dkim: dkim_result,
            dmarc: AuthResult::of_dmarc(&dmarc.result()),
            dmarc_policy: match dmarc.policy() {
                Policy::Reject => DmarcPolicy::Reject,
                Policy::Quarantine => DmarcPolicy::Quarantine,
                Policy::None | Policy::Unspecified => DmarcPolicy::None,
            },
            from_domain: dmarc.domain().to_owned(),
            arc: arc.as_ref().map(|a| AuthResult::of_dkim(a.result())),
            header,
        };
        (report, spf)
    }

    /// The `Authentication-Results` value: `authserv-id; spf=…; dkim=…; dmarc=…; arc=…`.
    #[allow(clippy::too_many_arguments)]
    fn header(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: &SpfCheck,
        dkim: &[DkimOutput<'_>],
        dmarc: &DmarcOutput,
        arc: Option<&ArcOutput<'_>>,
    ) -> String {
        let id = self.authserv_id.as_str();
        // Each method as its own `;\r\n\tmethod=…` clause, in a fixed order, so that a
        // missing one can be written as `none`.
        let clause = |build: &dyn Fn(AuthenticationResults<'_>) -> AuthenticationResults<'_>| {
            let text = build(AuthenticationResults::new(id)).to_string();
            text.get(id.len()..).unwrap_or_default().to_owned()
        };
        let mut out = String::with_capacity(512);
        out.push_str(id);
        out.push_str(&clause(&|ar| {
            if spf.helo_identity && !helo.is_empty() {
                ar.with_spf_ehlo_result(&spf.output, ip, helo)
            } else {
                ar.with_spf_mailfrom_result(&spf.output, ip, mail_from, helo)
            }
        }));
        if dkim.is_empty() {
            out.push_str(";\r\n\tdkim=none");
        } else {
            let from = dmarc.domain();
            out.push_str(&clause(&|ar| ar.with_dkim_results(dkim, from)));
        }
        if dmarc.domain().is_empty() {
            out.push_str(";\r\n\tdmarc=none");
        } else {
            out.push_str(&clause(&|ar| ar.with_dmarc_result(dmarc)));
        }
        if let Some(arc) = arc {
            out.push_str(&clause(&|ar| ar.with_arc_result(arc, ip)));
        }
        out
    }

    /// The verdict for a verified message.
    fn data_verdict(&self, session: &SessionInfo, message: &[u8], report: AuthReport) -> Verdict {
        if report.dmarc == AuthResult::Fail {
            let domain = printable(&report.from_domain, 255);
            let reject = || {
                Verdict::Reject(Reply::new(
                    550,
                    Enhanced::new(5, 7, 1),
                    format!("Message rejected by the DMARC policy of {domain}"),
                ))
            };
            let quarantine = || Verdict::Quarantine(format!("DMARC policy of {domain}"));
            let decided = match (
                report.dmarc_policy,
                self.config.dmarc_reject,
                self.config.dmarc_quarantine,
            ) {
                (DmarcPolicy::Reject, DmarcRejectAction::Reject, _) => {
                    Some((AuthReason::DmarcReject, reject()))
                }
                (DmarcPolicy::Reject, DmarcRejectAction::Quarantine, _)
                | (DmarcPolicy::Quarantine, _, DmarcQuarantineAction::Quarantine) => {
                    Some((AuthReason::DmarcQuarantine, quarantine()))
                }
                _ => None,
            };
            if let Some((reason, verdict)) = decided {
                return self.refuse(Phase::Data, reason, session, verdict);
            }
        }
        match strip_own_results(message, &self.authserv_id) {
            None => Verdict::Tag(vec![(AUTH_RESULTS_HEADER.to_owned(), report.header)]),
            Some((stripped, removed)) => {
                self.metrics.forged.inc_by(removed as u64);
                tracing::info!(
                    client = %session.client_ip(),
                    removed,
                    "removed Authentication-Results headers carrying our authserv-id"
                );
                let mut out = Vec::with_capacity(stripped.len() + report.header.len() + 32);
                out.extend_from_slice(AUTH_RESULTS_HEADER.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(report.header.as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&stripped);
                Verdict::Replace(out, "forged Authentication-Results removed".to_owned())
            }
        }
    }
}

impl Stage for AuthStage {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn mail<'a>(&'a self, session: &'a SessionInfo, env: &'a Envelope) -> StageFuture<'a> {
        Box::pin(async move {
            if self.skipped(session) {
                if self.config.enabled {
                    self.metrics.skipped.inc();
                }
                return Verdict::Continue;
            }
            let started = Instant::now();
            let spf = self.spf(session, &env.mail_from).await;
            self.metrics.seconds(Phase::Mail, started.elapsed());
            let result = AuthResult::of_spf(spf.output.result());
            self.metrics.result(AuthMethod::Spf, result);
            tracing::debug!(client = %session.client_ip(), spf = result.as_str(), "spf checked");
            match self.spf_refusal(&spf, canonical(session.client_ip())) {
                Some((reason, verdict)) => self.refuse(Phase::Mail, reason, session, verdict),
                None => Verdict::Continue,
            }
        })
    }

    fn data<'a>(
        &'a self,
        session: &'a SessionInfo,
        env: &'a Envelope,
        message: &'a [u8],
    ) -> StageFuture<'a> {
        Box::pin(async move {
            if self.skipped(session) {
                return Verdict::Continue;
            }
            let started = Instant::now();
            let (report, spf) = self.verify_with_spf(session, env, message).await;
            self.metrics.seconds(Phase::Data, started.elapsed());
            self.metrics.result(AuthMethod::Dkim, report.dkim);
            self.metrics.result(AuthMethod::Dmarc, report.dmarc);
            if let Some(arc) = report.arc {
                self.metrics.result(AuthMethod::Arc, arc);
            }
            tracing::debug!(
                client = %session.client_ip(),
                spf = report.spf.as_str(),
                dkim = report.dkim.as_str(),
                dmarc = report.dmarc.as_str(),
                arc = report.arc.map_or("-", AuthResult::as_str),
                "message authentication checked"
            );
            // SPF was judged at MAIL; it refuses here only if MAIL let a refusal through
            // (the stage keeps no per-session state), e.g. the DNS answer changed since.
            if let Some((reason, verdict)) = self.spf_refusal(&spf, canonical(session.client_ip()))
            {
                return self.refuse(Phase::Data, reason, session, verdict);
            }
            self.data_verdict(session, message, report)
        })
    }
}

/// The error a check that ran out of time reports (a DNS error, so `temperror`).
fn timed_out() -> MailAuthError {
    MailAuthError::Dns(DnsError::Resolver("check timed out".to_owned()))
}

/// Whether `domain` can be an SPF domain: several labels of letters, digits, `-` and `_`.
fn plausible_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// `s` without control characters, at most `max` characters, for reply texts.
fn printable(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(char::is_control) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|c| !c.is_control()).take(max).collect())
    }
}

/// Removes the `Authentication-Results` header fields whose authserv-id is `id` from the
/// message's header block. `None` when there is none; else the message and how many went.
fn strip_own_results(message: &[u8], id: &str) -> Option<(Vec<u8>, usize)> {
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut removed = 0;
    let mut pos = 0;
    let line_end = |from: usize| {
        message
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
            .map_or(message.len(), |i| from + i + 1)
    };
    while pos < message.len() {
        let first_end = line_end(pos);
        let line = message.get(pos..first_end).unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let mut end = first_end;
        while matches!(message.get(end), Some(b' ' | b'\t')) {
            end = line_end(end);
        }
        let field = message.get(pos..end).unwrap_or_default();
        if is_own_results(field, id) {
            removed += 1;
        } else {
            kept.push((pos, end));
        }
        pos = end;
    }
    if removed == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    for (start, end) in kept {
        out.extend_from_slice(message.get(start..end).unwrap_or_default());
    }
    out.extend_from_slice(message.get(pos..).unwrap_or_default());
    Some((out, removed))
}

/// Whether a header field is `Authentication-Results` with authserv-id `id`.
fn is_own_results(field: &[u8], id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = field.split_at(colon);
    if !name
        .trim_ascii_end()
        .eq_ignore_ascii_case(AUTH_RESULTS_HEADER.as_bytes())
    {
        return false;
    }
    let value = value.get(1..).unwrap_or_default();
    authserv_id_of(value).is_some_and(|found| found.eq_ignore_ascii_case(id.as_bytes()))
}

/// The authserv-id at the start of an `Authentication-Results` value, after any comments
/// and folding whitespace; a quoted-string is returned without its quotes.
fn authserv_id_of(value: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    loop {
        while value.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if value.get(i) != Some(&b'(') {
            break;
        }
        let mut depth = 0usize;
        while let Some(&b) = value.get(i) {
            i += 1;
            match b {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let rest = value.get(i..)?;
    let id: Vec<u8> = if let Some(quoted) = rest.strip_prefix(b"\"") {
        let end = quoted.iter().position(|&b| b == b'"')?;
        quoted.get(..end)?.to_vec()
    } else {
        rest.iter()
            .take_while(|&&b| !b.is_ascii_whitespace() && b != b';' && b != b'(')
            .copied()
            .collect()
    };
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml() {
        let c: AuthConfig = toml::from_str("").unwrap();
        assert_eq!(c, AuthConfig::default());
        assert!(c.validate().is_ok());
        let c: AuthConfig = toml::from_str(
            r#"
            enabled = true
            authserv_id = "mx.example.net"
            spf_fail = "tag"
            spf_softfail = "reject"
            dmarc_reject = "quarantine"
            dmarc_quarantine = "tag"
            arc = false
            skip_authenticated = false
            timeout_ms = 800
            "#,
        )
        .unwrap();
        assert_eq!(c.spf_fail, SpfAction::Tag);
        assert_eq!(c.spf_softfail, SpfAction::Reject);
        assert_eq!(c.dmarc_reject, DmarcRejectAction::Quarantine);
        assert_eq!(c.dmarc_quarantine, DmarcQuarantineAction::Tag);
        assert_eq!(c.timeout(), Duration::from_millis(800));
        assert!(c.validate().is_ok());
        // Closed sets and unknown keys are refused by serde.
        for bad in [
            r#"dmarc_quarantine = "reject""#,
            r#"spf_fail = "quarantine""#,
            r#"spf_neutral = "tag""#,
        ] {
            assert!(toml::from_str::<AuthConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = AuthConfig {
            authserv_id: Some("mx example; bad".into()),
            timeout_ms: 0,
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("policy.auth.authserv_id"), "{e}");
        assert!(e.contains("policy.auth.timeout_ms"), "{e}");
    }

    #[test]
    fn domains() {
        for (d, ok) in [
            ("example.com", true),
            ("example.com.", true),
            ("mail_x.example.com", true),
            ("bücher.example", true),
            ("localhost", false),
            ("", false),
            ("[192.0.2.1]", false),
            ("a..b", false),
            (".example.com", false),
            ("exa mple.com", false),
        ] {
            assert_eq!(plausible_domain(d), ok, "{d:?}");
        }
    }

    #[test]
    fn authserv_ids() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b" mx.example.net; spf=pass", Some(b"mx.example.net")),
            (b" mx.example.net 1; none", Some(b"mx.example.net")),
            (
                b"\r\n\t(comment (nested)) MX.example.net;",
                Some(b"MX.example.net"),
            ),
            (b" \"mx.example.net\"; none", Some(b"mx.example.net")),
            (b" mx.example.net(c);", Some(b"mx.example.net")),
            (b"  ", None),
            (b" (unterminated", None),
            (b" \"unterminated", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                authserv_id_of(value).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn strips_only_our_headers_from_the_header_block() {
        let msg = b"Received: from a\r\n\tby b\r\n\
Authentication-Results: mx.example.net;\r\n\tspf=pass smtp.mailfrom=x@y\r\n\
Authentication-Results: other.example; dkim=pass\r\n\
authentication-results : (c) MX.EXAMPLE.NET; none\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.net; in the body\r\n";
        let (out, removed) = strip_own_results(msg, "mx.example.net").unwrap();
        assert_eq!(removed, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from a\r\n\tby b\r\n\
Authentication-Results: other.example; dkim=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.net; in the body\r\n"
        );
        assert!(strip_own_results(b"Subject: x\r\n\r\nbody", "mx.example.net").is_none());
        // Bad input: no panic, nothing removed.
        for junk in [
            &b""[..],
            b"\r\n",
            b":::",
            b"Authentication-Results",
            b"\t\t\n\n",
        ] {
            assert!(strip_own_results(junk, "mx.example.net").is_none());
        }
        // No header/body separator, LF line ends.
        let (out, _) = strip_own_results(
            b"Authentication-Results: mx.example.net; x\nA: b\n",
            "mx.example.net",
        )
        .unwrap();
        assert_eq!(out, b"A: b\n");
    }

    #[test]
    fn metric_labels_are_closed_and_distinct() {
        let registry = Registry::new();
        let m = AuthMetrics::new(&registry).unwrap();
        assert!(AuthMetrics::new(&registry).is_err(), "registered twice");
        assert_eq!(m.results.len(), 4 * 6 + 1);
        let mut labels: Vec<_> = AuthResult::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), AuthResult::ALL.len());
    }

    #[test]
    fn printable_text() {
        assert_eq!(printable("example.com", 255), "example.com");
        assert_eq!(printable("a\r\nb", 255), "ab");
        assert_eq!(printable(&"x".repeat(300), 255).len(), 255);
    }
}
