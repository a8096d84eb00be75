//! A crash-safe saga log in a directory.
//!
//! # Layout
//!
//! - `<dir>/LOCK`: `flock`ed while a [`FileSagaLog`] is open, so two processes (or two opens in
//!   one process) never write the same directory.
//! - `<dir>/<hex>.saga`: one file per saga; `<hex>` is the lowercase hex of the saga id's bytes,
//!   so ids with `/`, `..`, spaces, newlines or any unicode are safe file names. Ids are limited
//!   to [`MAX_SAGA_ID_LEN`] bytes so names stay under the usual 255-byte limit.
//! - `<dir>/<hex>.<n>.tmp`, `<dir>/<hex>.saga.repair.tmp`: a saga file being created or
//!   repaired; left over only by a crash, and deleted when the log is opened.
//! - `<dir>/<hex>.saga.damaged`: the original of a saga file that was repaired (see Recovery),
//!   kept for an operator; the log never reads it, and a later repair of the same saga
//!   replaces it.
//!
//! One file per saga rather than a directory per saga: `rename` replaces a file atomically, but
//! not a non-empty directory, and replacing a saga must never leave it half-gone.
//!
//! # File format
//!
//! A saga file is a sequence of frames, one per write:
//!
//! ```text
//! frame   = "SgF1" | payload length: u32 LE | crc32 of (length bytes ++ payload): u32 LE | payload
//! payload = written at, ms since the Unix epoch: u64 LE | message count: u32 LE | message*
//! message = kind: u8 (1 Start Saga, 2 End Saga, 3 Abort Saga, 4 Start Task, 5 End Task,
//!           6 Start Comp Task, 7 End Comp Task)
//!         | task id length: u32 LE | task id (UTF-8) | data length: u32 LE | data
//! ```
//!
//! The saga id is implied by the file name. A file begins with Start Saga and holds no other.
//! A saga's end time (for gc) is the write time of the frame holding its first End Saga.
//!
//! One frame per write (a whole batch), not one record per message: before an fsync completes,
//! the pages of a write reach the disk in any order, so a crash in the middle of a batch could
//! keep a later record of it but not an earlier one, which per-message records could not tell
//! from corruption. A frame is all there or not at all.
//!
//! # Durability
//!
//! - Creating or replacing a saga writes its complete file under a temporary name, fsyncs it,
//!   renames it over `<hex>.saga` and fsyncs the directory. After a crash the saga is the old one
//!   or the new one, never a half-written file.
//! - Appending writes one frame at the end of the valid data and fsyncs the file before
//!   returning. A failed append is cut off again, so "failed" means "not in the log".
//! - gc deletes files and then fsyncs the directory.
//!
//! # Recovery
//!
//! [`FileSagaLog::open`] reads every saga file. A frame that is incomplete, lacks the magic or
//! fails its checksum is a torn tail (a write a crash interrupted, which was never acknowledged)
//! if no valid frame starts anywhere after it. The torn tail is then truncated away (and fsynced)
//! so that later appends follow valid data.
//!
//! Damage elsewhere (a bad frame followed by a valid one, or a frame whose checksum holds but
//! whose payload does not decode) is salvaged rather than losing the saga: reading resumes at the
//! next offset where the magic begins a frame whose checksum holds (a damaged length cannot be
//! trusted, so every later offset is tried), every intact message is kept, and the messages are
//! replayed through [`SagaState`]: an End Task whose Start Task was lost implies that Start Task
//! (the first one carries no data), and a message the rules refuse is dropped. End Saga is
//! dropped too: the lost frames may have held any task's records, and only the saga's owner (the
//! scheduler, which knows the job's tasks) can tell which tasks are not known to be finished, redo
//! them and end the saga again. The salvaged frames replace the file atomically, the original is
//! kept as `<name>.damaged`, and the lost bytes and dropped messages are logged with the saga id.
//!
//! A saga whose first frame (its Start Saga, the job) is damaged, or that does not begin with
//! Start Saga, cannot be salvaged: its file is left as it is, it answers
//! [`SagaLogError::Unreadable`] and is listed by `active_sagas` (so it is not silently
//! forgotten). A second Start Saga in an undamaged file answers [`SagaLogError::Corrupt`]. Other
//! sagas are unaffected.
//!
//! # Taking over from Go Scoot
//!
//! A subdirectory holding a `log` file is a saga of Go Scoot's file saga log (the scheduler was
//! pointed at Scoot's directory). At open its messages are read
//! ([`scoot_dir`](crate::scoot_dir)) and written as this log's file of the saga, and the
//! directory is moved into `<dir>/scoot-imported/`, out of the way of both logs. Scoot's task
//! statuses (Thrift JSON) are kept as they were; the scheduler reads both encodings.
//!
//! # Concurrency
//!
//! An in-memory index maps each saga to its state (valid length, end time). Each saga has its own
//! mutex, held for its writes and reads, so writes to one saga are serialized while different
//! sagas write and fsync in parallel.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use scoot_local_storage::{DirLock, LOCK_FILE};

use crate::error::SagaLogError;
use crate::log::{SagaLog, expired};
use crate::message::{MessageKind, SagaMessage};
use crate::scoot_dir::{is_scoot_saga_dir, read_scoot_saga};
use crate::state::SagaState;

/// The longest saga id, in bytes, that the file log accepts.
pub const MAX_SAGA_ID_LEN: usize = 100;

const MAGIC: [u8; 4] = *b"SgF1";
/// Magic, payload length, checksum.
const HEADER_LEN: usize = 12;
const SAGA_SUFFIX: &str = ".saga";
const TMP_SUFFIX: &str = ".tmp";
const DAMAGED_SUFFIX: &str = ".damaged";
/// Where the saga directories of Go Scoot's file log go once imported.
pub const SCOOT_IMPORTED_DIR: &str = "scoot-imported";

/// What the index knows about one saga file.
enum Status {
    /// No such saga: a placeholder while it is created, or after a failed creation.
    Absent,
    /// The file holds `len` bytes of valid frames.
    Live {
        len: u64,
        ended_at: Option<SystemTime>,
    },
    /// The file is damaged; reads and writes fail with this error until an operator repairs it.
    Damaged(SagaLogError),
    /// An I/O failure left the file in an unknown state; writes fail until the log is reopened
    /// (or the saga is started again, which replaces the file).
    Failed(String),
}

