//! Every reply the SMTP front end sends, defined in one place.
//!
//! Handlers never build reply text themselves; they call one of these functions so that the
//! codes (RFC 5321), enhanced status codes (RFC 3463) and wording stay consistent and can be
//! reviewed as a table.

use moat_core::{Enhanced, Reply};

const fn e(class: u8, subject: u16, detail: u16) -> Enhanced {
    Enhanced::new(class, subject, detail)
}

/// 220 greeting.
pub fn greeting(hostname: &str) -> Reply {
    Reply::plain(220, format!("{hostname} ESMTP Moat"))
}
/// 221 on QUIT.
pub fn bye() -> Reply {
    Reply::new(221, e(2, 0, 0), "Bye")
}
/// 250 to HELO.
pub fn helo_ok(hostname: &str) -> Reply {
    Reply::plain(250, hostname.to_string())
}
/// 250 generic.
pub fn ok() -> Reply {
    Reply::new(250, e(2, 0, 0), "Ok")
}
/// 250 to MAIL FROM.
pub fn sender_ok() -> Reply {
    Reply::new(250, e(2, 1, 0), "Sender ok")
}
/// 250 to RCPT TO.
pub fn recipient_ok() -> Reply {
    Reply::new(250, e(2, 1, 5), "Recipient ok")
}
/// 250 after RSET.
pub fn reset_ok() -> Reply {
    Reply::new(250, e(2, 0, 0), "Reset")
}
/// 250 after the message was made durable.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, e(2, 0, 0), format!("Ok: queued as {id}"))
}
/// 250 for a message a stage dropped on purpose (silent delete): the client must not be able
/// to tell it from an accepted one, so it reads like one.
pub fn discarded() -> Reply {
    Reply::new(250, e(2, 0, 0), "Ok: queued")
}
/// 250 after a non-final BDAT chunk.
pub fn chunk_ok(size: usize) -> Reply {
    Reply::new(250, e(2, 0, 0), format!("{size} octets received"))
}
/// 252 to VRFY: we never confirm addresses.
pub fn vrfy() -> Reply {
    Reply::new(
        252,
        e(2, 5, 2),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
/// 214 to HELP.
pub fn help() -> Reply {
    Reply::new(
        214,
        e(2, 0, 0),
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\nSee RFC 5321",
    )
}
/// 354 after DATA.
pub fn start_data() -> Reply {
    Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
}
/// 220 after STARTTLS.
pub fn ready_tls() -> Reply {
    Reply::new(220, e(2, 0, 0), "Ready to start TLS")
}
/// 334 AUTH continuation (`text` is already base64).
pub fn auth_challenge(text: &str) -> Reply {
    Reply::plain(334, text.to_string())
}
/// 235 AUTH succeeded.
pub fn auth_ok() -> Reply {
    Reply::new(235, e(2, 7, 0), "Authentication successful")
}

// --- 4xx ---------------------------------------------------------------------------------

/// 421 when the node is draining or aborting.
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        e(4, 3, 2),
        format!("{hostname} Service shutting down, closing transmission channel"),
    )
}
/// 421 when a command or data timeout expires.
pub fn timeout(hostname: &str) -> Reply {
    Reply::new(
        421,
        e(4, 4, 2),
        format!("{hostname} Timeout exceeded, closing connection"),
    )
}
/// 421 when the node or the client's address has too many connections.
pub fn too_many_connections() -> Reply {
    Reply::new(421, e(4, 7, 0), "Too many connections, try again later")
}
/// 554 to a client that spoke before the greeting (the pregreet test).
pub fn pregreet() -> Reply {
    Reply::new(
        554,
        e(5, 5, 1),
        "Protocol error: client spoke before the greeting",
    )
}
/// 421 after too many errors in one session.
pub fn too_many_errors() -> Reply {
    Reply::new(421, e(4, 7, 0), "Too many errors, closing connection")
}
/// 421 to a PROXY header from an address that may not send one.
pub fn proxy_not_allowed() -> Reply {
    Reply::new(
        421,
        e(4, 7, 0),
        "PROXY header not accepted from this address",
    )
}
/// 452 when the recipient limit is reached.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, e(4, 5, 3), "Too many recipients")
}
/// 451 when the message could not be made durable.
pub fn store_failed() -> Reply {
    Reply::new(
        451,
        e(4, 3, 0),
        "Temporary local problem, message not accepted, try again later",
    )
}

