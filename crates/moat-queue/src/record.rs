//! The on-disk record format (sans-IO): framing with two CRC-32C checksums, and the payload
//! codec. See DESIGN.md, "What is on disk".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Marks the start of every record.
pub(crate) const MAGIC: u32 = 0x4D51_5231;
/// Bytes before a record's payload.
pub(crate) const FRAME_LEN: usize = 16;
/// Bytes before a segment's first record.
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
const SEGMENT_MAGIC: &[u8; 8] = b"MOATSEG1";

/// Upper bound on any string field (addresses, replies, origin).
const MAX_STR: usize = 64 * 1024;
/// Upper bound on recipients in one record.
const MAX_RCPTS: usize = 100_000;
/// Longest reply text kept in a status.
pub(crate) const MAX_REPLY: usize = 1000;

const KIND_MESSAGE: u8 = 1;
const KIND_STATUS: u8 = 2;
const KIND_HOLD: u8 = 3;
const KIND_DELETE: u8 = 4;

const FLAG_HELD: u8 = 1;
const FLAG_8BIT: u8 = 2;
const FLAG_SMTPUTF8: u8 = 4;

/// The delivery status of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptStatus {
    /// Not attempted yet; due at once.
    Pending,
    /// A temporary failure; try again at `next_attempt`.
    Deferred {
        /// Failed attempts so far (at least 1).
        attempts: u32,
        /// When the next attempt is due.
        next_attempt: SystemTime,
        /// The last reply or error, for `show` and the DSN.
        reply: String,
    },
    /// Final: a next hop accepted it.
    Delivered {
        /// When.
        at: SystemTime,
        /// The accepting reply.
        reply: String,
    },
    /// Final: refused for good, or expired; a DSN was queued unless the sender was `<>`.
    Bounced {
        /// When.
        at: SystemTime,
        /// The refusing reply or the reason.
        reply: String,
    },
}

impl RcptStatus {
    /// Delivered or bounced: nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RcptStatus::Delivered { .. } | RcptStatus::Bounced { .. }
        )
    }

    /// When this recipient is next due, if it is not final.
    pub fn due(&self, received: SystemTime) -> Option<SystemTime> {
        match self {
            RcptStatus::Pending => Some(received),
            RcptStatus::Deferred { next_attempt, .. } => Some(*next_attempt),
            _ => None,
        }
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        match self {
            RcptStatus::Deferred { attempts, .. } => *attempts,
            _ => 0,
        }
    }

    /// Short lower-case name: `pending`, `deferred`, `delivered`, `bounced`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RcptStatus::Pending => "pending",
            RcptStatus::Deferred { .. } => "deferred",
            RcptStatus::Delivered { .. } => "delivered",
            RcptStatus::Bounced { .. } => "bounced",
        }
    }
}

/// Everything about a message except its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageMeta {
    pub id: u64,
    pub received: SystemTime,
    pub origin: String,
    pub mail_from: String,
    pub rcpts: Vec<(String, RcptStatus)>,
    pub held: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// A decoded record. A Message record's body is located, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Message {
        meta: MessageMeta,
        /// Offset of the body within the payload.
        body_offset: usize,
        body_len: usize,
    },
    Status {
        id: u64,
        rcpt: u32,
        status: RcptStatus,
    },
    Hold {
        id: u64,
        held: bool,
    },
    Delete {
        id: u64,
    },
}

impl Record {
    /// The message this record is about.
    pub fn id(&self) -> u64 {
        match self {
            Record::Message { meta, .. } => meta.id,
            Record::Status { id, .. } | Record::Hold { id, .. } | Record::Delete { id } => *id,
        }
    }
}

/// Truncates to whole milliseconds, the precision kept on disk.
pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The current time at the precision kept on disk.
pub(crate) fn now() -> SystemTime {
    from_ms(to_ms(SystemTime::now()))
}

