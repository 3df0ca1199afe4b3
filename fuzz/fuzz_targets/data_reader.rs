//! DATA reception and command parsing: any bytes, any chunking.
//!
//! Invariants: feeding the input in chunks gives the same content, end position and flaws as
//! feeding it whole; the terminator is found only after a CRLF; clean content ends in CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_smtp::data::{DataReader, Progress};

fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, moat_smtp::data::ContentFlaws) {
    let mut r = DataReader::new(1000, 4096);
    let mut out = Vec::new();
    let mut offset = 0;
    for c in input.chunks(chunk.max(1)) {
        match r.feed(c, &mut out) {
            Progress::NeedMore => offset += c.len(),
            Progress::Done { consumed } => {
                assert!(consumed <= c.len());
                return (out, Some(offset + consumed), r.flaws());
            }
        }
    }
    (out, None, r.flaws())
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = data[0] as usize % 17 + 1;
    let input = &data[1..];
    let whole = run(input, input.len().max(1));
    let split = run(input, chunk);
    assert_eq!(whole, split);
    if let (content, Some(end), flaws) = &whole {
        let terminated = &input[..*end];
        assert!(terminated.ends_with(b".\r\n"));
        assert!(*end == 3 || terminated[..end - 3].ends_with(b"\r\n"));
        if flaws.is_clean() && !content.is_empty() {
            assert!(content.ends_with(b"\r\n"));
        }
    }
    // Command parsing of every line never panics.
    for line in input.split_inclusive(|&b| b == b'\n') {
        let _ = smtp_proto::Request::parse(&mut line.iter());
    }
});
