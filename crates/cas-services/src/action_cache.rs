//! The ActionCache service over an [`ActionCacheStore`](crate::ActionCacheStore), served from [`scoot_proto::raw`] so
//! results are stored and returned as the bytes the client uploaded.
//!
//! GetActionResult is a hit only when the result is complete: every blob it refers to (output
//! files, stdout and stderr, output directory Trees and, within a budget of Tree bytes, every
//! file in those Trees) is still in the CAS with its bytes intact (checked by
//! [`BlobStore::find_missing_or_corrupt`](scoot_blobstore::BlobStore::find_missing_or_corrupt),
//! which drops corrupt blobs; the file store hashes each blob unless it knows the file unchanged
//! since it last did). Otherwise it is NOT_FOUND, so a client runs the action again instead of
//! failing to download its outputs or being served damaged ones. The scheduler's Execute looks
//! the cache up through the same check; a sharded CAS's router asks for the stored entry unchecked
//! ([`scoot_reapi::UNCHECKED_RESULT_METADATA`]), since a shard holds only its share of the blobs,
//! and checks them across the shards itself. Inline hints are not honoured (the
//! API allows a server to omit inlining). Entries are keyed by instance name and action digest.

use std::sync::Arc;

use prost::Message;
use scoot_core::Digest;
use scoot_proto::raw::action_cache_server::ActionCache;
use scoot_proto::raw::{RawMessage, UpdateActionResultRequestRaw};
use scoot_proto::reapi::v2;
use tonic::{Request, Response, Status};

use crate::Core;
use crate::ac_store::AcKey;
use crate::cas::read_small_blob;
use crate::digest::{check_function, from_proto, required, size};
use crate::error::CasError;
use crate::stats;

#[derive(Clone)]
pub struct ActionCacheService {
    core: Arc<Core>,
}

impl ActionCacheService {
    pub(crate) fn new(core: Arc<Core>) -> ActionCacheService {
        ActionCacheService { core }
    }
}

/// A path an ActionResult may name: relative, with no `.`, `..` or empty segments (the empty
/// path, the whole working directory, is allowed for directories).
fn check_output_path(path: &str, allow_empty: bool) -> Result<(), CasError> {
    if path.is_empty() && allow_empty {
        return Ok(());
    }
    if path.starts_with('/') || path.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Err(CasError::invalid_argument(format!(
            "invalid output path {path:?}: must be relative and normalised"
        )));
    }
    Ok(())
}

/// Every blob an ActionResult refers to directly; INVALID_ARGUMENT for a malformed one.
fn referenced_blobs(result: &v2::ActionResult) -> Result<Vec<Digest>, CasError> {
    let mut digests = Vec::new();
    for file in &result.output_files {
        check_output_path(&file.path, false)?;
        digests.push(required(&file.digest, "output file digest")?);
    }
    for dir in &result.output_directories {
        check_output_path(&dir.path, true)?;
        if dir.tree_digest.is_none() && dir.root_directory_digest.is_none() {
            return Err(CasError::invalid_argument(format!(
                "output directory {:?} has neither a tree nor a root directory digest",
                dir.path
            )));
        }
        for digest in [&dir.tree_digest, &dir.root_directory_digest]
            .into_iter()
            .flatten()
        {
            digests.push(from_proto(Some(digest), "output directory digest")?);
        }
    }
    for symlink in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        check_output_path(&symlink.path, false)?;
    }
    for digest in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        digests.push(from_proto(Some(digest), "stdout/stderr digest")?);
    }
    Ok(digests)
}

impl Core {
    /// A blob the result needs that the CAS lacks or holds corrupt, if any.
    async fn first_missing_blob(
        &self,
        result: &v2::ActionResult,
    ) -> Result<Option<String>, CasError> {
        let digests = match referenced_blobs(result) {
            Ok(digests) => digests,
            Err(e) => return Ok(Some(format!("an invalid reference ({e})"))),
        };
        if let Some(missing) = self.unusable_of(digests).await?.into_iter().next() {
            return Ok(Some(missing.to_string()));
        }
        // The files inside output directory Trees, as far as the budget goes.
        let mut budget = self.config.completeness_tree_bytes;
        let mut inner = Vec::new();
        for dir in &result.output_directories {
            let Some(tree) = &dir.tree_digest else {
                continue;
            };
            let tree = from_proto(Some(tree), "tree digest")?;
            let Some(rest) = budget.checked_sub(size(&tree)) else {
                continue;
            };
            budget = rest;
            let bytes = match read_small_blob(self, &tree, size(&tree)).await {
                Ok(bytes) => bytes,
                Err(e) if matches!(e.code, tonic::Code::NotFound | tonic::Code::DataLoss) => {
                    return Ok(Some(tree.to_string()));
                }
                Err(e) => return Err(e),
            };
            let Ok(tree_message) = v2::Tree::decode(bytes) else {
                return Ok(Some(format!("{tree} (not a Tree)")));
            };
            for directory in tree_message.root.iter().chain(&tree_message.children) {
                for file in &directory.files {
                    match from_proto(file.digest.as_ref(), "file") {
                        Ok(digest) => inner.push(digest),
                        Err(e) => return Ok(Some(format!("an invalid file digest ({e})"))),
                    }
                }
            }
        }
        Ok(self
            .unusable_of(inner)
            .await?
            .into_iter()
            .next()
            .map(|d| d.to_string()))
    }

