//! [`FsBlobStore`]: blobs as files in a directory, bounded by total size, kept across restarts.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/LOCK                  held (flock) by the one store that has the directory open
//! <dir>/tmp/w-<n>             a write in progress
//! <dir>/tmp/x-<n>             an evicted blob about to be unlinked
//! <dir>/<hh>/<hash>-<size>    a blob: <hash> is 64 lowercase hex characters, <hh> its first two,
//!                             <size> its length in decimal
//! ```
//!
//! `tmp/` is emptied whenever a store opens the directory, so leftovers of a crash go away.
//!
//! # Writes
//!
//! A writer streams its chunks into its own temporary file (batched to about a MiB per trip to
//! the blocking thread pool, hashing on the way), so a blob is never held whole in memory. At
//! `finish` it checks size and SHA-256, fsyncs the file and renames it to its final name, which
//! is atomic: a blob file is either complete or absent, even after a crash. The blob's directory
//! is then fsynced, so an acknowledged write survives a crash too. A write of a blob already
//! stored renames its file over the stored one all the same (as a new generation of the index
//! entry): its bytes were just verified while the stored ones may have been damaged since, and
//! the rename costs no more than discarding the new file would.
//!
//! # Reads and damaged files
//!
//! A file can be changed behind the store's back (a stray write, a flipped byte), so reads check
//! the bytes before passing them off as the blob: against the CRC-32 the index keeps of bytes
//! whose SHA-256 was checked (at the write, or by an earlier check since the store opened), or
//! else against the digest itself, recording the CRC-32 then (see [`crate::verify`] for why a
//! CRC-32 is enough there, and what it saves):
//!
//! * a blob of at most [`CHECK_FIRST_BYTES`] is read whole and checked before anything is served;
//! * a larger blob read whole is checked as it streams, and the stream ends with
//!   [`BlobError::Corrupt`] instead of ending cleanly if it was not the blob;
//! * a range of a larger blob is served only after the whole file checked right, once: the
//!   index remembers the file's [`FileStamp`](crate::filecheck::FileStamp) (inode, length,
//!   ctime) from a check, and a file that still has it is not read again (see
//!   [`filecheck`](crate::filecheck) for why that is sound).
//!
//! A blob found damaged is dropped at once (index and file, logged with its digest), so that
//! `find_missing` reports it missing and the next upload stores it again. `find_missing` itself
//! answers from the index, without touching files (it must stay cheap for thousands of
//! digests); `find_missing_or_corrupt` checks the files as reads do.
//!
//! # Index, recency and eviction
//!
//! The store keeps an index in memory of every blob (size, last use, pins) and answers
//! `find_missing` from it alone. At open it is rebuilt by listing the shard directories, ordering
//! blobs by file modification time, which the store advances when a blob is used (lazily: at most
//! once per [`MTIME_REFRESH`] per blob), so a restart keeps the least-recently-used order
//! roughly. Blobs are not re-hashed at open; files whose length contradicts their name are
//! removed. Files that do not follow the layout are left alone and ignored.
//!
//! After each committed write, least recently used blobs are evicted until the total is within
//! the capacity; blobs being read are skipped, and the blob just written is never its own
//! victim, so pinned blobs can keep the store over capacity until their streams are dropped (it
//! is brought back within bounds then). An evicted file is first renamed into `tmp/` (with the
//! index lock held, so that a concurrent writer of the same digest cannot have its new file
//! deleted) and unlinked afterwards. Writes in progress are not counted.
//!
//! One process at a time: a second store (in this or another process) opening the same directory
//! gets an error rather than a second, inconsistent index.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use scoot_local_storage::{DirLock, Generation};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::chunks::{READ_CHUNK, SliceChunks, byte_range, read_empty_blob};
use crate::filecheck::{
    FileFault, FileStamp, Verified, check_len, hash_checked, mismatch, read_checked,
};
use crate::index::{Index, PinGuard, PinOwner, lock};
use crate::verify::{ReadCheck, Verifier, checked_size, overflow_error};
use crate::{BlobError, BlobStore, BlobStream, BlobWriter, Digest};

/// A used blob's file modification time is advanced when it is at least this old.
pub const MTIME_REFRESH: Duration = Duration::from_secs(5 * 60);

/// A writer hands its chunks to the blocking pool once this many bytes are pending.
const WRITE_BATCH: usize = 1024 * 1024;

