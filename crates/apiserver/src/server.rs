//! Runs the apiserver: the HTTP side and, when given a gRPC listener, the REAPI cache services.

use std::future::Future;
use std::time::Duration;

use scoot_cas_services::CasServices;
use scoot_security::{ServerTls, Tokens};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ApiServerConfig;
use crate::http::router;

/// After shutdown is asked for, gRPC calls still in flight (long downloads, streams a client
/// keeps open) get this long to finish before the server stops anyway.
pub const GRPC_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("grpc server: {0}")]
    Grpc(String),
}

/// The gRPC side of an apiserver: where it listens and what it serves there.
pub struct GrpcSide {
    pub listener: TcpListener,
    pub services: CasServices,
    pub tls: Option<ServerTls>,
    /// Tokens every call must carry; `None` serves anyone.
    pub tokens: Option<Tokens>,
    /// Connection, rate, stream, idle and buffer limits of the port (`-max_grpc_*`,
    /// `-cas_buffer_size`).
    pub limits: scoot_cas_services::limits::GrpcLimits,
}

/// Serves the apiserver's HTTP routes on `http` until `shutdown` completes, then lets requests
/// in flight finish and returns.
pub async fn run(
    http: TcpListener,
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    run_with_grpc(http, None, config, shutdown).await
}

/// Serves HTTP on `http` and, with `grpc`, the REAPI cache services (Capabilities,
/// ContentAddressableStorage, ByteStream, ActionCache) on its listener. Both stop when
/// `shutdown` completes or when either of them fails; HTTP requests in flight finish, gRPC
/// calls get [`GRPC_DRAIN`].
pub async fn run_with_grpc(
    http: TcpListener,
    grpc: Option<GrpcSide>,
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    crate::stats::register();
    let http_addr = http.local_addr().map_err(ApiServerError::Listener)?;
    let grpc_addr = match &grpc {
        Some(side) => Some(
            side.listener
                .local_addr()
                .map_err(ApiServerError::Listener)?,
        ),
        None => None,
    };
    tracing::info!(
        http = %http_addr,
        grpc = ?grpc_addr,
        viewer = config.view.is_some(),
        max_upload_bytes = config.max_upload_bytes,
        "apiserver serving"
    );

    // Whoever stops first (the caller's shutdown, or a server failing) stops the others.
    let (stop_tx, stop_rx) = watch::channel(false);
    let trigger = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
    };

    let http_server = {
        let stop_tx = stop_tx.clone();
        let stop_rx = stop_rx.clone();
        async move {
            let tls = config.http_tls.clone();
            let result = scoot_security::http::serve(http, tls, router(config), stopped(stop_rx))
                .await
                .map_err(ApiServerError::Http);
            let _ = stop_tx.send(true);
            result
        }
    };
    let grpc_server = async move {
        let Some(GrpcSide {
            listener,
            services,
            tls,
            tokens,
            limits,
        }) = grpc
        else {
            return Ok(());
        };
        let serving = scoot_cas_services::serve_with_limits(
            listener,
            services.routes(),
            tls,
            tokens,
            &limits,
            stopped(stop_rx.clone()),
        );
        let drained = async {
            stopped(stop_rx).await;
            tokio::time::sleep(GRPC_DRAIN).await;
        };
        let result = tokio::select! {
            result = serving => result.map_err(|e| ApiServerError::Grpc(e.to_string())),
            () = drained => {
                tracing::warn!("gRPC calls still running after {GRPC_DRAIN:?}; stopping anyway");
                Ok(())
            }
        };
        let _ = stop_tx.send(true);
        result
    };

    let (http_result, grpc_result) = tokio::join!(http_server, grpc_server);
    trigger.abort();
    http_result?;
    grpc_result?;
    tracing::info!("apiserver stopped");
    Ok(())
}

/// Completes once the stop flag is raised (or every sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use scoot_bundlestore::store::FileStore;
    use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
    use scoot_proto::bytestream::{ReadRequest, WriteRequest};
    use scoot_proto::reapi::v2;
    use scoot_proto::reapi::v2::capabilities_client::CapabilitiesClient;
    use tokio::sync::oneshot;

    use super::*;
    use crate::setup::{cas_services, open_cas_stores_under};

    #[tokio::test]
    async fn serves_the_cache_over_grpc_until_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let bundles = Arc::new(FileStore::new(tmp.path().to_path_buf()).unwrap());
        let stores = open_cas_stores_under(tmp.path(), 1 << 30, 1 << 20).unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(run_with_grpc(
            http,
            Some(GrpcSide {
                listener: grpc,
                services: cas_services(stores),
                tls: None,
                tokens: None,
                limits: Default::default(),
            }),
            ApiServerConfig::new(bundles),
            async {
                let _ = stopped.await;
            },
        ));

        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let caps = CapabilitiesClient::new(channel.clone())
            .get_capabilities(v2::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(caps.cache_capabilities.is_some());
        assert!(caps.execution_capabilities.is_none());

        let data = Bytes::from(vec![42u8; 100_000]);
        let digest = scoot_blobstore::sha256_digest(&data);
        let mut bytestream = ByteStreamClient::new(channel);
        let written = bytestream
            .write(tokio_stream::iter(vec![WriteRequest {
                resource_name: format!("uploads/u/blobs/{digest}"),
                write_offset: 0,
                finish_write: true,
                data: data.clone(),
            }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(written.committed_size, 100_000);
        let mut read = bytestream
            .read(ReadRequest {
                resource_name: format!("blobs/{digest}"),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(message) = read.message().await.unwrap() {
            got.extend_from_slice(&message.data);
        }
        assert_eq!(got, data);
        // The blob is on disk, in the store directory's CAS.
        assert!(tmp.path().join("cas").join(&digest.hash[..2]).is_dir());

        let client = scoot_security::http_client(None).build().unwrap();
        let health = client
            .get(format!("http://{http_addr}/health"))
            .send()
            .await;
        assert!(health.is_ok());

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(grpc_addr).await.is_err());
    }
}
