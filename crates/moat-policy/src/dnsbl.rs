//! DNS block and allow lists, weighted per zone and return code.
//!
//! The model is postscreen's `postscreen_dnsbl_sites`: every configured zone is asked about
//! the client (IPv4 octets or IPv6 nibbles reversed, under the zone), each answer code has
//! a weight, the weights of all zones are added, and a client whose score reaches the
//! threshold is refused. Allow lists (DNSWL) are zones with negative weights.
//!
//! ```toml
//! [policy.dnsbl]
//! threshold = 3
//! action = "connect"          # or "rcpt"
//! reply = "Service unavailable; client [{ip}] blocked using {zones}"
//!
//! [[policy.dnsbl.zones]]
//! zone = "zen.spamhaus.org"
//! weight = 1                  # any 127.x.y.z answer not named below
//! weights = { "127.0.0.2" = 3, "127.0.0.4-127.0.0.7" = 3, "127.0.0.10-127.0.0.11" = 0 }
//!
//! [[policy.dnsbl.zones]]
//! zone = "list.dnswl.org"
//! weight = -5
//! ```
//!
//! Rules of scoring, each chosen so that a broken list cannot block the world:
//! - only A answers inside `127.0.0.0/8` count; anything else (a typo zone whose parent
//!   answers every name with a wildcard) is ignored and counted as `bogus_answer`;
//! - answers in `127.255.255.0/24` are the list operators' error signals (Spamhaus answers
//!   127.255.255.254 to queries through a public resolver): ignored and counted as `error`
//!   unless `weights` names them;
//! - every distinct code of one answer adds its weight (at most
//!   16 codes are read);
//! - NXDOMAIN and empty answers are "not listed"; a timeout, a SERVFAIL or any other failure
//!   is also "not listed" for scoring, and counted with its own result.
//!
//! Limits, checked by [`DnsblConfig::validate`]: at most 32 zones, 64 `weights` entries per
//! zone, weights from -1000 to 1000, a threshold from 1 to 100 000, zone names of at most
//! 189 octets (room for a reversed IPv6 address), a reply template of at most 300 bytes of
//! printable ASCII (the filled-in text is cut at 450). A lookup never takes longer than the
//! resolver may spend on it, and never more than 30 s.
//!
//! All zones are asked in parallel through the node's one [`TokioResolver`], whose cache
//! honours the answers' TTLs: asking again about the same client (at each RCPT, or when it
//! reconnects) costs no query while the answer is fresh.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use moat_core::{Enhanced, Envelope, Reply, SessionInfo, Stage, StageFuture, Verdict};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use serde::Deserialize;

use crate::dns::DnsConfig;
use crate::error::PolicyError;
use crate::iplist::{IpClass, IpListStore, canonical};

/// The most zones one configuration may name.
const MAX_ZONES: usize = 32;
/// The most entries in one zone's `weights` table.
const MAX_WEIGHT_ENTRIES: usize = 64;
/// The largest weight (and, negated, the smallest) a zone or code may have.
const MAX_WEIGHT: i32 = 1_000;
/// The largest threshold.
const MAX_THRESHOLD: i32 = 100_000;
/// The most distinct answer codes read from one zone's answer.
const MAX_CODES_PER_ANSWER: usize = 16;
/// The longest reply template, in bytes.
const MAX_REPLY_TEMPLATE: usize = 300;
/// The longest reply text once `{ip}` and `{zones}` are filled in; longer text is cut.
const MAX_REPLY_TEXT: usize = 450;
/// The longest zone name: a reversed IPv6 address (64 octets with its dot) must still fit
/// the 253 octets of a domain name.
const MAX_ZONE_NAME: usize = 253 - 64;
/// The most time one lookup may take, whatever the resolver settings say.
const MAX_LOOKUP_TIME: Duration = Duration::from_secs(30);

const DEFAULT_REPLY: &str = "Service unavailable; client [{ip}] blocked using {zones}";

/// Where a refusal happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsblAction {
    /// Refuse before the greeting (`554 5.7.1`), as postscreen does.
    #[default]
    Connect,
    /// Let the session go on and refuse each RCPT (`554 5.7.1`), so the client's sender
    /// and recipients are logged. The lookups still start at connect.
    Rcpt,
}

