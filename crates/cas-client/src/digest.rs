//! Digests: computing them and grouping blobs into batches (wire conversion is
//! [`scoot_reapi::digest`]'s).

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use scoot_core::Digest;
use scoot_reapi::digest::size;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::{ClientError, MAX_BATCH_BLOBS, MAX_BATCH_TOTAL_BYTES};

pub fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// The digest of a file's contents, read in chunks (blocking: call it off the async threads).
pub fn digest_of_file(path: &Path) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    let mut size = 0i64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as i64;
    }
    Ok(Digest {
        hash: hex::encode(hasher.finalize()),
        size_bytes: size,
    })
}

/// Serialises a message and returns it with its digest.
pub fn encode<M: Message>(message: &M) -> (Digest, Bytes) {
    let data = Bytes::from(message.encode_to_vec());
    (digest_of(&data), data)
}

/// Splits digests, in order, into groups that each fit one batch request: at most
/// [`MAX_BATCH_TOTAL_BYTES`] of blob data and [`MAX_BATCH_BLOBS`] blobs. A blob larger than the
/// whole limit gets a group of its own (such blobs belong in ByteStream, which callers decide).
pub fn batch_groups<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Vec<Vec<Digest>> {
    let mut groups = Vec::new();
    let mut group: Vec<Digest> = Vec::new();
    let mut group_bytes = 0u64;
    for digest in digests {
        let size = size(digest);
        if !group.is_empty()
            && (group_bytes + size > MAX_BATCH_TOTAL_BYTES || group.len() >= MAX_BATCH_BLOBS)
        {
            groups.push(std::mem::take(&mut group));
            group_bytes = 0;
        }
        group_bytes += size;
        group.push(digest.clone());
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// DATA_LOSS unless `data` is the blob `digest` names.
pub(crate) fn check_blob(digest: &Digest, data: &[u8]) -> Result<(), ClientError> {
    let actual = digest_of(data);
    if actual != *digest {
        return Err(ClientError::new(
            Code::DataLoss,
            format!("blobs/{digest}: the server sent blobs/{actual} instead"),
        ));
    }
    Ok(())
}
