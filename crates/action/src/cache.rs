//! The worker's local CAS cache: input files that action directories hard-link to.
//!
//! Layout: `plain/<hash>` (mode 0444) and `exec/<hash>` (0555) hold verified blobs, `tmp/` holds
//! downloads in progress. A hard link shares its inode's mode, so one blob needed both as an
//! executable and not is stored twice. Entries are read-only so that an action cannot change a
//! cached blob by writing to its input; one that chmods or rewrites its input anyway (root
//! ignores the mode) changes the entry's mode or modification time, which [`Cache::acquire`]
//! notices, dropping the entry.
//!
//! The index lives in memory and the directory is wiped at open: after a crash a renamed file
//! may not hold its data (nothing is fsynced, for speed), and checking every entry would cost as
//! much as fetching it again.
//!
//! Entries are evicted least recently used first once their total size exceeds the bound. An
//! entry in use (acquired, between lookup and linking) is pinned and never evicted, so one
//! action's inputs can push the cache over its bound until they are linked. Evicting unlinks the
//! cache's name only: files already linked into action directories keep their data.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use scoot_core::Digest;

const PLAIN_MODE: u32 = 0o444;
const EXEC_MODE: u32 = 0o555;

/// A blob as an input file of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub digest: Digest,
    pub executable: bool,
}

impl Key {
    fn mode(&self) -> u32 {
        if self.executable {
            EXEC_MODE
        } else {
            PLAIN_MODE
        }
    }

    fn size(&self) -> u64 {
        u64::try_from(self.digest.size_bytes).unwrap_or(0)
    }
}

struct Entry {
    size: u64,
    /// The file's modification time when it was cached: a write through a hard link changes it.
    modified: Option<SystemTime>,
    /// Position in the LRU order (larger is more recent).
    tick: u64,
    pins: usize,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Key, Entry>,
    by_tick: BTreeMap<u64, Key>,
    clock: u64,
    used: u64,
}

impl Index {
    /// Marks an entry most recently used and pins it; false if there is no such entry.
    fn pin(&mut self, key: &Key) -> bool {
        self.clock += 1;
        let tick = self.clock;
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        self.by_tick.remove(&entry.tick);
        entry.tick = tick;
        entry.pins += 1;
        self.by_tick.insert(tick, key.clone());
        true
    }

    /// Adds an entry, pinned (or pins the existing one).
    fn add_pinned(&mut self, key: &Key, modified: Option<SystemTime>) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.modified = modified;
        }
        if self.pin(key) {
            return;
        }
        let size = key.size();
        self.entries.insert(
            key.clone(),
            Entry {
                size,
                modified,
                tick: self.clock,
                pins: 1,
            },
        );
        self.by_tick.insert(self.clock, key.clone());
        self.used += size;
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_tick.remove(&entry.tick);
            self.used -= entry.size;
        }
    }
}

pub(crate) struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl Cache {
    /// Empties (or creates) the cache in `dir`. Only the cache's own subdirectories are touched.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Cache> {
        for sub in ["plain", "exec", "tmp"] {
            let path = dir.join(sub);
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            fs::create_dir_all(&path)?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        let kind = if key.executable { "exec" } else { "plain" };
        self.dir.join(kind).join(&key.digest.hash)
    }

    /// A fresh name in the cache's temporary directory (same filesystem as the entries, so a
    /// rename publishes it).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the blob is cached in either mode (a copy of the other mode saves a fetch).
    pub fn contains(&self, digest: &Digest) -> bool {
        let index = self.lock();
        [false, true].into_iter().any(|executable| {
            index.entries.contains_key(&Key {
                digest: digest.clone(),
                executable,
            })
        })
    }

    /// Pins an entry and returns its path, if it is cached and intact (its file still has the
    /// entry's size and mode; otherwise it is dropped). Blocking.
    pub fn acquire(&self, key: &Key) -> Option<PathBuf> {
        let mut index = self.lock();
        let modified = index.entries.get(key)?.modified;
        let path = self.path(key);
        let intact = fs::symlink_metadata(&path).is_ok_and(|meta| {
            meta.is_file()
                && meta.len() == key.size()
                && meta.permissions().mode() & 0o7777 == key.mode()
                && meta.modified().ok() == modified
        });
        if !intact {
            tracing::warn!(path = %path.display(), "dropping a damaged cache entry");
            index.remove(key);
            let _ = fs::remove_file(&path);
            return None;
        }
        index.pin(key);
        Some(path)
    }

    /// Moves `file`, a verified copy of the blob, into the cache under `key` and pins the entry;
    /// returns the entry's path. Blocking.
    pub fn insert(&self, key: &Key, file: &Path) -> io::Result<PathBuf> {
        fs::set_permissions(file, fs::Permissions::from_mode(key.mode()))?;
        let path = self.path(key);
        let mut index = self.lock();
        // Renaming under the lock keeps an eviction of the same key from unlinking the new file.
        fs::rename(file, &path)?;
        let modified = fs::symlink_metadata(&path)?.modified().ok();
        index.add_pinned(key, modified);
        self.evict(&mut index);
        Ok(path)
    }

    /// Unpins an entry acquired or inserted before. Blocking (it may evict).
    pub fn release(&self, key: &Key) {
        let mut index = self.lock();
        if let Some(entry) = index.entries.get_mut(key) {
            entry.pins = entry.pins.saturating_sub(1);
        }
        self.evict(&mut index);
    }

    /// Total size of the cached blobs.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Unlinks unpinned entries, least recently used first, until the total fits the bound.
    fn evict(&self, index: &mut Index) {
        if index.used <= self.max_bytes {
            return;
        }
        let mut excess = index.used - self.max_bytes;
        let mut victims = Vec::new();
        for key in index.by_tick.values() {
            if excess == 0 {
                break;
            }
            if let Some(entry) = index.entries.get(key)
                && entry.pins == 0
            {
                excess = excess.saturating_sub(entry.size);
                victims.push(key.clone());
            }
        }
        for key in victims {
            let path = self.path(&key);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot evict a cache entry");
                continue;
            }
            index.remove(&key);
        }
    }
}