/// `[policy.dnsbl]`: the DNS block and allow lists.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblConfig {
    /// The zones to ask, each with its weights (`[[policy.dnsbl.zones]]`). None: no lookups.
    pub zones: Vec<DnsblZoneConfig>,
    /// The score at which a client is refused (1 to 100 000).
    pub threshold: i32,
    /// Refuse at `connect` or at each `rcpt`.
    pub action: DnsblAction,
    /// The refusal text; `{ip}` is the client's address and `{zones}` the zones that listed
    /// it with a positive weight. Printable ASCII, at most 300 bytes.
    pub reply: String,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            threshold: 1,
            action: DnsblAction::Connect,
            reply: DEFAULT_REPLY.to_owned(),
        }
    }
}

/// `[[policy.dnsbl.zones]]`: one DNS list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblZoneConfig {
    /// The list's zone, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// The weight of any answer code in `127.0.0.0/8` not named in `weights` (except the
    /// error signals in `127.255.255.0/24`). Negative for allow lists. Default 1.
    #[serde(default = "default_weight")]
    pub weight: i32,
    /// Weights per answer code: keys are one address (`"127.0.0.2"`) or an inclusive range
    /// (`"127.0.0.4-127.0.0.7"`), all inside `127.0.0.0/8`, not overlapping. A weight of 0
    /// ignores those codes.
    #[serde(default)]
    pub weights: BTreeMap<String, i32>,
}

fn default_weight() -> i32 {
    1
}

impl DnsblZoneConfig {
    /// A zone with one weight for every answer code.
    pub fn new(zone: impl Into<String>, weight: i32) -> Self {
        Self {
            zone: zone.into(),
            weight,
            weights: BTreeMap::new(),
        }
    }
}

impl DnsblConfig {
    /// Checks every value and reports all problems together, each with its key path.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.compile().map(|_| ())
    }

    /// Validates the configuration and builds the runtime lists over the node's shared
    /// `resolver`. `dns` is the resolver's own configuration: a lookup is cut off once it
    /// has had the time the resolver may spend (per-try timeout × tries × servers, at most
    /// 30 s). Metric handles for each zone are resolved here.
    pub fn build(
        &self,
        resolver: TokioResolver,
        dns: &DnsConfig,
        metrics: DnsblMetrics,
    ) -> Result<Dnsbl, PolicyError> {
        let (zones, template) = self.compile()?;
        let servers = u32::try_from(dns.servers.len().max(1)).unwrap_or(u32::MAX);
        let attempts = u32::try_from(dns.attempts.max(1)).unwrap_or(u32::MAX);
        let deadline = dns
            .timeout()
            .checked_mul(attempts)
            .and_then(|d| d.checked_mul(servers))
            .unwrap_or(MAX_LOOKUP_TIME)
            .min(MAX_LOOKUP_TIME);
        let zones = zones
            .into_iter()
            .map(|z| {
                let handles = metrics.zone(&z.zone);
                Zone {
                    name: z.zone,
                    default_weight: z.weight,
                    codes: z.codes,
                    handles,
                }
            })
            .collect();
        Ok(Dnsbl {
            inner: Arc::new(Inner {
                zones,
                threshold: i64::from(self.threshold),
                template,
                resolver,
                deadline,
                metrics,
            }),
        })
    }

    fn compile(&self) -> Result<(Vec<CompiledZone>, Vec<Piece>), PolicyError> {
        let mut errors = Vec::new();
        if self.zones.len() > MAX_ZONES {
            errors.push(format!(
                "policy.dnsbl.zones: {} zones, at most {MAX_ZONES} are allowed",
                self.zones.len()
            ));
        }
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            errors.push(format!(
                "policy.dnsbl.threshold: {} is out of range (1 to {MAX_THRESHOLD})",
                self.threshold
            ));
        }
        let template = match parse_template(&self.reply) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("policy.dnsbl.reply: {e}"));
                Vec::new()
            }
        };
        let mut seen = HashSet::new();
        let mut zones = Vec::new();
        for (i, z) in self.zones.iter().enumerate() {
            let path = format!("policy.dnsbl.zones[{i}]");
            let name = match zone_name(&z.zone) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(format!("{path}.zone: {e}"));
                    continue;
                }
            };
            if !seen.insert(name.clone()) {
                errors.push(format!(
                    "{path}.zone: `{name}` is listed twice (give one zone several codes in `weights`)"
                ));
            }
            if !(-MAX_WEIGHT..=MAX_WEIGHT).contains(&z.weight) {
                errors.push(format!(
                    "{path}.weight: {} is out of range (-{MAX_WEIGHT} to {MAX_WEIGHT})",
                    z.weight
                ));
            }
            if z.weights.len() > MAX_WEIGHT_ENTRIES {
                errors.push(format!(
                    "{path}.weights: {} entries, at most {MAX_WEIGHT_ENTRIES} are allowed",
                    z.weights.len()
                ));
            }
            let mut codes: Vec<CodeWeight> = Vec::new();
            for (key, &weight) in &z.weights {
                if !(-MAX_WEIGHT..=MAX_WEIGHT).contains(&weight) {
                    errors.push(format!(
                        "{path}.weights.\"{key}\": {weight} is out of range (-{MAX_WEIGHT} to {MAX_WEIGHT})"
                    ));
                }
                match parse_codes(key) {
                    Ok((start, end)) => codes.push(CodeWeight { start, end, weight }),
                    Err(e) => errors.push(format!("{path}.weights.\"{key}\": {e}")),
                }
            }
            codes.sort_unstable_by_key(|c| (c.start, c.end));
            for pair in codes.windows(2) {
                if pair[1].start <= pair[0].end {
                    errors.push(format!(
                        "{path}.weights: {} and {} overlap",
                        code_key(&pair[0]),
                        code_key(&pair[1])
                    ));
                }
            }
            zones.push(CompiledZone {
                zone: name,
                weight: z.weight,
                codes,
            });
        }
        if errors.is_empty() {
            Ok((zones, template))
        } else {
            Err(PolicyError::config(errors.join("; ")))
        }
    }
}

