//! The operations page's rows: what a `google.longrunning.Operation` of an execution says,
//! decoded from its metadata and ExecuteResponse.

use std::time::SystemTime;

use prost::Message;
use scoot_proto::longrunning::operation;
use scoot_proto::prost_types::Timestamp;
use scoot_proto::reapi::v2;
use serde::Serialize;

use super::format;
use super::paging::Pager;
use super::views::job_url;
use crate::overview::bounded;
use crate::reapi::operations::{OperationEntry, OperationsPage};

/// How long one phase of an execution took, as the worker recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub took: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperationRow {
    pub name: String,
    /// Its job's page (an execution is a one-task job of the same name).
    pub url: String,
    /// `hash/size`.
    pub action: String,
    /// The same with the hash cut to 12 characters, for narrow tables.
    pub action_short: String,
    pub stage: &'static str,
    pub done: bool,
    /// The gRPC code of the result, e.g. `OK` or `FAILED_PRECONDITION`.
    pub code: String,
    pub class: &'static str,
    pub message: String,
    pub exit_code: Option<i32>,
    pub cached: bool,
    pub worker: String,
    pub phases: Vec<Phase>,
    /// How long it has waited or run so far, for unfinished ones.
    pub age: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperationsView {
    pub rows: Vec<OperationRow>,
    pub pager: Pager,
    pub active: usize,
}

/// Google's names for gRPC codes, which REAPI clients print.
fn code_name(code: i32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("code {code}"), |name| name.to_string())
}

fn time(timestamp: Option<&Timestamp>) -> Option<SystemTime> {
    // An unset timestamp is all zeros: unknown, not 1970.
    let timestamp = timestamp.filter(|t| t.seconds > 0 || t.nanos > 0)?;
    SystemTime::try_from(*timestamp).ok()
}

/// The phases whose start and end the metadata both records.
fn phases(metadata: &v2::ExecutedActionMetadata) -> Vec<Phase> {
    let spans = [
        (
            "queued",
            &metadata.queued_timestamp,
            &metadata.worker_start_timestamp,
        ),
        (
            "inputs",
            &metadata.input_fetch_start_timestamp,
            &metadata.input_fetch_completed_timestamp,
        ),
        (
            "execution",
            &metadata.execution_start_timestamp,
            &metadata.execution_completed_timestamp,
        ),
        (
            "outputs",
            &metadata.output_upload_start_timestamp,
            &metadata.output_upload_completed_timestamp,
        ),
        (
            "total",
            &metadata.queued_timestamp,
            &metadata.worker_completed_timestamp,
        ),
    ];
    spans
        .into_iter()
        .filter_map(|(name, start, end)| {
            let (start, end) = (time(start.as_ref())?, time(end.as_ref())?);
            Some(Phase {
                name,
                took: format::duration(format::between(start, end)),
            })
        })
        .collect()
}

fn row(entry: &OperationEntry, now: SystemTime) -> OperationRow {
    let op = &entry.operation;
    let metadata = op
        .metadata
        .as_ref()
        .and_then(|any| v2::ExecuteOperationMetadata::decode(any.value.as_slice()).ok());
    let stage = match metadata
        .as_ref()
        .and_then(|m| v2::execution_stage::Value::try_from(m.stage).ok())
    {
        Some(v2::execution_stage::Value::CacheCheck) => "cache check",
        Some(v2::execution_stage::Value::Queued) => "queued",
        Some(v2::execution_stage::Value::Executing) => "executing",
        Some(v2::execution_stage::Value::Completed) => "completed",
        _ => "unknown",
    };
    let digest = metadata.as_ref().and_then(|m| m.action_digest.as_ref());
    let action = digest
        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_default();
    let action_short = digest
        .map(|d| {
            let hash: String = d.hash.chars().take(12).collect();
            format!("{hash}…/{}", d.size_bytes)
        })
        .unwrap_or_default();
    let mut row = OperationRow {
        name: op.name.clone(),
        url: job_url(&op.name),
        action,
        action_short,
        stage,
        done: op.done,
        code: String::new(),
        class: if op.done { "ok" } else { "running" },
        message: String::new(),
        exit_code: None,
        cached: false,
        worker: String::new(),
        phases: Vec::new(),
        age: String::new(),
    };
    if !op.done {
        row.age = entry
            .queued_at
            .map(|at| format::duration(format::between(at, now)))
            .unwrap_or_default();
    }
    let status = match &op.result {
        None => return row,
        Some(operation::Result::Error(status)) => Some(status.clone()),
        Some(operation::Result::Response(any)) => {
            match v2::ExecuteResponse::decode(any.value.as_slice()) {
                Ok(response) => {
                    row.cached = response.cached_result;
                    if let Some(result) = &response.result {
                        row.exit_code = Some(result.exit_code);
                        if let Some(metadata) = &result.execution_metadata {
                            row.worker = bounded(&metadata.worker);
                            row.phases = phases(metadata);
                        }
                    }
                    response.status
                }
                Err(err) => {
                    row.code = "UNDECODABLE".into();
                    row.class = "bad";
                    row.message = format!("the ExecuteResponse does not decode: {err}");
                    return row;
                }
            }
        }
    };
    let code = status.as_ref().map_or(0, |s| s.code);
    row.code = code_name(code);
    row.message = status.map(|s| bounded(&s.message)).unwrap_or_default();
    if code != 0 || row.exit_code.is_some_and(|c| c != 0) {
        row.class = "bad";
    }
    row
}

