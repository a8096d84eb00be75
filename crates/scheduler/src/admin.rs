//! The scheduler's HTTP port: `/health`, and the operator's actions on workers, which need an
//! `admin` token when the scheduler has tokens (`-auth_tokens`):
//!
//! * `POST /admin/workers/<node>/offline`: the worker takes no new tasks (Scoot's
//!   OfflineWorker; its running task finishes).
//! * `POST /admin/workers/<node>/reinstate`: it takes tasks again (ReinstateWorker).
//!
//! `<node>` is the worker's id as the scheduler lists it (`host:port`). `/admin/metrics.json`
//! and `/metrics` serve the metrics (`scoot_metrics`), without tokens, like `/health`. The web
//! pages on the same port, whose workers page has buttons for these actions, are
//! [`crate::ui`]'s.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use scoot_security::{Scope, Tokens};

use crate::api::{ApiError, SchedulerApi};

#[derive(Clone)]
struct Admin {
    api: SchedulerApi,
    tokens: Option<Tokens>,
}

pub fn router(api: SchedulerApi, tokens: Option<Tokens>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/admin/workers/{node}/offline", post(offline))
        .route("/admin/workers/{node}/reinstate", post(reinstate))
        .with_state(Admin { api, tokens })
        .merge(scoot_metrics::routes())
}

async fn offline(
    State(admin): State<Admin>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(admin, node, headers, Action::Offline).await
}

async fn reinstate(
    State(admin): State<Admin>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(admin, node, headers, Action::Reinstate).await
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Offline,
    Reinstate,
}

async fn act(admin: Admin, node: String, headers: HeaderMap, action: Action) -> Response {
    if let Err(refusal) =
        scoot_security::http::authorize(admin.tokens.as_ref(), &headers, Scope::Admin)
    {
        return refusal;
    }
    tracing::info!(%node, ?action, "worker action over HTTP");
    answer(match action {
        Action::Offline => admin.api.offline_worker(&node).await,
        Action::Reinstate => admin.api.reinstate_worker(&node).await,
    })
}

fn answer(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => "ok\n".into_response(),
        Err(ApiError::Invalid(why)) => {
            (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}
