//! What Scoot's scootcl printed, byte for byte where it can be: scripts parse it.
//!
//! `--json` is Go's `encoding/json` of the Thrift-generated structs: fields in IDL order under
//! their IDL names, optional fields omitted when unset (a set empty string is kept), maps with
//! sorted keys, empty `taskStatus`/`taskData` omitted (`omitempty`), enums by name (the
//! generated enums are `TextMarshaler`s), `<`, `>`, `&`, U+2028 and U+2029 escaped as Go's
//! encoder escapes them. The plain forms are Go's `fmt.Println("Job Status:", status)` of those
//! structs (`%+v` inside the generated `String()`), except that optional fields show their
//! value where Go showed the pointer's address, and that maps come sorted (as Go's `fmt` sorts
//! them).

use std::collections::BTreeMap;
use std::fmt::Write;

use scoot_thrift::scoot;
use serde::Serialize;

/// The name Go's generated `String()` gives a job state.
pub fn status_name(status: scoot::Status) -> &'static str {
    match status {
        scoot::Status::NOT_STARTED => "NOT_STARTED",
        scoot::Status::IN_PROGRESS => "IN_PROGRESS",
        scoot::Status::COMPLETED => "COMPLETED",
        scoot::Status::ROLLING_BACK => "ROLLING_BACK",
        scoot::Status::ROLLED_BACK => "ROLLED_BACK",
        _ => "<UNSET>",
    }
}

/// The name Go's generated `String()` gives a run state.
pub fn run_state_name(state: scoot::RunStatusState) -> &'static str {
    const NAMES: [&str; 7] = [
        "UNKNOWN", "PENDING", "RUNNING", "COMPLETE", "FAILED", "ABORTED", "TIMEDOUT",
    ];
    usize::try_from(state.0)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("<UNSET>")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunStatusJson<'a> {
    status: &'static str,
    run_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobStatusJson<'a> {
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    task_status: BTreeMap<&'a str, &'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    task_data: BTreeMap<&'a str, RunStatusJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AlgParamsJson<'a> {
    class_load_percents: &'a BTreeMap<String, i32>,
    requestor_map: &'a BTreeMap<String, String>,
    rebalance_minimum_duration: i32,
    rebalance_threshold: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchedulerStatusJson {
    current_tasks: i32,
    max_tasks: i32,
}

/// Serialises like Go's `json.Marshal`, HTML escaping included.
fn go_json(value: &impl Serialize) -> String {
    // Serialising plain structs of strings, numbers and maps cannot fail.
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // These only occur inside JSON strings, where Go writes them escaped.
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn run_status_json(r: &scoot::RunStatus) -> RunStatusJson<'_> {
    RunStatusJson {
        status: run_state_name(r.status),
        run_id: &r.run_id,
        out_uri: r.out_uri.as_deref(),
        err_uri: r.err_uri.as_deref(),
        error: r.error.as_deref(),
        exit_code: r.exit_code,
        snapshot_id: r.snapshot_id.as_deref(),
        job_id: r.job_id.as_deref(),
        task_id: r.task_id.as_deref(),
        tag: r.tag.as_deref(),
    }
}

/// `get_job_status --json` / `kill_job --json`.
pub fn job_status_json(status: &scoot::JobStatus) -> String {
    go_json(&JobStatusJson {
        id: &status.id,
        status: status_name(status.status),
        task_status: status
            .task_status
            .iter()
            .flatten()
            .map(|(t, s)| (t.as_str(), status_name(*s)))
            .collect(),
        task_data: status
            .task_data
            .iter()
            .flatten()
            .map(|(t, r)| (t.as_str(), run_status_json(r)))
            .collect(),
    })
}

/// `%v` of an optional field: its value (Go printed the pointer) or `<nil>`.
fn opt(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "<nil>".to_string(), |v| v.to_string())
}

