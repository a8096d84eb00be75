//! After an action ran: what it left at its declared outputs, as the ActionResult describes it,
//! and the blobs to upload for that.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use scoot_cas_client::{digest_of_file, encode, read_tree, to_proto};
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_reapi::rules::{CommandLayout, OutputKind};

use crate::failure::Failure;
use crate::under;

/// The outputs found, and what must be in the CAS for the result to be complete.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// The output fields and stdout/stderr digests; exit code and metadata are the caller's.
    pub result: v2::ActionResult,
    /// Files to upload (outputs, files inside output directories, stdout, stderr).
    pub files: Vec<(Digest, PathBuf)>,
    /// Tree messages of the output directories.
    pub trees: Vec<(Digest, Bytes)>,
}

/// Looks at every declared output under the input root `root`. Outputs that do not exist, or
/// exist as something their declaration excludes (a directory where `output_files` named a
/// file), are left out: the client reports them missing. Blocking.
pub(crate) fn collect(
    root: &Path,
    layout: &CommandLayout,
    stdout: &Path,
    stderr: &Path,
) -> Result<Collected, Failure> {
    let mut collected = Collected::default();
    for output in &layout.outputs {
        let path = under(root, &output.resolved);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Failure::io(&e, format!("output {}", output.path))),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| Failure::io(&e, format!("output {}", output.path)))?;
            let symlink = v2::OutputSymlink {
                path: output.path.clone(),
                target: target.to_string_lossy().into_owned(),
                ..Default::default()
            };
            refuse_absolute(&output.path, &symlink.target)?;
            // REAPI 2.0 clients read only the legacy lists: by declaration, or for
            // output_paths by what the link points to (a dangling link counts as a file).
            let to_directory = match output.kind {
                OutputKind::Directory => true,
                OutputKind::File => false,
                OutputKind::Path => fs::metadata(&path).is_ok_and(|m| m.is_dir()),
            };
            if to_directory {
                collected
                    .result
                    .output_directory_symlinks
                    .push(symlink.clone());
            } else {
                collected.result.output_file_symlinks.push(symlink.clone());
            }
            collected.result.output_symlinks.push(symlink);
        } else if kind.is_dir() && output.kind != OutputKind::File {
            let tree = read_tree(&path)
                .map_err(|e| Failure::io(&e, format!("output directory {}", output.path)))?;
            for directory in std::iter::once(&tree.root).chain(tree.children.values()) {
                for link in &directory.symlinks {
                    refuse_absolute(&format!("{}/…/{}", output.path, link.name), &link.target)?;
                }
            }
            let (tree_digest, tree_blob) = encode(&tree.to_tree());
            collected.files.extend(tree.files);
            collected
                .result
                .output_directories
                .push(v2::OutputDirectory {
                    path: output.path.clone(),
                    tree_digest: Some(to_proto(&tree_digest)),
                    is_topologically_sorted: false,
                    ..Default::default()
                });
            collected.trees.push((tree_digest, tree_blob));
        } else if kind.is_file() && output.kind != OutputKind::Directory {
            let digest = digest_of_file(&path)
                .map_err(|e| Failure::io(&e, format!("output {}", output.path)))?;
            collected.result.output_files.push(v2::OutputFile {
                path: output.path.clone(),
                digest: Some(to_proto(&digest)),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
            collected.files.push((digest, path));
        } else {
            tracing::warn!(output = %output.path, kind = ?output.kind, "output has the wrong type; left out");
        }
    }
    let mut log = |path: &Path, what: &str| -> Result<Option<v2::Digest>, Failure> {
        let digest = digest_of_file(path).map_err(|e| Failure::io(&e, what))?;
        let field = Some(to_proto(&digest));
        collected.files.push((digest, path.to_path_buf()));
        Ok(field)
    };
    let stdout_digest = log(stdout, "stdout")?;
    let stderr_digest = log(stderr, "stderr")?;
    collected.result.stdout_digest = stdout_digest;
    collected.result.stderr_digest = stderr_digest;
    Ok(collected)
}

/// The server advertises absolute symlinks as disallowed; REAPI then has an action that makes
/// one fail with FAILED_PRECONDITION.
fn refuse_absolute(path: &str, target: &str) -> Result<(), Failure> {
    if target.starts_with('/') {
        return Err(Failure::new(
            tonic::Code::FailedPrecondition,
            format!(
                "output symlink {path} has the absolute target {target:?}; this server does not \
                 allow absolute symlinks"
            ),
        ));
    }
    Ok(())
}
