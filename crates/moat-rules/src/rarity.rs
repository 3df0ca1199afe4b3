//! How often a byte string is expected to occur in ordinary mail text: the measure the
//! compiler uses to choose prefilter factors.
//!
//! A factor's cost is the number of automaton hits it causes, and each hit may cost a
//! regex search; so the best factor set is the one expected to occur least, not simply
//! the one with the longest literal (`" the "` is five bytes and among the most common
//! strings in mail). Both estimates below come from a small reference text of ordinary
//! mail written for this purpose (`background.txt`: prose, a receipt, a newsletter, HTML
//! markup and links), and the larger is used:
//!
//! - how often the string itself occurs there, which catches common words, suffixes and
//!   markup;
//! - a first-order Markov model of its bytes (each byte's frequency after the one before,
//!   smoothed towards English letter frequencies), which ranks strings the text does not
//!   hold: `"one"` is far commoner than its letters' frequencies multiplied.
//!
//! Both see text folded like the literal search sees it (ASCII case and white space,
//! [`crate::literals::canon`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::literals::canonical;

/// Ordinary mail text, written for this estimate (not taken from any corpus).
pub(crate) const REFERENCE: &str = include_str!("background.txt");

/// Header blocks of ordinary mail, written for this estimate: in headers, `from: `,
/// `received: ` and `content-type: ` occur in every message, though prose rarely holds them.
const HEADER_REFERENCE: &str = include_str!("background-headers.txt");

/// HTML markup of ordinary mail (a newsletter, a reply written in Outlook, one in a web
/// mailer, an old shop's receipt), written for this estimate: in markup, `<`, `>`, `="`,
/// `<a href=` and `<font ` are everywhere, though mail text rarely holds them.
const MARKUP_REFERENCE: &str = include_str!("background-html.txt");

/// The kind of text a literal is searched in, which decides how common it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// Bodies, subjects, names, links: the mail text model alone.
    Text,
    /// Header lines and header blocks: also counted in typical header blocks.
    Headers,
    /// HTML markup as written (`html-raw`): also counted in typical HTML mail.
    Markup,
}

thread_local! {
    static CONTEXT: Cell<Context> = const { Cell::new(Context::Text) };
}

/// Runs `f` with literals priced for `ctx` on this thread (the factor analysis is deep and
/// recursive; this keeps the context out of every signature on the way).
pub(crate) fn priced_for<T>(ctx: Context, f: impl FnOnce() -> T) -> T {
    struct Restore(Context);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONTEXT.set(self.0);
        }
    }
    let _restore = Restore(CONTEXT.replace(ctx));
    f()
}

/// Longest substring counted in the reference text; longer strings use their rarest
/// substring of this length.
const MAX_GRAM: usize = 8;

/// Rough frequency of a byte in mail text, per 10,000 bytes (English letter frequencies,
/// upper case a tenth of lower case, punctuation and symbols guessed low).
pub(crate) fn frequency(b: u8) -> u32 {
    const LOWER: [u32; 26] = [
        650, 120, 230, 320, 1000, 180, 150, 450, 600, 10, 60, 330, 200, 580, 620, 160, 8, 500, 530,
        700, 230, 80, 150, 15, 140, 6,
    ];
    match b {
        b' ' => 1500,
        b'a'..=b'z' => LOWER[usize::from(b - b'a')],
        b'A'..=b'Z' => LOWER[usize::from(b - b'A')] / 10 + 1,
        b'0'..=b'9' => 50,
        b'\n' => 200,
        b'.' | b',' | b'\r' => 100,
        b'-' | b'=' => 50,
        b':' | b'/' | b'<' | b'>' => 30,
        b'"' | b'\'' | b'\t' => 20,
        b'(' | b')' | b'_' | b'!' | b'?' | b'&' | b';' => 10,
        b'@' | b'*' | b'#' => 5,
        b'$' | b'%' => 3,
        0x80..=0xff => 10,
        _ => 2,
    }
}

/// Occurrences of every substring of 1 to `MAX_GRAM` bytes of a folded text.
struct Grams {
    counts: HashMap<Box<[u8]>, u32>,
    kib: f64,
}

