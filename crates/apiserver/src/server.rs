//! Runs the apiserver's HTTP side until shutdown.

use std::future::Future;

use tokio::net::TcpListener;

use crate::ApiServerConfig;
use crate::http::router;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
}

/// Serves the apiserver's routes on `http` until `shutdown` completes, then lets requests in
/// flight finish and returns.
pub async fn run(
    http: TcpListener,
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    let addr = http.local_addr().map_err(ApiServerError::Listener)?;
    tracing::info!(
        http = %addr,
        viewer = config.view.is_some(),
        max_upload_bytes = config.max_upload_bytes,
        "apiserver serving"
    );
    axum::serve(http, router(config))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ApiServerError::Http)?;
    tracing::info!("apiserver stopped");
    Ok(())
}
