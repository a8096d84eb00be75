//! The CloudScoot Thrift service over [`SchedulerApi`].
//!
//! Like Scoot, most failures go out as a TApplicationException INTERNAL_ERROR reading
//! "Internal error processing <Method>: <message>"; GetStatus reports saga-log trouble as the
//! declared ScootServerError, and RunJob as the declared CanNotScheduleNow: nothing of the job
//! was recorded, and the same job may be sent again (while the database of a PostgreSQL saga log
//! restarts, say).

use std::collections::BTreeMap;

use scoot_thrift::scoot;
use thrift::{ApplicationError, ApplicationErrorKind};
use tokio::runtime::Handle;

use crate::api::{ApiError, SchedulerApi};
use crate::{job, wire};

pub struct CloudScootHandler {
    api: SchedulerApi,
    runtime: Handle,
}

impl CloudScootHandler {
    pub fn new(api: SchedulerApi, runtime: Handle) -> CloudScootHandler {
        CloudScootHandler { api, runtime }
    }

    fn block_on<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> thrift::Result<T> {
        self.runtime
            .block_on(call)
            .map_err(|err| internal(method, &err.to_string()))
    }
}

/// When a client may send a job again that the saga log could not take.
const RUN_JOB_RETRY_AFTER_MS: i64 = 1000;

fn internal(method: &str, message: &str) -> thrift::Error {
    tracing::info!(method, error = message, "request failed");
    thrift::Error::Application(ApplicationError::new(
        ApplicationErrorKind::InternalError,
        format!("Internal error processing {method}: {message}"),
    ))
}

impl scoot::CloudScootSyncHandler for CloudScootHandler {
    fn handle_run_job(&self, job: scoot::JobDefinition) -> thrift::Result<scoot::JobId> {
        let def = wire::job_definition_from_wire(job);
        job::validate(&def).map_err(|e| internal("RunJob", &e.0))?;
        match self.runtime.block_on(self.api.run_job(def)) {
            Ok(id) => Ok(scoot::JobId::new(id)),
            Err(ApiError::SagaLog(message)) => {
                tracing::warn!(error = %message, "RunJob: the saga log cannot take jobs now");
                Err(thrift::Error::User(Box::new(
                    scoot::CanNotScheduleNow::new(RUN_JOB_RETRY_AFTER_MS),
                )))
            }
            Err(err) => Err(internal("RunJob", &err.to_string())),
        }
    }

    fn handle_get_status(&self, job_id: String) -> thrift::Result<scoot::JobStatus> {
        match self.runtime.block_on(self.api.job_status(&job_id)) {
            Ok(status) => Ok(wire::job_status_to_wire(status)),
            Err(ApiError::SagaLog(message)) => {
                tracing::warn!(job_id, error = %message, "GetStatus: saga log error");
                Err(thrift::Error::User(Box::new(scoot::ScootServerError::new(
                    None,
                ))))
            }
            Err(err) => Err(internal("GetStatus", &err.to_string())),
        }
    }

    fn handle_kill_job(&self, job_id: String) -> thrift::Result<scoot::JobStatus> {
        self.block_on("KillJob", self.api.kill_job(&job_id))
            .map(wire::job_status_to_wire)
    }

    fn handle_offline_worker(&self, req: scoot::OfflineWorkerReq) -> thrift::Result<()> {
        tracing::info!(node = %req.id, requestor = %req.requestor, "OfflineWorker");
        self.block_on("OfflineWorker", self.api.offline_worker(&req.id))
    }

    fn handle_reinstate_worker(&self, req: scoot::ReinstateWorkerReq) -> thrift::Result<()> {
        tracing::info!(node = %req.id, requestor = %req.requestor, "ReinstateWorker");
        self.block_on("ReinstateWorker", self.api.reinstate_worker(&req.id))
    }

    fn handle_get_scheduler_status(&self) -> thrift::Result<scoot::SchedulerStatus> {
        let (current, max) = self.block_on("GetSchedulerStatus", self.api.scheduler_status())?;
        Ok(scoot::SchedulerStatus::new(current, max))
    }

    fn handle_set_scheduler_status(&self, max_tasks: i32) -> thrift::Result<()> {
        self.block_on("SetSchedulerStatus", self.api.set_throttle(max_tasks))
    }

    fn handle_get_class_load_percents(&self) -> thrift::Result<BTreeMap<String, i32>> {
        let config = self.block_on("GetClassLoadPercents", self.api.alg_config())?;
        Ok(config.load_percents.into_iter().collect())
    }

    fn handle_set_class_load_percents(
        &self,
        load_percents: BTreeMap<String, i32>,
    ) -> thrift::Result<()> {
        self.block_on(
            "SetClassLoadPercents",
            self.api.set_load_percents(load_percents),
        )
    }

    fn handle_get_requestor_to_class_map(&self) -> thrift::Result<BTreeMap<String, String>> {
        let config = self.block_on("GetRequestorToClassMap", self.api.alg_config())?;
        Ok(config.requestor_to_class.into_iter().collect())
    }

    fn handle_set_requestor_to_class_map(
        &self,
        map: BTreeMap<String, String>,
    ) -> thrift::Result<()> {
        self.block_on("SetRequestorToClassMap", self.api.set_requestor_map(map))
    }

    fn handle_get_rebalance_minimum_duration(&self) -> thrift::Result<i32> {
        let config = self.block_on("GetRebalanceMinimumDuration", self.api.alg_config())?;
        Ok((config.rebalance_min_duration.as_secs() / 60) as i32)
    }

    fn handle_set_rebalance_minimum_duration(&self, duration_min: i32) -> thrift::Result<()> {
        self.block_on(
            "SetRebalanceMinimumDuration",
            self.api.set_rebalance_minimum(duration_min),
        )
    }

    fn handle_get_rebalance_threshold(&self) -> thrift::Result<i32> {
        let config = self.block_on("GetRebalanceThreshold", self.api.alg_config())?;
        Ok(config.rebalance_threshold)
    }

    fn handle_set_rebalance_threshold(&self, threshold: i32) -> thrift::Result<()> {
        self.block_on(
            "SetRebalanceThreshold",
            self.api.set_rebalance_threshold(threshold),
        )
    }
}
