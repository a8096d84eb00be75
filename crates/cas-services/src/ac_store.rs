//! Where action results are kept: [`ActionCacheStore`], a key → bytes table, with
//! [`MemoryActionCache`] and [`FileActionCache`] (a directory, kept across restarts). Both are
//! bounded by total size and drop least recently used entries first.
//!
//! Results are stored as the bytes the client uploaded (never re-encoded) and keyed by instance
//! name and action digest, so two instance names never share an entry.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use scoot_core::Digest;
use scoot_local_storage::Lru;
use sha2::{Digest as _, Sha256};

use crate::error::CasError;

/// The action-cache key: the instance name and the digest of the Action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AcKey {
    pub instance_name: String,
    pub action_digest: Digest,
}

impl AcKey {
    pub fn new(instance_name: impl Into<String>, action_digest: Digest) -> AcKey {
        AcKey {
            instance_name: instance_name.into(),
            action_digest,
        }
    }

    /// A fixed-length name for the key (hex SHA-256 over its unambiguous encoding), usable as a
    /// file name whatever the instance name contains.
    pub fn stable_name(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.instance_name.len() as u64).to_le_bytes());
        hasher.update(self.instance_name.as_bytes());
        hasher.update(self.action_digest.hash.as_bytes());
        hasher.update(self.action_digest.size_bytes.to_le_bytes());
        hex::encode(hasher.finalize())
    }

    fn cost(&self, value_len: usize) -> u64 {
        (self.instance_name.len() + self.action_digest.hash.len() + value_len) as u64
    }
}

/// A key → serialized ActionResult table.
#[async_trait]
pub trait ActionCacheStore: Send + Sync + 'static {
    /// The stored bytes for `key`, if any (the entry counts as used).
    async fn get(&self, key: &AcKey) -> Result<Option<Bytes>, CasError>;
    /// Stores `result` under `key`, replacing any earlier entry.
    async fn put(&self, key: &AcKey, result: Bytes) -> Result<(), CasError>;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Results in memory, at most `capacity_bytes` of them.
pub struct MemoryActionCache {
    entries: Mutex<Lru<AcKey, Bytes>>,
}