/// Blobs up to this size are read whole into memory and checked before a read serves any of
/// them; larger ones are checked as they stream (see the module documentation).
pub const CHECK_FIRST_BYTES: u64 = 1024 * 1024;

const TMP_DIR: &str = "tmp";

/// The default blob store: blobs as files under one directory (see the module documentation for
/// the layout), at most `capacity_bytes` in total, least recently used evicted first. Cheap to
/// clone; clones share the directory and index.
#[derive(Clone)]
pub struct FsBlobStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    tmp: PathBuf,
    capacity: u64,
    index: Mutex<Index<BlobMeta>>,
    next_temp: AtomicU64,
    /// Holds the directory's lock for as long as the store (or any stream or writer) lives.
    _lock: DirLock,
}

/// What the index keeps about a stored blob besides its size.
struct BlobMeta {
    /// The modification time its file has on disk, as far as we know.
    mtime: SystemTime,
    /// The file's stamp when its bytes last checked right, if that stamp had settled.
    verified: Option<FileStamp>,
    /// The CRC-32 of the blob's bytes, once known (from the write, or a check by the digest).
    crc: Option<u32>,
}

impl BlobMeta {
    fn new(mtime: SystemTime, crc: Option<u32>) -> BlobMeta {
        BlobMeta {
            mtime,
            verified: None,
            crc,
        }
    }
}

fn io_error(what: impl std::fmt::Display, e: io::Error) -> BlobError {
    BlobError::Io(format!("{what}: {e}"))
}

fn is_hex_lower(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FsBlobStore {
    /// Opens (creating it if needed) `dir` as a store of at most `capacity_bytes`: takes the
    /// directory's lock, empties `tmp/`, indexes the blobs already there and evicts down to the
    /// capacity if they exceed it. Blocks while it lists the directory.
    pub fn open(dir: PathBuf, capacity_bytes: u64) -> Result<FsBlobStore, BlobError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        let lock = DirLock::acquire(&dir)?;

        let tmp = dir.join(TMP_DIR);
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("emptying {}", tmp.display()), e)),
        }
        std::fs::create_dir(&tmp)
            .map_err(|e| io_error(format!("creating {}", tmp.display()), e))?;

        let mut found = scan(&dir)?;
        found.sort();
        let mut index = Index::new(capacity_bytes);
        for (mtime, digest, size) in found {
            index.insert(digest, size, BlobMeta::new(mtime, None));
        }
        let evicted = index.evict(None);
        tracing::info!(
            dir = %dir.display(),
            blobs = index.len(),
            bytes = index.total(),
            evicted = evicted.len(),
            "opened blob store"
        );
        let store = FsBlobStore {
            shared: Arc::new(Shared {
                dir,
                tmp,
                capacity: capacity_bytes,
                index: Mutex::new(index),
                next_temp: AtomicU64::new(0),
                _lock: lock,
            }),
        };
        for (digest, _) in evicted {
            let path = store.shared.blob_path(&digest);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove evicted blob: {e}");
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Bytes of all stored blobs. Can exceed the capacity while pinned blobs hold space.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.shared.index).total()
    }

    /// Number of stored blobs (the empty blob, never stored, is not counted).
    pub fn blob_count(&self) -> usize {
        lock(&self.shared.index).len()
    }
}

/// The blobs in `dir` as (modification time, digest, size), unordered. Removes blob files whose
/// length is not the size in their name.
fn scan(dir: &Path) -> Result<Vec<(SystemTime, Digest, u64)>, BlobError> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(shard) = name.to_str() else { continue };
        if shard.len() != 2 || !is_hex_lower(shard) {
            continue;
        }
        let shard_dir = entry.path();
        if !shard_dir.is_dir() {
            continue;
        }
        let files = std::fs::read_dir(&shard_dir)
            .map_err(|e| io_error(format!("listing {}", shard_dir.display()), e))?;
        for file in files {
            let file = file.map_err(|e| io_error(format!("listing {}", shard_dir.display()), e))?;
            let path = file.path();
            let parsed = file
                .file_name()
                .to_str()
                .and_then(|n| parse_blob_name(n, shard));
            let Some((digest, size)) = parsed else {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a blob");
                continue;
            };
            let meta = file
                .metadata()
                .map_err(|e| io_error(format!("inspecting {}", path.display()), e))?;
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "ignoring a blob name that is not a file");
                continue;
            }
            if meta.len() != size || digest.is_empty_blob() {
                tracing::warn!(path = %path.display(), len = meta.len(), "removing a damaged blob");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), "cannot remove: {e}");
                }
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, digest, size));
        }
    }
    Ok(found)
}

