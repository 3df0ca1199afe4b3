//! The MIME walk: one message (and its envelope) → [`Targets`], within explicit limits.

use std::borrow::Cow;

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use moat_rules::{Field, Targets, TestEnvelope};
use serde::Serialize;

use crate::urls::{self, UrlSink};

/// Bounds on the work one message may cause. A message over a limit gets the configured
/// verdict (see `FilterConfig::over_limit`) instead of an unbounded walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of multiparts and attached messages.
    pub max_depth: usize,
    /// Most MIME parts, counted over all nesting levels.
    pub max_parts: usize,
    /// Most decoded bytes over all parts.
    pub max_decoded_bytes: usize,
    /// Most URLs collected (further URLs are ignored, not an over-limit verdict).
    pub max_urls: usize,
    /// Most bytes of each decoded text part, and of each HTML part's rendered text, that
    /// the `text`, `html-text` and `body` rules see (0: no limit). A longer part is cut,
    /// not refused: it is scanned up to there ([`Extracted::truncated_parts`] counts it).
    /// SpamAssassin's `body_part_scan_size` plays the same part, with the same default.
    pub max_text_scan_bytes: usize,
    /// Most bytes of each HTML part's markup (`html-raw`), of the undecoded body
    /// (`raw-body`) and of the header block as received (`raw-header-block`) that rules
    /// see (0: no limit); SpamAssassin's `rawbody_part_scan_size`, with its default.
    /// `full` is never cut.
    pub max_raw_scan_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 20,
            max_parts: 1_000,
            max_decoded_bytes: 64 << 20,
            max_urls: 1_000,
            max_text_scan_bytes: 50_000,
            max_raw_scan_bytes: 500_000,
        }
    }
}

/// How far back from a scan limit a cut looks for white space, so as not to split a word.
const CUT_LOOKBACK: usize = 1024;

/// Where to cut `bytes` to keep at most `max` of them (0: no limit): after the last white
/// space within [`CUT_LOOKBACK`] bytes of the limit, else at the limit itself moved back to
/// the start of a UTF-8 character. `None` when `bytes` fits.
fn cut_at(bytes: &[u8], max: usize) -> Option<usize> {
    if max == 0 || bytes.len() <= max {
        return None;
    }
    let from = max.saturating_sub(CUT_LOOKBACK);
    if let Some(i) = bytes[from..max].iter().rposition(u8::is_ascii_whitespace) {
        return Some(from + i + 1);
    }
    // A UTF-8 continuation byte is 0b10xx_xxxx; back up over at most three of them.
    let mut end = max;
    while end > max.saturating_sub(3) && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    Some(end)
}

/// `bytes` cut to at most `max` bytes ([`cut_at`]); sets `truncated` when it was cut.
fn cut_bytes<'b>(bytes: &'b [u8], max: usize, truncated: &mut bool) -> &'b [u8] {
    let Some(end) = cut_at(bytes, max) else {
        return bytes;
    };
    *truncated = true;
    &bytes[..end]
}

/// `s` cut to at most `max` bytes ([`cut_at`]); sets `truncated` when it was cut.
fn cut_str<'s>(s: &'s str, max: usize, truncated: &mut bool) -> &'s str {
    // In valid UTF-8 `cut_at` ends after ASCII white space or at a character's first byte.
    &s[..cut_bytes(s.as_bytes(), max, truncated).len()]
}

/// Which limit a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitExceeded {
    /// Nesting deeper than `max_depth`.
    Depth,
    /// More parts than `max_parts`.
    Parts,
    /// More decoded bytes than `max_decoded_bytes`.
    DecodedSize,
}

impl LimitExceeded {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitExceeded::Depth => "depth",
            LimitExceeded::Parts => "parts",
            LimitExceeded::DecodedSize => "decoded-size",
        }
    }
}

/// The envelope facts a scan may look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeFacts {
    /// `MAIL FROM`, empty for `<>`.
    pub mail_from: String,
    /// `RCPT TO` addresses.
    pub rcpt_to: Vec<String>,
    /// HELO/EHLO name.
    pub helo: Option<String>,
    /// Client IP address, as text.
    pub client_ip: Option<String>,
}

impl EnvelopeFacts {
    /// From what the SMTP session knows.
    pub fn from_smtp(session: &moat_core::SessionInfo, env: &moat_core::Envelope) -> Self {
        Self {
            mail_from: env.mail_from.clone(),
            rcpt_to: env.rcpt_to.clone(),
            helo: session.helo.clone(),
            client_ip: Some(session.client_ip().to_string()),
        }
    }
}

