//! Jobs as the scheduler sees them, and the rules a job must meet to be accepted. Their wire
//! and saga encodings are in [`crate::wire`].

use std::collections::HashSet;

use scoot_core::{Command, LogTags};

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

/// Checks a job definition (from RunJob, see [`crate::wire::job_definition_from_wire`]). Checks
/// that need the scheduler's state (requestor limits, basis tags) happen at admission.
pub fn validate(def: &JobDefinition) -> Result<(), InvalidJob> {
    if def.tasks.is_empty() {
        return Err(InvalidJob("invalid job: must have at least 1 task".into()));
    }
    let priority = def.priority;
    if !(0..=2).contains(&priority) {
        return Err(InvalidJob(format!(
            "invalid priority {priority}, must be between 0-2 inclusive"
        )));
    }
    bounded("tag", &def.tag)?;
    bounded("basis", &def.basis)?;
    bounded("requestor", &def.requestor)?;
    bounded("jobType", &def.job_type)?;
    let mut seen = HashSet::new();
    for (index, task) in def.tasks.iter().enumerate() {
        let task_id = &task.task_id;
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
        if !seen.insert(task_id) {
            return Err(InvalidJob(format!("invalid dup taskID {task_id}")));
        }
        if task.command.argv.is_empty() {
            return Err(InvalidJob(format!(
                "invalid job: task {task_id} has an empty argv"
            )));
        }
    }
    Ok(())
}

/// Refuses the job field `field` when over [`MAX_NAME_BYTES`].
fn bounded(field: &str, value: &str) -> Result<(), InvalidJob> {
    if value.len() > MAX_NAME_BYTES {
        return Err(InvalidJob(format!(
            "invalid job: {field} is {} bytes, over the limit of {MAX_NAME_BYTES}",
            value.len()
        )));
    }
    Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, argv: &[&str]) -> TaskDefinition {
        TaskDefinition {
            task_id: id.to_string(),
            command: Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Command::default()
            },
        }
    }

    fn job(tasks: Vec<TaskDefinition>) -> JobDefinition {
        JobDefinition {
            tasks,
            ..JobDefinition::default()
        }
    }

    #[test]
    fn rejects_bad_jobs_with_clear_messages() {
        let cases: Vec<(JobDefinition, &str)> = vec![
            (job(vec![]), "at least 1 task"),
            (job(vec![task("", &["true"])]), "task 0 has an empty taskId"),
            (job(vec![task("a", &[])]), "task a has an empty argv"),
            (
                job(vec![task("a", &["true"]), task("a", &["false"])]),
                "invalid dup taskID a",
            ),
            (
                JobDefinition {
                    priority: 3,
                    ..job(vec![task("a", &["true"])])
                },
                "invalid priority 3, must be between 0-2 inclusive",
            ),
            (
                JobDefinition {
                    priority: -1,
                    ..job(vec![task("a", &["true"])])
                },
                "invalid priority -1",
            ),
        ];
        for (def, message) in cases {
            let err = validate(&def).unwrap_err().0;
            assert!(err.contains(message), "{err:?} lacks {message:?}");
        }
        assert_eq!(validate(&job(vec![task("a", &["true"])])), Ok(()));
    }

    #[test]
    fn names_are_bounded() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let at_limit = "x".repeat(MAX_NAME_BYTES);
        let with = |field: &str, value: &str| {
            let mut def = job(vec![task("t", &["true"])]);
            let value = value.to_string();
            match field {
                "tag" => def.tag = value,
                "basis" => def.basis = value,
                "requestor" => def.requestor = value,
                "jobType" => def.job_type = value,
                _ => def.tasks[0].task_id = value,
            }
            validate(&def)
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
        assert!(with("taskId", &at_limit).is_ok());
    }

    #[test]
    fn new_jobs_get_uuid_ids_and_tags() {
        let job = Job::new(job(vec![task("t1", &["echo", "hi"])]));
        assert_eq!(uuid::Uuid::parse_str(&job.id).unwrap().get_version_num(), 4);
        assert_eq!(job.def.tag, job.id);
        assert_eq!(job.def.tasks[0].command.tags.job_id, job.id);
        assert_eq!(job.def.tasks[0].command.tags.task_id, "t1");
        let tagged = Job::new(JobDefinition {
            tag: "mine".into(),
            ..job.def.clone()
        });
        assert_eq!(tagged.def.tasks[0].command.tags.tag, "mine");
    }
}
