//! Generated gRPC types (prost messages, tonic clients and servers) for the APIs scoot-rs serves.
//!
//! The `.proto` files live in the repository's top-level `proto/` directory and are compiled by
//! this crate's build script with a vendored protoc, so nothing needs to be installed. Bytes
//! fields are [`bytes::Bytes`], so blob data moves without copies. The well-known
//! `google.protobuf` types are [`prost_types`].
//!
//! The generated modules mirror the proto packages ([`build`], [`google`]); the short paths
//! below are what the rest of the workspace uses:
//!
//! * [`reapi::v2`]: `build.bazel.remote.execution.v2` (Execution, ActionCache,
//!   ContentAddressableStorage, Capabilities and their messages).
//! * [`bytestream`]: `google.bytestream` (ByteStream).
//! * [`longrunning`]: `google.longrunning` (Operations, Operation).
//! * [`rpc`]: `google.rpc` (Status, Code, PreconditionFailure, ...).
//! * [`semver`]: `build.bazel.semver` (SemVer).
//! * [`raw`]: servers for ActionCache and ContentAddressableStorage that keep client-supplied
//!   protos as bytes (what scoot-rs serves; clients use the standard ones).

mod debug;
pub mod raw;

/// Everything prost and tonic generated from `proto/`, laid out by proto package.
#[allow(clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

pub use generated::{build, google};

/// `build.bazel.remote.execution.v2`.
pub mod reapi {
    pub use crate::build::bazel::remote::execution::v2;
}
pub use build::bazel::semver;
pub use google::{bytestream, longrunning, rpc};
pub use prost_types;

/// The name of the binary gRPC header carrying a [`reapi::v2::RequestMetadata`].
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// The type URL under which a message is packed into a `google.protobuf.Any`.
pub fn type_url(full_name: &str) -> String {
    format!("type.googleapis.com/{full_name}")
}