// ---------------------------------------------------------------- payload encoding

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = truncate_utf8(s, MAX_STR);
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_status(out: &mut Vec<u8>, s: &RcptStatus) {
    match s {
        RcptStatus::Pending => {
            out.push(0);
            put_u32(out, 0);
            put_u64(out, 0);
            put_str(out, "");
        }
        RcptStatus::Deferred {
            attempts,
            next_attempt,
            reply,
        } => {
            out.push(1);
            put_u32(out, *attempts);
            put_u64(out, to_ms(*next_attempt));
            put_str(out, truncate_utf8(reply, MAX_REPLY));
        }
        RcptStatus::Delivered { at, reply } => {
            out.push(2);
            put_u32(out, 0);
            put_u64(out, to_ms(*at));
            put_str(out, truncate_utf8(reply, MAX_REPLY));
        }
        RcptStatus::Bounced { at, reply } => {
            out.push(3);
            put_u32(out, 0);
            put_u64(out, to_ms(*at));
            put_str(out, truncate_utf8(reply, MAX_REPLY));
        }
    }
}

/// Encodes a Message record's payload; returns it and the body's offset within it.
pub(crate) fn encode_message(meta: &MessageMeta, body: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.push(KIND_MESSAGE);
    put_u64(&mut out, meta.id);
    put_u64(&mut out, to_ms(meta.received));
    put_str(&mut out, &meta.origin);
    let flags = (if meta.held { FLAG_HELD } else { 0 })
        | (if meta.eight_bit { FLAG_8BIT } else { 0 })
        | (if meta.smtputf8 { FLAG_SMTPUTF8 } else { 0 });
    out.push(flags);
    put_str(&mut out, &meta.mail_from);
    put_u32(&mut out, meta.rcpts.len() as u32);
    for (addr, status) in &meta.rcpts {
        put_str(&mut out, addr);
        put_status(&mut out, status);
    }
    put_u32(&mut out, body.len() as u32);
    let body_offset = out.len();
    out.extend_from_slice(body);
    (out, body_offset)
}

pub(crate) fn encode_status(id: u64, rcpt: u32, status: &RcptStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(KIND_STATUS);
    put_u64(&mut out, id);
    put_u32(&mut out, rcpt);
    put_status(&mut out, status);
    out
}

pub(crate) fn encode_hold(id: u64, held: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.push(KIND_HOLD);
    put_u64(&mut out, id);
    out.push(u8::from(held));
    out
}

pub(crate) fn encode_delete(id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(KIND_DELETE);
    put_u64(&mut out, id);
    out
}

// ---------------------------------------------------------------- payload decoding

/// Why a payload whose checksums hold could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed(what))?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, what: &'static str) -> Result<String, Malformed> {
        let n = self.u32(what)? as usize;
        if n > MAX_STR {
            return Err(Malformed(what));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed(what))
    }
    fn status(&mut self) -> Result<RcptStatus, Malformed> {
        let kind = self.u8("status kind")?;
        let attempts = self.u32("attempts")?;
        let at = from_ms(self.u64("status time")?);
        let reply = self.str("reply")?;
        Ok(match kind {
            0 => RcptStatus::Pending,
            1 => RcptStatus::Deferred {
                attempts,
                next_attempt: at,
                reply,
            },
            2 => RcptStatus::Delivered { at, reply },
            3 => RcptStatus::Bounced { at, reply },
            _ => return Err(Malformed("status kind")),
        })
    }
    fn done(&self) -> Result<(), Malformed> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

/// Decodes a payload. Never panics, whatever the bytes.
pub(crate) fn decode(payload: &[u8]) -> Result<Record, Malformed> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let rec = match r.u8("kind")? {
        KIND_MESSAGE => {
            let id = r.u64("id")?;
            let received = from_ms(r.u64("received")?);
            let origin = r.str("origin")?;
            let flags = r.u8("flags")?;
            let mail_from = r.str("sender")?;
            let n = r.u32("recipient count")? as usize;
            if n > MAX_RCPTS {
                return Err(Malformed("recipient count"));
            }
            let mut rcpts = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let addr = r.str("recipient")?;
                let status = r.status()?;
                rcpts.push((addr, status));
            }
            let body_len = r.u32("body length")? as usize;
            let body_offset = r.pos;
            r.take(body_len, "body")?;
            Record::Message {
                meta: MessageMeta {
                    id,
                    received,
                    origin,
                    mail_from,
                    rcpts,
                    held: flags & FLAG_HELD != 0,
                    eight_bit: flags & FLAG_8BIT != 0,
                    smtputf8: flags & FLAG_SMTPUTF8 != 0,
                },
                body_offset,
                body_len,
            }
        }
        KIND_STATUS => Record::Status {
            id: r.u64("id")?,
            rcpt: r.u32("recipient index")?,
            status: r.status()?,
        },
        KIND_HOLD => Record::Hold {
            id: r.u64("id")?,
            held: match r.u8("held")? {
                0 => false,
                1 => true,
                _ => return Err(Malformed("held")),
            },
        },
        KIND_DELETE => Record::Delete { id: r.u64("id")? },
        _ => return Err(Malformed("kind")),
    };
    r.done()?;
    Ok(rec)
}