/// Hard-links `source` (a cache entry) at each destination, copying instead where a link is
/// impossible (another filesystem, or the inode's link count is exhausted). Blocking.
pub(crate) fn link_all(source: &Path, destinations: &[PathBuf]) -> io::Result<()> {
    for destination in destinations {
        match fs::hard_link(source, destination) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::CrossesDevices | io::ErrorKind::TooManyLinks
                ) =>
            {
                // std::fs::copy carries the permission bits over, so the copy is read-only too.
                fs::copy(source, destination)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use scoot_cas_client::digest_of;

    use super::*;

    fn put(cache: &Cache, content: &[u8], executable: bool) -> (Key, PathBuf) {
        let key = Key {
            digest: digest_of(content),
            executable,
        };
        let temp = cache.temp_path();
        fs::write(&temp, content).unwrap();
        let path = cache.insert(&key, &temp).unwrap();
        (key, path)
    }

    #[test]
    fn eviction_keeps_the_bound_and_spares_pinned_and_linked_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 10).unwrap();
        let (a, a_path) = put(&cache, b"aaaa", false);
        let linked = dir.path().join("linked-a");
        link_all(&a_path, std::slice::from_ref(&linked)).unwrap();
        cache.release(&a);
        let (b, _) = put(&cache, b"bbbb", true);
        cache.release(&b);
        assert_eq!(cache.used_bytes(), 8);
        // b is more recent than a; c pushes the total to 12 > 10, so a goes.
        assert!(cache.acquire(&b).is_some());
        cache.release(&b);
        let (c, c_path) = put(&cache, b"cccc", false);
        assert_eq!(cache.used_bytes(), 8);
        assert!(!cache.contains(&a.digest) && cache.contains(&b.digest));
        assert!(!a_path.exists());
        assert_eq!(
            fs::read(&linked).unwrap(),
            b"aaaa",
            "a linked file outlives eviction"
        );

        // c is still pinned: inserting d can only evict b, and the pin holds c over the bound.
        let (d, _) = put(&cache, b"dddddddd", false);
        assert!(c_path.exists() && !cache.contains(&b.digest));
        assert_eq!(cache.used_bytes(), 12);
        cache.release(&c);
        // Unpinning c lets the cache shrink back: c is older than d.
        assert!(cache.used_bytes() <= 10);
        assert!(!c_path.exists() && cache.contains(&d.digest));
        cache.release(&d);
    }

    #[test]
    fn modes_are_kept_apart_and_damaged_entries_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20).unwrap();
        let (plain, plain_path) = put(&cache, b"same", false);
        let (exec, exec_path) = put(&cache, b"same", true);
        assert_ne!(plain_path, exec_path);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&plain_path), mode(&exec_path)), (0o444, 0o555));
        cache.release(&plain);
        cache.release(&exec);

        // An action made its input writable: the shared inode changed, so the entry goes.
        let input = dir.path().join("input");
        link_all(&plain_path, std::slice::from_ref(&input)).unwrap();
        assert_eq!(
            fs::metadata(&input).unwrap().ino(),
            fs::metadata(&plain_path).unwrap().ino()
        );
        fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.acquire(&plain), None);
        assert!(!plain_path.exists());
        assert!(cache.acquire(&exec).is_some());
        cache.release(&exec);

        // Root ignores 0555: an action that rewrites its input in place (same size, same mode)
        // changes the modification time, and the entry goes too.
        let input = dir.path().join("input-exec");
        link_all(&exec_path, std::slice::from_ref(&input)).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let file = fs::File::options().write(true).open(&input);
        match file {
            Ok(file) => {
                use std::io::Write;
                (&file).write_all(b"evil").unwrap();
                file.set_modified(later).unwrap();
                assert_eq!(cache.acquire(&exec), None);
                assert!(!exec_path.exists());
            }
            // Not root: the mode kept the action out, and the entry is intact.
            Err(_) => {
                assert!(cache.acquire(&exec).is_some());
                cache.release(&exec);
            }
        }
    }

    #[test]
    fn open_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let (key, path) = put(&cache, b"old", false);
        cache.release(&key);
        fs::write(dir.path().join("keep-me"), "not ours").unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        assert!(!path.exists() && !cache.contains(&key.digest));
        assert!(dir.path().join("keep-me").exists());
    }
}