struct CompiledZone {
    zone: String,
    weight: i32,
    codes: Vec<CodeWeight>,
}

/// Weight of an inclusive range of answer codes (IPv4 addresses as integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CodeWeight {
    start: u32,
    end: u32,
    weight: i32,
}

fn code_key(c: &CodeWeight) -> String {
    if c.start == c.end {
        Ipv4Addr::from(c.start).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(c.start), Ipv4Addr::from(c.end))
    }
}

/// `127.0.0.2` or `127.0.0.4-127.0.0.7`, inside 127.0.0.0/8.
fn parse_codes(key: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| -> Result<Ipv4Addr, String> {
        let ip: Ipv4Addr = s
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not an IPv4 address", s.trim()))?;
        if ip.octets()[0] != 127 {
            return Err(format!(
                "{ip} is outside 127.0.0.0/8, where list answers are"
            ));
        }
        Ok(ip)
    };
    let (start, end) = match key.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let ip = parse(key)?;
            (ip, ip)
        }
    };
    let (start, end) = (u32::from(start), u32::from(end));
    if start > end {
        return Err("the range ends before it starts".into());
    }
    Ok((start, end))
}

/// Lower-case, without a trailing dot; letters, digits, `-` and `_` in labels of 1 to 63.
fn zone_name(zone: &str) -> Result<String, String> {
    let name = zone.trim().strip_suffix('.').unwrap_or(zone.trim());
    if name.is_empty() {
        return Err("empty zone name".into());
    }
    if name.len() > MAX_ZONE_NAME {
        return Err(format!(
            "zone name is {} octets long, at most {MAX_ZONE_NAME} leave room for a reversed IPv6 address",
            name.len()
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{zone}` is not a domain name (bad label `{label}`)"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// A piece of the reply template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ip,
    Zones,
}

fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    if template.trim().is_empty() {
        return Err("empty reply text".into());
    }
    if template.len() > MAX_REPLY_TEMPLATE {
        return Err(format!(
            "{} bytes long, at most {MAX_REPLY_TEMPLATE}",
            template.len()
        ));
    }
    if let Some(c) = template.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{c:?} is not allowed: printable ASCII only (one reply line)"
        ));
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("`}` without `{`".into());
        }
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "`{` without `}`".to_string())?;
        pieces.push(match &after[..close] {
            "ip" => Piece::Ip,
            "zones" => Piece::Zones,
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` (use {{ip}} and {{zones}})"
                ));
            }
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// The name to ask about `ip` under `zone` (absolute, with its trailing dot): IPv4 octets
/// reversed, IPv6 nibbles reversed (RFC 5782). IPv4-mapped IPv6 addresses are asked as IPv4.
fn query_name(ip: IpAddr, zone: &str) -> String {
    use std::fmt::Write;
    let mut name = String::with_capacity(72 + zone.len());
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(name, "{}.{}.{}.{}.", o[3], o[2], o[1], o[0]);
        }
        IpAddr::V6(v6) => {
            for b in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", b & 0x0f, b >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

/// The outcome of one lookup, also the closed set of `result` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LookupResult {
    Listed,
    NotListed,
    Timeout,
    Servfail,
    Error,
    BogusAnswer,
}

impl LookupResult {
    const ALL: [LookupResult; 6] = [
        LookupResult::Listed,
        LookupResult::NotListed,
        LookupResult::Timeout,
        LookupResult::Servfail,
        LookupResult::Error,
        LookupResult::BogusAnswer,
    ];

    fn as_str(self) -> &'static str {
        match self {
            LookupResult::Listed => "listed",
            LookupResult::NotListed => "not_listed",
            LookupResult::Timeout => "timeout",
            LookupResult::Servfail => "servfail",
            LookupResult::Error => "error",
            LookupResult::BogusAnswer => "bogus_answer",
        }
    }
}

