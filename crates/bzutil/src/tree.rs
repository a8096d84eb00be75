//! Turns a local directory into REAPI `Directory` messages and file blobs (what Pants' `fs_util
//! directory save` did for Scoot's walk-through).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use scoot_core::Digest;
use scoot_proto::reapi::v2 as re;

use crate::{digest_of, encode, to_proto};

/// The root directory's digest and every blob (files and Directory messages) under it.
pub fn directory_blobs(root: &Path) -> anyhow::Result<(Digest, Vec<(Digest, Bytes)>)> {
    let mut blobs = BTreeMap::new();
    let digest = walk(root, &mut blobs)?;
    Ok((digest, blobs.into_iter().collect()))
}

fn walk(dir: &Path, blobs: &mut BTreeMap<Digest, Bytes>) -> anyhow::Result<Digest> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let mut directory = re::Directory::default();
    for entry in entries {
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("{n:?} in {} is not UTF-8", dir.display()))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            directory.symlinks.push(re::SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                ..Default::default()
            });
        } else if meta.is_dir() {
            let digest = walk(&path, blobs)?;
            directory.directories.push(re::DirectoryNode {
                name,
                digest: Some(to_proto(&digest)),
            });
        } else {
            let data = Bytes::from(
                std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            );
            let digest = digest_of(&data);
            directory.files.push(re::FileNode {
                name,
                digest: Some(to_proto(&digest)),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
            blobs.insert(digest, data);
        }
    }
    let (digest, data) = encode(&directory);
    blobs.insert(digest.clone(), data);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn directories_are_sorted_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "b").unwrap();
        std::fs::write(dir.path().join("a.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("a.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/c"), "").unwrap();
        std::os::unix::fs::symlink("b.txt", dir.path().join("link")).unwrap();
        let (root, blobs) = directory_blobs(dir.path()).unwrap();
        let root_dir =
            re::Directory::decode(blobs.iter().find(|(d, _)| *d == root).unwrap().1.clone())
                .unwrap();
        let names: Vec<&str> = root_dir.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["a.sh", "b.txt"]);
        assert!(root_dir.files[0].is_executable && !root_dir.files[1].is_executable);
        assert_eq!(root_dir.symlinks[0].target, "b.txt");
        assert_eq!(root_dir.directories[0].name, "sub");
        // Files, the subdirectory and the root: the empty file is a blob too.
        assert_eq!(blobs.len(), 5);
        // The same tree gives the same digest.
        assert_eq!(directory_blobs(dir.path()).unwrap().0, root);
    }
}
