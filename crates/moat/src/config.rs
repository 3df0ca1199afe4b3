//! The configuration file: schema, loading with every error collected, and `build()` into the
//! runtime objects.
//!
//! Loading runs in three passes so that one run reports every problem in a file:
//! 1. TOML syntax (the parser stops at the first syntax error; its line and column are given);
//! 2. shape: unknown keys and values of the wrong type. Each failure is recorded with its key
//!    path, the offending key is removed, and deserialisation runs again, until it succeeds;
//! 3. meaning ([`Config::build`]): address ranges, files, cross-field rules.
//!
//! Every error carries its key path (`connector[1].limits.max_recipients`) and, where the key
//! is in the file, its line. `moat check-config` and start-up run the same code.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use moat_smtp::{Connector, Limits, Role};
use serde::Deserialize;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, `connector[0].listen`; empty for file-level errors.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// A duration written as `30s`, `5m`, `100ms`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// The whole file. Every key is optional; what is left out takes the embedded default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Host name used in the greeting, EHLO and `Received:` headers. Default: the system's.
    pub hostname: Option<String>,
    /// Domains this node accepts mail for; anything else needs a relay permission.
    pub accepted_domains: Vec<String>,
    /// The durable queue accepted messages are written to before the 250 reply.
    pub queue: QueueSection,
    /// Delivery to the hub servers.
    pub relay: RelaySection,
    /// The content filter (rule packs).
    pub filter: FilterSection,
    /// Antivirus engines and what their results do.
    pub antivirus: AntivirusSection,
    /// Attachment rules (names, types, true types, archives).
    pub attachments: AttachmentsSection,
    /// Connection, sender and recipient hygiene (IP and DNS lists, rate limits, SPF, DKIM,
    /// DMARC, the recipient directory).
    pub policy: moat_policy::PolicyConfig,
    /// The admin listener (metrics, health, admin calls).
    pub admin: AdminConfig,
    /// Certificate used by every connector that names none itself.
    pub tls: Option<TlsConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Receive connectors. Default: `mx` on 127.0.0.1:2525 and `submission` on 127.0.0.1:2587.
    pub connector: Vec<ConnectorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hostname: None,
            accepted_domains: vec!["example.test".into()],
            queue: QueueSection::default(),
            relay: RelaySection::default(),
            filter: FilterSection::default(),
            antivirus: AntivirusSection::default(),
            attachments: AttachmentsSection::default(),
            policy: moat_policy::PolicyConfig::default(),
            admin: AdminConfig::default(),
            tls: None,
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            connector: vec![
                ConnectorConfig::new("mx", "127.0.0.1:2525", RoleConfig::Mx),
                ConnectorConfig::new("submission", "127.0.0.1:2587", RoleConfig::Submission),
            ],
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct QueueSection {
    /// Directory of the spool; created if missing. One node per directory (it is locked).
    pub dir: PathBuf,
    /// Delay after the first temporary failure (Postfix `minimal_backoff_time`).
    pub min_backoff: Dur,
    /// Longest delay between attempts (Postfix `maximal_backoff_time`).
    pub max_backoff: Dur,
    /// A message still undelivered after this long is bounced (Postfix
    /// `maximal_queue_lifetime`).
    pub max_lifetime: Dur,
}

impl Default for QueueSection {
    fn default() -> Self {
        let r = moat_queue::RetryPolicy::default();
        Self {
            dir: PathBuf::from("moat-data/queue"),
            min_backoff: Dur(r.min_backoff),
            max_backoff: Dur(r.max_backoff),
            max_lifetime: Dur(r.max_lifetime),
        }
    }
}

/// How next hops share the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// The first available hop takes every message (Exchange's behaviour).
    Failover,
    /// Messages are spread over the healthy hops.
    Balance,
}

/// STARTTLS towards a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopTls {
    /// STARTTLS with a certificate chaining to `ca_file`, or no delivery.
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    /// Never.
    Off,
}

/// `[[relay.hop]]`
#[derive(Debug, Clone, Deserialize)]
pub struct HopSection {
    /// Short name: logs and the `hop` metric label.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Port (default 25).
    #[serde(default = "default_hop_port")]
    pub port: u16,
    /// `required`, `opportunistic` (default) or `off`.
    #[serde(default = "default_hop_tls")]
    pub tls: HopTls,
    /// Connections open to this hop at once (default 20).
    #[serde(default = "default_hop_connections")]
    pub max_connections: usize,
}

fn default_hop_port() -> u16 {
    25
}
fn default_hop_tls() -> HopTls {
    HopTls::Opportunistic
}
fn default_hop_connections() -> usize {
    20
}

/// `[relay]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RelaySection {
    /// `failover` or `balance`.
    pub mode: RelayMode,
    /// Hub servers in order. None: messages go to the local `maildir`.
    pub hop: Vec<HopSection>,
    /// The local Maildir used when no hop is configured.
    pub maildir: PathBuf,
    /// PEM roots for hops with `tls = "required"`.
    pub ca_file: Option<PathBuf>,
    /// Messages delivered at once.
    pub workers: usize,
    /// TCP connect timeout.
    pub connect_timeout: Dur,
    /// Timeout for each command's reply.
    pub command_timeout: Dur,
    /// Timeout for sending the data and reading its reply.
    pub data_timeout: Dur,
    /// Consecutive failures that stop trying a hop for `breaker_open_for`.
    pub breaker_failures: u32,
    /// How long a failed hop is skipped before it is probed again.
    pub breaker_open_for: Dur,
}

