//! What both sides of remote execution share: the scheduler checks an action before it queues
//! it, the worker checks it again before it runs it, and both must judge it alike.
//!
//! * [`digest`]: wire digests to and from [`scoot_core::Digest`], and the digest-function check
//!   (only SHA-256 is served).
//! * [`rules`]: what names, paths, symlinks and Commands must satisfy, as pure functions.
//! * [`status`]: `google.rpc.Status` helpers, including the FAILED_PRECONDITION answer that lists
//!   every missing blob.
//! * [`platform`]: platform properties, what an action asks for and what a worker offers, and
//!   the one matching of the two.
//! * [`inputs`]: the one check of an action's Command and input tree, over any [`BlobSource`]
//!   (the scheduler's own blob store in-process, a worker's CAS client level by level).
//!
//! Rules both sides keep:
//! * An Action must name its input root: a missing `input_root_digest` is INVALID_ARGUMENT, as
//!   is a missing `command_digest` (REAPI marks both required; an empty input root is the empty
//!   Directory's digest, which clients send).
//! * Action, Command and Directory messages are read whole into memory, so none may be larger
//!   than [`MAX_MESSAGE_BYTES`] (16 MiB, the gRPC message size the CAS accepts and the largest
//!   Directory its GetTree serves); a digest claiming more is INVALID_ARGUMENT before anything
//!   is read.

pub mod digest;
pub mod inputs;
pub mod platform;
pub mod rules;
pub mod status;

pub use inputs::{BlobSource, CheckedInputs, InputTree, InputsError, MAX_MESSAGE_BYTES};

/// Request metadata a sharded CAS's router sends with GetActionResult: answer the stored entry
/// without checking that its blobs are in this server's CAS. A shard holds only its share of
/// them; the router checks them across every shard itself before it calls anything a hit.
pub const UNCHECKED_RESULT_METADATA: &str = "x-scoot-unchecked-result";

/// Why an action or a request is malformed (INVALID_ARGUMENT for the client).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> tonic::Status {
        tonic::Status::invalid_argument(e.0)
    }
}
