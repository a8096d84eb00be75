//! Why preparing or finishing an action failed, and how that reaches the REAPI client: an
//! `ExecuteResponse` whose status carries the code (and, for missing blobs, a
//! `PreconditionFailure` naming each one), wrapped in the runner's [`ActionFailure`].

use prost::Message;
use scoot_cas_client::ClientError;
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_proto::rpc;
use scoot_reapi::status::{
    missing_blobs_message, missing_blobs_status, rpc_status, status_response,
};
use scoot_reapi::{InputsError, Invalid};
use scoot_runner::action::ActionFailure;
use tonic::Code;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: Code,
    pub message: String,
    /// Blobs the CAS lacks, each with what it was meant to be.
    pub missing: Vec<(Digest, &'static str)>,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            missing: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(Code::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(Code::Internal, message)
    }

    /// FAILED_PRECONDITION listing every missing blob, so the client can upload them all and
    /// retry once.
    pub fn missing(missing: Vec<(Digest, &'static str)>) -> Failure {
        Failure {
            code: Code::FailedPrecondition,
            message: missing_blobs_message(&missing),
            missing,
        }
    }

    /// A failed CAS call: unreachable or slow servers stay UNAVAILABLE (worth retrying
    /// elsewhere or later), anything else is INTERNAL.
    pub fn cas(error: ClientError, context: &str) -> Failure {
        let code = match error.code {
            Code::Unavailable | Code::DeadlineExceeded => Code::Unavailable,
            _ => Code::Internal,
        };
        Failure::new(code, format!("{context}: {error}"))
    }

    pub fn io(error: &std::io::Error, context: impl std::fmt::Display) -> Failure {
        Failure::internal(format!("{context}: {error}"))
    }

    fn status(&self) -> rpc::Status {
        if self.missing.is_empty() {
            rpc_status(self.code, self.message.clone())
        } else {
            missing_blobs_status(&self.missing)
        }
    }

    /// An `ExecuteResponse` with this failure as its status.
    pub fn response(&self) -> v2::ExecuteResponse {
        status_response(self.status())
    }

    /// The run's failure: `exit_code` is one of Scoot's reserved codes, the response an encoded
    /// `ExecuteResponse` with this failure as its status.
    pub fn into_action_failure(self, exit_code: i32) -> ActionFailure {
        let response = self.response();
        ActionFailure {
            exit_code,
            message: self.message,
            response: response.encode_to_vec(),
        }
    }
}

impl From<Invalid> for Failure {
    fn from(invalid: Invalid) -> Failure {
        Failure::invalid(invalid.0)
    }
}

/// The action check's outcome: `Source` failures already are ours.
impl From<InputsError<Failure>> for Failure {
    fn from(error: InputsError<Failure>) -> Failure {
        match error {
            InputsError::Invalid(invalid) => invalid.into(),
            InputsError::Missing(missing) => Failure::missing(missing),
            InputsError::Source(failure) => failure,
        }
    }
}

impl From<tokio::task::JoinError> for Failure {
    fn from(error: tokio::task::JoinError) -> Failure {
        Failure::internal(format!("a filesystem task failed: {error}"))
    }
}
