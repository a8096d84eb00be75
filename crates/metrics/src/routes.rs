//! The HTTP routes every scoot server serves for its metrics.

use std::collections::HashMap;

use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// `/admin/metrics.json` (`?pretty=true` indents) and `/metrics`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin/metrics.json", get(scoot))
        .route("/metrics", get(prometheus))
}

async fn scoot(Query(query): Query<HashMap<String, String>>) -> impl IntoResponse {
    let pretty = query.get("pretty").is_some_and(|v| v == "true");
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::scoot_json(pretty),
    )
}

async fn prometheus() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::prometheus_text(),
    )
}

/// What Scoot's servers answered at `/`.
pub async fn scoot_root() -> impl IntoResponse {
    (
        StatusCode::NOT_IMPLEMENTED,
        "Common paths: '/admin/metrics.json', '/metrics'\n",
    )
}
