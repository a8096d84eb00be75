//! The scheduler's one Thrift boundary: CloudScoot requests and replies, and what the saga log
//! holds (a job as a `sched.thrift` Job, a task's run as a `worker.thrift` RunStatus, both in
//! TBinaryProtocol: Scoot's encoding, so either scheduler can recover the other's jobs). The
//! rest of the crate works on `scoot-core` types and its own.

use std::collections::BTreeMap;
use std::time::Duration;

use scoot_core::{Command, LogTags, PlatformProperty, RunStatus};
use scoot_thrift::{codec, convert, sched, scoot, tjson, worker};

use crate::api::{JobState, JobStatus};
use crate::job::{Job, JobDefinition, TaskDefinition};

/// A StartSaga payload that is not a job.
#[derive(Debug, thiserror::Error)]
#[error("undecodable job: {0}")]
pub struct UndecodableJob(#[from] thrift::Error);

/// A RunJob request as a job definition, to be checked by [`crate::job::validate`]. Absent
/// optional fields read as empty; a task's timeout is its own if positive, else the job's
/// default (Scoot's rule), and none at all when neither is positive.
pub fn job_definition_from_wire(def: scoot::JobDefinition) -> JobDefinition {
    let default_timeout_ms = def.default_task_timeout_ms.unwrap_or(0);
    let tasks = def
        .tasks
        .into_iter()
        .map(|task| {
            let task_id = task.task_id.unwrap_or_default();
            let timeout_ms = match task.timeout_ms {
                Some(ms) if ms > 0 => ms,
                _ => default_timeout_ms,
            };
            TaskDefinition {
                command: Command {
                    argv: task.command.argv.unwrap_or_default(),
                    env: task.command.env_vars.unwrap_or_default(),
                    timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
                    snapshot_id: task.snapshot_id.unwrap_or_default(),
                    tags: LogTags {
                        task_id: task_id.clone(),
                        ..LogTags::default()
                    },
                    ..Command::default()
                },
                task_id,
            }
        })
        .collect();
    JobDefinition {
        tasks,
        priority: def.priority.unwrap_or(0),
        tag: def.tag.unwrap_or_default(),
        basis: def.basis.unwrap_or_default(),
        requestor: def.requestor.unwrap_or_default(),
        job_type: def.job_type.unwrap_or_default(),
    }
}

/// A job's StartSaga payload.
pub fn job_to_saga(job: &Job) -> Vec<u8> {
    let tasks = job
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
                    // Absent rather than empty, so CloudScoot jobs are stored as Scoot stored them.
                    (!t.command.platform.is_empty()).then(|| {
                        t.command
                            .platform
                            .iter()
                            .map(|p| sched::PlatformProperty::new(p.name.clone(), p.value.clone()))
                            .collect()
                    }),
                ),
                Some(t.task_id.clone()),
            )
        })
        .collect();
    let def = &job.def;
    let wire = sched::Job::new(
        job.id.clone(),
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
    codec::to_bytes(&wire).unwrap_or_default()
}

/// The job a StartSaga payload holds, with its tasks' log tags set again.
pub fn job_from_saga(bytes: &[u8]) -> Result<Job, UndecodableJob> {
    let job: sched::Job = codec::from_bytes(bytes)?;
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
                platform: t
                    .command
                    .platform
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| PlatformProperty::new(p.name, p.value))
                    .collect(),
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

/// A StartTask or EndTask payload carrying the task's run status.
pub fn run_status_to_saga(status: &RunStatus) -> Vec<u8> {
    // Writing to a Vec cannot fail.
    codec::to_bytes(&convert::status_to_wire(status)).unwrap_or_default()
}

/// The run status in a StartTask or EndTask payload. `None` when there is none: the first
/// StartTask of an attempt is written empty, and a payload that does not decode tells nothing
/// a client could use.
///
/// Go Scoot stored these payloads as Thrift JSON; sagas it wrote (imported from its file log)
/// keep them. A binary struct never begins with `{` (no Thrift type has that code), so the first
/// byte tells the two apart.
pub fn run_status_from_saga(data: &[u8]) -> Option<RunStatus> {
    match data.first()? {
        b'{' => tjson::from_tjson::<worker::RunStatus>(data).ok(),
        _ => codec::from_bytes::<worker::RunStatus>(data).ok(),
    }
    .map(convert::status_from_wire)
}

fn job_state_to_wire(state: JobState) -> scoot::Status {
    match state {
        JobState::NotStarted => scoot::Status::NOT_STARTED,
        JobState::InProgress => scoot::Status::IN_PROGRESS,
        JobState::Completed => scoot::Status::COMPLETED,
        JobState::RollingBack => scoot::Status::ROLLING_BACK,
        JobState::RolledBack => scoot::Status::ROLLED_BACK,
    }
}

/// taskData carries the run's outcome but not its job/task/tag.
fn run_status_to_wire(status: &RunStatus) -> scoot::RunStatus {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    scoot::RunStatus::new(
        scoot::RunStatusState(status.state as i32),
        status.run_id.0.clone(),
        text(&status.stdout_ref),
        text(&status.stderr_ref),
        text(&status.error),
        Some(status.exit_code),
        text(&status.snapshot_id),
        None,
        None,
        None,
    )
}

