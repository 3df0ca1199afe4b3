//! One SMTP session: an explicit state machine driven by parsed commands.
//!
//! Input is framed here (lines for commands, [`DataReader`] for DATA, exact octet counts for
//! BDAT) and commands are parsed by `smtp-proto`. Replies are queued and flushed only when the
//! session must wait for more input, which is what PIPELINING (RFC 2920) needs: a client that
//! sends a whole group of commands gets the whole group of replies in one write.
//!
//! States: `Fresh` (no HELO yet) → `Greeted` → `Mail` (MAIL accepted) → `Rcpt` (at least one
//! recipient) → back to `Greeted` after the message, RSET, or a new HELO/EHLO. STARTTLS
//! returns to `Fresh`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_core::{
    Envelope, MessageStore, Phase, Reply, SessionInfo, Shutdown, Stage, TlsInfo, Verdict,
};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::address::{RelayDecision, relay_decision};
use crate::auth;
use crate::connector::Connector;
use crate::data::{ContentChecker, ContentFlaws, DataReader, Progress};
use crate::metrics::{ConnectorMetrics, TxResult};
use crate::proxy::looks_like_proxy;
use crate::replies;
use crate::stream::Stream;

/// What every session of a node shares.
pub struct ServerContext {
    /// Host name in the greeting, EHLO reply and `Received:` header.
    pub hostname: String,
    /// Domains we accept mail for (lower-case).
    pub accepted_domains: Vec<String>,
    /// Where accepted messages go.
    pub store: Arc<dyn MessageStore>,
    /// Hygiene stages, asked in order at each phase.
    pub stages: Vec<Arc<dyn Stage>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Greeted,
    Mail,
    Rcpt,
}

/// Why the session loop must end.
#[derive(Debug)]
enum Close {
    /// QUIT, EOF, an I/O error, or a final reply already queued.
    Done,
}

type Step = Result<(), Close>;

/// What waiting for input produced.
enum Wait {
    Data,
    Eof,
    Timeout,
    Shutdown,
}

/// A BDAT transaction in progress.
struct Chunks {
    content: Vec<u8>,
    checker: ContentChecker,
}