fn run_status_text(r: &scoot::RunStatus) -> String {
    format!(
        "RunStatus({{Status:{} RunId:{} OutUri:{} ErrUri:{} Error:{} ExitCode:{} SnapshotId:{} JobId:{} TaskId:{} Tag:{}}})",
        run_state_name(r.status),
        r.run_id,
        opt(r.out_uri.as_deref()),
        opt(r.err_uri.as_deref()),
        opt(r.error.as_deref()),
        opt(r.exit_code),
        opt(r.snapshot_id.as_deref()),
        opt(r.job_id.as_deref()),
        opt(r.task_id.as_deref()),
        opt(r.tag.as_deref()),
    )
}

/// `get_job_status` / `kill_job` without `--json`.
pub fn job_status_text(status: &scoot::JobStatus) -> String {
    let task_status: Vec<String> = status
        .task_status
        .iter()
        .flatten()
        .map(|(t, s)| format!("{t}:{}", status_name(*s)))
        .collect();
    let task_data: Vec<String> = status
        .task_data
        .iter()
        .flatten()
        .map(|(t, r)| format!("{t}:{}", run_status_text(r)))
        .collect();
    format!(
        "Job Status: JobStatus({{ID:{} Status:{} TaskStatus:map[{}] TaskData:map[{}]}})",
        status.id,
        status_name(status.status),
        task_status.join(" "),
        task_data.join(" ")
    )
}

/// `get_scheduler_status`, with and without `--json`.
pub fn scheduler_status(status: &scoot::SchedulerStatus, as_json: bool) -> String {
    if as_json {
        go_json(&SchedulerStatusJson {
            current_tasks: status.current_tasks,
            max_tasks: status.max_tasks,
        })
    } else {
        format!(
            "Job Status: SchedulerStatus({{CurrentTasks:{} MaxTasks:{}}})",
            status.current_tasks, status.max_tasks
        )
    }
}

/// The scheduling algorithm's parameters as `get_scheduling_alg_params` shows them.
pub struct AlgParams {
    pub class_load_percents: BTreeMap<String, i32>,
    pub requestor_map: BTreeMap<String, String>,
    pub rebalance_minimum_duration: i32,
    pub rebalance_threshold: i32,
}

impl AlgParams {
    pub fn json(&self) -> String {
        go_json(&AlgParamsJson {
            class_load_percents: &self.class_load_percents,
            requestor_map: &self.requestor_map,
            rebalance_minimum_duration: self.rebalance_minimum_duration,
            rebalance_threshold: self.rebalance_threshold,
        })
    }

    /// Go's `fmt.Println(a, ":", b)` lines (space-separated operands).
    pub fn text(&self) -> String {
        let mut out = String::from("Class Load Percents:\n");
        for (class, pct) in &self.class_load_percents {
            let _ = writeln!(out, "{class} : {pct}");
        }
        out.push_str("Requestor (reg exp) to class map:\n");
        for (regex, class) in &self.requestor_map {
            let _ = writeln!(out, "{regex} : {class}");
        }
        let _ = writeln!(
            out,
            "Rebalance Duration: {}  (minutes)",
            self.rebalance_minimum_duration
        );
        let _ = writeln!(out, "Rebalance Threshold: {}", self.rebalance_threshold);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit: Option<i32>, out: Option<&str>, error: Option<&str>) -> scoot::RunStatus {
        scoot::RunStatus::new(
            scoot::RunStatusState::COMPLETE,
            "4".into(),
            out.map(str::to_string),
            None,
            error.map(str::to_string),
            exit,
            None,
            None,
            None,
            None,
        )
    }

    // Expected strings written from Go's encoding/json and fmt rules applied to the structs
    // Scoot's Thrift 0.9.3 compiler generated.

