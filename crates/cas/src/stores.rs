//! The file-backed stores behind the services: a size-bounded blob store and, in a
//! subdirectory of it, the action cache, so the cache always goes with the CAS its entries refer
//! to.

use std::path::PathBuf;
use std::sync::Arc;

use scoot_blobstore::{BlobStore, FsBlobStore};

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

/// Opens the CAS, a file store of at most `cas_bytes` in `dir`, and its action cache of at most
/// `ac_bytes` in `dir/`[`AC_SUBDIR`]. Blocks while the stores index their directories.
pub fn open_cas_stores(dir: PathBuf, cas_bytes: u64, ac_bytes: u64) -> Result<CasStores, String> {
    let cas = FsBlobStore::open(dir.clone(), cas_bytes)
        .map_err(|e| format!("cannot open the CAS in {}: {e}", dir.display()))?;
    let action_cache = FileActionCache::open(dir.join(AC_SUBDIR), ac_bytes).map_err(|e| {
        format!(
            "cannot open the action cache in {}: {e}",
            dir.join(AC_SUBDIR).display()
        )
    })?;
    Ok(CasStores {
        cas: Arc::new(cas),
        action_cache: Arc::new(action_cache),
        dir,
    })
}
