//! The Worker Thrift service over a [`QueueRunner`]. Like Scoot's, it never returns a Thrift
//! error: refusals come back as FAILED statuses whose `error` says why.

use std::time::Duration;

use scoot_core::{Query, RunId, RunStatus, StateMask, Wait};
use scoot_runner::queue::{QueueRunner, WorkerPhase};
use scoot_thrift::{convert, worker};
use tokio::runtime::Handle;

/// Longest a WaitRun call may block, well under the 60 s I/O timeout of Scoot's clients.
const MAX_WAIT_RUN_MS: i32 = 30_000;

pub struct WorkerHandler {
    runner: QueueRunner,
    /// Thrift calls arrive on blocking threads; async runner calls are run on this runtime.
    runtime: Handle,
}

impl WorkerHandler {
    pub fn new(runner: QueueRunner, runtime: Handle) -> WorkerHandler {
        WorkerHandler { runner, runtime }
    }
}

impl worker::WorkerSyncHandler for WorkerHandler {
    fn handle_query_worker(&self) -> thrift::Result<worker::WorkerStatus> {
        let (runs, mut service) = self.runner.statuses().query_now(&Query::all());
        if self.runner.phase() == WorkerPhase::Draining {
            // Tell schedulers to stop sending work while the current run finishes.
            service.is_healthy = false;
            service.error = scoot_runner::queue::WORKER_DRAINING_MSG.to_string();
        }
        Ok(convert::worker_status_to_wire(&runs, &service))
    }

    fn handle_run(&self, cmd: worker::RunCommand) -> thrift::Result<worker::RunStatus> {
        let cmd = convert::command_from_wire(cmd);
        let status = match self.runner.run(cmd.clone()) {
            Ok(status) => status,
            Err(refused) => {
                tracing::info!(
                    job_id = %cmd.tags.job_id,
                    task_id = %cmd.tags.task_id,
                    reason = %refused,
                    "run refused"
                );
                RunStatus::failed(RunId::default(), 0, refused.to_string(), cmd.tags)
            }
        };
        Ok(convert::status_to_wire(&status))
    }

    fn handle_wait_run(
        &self,
        run_id: String,
        state_mask: i64,
        timeout_ms: i32,
    ) -> thrift::Result<worker::RunStatus> {
        let run_id = RunId(run_id);
        let statuses = self.runner.statuses();
        let any = Query::run(run_id.clone(), StateMask::ALL);
        let Some(current) = statuses.query_now(&any).0.pop() else {
            return Ok(convert::status_to_wire(&RunStatus::unknown(run_id)));
        };
        let timeout = Duration::from_millis(timeout_ms.clamp(0, MAX_WAIT_RUN_MS) as u64);
        let wanted = Query::run(run_id, StateMask(state_mask as u64));
        let found = self
            .runtime
            .block_on(statuses.query(&wanted, Wait::up_to(timeout)))
            .ok()
            .and_then(|(mut runs, _)| runs.pop());
        Ok(convert::status_to_wire(&found.unwrap_or(current)))
    }

    fn handle_abort(&self, run_id: String) -> thrift::Result<worker::RunStatus> {
        let status = self.runtime.block_on(self.runner.abort(&RunId(run_id)));
        Ok(convert::status_to_wire(&status))
    }
}