impl Grams {
    fn of(text: &[u8]) -> Grams {
        let mut counts: HashMap<Box<[u8]>, u32> = HashMap::new();
        for i in 0..text.len() {
            for n in 1..=MAX_GRAM.min(text.len() - i) {
                *counts.entry(text[i..i + n].into()).or_default() += 1;
            }
        }
        Grams {
            counts,
            kib: text.len() as f64 / 1024.0,
        }
    }

    /// Occurrences per KiB of the folded `lower`: those of its rarest substring of
    /// `MAX_GRAM` bytes when it is longer.
    fn per_kib(&self, lower: &[u8]) -> f64 {
        let seen = lower
            .windows(lower.len().clamp(1, MAX_GRAM))
            .map(|w| self.counts.get(w).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        f64::from(seen) / self.kib
    }
}

/// The second reference of a context: typical header blocks, or typical HTML markup.
fn context_grams(ctx: Context) -> Option<&'static Grams> {
    static HEADERS: OnceLock<Grams> = OnceLock::new();
    static MARKUP: OnceLock<Grams> = OnceLock::new();
    let (cell, text) = match ctx {
        Context::Text => return None,
        Context::Headers => (&HEADERS, HEADER_REFERENCE),
        Context::Markup => (&MARKUP, MARKUP_REFERENCE),
    };
    Some(cell.get_or_init(|| Grams::of(&canonical(text.as_bytes()))))
}

/// Frequency of a byte per 10,000 bytes of the text a literal is priced for: in headers
/// and markup, also as counted in their reference (`@`, `<` and `:` are in every address
/// and every line of a header block; `<`, `>`, `=` and `"` in every tag).
pub(crate) fn byte_frequency(b: u8) -> u32 {
    let f = frequency(b);
    let Some(g) = context_grams(CONTEXT.get()) else {
        return f;
    };
    let n = g
        .counts
        .get(&[crate::literals::canon(b)][..])
        .copied()
        .unwrap_or(0);
    f.max((f64::from(n) * 10_000.0 / (g.kib * 1024.0)) as u32)
}

struct Model {
    /// Occurrences of every lower-cased substring of 1 to `MAX_GRAM` bytes.
    grams: Grams,
    /// Probability of each byte.
    unigram: Vec<f64>,
    /// Probability of each byte after each byte (`256 * before + after`).
    bigram: Vec<f64>,
}

/// Weight, in bytes of text, of the letter-frequency prior in the byte probabilities.
const PRIOR_BYTES: f64 = 50.0;
/// Weight, in occurrences, of the byte probability in each byte's successor probabilities.
const PRIOR_PAIRS: f64 = 5.0;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let text = canonical(REFERENCE.as_bytes());
        let grams = Grams::of(&text);
        let mut ones = vec![0f64; 256];
        let mut pairs = vec![0f64; 256 * 256];
        for &b in &text {
            ones[usize::from(b)] += 1.0;
        }
        for w in text.windows(2) {
            pairs[256 * usize::from(w[0]) + usize::from(w[1])] += 1.0;
        }
        let prior: Vec<f64> = (0..=255u8)
            .map(|b| f64::from(folded_frequency(b)) / 10_000.0)
            .collect();
        let n = text.len() as f64;
        let unigram: Vec<f64> = (0..256)
            .map(|b| (ones[b] + PRIOR_BYTES * prior[b]) / (n + PRIOR_BYTES))
            .collect();
        let mut bigram = vec![0f64; 256 * 256];
        for a in 0..256 {
            for b in 0..256 {
                bigram[256 * a + b] =
                    (pairs[256 * a + b] + PRIOR_PAIRS * unigram[b]) / (ones[a] + PRIOR_PAIRS);
            }
        }
        Model {
            grams,
            unigram,
            bigram,
        }
    })
}

/// Frequency of a byte as the literal search sees it, per 10,000 bytes: the sum over the
/// bytes it folds from (both cases of a letter; every white-space byte for a space).
fn folded_frequency(b: u8) -> u32 {
    (0..=255u8)
        .filter(|&x| crate::literals::canon(x) == b)
        .map(frequency)
        .sum()
}