/// Reads only the id of a payload whose checksum failed, for the corruption report.
pub(crate) fn peek_id(payload: &[u8]) -> Option<u64> {
    let b = payload.get(1..9)?;
    if !(KIND_MESSAGE..=KIND_DELETE).contains(payload.first()?) {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

// ---------------------------------------------------------------- framing

pub(crate) fn segment_header(seg: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&seg.to_le_bytes());
    h
}

pub(crate) fn check_segment_header(seg: u64, bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_LEN && bytes[..SEGMENT_HEADER_LEN] == segment_header(seg)
}

fn header_crc(seg: u64, offset: u64, len: u32, pcrc: u32) -> u32 {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&seg.to_le_bytes());
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    b[16..20].copy_from_slice(&len.to_le_bytes());
    b[20..24].copy_from_slice(&pcrc.to_le_bytes());
    crc32c::crc32c(&b)
}

/// CRC-32C of a payload (computed by the caller, outside the committer).
pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// The frame that precedes a payload of `len` bytes at `offset` in segment `seg`.
pub(crate) fn frame(seg: u64, offset: u64, len: u32, pcrc: u32) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..4].copy_from_slice(&MAGIC.to_le_bytes());
    f[4..8].copy_from_slice(&len.to_le_bytes());
    f[8..12].copy_from_slice(&pcrc.to_le_bytes());
    f[12..16].copy_from_slice(&header_crc(seg, offset, len, pcrc).to_le_bytes());
    f
}

/// What was found at an offset of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A whole record whose checksums hold; the payload is `bytes[start..start + len]`.
    Record { start: usize, len: usize },
    /// The header holds but the payload checksum does not; the record spans `len` bytes of
    /// payload after the frame, so scanning may go on after it.
    BadPayload { len: usize },
    /// The file ends inside the frame or the payload.
    Truncated,
    /// No valid frame here.
    BadHeader,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks the record that should start at `offset` of `bytes` (the whole segment).
pub(crate) fn scan_at(seg: u64, bytes: &[u8], offset: usize) -> Scan {
    let Some(f) = bytes.get(offset..offset.saturating_add(FRAME_LEN)) else {
        return Scan::Truncated;
    };
    let len = le32(&f[4..8]);
    let pcrc = le32(&f[8..12]);
    if le32(&f[..4]) != MAGIC || le32(&f[12..16]) != header_crc(seg, offset as u64, len, pcrc) {
        return Scan::BadHeader;
    }
    let start = offset + FRAME_LEN;
    let Some(payload) = bytes.get(start..start.saturating_add(len as usize)) else {
        return Scan::Truncated;
    };
    if payload_crc(payload) != pcrc {
        return Scan::BadPayload { len: len as usize };
    }
    Scan::Record {
        start,
        len: len as usize,
    }
}

