//! An in-process CAS for tests (feature `testing`): the real `scoot_cas_services` services over memory
//! stores, served on 127.0.0.1 at a free port until the [`TestServer`] is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use scoot_blobstore::MemoryBlobStore;
use scoot_cas_services::{CasConfig, MemoryActionCache};
use tokio::sync::oneshot;

use crate::{CasClient, ClientError};

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Starts the services with [`CasConfig::default`] (4 MiB batches, like production).
    pub async fn start() -> std::io::Result<TestServer> {
        let services = scoot_cas_services::server(
            Arc::new(MemoryBlobStore::new(1 << 30)),
            Arc::new(MemoryActionCache::new(64 << 20)),
            CasConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(scoot_cas_services::serve(
            listener,
            services.routes(),
            None,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(TestServer {
            addr,
            stop: Some(stop),
        })
    }

    /// `host:port`, as a flag would give it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub async fn client(&self, instance: &str) -> Result<CasClient, ClientError> {
        CasClient::connect(&self.address(), instance).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
