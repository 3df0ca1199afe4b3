//! Sans-IO reception of message content: the DATA terminator, dot-unstuffing, and the
//! checks that make SMTP smuggling impossible.
//!
//! A message received with DATA ends only on `<CRLF>.<CRLF>`. A bare LF or a bare CR is never
//! a line ending here: `<LF>.<LF>`, `<LF>.<CRLF>` or `<CR>.<CR>` inside the data are just
//! content, and the message that carries them is refused as a whole (RFC 5321 §2.3.8), so no
//! byte after such a sequence can be read as a command by us or by a next hop that parses line
//! endings more loosely (the CVE-2023-51766 class).
//!
//! [`DataReader`] consumes bytes as they arrive and says how many it used; leftover bytes
//! (pipelined commands after the terminator) stay with the caller. [`ContentChecker`] applies
//! the same line rules to BDAT chunks, which carry no dot-stuffing.

use memchr::memchr2;

/// Why received content cannot be accepted. Checked once the content has ended, so the
/// session stays in step with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentFlaws {
    /// A CR not followed by LF, or an LF not preceded by CR.
    pub bare_line_ending: bool,
    /// A line longer than the limit.
    pub line_too_long: bool,
    /// More octets than the size limit; the excess was discarded.
    pub too_big: bool,
}

impl ContentFlaws {
    /// No flaw found.
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }
}

/// Line and size checks over content without dot-stuffing (BDAT chunks, or DATA after
/// unstuffing). Keeps state across chunks.
#[derive(Debug)]
pub struct ContentChecker {
    max_line: usize,
    max_size: usize,
    line_len: usize,
    prev_cr: bool,
    size: usize,
    flaws: ContentFlaws,
}

impl ContentChecker {
    /// `max_line` counts the CRLF (1000 in RFC 5321); `max_size` in octets.
    pub fn new(max_line: usize, max_size: usize) -> Self {
        Self {
            max_line,
            max_size,
            line_len: 0,
            prev_cr: false,
            size: 0,
            flaws: ContentFlaws::default(),
        }
    }

    /// Octets seen so far (kept or not).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Flaws seen so far. A trailing CR at the very end counts as bare.
    pub fn flaws(&self) -> ContentFlaws {
        let mut f = self.flaws;
        if self.prev_cr {
            f.bare_line_ending = true;
        }
        f
    }

    /// Checks `chunk` and appends it to `out` while the size limit allows.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.size += chunk.len();
        if self.size > self.max_size {
            self.flaws.too_big = true;
        } else {
            out.extend_from_slice(chunk);
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.prev_cr {
                self.prev_cr = false;
                if rest[0] == b'\n' {
                    self.line_len = 0;
                    rest = &rest[1..];
                    continue;
                }
                self.flaws.bare_line_ending = true;
                // The bare CR counted as content of the line.
                self.line_len += 1;
            }
            match memchr2(b'\r', b'\n', rest) {
                None => {
                    self.add_line_octets(rest.len());
                    return;
                }
                Some(pos) => {
                    self.add_line_octets(pos);
                    if rest[pos] == b'\r' {
                        self.prev_cr = true;
                    } else {
                        self.flaws.bare_line_ending = true;
                        self.line_len += 1;
                    }
                    rest = &rest[pos + 1..];
                }
            }
        }
    }

    fn add_line_octets(&mut self, n: usize) {
        self.line_len += n;
        // The limit includes the CRLF.
        if self.line_len + 2 > self.max_line {
            self.flaws.line_too_long = true;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Text,
}

/// Result of [`DataReader::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; more is needed.
    NeedMore,
    /// The terminator was found after `consumed` octets of the input.
    Done {
        /// Octets of the input used, terminator included.
        consumed: usize,
    },
}

/// Receives DATA content: finds `<CRLF>.<CRLF>`, removes dot-stuffing and checks lines.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    checker: ContentChecker,
}

impl DataReader {
    /// A reader for one message.
    pub fn new(max_line: usize, max_size: usize) -> Self {
        Self {
            state: State::LineStart,
            checker: ContentChecker::new(max_line, max_size),
        }
    }

    /// Flaws found in the content; meaningful once [`Progress::Done`] was returned.
    pub fn flaws(&self) -> ContentFlaws {
        self.checker.flaws()
    }

    /// Octets of message content seen (after unstuffing).
    pub fn size(&self) -> usize {
        self.checker.size()
    }

