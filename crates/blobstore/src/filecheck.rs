//! Checking a blob file's bytes against its digest, and remembering that a file was checked so
//! that an unchanged file need not be hashed again.
//!
//! The memory is a [`FileStamp`]: device, inode, length and change time (ctime) of the file when
//! its bytes last hashed right. Any change made through the filesystem (a write, a truncation, a
//! rename over it, a `chmod`) moves the file's ctime, and ctime cannot be set by user space, so a
//! file whose stamp is the one remembered still holds the bytes that were checked. Two limits:
//! the kernel keeps ctime at a coarse granularity (a clock tick), so a stamp is only remembered
//! once its ctime is [`CTIME_SETTLE`] old (a change in the same tick as the check could otherwise
//! leave ctime as it was); and damage that bypasses the filesystem (a failing disk returning
//! other bytes without an error) does not move ctime, which is why reads of whole blobs are
//! always hashed and only partial reads and completeness checks trust the stamp.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::verify::Verifier;

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

/// Checks that `file`, whose metadata is `meta`, has the length `verifier` expects.
pub(crate) fn check_len(meta: &Metadata, verifier: &Verifier) -> Result<(), FileFault> {
    if meta.len() != verifier.expected_size() {
        return Err(FileFault::Corrupt(format!(
            "the file holds {} bytes",
            meta.len()
        )));
    }
    Ok(())
}

/// Reads a whole (small) blob file into memory and checks it. Blocking.
pub(crate) fn read_checked(file: &File, mut verifier: Verifier) -> Result<Bytes, FileFault> {
    let len = usize::try_from(verifier.expected_size())
        .map_err(|_| FileFault::Corrupt("too large to read whole".to_string()))?;
    let mut buf = vec![0; len];
    read_at(file, &mut buf, 0)?;
    verifier.update(&buf);
    verifier.check().map_err(hashes_to)?;
    Ok(Bytes::from(buf))
}

/// Hashes a whole blob file and checks it, without holding it in memory. Blocking.
pub(crate) fn hash_checked(file: &File, mut verifier: Verifier) -> Result<(), FileFault> {
    let size = verifier.expected_size();
    let mut buf = vec![0; HASH_BUFFER.min(usize::try_from(size).unwrap_or(HASH_BUFFER))];
    let mut pos = 0;
    while pos < size {
        // At most HASH_BUFFER, so it fits in usize.
        let len = (size - pos).min(buf.len() as u64) as usize;
        read_at(file, &mut buf[..len], pos)?;
        verifier.update(&buf[..len]);
        pos += len as u64;
    }
    verifier.check().map_err(hashes_to)
}

/// The fault for bytes that hash to `actual`.
pub(crate) fn hashes_to(actual: String) -> FileFault {
    FileFault::Corrupt(format!("they hash to {actual}"))
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
        let verifier = || Verifier::new(&digest).unwrap();
        assert!(hash_checked(&file, verifier()).is_ok());
        assert_eq!(
            &read_checked(&file, verifier()).ok().unwrap()[..],
            &data[..]
        );

        // One byte flipped in place.
        let flipped = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        flipped.write_all_at(&[8], HASH_BUFFER as u64 + 1).unwrap();
        assert!(matches!(
            hash_checked(&file, verifier()),
            Err(FileFault::Corrupt(_))
        ));
        assert!(matches!(
            read_checked(&file, verifier()),
            Err(FileFault::Corrupt(_))
        ));
        // Cut short.
        flipped.set_len(10).unwrap();
        assert!(matches!(
            hash_checked(&file, verifier()),
            Err(FileFault::Corrupt(_))
        ));
        assert!(matches!(
            check_len(&file.metadata().unwrap(), &verifier()),
            Err(FileFault::Corrupt(_))
        ));
    }
}