/// `<hash>-<size>` in shard `<hh>` → the digest and its size.
fn parse_blob_name(name: &str, shard: &str) -> Option<(Digest, u64)> {
    let (hash, size) = name.split_once('-')?;
    if !hash.starts_with(shard) {
        return None;
    }
    let size_bytes: i64 = size.parse().ok()?;
    // Digest::new checks the hash; the round trip refuses "+1", "01" and the like.
    if size_bytes.to_string() != size {
        return None;
    }
    let digest = Digest::new(hash, size_bytes).ok()?;
    let size = checked_size(&digest)?;
    Some((digest, size))
}

impl Shared {
    /// Only for digests `checked_size` accepts.
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let shard = digest.hash.get(..2).unwrap_or("xx");
        self.dir
            .join(shard)
            .join(format!("{}-{}", digest.hash, digest.size_bytes))
    }

    fn temp_path(&self, kind: &str) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{kind}-{n}"))
    }

    /// Makes a verified, synced temp file (whose bytes have the CRC-32 `crc`) the blob
    /// `digest`, in place of any copy stored already, then evicts down to the capacity.
    /// Blocking.
    fn commit(
        &self,
        digest: &Digest,
        size: u64,
        crc: u32,
        temp: TempFile,
    ) -> Result<(), BlobError> {
        let target = self.blob_path(digest);
        let trash = {
            let mut index = lock(&self.index);
            if let Err(e) = rename_creating_parent(&temp.path, &target) {
                drop(index);
                temp.remove_now();
                return Err(io_error(format!("storing {}", target.display()), e));
            }
            temp.disarm();
            index.replace(
                digest.clone(),
                size,
                BlobMeta::new(SystemTime::now(), Some(crc)),
            );
            let evicted = index.evict(Some(digest));
            self.move_to_trash(evicted.into_iter().map(|(digest, _)| digest))
        };
        remove_files(&trash);
        // Make the rename itself durable before the write is acknowledged. Done outside the
        // index lock so that other writers are not queued behind the disk.
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(format!("syncing {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Moves the files of blobs taken out of the index out of their names; called with the index
    /// lock held so that no writer can store the same digest meanwhile. Returns the files to
    /// unlink afterwards.
    fn move_to_trash(&self, removed: impl IntoIterator<Item = Digest>) -> Vec<PathBuf> {
        let mut trash = Vec::new();
        for digest in removed {
            tracing::debug!(%digest, "removing blob");
            let path = self.blob_path(&digest);
            let to = self.temp_path("x");
            match std::fs::rename(&path, &to) {
                Ok(()) => trash.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot move an evicted blob: {e}");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), "cannot remove an evicted blob: {e}");
                    }
                }
            }
        }
        trash
    }

    /// Remembers what a check of the file of generation `id` of `digest` that found its bytes
    /// good learnt.
    fn remember(&self, digest: &Digest, id: Generation, verified: Verified) {
        let mut index = lock(&self.index);
        if index.generation(digest) == Some(id)
            && let Some(meta) = index.get_mut(digest)
        {
            meta.crc = Some(verified.crc);
            if verified.stamp.is_some() {
                meta.verified = verified.stamp;
            }
        }
    }

    /// The error for a blob file of generation `id` of `digest` that could not be served, once
    /// the blob is forgotten (its file vanished) or dropped (its bytes are not the blob).
    fn fault(&self, digest: &Digest, id: Generation, fault: FileFault) -> BlobError {
        match fault {
            FileFault::Corrupt(actual) => {
                let trash = {
                    let mut index = lock(&self.index);
                    match index.remove_generation(digest, id) {
                        Some(_) => self.move_to_trash([digest.clone()]),
                        None => Vec::new(),
                    }
                };
                remove_files_in_background(trash);
                tracing::error!(%digest, %actual, "blob file is corrupt; dropped it so that the next upload stores it again");
                BlobError::Corrupt {
                    digest: digest.clone(),
                    actual,
                }
            }
            FileFault::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                lock(&self.index).remove_generation(digest, id);
                tracing::warn!(%digest, "blob file vanished");
                BlobError::NotFound(digest.clone())
            }
            FileFault::Io(e) => io_error(format!("reading {digest}"), e),
        }
    }
}

