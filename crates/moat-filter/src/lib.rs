//! Moat's content filter: the MIME walk, one scan of the compiled rule automata per target,
//! scores and verdicts.
//!
//! - [`extract()`]: a message and its envelope → [`moat_rules::Targets`], with explicit
//!   [`Limits`] (depth, parts, decoded bytes) so a MIME bomb gets a definite verdict, and
//!   scan size limits per part so a huge text part costs a bounded scan.
//! - [`scan_message`]: extract + scan + thresholds → [`Outcome`]; pure and synchronous.
//! - [`ContentFilter`]: the [`moat_core::Stage`] (end of DATA) over a [`moat_rules::RuleStore`].
//! - [`cli`]: `moat scan` and `moat rules check` as library calls.
//!
//! ```
//! use moat_filter::{EnvelopeFacts, FilterConfig, scan_message};
//! use moat_rules::{Action, CompileOptions};
//!
//! let rules = moat_rules::compile_str(r#"
//! [pack]
//! name = "demo"
//! version = "1"
//! [thresholds]
//! reject = 5.0
//! [[rule]]
//! id = "BAD_HOST"
//! target = "url-host"
//! literals = ["evil.example"]
//! score = 5.0
//! "#, &CompileOptions::default()).unwrap();
//! let msg = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<a href=\"http://EVIL.example/x\">x</a>\r\n";
//! let outcome = scan_message(&rules, msg, &EnvelopeFacts::default(), &FilterConfig::default(), None);
//! assert_eq!(outcome.action, Action::Reject);
//! ```

pub mod cli;
mod error;
mod extract;
mod stage;
mod urls;

pub use error::Error;
pub use extract::{EnvelopeFacts, Extracted, LimitExceeded, Limits, MimeExtractor, extract};
pub use stage::{ContentFilter, FilterConfig, Outcome, scan_message, verdict};
