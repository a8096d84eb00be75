//! `/view/` backed by the git snapshot database: a private data repository that fetches the
//! snapshots' bundles from this apiserver's own store.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use scoot_bundlestore::store::Store;
use scoot_snapshot_db::{GitDb, GitDbConfig};

use crate::SnapshotFiles;

pub struct GitSnapshotFiles(GitDb);

impl GitSnapshotFiles {
    pub async fn new(store: Arc<dyn Store>) -> Result<GitSnapshotFiles, String> {
        GitDb::init_temp(store, GitDbConfig::default())
            .await
            .map(GitSnapshotFiles)
            .map_err(|e| format!("cannot create the snapshot viewer's repository: {e}"))
    }
}

#[async_trait]
impl SnapshotFiles for GitSnapshotFiles {
    async fn read_file(&self, snapshot_id: &str, path: &str) -> Result<Option<Bytes>, String> {
        self.0
            .read_file(snapshot_id, path)
            .await
            .map_err(|e| e.to_string())
    }
}
