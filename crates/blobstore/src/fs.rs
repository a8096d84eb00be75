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
//! is then fsynced, so an acknowledged write survives a crash too. When several writers of one
//! digest finish, the first renames its file and the others discard theirs.
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
use nix::fcntl::{Flock, FlockArg};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::chunks::{READ_CHUNK, byte_range, read_empty_blob};
use crate::index::{LruIndex, PinGuard, PinOwner, lock};
use crate::verify::{Verifier, checked_size, overflow_error};
use crate::{BlobError, BlobStore, BlobStream, BlobWriter, Digest};

/// A used blob's file modification time is advanced when it is at least this old.
pub const MTIME_REFRESH: Duration = Duration::from_secs(5 * 60);

/// A writer hands its chunks to the blocking pool once this many bytes are pending.
const WRITE_BATCH: usize = 1024 * 1024;

const TMP_DIR: &str = "tmp";
const LOCK_FILE: &str = "LOCK";

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
    /// The value of each entry is the modification time its file has on disk, as far as we know.
    index: Mutex<LruIndex<SystemTime>>,
    next_temp: AtomicU64,
    /// Holds the directory's lock for as long as the store (or any stream or writer) lives.
    _lock: Flock<File>,
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
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error(format!("opening {}", lock_path.display()), e))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                BlobError::Io(format!(
                    "{} is in use by another blob store ({errno})",
                    dir.display()
                ))
            })?;

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
        let mut index = LruIndex::new(capacity_bytes);
        for (mtime, digest, size) in found {
            index.insert(digest, size, mtime);
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

    /// Makes a verified, synced temp file the blob `digest`, unless it is stored already, then
    /// evicts down to the capacity. Blocking.
    fn commit(&self, digest: &Digest, size: u64, temp: TempFile) -> Result<(), BlobError> {
        let target = self.blob_path(digest);
        let trash = {
            let mut index = lock(&self.index);
            if index.touch(digest).is_some() {
                drop(index);
                temp.remove_now();
                return Ok(());
            }
            if let Err(e) = rename_creating_parent(&temp.path, &target) {
                drop(index);
                temp.remove_now();
                return Err(io_error(format!("storing {}", target.display()), e));
            }
            temp.disarm();
            index.insert(digest.clone(), size, SystemTime::now());
            let evicted = index.evict(Some(digest));
            self.move_to_trash(evicted)
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

    /// Moves evicted blobs' files out of their names; called with the index lock held so that no
    /// writer can store the same digest meanwhile. Returns the files to unlink afterwards.
    fn move_to_trash(&self, evicted: Vec<(Digest, SystemTime)>) -> Vec<PathBuf> {
        if !evicted.is_empty() {
            tracing::debug!(count = evicted.len(), "evicting blobs");
        }
        let mut trash = Vec::with_capacity(evicted.len());
        for (digest, _) in evicted {
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
}

impl PinOwner for Shared {
    fn release(&self, digest: &Digest, id: u64) {
        let trash = {
            let mut index = lock(&self.index);
            index.unpin(digest, id);
            let evicted = index.evict(None);
            self.move_to_trash(evicted)
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

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let now = SystemTime::now();
        let mut refresh = Vec::new();
        let mut missing = Vec::new();
        {
            let mut index = lock(&self.shared.index);
            for digest in digests {
                if digest.is_empty_blob() {
                    continue;
                }
                if checked_size(digest).is_none() {
                    missing.push(digest.clone());
                    continue;
                }
                match index.touch(digest) {
                    None => missing.push(digest.clone()),
                    Some(mtime) => {
                        if is_stale(*mtime, now) {
                            *mtime = now;
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
        let (size, id, refresh) = {
            let mut index = lock(&self.shared.index);
            let pinned = index
                .pin(digest)
                .ok_or_else(|| BlobError::NotFound(digest.clone()))?;
            let refresh = is_stale(*pinned.value, now);
            if refresh {
                *pinned.value = now;
            }
            (pinned.size, pinned.id, refresh)
        };
        // Created after the lock is released: dropping it takes the lock.
        let pin = PinGuard::new(self.shared.clone(), digest.clone(), id);
        let (start, end) = byte_range(digest, size, offset, limit)?;
        let rt = runtime()?;
        let path = self.shared.blob_path(digest);
        let opened = rt
            .spawn_blocking(move || {
                let file = File::open(&path)?;
                if refresh {
                    let _ = file.set_modified(now);
                }
                Ok::<_, io::Error>(file)
            })
            .await
            .map_err(|e| BlobError::Io(format!("opening {digest}: {e}")))?;
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Deleted behind our back: forget it.
                drop(pin);
                lock(&self.shared.index).remove(digest, id);
                tracing::warn!(%digest, "blob file vanished");
                return Err(BlobError::NotFound(digest.clone()));
            }
            Err(e) => return Err(io_error(format!("opening {digest}"), e)),
        };
        let mut chunks = FileChunks {
            rt,
            file: Arc::new(file),
            digest: digest.clone(),
            pos: start,
            end,
            in_flight: None,
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

/// A byte range of a blob file read in chunks on the blocking pool, one chunk ahead of the
/// consumer. Pins the blob until dropped.
struct FileChunks {
    rt: Handle,
    file: Arc<File>,
    digest: Digest,
    pos: u64,
    end: u64,
    in_flight: Option<JoinHandle<io::Result<Bytes>>>,
    done: bool,
    _pin: PinGuard,
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
        self.in_flight = Some(self.rt.spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at)?;
            Ok(Bytes::from(buf))
        }));
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
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(handle).poll(cx));
        this.in_flight = None;
        match result {
            Ok(Ok(chunk)) => {
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
            if let Err(e) = verifier.finish() {
                drop(file);
                temp.remove_now();
                return Err(e);
            }
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
            shared.commit(&digest, size, temp)
        })
        .await?
    }
}