impl Default for RelaySection {
    fn default() -> Self {
        let r = moat_relay::RelayConfig::new("localhost");
        Self {
            mode: RelayMode::Failover,
            hop: Vec::new(),
            maildir: PathBuf::from("moat-data/maildir"),
            ca_file: None,
            workers: r.workers,
            connect_timeout: Dur(r.connect_timeout),
            command_timeout: Dur(r.command_timeout),
            data_timeout: Dur(r.data_timeout),
            breaker_failures: r.breaker_failures,
            breaker_open_for: Dur(r.breaker_open_for),
        }
    }
}

/// `[filter]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FilterSection {
    /// `true`: the rules folder must exist. `false`: no content filter. Unset: on when the
    /// folder exists (a warning otherwise).
    pub enabled: Option<bool>,
    /// Folder of rule packs.
    pub rules_dir: PathBuf,
    /// Reload when files in the folder change (debounced).
    pub watch: bool,
    /// Quiet time after the last change before the reload.
    pub debounce: Dur,
    /// Add `X-MS-Exchange-Organization-SCL` (0–9) to tagged messages.
    pub scl_stamp: bool,
    /// Deepest MIME nesting walked.
    pub max_depth: usize,
    /// Most MIME parts walked.
    pub max_parts: usize,
    /// Most decoded bytes over all parts.
    pub max_decoded_bytes: usize,
    /// Most URLs collected per message.
    pub max_urls: usize,
    /// Most bytes of each text part (and rendered HTML part) the rules see; 0: no limit.
    pub max_text_scan_bytes: usize,
    /// Most bytes of each HTML part's markup and of the raw body the rules see; 0: no limit.
    pub max_raw_scan_bytes: usize,
    /// A message over a MIME limit is rejected (552 5.3.4); `false`: accepted untagged.
    pub reject_over_limit: bool,
    /// Thresholds per connector name, replacing the packs' own.
    pub thresholds: std::collections::BTreeMap<String, ThresholdSection>,
}

impl FilterSection {
    /// The MIME walk and scan limits.
    pub fn limits(&self) -> moat_filter::Limits {
        moat_filter::Limits {
            max_depth: self.max_depth,
            max_parts: self.max_parts,
            max_decoded_bytes: self.max_decoded_bytes,
            max_urls: self.max_urls,
            max_text_scan_bytes: self.max_text_scan_bytes,
            max_raw_scan_bytes: self.max_raw_scan_bytes,
        }
    }
}

/// `[filter.thresholds.NAME]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSection {
    /// Score that tags.
    pub tag: Option<f64>,
    /// Score that quarantines.
    pub quarantine: Option<f64>,
    /// Score that rejects.
    pub reject: Option<f64>,
}

impl Default for FilterSection {
    fn default() -> Self {
        let l = moat_filter::Limits::default();
        Self {
            enabled: None,
            rules_dir: PathBuf::from("rules"),
            watch: true,
            debounce: Dur(Duration::from_millis(500)),
            scl_stamp: false,
            max_depth: l.max_depth,
            max_parts: l.max_parts,
            max_decoded_bytes: l.max_decoded_bytes,
            max_urls: l.max_urls,
            max_text_scan_bytes: l.max_text_scan_bytes,
            max_raw_scan_bytes: l.max_raw_scan_bytes,
            reject_over_limit: true,
            thresholds: Default::default(),
        }
    }
}

/// `[antivirus]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AntivirusSection {
    /// Scan every message at the end of DATA.
    pub enabled: bool,
    /// `all`: every engine scans, any detection wins. `failover`: the next engine when one
    /// is down.
    pub mode: AvModeConfig,
    /// `reject` (554 5.7.1 naming the signature), `quarantine`, or `strip` (the infected
    /// parts replaced by a notice).
    pub on_detection: OnDetectionConfig,
    /// `fail-closed` (451 4.7.0: nothing accepted unscanned) or `fail-open` (accepted with
    /// an `X-Moat-Virus-Scan` header, counted).
    pub on_failure: OnFailureConfig,
    /// Content an engine cannot judge (over its size limit): `reject` or `accept`.
    pub on_unscannable: OnUnscannableConfig,
    /// Bound on all scans of one message.
    pub message_timeout: Dur,
    /// Scan each decoded part (these go through the verdict cache).
    pub scan_parts: bool,
    /// Also scan the raw message as received, so the engine's own MIME parser sees what a
    /// mail client would. Never cached: it differs per message.
    pub scan_whole_message: bool,
    /// Verdicts remembered by the hash of the scanned part.
    pub cache_entries: usize,
    /// How long a cached verdict is trusted.
    pub cache_ttl: Dur,
    /// The engines.
    pub engine: Vec<EngineSection>,
    /// Policy per receive connector, replacing the defaults above for that connector.
    pub connector: std::collections::BTreeMap<String, AvConnectorSection>,
}

/// `[antivirus.connector.NAME]`: the antivirus policy of one receive connector. Keys left
/// out keep the `[antivirus]` value.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvConnectorSection {
    /// `false`: messages on this connector are not scanned.
    pub enabled: Option<bool>,
    /// `reject`, `quarantine` or `strip`.
    pub on_detection: Option<OnDetectionConfig>,
    /// `fail-closed` or `fail-open`.
    pub on_failure: Option<OnFailureConfig>,
    /// `reject` or `accept`.
    pub on_unscannable: Option<OnUnscannableConfig>,
}

