//! The worker's local CAS cache: verified blobs that action input roots are made from.
//!
//! Layout: `plain/<hash>` (mode 0444) and `exec/<hash>` (0555) hold verified blobs, `tmp/` holds
//! downloads in progress. The files belong to the worker.
//!
//! How an entry reaches an input root depends on whether actions could change it ([`Staging`]).
//! Actions running as a user other than root and the worker can neither write nor chmod the
//! cache's read-only files, so their inputs are hard links (a link shares its inode's mode, so a
//! blob needed both as an executable and not is stored twice). Otherwise inputs are copies
//! (`std::fs::copy`, whose `copy_file_range` shares extents on filesystems that can).
//!
//! What slips past that is caught: an entry records the device, inode, size, mode, modification
//! and change times of its file and is dropped when any of them differs. A process can set the
//! modification time back but not the change time, and replacing the file changes the inode.
//! Linking and unlinking change the change time too, so the cache records it anew after its own
//! links ([`Cache::place`]) and after removing an input root ([`Cache::remove_input_root`]),
//! whose entries it checks first.
//!
//! The index lives in memory and the directory is wiped at open: after a crash a renamed file
//! may not hold its data (nothing is fsynced, for speed), and checking every entry would cost as
//! much as fetching it again.
//!
//! Entries are evicted least recently used first once their total size exceeds the bound. An
//! entry in use (acquired, between lookup and placing) is pinned and never evicted, so one
//! action's inputs can push the cache over its bound until they are placed. Evicting unlinks the
//! cache's name only: files already linked into action directories keep their data.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use scoot_core::Digest;
use scoot_local_storage::Lru;

use crate::inputs::remove_tree;

const PLAIN_MODE: u32 = 0o444;
const EXEC_MODE: u32 = 0o555;

/// How entries are put into input roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staging {
    /// Hard links: actions cannot write the cache's files.
    Link,
    /// Copies: actions run as the cache's owner (or as root) and could write its files.
    Copy,
}

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