    /// Consumes `input`, appending unstuffed content (with its final CRLF) to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart | State::Text => {
                    if self.state == State::LineStart && input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                        continue;
                    }
                    // Copy up to and including the next LF in one go.
                    let rest = &input[i..];
                    let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
                    let span = &rest[..end];
                    self.checker.push(span, out);
                    i += end;
                    self.state = if span.ends_with(b"\r\n") {
                        State::LineStart
                    } else {
                        State::Text
                    };
                    // A CRLF split across reads: the CR ended the last span, the LF starts this.
                    if span == b"\n" && self.checker_ended_line() {
                        self.state = State::LineStart;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // A stuffed dot: drop it, the rest is an ordinary line.
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        return Progress::Done { consumed: i + 1 };
                    }
                    // `.` CR x: the dot was stuffing, the CR is content (and bare).
                    self.checker.push(b"\r", out);
                    self.state = State::Text;
                }
            }
        }
        Progress::NeedMore
    }

    /// True when the checker's last octets were a CRLF (the line ended).
    fn checker_ended_line(&self) -> bool {
        !self.checker.prev_cr && self.checker.line_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>, ContentFlaws) {
        let mut r = DataReader::new(1000, 1 << 20);
        let mut out = Vec::new();
        let mut consumed_total = 0;
        for c in chunks {
            match r.feed(c, &mut out) {
                Progress::NeedMore => consumed_total += c.len(),
                Progress::Done { consumed } => {
                    return (out, Some(consumed_total + consumed), r.flaws());
                }
            }
        }
        (out, None, r.flaws())
    }

    #[test]
    fn terminator_and_unstuffing() {
        // (input chunks, content, octets consumed, clean)
        type Case<'a> = (&'a [&'a [u8]], &'a [u8], Option<usize>, bool);
        let cases: &[Case<'_>] = &[
            (&[b"a\r\n.\r\n"], b"a\r\n", Some(6), true),
            (&[b".\r\n"], b"", Some(3), true),
            (&[b"..x\r\n.\r\n"], b".x\r\n", Some(8), true),
            (&[b"a\r", b"\n.", b"\r", b"\n"], b"a\r\n", Some(6), true),
            (&[b"a\r\n.\r\nQUIT\r\n"], b"a\r\n", Some(6), true),
            // Bare LF before or after the dot never ends the message.
            (
                &[b"a\n.\nMAIL FROM:<x>\r\n.\r\n"],
                b"a\n.\nMAIL FROM:<x>\r\n",
                Some(22),
                false,
            ),
            (&[b"a\n.\r\nb\r\n.\r\n"], b"a\n.\r\nb\r\n", Some(11), false),
            (&[b"a\r\n.\nb\r\n.\r\n"], b"a\r\n\nb\r\n", Some(11), false),
            (&[b"a\r.\rb\r\n.\r\n"], b"a\r.\rb\r\n", Some(10), false),
            (&[b"a\r\n.\rb\r\n.\r\n"], b"a\r\n\rb\r\n", Some(11), false),
            (&[b"a\r\n.\r"], b"a\r\n", None, true),
        ];
        for (chunks, content, consumed, clean) in cases {
            let (out, used, flaws) = run(chunks);
            assert_eq!(&out, content, "content for {chunks:?}");
            assert_eq!(used, *consumed, "consumed for {chunks:?}");
            if consumed.is_some() {
                assert_eq!(flaws.is_clean(), *clean, "flaws for {chunks:?}: {flaws:?}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let msg: &[u8] = b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\n";
        let whole = run(&[msg]);
        let bytes: Vec<&[u8]> = msg.chunks(1).collect();
        assert_eq!(run(&bytes), whole);
        assert_eq!(whole.0, b"Subject: x\r\n\r\n.dot\r\nline\r\n");
    }

    #[test]
    fn line_and_size_limits() {
        let long = [b'x'; 999];
        let mut r = DataReader::new(1000, 1 << 20);
        let mut out = Vec::new();
        r.feed(&long, &mut out);
        r.feed(b"\r\n.\r\n", &mut out);
        assert!(r.flaws().line_too_long);

        let mut r = DataReader::new(1000, 1 << 20);
        let mut out = Vec::new();
        r.feed(&long[..998], &mut out);
        assert_eq!(
            r.feed(b"\r\n.\r\n", &mut out),
            Progress::Done { consumed: 5 }
        );
        assert!(r.flaws().is_clean());

        let mut r = DataReader::new(1000, 10);
        let mut out = Vec::new();
        assert_eq!(
            r.feed(b"0123456789abc\r\n.\r\n", &mut out),
            Progress::Done { consumed: 18 }
        );
        assert!(r.flaws().too_big);
        assert!(out.len() <= 10);
    }

    #[test]
    fn bdat_checker() {
        let mut c = ContentChecker::new(1000, 100);
        let mut out = Vec::new();
        c.push(b"a\r", &mut out);
        c.push(b"\nb\r\n", &mut out);
        assert!(c.flaws().is_clean());
        c.push(b"c\nd\r\n", &mut out);
        assert!(c.flaws().bare_line_ending);
        let mut c = ContentChecker::new(1000, 100);
        c.push(b"a\r", &mut out);
        assert!(c.flaws().bare_line_ending, "trailing CR at the end is bare");
    }
}
