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