impl From<&TestEnvelope> for EnvelopeFacts {
    fn from(t: &TestEnvelope) -> Self {
        Self {
            mail_from: t.mail_from.clone(),
            rcpt_to: t.rcpt_to.clone(),
            helo: t.helo.clone(),
            client_ip: t.client_ip.clone(),
        }
    }
}

/// The targets of one message and what the walk saw.
#[derive(Debug)]
pub struct Extracted<'a> {
    /// Values per target, ready for `CompiledRules::scan`.
    pub targets: Targets<'a>,
    /// Set when the walk stopped at a limit.
    pub limit: Option<LimitExceeded>,
    /// MIME parts walked.
    pub parts: usize,
    /// Deepest nesting seen.
    pub depth: usize,
    /// Decoded bytes seen.
    pub decoded_bytes: usize,
    /// The MIME parser gave up on this message (only raw and envelope targets are set).
    pub parser_failed: bool,
    /// Parts (and the raw body) cut at a scan size limit
    /// ([`Limits::max_text_scan_bytes`], [`Limits::max_raw_scan_bytes`]).
    pub truncated_parts: usize,
}

/// Counts header lines naming a content type: an upper bound of the part count, computed
/// before the parser builds anything.
fn count_content_types(raw: &[u8]) -> usize {
    const NEEDLE: &[u8] = b"content-type:";
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', raw).map(|i| i + 1))
        .filter(|&start| {
            raw.get(start..start + NEEDLE.len())
                .is_some_and(|l| l.eq_ignore_ascii_case(NEEDLE))
        })
        .count()
}

/// Where the top-level header block ends (after its last line end, before the blank line)
/// and where the body starts (after the blank line); both the end of `raw` without one.
fn split_header(raw: &[u8]) -> (usize, usize) {
    let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|p| (p + 2, p + 4));
    let lf = memchr::memmem::find(raw, b"\n\n").map(|p| (p + 1, p + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => std::cmp::min_by_key(a, b, |s| s.1),
        (a, b) => a.or(b).unwrap_or((raw.len(), raw.len())),
    }
}

