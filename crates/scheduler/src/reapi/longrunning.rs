//! google.longrunning.Operations over the executions the [`Tracker`] knows: Get, List, Delete,
//! Cancel (which kills the operation's job) and Wait.

use std::sync::Arc;
use std::time::Duration;

use scoot_proto::longrunning::operations_server::Operations;
use scoot_proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use tonic::{Request, Response, Status};

use super::operations::{Tracker, api_status};

const DEFAULT_PAGE_SIZE: usize = 100;
/// WaitOperation waits at most this long, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct OperationsService {
    tracker: Arc<Tracker>,
}

impl OperationsService {
    pub fn new(tracker: Arc<Tracker>) -> OperationsService {
        OperationsService { tracker }
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let request = request.into_inner();
        if !request.filter.is_empty() {
            return Err(Status::invalid_argument(
                "ListOperations filters are not supported",
            ));
        }
        let start = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse::<usize>()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?
        };
        let size = match request.page_size {
            n if n > 0 => n as usize,
            _ => DEFAULT_PAGE_SIZE,
        };
        let all = self.tracker.list();
        let end = start.saturating_add(size).min(all.len());
        let operations = all.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
        let next_page_token = if end < all.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let tracked = self.tracker.lookup(&request.into_inner().name).await?;
        Ok(Response::new(tracked.current()))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.tracker.forget(&request.into_inner().name)?;
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        let tracked = self.tracker.lookup(&name).await?;
        if tracked.current().done {
            return Ok(Response::new(()));
        }
        match self.tracker.api().kill_job(&name).await {
            Ok(_) => Ok(Response::new(())),
            // Finished (or already killed) between the check and the kill: nothing to cancel.
            Err(crate::api::ApiError::Invalid(message)) => {
                tracing::debug!(operation = %name, %message, "cancel found nothing to kill");
                Ok(Response::new(()))
            }
            Err(e) => Err(api_status(e)),
        }
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let request = request.into_inner();
        let wait = request
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .map_or(MAX_WAIT, |t| t.min(MAX_WAIT));
        let tracked = self.tracker.lookup(&request.name).await?;
        let mut receiver = tracked.subscribe();
        let _ = tokio::time::timeout(wait, receiver.wait_for(|op| op.done)).await;
        Ok(Response::new(tracked.current()))
    }
}
