//! The file-backed stores behind the services: a size-bounded blob store and, in a
//! subdirectory of it, the action cache, so the cache always goes with the CAS its entries refer
//! to.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use scoot_blobstore::{BlobError, BlobStore, FsBlobStore};

use crate::{ActionCacheStore, FileActionCache};

/// Default bound of the CAS (the apiserver's and scheduler's `-cas_size`): 10 GiB.
pub const DEFAULT_CAS_BYTES: u64 = 10 << 30;
/// Default bound of the action cache (`-ac_size`): 1 GiB.
pub const DEFAULT_AC_BYTES: u64 = 1 << 30;
/// The action cache lives in this subdirectory of the CAS directory, so that it always goes
/// with the CAS its entries refer to (the blob store ignores names that are not its own).
pub const AC_SUBDIR: &str = "action-cache";
/// The stores behind the gRPC services.
pub struct CasStores {
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCacheStore>,
    /// Where the blobs are; the action cache is in its [`AC_SUBDIR`].
    pub dir: PathBuf,
}

/// Why [`open_cas_stores`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoresError {
    #[error("cannot open the CAS in {}: {error}", dir.display())]
    Cas { dir: PathBuf, error: BlobError },
    #[error("cannot open the action cache in {}: {error}", dir.display())]
    ActionCache { dir: PathBuf, error: io::Error },
}

impl OpenStoresError {
    /// Whether the CAS directory is held by another blob store, so another directory may do.
    pub fn is_in_use(&self) -> bool {
        matches!(self, OpenStoresError::Cas { error: BlobError::Lock(e), .. } if e.is_in_use())
    }
}

/// Opens the CAS, a file store of at most `cas_bytes` in `dir`, and its action cache of at most
/// `ac_bytes` in `dir/`[`AC_SUBDIR`]. Blocks while the stores index their directories.
pub fn open_cas_stores(
    dir: PathBuf,
    cas_bytes: u64,
    ac_bytes: u64,
) -> Result<CasStores, OpenStoresError> {
    let cas = FsBlobStore::open(dir.clone(), cas_bytes).map_err(|error| OpenStoresError::Cas {
        dir: dir.clone(),
        error,
    })?;
    let ac_dir = dir.join(AC_SUBDIR);
    let action_cache = FileActionCache::open(&ac_dir, ac_bytes)
        .map_err(|error| OpenStoresError::ActionCache { dir: ac_dir, error })?;
    Ok(CasStores {
        cas: Arc::new(cas),
        action_cache: Arc::new(action_cache),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_cas_directory_is_in_use_and_other_failures_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let held = open_cas_stores(tmp.path().to_path_buf(), 1 << 20, 1 << 20).unwrap();
        let Err(refused) = open_cas_stores(tmp.path().to_path_buf(), 1 << 20, 1 << 20) else {
            panic!("a held CAS directory opened twice");
        };
        assert!(refused.is_in_use(), "{refused}");
        drop(held);

        // The action cache's directory is taken by a file: an error, but not "in use".
        let dir = tmp.path().join("other");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(AC_SUBDIR), b"not a directory").unwrap();
        let Err(failed) = open_cas_stores(dir, 1 << 20, 1 << 20) else {
            panic!("an action cache opened over a file");
        };
        assert!(
            matches!(failed, OpenStoresError::ActionCache { .. }) && !failed.is_in_use(),
            "{failed}"
        );
    }
}
