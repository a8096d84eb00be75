//! The action cache of a sharded CAS: entries live on the shards that own their action digest
//! (see [`scoot_cas_client::sharded`]), so a scheduler that fails over keeps every cached result.
//! Entries are read unchecked; the cache services check their blobs across the shards through
//! the sharded blob store before they call anything a hit.

use bytes::Bytes;
use scoot_cas_client::{ClientError, ShardedCas};
use scoot_cas_services::{AcKey, ActionCacheStore, CasError};

pub struct ShardedActionCache {
    shards: ShardedCas,
}

impl ShardedActionCache {
    pub fn new(shards: ShardedCas) -> ShardedActionCache {
        ShardedActionCache { shards }
    }
}

fn cas_error(error: ClientError) -> CasError {
    CasError::new(error.code, error.message)
}

#[tonic::async_trait]
impl ActionCacheStore for ShardedActionCache {
    async fn get(&self, key: &AcKey) -> Result<Option<Bytes>, CasError> {
        self.shards
            .with_instance(&key.instance_name)
            .stored_action_result(&key.action_digest)
            .await
            .map_err(cas_error)
    }

    async fn put(&self, key: &AcKey, result: Bytes) -> Result<(), CasError> {
        self.shards
            .with_instance(&key.instance_name)
            .update_action_result_bytes(&key.action_digest, result)
            .await
            .map_err(cas_error)
    }
}
