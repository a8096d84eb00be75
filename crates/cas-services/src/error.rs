//! [`CasError`]: the one error type of the services, carrying the gRPC code it is reported with.

use std::fmt;

use scoot_blobstore::BlobError;
use scoot_proto::rpc;
use scoot_reapi::Invalid;
use scoot_reapi::status::rpc_status;
use tonic::{Code, Status};

/// An error with the gRPC [`Code`] it goes out as and a trail of messages, most specific first
/// (context added on the way out is appended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasError {
    pub code: Code,
    pub messages: Vec<String>,
}

impl CasError {
    pub fn new(code: Code, message: impl Into<String>) -> CasError {
        CasError {
            code,
            messages: vec![message.into()],
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> CasError {
        CasError::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> CasError {
        CasError::new(Code::NotFound, message)
    }

    pub fn out_of_range(message: impl Into<String>) -> CasError {
        CasError::new(Code::OutOfRange, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> CasError {
        CasError::new(Code::Unimplemented, message)
    }

    pub fn internal(message: impl Into<String>) -> CasError {
        CasError::new(Code::Internal, message)
    }

    /// Adds what was being done when the error happened.
    pub fn context(mut self, message: impl Into<String>) -> CasError {
        self.messages.push(message.into());
        self
    }

    /// The error as a `google.rpc.Status`, for per-item statuses in batch responses.
    pub fn to_rpc_status(&self) -> rpc::Status {
        rpc_status(self.code, self.to_string())
    }
}

impl fmt::Display for CasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.messages.join(": "))
    }
}

impl std::error::Error for CasError {}

impl From<Invalid> for CasError {
    fn from(e: Invalid) -> CasError {
        CasError::invalid_argument(e.0)
    }
}

impl From<BlobError> for CasError {
    fn from(e: BlobError) -> CasError {
        let code = match &e {
            BlobError::NotFound(_) => Code::NotFound,
            BlobError::DigestMismatch { .. } => Code::InvalidArgument,
            BlobError::Corrupt { .. } => Code::DataLoss,
            BlobError::OffsetOutOfRange { .. } => Code::OutOfRange,
            BlobError::TooLarge(_) => Code::ResourceExhausted,
            BlobError::Lock(_) | BlobError::Io(_) => Code::Internal,
        };
        CasError::new(code, e.to_string())
    }
}

impl From<CasError> for Status {
    fn from(e: CasError) -> Status {
        Status::new(e.code, e.to_string())
    }
}

/// `.context(..)` on results.
pub trait ResultExt<T> {
    /// Adds `message()` to the error, if any.
    fn context_with(self, message: impl FnOnce() -> String) -> Result<T, CasError>;
}

impl<T, E: Into<CasError>> ResultExt<T> for Result<T, E> {
    fn context_with(self, message: impl FnOnce() -> String) -> Result<T, CasError> {
        self.map_err(|e| e.into().context(message()))
    }
}

/// An OK `google.rpc.Status`.
pub fn ok_status() -> rpc::Status {
    rpc_status(Code::Ok, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_carry_over() {
        let e = CasError::not_found("blob x").context("reading tree");
        assert_eq!(e.to_string(), "blob x: reading tree");
        let status = Status::from(e.clone());
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "blob x: reading tree");
        assert_eq!(e.to_rpc_status().code, 5);
        let io: CasError = BlobError::Io("disk".into()).into();
        assert_eq!(io.code, Code::Internal);
        let corrupt: CasError = BlobError::Corrupt {
            digest: scoot_core::Digest::empty(),
            actual: "they hash to x/0".into(),
        }
        .into();
        assert_eq!(corrupt.code, Code::DataLoss);
    }
}
