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

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::literals::canonical;

/// Ordinary mail text, written for this estimate (not taken from any corpus).
pub(crate) const REFERENCE: &str = include_str!("background.txt");

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

struct Model {
    /// Occurrences of every lower-cased substring of 1 to `MAX_GRAM` bytes.
    grams: HashMap<Box<[u8]>, u32>,
    /// Probability of each byte.
    unigram: Vec<f64>,
    /// Probability of each byte after each byte (`256 * before + after`).
    bigram: Vec<f64>,
    kib: f64,
}

/// Weight, in bytes of text, of the letter-frequency prior in the byte probabilities.
const PRIOR_BYTES: f64 = 50.0;
/// Weight, in occurrences, of the byte probability in each byte's successor probabilities.
const PRIOR_PAIRS: f64 = 5.0;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let text = canonical(REFERENCE.as_bytes());
        let mut grams: HashMap<Box<[u8]>, u32> = HashMap::new();
        for i in 0..text.len() {
            for n in 1..=MAX_GRAM.min(text.len() - i) {
                *grams.entry(text[i..i + n].into()).or_default() += 1;
            }
        }
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
            kib: n / 1024.0,
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

/// Expected occurrences of `lit` per KiB of mail text, both folded as the literal search
/// folds them.
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
    let seen = lower
        .windows(lower.len().min(MAX_GRAM))
        .map(|w| m.grams.get(w).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    let estimate = (1024.0 * chain).max(f64::from(seen) / m.kib);
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
}