impl Default for AntivirusSection {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: AvModeConfig::Failover,
            on_detection: OnDetectionConfig::Reject,
            on_failure: OnFailureConfig::FailClosed,
            on_unscannable: OnUnscannableConfig::Reject,
            message_timeout: Dur(Duration::from_secs(120)),
            scan_parts: true,
            scan_whole_message: true,
            cache_entries: 10_000,
            cache_ttl: Dur(Duration::from_secs(3600)),
            engine: Vec::new(),
            connector: Default::default(),
        }
    }
}

/// Engine set mode.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AvModeConfig {
    /// Every engine scans.
    All,
    /// The next engine when one is down.
    Failover,
}

/// What a detection does.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDetectionConfig {
    /// 554 5.7.1.
    Reject,
    /// Held for an operator.
    Quarantine,
    /// Infected parts replaced by a notice.
    Strip,
}

/// What an engine failure does.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailureConfig {
    /// 451 4.7.0.
    FailClosed,
    /// Accept, tagged.
    FailOpen,
}

/// What unscannable content does.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnscannableConfig {
    /// 554 5.7.1.
    Reject,
    /// Accept, tagged.
    Accept,
}

/// Engine protocol.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// clamd INSTREAM.
    Clamd,
    /// ICAP RESPMOD (RFC 3507).
    Icap,
}

/// `[[antivirus.engine]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Name (logs, metrics).
    pub name: String,
    /// `clamd` or `icap`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// `host:port`, or for clamd a unix socket path.
    pub address: String,
    /// ICAP service name (default `avscan`).
    #[serde(default)]
    pub service: Option<String>,
    /// Timeout of one scan.
    #[serde(default)]
    pub scan_timeout: Option<Dur>,
    /// Scans at once on this engine.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// `[attachments]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AttachmentsSection {
    /// Apply the attachment rules (blocked extensions and double extensions, deceptive
    /// names, executables by true type, zip contents) at the end of DATA.
    pub enabled: bool,
    /// `reject`, `strip` or `silent-delete` for every rule that matches.
    pub action: AttachmentActionConfig,
}

impl Default for AttachmentsSection {
    fn default() -> Self {
        Self {
            enabled: false,
            action: AttachmentActionConfig::Reject,
        }
    }
}

/// An attachment action.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachmentActionConfig {
    /// 554 5.7.1.
    Reject,
    /// Remove the part, insert a notice.
    Strip,
    /// Accept and drop the message.
    SilentDelete,
}

/// The content filter, checked.
pub struct FilterRuntime {
    /// Folder of rule packs.
    pub rules_dir: PathBuf,
    /// Watch the folder.
    pub watch: bool,
    /// Debounce of the watcher.
    pub debounce: Duration,
    /// Stage configuration.
    pub config: moat_filter::FilterConfig,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Address of the admin listener. Keep it on loopback or a management network.
    pub listen: SocketAddr,
    /// File holding the bearer token for the admin calls (`/admin/...`); made with a random
    /// token (mode 0600) when missing. `/metrics`, `/healthz` and `/readyz` need no token.
    pub token_file: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9025)),
            token_file: PathBuf::from("moat-data/admin.token"),
        }
    }
}

/// `[tls]` or a connector's `tls`.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full filter such as
    /// `info,moat_smtp=debug`. The `MOAT_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long open transactions may take to finish before the remaining
    /// sessions get 421.
    pub grace: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Dur(Duration::from_secs(30)),
        }
    }
}

/// A connector's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleConfig {
    /// Internet-facing MX.
    Mx,
    /// Client submission.
    Submission,
}

/// `[[connector]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConnectorConfig {
    /// Unique name (logs, metrics, `Received:`).
    pub name: String,
    /// Address and port to listen on.
    pub listen: String,
    /// `mx` or `submission`.
    pub role: RoleConfig,
    /// Client ranges allowed to connect. Default: everyone.
    pub remote_ranges: Vec<String>,
    /// Client ranges allowed to relay to any domain without AUTH. Default: none.
    pub relay_ranges: Vec<String>,
    /// Load balancers that send a PROXY header (v1 or v2). Default: none.
    pub proxy_from: Vec<String>,
    /// Refuse MAIL before STARTTLS. Default: true for submission.
    pub require_tls: Option<bool>,
    /// Offer AUTH (after STARTTLS). Default: true for submission.
    pub auth: Option<bool>,
    /// Refuse MAIL before AUTH. Default: true for submission.
    pub require_auth: Option<bool>,
    /// Users file (`name:argon2-hash` per line) for AUTH.
    pub users_file: Option<PathBuf>,
    /// Certificate for this connector (else `[tls]`, else a self-signed one).
    pub tls: Option<TlsConfig>,
    /// Simultaneous connections on this connector.
    pub max_connections: usize,
    /// Simultaneous connections per client address.
    pub max_connections_per_ip: usize,
    /// Simultaneous connections per client network (/24 for IPv4, /64 for IPv6).
    pub max_connections_per_net: usize,
    /// Session limits.
    pub limits: LimitsConfig,
}