struct Entry {
    /// Set by gc when it drops the entry from the index; whoever still holds it must look again.
    removed: bool,
    status: Status,
}

type EntryRef = Arc<Mutex<Entry>>;

/// Sagas stored as one append-only, checksummed file each. See the module documentation for the
/// format and the crash-safety argument.
pub struct FileSagaLog {
    dir: PathBuf,
    retention: Option<Duration>,
    sagas: Mutex<HashMap<String, EntryRef>>,
    tmp_counter: AtomicU64,
    _lock: DirLock,
}

fn internal(what: &str, path: &Path, err: io::Error) -> SagaLogError {
    SagaLogError::Internal(format!("{what} {}: {err}", path.display()))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are updated only after the I/O they describe succeeded, and the append path checks
    // the real file length, so the data behind a poisoned lock is still meaningful.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn check_saga_id(saga_id: &str) -> Result<(), SagaLogError> {
    if saga_id.is_empty() {
        Err(SagaLogError::InvalidRequest("empty saga id".into()))
    } else if saga_id.len() > MAX_SAGA_ID_LEN {
        Err(SagaLogError::InvalidRequest(format!(
            "saga id of {} bytes is longer than {MAX_SAGA_ID_LEN}",
            saga_id.len()
        )))
    } else {
        Ok(())
    }
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn len_u32(len: usize, what: &str) -> Result<u32, SagaLogError> {
    u32::try_from(len)
        .map_err(|_| SagaLogError::InvalidRequest(format!("{what} of {len} bytes is too large")))
}

/// The checksum stored in a frame header.
fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// One frame holding `messages`, written at `now`.
fn encode_frame(now: SystemTime, messages: &[&SagaMessage]) -> Result<Vec<u8>, SagaLogError> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&millis_since_epoch(now).to_le_bytes());
    payload.extend_from_slice(&len_u32(messages.len(), "message count")?.to_le_bytes());
    for msg in messages {
        payload.push(msg.kind.code());
        payload.extend_from_slice(&len_u32(msg.task_id.len(), "task id")?.to_le_bytes());
        payload.extend_from_slice(msg.task_id.as_bytes());
        payload.extend_from_slice(&len_u32(msg.data.len(), "message data")?.to_le_bytes());
        payload.extend_from_slice(&msg.data);
    }
    let len_bytes = len_u32(payload.len(), "batch")?.to_le_bytes();
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&len_bytes);
    frame.extend_from_slice(&frame_crc(len_bytes, &payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads fixed-size pieces off the front of a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("payload ends {} bytes early", n - self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()?;
        self.take(usize::try_from(len).map_err(|_| "length overflows".to_string())?)
    }
}

/// A frame whose checksum holds.
struct Frame {
    written_at: SystemTime,
    messages: Vec<SagaMessage>,
}

fn decode_payload(saga_id: &str, payload: &[u8]) -> Result<Frame, String> {
    let mut r = Reader(payload);
    let millis = u64::from_le_bytes(r.array()?);
    let count = r.u32()?;
    let mut messages = Vec::new();
    for _ in 0..count {
        let [code] = r.array()?;
        let kind = MessageKind::from_code(code).ok_or(format!("unknown message kind {code}"))?;
        let task_id = std::str::from_utf8(r.bytes()?)
            .map_err(|_| "task id is not UTF-8".to_string())?
            .to_owned();
        let data = r.bytes()?.to_vec();
        messages.push(SagaMessage {
            saga_id: saga_id.to_owned(),
            kind,
            task_id,
            data,
        });
    }
    if !r.0.is_empty() {
        return Err(format!("{} unexpected bytes after the messages", r.0.len()));
    }
    Ok(Frame {
        written_at: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        messages,
    })
}

enum FrameRead {
    /// A good frame, and the offset after it.
    Valid(Frame, usize),
    /// Incomplete, no magic or a checksum mismatch: what a torn write leaves.
    Damaged,
    /// Checksummed but not decodable (not something a crash produces), and the offset after it.
    Undecodable(String, usize),
}

fn read_frame(saga_id: &str, bytes: &[u8], at: usize) -> FrameRead {
    let Some(header) = bytes.get(at..at.saturating_add(HEADER_LEN)) else {
        return FrameRead::Damaged;
    };
    if header[..4] != MAGIC {
        return FrameRead::Damaged;
    }
    let len_bytes = [header[4], header[5], header[6], header[7]];
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let start = at + HEADER_LEN;
    let Some(payload) = usize::try_from(u32::from_le_bytes(len_bytes))
        .ok()
        .and_then(|len| bytes.get(start..start.checked_add(len)?))
    else {
        return FrameRead::Damaged;
    };
    if frame_crc(len_bytes, payload) != crc {
        return FrameRead::Damaged;
    }
    let end = start + payload.len();
    match decode_payload(saga_id, payload) {
        Ok(frame) => FrameRead::Valid(frame, end),
        Err(reason) => FrameRead::Undecodable(reason, end),
    }
}

/// The first offset at or after `from` where a frame whose checksum holds begins. A damaged
/// frame's length cannot be trusted, so every occurrence of the magic is tried.
fn next_frame(saga_id: &str, bytes: &[u8], from: usize) -> Option<usize> {
    let mut from = from;
    while let Some(pos) = bytes
        .get(from..)
        .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC))
    {
        let candidate = from + pos;
        if !matches!(read_frame(saga_id, bytes, candidate), FrameRead::Damaged) {
            return Some(candidate);
        }
        from = candidate + 1;
    }
    None
}

/// What a pass over a saga file found.
struct Scan {
    /// The readable frames, in file order.
    frames: Vec<Frame>,
    /// Bytes up to the end of the last readable frame; anything after is a torn tail.
    valid_len: usize,
    /// Bytes of the readable frames.
    readable_bytes: usize,
    /// Unreadable stretches before a later readable frame (a torn tail is not among them), each
    /// with why its first frame is unreadable.
    damaged: Vec<(Range<usize>, String)>,
}