/// Page `page` of the tracker's executions.
pub fn operations(page: &OperationsPage, number: u64, now: SystemTime) -> OperationsView {
    OperationsView {
        rows: page.entries.iter().map(|e| row(e, now)).collect(),
        pager: Pager::new("/ui/operations", &[], number, page.total),
        active: page.active,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use scoot_proto::longrunning::Operation;
    use scoot_proto::prost_types::Any;
    use scoot_proto::rpc;

    use super::*;

    fn any<M: Message>(message: &M) -> Any {
        Any {
            type_url: String::new(),
            value: message.encode_to_vec(),
        }
    }

    fn at(secs: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: 1_700_000_000 + secs,
            nanos: 0,
        })
    }

    fn entry(op: Operation) -> OperationEntry {
        OperationEntry {
            operation: op,
            queued_at: Some(SystemTime::UNIX_EPOCH),
        }
    }

    fn metadata(stage: v2::execution_stage::Value) -> Option<Any> {
        Some(any(&v2::ExecuteOperationMetadata {
            stage: stage as i32,
            action_digest: Some(v2::Digest {
                hash: "ab".repeat(32),
                size_bytes: 142,
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn a_finished_execution_shows_its_code_exit_code_and_phases() {
        let response = v2::ExecuteResponse {
            result: Some(v2::ActionResult {
                exit_code: 2,
                execution_metadata: Some(v2::ExecutedActionMetadata {
                    worker: "127.0.0.1:10101".into(),
                    queued_timestamp: at(0),
                    worker_start_timestamp: at(1),
                    execution_start_timestamp: at(2),
                    execution_completed_timestamp: at(5),
                    worker_completed_timestamp: at(6),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(rpc::Status::default()),
            ..Default::default()
        };
        let op = Operation {
            name: "op-1".into(),
            metadata: metadata(v2::execution_stage::Value::Completed),
            done: true,
            result: Some(operation::Result::Response(any(&response))),
        };
        let row = row(&entry(op), SystemTime::UNIX_EPOCH);
        assert_eq!(row.stage, "completed");
        assert_eq!(row.action, format!("{}/142", "ab".repeat(32)));
        assert_eq!(
            (row.code.as_str(), row.exit_code, row.class),
            ("OK", Some(2), "bad")
        );
        assert_eq!(row.worker, "127.0.0.1:10101");
        let phases: Vec<(&str, &str)> = row
            .phases
            .iter()
            .map(|p| (p.name, p.took.as_str()))
            .collect();
        assert_eq!(
            phases,
            [("queued", "1.0s"), ("execution", "3.0s"), ("total", "6.0s")]
        );
        assert_eq!(row.url, "/ui/jobs/op-1");
    }

    #[test]
    fn queued_and_cancelled_executions() {
        let queued = Operation {
            name: "op-2".into(),
            metadata: metadata(v2::execution_stage::Value::Queued),
            done: false,
            result: None,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(3);
        let row_queued = row(&entry(queued), now);
        assert_eq!(
            (row_queued.stage, row_queued.age.as_str()),
            ("queued", "3.0s")
        );
        assert_eq!(row_queued.code, "");
        let cancelled = Operation {
            name: "op-3".into(),
            metadata: metadata(v2::execution_stage::Value::Completed),
            done: true,
            result: Some(operation::Result::Error(rpc::Status {
                code: tonic::Code::Cancelled as i32,
                message: "UserRequested".into(),
                details: Vec::new(),
            })),
        };
        let row_cancelled = row(&entry(cancelled), now);
        assert_eq!(
            (row_cancelled.code.as_str(), row_cancelled.message.as_str()),
            ("CANCELLED", "UserRequested")
        );
        assert_eq!(row_cancelled.class, "bad");
        assert_eq!(code_name(99), "code 99");
    }
}