/// Expected occurrences of `lit` per KiB of mail text (and of header blocks or HTML markup,
/// for literals priced for those), both folded as the literal search folds them.
pub(crate) fn per_kib(lit: &[u8]) -> f64 {
    let lower = canonical(lit);
    let Some((&first, _)) = lower.split_first() else {
        return 1024.0;
    };
    let m = model();
    let chain = lower
        .windows(2)
        .fold(m.unigram[usize::from(first)], |p, w| {
            p * m.bigram[256 * usize::from(w[0]) + usize::from(w[1])]
        });
    let mut estimate = (1024.0 * chain).max(m.grams.per_kib(&lower));
    if let Some(g) = context_grams(CONTEXT.get()) {
        estimate = estimate.max(g.per_kib(&lower));
    }
    if lower.len() >= 2 && lower.iter().all(|&b| b == first) {
        // A run of one byte (`"        "`, `"----"`) occurs at every offset of every longer
        // run in the text: a storm of overlapping hits that the estimate does not see.
        return estimate.max(RUN_PER_KIB);
    }
    estimate
}

/// Least cost of a literal that repeats one byte: above the most a regex's factors may
/// cost, so such a literal is never chosen as a factor.
const RUN_PER_KIB: f64 = 32.0;

/// Least cost counted for one literal: every literal also makes the literal search larger
/// and slower, so many rare variants (`unsubscribe` with each `s` also as LONG S, say) do
/// not beat one literal (`cribe`) that is only a little commoner.
const LITERAL_FLOOR: f64 = 0.05;

/// Cost of a set of literals as a prefilter: its expected automaton hits per KiB, each
/// literal counting at least [`LITERAL_FLOOR`].
pub(crate) fn set_per_kib<'a>(lits: impl IntoIterator<Item = &'a [u8]>) -> f64 {
    lits.into_iter()
        .map(|l| per_kib(l).max(LITERAL_FLOOR))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_words_cost_more_than_rare_ones() {
        let order = [" the", "ing ", "your", "mail", "click", "money", "viagra"];
        for w in order.windows(2) {
            assert!(
                per_kib(w[0].as_bytes()) > per_kib(w[1].as_bytes()),
                "{:?} ({}) should be more common than {:?} ({})",
                w[0],
                per_kib(w[0].as_bytes()),
                w[1],
                per_kib(w[1].as_bytes())
            );
        }
        // Case does not matter; a longer string is never more common than its rarest part.
        assert_eq!(per_kib(b"The"), per_kib(b"tHE"));
        assert!(per_kib(b"the end of the month") <= per_kib(b" the "));
    }

    #[test]
    fn header_names_are_common_in_headers_only() {
        let text = |l: &[u8]| per_kib(l);
        let headers = |l: &[u8]| priced_for(Context::Headers, || per_kib(l));
        for common in [&b"\nFrom: "[..], b"\nMIME-Version: ", b"\nReceived: "] {
            assert!(
                headers(common) > 0.5,
                "{:?}",
                String::from_utf8_lossy(common)
            );
            assert!(text(common) < headers(common) / 4.0);
        }
        // A header most messages lack stays rare, so it is the factor to choose.
        assert!(headers(b"\nX-Priority: ") < headers(b"\nFrom: ") / 10.0);
        // The context ends with the call.
        assert_eq!(per_kib(b"\nFrom: "), text(b"\nFrom: "));
    }

    #[test]
    fn markup_is_common_in_markup_only() {
        let text = |l: &[u8]| per_kib(l);
        let markup = |l: &[u8]| priced_for(Context::Markup, || per_kib(l));
        for common in [&b"<td"[..], b" style=\"", b"</div>", b"<span"] {
            assert!(
                markup(common) > 0.5,
                "{:?}",
                String::from_utf8_lossy(common)
            );
            assert!(
                text(common) < markup(common) / 4.0,
                "{:?}: {} in text, {} in markup",
                String::from_utf8_lossy(common),
                text(common),
                markup(common)
            );
        }
        // A tag that ordinary mail seldom writes stays rare.
        assert!(markup(b"<iframe") < markup(b"<td") / 10.0);
        // Tag brackets are rare bytes in text, not in markup.
        let markup_byte = |b: u8| priced_for(Context::Markup, || byte_frequency(b));
        assert!(byte_frequency(b'<') <= 40);
        assert!(markup_byte(b'<') > 100 && markup_byte(b'>') > 100);
    }
}