fn scan(saga_id: &str, bytes: &[u8]) -> Scan {
    let mut scan = Scan {
        frames: Vec::new(),
        valid_len: 0,
        readable_bytes: 0,
        damaged: Vec::new(),
    };
    let mut at = 0;
    while at < bytes.len() {
        match read_frame(saga_id, bytes, at) {
            FrameRead::Valid(frame, next) => {
                scan.frames.push(frame);
                scan.readable_bytes += next - at;
                scan.valid_len = next;
                at = next;
            }
            FrameRead::Undecodable(reason, next) => {
                scan.damaged.push((at..next, reason));
                at = next;
            }
            FrameRead::Damaged => match next_frame(saga_id, bytes, at + 1) {
                Some(next) => {
                    let reason = "bad magic, length or checksum".to_string();
                    scan.damaged.push((at..next, reason));
                    at = next;
                }
                None => break,
            },
        }
    }
    scan
}

/// The saga's state right after its Start Saga, which must be the first message of a readable
/// first frame; `Err` says why the job cannot be read.
fn start_state(saga_id: &str, scan: &Scan) -> Result<SagaState, String> {
    if let Some((range, reason)) = scan.damaged.first().filter(|(r, _)| r.start == 0) {
        return Err(format!(
            "the first frame, bytes {range:?}, is unreadable: {reason}"
        ));
    }
    match scan.frames.first().and_then(|f| f.messages.first()) {
        None => Err("no Start Saga (an empty file or a cut first frame)".into()),
        Some(first) if first.kind != MessageKind::StartSaga => {
            Err(format!("begins with {} instead of Start Saga", first.kind))
        }
        Some(first) => SagaState::new(saga_id, first.data.clone()).map_err(|e| e.to_string()),
    }
}

/// The content of a saga file as the log serves it.
#[derive(Debug)]
struct Parsed {
    messages: Vec<SagaMessage>,
    /// Bytes of valid frames; anything after is a torn tail.
    valid_len: usize,
    ended_at: Option<SystemTime>,
}

/// The write time of the first frame holding End Saga.
fn end_time(frames: &[Frame]) -> Option<SystemTime> {
    frames
        .iter()
        .find(|f| f.messages.iter().any(|m| m.kind == MessageKind::EndSaga))
        .map(|f| f.written_at)
}

/// The messages of frames that begin with Start Saga.
fn parsed(path: &Path, frames: Vec<Frame>, valid_len: usize) -> Result<Parsed, SagaLogError> {
    let ended_at = end_time(&frames);
    let messages: Vec<SagaMessage> = frames.into_iter().flat_map(|f| f.messages).collect();
    if messages
        .iter()
        .skip(1)
        .any(|m| m.kind == MessageKind::StartSaga)
    {
        return Err(SagaLogError::Corrupt(format!(
            "{}: holds a second Start Saga",
            path.display()
        )));
    }
    Ok(Parsed {
        messages,
        valid_len,
        ended_at,
    })
}

/// Reads an undamaged saga file (a torn tail aside).
fn read_log(saga_id: &str, path: &Path, bytes: &[u8]) -> Result<Parsed, SagaLogError> {
    let scan = scan(saga_id, bytes);
    start_state(saga_id, &scan)
        .map_err(|reason| SagaLogError::Unreadable(format!("{}: {reason}", path.display())))?;
    if let Some((range, reason)) = scan.damaged.first() {
        return Err(SagaLogError::Corrupt(format!(
            "{}: bytes {range:?} are damaged ({reason})",
            path.display()
        )));
    }
    parsed(path, scan.frames, scan.valid_len)
}

/// Replays the frames that survived damage on top of `state` (the saga after the first
/// message) and keeps what the saga's rules accept, End Saga aside; see the module
/// documentation. Returns the frames to keep and how many messages were dropped.
fn salvage(mut state: SagaState, frames: Vec<Frame>) -> (Vec<Frame>, usize) {
    let mut dropped = 0;
    let mut kept = Vec::with_capacity(frames.len());
    for (i, frame) in frames.into_iter().enumerate() {
        let mut messages = Vec::with_capacity(frame.messages.len());
        for (j, message) in frame.messages.into_iter().enumerate() {
            if (i, j) == (0, 0) {
                // The Start Saga `state` was made from.
                messages.push(message);
                continue;
            }
            if message.kind == MessageKind::EndSaga {
                dropped += 1;
                continue;
            }
            let mut batch = Vec::with_capacity(2);
            if message.kind == MessageKind::EndTask && !state.is_task_started(&message.task_id) {
                batch.push(SagaMessage::start_task(
                    &message.saga_id,
                    &message.task_id,
                    Vec::new(),
                ));
            }
            batch.push(message);
            match state.apply_all(&batch) {
                Ok(()) => messages.extend(batch),
                Err(err) => {
                    tracing::warn!(saga_id = state.saga_id(), %err, "dropping a salvaged message");
                    dropped += 1;
                }
            }
        }
        if !messages.is_empty() {
            kept.push(Frame {
                written_at: frame.written_at,
                messages,
            });
        }
    }
    (kept, dropped)
}

fn sync_dir(dir: &Path) -> Result<(), SagaLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| internal("fsync directory", dir, e))
}

fn has_end_saga(messages: &[&SagaMessage]) -> bool {
    messages.iter().any(|m| m.kind == MessageKind::EndSaga)
}

