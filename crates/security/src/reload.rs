//! A value built from files and rebuilt when one of them changes.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::SecurityError;

/// How often the files' metadata is looked at: a `stat` per file per second is nothing, and a
/// rotated certificate or revoked token takes effect within about a second.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What tells one version of a file from another: rewriting a file changes its modification
/// time or length, replacing it (the usual rotation: write a new file, rename over) its inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

type Loader<T> = Box<dyn Fn() -> Result<T, SecurityError> + Send + Sync>;

pub(crate) struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    state: RwLock<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Loads the value now; a failure here is the caller's (a server does not start with a
    /// broken certificate), later failures keep the previous value.
    pub(crate) fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, SecurityError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, SecurityError> {
        let stamps = paths.iter().map(stamp).collect();
        let value = Arc::new(load()?);
        Ok(Reloading {
            what,
            paths,
            load: Box::new(load),
            state: RwLock::new(State {
                value,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The value, rebuilt first if a file changed since it was built.
    pub(crate) fn current(&self) -> Arc<T> {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.checked.elapsed() < CHECK_INTERVAL {
                return state.value.clone();
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < CHECK_INTERVAL {
            return state.value.clone();
        }
        state.checked = Instant::now();
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(stamp).collect();
        if stamps != state.stamps {
            // Remembered even when loading fails, so a broken file is reported once, and
            // loaded again when it next changes (a writer that had not finished).
            state.stamps = stamps;
            match (self.load)() {
                Ok(value) => {
                    tracing::info!(what = self.what, "reloaded after its files changed");
                    state.value = Arc::new(value);
                }
                Err(error) => tracing::error!(
                    what = self.what,
                    %error,
                    "cannot reload after its files changed; keeping the previous version"
                ),
            }
        }
        state.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let reloading = Reloading::new("number", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&read)
                .map_err(|e| SecurityError::Invalid(e.to_string()))?;
            text.trim()
                .parse::<u32>()
                .map_err(|e| SecurityError::Invalid(e.to_string()))
        })
        .unwrap();
        assert_eq!(*reloading.current(), 1);
        std::fs::write(&path, "22").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *reloading.current() != 22 {
            assert!(Instant::now() < deadline, "never reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::write(&path, "not a number").unwrap();
        let until = Instant::now() + CHECK_INTERVAL * 2;
        while Instant::now() < until {
            assert_eq!(*reloading.current(), 22);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