/// The offset of the next valid frame after `from`, if any (resynchronisation after damage).
pub(crate) fn resync(seg: u64, bytes: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while at + FRAME_LEN <= bytes.len() {
        let rel = bytes[at..].windows(4).position(|w| w == magic)?;
        let cand = at + rel;
        if cand + FRAME_LEN > bytes.len() {
            return None;
        }
        match scan_at(seg, bytes, cand) {
            Scan::BadHeader => at = cand + 1,
            _ => return Some(cand),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MessageMeta {
        MessageMeta {
            id: 42,
            received: from_ms(1_700_000_000_123),
            origin: "192.0.2.1".into(),
            mail_from: "a@example.org".into(),
            rcpts: vec![
                ("b@example.net".into(), RcptStatus::Pending),
                (
                    "c@example.net".into(),
                    RcptStatus::Deferred {
                        attempts: 2,
                        next_attempt: from_ms(1_700_000_600_000),
                        reply: "451 4.3.0 try later".into(),
                    },
                ),
                (
                    "d@example.net".into(),
                    RcptStatus::Bounced {
                        at: from_ms(1_700_000_000_999),
                        reply: "550 5.1.1 no such user".into(),
                    },
                ),
            ],
            held: true,
            eight_bit: true,
            smtputf8: false,
        }
    }

    #[test]
    fn records_round_trip() {
        let body = b"Subject: x\r\n\r\nhello\r\n";
        let (p, off) = encode_message(&meta(), body);
        let Record::Message {
            meta: m,
            body_offset,
            body_len,
        } = decode(&p).unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!(m, meta());
        assert_eq!(body_offset, off);
        assert_eq!(&p[body_offset..body_offset + body_len], body);

        let cases = [
            Record::Status {
                id: 7,
                rcpt: 3,
                status: RcptStatus::Delivered {
                    at: from_ms(5),
                    reply: "250 ok".into(),
                },
            },
            Record::Hold { id: 8, held: false },
            Record::Delete { id: 9 },
        ];
        for rec in cases {
            let p = match &rec {
                Record::Status { id, rcpt, status } => encode_status(*id, *rcpt, status),
                Record::Hold { id, held } => encode_hold(*id, *held),
                Record::Delete { id } => encode_delete(*id),
                Record::Message { .. } => unreachable!(),
            };
            assert_eq!(decode(&p).unwrap(), rec);
            assert_eq!(peek_id(&p), Some(rec.id()));
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        let (p, _) = encode_message(&meta(), b"body");
        for n in 0..p.len() {
            assert!(decode(&p[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0xFF;
            let _ = decode(&q); // may or may not decode; must not panic
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, as a payload or as a whole segment, never panic the decoder or
        /// the scanner, and the scanner always makes progress.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
            let _ = peek_id(&bytes);
            let mut at = SEGMENT_HEADER_LEN;
            while at < bytes.len() {
                at = match scan_at(1, &bytes, at) {
                    Scan::Record { start, len } => start + len,
                    Scan::BadPayload { len } => at + FRAME_LEN + len,
                    Scan::Truncated => bytes.len(),
                    Scan::BadHeader => resync(1, &bytes, at + 1).unwrap_or(bytes.len()),
                };
            }
        }
    }

    #[test]
    fn frames_bind_to_segment_and_offset() {
        let payload = encode_delete(1);
        let pcrc = payload_crc(&payload);
        let mut seg = segment_header(3).to_vec();
        let off = seg.len();
        seg.extend_from_slice(&frame(3, off as u64, payload.len() as u32, pcrc));
        seg.extend_from_slice(&payload);
        assert_eq!(
            scan_at(3, &seg, off),
            Scan::Record {
                start: off + FRAME_LEN,
                len: payload.len()
            }
        );
        // The same bytes read as another segment, or at another offset, are not a record.
        assert_eq!(scan_at(4, &seg, off), Scan::BadHeader);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&seg);
        assert_eq!(scan_at(3, &shifted, off + 1), Scan::BadHeader);
        assert_eq!(resync(3, &shifted, 0), None);
        // A flipped payload byte is caught by the payload checksum.
        let mut bad = seg.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            scan_at(3, &bad, off),
            Scan::BadPayload { len: payload.len() }
        );
        // Cut short.
        assert_eq!(scan_at(3, &seg[..seg.len() - 1], off), Scan::Truncated);
        assert_eq!(scan_at(3, &seg[..off + 5], off), Scan::Truncated);
        // Resync finds the record after garbage.
        assert_eq!(resync(3, &seg, SEGMENT_HEADER_LEN), Some(off));
        assert!(check_segment_header(3, &seg));
        assert!(!check_segment_header(2, &seg));
    }
}
