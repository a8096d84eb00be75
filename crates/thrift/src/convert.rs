//! Conversions between the Worker API's wire types and `scoot-core` types.
//!
//! Wire rules kept here: optional strings are omitted when empty, `exitCode` is always written,
//! a non-positive `timeoutMs` means "no timeout", unknown state numbers read as UNKNOWN, a
//! worker's `platform` is written only when it has properties and reads as empty when absent.

use std::time::Duration;

use scoot_core::{Command, LogTags, PlatformProperty, RunId, RunState, RunStatus, ServiceStatus};

use crate::worker;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub fn command_from_wire(cmd: worker::RunCommand) -> Command {
    Command {
        argv: cmd.argv,
        env: cmd.env.unwrap_or_default(),
        timeout: cmd
            .timeout_ms
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64)),
        snapshot_id: cmd.snapshot_id.unwrap_or_default(),
        tags: LogTags {
            job_id: cmd.job_id.unwrap_or_default(),
            task_id: cmd.task_id.unwrap_or_default(),
            tag: cmd.tag.unwrap_or_default(),
        },
        reapi_request: cmd.reapi_request,
        // The Worker API does not carry it: a worker reads an action's platform from the
        // action itself.
        platform: Vec::new(),
    }
}

/// The scheduler's form of a command: every optional field set, as Scoot's scheduler sends them.
pub fn command_to_wire(cmd: &Command) -> worker::RunCommand {
    let timeout_ms = cmd
        .timeout
        .map(|t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX))
        .unwrap_or(0);
    worker::RunCommand {
        argv: cmd.argv.clone(),
        env: Some(cmd.env.clone()),
        snapshot_id: Some(cmd.snapshot_id.clone()),
        timeout_ms: Some(timeout_ms),
        job_id: Some(cmd.tags.job_id.clone()),
        task_id: Some(cmd.tags.task_id.clone()),
        tag: Some(cmd.tags.tag.clone()),
        reapi_request: cmd.reapi_request.clone(),
    }
}

pub fn status_to_wire(status: &RunStatus) -> worker::RunStatus {
    worker::RunStatus {
        status: worker::Status(status.state as i32),
        run_id: status.run_id.0.clone(),
        out_uri: non_empty(&status.stdout_ref),
        err_uri: non_empty(&status.stderr_ref),
        error: non_empty(&status.error),
        exit_code: Some(status.exit_code),
        snapshot_id: non_empty(&status.snapshot_id),
        job_id: non_empty(&status.tags.job_id),
        task_id: non_empty(&status.tags.task_id),
        tag: non_empty(&status.tags.tag),
        reapi_response: status.reapi_response.clone(),
    }
}

pub fn status_from_wire(status: worker::RunStatus) -> RunStatus {
    RunStatus {
        run_id: RunId(status.run_id),
        state: RunState::from_i32(status.status.0).unwrap_or(RunState::Unknown),
        tags: LogTags {
            job_id: status.job_id.unwrap_or_default(),
            task_id: status.task_id.unwrap_or_default(),
            tag: status.tag.unwrap_or_default(),
        },
        stdout_ref: status.out_uri.unwrap_or_default(),
        stderr_ref: status.err_uri.unwrap_or_default(),
        snapshot_id: status.snapshot_id.unwrap_or_default(),
        exit_code: status.exit_code.unwrap_or_default(),
        error: status.error.unwrap_or_default(),
        reapi_response: status.reapi_response,
    }
}

pub fn worker_status_to_wire(runs: &[RunStatus], service: &ServiceStatus) -> worker::WorkerStatus {
    let platform = service
        .platform
        .iter()
        .map(|p| worker::PlatformProperty::new(p.name.clone(), p.value.clone()))
        .collect::<Vec<_>>();
    worker::WorkerStatus {
        runs: runs.iter().map(status_to_wire).collect(),
        initialized: service.initialized,
        is_healthy: service.is_healthy,
        error: service.error.clone(),
        platform: (!platform.is_empty()).then_some(platform),
    }
}

/// What a worker says about itself: its retained runs and its service status.
pub fn worker_status_from_wire(status: worker::WorkerStatus) -> (Vec<RunStatus>, ServiceStatus) {
    let service = ServiceStatus {
        initialized: status.initialized,
        is_healthy: status.is_healthy,
        error: status.error,
        platform: status
            .platform
            .unwrap_or_default()
            .into_iter()
            .map(|p| PlatformProperty::new(p.name, p.value))
            .collect(),
    };
    (
        status.runs.into_iter().map(status_from_wire).collect(),
        service,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> LogTags {
        LogTags {
            job_id: "job".into(),
            task_id: "task".into(),
            tag: "tag".into(),
        }
    }

    #[test]
    fn command_round_trips_with_every_field_set() {
        let cmd = Command {
            argv: vec!["echo".into(), "hi".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            timeout: Some(Duration::from_millis(1500)),
            snapshot_id: "snap".into(),
            tags: tags(),
            reapi_request: Some(vec![0x0a, 0x00]),
            platform: Vec::new(),
        };
        let wire = command_to_wire(&cmd);
        assert_eq!(wire.timeout_ms, Some(1500));
        assert_eq!(command_from_wire(wire), cmd);
    }

    #[test]
    fn non_positive_timeout_means_none() {
        for ms in [None, Some(0), Some(-5)] {
            let wire = worker::RunCommand::new(
                vec!["true".into()],
                None,
                None,
                ms,
                None,
                None,
                None,
                None,
            );
            assert_eq!(command_from_wire(wire).timeout, None);
        }
    }

    #[test]
    fn empty_strings_are_omitted_and_exit_code_always_written() {
        let wire = status_to_wire(&RunStatus::pending(RunId::from("0"), LogTags::default()));
        assert_eq!(wire.status, worker::Status::PENDING);
        assert_eq!(wire.exit_code, Some(0));
        assert!(wire.out_uri.is_none() && wire.error.is_none() && wire.job_id.is_none());
    }

    #[test]
    fn status_round_trips() {
        let status = RunStatus {
            stdout_ref: "out".into(),
            stderr_ref: "err".into(),
            reapi_response: Some(vec![1, 2, 3]),
            ..RunStatus::failed(RunId::from("7"), 240, "could not exec: nope", tags())
        };
        assert_eq!(status_from_wire(status_to_wire(&status)), status);
    }

    #[test]
    fn worker_platform_round_trips_and_is_absent_when_empty() {
        let runs = [RunStatus::pending(RunId::from("0"), tags())];
        let service = ServiceStatus {
            platform: vec![
                PlatformProperty::new("OSFamily", "linux"),
                PlatformProperty::new("sandbox", "rootfs"),
            ],
            ..ServiceStatus::ready()
        };
        let wire = worker_status_to_wire(&runs, &service);
        let bytes = crate::codec::to_bytes(&wire).unwrap();
        let decoded: worker::WorkerStatus = crate::codec::from_bytes(&bytes).unwrap();
        assert_eq!(
            worker_status_from_wire(decoded),
            (runs.to_vec(), service.clone())
        );
        // Scoot's workers send no platform; ours send none when they have nothing to offer.
        let bare = worker_status_to_wire(&[], &ServiceStatus::ready());
        assert_eq!(bare.platform, None);
        assert_eq!(worker_status_from_wire(bare).1, ServiceStatus::ready());
    }

    #[test]
    fn unknown_state_numbers_read_as_unknown() {
        let wire = worker::RunStatus::new(
            worker::Status(42),
            "1".into(),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        );
        assert_eq!(status_from_wire(wire).state, RunState::Unknown);
    }
}
