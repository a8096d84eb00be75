//! Scoot's shared vocabulary.
//!
//! Every other crate speaks in these types: the state of a run ([`RunState`]) and sets of states
//! ([`StateMask`]), what a worker reports about a run ([`RunStatus`]) and about itself
//! ([`ServiceStatus`]), what it is asked to run ([`Command`]), how statuses are looked up
//! ([`Query`], [`Wait`]), Scoot's reserved exit codes ([`exit_code`]) and content digests
//! ([`Digest`]), and [`error_chain`] for reporting errors with their causes.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of Thrift, gRPC or processes;
//! wire types are converted to and from these at the crate that owns the wire.

mod command;
mod digest;
mod error_chain;
pub mod exit_code;
mod query;
mod state;
mod status;

pub use command::{Command, LogTags, PlatformProperty};
pub use digest::{Digest, DigestError, EMPTY_SHA256};
pub use error_chain::error_chain;
pub use query::{Query, Wait};
pub use state::{RunState, StateMask};
pub use status::{RunId, RunStatus, ServiceStatus};