/// A stage decision, also the closed set of `decision` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Decision {
    RefusedConnect,
    RefusedRcpt,
    Allowlisted,
    Authenticated,
    Passed,
}

impl Decision {
    const ALL: [Decision; 5] = [
        Decision::RefusedConnect,
        Decision::RefusedRcpt,
        Decision::Allowlisted,
        Decision::Authenticated,
        Decision::Passed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Decision::RefusedConnect => "refused_connect",
            Decision::RefusedRcpt => "refused_rcpt",
            Decision::Allowlisted => "allowlisted",
            Decision::Authenticated => "authenticated",
            Decision::Passed => "passed",
        }
    }
}

/// The DNS lists' metrics, on an explicit registry.
///
/// - `moat_policy_dnsbl_lookups_total{zone, result}`: one per zone per check, answers from
///   the resolver's cache included; `result` is `listed`, `not_listed`, `timeout`,
///   `servfail`, `error` or `bogus_answer`.
/// - `moat_policy_dnsbl_lookup_seconds{zone}`: time per lookup (a cached answer is fast).
/// - `moat_policy_dnsbl_decisions_total{decision}`: `refused_connect`, `refused_rcpt`,
///   `allowlisted` (lookups skipped; counted at connect), `authenticated` (an
///   authenticated client at RCPT, not refused), `passed` (counted where the decision is
///   made: at connect, or at each RCPT with `action = "rcpt"`).
///
/// `zone` values come from the configuration only.
#[derive(Debug, Clone)]
pub struct DnsblMetrics {
    lookups: IntCounterVec,
    seconds: HistogramVec,
    decisions: Vec<(Decision, IntCounter)>,
}

impl DnsblMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, PolicyError> {
        Self::build(registry).map_err(PolicyError::metrics)
    }

    /// Handles registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::build(&Registry::new()).unwrap_or_else(|e| unreachable!("fresh registry: {e}"))
    }

    fn build(registry: &Registry) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "moat_policy_dnsbl_lookups_total",
                "DNS list lookups by zone and result (cached answers included).",
            ),
            &["zone", "result"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "moat_policy_dnsbl_lookup_seconds",
                "Time taken by one DNS list lookup, by zone.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["zone"],
        )?;
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "moat_policy_dnsbl_decisions_total",
                "DNS list stage decisions.",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(decisions_vec.clone()))?;
        let decisions = Decision::ALL
            .iter()
            .map(|&d| (d, decisions_vec.with_label_values(&[d.as_str()])))
            .collect();
        Ok(Self {
            lookups,
            seconds,
            decisions,
        })
    }

    fn zone(&self, zone: &str) -> ZoneHandles {
        ZoneHandles {
            results: LookupResult::ALL
                .iter()
                .map(|&r| (r, self.lookups.with_label_values(&[zone, r.as_str()])))
                .collect(),
            seconds: self.seconds.with_label_values(&[zone]),
        }
    }

    fn decision(&self, decision: Decision) {
        if let Some((_, c)) = self.decisions.iter().find(|(d, _)| *d == decision) {
            c.inc();
        }
    }
}

#[derive(Debug)]
struct ZoneHandles {
    results: Vec<(LookupResult, IntCounter)>,
    seconds: Histogram,
}

impl ZoneHandles {
    fn count(&self, result: LookupResult) {
        if let Some((_, c)) = self.results.iter().find(|(r, _)| *r == result) {
            c.inc();
        }
    }
}

