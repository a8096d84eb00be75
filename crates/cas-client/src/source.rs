//! A remote CAS as a [`BlobSource`], so a server can put another CAS behind its own (the
//! scheduler does this with the cluster's apiserver; see [`scoot_blobstore::TieredBlobStore`]).

use async_trait::async_trait;
use futures::StreamExt;
use scoot_blobstore::{BlobError, BlobSource, BlobStream};
use scoot_core::Digest;
use tonic::Code;

use crate::{CasClient, ClientError};

pub struct RemoteBlobSource {
    client: CasClient,
}

impl RemoteBlobSource {
    pub fn new(client: CasClient) -> RemoteBlobSource {
        RemoteBlobSource { client }
    }
}

pub(crate) fn blob_error(digest: &Digest, offset: u64, code: Code, message: String) -> BlobError {
    match code {
        Code::NotFound => BlobError::NotFound(digest.clone()),
        Code::OutOfRange => BlobError::OffsetOutOfRange {
            digest: digest.clone(),
            offset,
        },
        _ => BlobError::Io(message),
    }
}

#[async_trait]
impl BlobSource for RemoteBlobSource {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        self.client
            .find_missing(digests)
            .await
            .map_err(|e: ClientError| BlobError::Io(e.to_string()))
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        let what = format!("reading blobs/{digest} from {offset}");
        let stream = self
            .client
            .open_range(digest, offset, limit, &what)
            .await
            .map_err(|e| blob_error(digest, offset, e.code, e.to_string()))?
            .ok_or_else(|| BlobError::NotFound(digest.clone()))?;
        let digest = digest.clone();
        Ok(Box::pin(stream.map(move |item| {
            item.map(|response| response.data).map_err(|status| {
                blob_error(&digest, offset, status.code(), status.message().to_string())
            })
        })))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use scoot_blobstore::util::next_chunk;

    use super::*;
    use crate::digest_of;
    use crate::testing::TestServer;

    #[tokio::test]
    async fn reads_ranges_and_reports_missing_blobs() {
        let server = TestServer::start().await.unwrap();
        let client = server.client("").await.unwrap();
        let data = Bytes::from(vec![5u8; 300_000]);
        let digest = digest_of(&data);
        client
            .upload_blobs(vec![(digest.clone(), data)])
            .await
            .unwrap();
        let source = RemoteBlobSource::new(client);

        let absent = digest_of(b"absent");
        let missing = source.find_missing(&[digest.clone(), absent.clone()]).await;
        assert_eq!(missing.unwrap(), vec![absent.clone()]);

        let mut stream = source.read(&digest, 299_990, 0).await.unwrap();
        let mut tail = Vec::new();
        while let Some(chunk) = next_chunk(&mut stream).await {
            tail.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(tail, vec![5u8; 10]);
        assert!(matches!(
            source.read(&absent, 0, 0).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            source.read(&digest, 400_000, 0).await,
            Err(BlobError::OffsetOutOfRange { .. })
        ));
    }
}
