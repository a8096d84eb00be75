//! Checking a blob file's bytes against its digest (or the CRC-32 they had when last checked,
//! see [`ReadCheck`]), and remembering that a file was checked so that an unchanged file need not
//! be read again.
//!
//! The memory is a [`FileStamp`]: device, inode, length and change time (ctime) of the file when
//! its bytes last hashed right. Any change made through the filesystem (a write, a truncation, a
//! rename over it, a `chmod`) moves the file's ctime, and ctime cannot be set by user space, so a
//! file whose stamp is the one remembered still holds the bytes that were checked. Two limits:
//! the kernel keeps ctime at a coarse granularity (a clock tick), so a stamp is only remembered
//! once its ctime is [`CTIME_SETTLE`] old (a change in the same tick as the check could otherwise
//! leave ctime as it was); and damage that bypasses the filesystem (a failing disk returning
//! other bytes without an error) does not move ctime, which is why reads of whole blobs are
//! always checked and only partial reads and completeness checks trust the stamp.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::verify::ReadCheck;

/// How old a file's ctime must be for its stamp to be remembered (far above any clock tick).
pub(crate) const CTIME_SETTLE: Duration = Duration::from_secs(1);

/// Bytes read per trip when hashing a whole file.
const HASH_BUFFER: usize = 1024 * 1024;

/// What identifies a file's contents as unchanged (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    pub(crate) fn of(meta: &Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }

    /// Whether any later change to the file is certain to give it another stamp: its ctime is at
    /// least [`CTIME_SETTLE`] before `now`.
    pub(crate) fn settled(&self, now: SystemTime) -> bool {
        let Ok(ctime) = u64::try_from(self.ctime) else {
            return false;
        };
        let nanos = u32::try_from(self.ctime_nsec).unwrap_or(0);
        let changed = SystemTime::UNIX_EPOCH + Duration::new(ctime, nanos);
        now.duration_since(changed)
            .is_ok_and(|age| age >= CTIME_SETTLE)
    }
}

/// What a check that found a blob file's bytes good leaves to remember.
pub(crate) struct Verified {
    /// The CRC-32 of the bytes.
    pub(crate) crc: u32,
    /// The file's stamp, if it had settled when taken.
    pub(crate) stamp: Option<FileStamp>,
}

/// Why a blob file could not be served.
pub(crate) enum FileFault {
    Io(io::Error),
    /// The bytes are not the blob; says what they are instead.
    Corrupt(String),
}

impl From<io::Error> for FileFault {
    fn from(e: io::Error) -> FileFault {
        FileFault::Io(e)
    }
}

/// Checks that a file whose metadata is `meta` has the length `check` expects.
pub(crate) fn check_len(meta: &Metadata, check: &ReadCheck) -> Result<(), FileFault> {
    if meta.len() != check.expected_size() {
        return Err(FileFault::Corrupt(format!(
            "the file holds {} bytes",
            meta.len()
        )));
    }
    Ok(())
}

/// Reads a whole (small) blob file into memory and checks it; with the CRC-32 of the bytes.
/// Blocking.
pub(crate) fn read_checked(file: &File, mut check: ReadCheck) -> Result<(Bytes, u32), FileFault> {
    let len = usize::try_from(check.expected_size())
        .map_err(|_| FileFault::Corrupt("too large to read whole".to_string()))?;
    let mut buf = vec![0; len];
    read_at(file, &mut buf, 0)?;
    check.update(&buf);
    let crc = check.check().map_err(mismatch)?;
    Ok((Bytes::from(buf), crc))
}

/// Checks a whole blob file without holding it in memory; the CRC-32 of its bytes. Blocking.
pub(crate) fn hash_checked(file: &File, mut check: ReadCheck) -> Result<u32, FileFault> {
    let size = check.expected_size();
    let mut buf = vec![0; HASH_BUFFER.min(usize::try_from(size).unwrap_or(HASH_BUFFER))];
    let mut pos = 0;
    while pos < size {
        // At most HASH_BUFFER, so it fits in usize.
        let len = (size - pos).min(buf.len() as u64) as usize;
        read_at(file, &mut buf[..len], pos)?;
        check.update(&buf[..len]);
        pos += len as u64;
    }
    check.check().map_err(mismatch)
}

/// The fault for bytes that are `actual` instead of the blob.
pub(crate) fn mismatch(actual: String) -> FileFault {
    FileFault::Corrupt(format!("the bytes are {actual}"))
}

/// `read_exact_at`, with a file shorter than its blob reported as corrupt.
fn read_at(file: &File, buf: &mut [u8], at: u64) -> Result<(), FileFault> {
    file.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FileFault::Corrupt("the file is shorter than the blob".to_string())
        } else {
            FileFault::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::sha256_digest;

    #[test]
    fn stamps_change_with_the_file_and_settle_with_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let before = FileStamp::of(&std::fs::metadata(&path).unwrap());
        assert_eq!(before, FileStamp::of(&std::fs::metadata(&path).unwrap()));
        // Rewritten with other bytes of the same length, through another inode: a new stamp.
        let other = dir.path().join("g");
        std::fs::write(&other, b"jello").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(before, FileStamp::of(&std::fs::metadata(&path).unwrap()));

        let now = SystemTime::now();
        assert!(!before.settled(now));
        assert!(before.settled(now + CTIME_SETTLE + Duration::from_millis(10)));
    }

    #[test]
    fn whole_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = vec![7u8; 3 * HASH_BUFFER + 5];
        let digest = sha256_digest(&data);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = File::open(&path).unwrap();
        let crc = crc32fast::hash(&data);
        // Each check twice: by the digest, and by the CRC-32 it gives.
        let checks = || [None, Some(crc)].map(|c| ReadCheck::new(&digest, c).unwrap());
        for check in checks() {
            assert_eq!(hash_checked(&file, check).ok(), Some(crc));
        }
        for check in checks() {
            let (bytes, got) = read_checked(&file, check).ok().unwrap();
            assert_eq!((&bytes[..], got), (&data[..], crc));
        }

        // One byte flipped in place.
        let flipped = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        flipped.write_all_at(&[8], HASH_BUFFER as u64 + 1).unwrap();
        for check in checks() {
            assert!(matches!(
                hash_checked(&file, check),
                Err(FileFault::Corrupt(_))
            ));
        }
        for check in checks() {
            assert!(matches!(
                read_checked(&file, check),
                Err(FileFault::Corrupt(_))
            ));
        }
        // Cut short.
        flipped.set_len(10).unwrap();
        for check in checks() {
            assert!(matches!(
                check_len(&file.metadata().unwrap(), &check),
                Err(FileFault::Corrupt(_))
            ));
            assert!(matches!(
                hash_checked(&file, check),
                Err(FileFault::Corrupt(_))
            ));
        }
    }
}