impl ConnectorConfig {
    fn new(name: &str, listen: &str, role: RoleConfig) -> Self {
        Self {
            name: name.into(),
            listen: listen.into(),
            role,
            ..Self::default()
        }
    }
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            listen: String::new(),
            role: RoleConfig::Mx,
            remote_ranges: vec!["0.0.0.0/0".into(), "::/0".into()],
            relay_ranges: Vec::new(),
            proxy_from: Vec::new(),
            require_tls: None,
            auth: None,
            require_auth: None,
            users_file: None,
            tls: None,
            max_connections: 2048,
            max_connections_per_ip: 50,
            max_connections_per_net: 200,
            limits: LimitsConfig::default(),
        }
    }
}

/// `[connector.limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Longest command or text line in octets, CRLF included.
    pub max_line_length: usize,
    /// Largest message in octets.
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Messages per session (0: unlimited).
    pub max_messages_per_session: usize,
    /// Waiting for a command.
    pub command_timeout: Dur,
    /// Waiting for each block of message data.
    pub data_block_timeout: Dur,
    /// The whole DATA phase.
    pub data_total_timeout: Dur,
    /// Waiting for a PROXY header.
    pub proxy_timeout: Dur,
    /// TLS handshake.
    pub tls_handshake_timeout: Dur,
    /// Pregreet test: silence kept before the greeting; a client that talks in it gets 554
    /// 5.5.1. `"0s"`: off.
    pub pregreet_wait: Dur,
    /// Tarpit: from this many error replies on, every reply waits `tarpit_delay` (0: off).
    pub tarpit_after_errors: u32,
    /// Delay of a tarpitted reply.
    pub tarpit_delay: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_line_length: l.max_line_length,
            max_message_size: l.max_message_size,
            max_recipients: l.max_recipients,
            max_errors: l.max_errors,
            max_messages_per_session: l.max_messages_per_session,
            command_timeout: Dur(l.command_timeout),
            data_block_timeout: Dur(l.data_block_timeout),
            data_total_timeout: Dur(l.data_total_timeout),
            proxy_timeout: Dur(l.proxy_timeout),
            tls_handshake_timeout: Dur(l.tls_handshake_timeout),
            pregreet_wait: Dur(l.pregreet_wait),
            tarpit_after_errors: l.tarpit_after_errors,
            tarpit_delay: Dur(l.tarpit_delay),
        }
    }
}

/// Where a configuration came from, for error lines.
pub struct Source {
    text: String,
    doc: Option<toml_edit::Document<String>>,
}

impl Source {
    /// Finds the line of a dotted key path in the file (the deepest part of the path that
    /// exists there).
    fn line_of(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut span = None;
        for seg in split_path(path) {
            let Some((next, s)) = node.child(&seg) else {
                break;
            };
            span = s.or(span);
            node = next;
        }
        line_at(&self.text, span)
    }
}

/// A position in a parsed document: items, tables inside arrays of tables, and values.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

type Span = Option<std::ops::Range<usize>>;

impl<'a> Node<'a> {
    fn child(self, seg: &Seg<'_>) -> Option<(Node<'a>, Span)> {
        match (self, seg) {
            (Node::Item(item), Seg::Key(k)) => {
                let (key, value) = item.as_table_like()?.get_key_value(k)?;
                Some((Node::Item(value), key.span().or(value.span())))
            }
            (Node::Table(t), Seg::Key(k)) => {
                let (key, value) = t.get_key_value(k)?;
                Some((Node::Item(value), key.span().or(value.span())))
            }
            (Node::Value(toml_edit::Value::InlineTable(t)), Seg::Key(k)) => {
                let (key, value) = t.get_key_value(k)?;
                Some((Node::Item(value), key.span().or(value.span())))
            }
            (Node::Item(toml_edit::Item::ArrayOfTables(a)), Seg::Index(i)) => {
                let t = a.get(*i)?;
                Some((Node::Table(t), t.span()))
            }
            (Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(a))), Seg::Index(i))
            | (Node::Value(toml_edit::Value::Array(a)), Seg::Index(i)) => {
                let v = a.get(*i)?;
                Some((Node::Value(v), v.span()))
            }
            _ => None,
        }
    }
}

fn line_at(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

#[derive(Debug, Clone, PartialEq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

/// Formats a serde_path_to_error path as `a.b[1].c`.
fn format_path(path: &serde_path_to_error::Path) -> String {
    let mut s = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => s.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => s.push_str(".?"),
        }
    }
    s
}