#[derive(Debug)]
struct Zone {
    name: String,
    default_weight: i32,
    codes: Vec<CodeWeight>,
    handles: ZoneHandles,
}

impl Zone {
    /// The weight of an answer code: `None` when it is not a listing (outside 127/8, or an
    /// error signal in 127.255.255.0/24 that `weights` does not name).
    fn weight(&self, code: Ipv4Addr) -> Option<i32> {
        let n = u32::from(code);
        if let Some(c) = self.codes.iter().find(|c| c.start <= n && n <= c.end) {
            return Some(c.weight);
        }
        match code.octets() {
            [127, 255, 255, _] => None,
            [127, ..] => Some(self.default_weight),
            _ => None,
        }
    }
}

/// One zone that listed the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblHit {
    /// The zone, as configured (lower case, no trailing dot).
    pub zone: Arc<str>,
    /// The answer code.
    pub code: Ipv4Addr,
    /// The weight this code added to the score (negative for allow lists, 0 if ignored).
    pub weight: i32,
}

/// What the lists say about one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsblOutcome {
    /// The sum of the hits' weights.
    pub score: i64,
    /// Every answer code that counted, in configuration order.
    pub hits: Vec<DnsblHit>,
    /// Whether `score` reached the threshold: the client is refused.
    pub refused: bool,
}

impl DnsblOutcome {
    /// The zones that listed the client with a positive weight, in configuration order.
    pub fn blocking_zones(&self) -> Vec<&str> {
        let mut zones: Vec<&str> = Vec::new();
        for hit in self.hits.iter().filter(|h| h.weight > 0) {
            if zones.last() != Some(&&*hit.zone) {
                zones.push(&hit.zone);
            }
        }
        zones
    }
}

/// The DNS lists at run time: immutable and cheaply cloned. Built by
/// [`DnsblConfig::build`].
#[derive(Debug, Clone)]
pub struct Dnsbl {
    inner: Arc<Inner>,
}