    #[test]
    fn job_status_json_as_go_marshals_it() {
        let status = scoot::JobStatus::new(
            "j".into(),
            scoot::Status::COMPLETED,
            Some(
                [
                    ("b".to_string(), scoot::Status::IN_PROGRESS),
                    ("a".to_string(), scoot::Status::COMPLETED),
                ]
                .into(),
            ),
            Some(
                [(
                    "a".to_string(),
                    run(Some(0), Some("http://w/output/x?file=a&b"), Some("")),
                )]
                .into(),
            ),
        );
        assert_eq!(
            job_status_json(&status),
            r#"{"id":"j","status":"COMPLETED","taskStatus":{"a":"COMPLETED","b":"IN_PROGRESS"},"taskData":{"a":{"status":"COMPLETE","runId":"4","outUri":"http://w/output/x?file=a\u0026b","error":"","exitCode":0}}}"#
        );
        // A job Scoot knows nothing of: no task maps at all.
        let unknown = scoot::JobStatus::new(
            "nope".into(),
            scoot::Status::NOT_STARTED,
            Some(BTreeMap::new()),
            None,
        );
        assert_eq!(
            job_status_json(&unknown),
            r#"{"id":"nope","status":"NOT_STARTED"}"#
        );
    }

    #[test]
    fn job_status_text_in_gos_layout() {
        let status = scoot::JobStatus::new(
            "j".into(),
            scoot::Status::IN_PROGRESS,
            Some(
                [
                    ("t1".to_string(), scoot::Status::COMPLETED),
                    ("t2".to_string(), scoot::Status::NOT_STARTED),
                ]
                .into(),
            ),
            Some([("t1".to_string(), run(Some(3), Some("out"), None))].into()),
        );
        assert_eq!(
            job_status_text(&status),
            "Job Status: JobStatus({ID:j Status:IN_PROGRESS TaskStatus:map[t1:COMPLETED t2:NOT_STARTED] \
             TaskData:map[t1:RunStatus({Status:COMPLETE RunId:4 OutUri:out ErrUri:<nil> Error:<nil> \
             ExitCode:3 SnapshotId:<nil> JobId:<nil> TaskId:<nil> Tag:<nil>})]})"
        );
        let empty = scoot::JobStatus::new("x".into(), scoot::Status::NOT_STARTED, None, None);
        assert_eq!(
            job_status_text(&empty),
            "Job Status: JobStatus({ID:x Status:NOT_STARTED TaskStatus:map[] TaskData:map[]})"
        );
    }

    #[test]
    fn scheduling_alg_params_with_scoots_keys() {
        let params = AlgParams {
            class_load_percents: [("land".to_string(), 40), ("diff".to_string(), 25)].into(),
            requestor_map: [("^land.*".to_string(), "land".to_string())].into(),
            rebalance_minimum_duration: 0,
            rebalance_threshold: 5,
        };
        assert_eq!(
            params.json(),
            r#"{"ClassLoadPercents":{"diff":25,"land":40},"RequestorMap":{"^land.*":"land"},"RebalanceMinimumDuration":0,"RebalanceThreshold":5}"#
        );
        assert_eq!(
            params.text(),
            "Class Load Percents:\ndiff : 25\nland : 40\nRequestor (reg exp) to class map:\n\
             ^land.* : land\nRebalance Duration: 0  (minutes)\nRebalance Threshold: 5\n"
        );
    }

    #[test]
    fn scheduler_status_both_ways() {
        let status = scoot::SchedulerStatus::new(3, -1);
        assert_eq!(
            scheduler_status(&status, true),
            r#"{"currentTasks":3,"maxTasks":-1}"#
        );
        assert_eq!(
            scheduler_status(&status, false),
            "Job Status: SchedulerStatus({CurrentTasks:3 MaxTasks:-1})"
        );
    }

    #[test]
    fn unknown_enum_values_are_unset() {
        assert_eq!(status_name(scoot::Status(9)), "<UNSET>");
        assert_eq!(run_state_name(scoot::RunStatusState(-1)), "<UNSET>");
    }
}