// --- 5xx ---------------------------------------------------------------------------------

/// 500 unknown command.
pub fn unknown_command() -> Reply {
    Reply::new(500, e(5, 5, 2), "Command unrecognized")
}
/// 500 when a command line exceeds the line-length limit.
pub fn line_too_long(max: usize) -> Reply {
    Reply::new(
        500,
        e(5, 5, 2),
        format!("Line too long (limit is {max} octets)"),
    )
}
/// 501 syntax error in parameters.
pub fn syntax_error(what: &str) -> Reply {
    Reply::new(501, e(5, 5, 4), format!("Syntax error: {what}"))
}
/// 501 for a malformed sender address.
pub fn bad_sender() -> Reply {
    Reply::new(501, e(5, 1, 7), "Bad sender address syntax")
}
/// 501 for a malformed recipient address.
pub fn bad_recipient() -> Reply {
    Reply::new(501, e(5, 1, 3), "Bad recipient address syntax")
}
/// 503 out-of-sequence command.
pub fn bad_sequence(what: &str) -> Reply {
    Reply::new(503, e(5, 5, 1), format!("Bad sequence of commands: {what}"))
}
/// 502 for commands we deliberately do not implement (EXPN, ETRN, ...).
pub fn not_implemented() -> Reply {
    Reply::new(502, e(5, 5, 1), "Command not implemented")
}
/// 504 unsupported AUTH mechanism.
pub fn auth_mechanism_unsupported() -> Reply {
    Reply::new(504, e(5, 5, 4), "Unrecognized authentication mechanism")
}
/// 503 AUTH when already authenticated.
pub fn already_authenticated() -> Reply {
    Reply::new(503, e(5, 5, 1), "Already authenticated")
}
/// 501 AUTH exchange cancelled by the client (`*`).
pub fn auth_cancelled() -> Reply {
    Reply::new(501, e(5, 0, 0), "Authentication cancelled")
}
/// 535 wrong credentials.
pub fn auth_failed() -> Reply {
    Reply::new(535, e(5, 7, 8), "Authentication credentials invalid")
}
/// 530 when the connector requires TLS first.
pub fn tls_required() -> Reply {
    Reply::new(530, e(5, 7, 0), "Must issue a STARTTLS command first")
}
/// 530 when the connector requires AUTH first.
pub fn auth_required() -> Reply {
    Reply::new(530, e(5, 7, 0), "Authentication required")
}
/// 538 AUTH attempted before TLS.
pub fn encryption_required_for_auth() -> Reply {
    Reply::new(
        538,
        e(5, 7, 11),
        "Encryption required for requested authentication mechanism",
    )
}
/// 550 relaying refused.
pub fn relay_denied() -> Reply {
    Reply::new(550, e(5, 7, 1), "Relay access denied")
}
/// 552 message over the size limit.
pub fn message_too_big() -> Reply {
    Reply::new(
        552,
        e(5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}
/// 550 when the message has a text line over the limit.
pub fn message_line_too_long(max: usize) -> Reply {
    Reply::new(
        550,
        e(5, 6, 0),
        format!("Message has a line longer than {max} octets"),
    )
}
/// 550 for bare CR or LF in the message (RFC 5321 §2.3.8; SMTP smuggling defence).
pub fn bare_line_ending() -> Reply {
    Reply::new(
        550,
        e(5, 6, 0),
        "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
    )
}
/// 555 unsupported MAIL/RCPT parameter.
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::new(555, e(5, 5, 4), format!("Unsupported parameter {param}"))
}
/// 553 8-bit/UTF-8 address without SMTPUTF8.
pub fn utf8_without_smtputf8() -> Reply {
    Reply::new(
        553,
        e(5, 6, 7),
        "Non-ASCII address requires the SMTPUTF8 parameter",
    )
}
/// 554 greeting for a client address the connector does not serve.
pub fn client_not_allowed() -> Reply {
    Reply::new(
        554,
        e(5, 7, 1),
        "Client address not allowed on this connector",
    )
}
/// 554 when DATA/BDAT arrives without valid recipients.
pub fn no_valid_recipients() -> Reply {
    Reply::new(554, e(5, 5, 1), "No valid recipients")
}
