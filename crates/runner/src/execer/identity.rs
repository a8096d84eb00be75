//! The user and group a REAPI action runs as.
//!
//! A worker running as root runs actions as an unprivileged identity (65534:65534, nobody and
//! nogroup on Debian, unless told otherwise): the files of its local CAS cache belong to root and
//! are read-only, and a process without root's privileges can neither write nor chmod them, so
//! one action cannot change what later actions read. A worker that is not root cannot switch
//! users, so its actions run as itself. The switch is made by the OS engine in the child before
//! `exec` (supplementary groups dropped, then the group, then the user).

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A numeric user and group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Who a root worker's actions run as by default.
pub const NOBODY: Identity = Identity {
    uid: 65534,
    gid: 65534,
};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("expected UID or UID:GID (numbers), got {0:?}")]
    Syntax(String),
    #[error(
        "this worker runs as {worker}, not as root, so it cannot run actions as {requested}; \
         leave the action user out to run them as the worker"
    )]
    NotRoot {
        worker: Identity,
        requested: Identity,
    },
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// `UID[:GID]`; the group defaults to the number of the user.
    fn from_str(text: &str) -> Result<Identity, IdentityError> {
        let syntax = || IdentityError::Syntax(text.to_string());
        let number = |s: &str| s.parse::<u32>().map_err(|_| syntax());
        match text.split_once(':') {
            Some((uid, gid)) => Ok(Identity {
                uid: number(uid)?,
                gid: number(gid)?,
            }),
            None => {
                let uid = number(text)?;
                Ok(Identity { uid, gid: uid })
            }
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl Identity {
    /// This process's effective identity.
    pub fn current() -> Identity {
        Identity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Who actions run as, given the worker's `requested` identity for them: `None` means as
    /// the worker itself.
    pub fn for_actions(requested: Option<Identity>) -> Result<Option<Identity>, IdentityError> {
        resolve(Identity::current(), requested)
    }

    /// The first directory on the way down to `dir` (included) that this identity may not
    /// search, judged by the permission bits (ACLs are not consulted), or `None`.
    pub fn unsearchable(&self, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        let dir = std::fs::canonicalize(dir)?;
        let mut ancestors: Vec<&Path> = dir.ancestors().collect();
        ancestors.reverse();
        for path in ancestors {
            let meta = std::fs::metadata(path)?;
            let bit = if meta.uid() == self.uid {
                0o100
            } else if meta.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            if self.uid != 0 && meta.mode() & bit == 0 {
                return Ok(Some(path.to_path_buf()));
            }
        }
        Ok(None)
    }
}

fn resolve(
    worker: Identity,
    requested: Option<Identity>,
) -> Result<Option<Identity>, IdentityError> {
    match requested {
        Some(requested) if requested == worker => Ok(None),
        Some(requested) if worker.uid == 0 => Ok(Some(requested)),
        Some(requested) => Err(IdentityError::NotRoot { worker, requested }),
        None if worker.uid == 0 => Ok(Some(NOBODY)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn parses_a_user_with_or_without_a_group() {
        assert_eq!(
            "1000:100".parse::<Identity>(),
            Ok(Identity {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!("65534".parse::<Identity>(), Ok(NOBODY));
        for bad in ["", "nobody", "1:", ":1", "1:2:3", "-1"] {
            assert_eq!(
                bad.parse::<Identity>(),
                Err(IdentityError::Syntax(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn root_runs_actions_as_nobody_unless_told_and_others_as_themselves() {
        let root = Identity { uid: 0, gid: 0 };
        let user = Identity {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(resolve(root, None), Ok(Some(NOBODY)));
        assert_eq!(resolve(root, Some(user)), Ok(Some(user)));
        assert_eq!(resolve(root, Some(root)), Ok(None));
        assert_eq!(resolve(user, None), Ok(None));
        assert_eq!(resolve(user, Some(user)), Ok(None));
        assert_eq!(
            resolve(user, Some(NOBODY)),
            Err(IdentityError::NotRoot {
                worker: user,
                requested: NOBODY
            })
        );
    }

    #[test]
    fn a_closed_directory_on_the_way_is_unsearchable() {
        let top = tempfile::tempdir().unwrap();
        let inner = top.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(top.path(), 0o711);
        mode(&top.path().join("a"), 0o750);
        let owner = Identity::current();
        let stranger = Identity {
            uid: owner.uid.wrapping_add(1),
            gid: owner.gid.wrapping_add(1),
        };
        let same_group = Identity {
            gid: owner.gid,
            ..stranger
        };
        let top_path = std::fs::canonicalize(top.path()).unwrap();
        assert_eq!(owner.unsearchable(&inner).unwrap(), None);
        assert_eq!(same_group.unsearchable(&inner).unwrap(), None);
        assert_eq!(
            stranger.unsearchable(&inner).unwrap(),
            Some(top_path.join("a"))
        );
        mode(&top.path().join("a"), 0o755);
        assert_eq!(stranger.unsearchable(&inner).unwrap(), None);
    }
}
