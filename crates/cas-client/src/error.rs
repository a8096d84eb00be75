//! [`ClientError`]: every failure of a call, with the gRPC code it amounts to.

use std::fmt::Display;

use tonic::Code;

/// A failed call. `code` is the server's status code for failures the server reported, and ours
/// otherwise: NOT_FOUND for missing blobs, DATA_LOSS for data that does not match its digest,
/// DEADLINE_EXCEEDED for calls that ran out of time, UNAVAILABLE for connection failures,
/// INTERNAL for local file errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ClientError {
    pub code: Code,
    pub message: String,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
        }
    }

    /// A malformed digest in a server's reply.
    pub(crate) fn invalid_digest(error: scoot_reapi::Invalid) -> ClientError {
        ClientError::new(Code::InvalidArgument, error.0)
    }

    pub(crate) fn from_status(status: &tonic::Status, what: impl Display) -> ClientError {
        match std::error::Error::source(status) {
            // Made on this side from a broken connection (tonic says UNKNOWN, "transport
            // error"): the cause is what tells a TLS mismatch from a server that went away, and
            // the server was not reached, which is UNAVAILABLE.
            Some(cause) => {
                let code = match status.code() {
                    Code::Unknown => Code::Unavailable,
                    code => code,
                };
                ClientError::new(
                    code,
                    format!(
                        "{what}: {}: {}",
                        status.message(),
                        scoot_core::error_chain(cause)
                    ),
                )
            }
            None => ClientError::new(status.code(), format!("{what}: {}", status.message())),
        }
    }

    pub(crate) fn local(error: &std::io::Error, what: impl Display) -> ClientError {
        ClientError::new(Code::Internal, format!("{what}: {error}"))
    }

    /// NOT_FOUND naming each blob by its resource path, the form REAPI clients recognise.
    pub(crate) fn not_found<'a>(
        missing: impl IntoIterator<Item = &'a scoot_core::Digest>,
    ) -> ClientError {
        let names: Vec<String> = missing.into_iter().map(|d| format!("blobs/{d}")).collect();
        ClientError::new(
            Code::NotFound,
            format!("not in the CAS: {}", names.join(", ")),
        )
    }
}
