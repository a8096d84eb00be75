//! Local directories as REAPI Merkle trees: what uploading a directory (bzutil's `upload_dir`)
//! and reporting an output directory (a worker) both need.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use scoot_core::Digest;
use scoot_proto::reapi::v2;

use crate::{digest_of_file, encode, to_proto};

/// A directory read from disk.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalTree {
    pub root: v2::Directory,
    pub root_digest: Digest,
    /// Every distinct Directory below the root, by digest.
    pub children: BTreeMap<Digest, v2::Directory>,
    /// Every regular file with its digest (one digest may appear under several paths).
    pub files: Vec<(Digest, PathBuf)>,
}

impl LocalTree {
    /// The whole tree as one `Tree` message (children in digest order).
    pub fn to_tree(&self) -> v2::Tree {
        v2::Tree {
            root: Some(self.root.clone()),
            children: self.children.values().cloned().collect(),
        }
    }

    /// The root and every child Directory as blobs.
    pub fn directory_blobs(&self) -> Vec<(Digest, Bytes)> {
        std::iter::once(&self.root)
            .chain(self.children.values())
            .map(encode)
            .collect()
    }
}

/// Reads `dir` into Directory messages: entries sorted by name, symlinks recorded rather than
/// followed, a file executable when any execute bit is set. Sockets, FIFOs and devices are left
/// out (they have no content to store). Names must be UTF-8. Blocking.
pub fn read_tree(dir: &Path) -> io::Result<LocalTree> {
    let mut children = BTreeMap::new();
    let mut files = Vec::new();
    let root = directory_of(dir, &mut files, &mut children)?;
    let (root_digest, _) = encode(&root);
    Ok(LocalTree {
        root,
        root_digest,
        children,
        files,
    })
}

fn directory_of(
    dir: &Path,
    files: &mut Vec<(Digest, PathBuf)>,
    children: &mut BTreeMap<Digest, v2::Directory>,
) -> io::Result<v2::Directory> {
    let context =
        |path: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut entries = fs::read_dir(dir)
        .and_then(|list| list.collect::<Result<Vec<_>, _>>())
        .map_err(|e| context(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    let mut directory = v2::Directory::default();
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|name| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name:?} in {} is not UTF-8", dir.display()),
            )
        })?;
        let meta = fs::symlink_metadata(&path).map_err(|e| context(&path, e))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| context(&path, e))?;
            directory.symlinks.push(v2::SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                ..Default::default()
            });
        } else if kind.is_dir() {
            let child = directory_of(&path, files, children)?;
            let (digest, _) = encode(&child);
            children.insert(digest.clone(), child);
            directory.directories.push(v2::DirectoryNode {
                name,
                digest: Some(to_proto(&digest)),
            });
        } else if kind.is_file() {
            let digest = digest_of_file(&path).map_err(|e| context(&path, e))?;
            directory.files.push(v2::FileNode {
                name,
                digest: Some(to_proto(&digest)),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
            files.push((digest, path));
        }
    }
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::digest_of;

    #[test]
    fn directories_are_sorted_complete_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["sub", "twin"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
            fs::write(dir.path().join(sub).join("c"), "").unwrap();
        }
        fs::write(dir.path().join("b.txt"), "b").unwrap();
        fs::write(dir.path().join("a.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.path().join("a.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("b.txt", dir.path().join("link")).unwrap();

        let tree = read_tree(dir.path()).unwrap();
        let names: Vec<&str> = tree.root.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["a.sh", "b.txt"]);
        assert!(tree.root.files[0].is_executable && !tree.root.files[1].is_executable);
        assert_eq!(tree.root.symlinks[0].target, "b.txt");
        let dirs: Vec<&str> = tree
            .root
            .directories
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(dirs, vec!["sub", "twin"]);
        // Two identical subdirectories are one child.
        assert_eq!(tree.children.len(), 1);
        assert_eq!(tree.files.len(), 4);
        assert_eq!(
            tree.files[0],
            (digest_of(b"#!/bin/sh\n"), dir.path().join("a.sh"))
        );

        let blobs = tree.directory_blobs();
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].0, tree.root_digest);
        assert_eq!(
            v2::Directory::decode(blobs[0].1.clone()).unwrap(),
            tree.root
        );
        let whole = tree.to_tree();
        assert_eq!(whole.root.as_ref(), Some(&tree.root));
        assert_eq!(whole.children.len(), 1);
        // The same directory gives the same digest.
        assert_eq!(read_tree(dir.path()).unwrap().root_digest, tree.root_digest);
    }
}
