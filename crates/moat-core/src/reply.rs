use std::borrow::Cow;
use std::fmt;

/// An enhanced status code (RFC 3463): `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced {
    /// 2, 4 or 5.
    pub class: u8,
    /// Subject (0–7 today).
    pub subject: u16,
    /// Detail within the subject.
    pub detail: u16,
}

impl Enhanced {
    /// Builds `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// An SMTP reply: a three-digit code, an optional enhanced status code and human text.
///
/// Text may hold several lines separated by `\n`; they are sent as a multi-line reply
/// (`250-…` continuation lines) with the code and enhanced status repeated on each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<Enhanced>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, DATA's 354).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<Enhanced> {
        self.enhanced
    }

    /// The human-readable text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: the client must not retry unchanged.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The first digit of the code (2, 3, 4 or 5).
    pub fn class(&self) -> u8 {
        (self.code / 100) as u8
    }

    /// Appends the wire form (CRLF-terminated, multi-line when the text has several lines).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // Writing into a Vec cannot fail.
            let _ = match self.enhanced {
                Some(e) => write!(
                    out,
                    "{}{}{} {}\r\n",
                    self.code,
                    sep,
                    e,
                    line.trim_end_matches('\r')
                ),
                None => write!(
                    out,
                    "{}{}{}\r\n",
                    self.code,
                    sep,
                    line.trim_end_matches('\r')
                ),
            };
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let cases: &[(Reply, &str)] = &[
            (Reply::plain(220, "mx ESMTP"), "220 mx ESMTP\r\n"),
            (
                Reply::new(250, Enhanced::new(2, 1, 0), "Ok"),
                "250 2.1.0 Ok\r\n",
            ),
            (
                Reply::plain(250, "mx\nPIPELINING\nSIZE 100"),
                "250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
            ),
            (
                Reply::new(550, Enhanced::new(5, 7, 1), "a\nb"),
                "550-5.7.1 a\r\n550 5.7.1 b\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(reply.to_string(), *wire);
        }
    }

    #[test]
    fn classes() {
        assert!(Reply::plain(354, "go").is_positive());
        assert!(Reply::plain(451, "x").is_transient());
        assert!(Reply::plain(554, "x").is_permanent());
        assert_eq!(Reply::plain(421, "x").class(), 4);
    }
}
