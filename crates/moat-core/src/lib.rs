//! Moat's shared vocabulary, used by every stage crate and by the binary.
//!
//! - [`Reply`]: an SMTP reply as a typed value (`code`, enhanced status, text).
//! - [`Envelope`] and [`SessionInfo`]: what a stage may look at.
//! - [`Verdict`] and [`Stage`]: the one trait every hygiene stage implements.
//! - [`MessageStore`]: where an accepted message is made durable before the 250 reply.
//! - [`Shutdown`]: the signal handed to every long-running service.
//!
//! This crate does no I/O.
//!
//! ```
//! use moat_core::{Enhanced, Reply};
//! let r = Reply::new(550, Enhanced::new(5, 7, 1), "Relay access denied");
//! assert_eq!(r.to_string(), "550 5.7.1 Relay access denied\r\n");
//! assert!(r.is_permanent());
//! ```

mod envelope;
mod net;
mod reply;
mod shutdown;
mod stage;
mod store;

pub use envelope::{Envelope, SessionInfo, TlsInfo};
pub use net::{canonical, client_net};
pub use reply::{Enhanced, Reply};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use stage::{PerConnector, Phase, Stage, StageFuture, Verdict};
pub use store::{MessageStore, QueueId, StoreError, StoreFuture};
