//! `google.rpc.Status` as REAPI answers carry it, and the ExecuteResponses built from one.

use prost::Message;
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_proto::{prost_types, rpc};
use tonic::Code;

/// At most this many missing blobs are named in the status message (all are in the details).
const MISSING_IN_MESSAGE: usize = 5;

/// A google.rpc.Status with `code` and `message`.
pub fn rpc_status(code: Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// An ExecuteResponse that carries only a status (no ActionResult).
pub fn status_response(status: rpc::Status) -> v2::ExecuteResponse {
    v2::ExecuteResponse {
        message: status.message.clone(),
        status: Some(status),
        ..Default::default()
    }
}

/// FAILED_PRECONDITION with one `MISSING` violation per blob (`what` says what each was meant
/// to be), so that a client can upload them all and retry once.
pub fn missing_blobs_status(missing: &[(Digest, &str)]) -> rpc::Status {
    let mut status = rpc_status(Code::FailedPrecondition, missing_blobs_message(missing));
    let violations = missing
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
    status
}

/// The answer to an action whose blobs the CAS lacks: the scheduler gives it before queueing
/// such an action, a worker when one vanished in between.
pub fn missing_blobs_response(missing: &[(Digest, &str)]) -> v2::ExecuteResponse {
    status_response(missing_blobs_status(missing))
}

/// "missing from the CAS: …", naming the first few blobs.
pub fn missing_blobs_message(missing: &[(Digest, &str)]) -> String {
    let mut names: Vec<String> = missing
        .iter()
        .take(MISSING_IN_MESSAGE)
        .map(|(d, what)| format!("{what} blobs/{d}"))
        .collect();
    if missing.len() > MISSING_IN_MESSAGE {
        names.push(format!("and {} more", missing.len() - MISSING_IN_MESSAGE));
    }
    format!("missing from the CAS: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_are_all_violations_but_few_are_named() {
        let missing: Vec<(Digest, &str)> = (0..7)
            .map(|i| {
                let digest = Digest::new(format!("{i:064x}"), i).unwrap();
                (digest, "an input file")
            })
            .collect();
        let response = missing_blobs_response(&missing);
        let status = response.status.unwrap();
        assert_eq!(status.code, Code::FailedPrecondition as i32);
        assert_eq!(response.message, status.message);
        assert!(status.message.ends_with("and 2 more"), "{}", status.message);
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.PreconditionFailure"
        );
        let failure = rpc::PreconditionFailure::decode(status.details[0].value.as_slice()).unwrap();
        assert_eq!(failure.violations.len(), 7);
        assert_eq!(failure.violations[6].r#type, "MISSING");
        assert_eq!(
            failure.violations[6].subject,
            format!("blobs/{}", missing[6].0)
        );
    }
}