/// One SMTP session over any byte stream (TCP in production, an in-memory duplex in tests).
pub struct Session<S> {
    stream: Stream<S>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    conn: Arc<Connector>,
    ctx: Arc<ServerContext>,
    metrics: ConnectorMetrics,
    shutdown: Shutdown,
    info: SessionInfo,
    state: State,
    env: Envelope,
    chunks: Option<Chunks>,
    errors: u32,
    messages: usize,
    seen_input: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// A session on an accepted connection. `info` carries the client address (already
    /// resolved through PROXY when a balancer sent one) and the connector name.
    pub fn new(
        stream: S,
        conn: Arc<Connector>,
        ctx: Arc<ServerContext>,
        metrics: ConnectorMetrics,
        shutdown: Shutdown,
        info: SessionInfo,
    ) -> Self {
        Self {
            stream: Stream::Plain(stream),
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            conn,
            ctx,
            metrics,
            shutdown,
            info,
            state: State::Fresh,
            env: Envelope::default(),
            chunks: None,
            errors: 0,
            messages: 0,
            seen_input: false,
        }
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        self.info.may_relay = self.conn.allows_relay(self.info.client_ip());
        let _ = self.serve().await;
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    async fn serve(&mut self) -> Step {
        if let Some(reply) = self.connect_phase().await {
            self.send(reply);
            return Err(Close::Done);
        }
        self.send(replies::greeting(&self.ctx.hostname));
        loop {
            let Some(line) = self.read_line().await? else {
                continue;
            };
            self.command(&line).await?;
            if self.errors >= self.conn.limits.max_errors {
                tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), errors = self.errors, "too many errors");
                self.send(replies::too_many_errors());
                return Err(Close::Done);
            }
        }
    }

    // --- output ------------------------------------------------------------------------

    fn send(&mut self, reply: Reply) {
        self.metrics.reply(reply.code());
        if reply.code() >= 400 && reply.code() != 421 {
            self.errors += 1;
        }
        reply.write_to(&mut self.wbuf);
    }

    async fn flush(&mut self) -> Step {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let tarpit = &self.conn.limits;
        if tarpit.tarpit_after_errors > 0 && self.errors >= tarpit.tarpit_after_errors {
            self.metrics.tarpitted.inc();
            tokio::time::sleep(tarpit.tarpit_delay).await;
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        // A client that does not read its replies is as stuck as one that does not write.
        match tokio::time::timeout(self.conn.limits.command_timeout, write).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            _ => {
                self.wbuf.clear();
                Err(Close::Done)
            }
        }
    }

    // --- input -------------------------------------------------------------------------

    fn in_transaction(&self) -> bool {
        self.state == State::Mail || self.state == State::Rcpt || self.chunks.is_some()
    }

    /// Flushes pending replies, then waits for more input (or a timeout, or shutdown).
    async fn wait_input(&mut self, timeout: Duration) -> Result<Wait, Close> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut drain = self.shutdown.clone();
        let mut abort = self.shutdown.clone();
        let idle = !self.in_transaction();
        tokio::select! {
            r = self.stream.read(&mut chunk) => match r {
                Ok(0) | Err(_) => Ok(Wait::Eof),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    Ok(Wait::Data)
                }
            },
            _ = tokio::time::sleep(timeout) => Ok(Wait::Timeout),
            _ = drain.draining(), if idle => Ok(Wait::Shutdown),
            _ = abort.aborting() => Ok(Wait::Shutdown),
        }
    }

    /// Maps a wait that produced no data to the session's end.
    fn end_wait(&mut self, wait: Wait) -> Close {
        match wait {
            Wait::Timeout => self.send(replies::timeout(&self.ctx.hostname)),
            Wait::Shutdown => self.send(replies::shutting_down(&self.ctx.hostname)),
            Wait::Eof | Wait::Data => {}
        }
        Close::Done
    }

    /// Next command line (LF-terminated, CRLF kept), or `None` after a too-long line was
    /// refused.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Close> {
        let max = self.conn.limits.max_line_length;
        let mut discarding = false;
        loop {
            let pending = &self.rbuf[self.rpos..];
            if !self.seen_input && !pending.is_empty() {
                self.seen_input = true;
                if looks_like_proxy(pending) {
                    tracing::warn!(connector = %self.conn.name, client = %self.info.client_ip(), "PROXY header from an address not allowed to send one");
                    self.send(replies::proxy_not_allowed());
                    return Err(Close::Done);
                }
            }
            if let Some(pos) = memchr::memchr(b'\n', pending) {
                let line = pending[..=pos].to_vec();
                self.rpos += pos + 1;
                if discarding || line.len() > max {
                    self.send(replies::line_too_long(max));
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            if pending.len() > max {
                // Keep memory bounded: drop what we have and skip to the end of the line.
                discarding = true;
                self.rpos = self.rbuf.len();
            }
            if self.draining_idle() {
                return Err(self.end_wait(Wait::Shutdown));
            }
            match self.wait_input(self.conn.limits.command_timeout).await? {
                Wait::Data => {}
                other => return Err(self.end_wait(other)),
            }
        }
    }

    fn draining_idle(&self) -> bool {
        (self.shutdown.is_draining() && !self.in_transaction()) || self.shutdown.is_aborting()
    }

    // --- commands ----------------------------------------------------------------------

    async fn command(&mut self, line: &[u8]) -> Step {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                self.send(parse_error_reply(e, self.conn.limits.max_line_length));
                return Ok(());
            }
        };
        match request {
            Request::Ehlo { host } => self.helo(host, true).await,
            Request::Helo { host } => self.helo(host, false).await,
            Request::Mail { from } => self.mail(from.into_owned()).await,
            Request::Rcpt { to } => self.rcpt(to.into_owned()).await,
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.reset_transaction();
                self.send(replies::reset_ok());
                Ok(())
            }
            Request::Noop { .. } => {
                self.send(replies::ok());
                Ok(())
            }
            Request::Quit => {
                self.send(replies::bye());
                Err(Close::Done)
            }
            Request::Vrfy { .. } => {
                self.send(replies::vrfy());
                Ok(())
            }
            Request::Help { .. } => {
                self.send(replies::help());
                Ok(())
            }
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.into_owned()).await,
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => {
                self.send(replies::not_implemented());
                Ok(())
            }
        }
    }

    fn reset_transaction(&mut self) {
        self.env = Envelope::default();
        self.chunks = None;
        if self.state != State::Fresh {
            self.state = State::Greeted;
        }
    }

    fn tls_active(&self) -> bool {
        self.info.tls.is_some()
    }

    fn offers_auth(&self) -> bool {
        self.conn.offer_auth && self.tls_active() && self.info.auth_user.is_none()
    }

    async fn helo(&mut self, host: Cow<'_, str>, esmtp: bool) -> Step {
        self.reset_transaction();
        self.state = State::Greeted;
        self.info.helo = Some(sanitize(&host));
        self.info.esmtp = esmtp;
        if let Some(reply) = self.ask_stages(Phase::Helo).await {
            self.send(reply);
            self.state = State::Fresh;
            return Ok(());
        }
        if !esmtp {
            self.send(replies::helo_ok(&self.ctx.hostname));
            return Ok(());
        }
        let mut text = format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
            self.ctx.hostname, self.conn.limits.max_message_size
        );
        if self.conn.tls.is_some() && !self.tls_active() {
            text.push_str("\nSTARTTLS");
        }
        if self.offers_auth() {
            text.push_str("\nAUTH PLAIN LOGIN");
        }
        text.push_str("\nHELP");
        self.send(Reply::plain(250, text));
        Ok(())
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Step {
        match self.state {
            State::Fresh => return self.refuse(replies::bad_sequence("send HELO/EHLO first")),
            State::Mail | State::Rcpt => {
                return self.refuse(replies::bad_sequence("nested MAIL command"));
            }
            State::Greeted => {}
        }
        if self.conn.require_tls && !self.tls_active() {
            return self.refuse(replies::tls_required());
        }
        if self.conn.require_auth && self.info.auth_user.is_none() {
            return self.refuse(replies::auth_required());
        }
        let max_msgs = self.conn.limits.max_messages_per_session;
        if max_msgs > 0 && self.messages >= max_msgs {
            return self.refuse(Reply::new(
                452,
                moat_core::Enhanced::new(4, 5, 3),
                "Too many messages in this session, reconnect",
            ));
        }
        if from.size > self.conn.limits.max_message_size {
            return self.refuse(replies::message_too_big());
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self.refuse(replies::unsupported_parameter("BODY=BINARYMIME"));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.refuse(replies::utf8_without_smtputf8());
        }
        self.env = Envelope {
            mail_from: from.address,
            rcpt_to: Vec::new(),
            declared_size: (from.size > 0).then_some(from.size),
            eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8,
        };
        if let Some(reply) = self.ask_stages(Phase::Mail).await {
            self.env = Envelope::default();
            return self.refuse(reply);
        }
        self.state = State::Mail;
        self.send(replies::sender_ok());
        Ok(())
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Step {
        if !matches!(self.state, State::Mail | State::Rcpt) {
            return self.refuse(replies::bad_sequence("need MAIL before RCPT"));
        }
        if self.env.rcpt_to.len() >= self.conn.limits.max_recipients {
            return self.refuse(replies::too_many_recipients());
        }
        let mut address = to.address;
        if address.is_empty() {
            // RCPT TO:<postmaster> (RFC 5321 §4.5.1): the parser hands it over without a domain.
            match self.ctx.accepted_domains.first() {
                Some(d) => address = format!("postmaster@{d}"),
                None => return self.refuse(replies::bad_recipient()),
            }
        }
        if !self.env.smtputf8 && !address.is_ascii() {
            return self.refuse(replies::utf8_without_smtputf8());
        }
        let started = Instant::now();
        let decision = relay_decision(&address, &self.ctx.accepted_domains, self.info.may_relay);
        if decision == RelayDecision::Denied {
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), rcpt = %address, "relay denied");
            self.metrics
                .stages()
                .rcpt
                .observe(started.elapsed().as_secs_f64());
            return self.refuse(replies::relay_denied());
        }
        let verdict = self.ask_rcpt_stages(&address).await;
        self.metrics
            .stages()
            .rcpt
            .observe(started.elapsed().as_secs_f64());
        if let Some(reply) = verdict {
            return self.refuse(reply);
        }
        self.env.rcpt_to.push(address);
        self.state = State::Rcpt;
        self.send(replies::recipient_ok());
        Ok(())
    }

    fn refuse(&mut self, reply: Reply) -> Step {
        self.send(reply);
        Ok(())
    }

    async fn data(&mut self) -> Step {
        if self.chunks.is_some() {
            return self.refuse(replies::bad_sequence("DATA during BDAT"));
        }
        match self.state {
            State::Rcpt => {}
            State::Mail => return self.refuse(replies::no_valid_recipients()),
            _ => return self.refuse(replies::bad_sequence("need MAIL and RCPT before DATA")),
        }
        self.send(replies::start_data());
        let limits = &self.conn.limits;
        let mut reader = DataReader::new(limits.max_line_length, limits.max_message_size);
        let mut content = Vec::with_capacity(
            self.env
                .declared_size
                .unwrap_or(8192)
                .min(limits.max_message_size)
                + 2,
        );
        let deadline = Instant::now() + limits.data_total_timeout;
        let block = limits.data_block_timeout;
        loop {
            if self.rpos < self.rbuf.len() {
                match reader.feed(&self.rbuf[self.rpos..], &mut content) {
                    Progress::Done { consumed } => {
                        self.rpos += consumed;
                        break;
                    }
                    Progress::NeedMore => self.rpos = self.rbuf.len(),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_input(block.min(left)).await? {
                Wait::Data => {}
                other => return Err(self.end_wait(other)),
            }
        }
        self.metrics.bytes.inc_by(reader.size() as u64);
        self.finish_message(content, reader.flaws()).await
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Step {
        // The chunk must be read whatever happens, to stay in step with the client.
        let valid = self.state == State::Rcpt;
        if valid && self.chunks.is_none() {
            let l = &self.conn.limits;
            self.chunks = Some(Chunks {
                content: Vec::with_capacity(size.min(l.max_message_size) + 2),
                checker: ContentChecker::new(l.max_line_length, l.max_message_size),
            });
        }
        let deadline = Instant::now() + self.conn.limits.data_total_timeout;
        let block = self.conn.limits.data_block_timeout;
        let mut left = size;
        loop {
            let take = left.min(self.rbuf.len() - self.rpos);
            if take > 0 {
                if let Some(c) = self.chunks.as_mut().filter(|_| valid) {
                    c.checker
                        .push(&self.rbuf[self.rpos..self.rpos + take], &mut c.content);
                }
                self.rpos += take;
                left -= take;
            }
            if left == 0 {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.wait_input(block.min(remaining)).await? {
                Wait::Data => {}
                other => return Err(self.end_wait(other)),
            }
        }
        if !valid {
            return match self.state {
                State::Mail => self.refuse(replies::no_valid_recipients()),
                _ => self.refuse(replies::bad_sequence("need MAIL and RCPT before BDAT")),
            };
        }
        self.metrics.bytes.inc_by(size as u64);
        if !last {
            self.send(replies::chunk_ok(size));
            return Ok(());
        }
        let Some(chunks) = self.chunks.take() else {
            return Ok(());
        };
        self.finish_message(chunks.content, chunks.checker.flaws())
            .await
    }

    /// Content received in full: check it, run the data stages, store it, reply.
    async fn finish_message(&mut self, content: Vec<u8>, flaws: ContentFlaws) -> Step {
        let limits = &self.conn.limits;
        let refusal = if flaws.too_big {
            Some(replies::message_too_big())
        } else if flaws.bare_line_ending {
            Some(replies::bare_line_ending())
        } else if flaws.line_too_long {
            Some(replies::message_line_too_long(limits.max_line_length))
        } else {
            None
        };
        if let Some(reply) = refusal {
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), code = reply.code(), reason = reply.text(), "message refused");
            self.metrics.transaction(TxResult::Rejected);
            self.reset_transaction();
            return self.refuse(reply);
        }
        let mut message = self.received_header();
        message.extend_from_slice(&content);
        drop(content);

        // Stages run in order. A refusal ends the chain; a quarantine is remembered and the
        // remaining stages still run, so a later refusal wins over it.
        let started = Instant::now();
        let mut verdict_reply = None;
        let mut quarantine: Option<String> = None;
        let mut discard: Option<String> = None;
        for stage in &self.ctx.stages {
            match stage.data(&self.info, &self.env, &message).await {
                Verdict::Continue => {}
                Verdict::Tag(headers) => prepend_headers(&mut message, &headers),
                Verdict::Quarantine(reason) => {
                    quarantine.get_or_insert(reason);
                }
                Verdict::Replace(new, reason) => {
                    tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), stage = stage.name(), reason = %reason, "message rewritten");
                    message = new;
                }
                Verdict::Discard(reason) => {
                    discard = Some(reason);
                    break;
                }
                Verdict::TempFail(r) | Verdict::Reject(r) => {
                    verdict_reply = Some(r);
                    break;
                }
            }
        }
        self.metrics
            .stages()
            .data
            .observe(started.elapsed().as_secs_f64());
        if let Some(reply) = verdict_reply {
            self.metrics.transaction(if reply.is_transient() {
                TxResult::TempFailed
            } else {
                TxResult::Rejected
            });
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), code = reply.code(), reason = reply.text(), "message refused by a stage");
            self.reset_transaction();
            return self.refuse(reply);
        }
        if let Some(reason) = discard {
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), from = %self.env.mail_from, rcpts = self.env.rcpt_to.len(), reason = %reason, "message accepted and discarded");
            self.metrics.transaction(TxResult::Discarded);
            self.messages += 1;
            self.reset_transaction();
            return self.refuse(replies::discarded());
        }
        if let Some(reason) = &quarantine {
            let reason = sanitize_header(reason);
            prepend_headers(&mut message, &[("X-Moat-Quarantine".to_string(), reason)]);
        }

        let started = Instant::now();
        let stored = match &quarantine {
            None => self.ctx.store.store(&self.info, &self.env, &message).await,
            Some(_) => {
                self.ctx
                    .store
                    .quarantine(&self.info, &self.env, &message)
                    .await
            }
        };
        self.metrics
            .stages()
            .store
            .observe(started.elapsed().as_secs_f64());
        let reply = match stored {
            Ok(id) => {
                let held = quarantine.is_some();
                tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), id = %id, from = %self.env.mail_from, rcpts = self.env.rcpt_to.len(), size = message.len(), quarantined = held, "queued");
                self.metrics.transaction(if held {
                    TxResult::Quarantined
                } else {
                    TxResult::Accepted
                });
                self.messages += 1;
                replies::queued(&id.0)
            }
            Err(e) => {
                tracing::error!(connector = %self.conn.name, error = %e, "store failed");
                self.metrics.transaction(TxResult::TempFailed);
                replies::store_failed()
            }
        };
        self.reset_transaction();
        self.refuse(reply)
    }

    fn received_header(&self) -> Vec<u8> {
        let helo = self.info.helo.as_deref().unwrap_or("unknown");
        let ip = self.info.client_ip();
        // RFC 3848 protocol names.
        let proto = match (
            self.info.esmtp,
            self.tls_active(),
            self.info.auth_user.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let tls = match &self.info.tls {
            Some(t) => format!("\r\n\t(using {} with cipher {})", t.protocol, t.cipher),
            None => String::new(),
        };
        let rcpt = match self.env.rcpt_to.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (Moat) with {proto} via {conn}{tls}{rcpt};\r\n\t{date}\r\n",
            host = self.ctx.hostname,
            conn = self.conn.name,
        )
        .into_bytes()
    }

    async fn starttls(&mut self) -> Step {
        if self.tls_active() {
            return self.refuse(replies::bad_sequence("TLS already active"));
        }
        let Some(config) = self.conn.tls.clone() else {
            return self.refuse(replies::not_implemented());
        };
        self.send(replies::ready_tls());
        self.flush().await?;
        // Anything pipelined after STARTTLS was sent in clear text and must not be trusted
        // (RFC 3207 §4.2, CVE-2011-0411).
        self.rbuf.clear();
        self.rpos = 0;
        let Stream::Plain(plain) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(Close::Done);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(
            self.conn.limits.tls_handshake_timeout,
            acceptor.accept(plain),
        )
        .await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), error = %e, "TLS handshake failed");
                return Err(Close::Done);
            }
            Err(_) => {
                tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), "TLS handshake timed out");
                return Err(Close::Done);
            }
        };
        let (_, server) = tls.get_ref();
        let protocol = match server.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        let cipher = server
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        self.info.tls = Some(TlsInfo { protocol, cipher });
        self.stream = Stream::Tls(Box::new(tls));
        self.state = State::Fresh;
        self.info.helo = None;
        self.env = Envelope::default();
        Ok(())
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Step {
        if !self.conn.offer_auth {
            return self.refuse(replies::not_implemented());
        }
        if !self.tls_active() {
            return self.refuse(replies::encryption_required_for_auth());
        }
        if self.info.auth_user.is_some() {
            return self.refuse(replies::already_authenticated());
        }
        if self.state == State::Fresh {
            return self.refuse(replies::bad_sequence("send EHLO first"));
        }
        if self.in_transaction() {
            return self.refuse(replies::bad_sequence(
                "AUTH not allowed during a transaction",
            ));
        }
        let credentials = if mechanism == smtp_proto::AUTH_PLAIN {
            let response = if initial.is_empty() {
                self.send(replies::auth_challenge(""));
                match self.auth_line().await? {
                    Some(r) => r,
                    None => return self.refuse(replies::auth_cancelled()),
                }
            } else {
                initial
            };
            auth::decode_plain(&response)
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.send(replies::auth_challenge(&auth::encode("Username:")));
                match self.auth_line().await? {
                    Some(r) => r,
                    None => return self.refuse(replies::auth_cancelled()),
                }
            } else {
                initial
            };
            self.send(replies::auth_challenge(&auth::encode("Password:")));
            let Some(pass) = self.auth_line().await? else {
                return self.refuse(replies::auth_cancelled());
            };
            auth::decode_line(&user).zip(auth::decode_line(&pass))
        } else {
            return self.refuse(replies::auth_mechanism_unsupported());
        };
        let Some((user, pass)) = credentials else {
            return self.refuse(replies::syntax_error("invalid base64 credentials"));
        };
        if self.conn.users.verify(&user, &pass).await {
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), user = %user, "authenticated");
            self.info.auth_user = Some(user);
            self.info.may_relay = true;
            self.send(replies::auth_ok());
        } else {
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), user = %user, "authentication failed");
            self.send(replies::auth_failed());
        }
        Ok(())
    }

    /// One line of an AUTH exchange; `None` when the client cancelled with `*`.
    async fn auth_line(&mut self) -> Result<Option<String>, Close> {
        let Some(line) = self.read_line().await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        Ok((text != "*").then_some(text))
    }

    // --- stages ------------------------------------------------------------------------

    /// Before the greeting: the connect stages and, at the same time, the pregreet wait.
    /// Both must pass; a stage's refusal wins over the pregreet one.
    async fn connect_phase(&mut self) -> Option<Reply> {
        let wait = self.conn.limits.pregreet_wait;
        if wait.is_zero() {
            return self.ask_stages(Phase::Connect).await;
        }
        let ask = ask_stages(
            &self.ctx.stages,
            &self.metrics,
            &self.info,
            &self.env,
            Phase::Connect,
        );
        let stream = &mut self.stream;
        let listen = async {
            // Any octet from the client inside the wait fails the test; what it said is
            // dropped with the connection. EOF passes: there is nobody left to refuse.
            let mut one = [0u8; 512];
            tokio::select! {
                r = stream.read(&mut one) => !matches!(r, Ok(0) | Err(_)),
                _ = tokio::time::sleep(wait) => false,
            }
        };
        let (refusal, spoke) = tokio::join!(ask, listen);
        if refusal.is_some() {
            return refusal;
        }
        if spoke {
            self.metrics.pregreet.inc();
            tracing::info!(connector = %self.conn.name, client = %self.info.client_ip(), "pregreet: client spoke before the greeting");
            return Some(replies::pregreet());
        }
        None
    }

    async fn ask_stages(&self, phase: Phase) -> Option<Reply> {
        ask_stages(
            &self.ctx.stages,
            &self.metrics,
            &self.info,
            &self.env,
            phase,
        )
        .await
    }

    async fn ask_rcpt_stages(&self, rcpt: &str) -> Option<Reply> {
        for stage in &self.ctx.stages {
            if let Some(r) = stage.rcpt(&self.info, &self.env, rcpt).await.refusal() {
                return Some(r.clone());
            }
        }
        None
    }
}