impl FileSagaLog {
    /// Opens (creating if needed) the log in `dir`, recovering every saga file: torn tails are
    /// truncated, corrupt sagas are reported by their own calls. `retention`: how long ended
    /// sagas are kept before gc deletes them; `None` keeps them forever.
    ///
    /// Fails if another `FileSagaLog` holds `dir` or on I/O errors.
    pub fn open(dir: PathBuf, retention: Option<Duration>) -> Result<Self, SagaLogError> {
        fs::create_dir_all(&dir).map_err(|e| internal("create", &dir, e))?;
        let lock =
            DirLock::acquire(&dir).map_err(|e| SagaLogError::Internal(format!("saga log: {e}")))?;

        let mut sagas = HashMap::new();
        let mut removed_tmp = false;
        // Listed before any file is touched: recovery may add and rename files.
        let listing = fs::read_dir(&dir)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|e| internal("list", &dir, e))?;
        let mut scoot_sagas = Vec::new();
        for item in listing {
            let path = item.path();
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "ignoring unexpected file in saga log");
                continue;
            };
            if name == SCOOT_IMPORTED_DIR {
                continue;
            }
            if is_scoot_saga_dir(&path) {
                scoot_sagas.push((name, path));
                continue;
            }
            if name.ends_with(DAMAGED_SUFFIX) {
                tracing::info!(path = %path.display(), "a damaged saga file kept for inspection");
                continue;
            }
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path).map_err(|e| internal("remove", &path, e))?;
                removed_tmp = true;
                continue;
            }
            let saga_id = name
                .strip_suffix(SAGA_SUFFIX)
                .and_then(hex_decode)
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|id| !id.is_empty());
            let Some(saga_id) = saga_id else {
                if name != LOCK_FILE {
                    tracing::warn!(path = %path.display(), "ignoring unexpected file in saga log");
                }
                continue;
            };
            let status = Self::recover_file(&dir, &saga_id, &path)?;
            sagas.insert(
                saga_id,
                Arc::new(Mutex::new(Entry {
                    removed: false,
                    status,
                })),
            );
        }
        if removed_tmp {
            sync_dir(&dir)?;
        }
        let log = FileSagaLog {
            dir,
            retention,
            sagas: Mutex::new(sagas),
            tmp_counter: AtomicU64::new(0),
            _lock: lock,
        };
        for (saga_id, path) in scoot_sagas {
            log.import_scoot_saga(&saga_id, &path)?;
        }
        Ok(log)
    }

    /// Takes over a saga Go Scoot's file log left in this directory (see
    /// [`scoot_dir`](crate::scoot_dir)): its messages become this log's file of the saga, then
    /// Scoot's directory moves into [`SCOOT_IMPORTED_DIR`], where neither this log nor Scoot's
    /// recovery reads it again. A saga this log already holds (an import whose move failed) is
    /// not imported twice. A saga that cannot be read stays where it is and answers its error,
    /// like a damaged saga file.
    fn import_scoot_saga(&self, saga_id: &str, path: &Path) -> Result<(), SagaLogError> {
        if self.entry(saga_id).is_none() {
            let saga = match check_saga_id(saga_id).and_then(|()| read_scoot_saga(path, saga_id)) {
                Ok(saga) => saga,
                Err(err) => {
                    tracing::error!(saga_id, path = %path.display(), error = %err, "a saga of Go Scoot's log cannot be imported");
                    let status = Status::Damaged(match err {
                        err @ (SagaLogError::Unreadable(_) | SagaLogError::Corrupt(_)) => err,
                        other => SagaLogError::Unreadable(other.to_string()),
                    });
                    lock(&self.sagas).insert(
                        saga_id.to_owned(),
                        Arc::new(Mutex::new(Entry {
                            removed: false,
                            status,
                        })),
                    );
                    return Ok(());
                }
            };
            let messages: Vec<&SagaMessage> = saga.messages.iter().collect();
            self.create(saga_id, &messages)?;
            tracing::info!(
                saga_id,
                path = %path.display(),
                messages = messages.len(),
                torn_record = saga.torn.as_deref().unwrap_or(""),
                refused = ?saga.refused,
                "imported a saga from Go Scoot's file saga log"
            );
        }
        let imported = self.dir.join(SCOOT_IMPORTED_DIR);
        fs::create_dir_all(&imported).map_err(|e| internal("create", &imported, e))?;
        // A same-named saga imported before (started again under Scoot since) is kept too.
        let target = (0..)
            .map(|n| match n {
                0 => imported.join(saga_id),
                n => imported.join(format!("{saga_id}.{n}")),
            })
            .find(|p| !p.exists())
            .unwrap_or_else(|| imported.join(saga_id));
        fs::rename(path, &target).map_err(|e| internal("move", path, e))?;
        sync_dir(&self.dir)
    }

    /// Reads one saga file at open, cutting off a torn tail and salvaging damage.
    fn recover_file(dir: &Path, saga_id: &str, path: &Path) -> Result<Status, SagaLogError> {
        let bytes = fs::read(path).map_err(|e| internal("read", path, e))?;
        let scan = scan(saga_id, &bytes);
        let state = match start_state(saga_id, &scan) {
            Ok(state) => state,
            Err(reason) => {
                let err = SagaLogError::Unreadable(format!("{}: {reason}", path.display()));
                tracing::error!(saga_id, error = %err, "saga cannot be recovered");
                return Ok(Status::Damaged(err));
            }
        };
        if !scan.damaged.is_empty() {
            return Self::repair(dir, path, state, scan, bytes.len());
        }
        let parsed = match parsed(path, scan.frames, scan.valid_len) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::error!(saga_id, error = %err, "corrupt saga file");
                return Ok(Status::Damaged(err));
            }
        };
        let len = parsed.valid_len as u64;
        if parsed.valid_len < bytes.len() {
            tracing::warn!(
                saga_id,
                path = %path.display(),
                torn_bytes = bytes.len() - parsed.valid_len,
                "dropping the torn tail of a saga file (an unacknowledged write cut by a crash)"
            );
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(len)?;
                    f.sync_all()
                })
                .map_err(|e| internal("truncate", path, e))?;
        }
        Ok(Status::Live {
            len,
            ended_at: parsed.ended_at,
        })
    }

    /// Replaces a damaged saga file by what [`salvage`] keeps of it, atomically, keeping the
    /// original beside it as `<name>.damaged`.
    fn repair(
        dir: &Path,
        path: &Path,
        state: SagaState,
        scan: Scan,
        file_len: usize,
    ) -> Result<Status, SagaLogError> {
        let saga_id = state.saga_id().to_owned();
        let (frames, dropped) = salvage(state, scan.frames);
        let mut repaired = Vec::new();
        for frame in &frames {
            let messages: Vec<&SagaMessage> = frame.messages.iter().collect();
            repaired.extend(encode_frame(frame.written_at, &messages)?);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!("{name}.repair{TMP_SUFFIX}"));
        let damaged = dir.join(format!("{name}{DAMAGED_SUFFIX}"));
        let replaced = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&repaired)?;
            file.sync_all()?;
            match fs::remove_file(&damaged) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            fs::hard_link(path, &damaged)?;
            fs::rename(&tmp, path)
        })();
        if let Err(err) = replaced {
            // The damaged file is still in place; the next open tries again.
            let _ = fs::remove_file(&tmp);
            return Err(internal("repair", path, err));
        }
        sync_dir(dir)?;
        tracing::warn!(
            saga_id,
            path = %path.display(),
            damaged = ?scan.damaged,
            lost_bytes = file_len - scan.readable_bytes,
            dropped_messages = dropped,
            kept_messages = frames.iter().map(|f| f.messages.len()).sum::<usize>(),
            original = %damaged.display(),
            "salvaged a damaged saga file: every intact message is kept"
        );
        Ok(Status::Live {
            len: repaired.len() as u64,
            ended_at: end_time(&frames),
        })
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn saga_path(&self, saga_id: &str) -> PathBuf {
        self.dir
            .join(format!("{}{SAGA_SUFFIX}", hex_encode(saga_id.as_bytes())))
    }

    fn entry(&self, saga_id: &str) -> Option<EntryRef> {
        lock(&self.sagas).get(saga_id).cloned()
    }

    fn all_entries(&self) -> Vec<(String, EntryRef)> {
        lock(&self.sagas)
            .iter()
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect()
    }

    /// Writes `messages` (starting with Start Saga) as the complete new file of the saga.
    fn create(&self, saga_id: &str, messages: &[&SagaMessage]) -> Result<(), SagaLogError> {
        check_saga_id(saga_id)?;
        let now = SystemTime::now();
        let frame = encode_frame(now, messages)?;
        loop {
            let entry = Arc::clone(lock(&self.sagas).entry(saga_id.to_owned()).or_insert_with(
                || {
                    Arc::new(Mutex::new(Entry {
                        removed: false,
                        status: Status::Absent,
                    }))
                },
            ));
            let mut guard = lock(&entry);
            if guard.removed {
                // gc dropped this entry between the lookup and the lock; take the new one.
                continue;
            }
            let path = self.saga_path(saga_id);
            let tmp = self.dir.join(format!(
                "{}.{}{TMP_SUFFIX}",
                hex_encode(saga_id.as_bytes()),
                self.tmp_counter.fetch_add(1, Ordering::Relaxed)
            ));
            let written = File::create_new(&tmp).and_then(|mut f| {
                f.write_all(&frame)?;
                f.sync_all()
            });
            if let Err(err) = written.and_then(|()| fs::rename(&tmp, &path)) {
                // The old file, if any, is untouched.
                let _ = fs::remove_file(&tmp);
                return Err(internal("create", &path, err));
            }
            if let Err(err) = sync_dir(&self.dir) {
                // The new file is in place but perhaps not durably; a retry replaces it again.
                guard.status = Status::Failed(err.to_string());
                return Err(err);
            }
            guard.status = Status::Live {
                len: frame.len() as u64,
                ended_at: has_end_saga(messages).then_some(now),
            };
            return Ok(());
        }
    }

    /// Appends `messages` as one frame to an existing saga.
    fn append(&self, saga_id: &str, messages: &[&SagaMessage]) -> Result<(), SagaLogError> {
        let unknown =
            || SagaLogError::InvalidRequest(format!("unknown saga {saga_id:?} (no Start Saga)"));
        let entry = self.entry(saga_id).ok_or_else(unknown)?;
        let mut guard = lock(&entry);
        let (len, ended_at) = match &guard.status {
            _ if guard.removed => return Err(unknown()),
            Status::Absent => return Err(unknown()),
            Status::Damaged(err) => return Err(err.clone()),
            Status::Failed(reason) => {
                return Err(SagaLogError::Internal(format!(
                    "saga {saga_id:?} is unwritable after an earlier failure: {reason}"
                )));
            }
            Status::Live { len, ended_at } => (*len, *ended_at),
        };
        let now = SystemTime::now();
        let frame = encode_frame(now, messages)?;
        let path = self.saga_path(saga_id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| internal("open", &path, e))?;
        let written = (|| {
            if file.metadata()?.len() != len {
                // Leftovers of an earlier failed append: cut them so the frame follows valid data.
                file.set_len(len)?;
            }
            file.write_all_at(&frame, len)?;
            file.sync_all()
        })();
        if let Err(err) = written {
            // Cut whatever part of the frame may have landed, so that the failure means "not
            // logged"; if even that fails, the file's content is unknown.
            if let Err(undo) = file.set_len(len).and_then(|()| file.sync_all()) {
                guard.status = Status::Failed(format!(
                    "append to {} failed ({err}) and could not be undone ({undo})",
                    path.display()
                ));
            }
            return Err(internal("append to", &path, err));
        }
        guard.status = Status::Live {
            len: len + frame.len() as u64,
            ended_at: ended_at.or(has_end_saga(messages).then_some(now)),
        };
        Ok(())
    }
}