    /// The stored result for `key` if it is usable: decodable and complete; NOT_FOUND
    /// (saying why) otherwise, so a client runs the action again.
    pub(crate) async fn complete_result(&self, key: &AcKey) -> Result<bytes::Bytes, CasError> {
        let bytes = self.stored_result(key).await?;
        let Ok(result) = v2::ActionResult::decode(bytes.clone()) else {
            tracing::warn!(action = %key.action_digest, "undecodable action cache entry");
            return Err(CasError::not_found(format!(
                "no usable cached result for action {}",
                key.action_digest
            )));
        };
        if let Some(missing) = self.first_missing_blob(&result).await? {
            tracing::debug!(action = %key.action_digest, %missing, "incomplete cached result");
            return Err(CasError::not_found(format!(
                "the cached result for action {} refers to {missing}, which is no longer stored intact",
                key.action_digest
            )));
        }
        Ok(bytes)
    }

    /// The stored entry for `key`, unchecked (NOT_FOUND when there is none): what a shard of
    /// a sharded CAS answers its router, which checks the blobs across every shard.
    async fn stored_result(&self, key: &AcKey) -> Result<bytes::Bytes, CasError> {
        self.ac.get(key).await?.ok_or_else(|| {
            CasError::not_found(format!("no cached result for action {}", key.action_digest))
        })
    }

    /// Which of `digests` the CAS lacks, each once; the empty blob is never missing.
    pub(crate) async fn missing_of(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, CasError> {
        let digests = distinct_blobs(digests);
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.cas.find_missing(&digests).await?)
    }

    /// Which of `digests` the CAS lacks or holds corrupt (dropping those), each once.
    async fn unusable_of(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, CasError> {
        let digests = distinct_blobs(digests);
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.cas.find_missing_or_corrupt(&digests).await?)
    }
}

/// `digests` without repeats and without the empty blob (which always exists).
fn distinct_blobs(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.retain(|d| !d.is_empty_blob());
    digests.sort();
    digests.dedup();
    digests
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<v2::GetActionResultRequest>,
    ) -> Result<Response<RawMessage>, Status> {
        let unchecked = request
            .metadata()
            .contains_key(scoot_reapi::UNCHECKED_RESULT_METADATA);
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let action = required(&request.action_digest, "action_digest")?;
        let key = AcKey::new(request.instance_name, action);
        let looked_up = if unchecked {
            self.core.stored_result(&key).await
        } else {
            self.core.complete_result(&key).await
        };
        match &looked_up {
            Ok(_) => stats::AC_LOOKUPS.inc("hit"),
            Err(e) if e.code == tonic::Code::NotFound => stats::AC_LOOKUPS.inc("miss"),
            Err(_) => {}
        }
        Ok(Response::new(RawMessage(looked_up?)))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequestRaw>,
    ) -> Result<Response<RawMessage>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let action = required(&request.action_digest, "action_digest")?;
        let Some(bytes) = request.action_result else {
            return Err(CasError::invalid_argument("no action_result given").into());
        };
        let result = v2::ActionResult::decode(bytes.clone()).map_err(|e| {
            CasError::invalid_argument(format!("action_result is not an ActionResult: {e}"))
        })?;
        referenced_blobs(&result)?;
        let key = AcKey::new(request.instance_name, action);
        self.core.ac.put(&key, bytes.clone()).await?;
        Ok(Response::new(RawMessage(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_must_be_relative_and_normal() {
        assert!(check_output_path("a/b.o", false).is_ok());
        assert!(check_output_path("", true).is_ok());
        for bad in ["", "/etc/passwd", "a/../../b", "./a", "a//b", "a/"] {
            assert!(check_output_path(bad, false).is_err(), "{bad}");
        }
    }
}