/// What an entry's file looked like when the cache last accounted for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    mode: u32,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    /// The stamp of the regular file at `path`, if there is one.
    fn of(path: &Path) -> Option<Stamp> {
        let meta = fs::symlink_metadata(path).ok().filter(|m| m.is_file())?;
        Some(Stamp {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// The same file with the same content and mode, whatever its change time.
    fn same_but_changed(&self, other: &Stamp) -> bool {
        Stamp {
            changed: other.changed,
            ..*self
        } == *other
    }

    fn file_id(&self) -> (u64, u64) {
        (self.device, self.inode)
    }
}

/// The entries, each with the stamp of its file, and a way back from files to entries.
struct Index {
    lru: Lru<Key, Stamp>,
    /// Entries by their file's (device, inode), to find those an input root links to.
    by_file: HashMap<(u64, u64), Key>,
}

impl Index {
    /// Records an entry's file anew.
    fn set_stamp(&mut self, key: &Key, stamp: Stamp) {
        if let Some(recorded) = self.lru.get_mut(key) {
            self.by_file.remove(&recorded.file_id());
            *recorded = stamp;
            self.by_file.insert(stamp.file_id(), key.clone());
        }
    }

    /// Adds an entry, pinned (or pins the existing one, whose file was replaced).
    fn add_pinned(&mut self, key: &Key, stamp: Stamp) {
        self.set_stamp(key, stamp);
        if self.lru.insert(key.clone(), key.size(), stamp) {
            self.by_file.insert(stamp.file_id(), key.clone());
        }
        self.lru.pin(key);
    }

    /// Releases a pin of the entry `key` has now. Pins are not told apart by generation: an
    /// entry dropped and added again while pinned takes the release of the earlier pin.
    fn unpin(&mut self, key: &Key) {
        if let Some(generation) = self.lru.generation(key) {
            self.lru.unpin(key, generation);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(stamp) = self.lru.remove(key) {
            self.by_file.remove(&stamp.file_id());
        }
    }
}

pub(crate) struct Cache {
    dir: PathBuf,
    staging: Staging,
    index: Mutex<Index>,
}

impl Cache {
    /// Empties (or creates) the cache in `dir`. Only the cache's own subdirectories are touched.
    pub fn open(dir: &Path, max_bytes: u64, staging: Staging) -> io::Result<Cache> {
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
            staging,
            index: Mutex::new(Index {
                lru: Lru::new(max_bytes),
                by_file: HashMap::new(),
            }),
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
            index.lru.contains(&Key {
                digest: digest.clone(),
                executable,
            })
        })
    }

    /// Whether the entry exists and its file is as recorded; a changed one is dropped.
    fn check(&self, index: &mut Index, key: &Key) -> bool {
        let Some(&recorded) = index.lru.get(key) else {
            return false;
        };
        if Stamp::of(&self.path(key)) == Some(recorded) {
            return true;
        }
        self.drop_entry(index, key);
        false
    }

    fn drop_entry(&self, index: &mut Index, key: &Key) {
        let path = self.path(key);
        tracing::warn!(path = %path.display(), "dropping a changed cache entry");
        index.remove(key);
        let _ = fs::remove_file(&path);
    }

    /// Records the change time the cache's own links or unlinks gave an entry's file; drops the
    /// entry if anything else about the file differs.
    fn restamp(&self, index: &mut Index, key: &Key) {
        let Some(&recorded) = index.lru.get(key) else {
            return;
        };
        match Stamp::of(&self.path(key)) {
            Some(now) if now.same_but_changed(&recorded) => index.set_stamp(key, now),
            _ => self.drop_entry(index, key),
        }
    }

    /// Pins an entry and returns its path, if it is cached and unchanged (otherwise it is
    /// dropped). Blocking.
    pub fn acquire(&self, key: &Key) -> Option<PathBuf> {
        let mut index = self.lock();
        if !self.check(&mut index, key) {
            return None;
        }
        index.lru.pin(key);
        Some(self.path(key))
    }

    /// Moves `file`, a verified copy of the blob, into the cache under `key` and pins the entry;
    /// returns the entry's path. Blocking.
    pub fn insert(&self, key: &Key, file: &Path) -> io::Result<PathBuf> {
        fs::set_permissions(file, fs::Permissions::from_mode(key.mode()))?;
        let path = self.path(key);
        let mut index = self.lock();
        // Renaming under the lock keeps an eviction of the same key from unlinking the new file.
        fs::rename(file, &path)?;
        let stamp = Stamp::of(&path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} vanished as it was cached", path.display()),
            )
        })?;
        index.add_pinned(key, stamp);
        self.evict(&mut index);
        Ok(path)
    }

    /// Puts a pinned entry's blob at each destination, by link or copy as the cache's
    /// [`Staging`] says. False, and the entry dropped, if its file changed since it was
    /// recorded. Blocking.
    pub fn place(&self, key: &Key, destinations: &[PathBuf]) -> io::Result<bool> {
        let path = self.path(key);
        let mut index = self.lock();
        if !self.check(&mut index, key) {
            return Ok(false);
        }
        match self.staging {
            Staging::Copy => {
                drop(index);
                for destination in destinations {
                    // std::fs::copy carries the permission bits over.
                    fs::copy(&path, destination)?;
                }
            }
            Staging::Link => {
                // Under the lock: no one checks the entry between the links and the new stamp.
                let linked = link_all(&path, destinations);
                self.restamp(&mut index, key);
                linked?;
            }
        }
        Ok(true)
    }

    /// Removes an action's input root. With links, the entries its files link to are checked
    /// first (one changed while the action ran is dropped), and the change time the removal
    /// gives the others is recorded after. Blocking.
    pub fn remove_input_root(&self, root: &Path) -> io::Result<()> {
        if self.staging == Staging::Copy {
            return remove_tree(root);
        }
        let mut files = HashSet::new();
        linked_files(root, &mut files);
        let keys: Vec<Key> = {
            let mut index = self.lock();
            let keys: Vec<Key> = files
                .iter()
                .filter_map(|file| index.by_file.get(file).cloned())
                .collect();
            keys.into_iter()
                .filter(|key| self.check(&mut index, key))
                .collect()
        };
        let removed = remove_tree(root);
        let mut index = self.lock();
        for key in &keys {
            self.restamp(&mut index, key);
        }
        removed
    }

    /// Unpins an entry acquired or inserted before. Blocking (it may evict).
    pub fn release(&self, key: &Key) {
        let mut index = self.lock();
        index.unpin(key);
        self.evict(&mut index);
    }

    /// Total size of the cached blobs.
    pub fn used_bytes(&self) -> u64 {
        self.lock().lru.total()
    }

    /// Unlinks unpinned entries, least recently used first, until the total fits the bound.
    /// An entry whose file cannot be unlinked is forgotten all the same: it is fetched anew
    /// when needed, and its name is taken over by that fetch.
    fn evict(&self, index: &mut Index) {
        for (key, stamp) in index.lru.evict(None) {
            index.by_file.remove(&stamp.file_id());
            let path = self.path(&key);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot evict a cache entry");
            }
        }
    }
}

/// The (device, inode) of every regular file with more than one link under `dir`, not
/// following symlinks. What cannot be read is skipped: its entry is then dropped at its next
/// check rather than recorded anew.
fn linked_files(dir: &Path, files: &mut HashSet<(u64, u64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            linked_files(&entry.path(), files);
        } else if meta.is_file() && meta.nlink() > 1 {
            files.insert((meta.dev(), meta.ino()));
        }
    }
}

