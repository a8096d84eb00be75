//! Jobs as the scheduler sees them: validated from the CloudScoot API, stored in the saga log as
//! `sched.thrift` Job bytes, and read back on recovery.

use std::collections::HashSet;
use std::time::Duration;

use scoot_core::{Command, LogTags};
use scoot_thrift::{codec, sched, scoot};

/// The job type of jobs the Execution service makes. They are exempt from Scoot's limit of jobs
/// per requestor: Bazel bounds its own concurrency (`--jobs`), and a refusal would fail builds
/// whose actions run longer than Bazel's retries last.
pub const REAPI_JOB_TYPE: &str = "bazel";

/// Most bytes in a job's tag, basis, requestor or jobType and in a task id. Scoot's clients use
/// a few dozen; a bigger value would only multiply in logs, saga records and status replies.
pub const MAX_NAME_BYTES: usize = 1024;

/// Why a job was refused; the message goes back to the client verbatim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJob(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDefinition {
    pub task_id: String,
    /// `command.timeout` is `None` when the task takes the scheduler's default.
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JobDefinition {
    pub tasks: Vec<TaskDefinition>,
    pub priority: i32,
    pub tag: String,
    pub basis: String,
    pub requestor: String,
    pub job_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub def: JobDefinition,
}

/// Checks a RunJob request and turns it into a job definition. Checks that need the scheduler's
/// state (requestor limits, basis tags) happen at admission.
pub fn validate(def: scoot::JobDefinition) -> Result<JobDefinition, InvalidJob> {
    if def.tasks.is_empty() {
        return Err(InvalidJob("invalid job: must have at least 1 task".into()));
    }
    let priority = def.priority.unwrap_or(0);
    if !(0..=2).contains(&priority) {
        return Err(InvalidJob(format!(
            "invalid priority {priority}, must be between 0-2 inclusive"
        )));
    }
    let tag = bounded("tag", def.tag)?;
    let basis = bounded("basis", def.basis)?;
    let requestor = bounded("requestor", def.requestor)?;
    let job_type = bounded("jobType", def.job_type)?;
    let mut seen = HashSet::new();
    let mut tasks = Vec::with_capacity(def.tasks.len());
    for (index, task) in def.tasks.into_iter().enumerate() {
        let task_id = task.task_id.unwrap_or_default();
        if task_id.is_empty() {
            return Err(InvalidJob(format!(
                "invalid job: task {index} has an empty taskId"
            )));
        }
        if task_id.len() > MAX_NAME_BYTES {
            return Err(InvalidJob(format!(
                "invalid job: task {index}'s taskId is {} bytes, over the limit of {MAX_NAME_BYTES}",
                task_id.len()
            )));
        }
        if !seen.insert(task_id.clone()) {
            return Err(InvalidJob(format!("invalid dup taskID {task_id}")));
        }
        let argv = task.command.argv.unwrap_or_default();
        if argv.is_empty() {
            return Err(InvalidJob(format!(
                "invalid job: task {task_id} has an empty argv"
            )));
        }
        // Scoot's rule: the task's own timeout if positive, else the job default if given.
        let timeout_ms = match task.timeout_ms {
            Some(ms) if ms > 0 => ms,
            _ => def.default_task_timeout_ms.unwrap_or(0),
        };
        tasks.push(TaskDefinition {
            command: Command {
                argv,
                env: task.command.env_vars.unwrap_or_default(),
                timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
                snapshot_id: task.snapshot_id.unwrap_or_default(),
                tags: LogTags {
                    job_id: String::new(),
                    task_id: task_id.clone(),
                    tag: String::new(),
                },
                reapi_request: None,
            },
            task_id,
        });
    }
    Ok(JobDefinition {
        tasks,
        priority,
        tag,
        basis,
        requestor,
        job_type,
    })
}

/// The value of the optional job field `field`, refused when over [`MAX_NAME_BYTES`].
fn bounded(field: &str, value: Option<String>) -> Result<String, InvalidJob> {
    let value = value.unwrap_or_default();
    if value.len() > MAX_NAME_BYTES {
        return Err(InvalidJob(format!(
            "invalid job: {field} is {} bytes, over the limit of {MAX_NAME_BYTES}",
            value.len()
        )));
    }
    Ok(value)
}

impl Job {
    /// A new job with a fresh UUIDv4 id; an empty tag becomes the job id.
    pub fn new(mut def: JobDefinition) -> Job {
        let id = uuid::Uuid::new_v4().to_string();
        if def.tag.is_empty() {
            def.tag = id.clone();
        }
        Job::with_id(id, def)
    }

    pub fn with_id(id: String, mut def: JobDefinition) -> Job {
        for task in &mut def.tasks {
            task.command.tags = LogTags {
                job_id: id.clone(),
                task_id: task.task_id.clone(),
                tag: def.tag.clone(),
            };
        }
        Job { id, def }
    }

