//! What a rule looks at: [`Target`] names a part of a message or its envelope, [`Targets`]
//! holds the values extracted from one message.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// A message or envelope field with no parameter. See `rules/README.md` for each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Decoded `Subject:` (RFC 2047 words decoded).
    Subject,
    /// Display name of the first `From:` address.
    FromName,
    /// Address of the first `From:` mailbox.
    FromAddress,
    /// Every top-level header as `Name: decoded value` and a line feed, in message order,
    /// as one value (SpamAssassin's `ALL`): for rules about header order and repetition.
    HeaderBlock,
    /// The top-level header block as received, folding and line ends kept, without the
    /// blank line that ends it (SpamAssassin's `ALL:raw`).
    RawHeaderBlock,
    /// All decoded text: text parts, and HTML parts rendered as text.
    Body,
    /// Decoded `text/plain` (and other non-HTML text) parts only.
    Text,
    /// HTML parts rendered as text.
    HtmlText,
    /// HTML parts as decoded markup.
    HtmlRaw,
    /// The bytes after the top-level header block, not decoded.
    RawBody,
    /// The whole message as received.
    Full,
    /// Every URL found in text, HTML attributes and obfuscated forms.
    Url,
    /// The host name (or address) of every URL.
    UrlHost,
    /// Attachment file names.
    AttachmentName,
    /// Declared MIME types (`type/subtype`) of every non-multipart part.
    AttachmentType,
    /// Envelope sender (`MAIL FROM`), empty for `<>`.
    MailFrom,
    /// Envelope recipients (`RCPT TO`).
    RcptTo,
    /// The HELO/EHLO name.
    Helo,
    /// The client's IP address, as text.
    ClientIp,
}

impl Field {
    /// Every field, in index order.
    pub const ALL: [Field; 19] = [
        Field::Subject,
        Field::FromName,
        Field::FromAddress,
        Field::HeaderBlock,
        Field::RawHeaderBlock,
        Field::Body,
        Field::Text,
        Field::HtmlText,
        Field::HtmlRaw,
        Field::RawBody,
        Field::Full,
        Field::Url,
        Field::UrlHost,
        Field::AttachmentName,
        Field::AttachmentType,
        Field::MailFrom,
        Field::RcptTo,
        Field::Helo,
        Field::ClientIp,
    ];

    /// The name used in pack files.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Subject => "subject",
            Field::FromName => "from-name",
            Field::FromAddress => "from-address",
            Field::HeaderBlock => "header-block",
            Field::RawHeaderBlock => "raw-header-block",
            Field::Body => "body",
            Field::Text => "text",
            Field::HtmlText => "html-text",
            Field::HtmlRaw => "html-raw",
            Field::RawBody => "raw-body",
            Field::Full => "full",
            Field::Url => "url",
            Field::UrlHost => "url-host",
            Field::AttachmentName => "attachment-name",
            Field::AttachmentType => "attachment-type",
            Field::MailFrom => "mail-from",
            Field::RcptTo => "rcpt-to",
            Field::Helo => "helo",
            Field::ClientIp => "client-ip",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where a rule looks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Every top-level header, one value per header line as `Name: decoded value`.
    AllHeaders,
    /// The decoded values of one named header (name compared case-insensitively).
    Header(String),
    /// A field without parameter.
    Field(Field),
}

impl Target {
    /// Parses a target name as written in a pack: `header`, `header:Name` or a field name.
    pub fn parse(s: &str) -> Option<Target> {
        if s == "header" {
            return Some(Target::AllHeaders);
        }
        if let Some(name) = s.strip_prefix("header:") {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            return ok.then(|| Target::Header(name.to_ascii_lowercase()));
        }
        Field::ALL
            .iter()
            .find(|f| f.as_str() == s)
            .map(|f| Target::Field(*f))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AllHeaders => f.write_str("header"),
            Target::Header(name) => write!(f, "header:{name}"),
            Target::Field(field) => f.write_str(field.as_str()),
        }
    }
}

/// The values extracted from one message (and its envelope), borrowed where possible.
///
/// A target may hold several values (one per URL, per recipient, per header); regex
/// anchors apply to each value on its own.
#[derive(Debug, Clone, Default)]
pub struct Targets<'a> {
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Where each header's `Name: value` line lies in the header block (the `header`
    /// target's values).
    header_lines: Vec<Range<usize>>,
    fields: [Vec<Cow<'a, [u8]>>; Field::ALL.len()],
}