impl PinOwner for Shared {
    fn release(&self, digest: &Digest, id: Generation) {
        let trash = {
            let mut index = lock(&self.index);
            index.unpin(digest, id);
            let evicted = index.evict(None);
            self.move_to_trash(evicted.into_iter().map(|(digest, _)| digest))
        };
        remove_files_in_background(trash);
    }
}

fn rename_creating_parent(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(from, to)
        }
        other => other,
    }
}

fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
        }
    }
}

/// Unlinking a large file can take a while; off the async threads when there is a runtime.
fn remove_files_in_background(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    match Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || remove_files(&paths));
        }
        Err(_) => remove_files(&paths),
    }
}

/// The current tokio runtime, which reads and writes use for file I/O.
fn runtime() -> Result<Handle, BlobError> {
    Handle::try_current()
        .map_err(|e| BlobError::Io(format!("the file blob store needs a tokio runtime: {e}")))
}

/// Runs blocking file work on the runtime's blocking pool.
async fn run_blocking<T: Send + 'static>(
    what: impl std::fmt::Display,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlobError> {
    runtime()?
        .spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Io(format!("{what}: {e}")))
}

/// Advances a used blob's modification time; best effort.
fn set_mtime(path: &Path, when: SystemTime) {
    if let Ok(file) = File::open(path) {
        let _ = file.set_modified(when);
    }
}

fn is_stale(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime)
        .is_ok_and(|age| age >= MTIME_REFRESH)
}

/// A temporary file that is removed unless it was renamed into place. (A writer dropped while its
/// first flush is still creating the file can leave the file behind; the next open removes it.)
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Removes the file on this thread (for callers already on the blocking pool).
    fn remove_now(mut self) {
        self.armed = false;
        remove_files(std::slice::from_ref(&self.path));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            remove_files_in_background(vec![std::mem::take(&mut self.path)]);
        }
    }
}

