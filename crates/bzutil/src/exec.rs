//! The Execution and Operations side of bzutil: run an action, look at or cancel its operation,
//! and show operations the way Scoot's bzutil did.

use std::fmt::Write as _;
use std::time::Duration;

use prost::Message;
use scoot_cas_client::AuthChannel as Channel;
use scoot_core::Digest;
use scoot_proto::longrunning::operations_client::OperationsClient;
use scoot_proto::longrunning::{CancelOperationRequest, GetOperationRequest, Operation, operation};
use scoot_proto::prost_types::{Any, Timestamp};
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_client::ExecutionClient;
use serde_json::{Value, json};

/// Longest wait for one message of an Execute stream (a running action sends its state again
/// every 30 s, so a silent minute means the server is gone).
const STREAM_SILENCE: Duration = Duration::from_secs(90);
/// Deadline of the unary calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the server to execute `action`; returns the first operation state, or the final one
/// when `wait` is set.
pub async fn execute(
    channel: Channel,
    instance: &str,
    action: &Digest,
    skip_cache: bool,
    wait: bool,
) -> anyhow::Result<Operation> {
    let request = v2::ExecuteRequest {
        instance_name: instance.to_string(),
        skip_cache_lookup: skip_cache,
        action_digest: Some(v2::Digest {
            hash: action.hash.clone(),
            size_bytes: action.size_bytes,
        }),
        ..Default::default()
    };
    let mut stream = ExecutionClient::new(channel)
        .execute(request)
        .await
        .map_err(|s| anyhow::anyhow!("Execute failed: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut last = None;
    loop {
        let next = tokio::time::timeout(STREAM_SILENCE, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("the Execute stream went silent"))?
            .map_err(|s| anyhow::anyhow!("Execute stream: {}: {}", s.code(), s.message()))?;
        match next {
            Some(op) if op.done || !wait => return Ok(op),
            Some(op) => last = Some(op),
            None => {
                return last.ok_or_else(|| anyhow::anyhow!("Execute returned no operation"));
            }
        }
    }
}

pub async fn get_operation(channel: Channel, name: &str) -> anyhow::Result<Operation> {
    let mut request = tonic::Request::new(GetOperationRequest {
        name: name.to_string(),
    });
    request.set_timeout(CALL_TIMEOUT);
    Ok(OperationsClient::new(channel)
        .get_operation(request)
        .await
        .map_err(|s| anyhow::anyhow!("GetOperation failed: {}: {}", s.code(), s.message()))?
        .into_inner())
}

pub async fn cancel_operation(channel: Channel, name: &str) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(CancelOperationRequest {
        name: name.to_string(),
    });
    request.set_timeout(CALL_TIMEOUT);
    OperationsClient::new(channel)
        .cancel_operation(request)
        .await
        .map_err(|s| anyhow::anyhow!("CancelOperation failed: {}: {}", s.code(), s.message()))?;
    Ok(())
}

fn unpack<M: Message + Default>(any: &Any) -> Option<M> {
    M::decode(any.value.as_slice()).ok()
}

fn digest_text(digest: &Option<v2::Digest>) -> String {
    digest
        .as_ref()
        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_default()
}

fn stage_name(metadata: &v2::ExecuteOperationMetadata) -> &'static str {
    v2::execution_stage::Value::try_from(metadata.stage)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn code_name(code: i32) -> String {
    scoot_proto::rpc::Code::try_from(code)
        .map(|c| c.as_str_name().to_string())
        .unwrap_or_else(|_| code.to_string())
}

fn millis_between(from: &Option<Timestamp>, to: &Option<Timestamp>) -> Option<i64> {
    let (from, to) = (from.as_ref()?, to.as_ref()?);
    Some((to.seconds - from.seconds) * 1000 + i64::from(to.nanos - from.nanos) / 1_000_000)
}

/// (label, start, end) of each phase Scoot's bzutil showed.
fn phases(m: &v2::ExecutedActionMetadata) -> [(&'static str, Option<i64>); 5] {
    [
        (
            "QueueLatency",
            millis_between(&m.queued_timestamp, &m.worker_start_timestamp),
        ),
        (
            "WorkerTotal",
            millis_between(&m.worker_start_timestamp, &m.worker_completed_timestamp),
        ),
        (
            "InputFetch",
            millis_between(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
        ),
        (
            "Execution",
            millis_between(
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
        ),
        (
            "OutputUpload",
            millis_between(
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        ),
    ]
}

/// The operation in Scoot's bzutil layout.
pub fn describe(op: &Operation) -> String {
    let mut out = format!("Operation: {}\n\tDone: {}\n", op.name, op.done);
    if let Some(metadata) = op
        .metadata
        .as_ref()
        .and_then(unpack::<v2::ExecuteOperationMetadata>)
    {
        let _ = write!(
            out,
            "\tMetadata:\n\t\tStage: {}\n\t\tActionDigest: {}\n",
            stage_name(&metadata),
            digest_text(&metadata.action_digest)
        );
    }
    match &op.result {
        Some(operation::Result::Error(status)) => {
            let _ = write!(
                out,
                "\tError:\n\t\tCode: {}\n\t\tMessage: {}\n",
                code_name(status.code),
                status.message
            );
        }
        Some(operation::Result::Response(any)) => {
            if let Some(response) = unpack::<v2::ExecuteResponse>(any) {
                describe_response(&mut out, &response);
            }
        }
        None => {}
    }
    out
}

fn describe_response(out: &mut String, response: &v2::ExecuteResponse) {
    let status = response.status.clone().unwrap_or_default();
    let _ = write!(
        out,
        "\tExecResponse:\n\t\tStatus:\n\t\t\tCode: {}\n",
        code_name(status.code)
    );
    if !status.message.is_empty() {
        let _ = writeln!(out, "\t\t\tMessage: {}", status.message);
    }
    let _ = writeln!(out, "\t\tCached: {}", response.cached_result);
    let Some(result) = &response.result else {
        return;
    };
    let files: Vec<String> = result.output_files.iter().map(|f| f.path.clone()).collect();
    let dirs: Vec<String> = result
        .output_directories
        .iter()
        .map(|d| d.path.clone())
        .collect();
    let _ = write!(
        out,
        "\t\tActionResult:\n\t\t\tExitCode: {}\n\t\t\tOutputFiles: {files:?}\n\t\t\tOutputDirectories: {dirs:?}\n\t\t\tStdoutDigest: {}\n\t\t\tStderrDigest: {}\n",
        result.exit_code,
        digest_text(&result.stdout_digest),
        digest_text(&result.stderr_digest),
    );
    if let Some(metadata) = &result.execution_metadata {
        let _ = write!(
            out,
            "\t\t\tExecutionMetadata:\n\t\t\t\tWorker: {}\n",
            metadata.worker
        );
        for (label, millis) in phases(metadata) {
            if let Some(millis) = millis {
                let _ = writeln!(out, "\t\t\t\t{label}: {millis}ms");
            }
        }
    }
}

/// The operation as JSON: a summary, or with `full` every ActionResult field.
pub fn to_json(op: &Operation, full: bool) -> Value {
    let metadata = op
        .metadata
        .as_ref()
        .and_then(unpack::<v2::ExecuteOperationMetadata>);
    let mut value = json!({
        "name": op.name,
        "done": op.done,
        "stage": metadata.as_ref().map(stage_name),
        "action_digest": metadata.as_ref().map(|m| digest_text(&m.action_digest)),
    });
    match &op.result {
        Some(operation::Result::Error(status)) => {
            value["error"] = json!({"code": code_name(status.code), "message": status.message});
        }
        Some(operation::Result::Response(any)) => {
            if let Some(response) = unpack::<v2::ExecuteResponse>(any) {
                value["response"] = response_json(&response, full);
            }
        }
        None => {}
    }
    value
}

fn response_json(response: &v2::ExecuteResponse, full: bool) -> Value {
    let status = response.status.clone().unwrap_or_default();
    let mut value = json!({
        "status": {"code": code_name(status.code), "message": status.message},
        "cached_result": response.cached_result,
    });
    let Some(result) = &response.result else {
        return value;
    };
    let mut result_json = json!({
        "exit_code": result.exit_code,
        "stdout_digest": digest_text(&result.stdout_digest),
        "stderr_digest": digest_text(&result.stderr_digest),
        "output_files": result.output_files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        "output_directories":
            result.output_directories.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
    });
    if full {
        result_json["output_files"] = result
            .output_files
            .iter()
            .map(|f| json!({"path": f.path, "digest": digest_text(&f.digest), "is_executable": f.is_executable}))
            .collect();
        result_json["output_directories"] = result
            .output_directories
            .iter()
            .map(|d| json!({"path": d.path, "tree_digest": digest_text(&d.tree_digest)}))
            .collect();
        result_json["output_symlinks"] = result
            .output_symlinks
            .iter()
            .map(|s| json!({"path": s.path, "target": s.target}))
            .collect();
        if let Some(metadata) = &result.execution_metadata {
            let mut timings = serde_json::Map::new();
            for (label, millis) in phases(metadata) {
                if let Some(millis) = millis {
                    timings.insert(format!("{label}_ms"), json!(millis));
                }
            }
            result_json["execution_metadata"] =
                json!({"worker": metadata.worker, "timings": timings});
        }
    }
    value["result"] = result_json;
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack<M: Message>(type_name: &str, message: &M) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: message.encode_to_vec(),
        }
    }

    #[test]
    fn describes_a_finished_operation_like_scoot() {
        let at = |seconds, nanos| Some(Timestamp { seconds, nanos });
        let op = Operation {
            name: "op-1".into(),
            done: true,
            metadata: Some(pack(
                "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
                &v2::ExecuteOperationMetadata {
                    stage: v2::execution_stage::Value::Completed as i32,
                    action_digest: Some(v2::Digest {
                        hash: "ab".into(),
                        size_bytes: 141,
                    }),
                    ..Default::default()
                },
            )),
            result: Some(operation::Result::Response(pack(
                "build.bazel.remote.execution.v2.ExecuteResponse",
                &v2::ExecuteResponse {
                    result: Some(v2::ActionResult {
                        exit_code: 3,
                        execution_metadata: Some(v2::ExecutedActionMetadata {
                            worker: "w1".into(),
                            queued_timestamp: at(10, 0),
                            worker_start_timestamp: at(10, 420_000_000),
                            execution_start_timestamp: at(11, 0),
                            execution_completed_timestamp: at(28, 31_000_000),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    status: Some(Default::default()),
                    ..Default::default()
                },
            ))),
        };
        let text = describe(&op);
        assert!(
            text.starts_with("Operation: op-1\n\tDone: true\n"),
            "{text}"
        );
        assert!(
            text.contains("\t\tStage: COMPLETED\n\t\tActionDigest: ab/141\n"),
            "{text}"
        );
        assert!(text.contains("\t\t\tCode: OK\n"), "{text}");
        assert!(text.contains("\t\t\tExitCode: 3\n"), "{text}");
        assert!(
            text.contains("\t\t\t\tWorker: w1\n\t\t\t\tQueueLatency: 420ms\n"),
            "{text}"
        );
        assert!(text.contains("\t\t\t\tExecution: 17031ms\n"), "{text}");
        let summary = to_json(&op, false);
        assert_eq!(summary["response"]["result"]["exit_code"], 3);
        assert_eq!(summary["stage"], "COMPLETED");
        let full = to_json(&op, true);
        assert_eq!(
            full["response"]["result"]["execution_metadata"]["timings"]["QueueLatency_ms"],
            420
        );
    }

    #[test]
    fn shows_an_operation_error() {
        let op = Operation {
            name: "op-2".into(),
            done: true,
            result: Some(operation::Result::Error(scoot_proto::rpc::Status {
                code: tonic::Code::Cancelled as i32,
                message: "killed".into(),
                details: Vec::new(),
            })),
            ..Default::default()
        };
        assert!(describe(&op).contains("\tError:\n\t\tCode: CANCELLED\n\t\tMessage: killed\n"));
        assert_eq!(to_json(&op, false)["error"]["code"], "CANCELLED");
    }
}