struct Inner {
    zones: Vec<Zone>,
    threshold: i64,
    template: Vec<Piece>,
    resolver: TokioResolver,
    deadline: Duration,
    metrics: DnsblMetrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsbl")
            .field(
                "zones",
                &self.zones.iter().map(|z| &z.name).collect::<Vec<_>>(),
            )
            .field("threshold", &self.threshold)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Dnsbl {
    /// Asks every zone about `ip` in parallel, each lookup bounded by the resolver's time,
    /// and adds up the weights. Failures count as "not listed"; every lookup is counted in
    /// the metrics with its result.
    pub async fn check(&self, ip: IpAddr) -> DnsblOutcome {
        let ip = canonical(ip);
        let lookups = self.inner.zones.iter().map(|zone| self.lookup(zone, ip));
        let answers = futures_util::future::join_all(lookups).await;
        let mut outcome = DnsblOutcome::default();
        for (zone, codes) in self.inner.zones.iter().zip(answers) {
            let zone_name: Arc<str> = Arc::from(zone.name.as_str());
            for (code, weight) in codes {
                outcome.score += i64::from(weight);
                outcome.hits.push(DnsblHit {
                    zone: zone_name.clone(),
                    code,
                    weight,
                });
            }
        }
        outcome.refused = !outcome.hits.is_empty() && outcome.score >= self.inner.threshold;
        outcome
    }

    /// The refusal for `ip` with this outcome: `554 5.7.1` and the configured text.
    pub fn reply(&self, ip: IpAddr, outcome: &DnsblOutcome) -> Reply {
        let mut text = String::new();
        for piece in &self.inner.template {
            match piece {
                Piece::Text(t) => text.push_str(t),
                Piece::Ip => text.push_str(&canonical(ip).to_string()),
                Piece::Zones => text.push_str(&outcome.blocking_zones().join(", ")),
            }
        }
        // Everything in the text is ASCII (validated template, addresses, zone names), so
        // any byte is a character boundary.
        text.truncate(MAX_REPLY_TEXT);
        Reply::new(554, Enhanced::new(5, 7, 1), text)
    }

    /// The configured zone names, in order.
    pub fn zones(&self) -> impl Iterator<Item = &str> {
        self.inner.zones.iter().map(|z| z.name.as_str())
    }

    /// One zone's lookup: the counted codes with their weights.
    async fn lookup(&self, zone: &Zone, ip: IpAddr) -> Vec<(Ipv4Addr, i32)> {
        let name = query_name(ip, &zone.name);
        let start = Instant::now();
        let answer = tokio::time::timeout(
            self.inner.deadline,
            self.inner.resolver.ipv4_lookup(name.as_str()),
        )
        .await;
        zone.handles.seconds.observe(start.elapsed().as_secs_f64());
        let (result, hits) = match answer {
            Err(_elapsed) => (LookupResult::Timeout, Vec::new()),
            Ok(Err(e)) => (classify_error(&e), Vec::new()),
            Ok(Ok(lookup)) => {
                let mut codes: Vec<Ipv4Addr> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                codes.truncate(MAX_CODES_PER_ANSWER);
                let hits: Vec<(Ipv4Addr, i32)> = codes
                    .iter()
                    .filter_map(|&c| zone.weight(c).map(|w| (c, w)))
                    .collect();
                let result = if !hits.is_empty() {
                    LookupResult::Listed
                } else if codes.iter().any(|c| c.octets()[0] != 127) {
                    LookupResult::BogusAnswer
                } else if codes.is_empty() {
                    LookupResult::NotListed
                } else {
                    // Only error signals (127.255.255.x).
                    LookupResult::Error
                };
                (result, hits)
            }
        };
        match result {
            LookupResult::Listed | LookupResult::NotListed => {
                tracing::trace!(zone = %zone.name, query = %name, result = result.as_str(), "dnsbl lookup");
            }
            _ => {
                tracing::debug!(zone = %zone.name, query = %name, result = result.as_str(), "dnsbl lookup failed; counted as not listed");
            }
        }
        zone.handles.count(result);
        hits
    }
}

fn classify_error(e: &NetError) -> LookupResult {
    match e {
        NetError::Timeout => LookupResult::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::ServFail => LookupResult::Servfail,
            _ => LookupResult::NotListed,
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => LookupResult::Servfail,
        _ => LookupResult::Error,
    }
}

/// The DNS lists as a [`Stage`] named `dnsbl`.
///
/// Clients on the IP allow list skip the lookups. With [`DnsblAction::Connect`] the client
/// is refused before the greeting when its score reaches the threshold. With
/// [`DnsblAction::Rcpt`] the lookups start at connect in the background (warming the
/// resolver's cache while the greeting goes out) and each RCPT asks again, answered from
/// the cache, refusing with the same reply; an authenticated session is not refused.
#[derive(Debug, Clone)]
pub struct DnsblStage {
    dnsbl: Dnsbl,
    action: DnsblAction,
    ip_lists: Arc<IpListStore>,
}

impl DnsblStage {
    /// The stage over `dnsbl`, refusing where `action` says; `ip_lists` gives the allow list.
    pub fn new(dnsbl: Dnsbl, action: DnsblAction, ip_lists: Arc<IpListStore>) -> Self {
        Self {
            dnsbl,
            action,
            ip_lists,
        }
    }

    /// The lists this stage asks.
    pub fn dnsbl(&self) -> &Dnsbl {
        &self.dnsbl
    }

    fn allowlisted(&self, ip: IpAddr) -> bool {
        self.ip_lists.snapshot().classify(ip) == IpClass::Allowed
    }

    fn metrics(&self) -> &DnsblMetrics {
        &self.dnsbl.inner.metrics
    }

    async fn decide(&self, ip: IpAddr, refused_as: Decision) -> Verdict {
        let outcome = self.dnsbl.check(ip).await;
        if outcome.refused {
            let reply = self.dnsbl.reply(ip, &outcome);
            tracing::info!(
                client = %ip,
                score = outcome.score,
                zones = %outcome.blocking_zones().join(","),
                decision = refused_as.as_str(),
                "dnsbl refused client"
            );
            self.metrics().decision(refused_as);
            Verdict::Reject(reply)
        } else {
            self.metrics().decision(Decision::Passed);
            Verdict::Continue
        }
    }
}

impl Stage for DnsblStage {
    fn name(&self) -> &'static str {
        "dnsbl"
    }

