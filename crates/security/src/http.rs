//! Serving an axum app over plain TCP or TLS.

use std::future::Future;

use tokio::net::TcpListener;

use crate::server_tls::{ServerTls, TlsIncoming};

/// Serves `app` on `listener` until `shutdown` completes, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(tls) => {
            axum::serve(TlsIncoming::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Checks a request's `Authorization` header for `scope`; `tokens: None` lets everyone in.
/// A refusal is the response to send: 401 when the caller is unknown, 403 when its token lacks
/// the scope, with the reason as the body.
#[allow(clippy::result_large_err)]
pub fn authorize(
    tokens: Option<&crate::Tokens>,
    headers: &http::HeaderMap,
    scope: crate::Scope,
) -> Result<(), axum::response::Response> {
    use axum::response::IntoResponse;
    let Some(tokens) = tokens else {
        return Ok(());
    };
    let header = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match tokens.authorize(header, Some(scope)) {
        Ok(name) => {
            tracing::info!(token = %name, %scope, "authorised an HTTP request");
            Ok(())
        }
        Err(error) => {
            let status = if error.is_denied() {
                http::StatusCode::FORBIDDEN
            } else {
                http::StatusCode::UNAUTHORIZED
            };
            Err((status, format!("{error}\n")).into_response())
        }
    }
}