/// The digests a lookup must find in the index: the empty blob is always present, and a size no
/// file can have is missing without looking (it goes straight into `missing`).
fn digests_to_look_up<'a>(digests: &'a [Digest], missing: &mut Vec<Digest>) -> Vec<&'a Digest> {
    let (absurd, rest): (Vec<&Digest>, Vec<&Digest>) = digests
        .iter()
        .filter(|d| !d.is_empty_blob())
        .partition(|d| checked_size(d).is_none());
    missing.extend(absurd.into_iter().cloned());
    rest
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let now = SystemTime::now();
        let mut refresh = Vec::new();
        let mut missing = Vec::new();
        {
            let mut index = lock(&self.shared.index);
            for digest in digests_to_look_up(digests, &mut missing) {
                match index.touch(digest) {
                    None => missing.push(digest.clone()),
                    Some(meta) => {
                        if is_stale(meta.mtime, now) {
                            meta.mtime = now;
                            refresh.push(self.shared.blob_path(digest));
                        }
                    }
                }
            }
        }
        if let (false, Ok(rt)) = (refresh.is_empty(), Handle::try_current()) {
            rt.spawn_blocking(move || {
                for path in refresh {
                    set_mtime(&path, now);
                }
            });
        }
        Ok(missing)
    }

    async fn find_missing_or_corrupt(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let mut missing = Vec::new();
        let mut present = Vec::new();
        {
            let mut index = lock(&self.shared.index);
            for digest in digests_to_look_up(digests, &mut missing) {
                match index.pin(digest) {
                    None => missing.push(digest.clone()),
                    Some(pinned) => present.push((
                        digest.clone(),
                        pinned.generation,
                        pinned.value.crc,
                        pinned.value.verified,
                    )),
                }
            }
        }
        // Created after the lock is released (dropping them takes it): no blob being checked is
        // evicted meanwhile.
        let pins: Vec<PinGuard> = present
            .iter()
            .map(|(digest, id, ..)| PinGuard::new(self.shared.clone(), digest.clone(), *id))
            .collect();
        let mut checked = Vec::with_capacity(present.len());
        let mut work = Vec::with_capacity(present.len());
        for (digest, id, crc, memo) in present {
            let check = ReadCheck::new(&digest, crc)?;
            work.push((self.shared.blob_path(&digest), check, memo));
            checked.push((digest, id));
        }
        let verdicts = run_blocking("checking blobs", move || {
            work.into_iter()
                .map(|(path, check, memo)| check_file(&path, check, memo))
                .collect::<Vec<_>>()
        })
        .await?;
        for ((digest, id), verdict) in checked.into_iter().zip(verdicts) {
            match verdict {
                Ok(Some(verified)) => self.shared.remember(&digest, id, verified),
                Ok(None) => {}
                Err(fault) => match self.shared.fault(&digest, id, fault) {
                    BlobError::Corrupt { .. } | BlobError::NotFound(_) => missing.push(digest),
                    other => return Err(other),
                },
            }
        }
        drop(pins);
        Ok(missing)
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        if digest.is_empty_blob() {
            return read_empty_blob(digest, offset);
        }
        if checked_size(digest).is_none() {
            return Err(BlobError::NotFound(digest.clone()));
        }
        let now = SystemTime::now();
        let (size, id, refresh, memo, crc) = {
            let mut index = lock(&self.shared.index);
            let pinned = index
                .pin(digest)
                .ok_or_else(|| BlobError::NotFound(digest.clone()))?;
            let refresh = is_stale(pinned.value.mtime, now);
            if refresh {
                pinned.value.mtime = now;
            }
            let meta = &*pinned.value;
            (
                pinned.size,
                pinned.generation,
                refresh,
                meta.verified,
                meta.crc,
            )
        };
        // Created after the lock is released: dropping it takes the lock.
        let pin = PinGuard::new(self.shared.clone(), digest.clone(), id);
        let (start, end) = byte_range(digest, size, offset, limit)?;
        let check = ReadCheck::new(digest, crc)?;
        let whole = start == 0 && end == size;
        let rt = runtime()?;
        let path = self.shared.blob_path(digest);
        let opened = rt
            .spawn_blocking(move || open_checked(&path, check, whole, refresh.then_some(now), memo))
            .await
            .map_err(|e| BlobError::Io(format!("opening {digest}: {e}")))?;
        let opened = match opened {
            Ok(opened) => opened,
            Err(fault) => {
                drop(pin);
                return Err(self.shared.fault(digest, id, fault));
            }
        };
        let (file, check) = match opened {
            Opened::Small(data, verified) => {
                self.shared.remember(digest, id, verified);
                // Both bounds are within the blob's size, which fits in memory.
                let range = data.slice(start as usize..end as usize);
                return Ok(Box::pin(SliceChunks::new(range, pin)));
            }
            Opened::Range(file, verified) => {
                if let Some(verified) = verified {
                    self.shared.remember(digest, id, verified);
                }
                (file, None)
            }
            Opened::Whole(file, check, stamp) => (
                file,
                Some(WholeCheck {
                    check: Some(check),
                    shared: self.shared.clone(),
                    id,
                    stamp,
                }),
            ),
        };
        let mut chunks = FileChunks {
            rt,
            file: Arc::new(file),
            digest: digest.clone(),
            pos: start,
            end,
            in_flight: None,
            check,
            done: false,
            _pin: pin,
        };
        chunks.start_read();
        Ok(Box::pin(chunks))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError> {
        let verifier = Verifier::new(digest)?;
        let size = verifier.expected_size();
        if size > self.shared.capacity {
            return Err(BlobError::TooLarge(digest.clone()));
        }
        Ok(Box::new(FsWriter {
            shared: self.shared.clone(),
            digest: digest.clone(),
            size,
            temp: Some(TempFile {
                path: self.shared.temp_path("w"),
                armed: true,
            }),
            state: Some(WriteState {
                verifier,
                file: None,
            }),
            pending: Vec::new(),
            pending_len: 0,
            accepted: 0,
            overflowed: false,
        }))
    }
}

/// A blob file opened for a read, with what was checked of it.
enum Opened {
    /// A small blob, read whole and checked.
    Small(Bytes, Verified),
    /// A large blob for a range read, checked whole now (saying what was learnt) or known
    /// unchanged since it last was.
    Range(File, Option<Verified>),
    /// A large blob for a whole read, to be checked as it streams; with its stamp, to remember
    /// if it was good.
    Whole(File, ReadCheck, Option<FileStamp>),
}

