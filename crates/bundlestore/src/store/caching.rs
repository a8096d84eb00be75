//! A bounded in-memory cache of blobs in front of another store (Scoot's apiserver used
//! groupcache for this; peers are not shared here, each process has its own cache).
//!
//! * `read`: served from memory when cached, else read from the inner store and cached.
//! * `exists`: true when cached, else asked of the inner store (nothing is cached).
//! * `write`: written to the inner store first; once that succeeded the bytes are cached.
//!
//! The cache holds at most `capacity_bytes` of blob data (bookkeeping aside), evicting the least
//! recently used blobs first; a blob larger than the capacity is never cached. Blob names are
//! taken to identify their content (bundle names carry a hash), so a cached blob never goes stale.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use scoot_local_storage::Lru;

use super::{Expiry, Store, StoreError, check_name};

pub struct CachingStore {
    inner: Arc<dyn Store>,
    cache: Mutex<Lru<String, Bytes>>,
}

impl CachingStore {
    pub fn new(inner: Arc<dyn Store>, capacity_bytes: u64) -> CachingStore {
        CachingStore {
            inner,
            cache: Mutex::new(Lru::new(capacity_bytes)),
        }
    }

    /// Bytes of blob data currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.lock().total()
    }

    /// Whether `name` is currently cached (does not count as a use).
    pub fn is_cached(&self, name: &str) -> bool {
        self.lock().contains(&name.to_string())
    }

    /// The cached bytes of `name`, now the most recently used.
    fn cached(&self, name: &str) -> Option<Bytes> {
        self.lock().touch(&name.to_string()).cloned()
    }

    /// Caches `data` as `name` unless it is larger than the whole cache, evicting least recently
    /// used blobs to make room. Already cached, it only counts as a use (names identify content).
    fn remember(&self, name: &str, data: Bytes) {
        let name = name.to_string();
        let size = data.len() as u64;
        let mut cache = self.lock();
        if size <= cache.capacity() && cache.insert(name.clone(), size, data) {
            cache.evict(Some(&name));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<String, Bytes>> {
        // The cache stays consistent between statements, so a panic elsewhere cannot leave it
        // half-updated; carry on with it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for CachingStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        if self.is_cached(name) {
            return Ok(true);
        }
        self.inner.exists(name).await
    }

    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        check_name(name)?;
        if let Some(data) = self.cached(name) {
            return Ok(Some(data));
        }
        let data = self.inner.read(name).await?;
        if let Some(data) = &data {
            self.remember(name, data.clone());
        }
        Ok(data)
    }

    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError> {
        check_name(name)?;
        self.inner.write(name, data.clone(), expiry).await?;
        self.remember(name, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An in-memory store that counts reads.
    #[derive(Default)]
    struct CountingStore {
        blobs: Mutex<HashMap<String, Bytes>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Store for CountingStore {
        async fn exists(&self, name: &str) -> Result<bool, StoreError> {
            Ok(self.blobs.lock().unwrap().contains_key(name))
        }
        async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.blobs.lock().unwrap().get(name).cloned())
        }
        async fn write(&self, name: &str, data: Bytes, _: Expiry) -> Result<(), StoreError> {
            self.blobs
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_insert(data);
            Ok(())
        }
    }

    fn blob(len: usize) -> Bytes {
        Bytes::from(vec![1u8; len])
    }

    #[tokio::test]
    async fn reads_fill_the_cache() {
        let inner = Arc::new(CountingStore::default());
        inner.write("a", blob(10), None).await.unwrap();
        let store = CachingStore::new(inner.clone(), 100);
        assert_eq!(store.read("a").await.unwrap().unwrap(), blob(10));
        assert_eq!(store.read("a").await.unwrap().unwrap(), blob(10));
        assert_eq!(inner.reads.load(Ordering::SeqCst), 1);
        assert_eq!(store.cached_bytes(), 10);
        assert!(store.exists("a").await.unwrap());
        // Missing blobs are not cached.
        assert_eq!(store.read("b").await.unwrap(), None);
        assert_eq!(store.read("b").await.unwrap(), None);
        assert_eq!(inner.reads.load(Ordering::SeqCst), 3);
        assert!(!store.exists("b").await.unwrap());
    }

    #[tokio::test]
    async fn writes_go_through_and_are_cached() {
        let inner = Arc::new(CountingStore::default());
        let store = CachingStore::new(inner.clone(), 100);
        store.write("a", blob(5), None).await.unwrap();
        assert!(inner.exists("a").await.unwrap());
        assert!(store.is_cached("a"));
        assert_eq!(store.read("a").await.unwrap().unwrap(), blob(5));
        assert_eq!(inner.reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn least_recently_used_blobs_are_evicted_within_capacity() {
        let inner = Arc::new(CountingStore::default());
        let store = CachingStore::new(inner.clone(), 100);
        store.write("a", blob(40), None).await.unwrap();
        store.write("b", blob(40), None).await.unwrap();
        // Use "a" so that "b" is the least recently used.
        store.read("a").await.unwrap();
        store.write("c", blob(40), None).await.unwrap();
        assert!(store.is_cached("a"));
        assert!(!store.is_cached("b"));
        assert!(store.is_cached("c"));
        assert_eq!(store.cached_bytes(), 80);
        // Evicted blobs are still in the inner store.
        assert_eq!(store.read("b").await.unwrap().unwrap(), blob(40));
        assert!(store.cached_bytes() <= 100);
    }

    #[tokio::test]
    async fn blobs_larger_than_the_capacity_are_not_cached() {
        let inner = Arc::new(CountingStore::default());
        let store = CachingStore::new(inner.clone(), 100);
        store.write("small", blob(50), None).await.unwrap();
        store.write("huge", blob(101), None).await.unwrap();
        assert!(!store.is_cached("huge"));
        assert!(store.is_cached("small"));
        assert_eq!(store.read("huge").await.unwrap().unwrap(), blob(101));
        assert!(!store.is_cached("huge"));
        assert_eq!(store.cached_bytes(), 50);
        // Exactly the capacity fits, after evicting everything else.
        store.write("full", blob(100), None).await.unwrap();
        assert_eq!(store.cached_bytes(), 100);
        assert!(!store.is_cached("small"));
    }

    #[tokio::test]
    async fn zero_capacity_caches_nothing_but_empty_blobs() {
        let inner = Arc::new(CountingStore::default());
        let store = CachingStore::new(inner, 0);
        store.write("a", blob(1), None).await.unwrap();
        store.write("e", Bytes::new(), None).await.unwrap();
        assert!(!store.is_cached("a"));
        assert!(store.is_cached("e"));
        assert_eq!(store.cached_bytes(), 0);
    }

    #[tokio::test]
    async fn invalid_names_are_refused() {
        let store = CachingStore::new(Arc::new(CountingStore::default()), 100);
        assert!(matches!(
            store.read("a/b").await,
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.exists("..").await,
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.write("", Bytes::new(), None).await,
            Err(StoreError::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn concurrent_use_keeps_the_budget() {
        let store = Arc::new(CachingStore::new(Arc::new(CountingStore::default()), 1000));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let name = format!("b{}", (t * 7 + i) % 30);
                    store.write(&name, blob(37 + i % 5), None).await.unwrap();
                    store.read(&name).await.unwrap().unwrap();
                    assert!(store.cached_bytes() <= 1000);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let cache = store.lock();
        let sum: u64 = cache.iter().map(|(_, data)| data.len() as u64).sum();
        assert_eq!(sum, cache.total());
    }
}
