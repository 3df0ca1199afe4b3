//! [`PolicyStage`]: the IP lists, the sender and recipient filters and the rate limits as
//! one [`moat_core::Stage`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use moat_core::{Envelope, Phase, SessionInfo, Stage, StageFuture, Verdict};
use serde::Deserialize;

use crate::error::{PolicyError, ReloadOutcome};
use crate::iplist::{IpClass, IpListStore, IpListsConfig};
use crate::metrics::{ListName, PolicyMetrics};
use crate::rate::{Counter, RateLimiter, RateLimitsConfig, RateStore};
use crate::reason::Reason;
use crate::recipient::{RcptDecision, RecipientConfig, RecipientFilter};
use crate::sender::{SenderConfig, SenderDecision, SenderFilter};

/// The policy stage's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Receive connectors the policy stages apply to. Empty: every connector with the `mx`
    /// role (submission clients authenticate instead).
    pub connectors: Vec<String>,
    /// The resolver shared by the DNS lists and message authentication.
    pub dns: crate::DnsConfig,
    /// IP allow and block lists.
    pub ip_lists: IpListsConfig,
    /// Sender filtering.
    pub sender: SenderConfig,
    /// Recipient filtering and the recipient directory.
    pub recipients: RecipientConfig,
    /// Rate limits per client address and network.
    pub rate_limits: RateLimitsConfig,
    /// Where rate counts live when several nodes share them; none: in this node's memory.
    pub redis: Option<crate::RedisConfig>,
    /// DNS block and allow lists (no zones: no lookups).
    pub dnsbl: crate::DnsblConfig,
    /// SPF, DKIM, DMARC and ARC; off unless the section is present.
    pub auth: Option<crate::AuthConfig>,
}

impl PolicyConfig {
    /// Builds the stage: reads every list, validates everything and reports all problems
    /// together. `store` holds the rate counts.
    pub fn build(
        &self,
        store: Arc<dyn RateStore>,
        metrics: PolicyMetrics,
    ) -> Result<PolicyStage, PolicyError> {
        let ip_lists = IpListStore::new(self.ip_lists.clone());
        let sender = SenderFilter::new(&self.sender);
        let recipients = RecipientFilter::new(&self.recipients);
        let limiter = RateLimiter::new(self.rate_limits.clone(), store);
        // The DNS lists, authentication and Redis are built by the node over its resolver
        // and registry; their settings are checked here so one call reports everything.
        let others: Vec<PolicyError> = [
            self.dnsbl.validate().err(),
            self.auth.as_ref().and_then(|a| a.validate().err()),
            self.redis.as_ref().and_then(|r| r.validate().err()),
        ]
        .into_iter()
        .flatten()
        .collect();
        match (ip_lists, sender, recipients, limiter) {
            (Ok(ip_lists), Ok(sender), Ok(recipients), Ok(limiter)) if others.is_empty() => {
                Ok(PolicyStage {
                    ip_lists: Arc::new(ip_lists),
                    sender,
                    recipients: Arc::new(recipients),
                    limiter,
                    metrics,
                })
            }
            (a, b, c, d) => {
                let errors: Vec<PolicyError> = [a.err(), b.err(), c.err(), d.err()]
                    .into_iter()
                    .flatten()
                    .chain(others)
                    .collect();
                Err(join(errors))
            }
        }
    }
}

fn join(mut errors: Vec<PolicyError>) -> PolicyError {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    PolicyError::config(text.join("; "))
}

/// Connection, sender and recipient hygiene as one stage.
///
/// - connect: allow list (skips the block list and rate limits), block list (`554 5.7.1`),
///   connection rate (`421 4.7.0`);
/// - mail: sender filter (`550 5.7.1`), message rate (`451 4.7.1`);
/// - rcpt: recipient rate (`451 4.7.1`, counted first so directory harvesting spends the
///   budget), blocked recipients (`550 5.7.1`), the directory (`550 5.1.1`).
///
/// A failing rate store does not fail the transaction: the check is skipped, logged and
/// counted. Every decision is logged and counted from the same [`Reason`].
#[derive(Debug)]
pub struct PolicyStage {
    ip_lists: Arc<IpListStore>,
    sender: SenderFilter,
    recipients: Arc<RecipientFilter>,
    limiter: RateLimiter,
    metrics: PolicyMetrics,
}

impl PolicyStage {
    /// The live IP lists (for other stages that honour the allow list).
    pub fn ip_lists(&self) -> &Arc<IpListStore> {
        &self.ip_lists
    }