impl MemoryActionCache {
    pub fn new(capacity_bytes: u64) -> MemoryActionCache {
        MemoryActionCache {
            entries: Mutex::new(Lru::new(capacity_bytes)),
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Bytes held (results plus keys).
    pub fn used_bytes(&self) -> u64 {
        lock(&self.entries).total()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ActionCacheStore for MemoryActionCache {
    async fn get(&self, key: &AcKey) -> Result<Option<Bytes>, CasError> {
        Ok(lock(&self.entries).touch(key).cloned())
    }

    async fn put(&self, key: &AcKey, result: Bytes) -> Result<(), CasError> {
        let cost = key.cost(result.len());
        let evicted = {
            let mut entries = lock(&self.entries);
            entries.replace(key.clone(), cost, result);
            entries.evict(Some(key))
        };
        // The evicted results are freed here, outside the lock.
        drop(evicted);
        Ok(())
    }
}

/// Identifies our files and their format version.
const MAGIC: &[u8; 8] = b"scootac1";
/// Magic, then the SHA-256 of the payload, then the payload.
const HEADER_LEN: usize = MAGIC.len() + 32;
const TEMP_PREFIX: &str = ".tmp-";

/// Results in a directory, one file per key named by [`AcKey::stable_name`], at most
/// `capacity_bytes` of them. Each file carries a checksum of the result, so a file torn by a
/// crash reads as a miss (and is removed), never as a wrong result. Files are written to a
/// temporary name and renamed into place.
pub struct FileActionCache {
    shared: Arc<FileShared>,
}

struct FileShared {
    dir: PathBuf,
    index: Mutex<Lru<String, ()>>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileActionCache {
    /// Opens (creating if needed) the cache in `dir`, indexing the entries already there
    /// (oldest modification first) and removing leftover temporary files.
    pub fn open(dir: impl Into<PathBuf>, capacity_bytes: u64) -> io::Result<FileActionCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_file() {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, name, meta.len()));
            }
        }
        found.sort();
        let mut index = Lru::new(capacity_bytes);
        for (_, name, size) in found {
            index.insert(name.clone(), size, ());
            for (evicted, ()) in index.evict(Some(&name)) {
                let _ = std::fs::remove_file(dir.join(evicted));
            }
        }
        Ok(FileActionCache {
            shared: Arc::new(FileShared {
                dir,
                index: Mutex::new(index),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn len(&self) -> usize {
        lock(&self.shared.index).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CasError> + Send + 'static,
) -> Result<T, CasError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CasError::internal(format!("action cache task failed: {e}")))?
}

fn encode_file(result: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + result.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(result));
    out.extend_from_slice(result);
    out
}

fn decode_file(data: Vec<u8>) -> Option<Bytes> {
    if data.len() < HEADER_LEN || &data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let payload = &data[HEADER_LEN..];
    if Sha256::digest(payload)[..] != data[MAGIC.len()..HEADER_LEN] {
        return None;
    }
    Some(Bytes::from(data).slice(HEADER_LEN..))
}

#[async_trait]
impl ActionCacheStore for FileActionCache {
    async fn get(&self, key: &AcKey) -> Result<Option<Bytes>, CasError> {
        let name = key.stable_name();
        if lock(&self.shared.index).touch(&name).is_none() {
            return Ok(None);
        }
        let shared = self.shared.clone();
        blocking(move || {
            let path = shared.dir.join(&name);
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    lock(&shared.index).remove(&name);
                    return Ok(None);
                }
                Err(e) => {
                    return Err(CasError::internal(format!(
                        "cannot read action cache entry {}: {e}",
                        path.display()
                    )));
                }
            };
            match decode_file(data) {
                Some(result) => Ok(Some(result)),
                None => {
                    tracing::warn!(path = %path.display(), "damaged action cache entry removed");
                    lock(&shared.index).remove(&name);
                    let _ = std::fs::remove_file(&path);
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn put(&self, key: &AcKey, result: Bytes) -> Result<(), CasError> {
        let name = key.stable_name();
        let shared = self.shared.clone();
        blocking(move || {
            let contents = encode_file(&result);
            let temp = shared.dir.join(format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let written = std::fs::File::create(&temp)
                .and_then(|mut f| f.write_all(&contents))
                .and_then(|()| std::fs::rename(&temp, shared.dir.join(&name)));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(CasError::internal(format!(
                    "cannot write action cache entry in {}: {e}",
                    shared.dir.display()
                )));
            }
            let evicted = {
                let mut index = lock(&shared.index);
                index.replace(name.clone(), contents.len() as u64, ());
                index.evict(Some(&name))
            };
            for (old, ()) in evicted {
                let _ = std::fs::remove_file(shared.dir.join(old));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use scoot_core::EMPTY_SHA256;

    use super::*;

    fn key(instance: &str, size: i64) -> AcKey {
        AcKey::new(instance, Digest::new(EMPTY_SHA256, size).unwrap())
    }

    async fn exercise(store: &dyn ActionCacheStore) {
        assert_eq!(store.get(&key("", 1)).await.unwrap(), None);
        store
            .put(&key("", 1), Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put(&key("other", 1), Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(store.get(&key("", 1)).await.unwrap().unwrap(), "one");
        assert_eq!(store.get(&key("other", 1)).await.unwrap().unwrap(), "two");
        store
            .put(&key("", 1), Bytes::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(store.get(&key("", 1)).await.unwrap().unwrap(), "three");
        // An empty result is a result.
        store.put(&key("", 2), Bytes::new()).await.unwrap();
        assert_eq!(store.get(&key("", 2)).await.unwrap(), Some(Bytes::new()));
    }

    #[tokio::test]
    async fn memory_store_keeps_instances_apart_and_is_bounded() {
        let store = MemoryActionCache::new(1 << 20);
        exercise(&store).await;
        let small = MemoryActionCache::new(200);
        for i in 0..10 {
            small
                .put(&key("", i), Bytes::from(vec![0u8; 50]))
                .await
                .unwrap();
        }
        assert!(small.len() < 10);
        assert!(small.get(&key("", 9)).await.unwrap().is_some());
        assert!(small.get(&key("", 0)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn file_store_survives_reopening_and_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileActionCache::open(tmp.path(), 1 << 20).unwrap();
        exercise(&store).await;
        drop(store);
        std::fs::write(tmp.path().join(".tmp-1-1"), b"junk").unwrap();
        let store = FileActionCache::open(tmp.path(), 1 << 20).unwrap();
        assert!(!tmp.path().join(".tmp-1-1").exists());
        assert_eq!(store.len(), 3);
        assert_eq!(store.get(&key("other", 1)).await.unwrap().unwrap(), "two");

        // A torn or foreign file is a miss and goes away.
        let path = tmp.path().join(key("other", 1).stable_name());
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 1]).unwrap();
        assert_eq!(store.get(&key("other", 1)).await.unwrap(), None);
        assert!(!path.exists());
        std::fs::write(tmp.path().join(key("", 9).stable_name()), b"").unwrap();
        let store = FileActionCache::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(store.get(&key("", 9)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn file_store_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileActionCache::open(tmp.path(), 500).unwrap();
        for i in 0..10 {
            store
                .put(&key("", i), Bytes::from(vec![1u8; 100]))
                .await
                .unwrap();
        }
        assert!(store.len() <= 3, "{}", store.len());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), store.len());
        assert!(store.get(&key("", 9)).await.unwrap().is_some());
    }
}