/// A blob file, open, with the length its digest says and its stamp, and that stamp again if it
/// had settled when taken (so may be remembered once the bytes are found good). Blocking.
fn open_stamped(
    path: &Path,
    check: &ReadCheck,
) -> Result<(File, FileStamp, Option<FileStamp>), FileFault> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    check_len(&meta, check)?;
    let stamp = FileStamp::of(&meta);
    let settled = stamp.settled(SystemTime::now()).then_some(stamp);
    Ok((file, stamp, settled))
}

/// Opens a blob file for a read and checks what must be checked before any of it is served
/// (see the module documentation); advances its mtime to `refresh` if given. Blocking.
fn open_checked(
    path: &Path,
    check: ReadCheck,
    whole: bool,
    refresh: Option<SystemTime>,
    memo: Option<FileStamp>,
) -> Result<Opened, FileFault> {
    let (file, stamp, mut settled) = open_stamped(path, &check)?;
    let known_good = memo == Some(stamp);
    if let Some(now) = refresh {
        let _ = file.set_modified(now);
        // That moved the file's ctime: the stamp taken is no longer the file's.
        settled = None;
    }
    if check.expected_size() <= CHECK_FIRST_BYTES {
        let (data, crc) = read_checked(&file, check)?;
        let verified = Verified {
            crc,
            stamp: settled,
        };
        return Ok(Opened::Small(data, verified));
    }
    if whole {
        return Ok(Opened::Whole(file, check, settled));
    }
    if known_good {
        return Ok(Opened::Range(file, None));
    }
    let crc = hash_checked(&file, check)?;
    let verified = Verified {
        crc,
        stamp: settled,
    };
    Ok(Opened::Range(file, Some(verified)))
}

/// Checks a blob file for `find_missing_or_corrupt`: read whole, unless `memo` shows it
/// unchanged since its bytes last checked right. Says what a check learnt. Blocking.
fn check_file(
    path: &Path,
    check: ReadCheck,
    memo: Option<FileStamp>,
) -> Result<Option<Verified>, FileFault> {
    let (file, stamp, settled) = open_stamped(path, &check)?;
    if memo == Some(stamp) {
        return Ok(None);
    }
    let crc = hash_checked(&file, check)?;
    Ok(Some(Verified {
        crc,
        stamp: settled,
    }))
}

/// A byte range of a blob file read in chunks on the blocking pool, one chunk ahead of the
/// consumer. Pins the blob until dropped.
struct FileChunks {
    rt: Handle,
    file: Arc<File>,
    digest: Digest,
    pos: u64,
    end: u64,
    /// The chunk being read, and the whole read's check, which takes it in on the way.
    in_flight: Option<JoinHandle<io::Result<ReadChunk>>>,
    /// Set for a whole read: what gives the verdict at the end.
    check: Option<WholeCheck>,
    done: bool,
    _pin: PinGuard,
}

/// A chunk read by a [`FileChunks`], with the check that took it in (for a whole read).
type ReadChunk = (Bytes, Option<ReadCheck>);

/// A whole read's check of the bytes it streams.
struct WholeCheck {
    /// Away while a chunk is being read (and checked).
    check: Option<ReadCheck>,
    shared: Arc<Shared>,
    /// The generation of the blob being read.
    id: Generation,
    /// To remember if the bytes are the blob.
    stamp: Option<FileStamp>,
}

impl FileChunks {
    fn start_read(&mut self) {
        if self.in_flight.is_some() || self.pos >= self.end {
            return;
        }
        // At most READ_CHUNK, so it fits in usize.
        let len = (self.end - self.pos).min(READ_CHUNK as u64) as usize;
        let at = self.pos;
        let file = self.file.clone();
        let mut check = self.check.as_mut().and_then(|c| c.check.take());
        self.in_flight = Some(self.rt.spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at)?;
            if let Some(check) = check.as_mut() {
                check.update(&buf);
            }
            Ok((Bytes::from(buf), check))
        }));
    }

    /// The last item of a whole read: the error if the bytes streamed were not the blob (which
    /// is then dropped).
    fn verdict(&mut self) -> Option<Result<Bytes, BlobError>> {
        let whole = self.check.take()?;
        // Only missing if a read failed, which already ended the stream with its error.
        let check = whole.check?;
        match check.check() {
            Ok(crc) => {
                let verified = Verified {
                    crc,
                    stamp: whole.stamp,
                };
                whole.shared.remember(&self.digest, whole.id, verified);
                None
            }
            Err(actual) => Some(Err(whole.shared.fault(
                &self.digest,
                whole.id,
                mismatch(actual),
            ))),
        }
    }
}

