use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The relay's Prometheus handles, registered on an explicit [`Registry`].
///
/// Labels: `hop` is the configured name of a next hop (or `local` for the Maildir), a value
/// set bounded by the configuration; `result` is one of `delivered`, `deferred`, `bounced`.
///
/// | name | type | labels |
/// | --- | --- | --- |
/// | `moat_relay_deliveries_total` | counter | `hop`, `result` (per recipient) |
/// | `moat_relay_hop_failures_total` | counter | `hop` (connection or session failures) |
/// | `moat_relay_hop_circuit_open` | gauge | `hop` (1 while the breaker is open) |
/// | `moat_relay_connections_total` | counter | `hop` (new connections opened) |
/// | `moat_relay_connection_reuse_total` | counter | `hop` (transactions on a reused connection) |
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    pub(crate) deliveries: IntCounterVec,
    pub(crate) failures: IntCounterVec,
    pub(crate) circuit_open: IntGaugeVec,
    pub(crate) connections: IntCounterVec,
    pub(crate) reuse: IntCounterVec,
}

impl RelayMetrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "moat_relay_deliveries_total",
                "Recipient delivery attempts by next hop and result.",
            ),
            &["hop", "result"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "moat_relay_hop_failures_total",
                "Connection or session failures by next hop.",
            ),
            &["hop"],
        )?;
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "moat_relay_hop_circuit_open",
                "1 while a next hop's circuit breaker is open.",
            ),
            &["hop"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "moat_relay_connections_total",
                "Connections opened by next hop.",
            ),
            &["hop"],
        )?;
        let reuse = IntCounterVec::new(
            Opts::new(
                "moat_relay_connection_reuse_total",
                "Transactions sent on a reused connection, by next hop.",
            ),
            &["hop"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(circuit_open.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(reuse.clone()))?;
        Ok(Self {
            deliveries,
            failures,
            circuit_open,
            connections,
            reuse,
        })
    }

    /// Resolves every series of a hop so it is exported from the start.
    pub(crate) fn register_hop(&self, hop: &str) {
        for result in ["delivered", "deferred", "bounced"] {
            self.deliveries.with_label_values(&[hop, result]);
        }
        self.failures.with_label_values(&[hop]);
        self.circuit_open.with_label_values(&[hop]).set(0);
        self.connections.with_label_values(&[hop]);
        self.reuse.with_label_values(&[hop]);
    }
}
