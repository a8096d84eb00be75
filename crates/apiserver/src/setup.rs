//! Building an apiserver from its command-line flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use scoot_bundlestore::store::{CachingStore, FileStore, Store, StoreError};
pub use scoot_cas_services::stores::{
    AC_SUBDIR, CasStores, DEFAULT_AC_BYTES, DEFAULT_CAS_BYTES, OpenStoresError, open_cas_stores,
};

/// The environment variable naming the store directory when `-store_dir` is not given (Scoot's).
pub const STORE_DIR_ENV: &str = "BUNDLESTORE_STORE_DIR";

/// Where the file store keeps bundles.
#[derive(Debug)]
pub enum StoreDir {
    /// A directory chosen by the operator; left in place at exit.
    Given(PathBuf),
    /// A fresh temporary directory, removed when this value is dropped: keep it for as long as
    /// the server runs.
    Temporary(tempfile::TempDir),
}

impl StoreDir {
    /// `flag` if given, else `$BUNDLESTORE_STORE_DIR` if set and non-empty, else a new
    /// temporary directory.
    pub fn resolve(flag: Option<PathBuf>) -> std::io::Result<StoreDir> {
        let from_env = std::env::var_os(STORE_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        match flag.or(from_env) {
            Some(dir) => Ok(StoreDir::Given(dir)),
            None => tempfile::Builder::new()
                .prefix("scoot-apiserver-store")
                .tempdir()
                .map(StoreDir::Temporary),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            StoreDir::Given(dir) => dir,
            StoreDir::Temporary(dir) => dir.path(),
        }
    }
}

/// The apiserver's store stack: a file store in `dir` behind a memory cache of `cache_bytes`
/// (no cache when 0).
pub fn file_backed_store(dir: PathBuf, cache_bytes: u64) -> Result<Arc<dyn Store>, StoreError> {
    let files: Arc<dyn Store> = Arc::new(FileStore::new(dir)?);
    if cache_bytes == 0 {
        return Ok(files);
    }
    Ok(Arc::new(CachingStore::new(files, cache_bytes)))
}

/// How many CAS directories an apiserver tries under the store directory.
const CAS_DIR_ATTEMPTS: usize = 16;

/// The apiserver's gRPC services over `stores` (no execution advertised).
pub fn cas_services(stores: CasStores) -> scoot_cas_services::CasServices {
    scoot_cas_services::server(
        stores.cas,
        stores.action_cache,
        scoot_cas_services::CasConfig::default(),
    )
}

/// The stores of an apiserver whose bundles are in `store_dir`: `store_dir/cas`, or, when
/// another apiserver sharing the store directory holds that one (a blob store is used by one
/// process at a time), the first free of `cas-1`, `cas-2`, ... So every apiserver of a local
/// cluster has a CAS of its own, and gets the same one back after a restart. When all are held,
/// the error is the last one's.
pub fn open_cas_stores_under(
    store_dir: &Path,
    cas_bytes: u64,
    ac_bytes: u64,
) -> Result<CasStores, OpenStoresError> {
    let mut attempt = 0;
    loop {
        let name = match attempt {
            0 => "cas".to_string(),
            n => format!("cas-{n}"),
        };
        match open_cas_stores(store_dir.join(name), cas_bytes, ac_bytes) {
            Ok(stores) => return Ok(stores),
            Err(e) if e.is_in_use() && attempt + 1 < CAS_DIR_ATTEMPTS => {
                tracing::debug!("{e}; trying another CAS directory");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks `-config`: Scoot's apiserver took a JSON object (normally `{}`) and read nothing from
/// it that this server supports, so any JSON object is accepted and its keys are ignored (with
/// a warning); anything else is an error.
pub fn check_config_json(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("-config is not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("-config must be a JSON object such as {}".to_string());
    };
    if !object.is_empty() {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        tracing::warn!(?keys, "-config keys are ignored by this apiserver");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn config_must_be_a_json_object() {
        assert!(check_config_json("{}").is_ok());
        assert!(check_config_json(" { \"Stats\": {} } ").is_ok());
        assert!(check_config_json("").is_err());
        assert!(check_config_json("local.local").is_err());
        assert!(check_config_json("[]").is_err());
    }

    #[test]
    fn a_given_store_dir_wins() {
        let dir = StoreDir::resolve(Some(PathBuf::from("/some/where"))).unwrap();
        assert_eq!(dir.path(), Path::new("/some/where"));
    }

    #[tokio::test]
    async fn apiservers_sharing_a_store_directory_get_their_own_cas() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open_cas_stores_under(tmp.path(), 1 << 20, 1 << 20).unwrap();
        let second = open_cas_stores_under(tmp.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(first.dir, tmp.path().join("cas"));
        assert_eq!(second.dir, tmp.path().join("cas-1"));

        // The action cache inside the CAS directory survives the blob store reopening it.
        let blob = Bytes::from_static(b"blob");
        let digest = scoot_blobstore::sha256_digest(&blob);
        scoot_blobstore::put(&*first.cas, &digest, blob)
            .await
            .unwrap();
        let key = scoot_cas_services::AcKey::new("", digest.clone());
        first
            .action_cache
            .put(&key, Bytes::from_static(b"result"))
            .await
            .unwrap();
        drop(first);
        let again = open_cas_stores_under(tmp.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(again.dir, tmp.path().join("cas"));
        assert!(again.cas.find_missing(&[digest]).await.unwrap().is_empty());
        assert_eq!(
            again.action_cache.get(&key).await.unwrap().unwrap(),
            "result"
        );
    }

    #[tokio::test]
    async fn the_store_stack_keeps_files() {
        let tmp = tempfile::tempdir().unwrap();
        for cache in [0, 1 << 20] {
            let dir = tmp.path().join(cache.to_string());
            let store = file_backed_store(dir.clone(), cache).unwrap();
            store
                .write("bs-x.bundle", Bytes::from_static(b"b"), None)
                .await
                .unwrap();
            assert_eq!(std::fs::read(dir.join("bs-x.bundle")).unwrap(), b"b");
            assert!(store.exists("bs-x.bundle").await.unwrap());
        }
    }
}
