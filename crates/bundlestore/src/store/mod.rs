//! Bundle stores: named blobs (git bundles named `bs-<key>.bundle`) with an optional expiry.
//!
//! Implementations: `file` (a directory; atomic writes, so several apiservers can share one),
//! `http` (a remote apiserver's `/bundle/` endpoint), `caching` (a bounded memory cache in front
//! of another store), `peered` (a local store that asks the cluster's other apiservers on a
//! miss). Names never contain `/`.

use std::time::SystemTime;

pub mod caching;
pub mod file;
pub mod http;
pub mod peered;

pub use caching::CachingStore;
pub use file::FileStore;
pub use http::{HttpStore, HttpStoreOptions};
pub use peered::PeeredStore;

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is not a valid store name.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    #[error("{0}")]
    Io(String),
}

/// When a stored blob may be deleted; `None` keeps it for the store's default lifetime.
pub type Expiry = Option<SystemTime>;

#[async_trait]
pub trait Store: Send + Sync {
    async fn exists(&self, name: &str) -> Result<bool, StoreError>;
    /// The blob's bytes, or `None` if there is no such blob.
    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError>;
    /// Stores `data` under `name`; an existing blob of that name is left as it is.
    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError>;
}

/// Store names are single path components without `..`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}
