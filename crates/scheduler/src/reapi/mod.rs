//! The Bazel Remote Execution API on the scheduler's gRPC port.
//!
//! One endpoint serves everything a client needs: Capabilities (with execution enabled), the
//! CAS, ByteStream and ActionCache over the scheduler's own store (see [`scoot_cas_services`]), plus
//! [`execution`] (Execute, WaitExecution) and [`longrunning`] (google.longrunning.Operations).
//! Workers fetch inputs from and upload outputs to this same CAS, or, when it is sharded over
//! the apiservers, to the shards directly.
//!
//! * [`operations`]: the [`Tracker`](operations::Tracker) of executions and how a run's status
//!   becomes an Operation.
//! * [`shards`]: the action cache on a sharded CAS.

pub mod execution;
pub mod longrunning;
pub mod operations;
pub mod shards;

use std::sync::Arc;

use scoot_cas_services::CasServices;
use scoot_proto::longrunning::operations_server::OperationsServer;
use scoot_proto::reapi::v2::execution_server::ExecutionServer;
use tonic::service::Routes;

use execution::ExecutionService;
use longrunning::OperationsService;
use operations::Tracker;

/// Every REAPI service, over `cas` (built with execution enabled) and `tracker`.
pub fn routes(cas: CasServices, tracker: Arc<Tracker>) -> Routes {
    let limit = cas.config().max_message_bytes;
    cas.routes()
        .add_service(
            ExecutionServer::new(ExecutionService::new(tracker.clone(), cas.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            OperationsServer::new(OperationsService::new(tracker))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
}
