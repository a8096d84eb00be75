//! [`DirLock`]: one owner per directory, for stores that keep state in memory about their files
//! (an index, open saga files) and would corrupt each other sharing a directory.
//!
//! The lock is an exclusive `flock` on `<dir>/LOCK`, so it goes with the process: a crashed
//! owner leaves no stale lock behind, and the file itself is never removed (removing it would
//! let a second owner lock a new inode while the first still holds the old one). Two opens in
//! one process exclude each other too: `flock` belongs to the open file, not the process.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The name of the lock file in a locked directory; owners skip it when they list their files.
pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another owner (in this process or another) holds the directory.
    #[error("{} is in use by another store", dir.display())]
    InUse { dir: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LockError {
    pub fn is_in_use(&self) -> bool {
        matches!(self, LockError::InUse { .. })
    }
}

/// Holds a directory's lock for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: Flock<File>,
}

impl DirLock {
    /// Takes `dir`'s lock without waiting: [`LockError::InUse`] if someone holds it. `dir` must
    /// exist; its `LOCK` file is created if needed.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(DirLock { _file: file }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::InUse {
                dir: dir.to_path_buf(),
            }),
            Err((_, errno)) => Err(LockError::Io {
                path,
                source: io::Error::from(errno),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let refused = DirLock::acquire(dir.path()).unwrap_err();
        assert!(refused.is_in_use(), "{refused}");
        assert!(refused.to_string().contains("in use"), "{refused}");
        drop(first);
        let _again = DirLock::acquire(dir.path()).unwrap();
        assert!(dir.path().join(LOCK_FILE).is_file());
    }

    #[test]
    fn a_missing_directory_is_an_io_error_not_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirLock::acquire(&dir.path().join("absent")).unwrap_err();
        assert!(
            matches!(&err, LockError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(!err.is_in_use());
    }
}