    /// The live recipient filter.
    pub fn recipients(&self) -> &Arc<RecipientFilter> {
        &self.recipients
    }

    /// Re-reads the IP list files; a broken file keeps the old lists. Logged and counted.
    pub fn reload_ip_lists(&self) -> Result<ReloadOutcome, PolicyError> {
        let result = self.ip_lists.reload();
        self.log_reload(ListName::IpLists, &result);
        result
    }

    /// Re-reads the recipient directory; a broken file keeps the old one. Logged, counted,
    /// and the directory age metric updated.
    pub fn reload_directory(&self) -> Result<ReloadOutcome, PolicyError> {
        let result = self.recipients.reload();
        self.log_reload(ListName::Directory, &result);
        self.refresh_directory_metrics(SystemTime::now());
        result
    }

    /// Updates the directory age and staleness metrics (call it periodically too, so the
    /// age moves on a quiet node).
    pub fn refresh_directory_metrics(&self, now: SystemTime) {
        if let Some(age) = self.recipients.age(now) {
            self.metrics.directory(age, self.recipients.is_stale(now));
        }
    }

    fn log_reload(&self, list: ListName, result: &Result<ReloadOutcome, PolicyError>) {
        self.metrics.reload(list, result);
        match result {
            Ok(outcome) => tracing::info!(
                list = list.as_str(),
                result = outcome.as_str(),
                "policy list reloaded"
            ),
            Err(e) => {
                tracing::warn!(list = list.as_str(), error = %e, "policy list reload rejected; keeping the old one")
            }
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.ip_lists.snapshot().classify(ip) == IpClass::Allowed
    }

    /// Logs and counts a decision and turns it into a verdict.
    fn decide(&self, phase: Phase, reason: Reason, ip: IpAddr) -> Verdict {
        self.metrics.decision(phase, reason);
        let verdict = reason.verdict();
        match verdict.refusal() {
            Some(reply) => tracing::info!(
                stage = phase.as_str(),
                reason = reason.as_str(),
                client = %ip,
                code = reply.code(),
                "policy refused"
            ),
            None => {
                tracing::debug!(stage = phase.as_str(), reason = reason.as_str(), client = %ip, "policy decision")
            }
        }
        verdict
    }

    /// Applies the rate limit of `counter`; `None` when within the limits.
    async fn rate(&self, phase: Phase, counter: Counter, ip: IpAddr) -> Option<Verdict> {
        match self.limiter.hit(counter, ip).await {
            Ok(None) => None,
            Ok(Some(scope)) => {
                self.metrics.rejection(counter, scope);
                Some(self.decide(phase, Reason::for_rate(counter, scope), ip))
            }
            Err(e) => {
                self.metrics.limiter_error();
                tracing::warn!(stage = phase.as_str(), counter = counter.as_str(), error = %e, "rate store failed; limit not applied");
                self.metrics.decision(phase, Reason::RateStoreError);
                None
            }
        }
    }
}

impl Stage for PolicyStage {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn connect<'a>(&'a self, session: &'a SessionInfo) -> StageFuture<'a> {
        Box::pin(async move {
            let ip = session.client_ip();
            match self.ip_lists.snapshot().classify(ip) {
                IpClass::Allowed => return self.decide(Phase::Connect, Reason::IpAllowed, ip),
                IpClass::Blocked => return self.decide(Phase::Connect, Reason::IpBlocked, ip),
                IpClass::Neutral => {}
            }
            self.rate(Phase::Connect, Counter::Connections, ip)
                .await
                .unwrap_or(Verdict::Continue)
        })
    }

