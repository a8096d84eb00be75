//! The Worker Thrift service over a [`QueueRunner`]. Like Scoot's, it never returns a Thrift
//! error: refusals come back as FAILED statuses whose `error` says why. `QueryWorker` also
//! reports the worker's platform properties, which the scheduler matches tasks against.

use std::time::Duration;

use scoot_core::{PlatformProperty, Query, RunId, RunStatus, StateMask, Wait};
use scoot_reapi::platform::{SANDBOX, UNSANDBOXED, host_facts};
use scoot_runner::queue::{QueueRunner, WorkerPhase};
use scoot_thrift::{convert, worker};
use tokio::runtime::Handle;

/// Longest a WaitRun call may block, well under the 60 s I/O timeout of Scoot's clients.
const MAX_WAIT_RUN_MS: i32 = 30_000;

pub struct WorkerHandler {
    runner: QueueRunner,
    /// Thrift calls arrive on blocking threads; async runner calls are run on this runtime.
    runtime: Handle,
    /// What `QueryWorker` says the worker offers.
    platform: Vec<PlatformProperty>,
}

impl WorkerHandler {
    /// A handler reporting the machine's facts and `sandbox=none` (an unsandboxed worker)
    /// until [`with_platform`](WorkerHandler::with_platform) says otherwise.
    pub fn new(runner: QueueRunner, runtime: Handle) -> WorkerHandler {
        let mut platform = host_facts();
        platform.push(PlatformProperty::new(SANDBOX, UNSANDBOXED));
        WorkerHandler {
            runner,
            runtime,
            platform,
        }
    }

    /// Reports `platform` as the properties this worker offers.
    pub fn with_platform(mut self, platform: Vec<PlatformProperty>) -> WorkerHandler {
        self.platform = platform;
        self
    }
}

impl worker::WorkerSyncHandler for WorkerHandler {
    fn handle_query_worker(&self) -> thrift::Result<worker::WorkerStatus> {
        scoot_runner::stats::QUERIES.inc();
        let (runs, mut service) = self.runner.statuses().query_now(&Query::all());
        service.platform = self.platform.clone();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use scoot_runner::execer::sim::SimExecer;
    use scoot_runner::invoker::Invoker;
    use scoot_runner::output::OutputStore;
    use scoot_runner::status::StatusManager;
    use scoot_thrift::worker::WorkerSyncHandler;

    use super::*;

    #[tokio::test]
    async fn query_worker_reports_the_platform_offered() {
        let outputs = tempfile::tempdir().unwrap();
        let invoker = Invoker {
            execer: Arc::new(SimExecer),
            filer: None,
            actions: None,
            outputs: Arc::new(OutputStore::new(outputs.path().to_path_buf(), None, 1)),
            statuses: Arc::new(StatusManager::new(1)),
        };
        let runner = QueueRunner::new(invoker, async { Ok(()) });
        let handler = WorkerHandler::new(runner, Handle::current());
        let reported = |handler: &WorkerHandler| {
            let status = handler.handle_query_worker().unwrap();
            convert::worker_status_from_wire(status).1.platform
        };
        let mut unsandboxed = host_facts();
        unsandboxed.push(PlatformProperty::new(SANDBOX, UNSANDBOXED));
        assert_eq!(reported(&handler), unsandboxed);
        let rootfs = vec![
            PlatformProperty::new("OSFamily", "linux"),
            PlatformProperty::new(SANDBOX, "rootfs"),
            PlatformProperty::new("pool", "big"),
        ];
        let handler = handler.with_platform(rootfs.clone());
        assert_eq!(reported(&handler), rootfs);
    }
}
