//! Why preparing or finishing an action failed, and how that reaches the REAPI client: an
//! `ExecuteResponse` whose status carries the code (and, for missing blobs, a
//! `PreconditionFailure` naming each one), wrapped in the runner's [`ActionFailure`].

use prost::Message;
use scoot_cas_client::ClientError;
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_proto::{prost_types, rpc};
use scoot_runner::action::ActionFailure;
use tonic::Code;

use crate::rules::Invalid;

/// At most this many missing blobs are named in the status message (all are in the details).
const MISSING_IN_MESSAGE: usize = 5;

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
        let mut names: Vec<String> = missing
            .iter()
            .take(MISSING_IN_MESSAGE)
            .map(|(d, what)| format!("{what} blobs/{d}"))
            .collect();
        if missing.len() > MISSING_IN_MESSAGE {
            names.push(format!("and {} more", missing.len() - MISSING_IN_MESSAGE));
        }
        Failure {
            code: Code::FailedPrecondition,
            message: format!("missing from the CAS: {}", names.join(", ")),
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
        let mut status = rpc::Status {
            code: i32::from(self.code),
            message: self.message.clone(),
            details: Vec::new(),
        };
        if !self.missing.is_empty() {
            let violations = self
                .missing
                .iter()
                .map(|(digest, what)| rpc::precondition_failure::Violation {
                    r#type: "MISSING".into(),
                    subject: format!("blobs/{digest}"),
                    description: format!("{what} is not in the CAS"),
                })
                .collect();
            status.details.push(prost_types::Any {
                type_url: scoot_proto::type_url("google.rpc.PreconditionFailure"),
                value: rpc::PreconditionFailure { violations }.encode_to_vec(),
            });
        }
        status
    }

    /// An `ExecuteResponse` with this failure as its status.
    pub fn response(&self) -> v2::ExecuteResponse {
        v2::ExecuteResponse {
            status: Some(self.status()),
            message: self.message.clone(),
            ..Default::default()
        }
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

impl From<tokio::task::JoinError> for Failure {
    fn from(error: tokio::task::JoinError) -> Failure {
        Failure::internal(format!("a filesystem task failed: {error}"))
    }
}
