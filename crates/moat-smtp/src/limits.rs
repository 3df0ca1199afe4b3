//! Per-connector limits, resolved once when a session starts.

use std::time::Duration;

/// Limits applied to every session of a connector. Defaults follow RFC 5321 §4.5.3.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest command or text line, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
    pub max_line_length: usize,
    /// Largest message in octets (advertised with SIZE; 552 5.3.4 beyond it).
    pub max_message_size: usize,
    /// Recipients accepted per transaction (452 4.5.3 beyond it; RFC 5321 asks for ≥ 100).
    pub max_recipients: usize,
    /// Negative replies a session may earn before it is closed with 421.
    pub max_errors: u32,
    /// Transactions per session (0 = unlimited).
    pub max_messages_per_session: usize,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for each block of DATA or BDAT (RFC 5321 §4.5.3.2.5: 3 minutes).
    pub data_block_timeout: Duration,
    /// Whole DATA phase, until the final dot (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_total_timeout: Duration,
    /// Waiting for a PROXY header from a trusted load balancer.
    pub proxy_timeout: Duration,
    /// TLS handshake after STARTTLS.
    pub tls_handshake_timeout: Duration,
    /// Pregreet test (postscreen's): silence kept before the greeting; a client that talks
    /// in it is refused (554 5.5.1) and counted. Zero: off, greet at once. The connect
    /// stages (DNS lists) run during the wait.
    pub pregreet_wait: Duration,
    /// Tarpit: from the error reply that brings a session's errors to this number, every
    /// reply waits `tarpit_delay` before it is sent (0: off).
    pub tarpit_after_errors: u32,
    /// Delay of a tarpitted reply.
    pub tarpit_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_length: 1000,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_messages_per_session: 0,
            command_timeout: Duration::from_secs(300),
            data_block_timeout: Duration::from_secs(180),
            data_total_timeout: Duration::from_secs(600),
            proxy_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(30),
            pregreet_wait: Duration::ZERO,
            tarpit_after_errors: 0,
            tarpit_delay: Duration::from_secs(5),
        }
    }
}
