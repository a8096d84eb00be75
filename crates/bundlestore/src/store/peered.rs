//! A store that finds what it lacks on the other apiservers of its cluster, as Scoot's
//! apiservers did through their groupcache peers (the `/groupcacheapiserver/` role).
//!
//! Reads and existence checks go to the local store first; on a miss each peer is asked in turn
//! at its [`PEER_PATH`] endpoint, which answers from that peer's own store only, so a request
//! never travels further than one hop and peers listing each other cannot loop. A peer that is
//! down, slow or failing is logged and skipped (bounded by [`peer_options`]): it never fails a
//! read that another peer, or the local store, can serve. Writes stay local.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Expiry, HttpStore, HttpStoreOptions, Store, StoreError};

/// Where an apiserver serves its own bundles to its peers.
pub const PEER_PATH: &str = "/groupcacheapiserver/";

/// Bounded retries and timeouts for asking a peer: a peer that is down costs a read about two
/// connect timeouts, not the minutes a client's store would wait.
pub fn peer_options() -> HttpStoreOptions {
    HttpStoreOptions {
        tries: 2,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(15),
        transfer_timeout: Duration::from_secs(10 * 60),
        probe_timeout: Duration::from_secs(5),
        tls: None,
    }
}

/// A local store with peers to ask on a miss.
pub struct PeeredStore {
    local: Arc<dyn Store>,
    peers: Vec<HttpStore>,
}

impl PeeredStore {
    /// `peers` are the other apiservers' HTTP addresses (`host:port` or URLs without a path),
    /// asked with `options` (see [`peer_options`]; its `tls` for `https` peers).
    pub fn new(
        local: Arc<dyn Store>,
        peers: &[String],
        options: HttpStoreOptions,
    ) -> Result<PeeredStore, StoreError> {
        let peers = peers
            .iter()
            .map(|peer| {
                let base = format!("{}{PEER_PATH}", peer.trim_end_matches('/'));
                HttpStore::with_options(&base, options.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PeeredStore { local, peers })
    }

    /// The peers' base URLs, for logs.
    pub fn peer_urls(&self) -> Vec<&str> {
        self.peers.iter().map(HttpStore::base_url).collect()
    }
}

#[async_trait]
impl Store for PeeredStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        if self.local.exists(name).await? {
            return Ok(true);
        }
        for peer in &self.peers {
            match peer.exists(name).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(peer = peer.base_url(), name, %err, "a peer apiserver could not be asked")
                }
            }
        }
        Ok(false)
    }

    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        if let Some(data) = self.local.read(name).await? {
            return Ok(Some(data));
        }
        for peer in &self.peers {
            match peer.read(name).await {
                Ok(Some(data)) => {
                    tracing::debug!(
                        peer = peer.base_url(),
                        name,
                        bytes = data.len(),
                        "served a bundle from a peer apiserver"
                    );
                    return Ok(Some(data));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(peer = peer.base_url(), name, %err, "a peer apiserver could not be asked")
                }
            }
        }
        Ok(None)
    }

    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError> {
        self.local.write(name, data, expiry).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileStore;

    #[tokio::test]
    async fn a_miss_asks_the_peers_and_a_dead_one_is_skipped() {
        use axum::routing::get;
        let dir = tempfile::tempdir().unwrap();
        let peer_store = Arc::new(FileStore::new(dir.path().join("peer")).unwrap());
        peer_store
            .write("b.bundle", Bytes::from_static(b"peer bytes"), None)
            .await
            .unwrap();
        let served = Arc::clone(&peer_store);
        let app = axum::Router::new().route(
            "/groupcacheapiserver/{name}",
            get(
                move |axum::extract::Path(name): axum::extract::Path<String>| {
                    let store = Arc::clone(&served);
                    async move {
                        match store.read(&name).await {
                            Ok(Some(data)) => (axum::http::StatusCode::OK, data).into_response(),
                            _ => axum::http::StatusCode::NOT_FOUND.into_response(),
                        }
                    }
                },
            ),
        );
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };

        let local = Arc::new(FileStore::new(dir.path().join("local")).unwrap());
        local
            .write("a.bundle", Bytes::from_static(b"local bytes"), None)
            .await
            .unwrap();
        let store = PeeredStore::new(
            local,
            &[format!("127.0.0.1:{}", dead.port()), live.to_string()],
            peer_options(),
        )
        .unwrap();
        assert_eq!(
            store.read("a.bundle").await.unwrap().as_deref(),
            Some(&b"local bytes"[..])
        );
        assert_eq!(
            store.read("b.bundle").await.unwrap().as_deref(),
            Some(&b"peer bytes"[..])
        );
        assert_eq!(store.read("c.bundle").await.unwrap(), None);
        assert!(store.exists("b.bundle").await.unwrap());
        assert!(!store.exists("c.bundle").await.unwrap());
    }
}