/// serde_ignored writes `connector.0.name`; the rest of Moat writes `connector[0].name`.
fn bracket_indices(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Removes the value at `path` from `root`; false when there is nothing to remove.
fn remove_path(root: &mut toml::Value, path: &str) -> bool {
    let segs = split_path(path);
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut v = root;
    for seg in parents {
        v = match (seg, v) {
            (Seg::Key(k), toml::Value::Table(t)) => match t.get_mut(*k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, v) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(*k).is_some(),
        (Seg::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

impl Config {
    /// Parses configuration text, collecting every syntax and shape error. With shape errors,
    /// the configuration without the offending keys is returned beside them, so that
    /// [`Config::check`] can report meaning errors in the same run.
    fn parse_lenient(text: &str) -> (Option<Config>, Source, Vec<ConfigError>) {
        let doc = toml_edit::Document::parse(text.to_string()).ok();
        let source = Source {
            text: text.to_string(),
            doc,
        };
        let mut value: toml::Value = match toml::from_str::<toml::Table>(text) {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                let line = line_at(text, e.span());
                let error = ConfigError {
                    path: String::new(),
                    line,
                    message: format!("TOML syntax: {}", e.message()),
                };
                return (None, source, vec![error]);
            }
        };
        let mut errors: Vec<ConfigError> = Vec::new();
        // Each round removes at least one offending key, so this ends.
        for _ in 0..1000 {
            let mut unknown = Vec::new();
            let mut track = serde_path_to_error::Track::new();
            let result = {
                let de = serde_path_to_error::Deserializer::new(value.clone(), &mut track);
                serde_ignored::deserialize(de, |p| unknown.push(bracket_indices(&p.to_string())))
            };
            for path in unknown {
                if errors.iter().any(|e| e.path == path) {
                    continue;
                }
                errors.push(ConfigError {
                    line: source.line_of(&path),
                    message: "unknown key".into(),
                    path,
                });
            }
            match result {
                Ok(config) => return (Some(config), source, errors),
                Err(e) => {
                    let path = format_path(&track.path());
                    let message = e.message().to_string();
                    let removed = remove_path(&mut value, &path);
                    errors.push(ConfigError {
                        line: source.line_of(&path),
                        message,
                        path,
                    });
                    if !removed {
                        return (None, source, errors);
                    }
                }
            }
        }
        (None, source, errors)
    }

    /// Parses configuration text; any syntax or shape error is an error.
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<(Config, Source), Vec<ConfigError>> {
        match Self::parse_lenient(text) {
            (Some(c), s, e) if e.is_empty() => Ok((c, s)),
            (_, _, e) => Err(e),
        }
    }

    /// Parses and builds in one go, reporting shape and meaning errors together (meaning
    /// errors under a key that already has a shape error are left out).
    pub fn check(text: &str) -> Result<Runtime, Vec<ConfigError>> {
        let (config, source, mut errors) = Self::parse_lenient(text);
        let Some(config) = config else {
            return Err(errors);
        };
        match config.build(&source) {
            Ok(rt) if errors.is_empty() => Ok(rt),
            Ok(_) => Err(errors),
            Err(more) => {
                let shaped: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
                errors.extend(
                    more.into_iter()
                        .filter(|m| !shaped.iter().any(|p| m.path.starts_with(p.as_str()))),
                );
                errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
                Err(errors)
            }
        }
    }

    /// Reads, parses and builds a file, reporting every error.
    pub fn load(path: &Path) -> Result<Runtime, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }]
        })?;
        Self::check(&text)
    }

    /// The embedded defaults (what `moat run` uses without `--config`).
    pub fn embedded() -> (Config, Source) {
        (
            Config::default(),
            Source {
                text: String::new(),
                doc: None,
            },
        )
    }

    /// `name`, given at `path`, must be one of the `[[connector]]` names.
    fn known_connector(
        &self,
        source: &Source,
        path: &str,
        name: &str,
    ) -> Result<(), Vec<ConfigError>> {
        if self.connector.iter().any(|c| c.name == name) {
            return Ok(());
        }
        Err(vec![ConfigError {
            line: source.line_of(path),
            path: path.into(),
            message: format!("no connector is named {name:?}"),
        }])
    }

    /// Checks meaning and builds the runtime objects (loads certificates and users files;
    /// binds nothing). Collects every error.
    pub fn build(&self, source: &Source) -> Result<Runtime, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| {
            errors.push(ConfigError {
                line: source.line_of(&path),
                path,
                message,
            });
        };

        let hostname = match &self.hostname {
            Some(h) if is_hostname(h) => h.to_ascii_lowercase(),
            Some(h) => {
                err("hostname".into(), format!("{h:?} is not a valid host name"));
                String::new()
            }
            None => system_hostname(),
        };

        let mut accepted = Vec::new();
        for (i, d) in self.accepted_domains.iter().enumerate() {
            if is_hostname(d) {
                accepted.push(d.to_ascii_lowercase());
            } else {
                err(
                    format!("accepted_domains[{i}]"),
                    format!("{d:?} is not a valid domain"),
                );
            }
        }

        let default_tls = match &self.tls {
            Some(t) => match moat_smtp::tls::load(&t.cert, &t.key) {
                Ok(c) => Some(c),
                Err(e) => {
                    err("tls".into(), e.to_string());
                    None
                }
            },
            None => None,
        };
        // Made once, shared by every connector without a certificate of its own.
        let mut self_signed: Option<Arc<rustls::ServerConfig>> = None;

        let mut connectors = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        if self.connector.is_empty() {
            err(
                "connector".into(),
                "at least one connector is needed".into(),
            );
        }
        for (i, c) in self.connector.iter().enumerate() {
            let p = |k: &str| format!("connector[{i}].{k}");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                err(
                    p("name"),
                    "must be non-empty: letters, digits, '-' and '_'".into(),
                );
            } else if !names.insert(c.name.clone()) {
                err(p("name"), format!("connector name {:?} used twice", c.name));
            }
            let bind: Option<SocketAddr> = match c.listen.parse() {
                Ok(a) => {
                    if !binds.insert(a) {
                        err(p("listen"), format!("{a} is used by another connector"));
                    }
                    Some(a)
                }
                Err(_) => {
                    err(
                        p("listen"),
                        format!("{:?} is not an address:port", c.listen),
                    );
                    None
                }
            };
            let mut ranges = |key: &str, list: &[String]| -> Vec<IpNet> {
                let mut out = Vec::new();
                for (j, r) in list.iter().enumerate() {
                    match parse_range(r) {
                        Some(n) => out.push(n),
                        None => err(
                            format!("connector[{i}].{key}[{j}]"),
                            format!("{r:?} is not an IP address or CIDR range"),
                        ),
                    }
                }
                out
            };
            let remote = ranges("remote_ranges", &c.remote_ranges);
            let relay = ranges("relay_ranges", &c.relay_ranges);
            let proxy = ranges("proxy_from", &c.proxy_from);

            let role = match c.role {
                RoleConfig::Mx => Role::Mx,
                RoleConfig::Submission => Role::Submission,
            };
            let submission = role == Role::Submission;
            let offer_auth = c.auth.unwrap_or(submission);
            let require_auth = c.require_auth.unwrap_or(submission);
            let require_tls = c.require_tls.unwrap_or(submission);
            if require_auth && !offer_auth {
                err(
                    p("require_auth"),
                    "AUTH is required but not offered (auth = false)".into(),
                );
            }
            let users = match &c.users_file {
                Some(f) => match moat_smtp::auth::Users::load(f) {
                    Ok(u) => u,
                    Err(e) => {
                        err(p("users_file"), e.to_string());
                        Default::default()
                    }
                },
                None => Default::default(),
            };
            if c.users_file.is_some() && !offer_auth {
                err(
                    p("users_file"),
                    "a users file is set but AUTH is not offered (auth = false)".into(),
                );
            }
            let tls = match &c.tls {
                Some(t) => match moat_smtp::tls::load(&t.cert, &t.key) {
                    Ok(cfg) => Some(cfg),
                    Err(e) => {
                        err(p("tls"), e.to_string());
                        None
                    }
                },
                None => default_tls.clone(),
            };
            let limits = &c.limits;
            let lp = |k: &str| format!("connector[{i}].limits.{k}");
            if limits.max_line_length < 512 {
                err(
                    lp("max_line_length"),
                    "must be at least 512 (RFC 5321 §4.5.3.1)".into(),
                );
            }
            if limits.max_message_size < 1024 {
                err(
                    lp("max_message_size"),
                    "must be at least 1024 octets".into(),
                );
            }
            if limits.max_recipients == 0 {
                err(
                    lp("max_recipients"),
                    "must be at least 1 (RFC 5321 asks for 100)".into(),
                );
            }
            if limits.max_errors == 0 {
                err(lp("max_errors"), "must be at least 1".into());
            }
            for (k, d) in [
                ("command_timeout", limits.command_timeout),
                ("data_block_timeout", limits.data_block_timeout),
                ("data_total_timeout", limits.data_total_timeout),
                ("proxy_timeout", limits.proxy_timeout),
                ("tls_handshake_timeout", limits.tls_handshake_timeout),
            ] {
                if d.0.is_zero() {
                    err(lp(k), "must be longer than zero".into());
                }
            }
            if limits.pregreet_wait.0 > Duration::from_secs(30) {
                err(
                    lp("pregreet_wait"),
                    "at most 30s: clients give up on a silent server".into(),
                );
            }
            if c.max_connections == 0
                || c.max_connections_per_ip == 0
                || c.max_connections_per_net == 0
            {
                err(
                    p("max_connections"),
                    "connection limits must be at least 1".into(),
                );
            }
            let Some(bind) = bind else { continue };
            let mut conn = Connector::new(c.name.clone(), bind, role);
            conn.remote_ranges = remote;
            conn.relay_ranges = relay;
            conn.proxy_from = proxy;
            conn.require_tls = require_tls;
            conn.offer_auth = offer_auth;
            conn.require_auth = require_auth;
            conn.users = users;
            conn.tls = tls;
            conn.max_connections = c.max_connections;
            conn.max_connections_per_ip = c.max_connections_per_ip;
            conn.max_connections_per_net = c.max_connections_per_net;
            conn.limits = Limits {
                max_line_length: limits.max_line_length,
                max_message_size: limits.max_message_size,
                max_recipients: limits.max_recipients,
                max_errors: limits.max_errors,
                max_messages_per_session: limits.max_messages_per_session,
                command_timeout: limits.command_timeout.0,
                data_block_timeout: limits.data_block_timeout.0,
                data_total_timeout: limits.data_total_timeout.0,
                proxy_timeout: limits.proxy_timeout.0,
                tls_handshake_timeout: limits.tls_handshake_timeout.0,
                pregreet_wait: limits.pregreet_wait.0,
                tarpit_after_errors: limits.tarpit_after_errors,
                tarpit_delay: limits.tarpit_delay.0,
            };
            connectors.push(conn);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Connectors without a certificate get one self-signed certificate for the node, so
        // STARTTLS works out of the box. Built last: only when everything else is valid.
        for conn in &mut connectors {
            if conn.tls.is_none() {
                if self_signed.is_none() {
                    match moat_smtp::tls::self_signed(&hostname) {
                        Ok(c) => self_signed = Some(c),
                        Err(e) => {
                            return Err(vec![ConfigError {
                                path: "tls".into(),
                                line: None,
                                message: format!("cannot make a self-signed certificate: {e}"),
                            }]);
                        }
                    }
                }
                conn.tls = self_signed.clone();
            }
        }
        let mut queue = moat_queue::QueueConfig::new(self.queue.dir.clone());
        queue.retry = moat_queue::RetryPolicy {
            min_backoff: self.queue.min_backoff.0,
            max_backoff: self.queue.max_backoff.0,
            max_lifetime: self.queue.max_lifetime.0,
        };
        let r = &self.relay;
        let mut relay = moat_relay::RelayConfig::new(hostname.clone());
        relay.mode = match r.mode {
            RelayMode::Failover => moat_relay::Mode::Failover,
            RelayMode::Balance => moat_relay::Mode::Balance,
        };
        relay.hops = r
            .hop
            .iter()
            .map(|h| moat_relay::NextHop {
                name: h.name.clone(),
                host: h.host.clone(),
                port: h.port,
                tls: match h.tls {
                    HopTls::Required => moat_relay::TlsMode::Required,
                    HopTls::Opportunistic => moat_relay::TlsMode::Opportunistic,
                    HopTls::Off => moat_relay::TlsMode::Off,
                },
                max_connections: h.max_connections,
            })
            .collect();
        relay.maildir = r.maildir.clone();
        relay.ca_file = r.ca_file.clone();
        relay.workers = r.workers;
        relay.connect_timeout = r.connect_timeout.0;
        relay.command_timeout = r.command_timeout.0;
        relay.data_timeout = r.data_timeout.0;
        relay.breaker_failures = r.breaker_failures;
        relay.breaker_open_for = r.breaker_open_for.0;
        if let Err(e) = relay.validate() {
            return Err(vec![ConfigError {
                line: source.line_of("relay"),
                path: "relay".into(),
                message: e.to_string(),
            }]);
        }
        let f = &self.filter;
        let filter = match (f.enabled, f.rules_dir.is_dir()) {
            (Some(false), _) => None,
            (Some(true), false) => {
                return Err(vec![ConfigError {
                    line: source.line_of("filter.rules_dir"),
                    path: "filter.rules_dir".into(),
                    message: format!("{} is not a folder", f.rules_dir.display()),
                }]);
            }
            (None, false) => {
                tracing::warn!(dir = %f.rules_dir.display(), "no rules folder: content filter off");
                None
            }
            (_, true) => {
                let mut config = moat_filter::FilterConfig {
                    limits: f.limits(),
                    scl_stamp: f.scl_stamp,
                    ..Default::default()
                };
                if !f.reject_over_limit {
                    config.over_limit = moat_rules::Action::Continue;
                }
                for (name, t) in &f.thresholds {
                    self.known_connector(source, &format!("filter.thresholds.{name}"), name)?;
                    config.connector_thresholds.insert(
                        name.clone(),
                        moat_rules::Thresholds {
                            tag: t.tag,
                            quarantine: t.quarantine,
                            reject: t.reject,
                        },
                    );
                }
                Some(FilterRuntime {
                    rules_dir: f.rules_dir.clone(),
                    watch: f.watch,
                    debounce: f.debounce.0,
                    config,
                })
            }
        };
        let av = &self.antivirus;
        if av.enabled && !av.scan_parts && !av.scan_whole_message {
            return Err(vec![ConfigError {
                line: source.line_of("antivirus.scan_parts"),
                path: "antivirus.scan_parts".into(),
                message: "scan_parts and scan_whole_message are both off: nothing would be scanned"
                    .into(),
            }]);
        }
        if av.enabled && av.engine.is_empty() {
            return Err(vec![ConfigError {
                line: source.line_of("antivirus.enabled"),
                path: "antivirus.engine".into(),
                message: "antivirus is enabled but no [[antivirus.engine]] is configured".into(),
            }]);
        }
        for name in av.connector.keys() {
            self.known_connector(source, &format!("antivirus.connector.{name}"), name)?;
        }
        for (i, e) in av.engine.iter().enumerate() {
            let unix = matches!(e.kind, EngineKind::Clamd) && e.address.starts_with('/');
            if !unix && e.address.parse::<SocketAddr>().is_err() {
                let path = format!("antivirus.engine[{i}].address");
                return Err(vec![ConfigError {
                    line: source.line_of(&path),
                    message: format!(
                        "{:?} is not an address:port (or, for clamd, a socket path)",
                        e.address
                    ),
                    path,
                }]);
            }
        }
        let mut policy = self.policy.clone();
        for name in &policy.connectors {
            self.known_connector(source, "policy.connectors", name)?;
        }
        if policy.connectors.is_empty() {
            policy.connectors = self
                .connector
                .iter()
                .filter(|c| matches!(c.role, RoleConfig::Mx))
                .map(|c| c.name.clone())
                .collect();
        }
        if policy.recipients.accepted_domains.is_empty() {
            policy.recipients.accepted_domains = accepted.clone();
        }
        // Reads the list files: a broken entry is reported with its file and line now.
        if let Err(e) = policy.build(
            std::sync::Arc::new(moat_policy::MemoryRateStore::new(1)),
            moat_policy::PolicyMetrics::unregistered(),
        ) {
            return Err(vec![ConfigError {
                line: source.line_of("policy"),
                path: "policy".into(),
                message: e.to_string(),
            }]);
        }
        Ok(Runtime {
            policy,
            antivirus: av.enabled.then(|| av.clone()),
            attachments: self.attachments.enabled.then(|| self.attachments.clone()),
            filter,
            hostname,
            accepted_domains: accepted,
            connectors,
            queue,
            relay,
            admin_listen: self.admin.listen,
            admin_token_file: self.admin.token_file.clone(),
            grace: self.shutdown.grace.0,
            log_level: self.log.level.clone(),
            self_signed: self_signed.is_some(),
        })
    }
}