/// Unfolds a raw header value and trims it.
fn unfold(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The header's value as written, unfolded, with RFC 2047 encoded words decoded. The
/// parser's structured forms are not used: they drop text rules look at (the angle
/// brackets of a Message-ID, the quoting of a display name).
fn header_text(msg: &Message<'_>, h: &mail_parser::Header<'_>) -> String {
    let raw = msg.raw_message();
    let (s, e) = (h.offset_start as usize, h.offset_end as usize);
    let Some(bytes) = raw.get(s..e) else {
        return String::new();
    };
    match MessageStream::new(bytes).parse_unstructured() {
        HeaderValue::Text(t) => t.into_owned(),
        HeaderValue::TextList(l) => l.join(" "),
        _ => unfold(bytes),
    }
}

/// Walks `raw` and extracts every target. Never panics; bad MIME gives fewer values.
pub fn extract<'a>(raw: &'a [u8], env: &EnvelopeFacts, limits: &Limits) -> Extracted<'a> {
    let mut t = Targets::new();
    t.push(Field::Full, Cow::Borrowed(raw));
    let (header_end, body_start) = split_header(raw);
    let (mut raw_cut, mut head_cut) = (false, false);
    let raw_body = cut_bytes(&raw[body_start..], limits.max_raw_scan_bytes, &mut raw_cut);
    t.push(Field::RawBody, Cow::Borrowed(raw_body));
    let raw_headers = cut_bytes(&raw[..header_end], limits.max_raw_scan_bytes, &mut head_cut);
    t.push(Field::RawHeaderBlock, Cow::Borrowed(raw_headers));
    t.push_str(Field::MailFrom, env.mail_from.clone());
    for r in &env.rcpt_to {
        t.push_str(Field::RcptTo, r.clone());
    }
    if let Some(h) = &env.helo {
        t.push_str(Field::Helo, h.clone());
    }
    if let Some(ip) = &env.client_ip {
        t.push_str(Field::ClientIp, ip.clone());
    }
    let mut out = Extracted {
        targets: t,
        limit: None,
        parts: 0,
        depth: 0,
        decoded_bytes: 0,
        parser_failed: false,
        truncated_parts: usize::from(raw_cut) + usize::from(head_cut),
    };
    // Refuse to build a parse tree for a part bomb at all.
    if count_content_types(raw) > limits.max_parts {
        out.limit = Some(LimitExceeded::Parts);
        return out;
    }
    // mail-parser has internal assertions that malformed input can trip in debug builds;
    // a message the parser cannot handle is scanned from its raw forms only.
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse(raw));
    let msg = match parsed {
        Ok(Some(msg)) => msg,
        Ok(None) => return out,
        Err(_) => {
            out.parser_failed = true;
            return out;
        }
    };
    let t = &mut out.targets;
    for h in msg.headers() {
        t.push_header(h.name.as_str().to_string(), header_text(&msg, h));
    }
    if let Some(s) = msg.subject() {
        t.push_str(Field::Subject, s.to_string());
    }
    if let Some(Address::List(list)) = msg.from()
        && let Some(first) = list.first()
    {
        if let Some(n) = &first.name {
            t.push_str(Field::FromName, n.to_string());
        }
        if let Some(a) = &first.address {
            t.push_str(Field::FromAddress, a.to_string());
        }
    }

    let mut text = Vec::new();
    let mut html = Vec::new();
    // Iterative walk: (message, part id, depth). No recursion, so nesting cannot overflow
    // the stack.
    let mut stack: Vec<(&Message<'_>, u32, usize)> = vec![(&msg, 0, 0)];
    'walk: while let Some((m, id, depth)) = stack.pop() {
        let Some(part) = m.part(id) else { continue };
        out.parts += 1;
        out.depth = out.depth.max(depth);
        if depth > limits.max_depth {
            out.limit = Some(LimitExceeded::Depth);
            break;
        }
        if out.parts > limits.max_parts {
            out.limit = Some(LimitExceeded::Parts);
            break;
        }
        if !part.is_multipart() {
            out.decoded_bytes += part.len();
            if out.decoded_bytes > limits.max_decoded_bytes {
                out.limit = Some(LimitExceeded::DecodedSize);
                break;
            }
            if let Some(ct) = part.content_type() {
                let ty = match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                };
                t.push_str(Field::AttachmentType, ty.to_ascii_lowercase());
            }
            if let Some(name) = part.attachment_name() {
                t.push_str(Field::AttachmentName, name.to_string());
            }
        }
        match &part.body {
            PartType::Text(s) => text.push(s.clone()),
            PartType::Html(s) => html.push(s.clone()),
            PartType::Multipart(children) => {
                // Reverse so parts are walked in message order.
                for c in children.iter().rev() {
                    if stack.len() > limits.max_parts {
                        out.limit = Some(LimitExceeded::Parts);
                        break 'walk;
                    }
                    stack.push((m, *c, depth + 1));
                }
            }
            PartType::Message(inner) => stack.push((inner, 0, depth + 1)),
            PartType::Binary(_) | PartType::InlineBinary(_) => {}
        }
    }

    let mut sink = UrlSink::new(limits.max_urls);
    let mut body = String::new();
    // URLs come from whole parts; rules see each part up to its scan limit.
    for s in &text {
        urls::from_text(s, &mut sink);
        let mut cut = false;
        let s = cut_str(s, limits.max_text_scan_bytes, &mut cut);
        out.truncated_parts += usize::from(cut);
        t.push_str(Field::Text, s.to_string());
        body.push_str(s);
        body.push('\n');
    }
    for h in &html {
        urls::from_html(h, &mut sink);
        let mut cut = false;
        // Rendering reads the whole markup; the text is cut after it.
        let rendered = mail_parser::decoders::html::html_to_text(h);
        let rendered = cut_str(&rendered, limits.max_text_scan_bytes, &mut cut);
        body.push_str(rendered);
        body.push('\n');
        t.push_str(Field::HtmlText, rendered.to_string());
        t.push_str(
            Field::HtmlRaw,
            cut_str(h, limits.max_raw_scan_bytes, &mut cut).to_string(),
        );
        out.truncated_parts += usize::from(cut);
    }
    t.push_str(Field::Body, body);
    for u in sink.urls {
        t.push_str(Field::Url, u);
    }
    for h in sink.hosts {
        t.push_str(Field::UrlHost, h);
    }
    out
}

/// The MIME walk as a pack-test extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct MimeExtractor {
    /// Limits applied to test messages.
    pub limits: Limits,
}

impl moat_rules::Extractor for MimeExtractor {
    fn extract<'a>(&self, message: &'a [u8], envelope: &TestEnvelope) -> Targets<'a> {
        extract(message, &EnvelopeFacts::from(envelope), &self.limits).targets
    }
}