    fn mail<'a>(&'a self, session: &'a SessionInfo, env: &'a Envelope) -> StageFuture<'a> {
        Box::pin(async move {
            let ip = session.client_ip();
            let reason = match self.sender.check(&env.mail_from) {
                SenderDecision::Accept => None,
                SenderDecision::BlockedAddress => Some(Reason::SenderBlocked),
                SenderDecision::BlockedDomain => Some(Reason::SenderDomainBlocked),
                SenderDecision::BlankSender => Some(Reason::BlankSender),
            };
            if let Some(reason) = reason {
                return self.decide(Phase::Mail, reason, ip);
            }
            if self.allowed(ip) {
                return Verdict::Continue;
            }
            self.rate(Phase::Mail, Counter::Messages, ip)
                .await
                .unwrap_or(Verdict::Continue)
        })
    }

    fn rcpt<'a>(
        &'a self,
        session: &'a SessionInfo,
        _env: &'a Envelope,
        rcpt: &'a str,
    ) -> StageFuture<'a> {
        Box::pin(async move {
            let ip = session.client_ip();
            if !self.allowed(ip)
                && let Some(v) = self.rate(Phase::Rcpt, Counter::Recipients, ip).await
            {
                return v;
            }
            let now = SystemTime::now();
            let decision = self.recipients.check(rcpt, now);
            self.refresh_directory_metrics(now);
            match decision {
                RcptDecision::Accept | RcptDecision::NotLocal => Verdict::Continue,
                RcptDecision::Blocked => self.decide(Phase::Rcpt, Reason::RecipientBlocked, ip),
                RcptDecision::Unknown => self.decide(Phase::Rcpt, Reason::RecipientUnknown, ip),
                RcptDecision::StaleAccept => {
                    self.decide(Phase::Rcpt, Reason::RecipientStaleAccept, ip)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateLimit;
    use crate::rate::tests::ManualClock;
    use crate::recipient::StaleAction;
    use crate::{ErrorKind, MemoryRateStore, RateFuture, RateKey};
    use std::time::Duration;

    fn session(client: &str) -> SessionInfo {
        SessionInfo {
            connector: "default".into(),
            client: format!("{client}:40000")
                .parse()
                .or_else(|_| format!("[{client}]:40000").parse())
                .unwrap(),
            local: "192.0.2.250:25".parse().unwrap(),
            helo: Some("client.example".into()),
            esmtp: true,
            tls: None,
            auth_user: None,
            may_relay: false,
        }
    }

    fn env(from: &str) -> Envelope {
        Envelope {
            mail_from: from.into(),
            ..Default::default()
        }
    }

    /// Wire form of a refusal, or "continue".
    fn wire(v: &Verdict) -> String {
        v.refusal()
            .map(|r| r.to_string()[..9].to_owned())
            .unwrap_or_else(|| "continue".into())
    }

    struct Fixture {
        stage: PolicyStage,
        registry: prometheus::Registry,
        clock: ManualClock,
        _dir: tempfile::TempDir,
    }

    fn fixture(limits: RateLimitsConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let directory = dir.path().join("recipients.txt");
        std::fs::write(&directory, "alice@example.com\n*@catchall.example\n").unwrap();
        let config = PolicyConfig {
            ip_lists: IpListsConfig {
                allow: crate::IpListSource {
                    inline: vec!["192.0.2.10".into()],
                    files: vec![],
                },
                block: crate::IpListSource {
                    inline: vec!["192.0.2.0/24".into(), "2001:db8:bad::/48".into()],
                    files: vec![],
                },
            },
            sender: SenderConfig {
                blocked_senders: vec!["bad@example.org".into()],
                blocked_domains_and_subdomains: vec!["spam.example".into()],
                ..Default::default()
            },
            recipients: RecipientConfig {
                accepted_domains: vec!["example.com".into(), "catchall.example".into()],
                directory: Some(directory),
                blocked_recipients: vec!["noreply@example.com".into()],
                stale_after_secs: Some(86_400),
                stale_action: StaleAction::AcceptAll,
            },
            rate_limits: limits,
            ..Default::default()
        };
        let clock = ManualClock::new();
        let registry = prometheus::Registry::new();
        let stage = config
            .build(
                Arc::new(MemoryRateStore::with_clock(1000, clock.clock())),
                PolicyMetrics::new(&registry).unwrap(),
            )
            .unwrap();
        Fixture {
            stage,
            registry,
            clock,
            _dir: dir,
        }
    }

    fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        for family in registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let ok = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if ok {
                    return match family.get_field_type() {
                        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                        _ => m.get_counter().get_value(),
                    };
                }
            }
        }
        panic!("no metric {name} {labels:?}");
    }

    #[tokio::test]
    async fn phases() {
        let f = fixture(RateLimitsConfig::default());
        let s = &f.stage;
        // (client, wire at connect)
        let connects = [
            ("192.0.2.1", "554 5.7.1"),
            ("::ffff:192.0.2.1", "554 5.7.1"),
            ("192.0.2.10", "continue"),
            ("198.51.100.1", "continue"),
            ("2001:db8:bad::1", "554 5.7.1"),
            ("2001:db8:900d::1", "continue"),
        ];
        for (client, want) in connects {
            assert_eq!(wire(&s.connect(&session(client)).await), want, "{client}");
        }
        let ok = session("198.51.100.1");
        let mails = [
            ("bad@example.org", "550 5.7.1"),
            ("good@example.org", "continue"),
            ("x@mx.spam.example", "550 5.7.1"),
            ("", "continue"),
        ];
        for (from, want) in mails {
            assert_eq!(wire(&s.mail(&ok, &env(from)).await), want, "{from:?}");
        }
        let e = env("good@example.org");
        let rcpts = [
            ("alice@example.com", "continue"),
            ("bob@example.com", "550 5.1.1"),
            ("noreply@example.com", "550 5.7.1"),
            ("anyone@catchall.example", "continue"),
            ("someone@elsewhere.example", "continue"),
        ];
        for (rcpt, want) in rcpts {
            assert_eq!(wire(&s.rcpt(&ok, &e, rcpt).await), want, "{rcpt}");
        }
        let m = |stage, reason| {
            metric(
                &f.registry,
                "moat_policy_decisions_total",
                &[("stage", stage), ("reason", reason)],
            )
        };
        assert_eq!(m("connect", "ip_blocked"), 3.0);
        assert_eq!(m("connect", "ip_allowed"), 1.0);
        assert_eq!(m("mail", "sender_blocked"), 1.0);
        assert_eq!(m("mail", "sender_domain_blocked"), 1.0);
        assert_eq!(m("rcpt", "recipient_unknown"), 1.0);
        assert_eq!(m("rcpt", "recipient_blocked"), 1.0);
        assert!(metric(&f.registry, "moat_policy_directory_age_seconds", &[]) < 60.0);
        assert_eq!(metric(&f.registry, "moat_policy_directory_stale", &[]), 0.0);
    }

    #[tokio::test]
    async fn rate_limits_per_phase() {
        let limit = |max| {
            Some(RateLimit {
                max,
                window_secs: 60,
            })
        };
        let f = fixture(RateLimitsConfig {
            connections_per_ip: limit(2),
            messages_per_net: limit(1),
            recipients_per_ip: limit(3),
            ..Default::default()
        });
        let s = &f.stage;
        let a = session("198.51.100.1");
        let b = session("198.51.100.2");
        let allowed = session("192.0.2.10");
        let e = env("good@example.org");

        let connects = [
            (&a, "continue"),
            (&a, "continue"),
            (&a, "421 4.7.0"),
            (&b, "continue"),
        ];
        for (i, (sess, want)) in connects.into_iter().enumerate() {
            assert_eq!(wire(&s.connect(sess).await), want, "connect {i}");
        }
        let mails = [
            (&a, "continue"),
            (&b, "451 4.7.1"),
            (&allowed, "continue"),
            (&allowed, "continue"),
        ];
        for (i, (sess, want)) in mails.into_iter().enumerate() {
            assert_eq!(wire(&s.mail(sess, &e).await), want, "mail {i}");
        }
        // Unknown users count against the recipient budget too.
        let rcpts = [
            ("alice@example.com", "continue"),
            ("bob@example.com", "550 5.1.1"),
            ("alice@example.com", "continue"),
            ("alice@example.com", "451 4.7.1"),
        ];
        for (rcpt, want) in rcpts {
            assert_eq!(wire(&s.rcpt(&a, &e, rcpt).await), want, "{rcpt}");
        }
        // A new window.
        f.clock.advance(Duration::from_secs(60));
        assert_eq!(wire(&s.connect(&a).await), "continue");
        assert_eq!(wire(&s.mail(&b, &e).await), "continue");
        assert_eq!(wire(&s.rcpt(&a, &e, "alice@example.com").await), "continue");

        let r = |counter, scope| {
            metric(
                &f.registry,
                "moat_policy_limiter_rejections_total",
                &[("counter", counter), ("scope", scope)],
            )
        };
        assert_eq!(r("connections", "ip"), 1.0);
        assert_eq!(r("messages", "net"), 1.0);
        assert_eq!(r("recipients", "ip"), 1.0);
        assert_eq!(r("recipients", "net"), 0.0);
    }

    struct BrokenStore;

    impl RateStore for BrokenStore {
        fn name(&self) -> &'static str {
            "broken"
        }

        fn add<'a>(&'a self, _key: &'a RateKey, _amount: u64, _window: Duration) -> RateFuture<'a> {
            Box::pin(async { Err(PolicyError::rate_store("store unreachable")) })
        }
    }

    #[tokio::test]
    async fn broken_rate_store_fails_open() {
        let registry = prometheus::Registry::new();
        let stage = PolicyConfig {
            rate_limits: RateLimitsConfig {
                connections_per_ip: Some(RateLimit {
                    max: 1,
                    window_secs: 1,
                }),
                ..Default::default()
            },
            ..Default::default()
        }
        .build(
            Arc::new(BrokenStore),
            PolicyMetrics::new(&registry).unwrap(),
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(
                stage.connect(&session("198.51.100.1")).await,
                Verdict::Continue
            );
        }
        assert_eq!(
            metric(&registry, "moat_policy_limiter_errors_total", &[]),
            3.0
        );
    }

    #[tokio::test]
    async fn reloads_are_counted_and_keep_old_lists() {
        let f = fixture(RateLimitsConfig::default());
        let path = f._dir.path().join("recipients.txt");
        let ok = session("198.51.100.1");
        let e = env("");
        std::fs::write(&path, "broken line\n").unwrap();
        assert!(f.stage.reload_directory().is_err());
        assert_eq!(
            wire(&f.stage.rcpt(&ok, &e, "alice@example.com").await),
            "continue"
        );
        std::fs::write(&path, "bob@example.com\n").unwrap();
        assert_eq!(f.stage.reload_directory().unwrap(), ReloadOutcome::Applied);
        assert_eq!(
            wire(&f.stage.rcpt(&ok, &e, "alice@example.com").await),
            "550 5.1.1"
        );
        assert_eq!(f.stage.reload_ip_lists().unwrap(), ReloadOutcome::Unchanged);
        let r = |list, result| {
            metric(
                &f.registry,
                "moat_policy_reloads_total",
                &[("list", list), ("result", result)],
            )
        };
        assert_eq!(r("directory", "rejected"), 1.0);
        assert_eq!(r("directory", "applied"), 1.0);
        assert_eq!(r("ip_lists", "unchanged"), 1.0);
    }

    #[tokio::test]
    async fn stale_directory_accepts_and_is_exposed() {
        let f = fixture(RateLimitsConfig::default());
        let path = f._dir.path().join("recipients.txt");
        let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(f.stage.reload_directory().unwrap(), ReloadOutcome::Applied);
        let ok = session("198.51.100.1");
        let e = env("");
        assert_eq!(
            wire(&f.stage.rcpt(&ok, &e, "bob@example.com").await),
            "continue"
        );
        assert_eq!(metric(&f.registry, "moat_policy_directory_stale", &[]), 1.0);
        assert!(metric(&f.registry, "moat_policy_directory_age_seconds", &[]) >= 172_800.0);
        assert_eq!(
            metric(
                &f.registry,
                "moat_policy_decisions_total",
                &[("stage", "rcpt"), ("reason", "recipient_stale_accept")]
            ),
            1.0
        );
    }

    #[test]
    fn build_reports_every_broken_part() {
        let config = PolicyConfig {
            ip_lists: IpListsConfig {
                block: crate::IpListSource {
                    inline: vec!["nope".into()],
                    files: vec![],
                },
                ..Default::default()
            },
            sender: SenderConfig {
                blocked_senders: vec!["no-at-sign".into()],
                ..Default::default()
            },
            rate_limits: RateLimitsConfig {
                messages_per_ip: Some(RateLimit {
                    max: 0,
                    window_secs: 1,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = config
            .build(
                Arc::new(MemoryRateStore::new(10)),
                PolicyMetrics::unregistered(),
            )
            .unwrap_err();
        let msg = err.to_string();
        for part in ["inline:1", "blocked_senders", "messages_per_ip"] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[test]
    fn metrics_register_once() {
        let registry = prometheus::Registry::new();
        PolicyMetrics::new(&registry).unwrap();
        assert_eq!(
            PolicyMetrics::new(&registry).unwrap_err().kind(),
            ErrorKind::Metrics
        );
    }

    #[test]
    fn config_from_toml() {
        let config: PolicyConfig = toml::from_str(
            r#"
            [ip_lists.block]
            inline = ["192.0.2.0/24"]
            [sender]
            blank_sender = "reject"
            [recipients]
            accepted_domains = ["example.com"]
            stale_after_secs = 86400
            stale_action = "accept-all"
            [rate_limits]
            connections_per_ip = { max = 30, window_secs = 60 }
            "#,
        )
        .unwrap();
        assert_eq!(config.sender.blank_sender, crate::BlankSender::Reject);
        assert_eq!(config.recipients.stale_action, StaleAction::AcceptAll);
        assert_eq!(
            config.rate_limits.connections_per_ip,
            Some(RateLimit {
                max: 30,
                window_secs: 60
            })
        );
        for bad in [
            "[sender]\nblocked = []\n",
            "[rate_limits]\nconnections_per_ip = { max = 1, window = 1 }\n",
            "typo = 1\n",
        ] {
            assert!(toml::from_str::<PolicyConfig>(bad).is_err(), "{bad}");
        }
    }
}