/// The checked configuration, ready to run.
pub struct Runtime {
    /// Host name.
    pub hostname: String,
    /// Accepted domains, lower-case.
    pub accepted_domains: Vec<String>,
    /// Receive connectors.
    pub connectors: Vec<Connector>,
    /// The content filter, when on.
    pub filter: Option<FilterRuntime>,
    /// Antivirus, when on.
    pub antivirus: Option<AntivirusSection>,
    /// Attachment rules, when on.
    pub attachments: Option<AttachmentsSection>,
    /// The durable queue.
    pub queue: moat_queue::QueueConfig,
    /// Delivery to next hops.
    pub relay: moat_relay::RelayConfig,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Bearer token file for admin calls.
    pub admin_token_file: PathBuf,
    /// Shutdown grace period.
    pub grace: Duration,
    /// Log filter.
    pub log_level: String,
    /// Some connector uses the generated self-signed certificate.
    pub self_signed: bool,
    /// Connection, sender and recipient hygiene; `connectors` and the accepted domains
    /// resolved.
    pub policy: moat_policy::PolicyConfig,
}

fn parse_range(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| is_hostname(s))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_build() {
        let (c, s) = Config::embedded();
        let rt = c.build(&s).unwrap();
        assert_eq!(rt.connectors.len(), 2);
        let mx = &rt.connectors[0];
        assert_eq!(mx.bind, "127.0.0.1:2525".parse().unwrap());
        assert!(mx.relay_ranges.is_empty(), "nobody may relay by default");
        let sub = &rt.connectors[1];
        assert_eq!(sub.bind, "127.0.0.1:2587".parse().unwrap());
        assert!(sub.require_tls && sub.require_auth && sub.offer_auth);
        assert_eq!(rt.accepted_domains, vec!["example.test"]);
        assert_eq!(rt.admin_listen, "127.0.0.1:9025".parse().unwrap());
        assert!(rt.connectors.iter().all(|c| c.tls.is_some()));
    }

    #[test]
    fn every_error_is_reported_with_path_and_line() {
        let text = r#"
hostname = "mx.example.test"
bogus = 1
accepted_domains = ["example.test", "bad domain"]

[admin]
listen = "not an address"

[[connector]]
name = "mx"
listen = "127.0.0.1:2525"
role = "relay"
relay_ranges = ["10.0.0.0/8", "10.0.0.0/33"]

[connector.limits]
max_recipients = "many"
command_timeout = "5 parsecs"
colour = "blue"

[[connector]]
name = "mx"
listen = "127.0.0.1:2525"
"#;
        let errors = Config::parse(text).err().unwrap();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let has = |path: &str, line: usize| {
            errors
                .iter()
                .any(|e| e.path == path && e.line == Some(line))
        };
        // Shape errors are all found in one run.
        assert!(has("bogus", 3), "{shown:#?}");
        assert!(has("admin.listen", 7), "{shown:#?}");
        assert!(has("connector[0].role", 12), "{shown:#?}");
        assert!(has("connector[0].limits.max_recipients", 16), "{shown:#?}");
        assert!(has("connector[0].limits.command_timeout", 17), "{shown:#?}");
        assert!(has("connector[0].limits.colour", 18), "{shown:#?}");
        assert_eq!(errors.len(), 6, "{shown:#?}");

        // Once the shape is right, meaning errors are all reported too.
        let fixed = text
            .replace("bogus = 1\n", "")
            .replace("\"not an address\"", "\"127.0.0.1:9025\"")
            .replace("\"relay\"", "\"mx\"")
            .replace("\"many\"", "100")
            .replace("\"5 parsecs\"", "\"5m\"")
            .replace("colour = \"blue\"\n", "");
        let (c, s) = Config::parse(&fixed).unwrap();
        let errors = c.build(&s).err().unwrap();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"accepted_domains[1]"), "{shown:#?}");
        assert!(
            paths.contains(&"connector[0].relay_ranges[1]"),
            "{shown:#?}"
        );
        assert!(paths.contains(&"connector[1].name"), "{shown:#?}");
        assert!(paths.contains(&"connector[1].listen"), "{shown:#?}");
        assert!(errors.iter().all(|e| e.line.is_some()), "{shown:#?}");

        // `check` reports both kinds in one run.
        let all = Config::check(text).err().unwrap();
        let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "bogus",
            "admin.listen",
            "connector[0].role",
            "accepted_domains[1]",
            "connector[0].relay_ranges[1]",
            "connector[1].listen",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errors = Config::parse("hostname = \"x\"\n[admin\n").err().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(2), "{:?}", errors);
    }

    #[test]
    fn durations_and_ranges() {
        let (c, s) = Config::parse(
            r#"
[[connector]]
name = "edge"
listen = "127.0.0.1:0"
relay_ranges = ["192.0.2.1", "2001:db8::/32"]
limits = { command_timeout = "90s", data_total_timeout = "1h" }
"#,
        )
        .unwrap();
        let rt = c.build(&s).unwrap();
        let conn = &rt.connectors[0];
        assert_eq!(conn.limits.command_timeout, Duration::from_secs(90));
        assert_eq!(conn.limits.data_total_timeout, Duration::from_secs(3600));
        assert!(conn.allows_relay("192.0.2.1".parse().unwrap()));
        assert!(!conn.allows_relay("192.0.2.2".parse().unwrap()));
        assert!(conn.allows_relay("2001:db8::5".parse().unwrap()));
    }
}