impl<'a> Targets<'a> {
    /// No values at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a top-level header with its decoded value (to the `header`, `header:NAME` and
    /// `header-block` targets).
    pub fn push_header(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let (name, value) = (name.into(), value.into());
        let block = &mut self.fields[Field::HeaderBlock.index()];
        if block.is_empty() {
            block.push(Cow::Owned(Vec::new()));
        }
        let block = block[0].to_mut();
        let start = block.len();
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        self.header_lines.push(start..block.len());
        block.push(b'\n');
        self.headers.push((name, value));
    }

    /// Adds one value to a field.
    pub fn push(&mut self, field: Field, value: impl Into<Cow<'a, [u8]>>) {
        self.fields[field.index()].push(value.into());
    }

    /// Adds one text value to a field.
    pub fn push_str(&mut self, field: Field, value: impl Into<Cow<'a, str>>) {
        let value = match value.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        self.fields[field.index()].push(value);
    }

    /// The values of a field.
    pub fn field(&self, field: Field) -> &[Cow<'a, [u8]>] {
        &self.fields[field.index()]
    }

    /// The headers, in message order, as (name, decoded value).
    pub fn headers(&self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        &self.headers
    }

    /// Calls `f` with every value of `target`.
    pub fn for_each_value(&self, target: &Target, mut f: impl FnMut(&[u8])) {
        match target {
            Target::AllHeaders => {
                if let Some(block) = self.field(Field::HeaderBlock).first() {
                    self.header_lines.iter().for_each(|r| f(&block[r.clone()]));
                }
            }
            Target::Header(name) => self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .for_each(|(_, v)| f(v.as_bytes())),
            Target::Field(field) => self.field(*field).iter().for_each(|v| f(v)),
        }
    }

    /// Total bytes over all values (headers counted once, as lines, not again as the
    /// header block).
    pub fn total_len(&self) -> usize {
        let fields = Field::ALL
            .iter()
            .filter(|&&f| f != Field::HeaderBlock)
            .flat_map(|&f| self.field(f))
            .map(|v| v.len());
        self.header_lines
            .iter()
            .map(ExactSizeIterator::len)
            .sum::<usize>()
            + fields.sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_round_trip() {
        for field in Field::ALL {
            let t = Target::Field(field);
            assert_eq!(Target::parse(&t.to_string()), Some(t));
        }
        assert_eq!(Target::parse("header"), Some(Target::AllHeaders));
        assert_eq!(
            Target::parse("header:X-Mailer"),
            Some(Target::Header("x-mailer".into()))
        );
        for bad in ["", "header:", "header:a b", "bodies", "Subject"] {
            assert_eq!(Target::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn values_per_target() {
        let mut t = Targets::new();
        t.push_header("Subject", "hello");
        t.push_header("X-Mailer", "mass");
        t.push_header("x-mailer", "second");
        t.push_str(Field::RcptTo, "a@example.org");
        t.push_str(Field::RcptTo, "b@example.org");
        let collect = |target: &Target| {
            let mut out = Vec::new();
            t.for_each_value(target, |v| {
                out.push(String::from_utf8_lossy(v).into_owned())
            });
            out
        };
        assert_eq!(
            collect(&Target::AllHeaders),
            ["Subject: hello", "X-Mailer: mass", "x-mailer: second"]
        );
        assert_eq!(
            collect(&Target::Header("x-mailer".into())),
            ["mass", "second"]
        );
        assert_eq!(
            collect(&Target::Field(Field::RcptTo)),
            ["a@example.org", "b@example.org"]
        );
        assert!(collect(&Target::Field(Field::Helo)).is_empty());
        // The header block is one value, each header on a line of its own.
        assert_eq!(
            collect(&Target::Field(Field::HeaderBlock)),
            ["Subject: hello\nX-Mailer: mass\nx-mailer: second\n"]
        );
        assert!(Targets::new().field(Field::HeaderBlock).is_empty());
        // Headers count once in the total.
        assert_eq!(t.total_len(), 14 + 14 + 16 + 2 * 13);
    }
}
