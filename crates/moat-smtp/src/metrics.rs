//! Prometheus handles for the SMTP front end, registered on an explicit registry and
//! resolved per connector once, so the session's hot path never looks up labels.
//! Label values come from closed sets (connector names come from the configuration).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Outcome of an accepted TCP connection, the `result` label of `moat_smtp_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnResult {
    /// Served.
    Accepted,
    /// Refused by the connection limits (421 4.7.0).
    Limit,
    /// Client address outside the connector's remote ranges (554 5.7.1).
    ClientRange,
    /// Missing, invalid or unexpected PROXY header.
    Proxy,
}

/// Outcome of a mail transaction, the `result` label of `moat_smtp_transactions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxResult {
    /// 250 after DATA/BDAT LAST.
    Accepted,
    /// 5xx after the content was received.
    Rejected,
    /// 4xx after the content was received.
    TempFailed,
    /// 250, held in quarantine.
    Quarantined,
    /// 250, dropped on purpose by a stage (silent delete).
    Discarded,
}

/// Registered metric families.
#[derive(Clone)]
pub struct SmtpMetrics {
    connections: IntCounterVec,
    sessions_active: IntGaugeVec,
    transactions: IntCounterVec,
    replies: IntCounterVec,
    bytes: IntCounterVec,
    stage_seconds: HistogramVec,
    hygiene: IntCounterVec,
}

/// Handles for one connector.
#[derive(Clone)]
pub struct ConnectorMetrics {
    conn: [IntCounter; 4],
    /// Sessions in progress.
    pub sessions_active: IntGauge,
    tx: [IntCounter; 5],
    replies: [IntCounter; 4],
    /// Message octets received (after unstuffing).
    pub bytes: IntCounter,
    stages: StageHistograms,
    /// Clients refused for talking before the greeting.
    pub pregreet: IntCounter,
    /// Replies delayed by the tarpit.
    pub tarpitted: IntCounter,
}

/// Latency histograms per stage (`moat_stage_duration_seconds{stage}`).
#[derive(Clone)]
pub struct StageHistograms {
    /// Connect-phase stages.
    pub connect: Histogram,
    /// HELO-phase stages.
    pub helo: Histogram,
    /// MAIL-phase stages.
    pub mail: Histogram,
    /// RCPT-phase stages (relay check included).
    pub rcpt: Histogram,
    /// DATA-phase stages (content filters).
    pub data: Histogram,
    /// Making the message durable.
    pub store: Histogram,
}

impl SmtpMetrics {
    /// Registers the families on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntCounterVec::new(
            Opts::new(
                "moat_smtp_connections_total",
                "TCP connections by connector and outcome",
            ),
            &["connector", "result"],
        )?;
        let sessions_active = IntGaugeVec::new(
            Opts::new("moat_smtp_sessions_active", "SMTP sessions in progress"),
            &["connector"],
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                "moat_smtp_transactions_total",
                "Mail transactions by outcome",
            ),
            &["connector", "result"],
        )?;
        let replies = IntCounterVec::new(
            Opts::new("moat_smtp_replies_total", "SMTP replies sent by code class"),
            &["connector", "class"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("moat_smtp_received_bytes_total", "Message octets received"),
            &["connector"],
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("moat_stage_duration_seconds", "Time spent in each stage").buckets(
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["stage"],
        )?;
        let hygiene = IntCounterVec::new(
            Opts::new(
                "moat_smtp_protocol_tests_total",
                "Protocol hygiene outcomes: pregreet (client spoke before the greeting, \
                 refused) and tarpit (a reply delayed)",
            ),
            &["connector", "test"],
        )?;
        registry.register(Box::new(hygiene.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(transactions.clone()))?;
        registry.register(Box::new(replies.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        Ok(Self {
            connections,
            sessions_active,
            transactions,
            replies,
            bytes,
            stage_seconds,
            hygiene,
        })
    }

    /// Unregistered families, for tests and tools that do not export metrics.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry accepts the families")
    }

    /// Resolves the handles of one connector (creates its series at zero).
    pub fn connector(&self, name: &str) -> ConnectorMetrics {
        let c = |r: &str| self.connections.with_label_values(&[name, r]);
        let t = |r: &str| self.transactions.with_label_values(&[name, r]);
        let r = |k: &str| self.replies.with_label_values(&[name, k]);
        let s = |k: &str| self.stage_seconds.with_label_values(&[k]);
        ConnectorMetrics {
            conn: [c("accepted"), c("limit"), c("client_range"), c("proxy")],
            sessions_active: self.sessions_active.with_label_values(&[name]),
            tx: [
                t("accepted"),
                t("rejected"),
                t("tempfailed"),
                t("quarantined"),
                t("discarded"),
            ],
            replies: [r("2xx"), r("3xx"), r("4xx"), r("5xx")],
            bytes: self.bytes.with_label_values(&[name]),
            stages: StageHistograms {
                connect: s("connect"),
                helo: s("helo"),
                mail: s("mail"),
                rcpt: s("rcpt"),
                data: s("data"),
                store: s("store"),
            },
            pregreet: self.hygiene.with_label_values(&[name, "pregreet"]),
            tarpitted: self.hygiene.with_label_values(&[name, "tarpit"]),
        }
    }
}

impl ConnectorMetrics {
    /// Counts a connection outcome.
    pub fn connection(&self, r: ConnResult) {
        self.conn[r as usize].inc();
    }

    /// Counts a transaction outcome.
    pub fn transaction(&self, r: TxResult) {
        self.tx[r as usize].inc();
    }

    /// Counts a reply by its class.
    pub fn reply(&self, code: u16) {
        let i = match code / 100 {
            2 => 0,
            3 => 1,
            4 => 2,
            _ => 3,
        };
        self.replies[i].inc();
    }

    /// Stage latency histograms.
    pub fn stages(&self) -> &StageHistograms {
        &self.stages
    }
}
