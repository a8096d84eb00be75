//! scootcl's job-definition files (`run_job --job_def FILE`), Scoot's format:
//!
//! ```json
//! {"Tasks": [{"Args": ["echo", "hi"], "EnvVars": {"K": "V"}, "SnapshotID": "", "TimeoutMs": 0,
//!             "TaskID": "t1"}],
//!  "DefaultTaskTimeoutMs": 0, "Priority": 0, "Tag": "", "Basis": "", "JobType": "", "Requestor": ""}
//! ```
//!
//! Key names match case-insensitively (Go's JSON decoding did); environment variable names keep
//! their case; unknown keys are ignored, as Go's decoder ignored them.

use std::collections::BTreeMap;

use scoot_thrift::scoot;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("invalid job definition: {0}")]
pub struct JobDefError(String);

#[derive(Deserialize, Default)]
#[serde(default)]
struct JobFile {
    tasks: Vec<TaskFile>,
    defaulttasktimeoutms: Option<i32>,
    priority: Option<i32>,
    tag: Option<String>,
    basis: Option<String>,
    jobtype: Option<String>,
    requestor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TaskFile {
    args: Vec<String>,
    envvars: BTreeMap<String, String>,
    snapshotid: Option<String>,
    timeoutms: Option<i32>,
    taskid: Option<String>,
}

fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        ),
        other => other,
    }
}

pub fn parse(text: &str) -> Result<scoot::JobDefinition, JobDefError> {
    let mut top =
        lowercase_keys(serde_json::from_str(text).map_err(|e| JobDefError(e.to_string()))?);
    if let Some(Value::Array(tasks)) = top.get_mut("tasks") {
        for task in tasks.iter_mut() {
            *task = lowercase_keys(task.take());
        }
    }
    let job: JobFile = serde_json::from_value(top).map_err(|e| JobDefError(e.to_string()))?;
    let tasks = job
        .tasks
        .into_iter()
        .map(|t| {
            scoot::TaskDefinition::new(
                scoot::Command::new(t.args, Some(t.envvars)),
                t.snapshotid,
                t.taskid,
                t.timeoutms,
            )
        })
        .collect();
    Ok(scoot::JobDefinition::new(
        tasks,
        None,
        job.defaulttasktimeoutms,
        job.priority,
        job.tag,
        job.basis,
        job.requestor,
        job.jobtype,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scoots_format_case_insensitively() {
        let def = parse(
            r#"{"tasks": [{"ARGS": ["echo", "hi"], "EnvVars": {"Path_Like": "x"}, "TaskID": "t1", "timeoutMs": 500}],
                "Priority": 2, "requestor": "ci-bot", "Tag": "tg"}"#,
        )
        .unwrap();
        let task = &def.tasks[0];
        assert_eq!(
            task.command.argv.as_deref(),
            Some(&["echo".to_string(), "hi".to_string()][..])
        );
        assert_eq!(task.command.env_vars.as_ref().unwrap()["Path_Like"], "x");
        assert_eq!(
            (task.task_id.as_deref(), task.timeout_ms),
            (Some("t1"), Some(500))
        );
        assert_eq!(
            (def.priority, def.requestor.as_deref(), def.tag.as_deref()),
            (Some(2), Some("ci-bot"), Some("tg"))
        );
    }

    /// Go's JSON decoder ignores keys the struct lacks; so does this.
    #[test]
    fn unknown_keys_are_ignored_and_bad_json_refused() {
        let def = parse(
            r#"{"Tasks": [{"Args": ["true"], "TaskID": "t", "Retries": 3}], "Owner": "me", "Tag": "x"}"#,
        )
        .unwrap();
        assert_eq!(def.tasks[0].task_id.as_deref(), Some("t"));
        assert_eq!(def.tag.as_deref(), Some("x"));
        assert!(parse("{").is_err());
        assert!(parse(r#"{"Tasks": [{"Args": "echo"}]}"#).is_err());
    }
}
