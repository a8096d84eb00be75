//! `bzutil`, Scoot's REAPI command line: put commands, actions and whole input directories into
//! a CAS, move blobs in batches, and ask which blobs are missing. Digests are printed as
//! `<hash>/<size>`.

pub mod cli;
pub mod tree;

use bytes::Bytes;
use prost::Message;
use scoot_core::Digest;
use scoot_proto::bytestream::WriteRequest;
use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
use scoot_proto::reapi::v2 as re;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

/// Blobs up to this size go in BatchUpdateBlobs requests; larger ones through ByteStream.
const BATCH_BLOB_LIMIT: usize = 1024 * 1024;
const WRITE_CHUNK: usize = 64 * 1024;

pub fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

pub fn to_proto(d: &Digest) -> re::Digest {
    re::Digest {
        hash: d.hash.clone(),
        size_bytes: d.size_bytes,
    }
}

pub fn from_proto(d: &re::Digest) -> anyhow::Result<Digest> {
    Digest::new(d.hash.clone(), d.size_bytes).map_err(anyhow::Error::msg)
}

/// A CAS connection.
pub struct Cas {
    channel: Channel,
    pub instance: String,
}

impl Cas {
    pub async fn connect(addr: &str, instance: &str) -> anyhow::Result<Cas> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Channel::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("invalid address {addr}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
        Ok(Cas {
            channel,
            instance: instance.to_string(),
        })
    }

    fn cas(
        &self,
    ) -> re::content_addressable_storage_client::ContentAddressableStorageClient<Channel> {
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(
            self.channel.clone(),
        )
    }

    pub async fn find_missing(&self, digests: &[Digest]) -> anyhow::Result<Vec<Digest>> {
        let reply = self
            .cas()
            .find_missing_blobs(re::FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: digests.iter().map(to_proto).collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        reply.missing_blob_digests.iter().map(from_proto).collect()
    }

    /// Uploads every blob the CAS does not have yet: small ones in batches, large ones streamed.
    pub async fn upload(&self, blobs: Vec<(Digest, Bytes)>) -> anyhow::Result<()> {
        let wanted: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
        let missing: std::collections::HashSet<Digest> =
            self.find_missing(&wanted).await?.into_iter().collect();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (digest, data) in blobs.into_iter().filter(|(d, _)| missing.contains(d)) {
            if data.len() > BATCH_BLOB_LIMIT {
                self.write_stream(&digest, data).await?;
                continue;
            }
            if batch_bytes + data.len() > 2 * BATCH_BLOB_LIMIT {
                self.batch_update(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += data.len();
            batch.push((digest, data));
        }
        if !batch.is_empty() {
            self.batch_update(batch).await?;
        }
        Ok(())
    }

    async fn batch_update(&self, blobs: Vec<(Digest, Bytes)>) -> anyhow::Result<()> {
        let reply = self
            .cas()
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests: blobs
                    .into_iter()
                    .map(|(d, data)| re::batch_update_blobs_request::Request {
                        digest: Some(to_proto(&d)),
                        data,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for response in reply.responses {
            if let Some(status) = response.status.filter(|s| s.code != 0) {
                let digest = response
                    .digest
                    .map(|d| format!("{}/{}", d.hash, d.size_bytes))
                    .unwrap_or_default();
                anyhow::bail!("upload of {digest} failed: {}", status.message);
            }
        }
        Ok(())
    }

    async fn write_stream(&self, digest: &Digest, data: Bytes) -> anyhow::Result<()> {
        let prefix = if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        };
        let name = format!(
            "{prefix}uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            digest.hash,
            digest.size_bytes
        );
        let total = data.len();
        let mut requests = Vec::new();
        let mut offset = 0;
        while offset < total || requests.is_empty() {
            let end = (offset + WRITE_CHUNK).min(total);
            requests.push(WriteRequest {
                resource_name: if offset == 0 {
                    name.clone()
                } else {
                    String::new()
                },
                write_offset: offset as i64,
                finish_write: end == total,
                data: data.slice(offset..end),
            });
            offset = end;
        }
        ByteStreamClient::new(self.channel.clone())
            .write(tokio_stream::iter(requests))
            .await
            .map_err(|e| anyhow::anyhow!("upload of {digest} failed: {}", e.message()))?;
        Ok(())
    }

    pub async fn batch_read(&self, digests: &[Digest]) -> anyhow::Result<Vec<(Digest, Bytes)>> {
        let reply = self
            .cas()
            .batch_read_blobs(re::BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.iter().map(to_proto).collect(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut blobs = Vec::new();
        for response in reply.responses {
            let digest = response
                .digest
                .as_ref()
                .map(from_proto)
                .transpose()?
                .unwrap_or_else(Digest::empty);
            if let Some(status) = response.status.filter(|s| s.code != 0) {
                anyhow::bail!("download of {digest} failed: {}", status.message);
            }
            blobs.push((digest, response.data));
        }
        Ok(blobs)
    }
}

/// Serialises a message and returns it with its digest.
pub fn encode<M: Message>(message: &M) -> (Digest, Bytes) {
    let data = Bytes::from(message.encode_to_vec());
    (digest_of(&data), data)
}