    /// The StartSaga payload: `sched.thrift` Job in TBinaryProtocol.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tasks = self
            .def
            .tasks
            .iter()
            .map(|t| {
                let timeout_ns = t
                    .command
                    .timeout
                    .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                sched::TaskDefinition::new(
                    sched::Command::new(
                        t.command.argv.clone(),
                        Some(t.command.env.clone()),
                        timeout_ns,
                        t.command.snapshot_id.clone(),
                        t.command.reapi_request.clone(),
                    ),
                    Some(t.task_id.clone()),
                )
            })
            .collect();
        let def = &self.def;
        let job = sched::Job::new(
            self.id.clone(),
            sched::JobDefinition::new(
                Some(def.job_type.clone()),
                Some(tasks),
                Some(def.priority),
                Some(def.tag.clone()),
                Some(def.basis.clone()),
                Some(def.requestor.clone()),
            ),
        );
        // Writing to a Vec cannot fail.
        codec::to_bytes(&job).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Job, String> {
        let job: sched::Job =
            codec::from_bytes(bytes).map_err(|e| format!("undecodable job: {e}"))?;
        let def = job.job_definition;
        let tasks = def
            .tasks
            .unwrap_or_default()
            .into_iter()
            .map(|t| TaskDefinition {
                task_id: t.task_id.unwrap_or_default(),
                command: Command {
                    argv: t.command.argv,
                    env: t.command.env_vars.unwrap_or_default(),
                    timeout: t
                        .command
                        .timeout
                        .filter(|ns| *ns > 0)
                        .map(|ns| Duration::from_nanos(ns as u64)),
                    snapshot_id: t.command.snapshot_id,
                    tags: LogTags::default(),
                    reapi_request: t.command.reapi_request,
                },
            })
            .collect();
        Ok(Job::with_id(
            job.id,
            JobDefinition {
                tasks,
                priority: def.priority.unwrap_or(0),
                tag: def.tag.unwrap_or_default(),
                basis: def.basis.unwrap_or_default(),
                requestor: def.requestor.unwrap_or_default(),
                job_type: def.job_type.unwrap_or_default(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn task(id: Option<&str>, argv: &[&str], timeout_ms: Option<i32>) -> scoot::TaskDefinition {
        scoot::TaskDefinition::new(
            scoot::Command::new(argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None),
            None,
            id.map(str::to_string),
            timeout_ms,
        )
    }

    fn job(tasks: Vec<scoot::TaskDefinition>) -> scoot::JobDefinition {
        scoot::JobDefinition::new(tasks, None, None, None, None, None, None, None)
    }

    #[test]
    fn rejects_bad_jobs_with_clear_messages() {
        let cases: Vec<(scoot::JobDefinition, &str)> = vec![
            (job(vec![]), "at least 1 task"),
            (job(vec![task(None, &["true"], None)]), "empty taskId"),
            (job(vec![task(Some(""), &["true"], None)]), "empty taskId"),
            (
                job(vec![task(Some("a"), &[], None)]),
                "task a has an empty argv",
            ),
            (
                job(vec![
                    task(Some("a"), &["true"], None),
                    task(Some("a"), &["false"], None),
                ]),
                "invalid dup taskID a",
            ),
            (
                scoot::JobDefinition {
                    priority: Some(3),
                    ..job(vec![task(Some("a"), &["true"], None)])
                },
                "invalid priority 3, must be between 0-2 inclusive",
            ),
        ];
        for (def, message) in cases {
            let err = validate(def).unwrap_err().0;
            assert!(err.contains(message), "{err:?} lacks {message:?}");
        }
    }

    #[test]
    fn names_are_bounded() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let at_limit = "x".repeat(MAX_NAME_BYTES);
        let with = |field: &str, value: &str| {
            let mut def = job(vec![task(Some("t"), &["true"], None)]);
            let value = Some(value.to_string());
            match field {
                "tag" => def.tag = value,
                "basis" => def.basis = value,
                "requestor" => def.requestor = value,
                "jobType" => def.job_type = value,
                _ => def.tasks[0].task_id = value,
            }
            validate(def)
        };
        for field in ["tag", "basis", "requestor", "jobType"] {
            assert_eq!(
                with(field, &long).unwrap_err().0,
                format!("invalid job: {field} is 1025 bytes, over the limit of 1024")
            );
            assert!(with(field, &at_limit).is_ok(), "{field}");
        }
        assert_eq!(
            with("taskId", &long).unwrap_err().0,
            "invalid job: task 0's taskId is 1025 bytes, over the limit of 1024"
        );
        assert_eq!(
            with("taskId", &at_limit).unwrap().tasks[0].task_id,
            at_limit
        );
    }

    #[test]
    fn timeouts_resolve_task_then_job_default() {
        let def = scoot::JobDefinition {
            default_task_timeout_ms: Some(5000),
            ..job(vec![
                task(Some("own"), &["true"], Some(100)),
                task(Some("inherits"), &["true"], Some(0)),
            ])
        };
        let def = validate(def).unwrap();
        assert_eq!(
            def.tasks[0].command.timeout,
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            def.tasks[1].command.timeout,
            Some(Duration::from_millis(5000))
        );
        let none = validate(job(vec![task(Some("x"), &["true"], None)])).unwrap();
        assert_eq!(none.tasks[0].command.timeout, None);
    }

    #[test]
    fn new_jobs_get_uuid_ids_tags_and_survive_the_saga_encoding() {
        let mut def = validate(job(vec![task(Some("t1"), &["echo", "hi"], Some(1500))])).unwrap();
        def.tasks[0].command.env = BTreeMap::from([("K".to_string(), "V".to_string())]);
        def.tasks[0].command.snapshot_id = "snap".into();
        let job = Job::new(def);
        assert_eq!(uuid::Uuid::parse_str(&job.id).unwrap().get_version_num(), 4);
        assert_eq!(job.def.tag, job.id);
        assert_eq!(job.def.tasks[0].command.tags.job_id, job.id);
        assert_eq!(Job::from_bytes(&job.to_bytes()).unwrap(), job);
        assert!(Job::from_bytes(b"nonsense").is_err());
    }
}