impl Stream for FileChunks {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.start_read();
        let Some(handle) = this.in_flight.as_mut() else {
            this.done = true;
            return Poll::Ready(this.verdict());
        };
        let result = ready!(Pin::new(handle).poll(cx));
        this.in_flight = None;
        match result {
            Ok(Ok((chunk, check))) => {
                if let Some(whole) = this.check.as_mut() {
                    whole.check = check;
                }
                this.pos += chunk.len() as u64;
                this.start_read();
                Poll::Ready(Some(Ok(chunk)))
            }
            Ok(Err(e)) => {
                this.done = true;
                let e = if e.kind() == io::ErrorKind::UnexpectedEof {
                    BlobError::Io(format!(
                        "the file of {} is shorter than its size",
                        this.digest
                    ))
                } else {
                    io_error(format!("reading {}", this.digest), e)
                };
                Poll::Ready(Some(Err(e)))
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(BlobError::Io(format!(
                    "reading {}: {e}",
                    this.digest
                )))))
            }
        }
    }
}

/// What a flush takes to the blocking pool and brings back.
struct WriteState {
    verifier: Verifier,
    /// Created by the first flush.
    file: Option<File>,
}

struct FsWriter {
    shared: Arc<Shared>,
    digest: Digest,
    size: u64,
    /// `None` only once `finish` took it.
    temp: Option<TempFile>,
    /// `None` after a flush failed or was cancelled: the writer is then unusable.
    state: Option<WriteState>,
    pending: Vec<Bytes>,
    pending_len: usize,
    accepted: u64,
    overflowed: bool,
}

impl FsWriter {
    fn broken(&self) -> BlobError {
        BlobError::Io(format!(
            "an earlier write of {} failed or was interrupted",
            self.digest
        ))
    }

    /// Hashes and writes the pending chunks on the blocking pool.
    async fn flush(&mut self) -> Result<(), BlobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut state = self.state.take().ok_or_else(|| self.broken())?;
        let path = match &self.temp {
            Some(temp) => temp.path.clone(),
            None => return Err(self.broken()),
        };
        let chunks = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let what = format!("writing {}", self.digest);
        let state = run_blocking(what, move || -> io::Result<WriteState> {
            let mut file = match state.file.take() {
                Some(file) => file,
                None => OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?,
            };
            for chunk in &chunks {
                state.verifier.update(chunk);
                file.write_all(chunk)?;
            }
            state.file = Some(file);
            Ok(state)
        })
        .await?
        .map_err(|e| io_error(format!("writing {}", self.digest), e))?;
        self.state = Some(state);
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        if self.overflowed || self.accepted.saturating_add(chunk.len() as u64) > self.size {
            self.overflowed = true;
            self.pending = Vec::new();
            self.pending_len = 0;
            return Err(overflow_error(&self.digest, self.size));
        }
        if self.state.is_none() {
            return Err(self.broken());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.accepted += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.accepted
    }

    async fn finish(mut self: Box<Self>) -> Result<(), BlobError> {
        if self.overflowed {
            return Err(overflow_error(&self.digest, self.size));
        }
        self.flush().await?;
        let state = self.state.take().ok_or_else(|| self.broken())?;
        let temp = self.temp.take().ok_or_else(|| self.broken())?;
        let FsWriter {
            shared,
            digest,
            size,
            ..
        } = *self;
        let what = format!("storing {digest}");
        run_blocking(what, move || {
            let WriteState { verifier, file } = state;
            let crc = match verifier.finish() {
                Ok(crc) => crc,
                Err(e) => {
                    drop(file);
                    temp.remove_now();
                    return Err(e);
                }
            };
            let Some(file) = file else {
                // Nothing was written and that was right: the empty blob, never stored.
                temp.remove_now();
                return Ok(());
            };
            if let Err(e) = file.sync_all() {
                drop(file);
                temp.remove_now();
                return Err(io_error(format!("syncing {digest}"), e));
            }
            drop(file);
            shared.commit(&digest, size, crc, temp)
        })
        .await?
    }
}
