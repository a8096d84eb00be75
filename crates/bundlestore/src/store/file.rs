//! A store that keeps each blob as one file in a directory.
//!
//! Writes are atomic: the data goes to a uniquely named temporary file in the same directory,
//! is fsynced, and is then renamed to its final name (and the directory fsynced). A reader
//! therefore sees either no blob or the whole blob, never a partial one, even after a crash, and
//! several processes (apiservers) can share one directory safely. Temporary files start with
//! [`TEMP_PREFIX`]; names with that prefix are refused so a temporary file is never mistaken for
//! a blob. Temporary files left behind by a crash are removed when a store is opened, once they
//! are older than a day (younger ones may belong to another process still writing).
//!
//! Like Scoot's file store this one has no expiry: the [`Expiry`] given to `write` is ignored
//! and blobs stay until someone deletes them.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Expiry, Store, StoreError, check_name};

/// Prefix of the temporary files a write goes through.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Temporary files older than this are considered abandoned by a crashed writer.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Blobs as files in one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: Arc<PathBuf>,
}

impl FileStore {
    /// Opens (creating it and its parents if needed) the directory `dir` as a store.
    pub fn new(dir: PathBuf) -> Result<FileStore, StoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let store = FileStore { dir: Arc::new(dir) };
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// The directory holding the blobs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        if name.starts_with(TEMP_PREFIX) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        Ok(self.dir.join(name))
    }

    /// Best effort: a failure here only leaves some garbage behind.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.as_path()) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let is_temp = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            if !is_temp {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(path = %entry.path().display(), "removed abandoned temporary file")
                    }
                    Err(e) => {
                        tracing::debug!(path = %entry.path().display(), error = %e, "cannot remove abandoned temporary file")
                    }
                }
            }
        }
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io(format!("file store task failed: {e}")))?
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let io_err =
        |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", path.display()));
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| io_err("cannot create a temporary file for", e))?;
    temp.write_all(data)
        .map_err(|e| io_err("cannot write", e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| io_err("cannot sync", e))?;
    // Dropping a temporary file that was not persisted removes it, so every error path above
    // cleans up after itself.
    temp.persist(path)
        .map_err(|e| io_err("cannot rename into place", e.error))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync the directory of", e))
}

#[async_trait]
impl Store for FileStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.path_of(name)?;
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io(format!(
                "cannot stat {}: {e}",
                path.display()
            ))),
        })
        .await
    }

    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(name)?;
        blocking(move || match std::fs::read(&path) {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        })
        .await
    }

    /// `expiry` is ignored: files are kept until deleted by someone else.
    async fn write(&self, name: &str, data: Bytes, _expiry: Expiry) -> Result<(), StoreError> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        blocking(move || {
            if path.exists() {
                return Ok(());
            }
            // Two writers of the same name may both get here; the later rename replaces the
            // earlier file with a complete one of its own, which readers cannot tell apart.
            write_atomically(&dir, &path, &data)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn write_read_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().join("a/b")).unwrap();
        assert!(!store.exists("bs-1.bundle").await.unwrap());
        assert_eq!(store.read("bs-1.bundle").await.unwrap(), None);
        store
            .write("bs-1.bundle", Bytes::from_static(b"hello"), None)
            .await
            .unwrap();
        assert!(store.exists("bs-1.bundle").await.unwrap());
        assert_eq!(
            store.read("bs-1.bundle").await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(names_in(store.dir()), vec!["bs-1.bundle"]);
        let mode = std::fs::metadata(store.dir().join("bs-1.bundle"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o400, 0o400);
    }

    #[tokio::test]
    async fn writing_an_existing_name_is_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_path_buf()).unwrap();
        store
            .write("x", Bytes::from_static(b"first"), None)
            .await
            .unwrap();
        store
            .write("x", Bytes::from_static(b"second"), Some(SystemTime::now()))
            .await
            .unwrap();
        assert_eq!(
            store.read("x").await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        assert_eq!(names_in(tmp.path()), vec!["x"]);
    }

    #[tokio::test]
    async fn invalid_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_path_buf()).unwrap();
        for name in ["", ".", "..", "a/b", "/etc/passwd", ".tmp-abc"] {
            assert!(matches!(
                store.write(name, Bytes::new(), None).await,
                Err(StoreError::InvalidName(_))
            ));
            assert!(matches!(
                store.read(name).await,
                Err(StoreError::InvalidName(_))
            ));
            assert!(matches!(
                store.exists(name).await,
                Err(StoreError::InvalidName(_))
            ));
        }
        assert!(names_in(tmp.path()).is_empty());
    }

    #[tokio::test]
    async fn a_directory_is_not_a_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_path_buf()).unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(!store.exists("d").await.unwrap());
        assert!(store.read("d").await.is_err());
    }

    #[tokio::test]
    async fn concurrent_writers_share_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = Bytes::from(vec![7u8; 1 << 20]);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            // Separate store values, as separate processes would have.
            let store = FileStore::new(tmp.path().to_path_buf()).unwrap();
            let data = data.clone();
            tasks.push(tokio::spawn(async move {
                store.write("big", data.clone(), None).await.unwrap();
                assert_eq!(store.read("big").await.unwrap().unwrap(), data);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(names_in(tmp.path()), vec!["big"]);
    }

    #[tokio::test]
    async fn abandoned_temporary_files_are_removed_when_old() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join(".tmp-old");
        let young = tmp.path().join(".tmp-young");
        std::fs::write(&old, b"partial").unwrap();
        std::fs::write(&young, b"partial").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3 * 24 * 60 * 60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let store = FileStore::new(tmp.path().to_path_buf()).unwrap();
        assert_eq!(names_in(store.dir()), vec![".tmp-young"]);
    }
}