    fn connect<'a>(&'a self, session: &'a SessionInfo) -> StageFuture<'a> {
        Box::pin(async move {
            let ip = canonical(session.client_ip());
            if self.allowlisted(ip) {
                self.metrics().decision(Decision::Allowlisted);
                return Verdict::Continue;
            }
            match self.action {
                DnsblAction::Connect => self.decide(ip, Decision::RefusedConnect).await,
                DnsblAction::Rcpt => {
                    // Warm the cache without holding up the greeting. The task ends within
                    // the lookup deadline.
                    let dnsbl = self.dnsbl.clone();
                    match tokio::runtime::Handle::try_current() {
                        Ok(handle) => {
                            handle.spawn(async move {
                                dnsbl.check(ip).await;
                            });
                        }
                        Err(_) => {
                            dnsbl.check(ip).await;
                        }
                    }
                    Verdict::Continue
                }
            }
        })
    }

    fn rcpt<'a>(
        &'a self,
        session: &'a SessionInfo,
        _env: &'a Envelope,
        _rcpt: &'a str,
    ) -> StageFuture<'a> {
        Box::pin(async move {
            let ip = canonical(session.client_ip());
            if self.action != DnsblAction::Rcpt || self.allowlisted(ip) {
                return Verdict::Continue;
            }
            if session.auth_user.is_some() {
                self.metrics().decision(Decision::Authenticated);
                return Verdict::Continue;
            }
            self.decide(ip, Decision::RefusedRcpt).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let cases = [
            ("192.0.2.1", "bl.test", "1.2.0.192.bl.test."),
            (
                "127.0.0.2",
                "zen.spamhaus.org",
                "2.0.0.127.zen.spamhaus.org.",
            ),
            ("::ffff:192.0.2.1", "bl.test", "1.2.0.192.bl.test."),
            (
                "2001:db8::1",
                "bl.test",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test.",
            ),
            (
                "2001:db8:1234:5678:9abc:def0:fedc:ba98",
                "x",
                "8.9.a.b.c.d.e.f.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.8.b.d.0.1.0.0.2.x.",
            ),
        ];
        for (ip, zone, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(query_name(ip, zone), want, "{ip}");
        }
        let longest = query_name("::1".parse().unwrap(), &"a".repeat(MAX_ZONE_NAME));
        assert_eq!(longest.trim_end_matches('.').len(), 253);
    }

    #[test]
    fn zone_names() {
        let ok = [
            ("zen.spamhaus.org", "zen.spamhaus.org"),
            ("ZEN.Spamhaus.org.", "zen.spamhaus.org"),
            (" bl_1.test ", "bl_1.test"),
        ];
        for (input, want) in ok {
            assert_eq!(zone_name(input).as_deref(), Ok(want), "{input}");
        }
        let long = format!("{}.test", "a".repeat(MAX_ZONE_NAME));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.test",
            "a-.test",
            "a b.test",
            "bl.test/24",
            &long,
        ] {
            assert!(zone_name(bad).is_err(), "{bad:?}");
        }
        assert!(zone_name(&format!("{}.test", "a".repeat(64))).is_err());
    }

    #[test]
    fn code_keys() {
        let n = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            parse_codes("127.0.0.2"),
            Ok((n("127.0.0.2"), n("127.0.0.2")))
        );
        assert_eq!(
            parse_codes("127.0.0.4 - 127.0.0.7"),
            Ok((n("127.0.0.4"), n("127.0.0.7")))
        );
        for bad in [
            "192.0.2.1",
            "127.0.0.7-127.0.0.4",
            "127.0.0",
            "x",
            "127.0.0.2-10.0.0.1",
        ] {
            assert!(parse_codes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates() {
        assert_eq!(
            parse_template("blocked [{ip}] by {zones}."),
            Ok(vec![
                Piece::Text("blocked [".into()),
                Piece::Ip,
                Piece::Text("] by ".into()),
                Piece::Zones,
                Piece::Text(".".into()),
            ])
        );
        for (bad, says) in [
            ("", "empty"),
            ("{host} listed", "unknown placeholder `{host}`"),
            ("open {ip", "without `}`"),
            ("close ip}", "without `{`"),
            ("two\nlines", "printable ASCII"),
            ("caf\u{e9}", "printable ASCII"),
        ] {
            let err = parse_template(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(parse_template(&"x".repeat(MAX_REPLY_TEMPLATE + 1)).is_err());
    }

    #[test]
    fn the_toml_form_parses() {
        let config: DnsblConfig = toml::from_str(
            r#"
            threshold = 3
            action = "rcpt"
            [[zones]]
            zone = "zen.spamhaus.org"
            weights = { "127.0.0.2" = 3, "127.0.0.4-127.0.0.7" = 2, "127.0.0.10-127.0.0.11" = 0 }
            [[zones]]
            zone = "list.dnswl.org"
            weight = -5
            "#,
        )
        .unwrap();
        assert_eq!(config.action, DnsblAction::Rcpt);
        assert_eq!(config.zones[0].weight, 1, "default weight");
        assert_eq!(config.zones[1].weight, -5);
        assert_eq!(config.reply, DEFAULT_REPLY);
        config.validate().unwrap();

        assert!(toml::from_str::<DnsblConfig>("treshold = 3").is_err());
        assert!(toml::from_str::<DnsblConfig>("action = \"data\"").is_err());
        assert!(toml::from_str::<DnsblConfig>("[[zones]]\nzone = \"a.test\"\nweigth = 2").is_err());
        assert_eq!(
            toml::from_str::<DnsblConfig>("").unwrap(),
            DnsblConfig::default()
        );
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let mut zone = DnsblZoneConfig::new("bl.test", 2_000);
        zone.weights.insert("127.0.0.2-127.0.0.5".into(), 1);
        zone.weights.insert("127.0.0.4".into(), 1);
        zone.weights.insert("192.0.2.1".into(), 1);
        zone.weights.insert("127.0.0.9".into(), -5_000);
        let config = DnsblConfig {
            zones: vec![
                zone,
                DnsblZoneConfig::new("not a zone", 1),
                DnsblZoneConfig::new("BL.test.", 1),
            ],
            threshold: 0,
            reply: "{name}".into(),
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        for want in [
            "policy.dnsbl.threshold: 0 is out of range",
            "policy.dnsbl.reply: unknown placeholder `{name}`",
            "policy.dnsbl.zones[0].weight: 2000 is out of range",
            "policy.dnsbl.zones[0].weights.\"192.0.2.1\": 192.0.2.1 is outside 127.0.0.0/8",
            "policy.dnsbl.zones[0].weights.\"127.0.0.9\": -5000 is out of range",
            "policy.dnsbl.zones[0].weights: 127.0.0.2-127.0.0.5 and 127.0.0.4 overlap",
            "policy.dnsbl.zones[1].zone: `not a zone` is not a domain name",
            "policy.dnsbl.zones[2].zone: `bl.test` is listed twice",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }

        let many = DnsblConfig {
            zones: (0..=MAX_ZONES)
                .map(|i| DnsblZoneConfig::new(format!("z{i}.test"), 1))
                .collect(),
            ..Default::default()
        };
        assert!(
            many.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 32")
        );
        DnsblConfig::default().validate().unwrap();
    }

    fn zone(default_weight: i32, codes: &[(&str, i32)]) -> Zone {
        let metrics = DnsblMetrics::unregistered();
        Zone {
            name: "bl.test".into(),
            default_weight,
            codes: codes
                .iter()
                .map(|&(k, weight)| {
                    let (start, end) = parse_codes(k).unwrap();
                    CodeWeight { start, end, weight }
                })
                .collect(),
            handles: metrics.zone("bl.test"),
        }
    }

    #[test]
    fn weights_per_code() {
        let z = zone(
            1,
            &[
                ("127.0.0.2", 3),
                ("127.0.0.10-127.0.0.11", 0),
                ("127.255.255.254", 7),
            ],
        );
        let cases = [
            ("127.0.0.2", Some(3)),
            ("127.0.0.4", Some(1)),
            ("127.0.0.10", Some(0)),
            ("127.0.0.11", Some(0)),
            ("127.0.0.12", Some(1)),
            ("127.0.15.2", Some(1)),
            ("127.255.255.252", None),
            ("127.255.255.254", Some(7)),
            ("192.0.2.1", None),
            ("0.0.0.0", None),
        ];
        for (code, want) in cases {
            assert_eq!(z.weight(code.parse().unwrap()), want, "{code}");
        }
    }

    #[test]
    fn outcome_names_the_blocking_zones_once() {
        let hit = |zone: &str, weight| DnsblHit {
            zone: Arc::from(zone),
            code: Ipv4Addr::new(127, 0, 0, 2),
            weight,
        };
        let outcome = DnsblOutcome {
            score: 4,
            hits: vec![
                hit("a.test", 2),
                hit("a.test", 3),
                hit("wl.test", -1),
                hit("b.test", 0),
            ],
            refused: true,
        };
        assert_eq!(outcome.blocking_zones(), vec!["a.test"]);
    }
}