/// The GetStatus / KillJob reply.
pub fn job_status_to_wire(status: JobStatus) -> scoot::JobStatus {
    let mut task_status = BTreeMap::new();
    let mut task_data = BTreeMap::new();
    for (task_id, (state, run)) in status.tasks {
        if let Some(run) = run {
            task_data.insert(task_id.clone(), run_status_to_wire(&run));
        }
        task_status.insert(task_id, job_state_to_wire(state));
    }
    scoot::JobStatus::new(
        status.id,
        job_state_to_wire(status.state),
        Some(task_status),
        Some(task_data),
    )
}

#[cfg(test)]
mod tests {
    use scoot_core::{RunId, RunState};

    use super::*;
    use crate::job::validate;

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
    fn absent_fields_read_as_empty_and_fail_validation_as_empty() {
        let def = job_definition_from_wire(job(vec![
            task(None, &["true"], None),
            scoot::TaskDefinition::new(
                scoot::Command::new(None, None),
                None,
                Some("b".into()),
                None,
            ),
        ]));
        assert_eq!(def.priority, 0);
        assert_eq!((def.tag.as_str(), def.requestor.as_str()), ("", ""));
        assert_eq!(def.tasks[0].task_id, "");
        assert!(def.tasks[1].command.argv.is_empty());
        assert_eq!(
            validate(&def).unwrap_err().0,
            "invalid job: task 0 has an empty taskId"
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
        let def = job_definition_from_wire(def);
        assert_eq!(
            def.tasks[0].command.timeout,
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            def.tasks[1].command.timeout,
            Some(Duration::from_millis(5000))
        );
        assert_eq!(def.tasks[1].command.tags.task_id, "inherits");
        let none = job_definition_from_wire(job(vec![task(Some("x"), &["true"], None)]));
        assert_eq!(none.tasks[0].command.timeout, None);
    }

    #[test]
    fn jobs_survive_the_saga_encoding() {
        let mut def =
            job_definition_from_wire(job(vec![task(Some("t1"), &["echo", "hi"], Some(1500))]));
        def.tasks[0].command.env = BTreeMap::from([("K".to_string(), "V".to_string())]);
        def.tasks[0].command.snapshot_id = "snap".into();
        def.tasks[0].command.reapi_request = Some(vec![1, 2, 3]);
        def.tasks[0].command.platform = vec![
            PlatformProperty::new("OSFamily", "linux"),
            PlatformProperty::new("unixUID", "0"),
        ];
        let job = Job::new(def);
        assert_eq!(job_from_saga(&job_to_saga(&job)).unwrap(), job);
        assert!(
            job_from_saga(b"nonsense")
                .unwrap_err()
                .to_string()
                .starts_with("undecodable job: ")
        );
    }

    /// A job without platform properties is stored without field 22, as Scoot stored jobs, and
    /// a job Scoot stored (no field 22) reads back with none.
    #[test]
    fn platformless_jobs_are_stored_as_scoot_stored_them() {
        let job = Job::new(job_definition_from_wire(job(vec![task(
            Some("t"),
            &["true"],
            None,
        )])));
        let stored: sched::Job = codec::from_bytes(&job_to_saga(&job)).unwrap();
        let tasks = stored.job_definition.tasks.as_deref().unwrap_or_default();
        assert_eq!(tasks[0].command.platform, None);
        assert!(
            job_from_saga(&job_to_saga(&job)).unwrap().def.tasks[0]
                .command
                .platform
                .is_empty()
        );
    }

    #[test]
    fn task_payloads_carry_run_statuses() {
        let tags = LogTags {
            job_id: "j".into(),
            task_id: "t".into(),
            tag: "g".into(),
        };
        let mut status = RunStatus::failed(RunId("7".into()), 3, "boom", tags);
        status.stdout_ref = "file:///out".into();
        assert_eq!(
            run_status_from_saga(&run_status_to_saga(&status)),
            Some(status)
        );
        assert_eq!(run_status_from_saga(b""), None);
        assert_eq!(run_status_from_saga(b"\xff\xff garbage"), None);
        assert_eq!(run_status_from_saga(b"{not json"), None);
    }

    /// Go Scoot's EndTask payload: a worker RunStatus in Thrift JSON.
    #[test]
    fn scoot_json_payloads_are_read() {
        let stored = br#"{"1":{"i32":3},"2":{"str":"4"},"3":{"str":"http://w/output/stdout_4"},"4":{"str":""},"5":{"str":""},"6":{"i32":1}}"#;
        let status = run_status_from_saga(stored).unwrap();
        assert_eq!(status.state, RunState::Complete);
        assert_eq!(status.run_id, RunId("4".into()));
        assert_eq!(status.exit_code, 1);
        assert_eq!(status.stdout_ref, "http://w/output/stdout_4");
        assert_eq!(status.error, "");
    }

    #[test]
    fn job_status_replies_carry_task_states_and_outcomes() {
        let done = RunStatus::complete(RunId("1".into()), 0, LogTags::default());
        let reply = job_status_to_wire(JobStatus {
            id: "j".into(),
            state: JobState::InProgress,
            tasks: BTreeMap::from([
                ("a".to_string(), (JobState::Completed, Some(done))),
                ("b".to_string(), (JobState::NotStarted, None)),
            ]),
        });
        assert_eq!(reply.status, scoot::Status::IN_PROGRESS);
        let states = reply.task_status.unwrap();
        assert_eq!(states["a"], scoot::Status::COMPLETED);
        assert_eq!(states["b"], scoot::Status::NOT_STARTED);
        let data = reply.task_data.unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(
            data["a"].status,
            scoot::RunStatusState(RunState::Complete as i32)
        );
        assert_eq!(data["a"].error, None);
        assert_eq!(data["a"].job_id, None);
    }
}