/// Hard-links `source` (a cache entry) at each destination, copying instead where a link is
/// impossible (another filesystem, or the inode's link count is exhausted). Blocking.
fn link_all(source: &Path, destinations: &[PathBuf]) -> io::Result<()> {
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
    use std::io::Write;

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

    /// Overwrites the start of `path` in place and sets its mode and modification time back:
    /// size, mode and modification time are as before, only the change time tells.
    fn rewrite_in_place(path: &Path, data: &[u8]) {
        let before = fs::metadata(path).unwrap();
        // Root needs no write permission; an unprivileged owner gives it to itself.
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = fs::File::options().write(true).open(path).unwrap();
        file.write_all(data).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        drop(file);
        fs::set_permissions(path, before.permissions()).unwrap();
        let after = fs::metadata(path).unwrap();
        assert_eq!(
            (after.len(), after.mode(), after.modified().unwrap()),
            (before.len(), before.mode(), before.modified().unwrap())
        );
    }

    #[test]
    fn eviction_keeps_the_bound_and_spares_pinned_and_linked_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 10, Staging::Link).unwrap();
        let (a, a_path) = put(&cache, b"aaaa", false);
        let linked = dir.path().join("linked-a");
        assert!(cache.place(&a, std::slice::from_ref(&linked)).unwrap());
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
    fn modes_are_kept_apart_and_a_chmod_drops_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, Staging::Link).unwrap();
        let (plain, plain_path) = put(&cache, b"same", false);
        let (exec, exec_path) = put(&cache, b"same", true);
        assert_ne!(plain_path, exec_path);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&plain_path), mode(&exec_path)), (0o444, 0o555));
        let input = dir.path().join("input");
        assert!(cache.place(&plain, std::slice::from_ref(&input)).unwrap());
        cache.release(&plain);
        cache.release(&exec);
        assert_eq!(
            fs::metadata(&input).unwrap().ino(),
            fs::metadata(&plain_path).unwrap().ino()
        );
        // The cache's own link changed the file's change time: that is not a change.
        assert!(cache.acquire(&plain).is_some());
        cache.release(&plain);

        // An action made its input writable: the shared inode changed, so the entry goes.
        fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.acquire(&plain), None);
        assert!(!plain_path.exists());
        // The other mode's entry is another file, untouched.
        assert!(cache.acquire(&exec).is_some());
        cache.release(&exec);
    }

    #[test]
    fn content_rewritten_with_its_modification_time_set_back_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, Staging::Link).unwrap();
        let (key, path) = put(&cache, b"original", false);
        cache.release(&key);
        rewrite_in_place(&path, b"poisone");
        assert_eq!(cache.acquire(&key), None);
        assert!(!path.exists() && !cache.contains(&key.digest));

        // A replaced file (a new inode) is caught the same way.
        let (key, path) = put(&cache, b"original", false);
        cache.release(&key);
        let forged = dir.path().join("forged");
        fs::write(&forged, b"poisoned").unwrap();
        fs::set_permissions(&forged, fs::Permissions::from_mode(0o444)).unwrap();
        fs::rename(&forged, &path).unwrap();
        assert_eq!(cache.acquire(&key), None);
    }

    #[test]
    fn removing_an_input_root_checks_its_entries_then_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, Staging::Link).unwrap();
        let (kept, _) = put(&cache, b"kept", false);
        let (spoiled, spoiled_path) = put(&cache, b"spoiled", true);
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        let (kept_input, spoiled_input) = (root.join("sub/kept"), root.join("spoiled"));
        assert!(
            cache
                .place(&kept, &[kept_input, root.join("again")])
                .unwrap()
        );
        assert!(
            cache
                .place(&spoiled, std::slice::from_ref(&spoiled_input))
                .unwrap()
        );
        cache.release(&kept);
        cache.release(&spoiled);

        rewrite_in_place(&spoiled_input, b"SPOILED");
        cache.remove_input_root(&root).unwrap();
        assert!(!root.exists());
        // The unlinking changed both files' change times; only the rewritten one is dropped.
        assert!(cache.acquire(&kept).is_some());
        cache.release(&kept);
        assert_eq!(cache.acquire(&spoiled), None);
        assert!(!spoiled_path.exists());
    }

    #[test]
    fn copies_leave_the_entry_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, Staging::Copy).unwrap();
        let (key, path) = put(&cache, b"shared", true);
        let input = dir.path().join("input");
        assert!(cache.place(&key, std::slice::from_ref(&input)).unwrap());
        cache.release(&key);
        let meta = fs::metadata(&input).unwrap();
        assert_ne!(meta.ino(), fs::metadata(&path).unwrap().ino());
        assert_eq!(meta.permissions().mode() & 0o777, 0o555);
        fs::set_permissions(&input, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&input, b"mine").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"shared");
        assert!(cache.acquire(&key).is_some());
        cache.release(&key);
    }

    #[test]
    fn open_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20, Staging::Link).unwrap();
        let (key, path) = put(&cache, b"old", false);
        cache.release(&key);
        fs::write(dir.path().join("keep-me"), "not ours").unwrap();
        let cache = Cache::open(dir.path(), 1 << 20, Staging::Link).unwrap();
        assert!(!path.exists() && !cache.contains(&key.digest));
        assert!(dir.path().join("keep-me").exists());
    }
}