/// Asks the stages in order at `phase` (connect, HELO or MAIL; RCPT and DATA carry more
/// arguments: see `ask_rcpt_stages` and `finish_message`) and returns the first refusal.
/// The time they took goes to the phase's histogram. A free function so the connect phase
/// can run it while it also listens on the stream (the pregreet test).
async fn ask_stages(
    stages: &[Arc<dyn Stage>],
    metrics: &ConnectorMetrics,
    info: &SessionInfo,
    env: &Envelope,
    phase: Phase,
) -> Option<Reply> {
    if stages.is_empty() {
        return None;
    }
    let started = Instant::now();
    let mut refusal = None;
    for stage in stages {
        let verdict = match phase {
            Phase::Connect => stage.connect(info).await,
            Phase::Helo => stage.helo(info).await,
            Phase::Mail => stage.mail(info, env).await,
            Phase::Rcpt | Phase::Data => Verdict::Continue,
        };
        if let Some(r) = verdict.refusal() {
            refusal = Some(r.clone());
            break;
        }
    }
    let h = match phase {
        Phase::Connect => &metrics.stages().connect,
        Phase::Helo => &metrics.stages().helo,
        _ => &metrics.stages().mail,
    };
    h.observe(started.elapsed().as_secs_f64());
    refusal
}

fn parse_error_reply(e: smtp_proto::Error, max_line: usize) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => replies::unknown_command(),
        E::InvalidSenderAddress => replies::bad_sender(),
        E::InvalidRecipientAddress => replies::bad_recipient(),
        E::SyntaxError { syntax } => replies::syntax_error(syntax),
        E::InvalidParameter { param } => replies::syntax_error(&format!("invalid {param}")),
        E::UnsupportedParameter { param } => replies::unsupported_parameter(&sanitize(&param)),
        E::ResponseTooLong => replies::line_too_long(max_line),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
            replies::syntax_error("incomplete command")
        }
    }
}

/// Puts header lines in front of the message (stages' tags, quarantine reason).
fn prepend_headers(message: &mut Vec<u8>, headers: &[(String, String)]) {
    let mut head = Vec::with_capacity(128);
    for (name, value) in headers {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    message.splice(0..0, head);
}

/// A header value on one line: control characters dropped.
fn sanitize_header(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(900).collect()
}

/// Printable ASCII only, bounded, for text we echo into replies and headers.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()))
        .take(255)
        .collect()
}