impl SagaLog for FileSagaLog {
    fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
        self.create(saga_id, &[&SagaMessage::start_saga(saga_id, job)])
    }

    /// Writes one frame per saga in the batch. Each saga's part is atomic and durable on its own;
    /// if a later saga's write fails, earlier sagas' parts stay written.
    fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
        // Group per saga in order of first appearance; a Start Saga supersedes what precedes it.
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, (bool, Vec<&SagaMessage>)> = HashMap::new();
        for msg in messages {
            check_saga_id(&msg.saga_id)?;
            let group = groups.entry(&msg.saga_id).or_insert_with(|| {
                order.push(&msg.saga_id);
                (false, Vec::new())
            });
            if msg.kind == MessageKind::StartSaga {
                *group = (true, Vec::new());
            }
            group.1.push(msg);
        }
        // Refuse unknown sagas before writing anything.
        for (saga_id, (fresh, _)) in &groups {
            let known = self.entry(saga_id).is_some_and(|e| {
                let e = lock(&e);
                !e.removed && !matches!(e.status, Status::Absent)
            });
            if !fresh && !known {
                return Err(SagaLogError::InvalidRequest(format!(
                    "unknown saga {saga_id:?} (no Start Saga)"
                )));
            }
        }
        for saga_id in order {
            if let Some((fresh, msgs)) = groups.get(saga_id) {
                if *fresh {
                    self.create(saga_id, msgs)?;
                } else {
                    self.append(saga_id, msgs)?;
                }
            }
        }
        Ok(())
    }

    fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
        let Some(entry) = self.entry(saga_id) else {
            return Ok(None);
        };
        let guard = lock(&entry);
        match &guard.status {
            _ if guard.removed => return Ok(None),
            Status::Absent => return Ok(None),
            Status::Damaged(err) => return Err(err.clone()),
            Status::Live { .. } | Status::Failed(_) => {}
        }
        let path = self.saga_path(saga_id);
        let bytes = fs::read(&path).map_err(|e| internal("read", &path, e))?;
        Ok(Some(read_log(saga_id, &path, &bytes)?.messages))
    }

    /// Sagas without End Saga, plus damaged or failed ones (whether they ended is unknown).
    fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
        let mut ids: Vec<String> = self
            .all_entries()
            .into_iter()
            .filter(|(_, entry)| {
                let e = lock(entry);
                !e.removed
                    && match e.status {
                        Status::Absent => false,
                        Status::Live { ended_at, .. } => ended_at.is_none(),
                        Status::Damaged(_) | Status::Failed(_) => true,
                    }
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
        let mut deleted = 0;
        let mut first_error = None;
        for (saga_id, entry) in self.all_entries() {
            let mut guard = lock(&entry);
            if guard.removed {
                continue;
            }
            match guard.status {
                Status::Live {
                    ended_at: Some(t), ..
                } if expired(t, now, self.retention) => {
                    let path = self.saga_path(&saga_id);
                    match fs::remove_file(&path) {
                        Ok(()) => deleted += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            first_error.get_or_insert(internal("remove", &path, e));
                            continue;
                        }
                    }
                }
                // Leftover placeholder of a failed creation.
                Status::Absent => {}
                _ => continue,
            }
            guard.removed = true;
            guard.status = Status::Absent;
            let mut sagas = lock(&self.sagas);
            if sagas.get(&saga_id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                sagas.remove(&saga_id);
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::*;

    fn open(dir: &Path) -> FileSagaLog {
        FileSagaLog::open(dir.to_path_buf(), None).unwrap()
    }

    fn saga_file(dir: &Path, saga_id: &str) -> PathBuf {
        dir.join(format!("{}.saga", hex_encode(saga_id.as_bytes())))
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn sample(saga_id: &str) -> Vec<SagaMessage> {
        vec![
            SagaMessage::start_saga(saga_id, b"job".to_vec()),
            SagaMessage::start_task(saga_id, "t1", Vec::new()),
            SagaMessage::start_task(saga_id, "t1", b"running".to_vec()),
            SagaMessage::end_task(saga_id, "t1", b"done".to_vec()),
        ]
    }

    /// A log in a fresh directory holding `sample("s")`, one frame per message after the first.
    fn with_sample() -> (tempfile::TempDir, Vec<SagaMessage>) {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let msgs = sample("s");
        log.start_saga("s", &msgs[0].data).unwrap();
        for m in &msgs[1..] {
            log.log_messages(std::slice::from_ref(m)).unwrap();
        }
        (dir, msgs)
    }

    #[test]
    fn hex_round_trip() {
        for id in ODD_IDS {
            assert_eq!(
                hex_decode(&hex_encode(id.as_bytes())).unwrap(),
                id.as_bytes()
            );
        }
        assert_eq!(hex_encode(b"/\n"), "2f0a");
        assert_eq!(hex_decode("2F"), None);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn shared_log_behaviour() {
        let mut dirs = Vec::new();
        check_every(&mut |retention| {
            let dir = tempfile::tempdir().unwrap();
            let log = FileSagaLog::open(dir.path().into(), retention).unwrap();
            dirs.push(dir);
            Box::new(log)
        });
    }

    #[test]
    fn ids_are_hex_file_names_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        log.start_saga("../x", b"").unwrap();
        assert!(saga_file(dir.path(), "../x").is_file());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["2e2e2f78.saga", "LOCK"]);
        let long = "x".repeat(MAX_SAGA_ID_LEN + 1);
        assert!(matches!(
            log.start_saga(&long, b""),
            Err(SagaLogError::InvalidRequest(_))
        ));
        log.start_saga(&long[1..], b"").unwrap();
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            check_odd_saga_ids(&log);
            log.start_saga("s", b"job").unwrap();
            log.log_messages(&sample("s")[1..]).unwrap();
            log.start_saga("ended", b"").unwrap();
            log.log_messages(&[SagaMessage::end_saga("ended")]).unwrap();
        }
        let log = open(dir.path());
        assert_eq!(log.get_messages("s").unwrap().unwrap(), sample("s"));
        for id in ODD_IDS {
            assert_eq!(log.get_messages(id).unwrap().unwrap().len(), 2);
        }
        let active = log.active_sagas().unwrap();
        assert!(active.contains(&"s".to_string()));
        assert!(!active.contains(&"ended".to_string()));
        assert_eq!(active.len(), ODD_IDS.len() + 1);
        // Appends after reopening land after the recovered data.
        log.log_messages(&[SagaMessage::end_saga("s")]).unwrap();
        drop(log);
        let log = open(dir.path());
        let msgs = log.get_messages("s").unwrap().unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[4].kind, MessageKind::EndSaga);
        assert!(!log.active_sagas().unwrap().contains(&"s".to_string()));
    }

    #[test]
    fn end_time_survives_reopen_for_gc() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        {
            let log = open(dir.path());
            log.start_saga("ended", b"").unwrap();
            log.start_saga("running", b"").unwrap();
            log.log_messages(&[SagaMessage::end_saga("ended")]).unwrap();
        }
        let log = FileSagaLog::open(dir.path().into(), Some(hour)).unwrap();
        assert_eq!(log.gc(SystemTime::now()).unwrap(), 0);
        assert_eq!(log.gc(SystemTime::now() + 2 * hour).unwrap(), 1);
        assert!(!saga_file(dir.path(), "ended").exists());
        assert!(saga_file(dir.path(), "running").exists());
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.get_messages("ended").unwrap(), None);
        assert_eq!(log.active_sagas().unwrap(), ["running"]);
    }

    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _log = open(dir.path());
        assert!(matches!(
            FileSagaLog::open(dir.path().into(), None),
            Err(SagaLogError::Internal(_))
        ));
    }

    #[test]
    fn torn_tails_are_dropped_and_later_appends_readable() {
        let last_frame = encode_frame(SystemTime::now(), &[&SagaMessage::end_saga("s")]).unwrap();
        let mut flipped = last_frame.clone();
        let end = flipped.len() - 1;
        flipped[end] ^= 0xff;
        let tails: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"\x01\x02garbage".to_vec()),
            ("zeros", vec![0; 4096]),
            ("partial header", last_frame[..7].to_vec()),
            (
                "partial payload",
                last_frame[..last_frame.len() - 1].to_vec(),
            ),
            ("bad checksum", flipped),
            ("magic only", MAGIC.to_vec()),
        ];
        for (name, tail) in tails {
            let (dir, msgs) = with_sample();
            let path = saga_file(dir.path(), "s");
            let good_len = fs::metadata(&path).unwrap().len();
            append_bytes(&path, &tail);

            let log = open(dir.path());
            assert_eq!(log.get_messages("s").unwrap().unwrap(), msgs, "{name}");
            assert_eq!(fs::metadata(&path).unwrap().len(), good_len, "{name}");
            assert_eq!(log.active_sagas().unwrap(), ["s"], "{name}");
            log.log_messages(&[SagaMessage::end_saga("s")]).unwrap();
            drop(log);

            let log = open(dir.path());
            let got = log.get_messages("s").unwrap().unwrap();
            assert_eq!(got.len(), msgs.len() + 1, "{name}");
            assert_eq!(got[msgs.len()].kind, MessageKind::EndSaga, "{name}");
            assert!(log.active_sagas().unwrap().is_empty(), "{name}");
        }
    }

    /// Where each frame of a saga file begins, following the length fields.
    fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            offsets.push(at);
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            at += HEADER_LEN + len as usize;
        }
        offsets
    }

    /// Applies `damage` to the saga file of `saga_id` and returns the bytes before and after.
    fn damage(dir: &Path, saga_id: &str, damage: impl FnOnce(&mut Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
        let path = saga_file(dir, saga_id);
        let before = fs::read(&path).unwrap();
        let mut after = before.clone();
        damage(&mut after);
        fs::write(&path, &after).unwrap();
        (before, after)
    }

    fn damaged_copy(dir: &Path, saga_id: &str) -> PathBuf {
        dir.join(format!("{}.saga.damaged", hex_encode(saga_id.as_bytes())))
    }

    #[test]
    fn damaged_middle_frame_is_salvaged() {
        for (name, spoil) in [
            ("flipped payload byte", (HEADER_LEN + 3, 0x40)),
            ("flipped magic", (1, 0x01)),
            ("impossible length", (7, 0x7f)),
            ("short length", (4, 0x01)),
        ] {
            let (dir, msgs) = with_sample();
            // The second frame holds the first Start Task; its loss leaves the later ones.
            let (_, damaged) = damage(dir.path(), "s", |b| {
                let at = frame_offsets(b)[1] + spoil.0;
                b[at] ^= spoil.1;
            });
            let log = open(dir.path());
            let mut expected = msgs.clone();
            expected.remove(1);
            assert_eq!(log.get_messages("s").unwrap().unwrap(), expected, "{name}");
            assert_eq!(log.active_sagas().unwrap(), ["s"], "{name}");
            // The original is kept aside, byte for byte.
            assert_eq!(fs::read(damaged_copy(dir.path(), "s")).unwrap(), damaged);
            // The saga goes on, and the repaired file reads back cleanly.
            log.log_messages(&[SagaMessage::end_saga("s")]).unwrap();
            drop(log);
            let log = open(dir.path());
            expected.push(SagaMessage::end_saga("s"));
            assert_eq!(log.get_messages("s").unwrap().unwrap(), expected, "{name}");
            assert!(log.active_sagas().unwrap().is_empty(), "{name}");
        }
    }

    /// A frame whose checksum holds but whose payload has an unknown message kind.
    fn undecodable_frame() -> Vec<u8> {
        let mut payload = 0u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&[99, 0, 0, 0, 0, 0, 0, 0, 0]);
        let len_bytes = (payload.len() as u32).to_le_bytes();
        let mut frame = MAGIC.to_vec();
        frame.extend_from_slice(&len_bytes);
        frame.extend_from_slice(&frame_crc(len_bytes, &payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    #[test]
    fn undecodable_middle_frame_is_salvaged() {
        let (dir, msgs) = with_sample();
        // A checksummed frame with an unknown message kind between the first two.
        let frame = undecodable_frame();
        damage(dir.path(), "s", |b| {
            let at = frame_offsets(b)[1];
            b.splice(at..at, frame);
        });
        let log = open(dir.path());
        assert_eq!(log.get_messages("s").unwrap().unwrap(), msgs);
    }

    #[test]
    fn a_lost_start_task_is_implied_and_end_saga_is_left_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        log.start_saga("s", b"job").unwrap();
        for batch in [
            vec![
                SagaMessage::start_task("s", "a", Vec::new()),
                SagaMessage::start_task("s", "b", Vec::new()),
            ],
            vec![SagaMessage::end_task("s", "a", b"a done".to_vec())],
            vec![SagaMessage::end_task("s", "b", b"b done".to_vec())],
            vec![SagaMessage::end_saga("s")],
        ] {
            log.log_messages(&batch).unwrap();
        }
        drop(log);
        // Lose both Start Tasks and b's End Task.
        damage(dir.path(), "s", |b| {
            let offsets = frame_offsets(b);
            b[offsets[1] + HEADER_LEN] ^= 1;
            b[offsets[3] + HEADER_LEN] ^= 1;
        });
        let log = open(dir.path());
        // a is known to have finished; b is not (the saga state does not even know it exists), so
        // the saga is open again for its owner to run b and end it.
        assert_eq!(
            log.get_messages("s").unwrap().unwrap(),
            [
                SagaMessage::start_saga("s", b"job".to_vec()),
                SagaMessage::start_task("s", "a", Vec::new()),
                SagaMessage::end_task("s", "a", b"a done".to_vec()),
            ]
        );
        assert_eq!(log.active_sagas().unwrap(), ["s"]);
    }

    #[test]
    fn a_damaged_start_saga_is_unreadable() {
        type Spoil = fn(&mut Vec<u8>);
        let cases: [(&str, Spoil); 3] = [
            ("cut inside the only frame", |b| b.truncate(HEADER_LEN + 5)),
            ("flipped byte in the first frame", |b| {
                b[HEADER_LEN + 2] ^= 1
            }),
            ("first frame gone", |b| {
                let second = frame_offsets(b)[1];
                b.drain(..second);
            }),
        ];
        for (name, spoil) in cases {
            let (dir, _) = with_sample();
            if name.contains("only") {
                // A saga of nothing but its Start Saga.
                let log = open(dir.path());
                log.start_saga("s", b"job").unwrap();
            }
            let (_, damaged) = damage(dir.path(), "s", spoil);
            let log = open(dir.path());
            let err = log.get_messages("s").unwrap_err();
            assert!(
                matches!(err, SagaLogError::Unreadable(_)),
                "{name}: {err:?}"
            );
            assert!(!err.is_retryable());
            assert!(
                matches!(
                    log.log_messages(&[SagaMessage::end_saga("s")]),
                    Err(SagaLogError::Unreadable(_))
                ),
                "{name}"
            );
            // Still listed so that recovery surfaces it rather than forgetting the job.
            assert_eq!(log.active_sagas().unwrap(), ["s"], "{name}");
            log.start_saga("other", b"").unwrap();
            assert!(log.get_messages("other").unwrap().is_some());
            drop(log);
            // Nothing could be salvaged, so the file is left as it was for an operator.
            assert_eq!(fs::read(saga_file(dir.path(), "s")).unwrap(), damaged);
            assert!(!damaged_copy(dir.path(), "s").exists());
        }
    }

    #[test]
    fn undecodable_or_wrong_first_frames_are_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let frame = undecodable_frame();
        fs::write(saga_file(dir.path(), "badkind"), &frame).unwrap();
        // A file that begins with Start Task.
        let task = SagaMessage::start_task("notstart", "t", Vec::new());
        fs::write(
            saga_file(dir.path(), "notstart"),
            encode_frame(SystemTime::now(), &[&task]).unwrap(),
        )
        .unwrap();
        // An empty file.
        fs::write(saga_file(dir.path(), "empty"), b"").unwrap();

        let log = open(dir.path());
        for id in ["badkind", "notstart", "empty"] {
            assert!(
                matches!(log.get_messages(id), Err(SagaLogError::Unreadable(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn damage_after_open_is_reported_not_salvaged() {
        let (dir, _) = with_sample();
        let log = open(dir.path());
        let (_, damaged) = damage(dir.path(), "s", |b| {
            let at = frame_offsets(b)[1] + HEADER_LEN;
            b[at] ^= 1;
        });
        assert!(matches!(
            log.get_messages("s"),
            Err(SagaLogError::Corrupt(_))
        ));
        assert_eq!(fs::read(saga_file(dir.path(), "s")).unwrap(), damaged);
    }

    #[test]
    fn leftover_temp_files_are_removed_and_stray_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(format!("{}.0.tmp", hex_encode(b"s")));
        fs::write(&tmp, b"half a saga").unwrap();
        fs::write(dir.path().join("README"), b"not a saga").unwrap();
        let log = open(dir.path());
        assert!(!tmp.exists());
        assert!(log.active_sagas().unwrap().is_empty());
        assert_eq!(log.get_messages("s").unwrap(), None);
    }

    #[test]
    fn sagas_of_go_scoots_file_log_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let scoot = |id: &str, log: &str, files: &[(&str, &[u8])]| {
            let saga = dir.path().join(id);
            fs::create_dir(&saga).unwrap();
            for (name, data) in files {
                fs::write(saga.join(name), data).unwrap();
            }
            fs::write(saga.join("log"), log).unwrap();
        };
        scoot(
            "job-1",
            "Start Saga\nsagas/job-1/StartSagaData_Dec  5 12:00:00.000000001\n\
             Start Task\nt1\nsagas/job-1/Start Task_t1_data_Dec  5 12:00:00.001\n\
             End Task\nt1\nsagas/job-1/End Task_t1_data_Dec  5 12:00:00.002\nStart Ta",
            &[
                ("StartSagaData_Dec  5 12:00:00.000000001", b"job"),
                ("Start Task_t1_data_Dec  5 12:00:00.001", b""),
                ("End Task_t1_data_Dec  5 12:00:00.002", b"{}"),
            ],
        );
        scoot("job-2", "Start Saga\nsagas/job-2/missing\n", &[]);
        let log = open(dir.path());
        assert_eq!(
            log.get_messages("job-1").unwrap().unwrap(),
            [
                SagaMessage::start_saga("job-1", b"job".to_vec()),
                SagaMessage::start_task("job-1", "t1", Vec::new()),
                SagaMessage::end_task("job-1", "t1", b"{}".to_vec()),
            ]
        );
        assert!(matches!(
            log.get_messages("job-2"),
            Err(SagaLogError::Unreadable(_))
        ));
        assert_eq!(log.active_sagas().unwrap(), ["job-1", "job-2"]);
        assert!(!dir.path().join("job-1").exists());
        assert!(
            dir.path()
                .join(SCOOT_IMPORTED_DIR)
                .join("job-1")
                .join("log")
                .exists()
        );
        assert!(
            dir.path().join("job-2").exists(),
            "an unreadable saga stays in place"
        );

        // The imported saga lives on as this log's own; writes append to it.
        log.log_messages(&[SagaMessage::end_saga("job-1")]).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.get_messages("job-1").unwrap().unwrap().len(), 4);
        assert_eq!(log.active_sagas().unwrap(), ["job-2"]);
    }

    #[test]
    fn batch_with_one_frame_per_saga() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        log.start_saga("a", b"").unwrap();
        log.start_saga("b", b"").unwrap();
        let before = fs::metadata(saga_file(dir.path(), "a")).unwrap().len();
        log.log_messages(&[
            SagaMessage::start_task("a", "1", Vec::new()),
            SagaMessage::start_task("b", "1", Vec::new()),
            SagaMessage::start_task("a", "2", Vec::new()),
        ])
        .unwrap();
        let bytes = fs::read(saga_file(dir.path(), "a")).unwrap();
        let FrameRead::Valid(frame, end) = read_frame("a", &bytes, before as usize) else {
            panic!("no frame after the first");
        };
        assert_eq!(frame.messages.len(), 2);
        assert_eq!(end, bytes.len());
    }

    #[test]
    fn concurrent_writers_on_many_sagas() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(dir.path()));
        for i in 0..4 {
            log.start_saga(&format!("saga{i}"), b"").unwrap();
        }
        // Two threads per saga.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let id = format!("saga{}", i % 4);
                    for t in 0..20 {
                        let msg = SagaMessage::start_task(&id, format!("{i}-{t}"), Vec::new());
                        log.log_messages(&[msg]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        drop(log);
        let log = open(dir.path());
        for i in 0..4 {
            let msgs = log.get_messages(&format!("saga{i}")).unwrap().unwrap();
            assert_eq!(msgs.len(), 41, "saga{i}");
        }
    }
}
