//! Before an action runs: fetching its Action, Command and input tree, checking that every
//! blob exists, and laying the input root out in a directory of its own.
//!
//! Files come from the local [`Cache`] (hard links or copies, as it says); blobs the cache lacks
//! are fetched into it first (small ones in batches written from memory, large ones streamed to disk), each distinct
//! digest once, a bounded number of fetches at a time.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use scoot_cas_client::{MAX_BATCH_BLOB_BYTES, ShardedCas, batch_groups};
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_reapi::BlobSource;
use scoot_reapi::digest::from_proto;
use scoot_reapi::platform::{JDK_SYMLINK as JDK_SYMLINK_PROPERTY, Requirements};
use scoot_reapi::rules::CommandLayout;
use scoot_runner::execer::identity::Identity;
use tonic::Code;

use crate::cache::{Cache, Key};
use crate::failure::Failure;
use crate::under;

/// Batch reads and streamed downloads in flight at once.
const FETCH_CONCURRENCY: usize = 8;

/// An action's messages, fetched and validated.
pub(crate) struct Inputs {
    pub action: v2::Action,
    pub command: v2::Command,
    pub layout: CommandLayout,
    /// What the action's platform asks for.
    pub platform: Requirements,
    pub root: Digest,
    pub directories: Arc<HashMap<Digest, v2::Directory>>,
    /// Distinct non-empty file digests in the input tree.
    pub file_count: usize,
}

/// Fetches the Action, the Command and every Directory of the input root (level by level, in
/// batches) and checks that each file is in the local cache or the CAS, with the checks the
/// scheduler makes ([`scoot_reapi::inputs`]). Everything missing is reported at once.
pub(crate) async fn fetch(
    client: &ShardedCas,
    action_digest: &Digest,
    cache: &Cache,
) -> Result<Inputs, Failure> {
    let source = Remote { client, cache };
    let action = scoot_reapi::inputs::read_action(&source, action_digest).await?;
    let checked = scoot_reapi::inputs::check_inputs(&source, &action).await?;
    Ok(Inputs {
        action,
        command: checked.command,
        layout: checked.layout,
        platform: checked.platform,
        root: checked.tree.root,
        file_count: checked.tree.files.len(),
        directories: Arc::new(checked.tree.directories),
    })
}

/// The CAS as a worker sees it: files already in the local cache count as present.
struct Remote<'a> {
    client: &'a ShardedCas,
    cache: &'a Cache,
}

impl BlobSource for Remote<'_> {
    type Error = Failure;

    async fn read(&self, digests: &[Digest]) -> Result<Vec<(Digest, Bytes)>, Failure> {
        let read = self
            .client
            .try_read_blobs(digests)
            .await
            .map_err(|e| Failure::cas(e, "reading the action's messages"))?;
        Ok(read.blobs)
    }

    async fn find_missing(&self, files: &[Digest]) -> Result<Vec<Digest>, Failure> {
        let uncached: Vec<Digest> = files
            .iter()
            .filter(|d| !self.cache.contains(d))
            .cloned()
            .collect();
        self.client
            .find_missing(&uncached)
            .await
            .map_err(|e| Failure::cas(e, "checking the input files"))
    }
}

/// Where one blob goes in the input root.
struct Wanted {
    digest: Digest,
    plain: Vec<PathBuf>,
    executable: Vec<PathBuf>,
}

impl Wanted {
    fn is_done(&self) -> bool {
        self.plain.is_empty() && self.executable.is_empty()
    }

    fn destinations(&self, executable: bool) -> &[PathBuf] {
        if executable {
            &self.executable
        } else {
            &self.plain
        }
    }
}

/// Lays the input tree out under `root_dir` (which exists and is empty), then creates the
/// working directory and the parents of the outputs; with a `user`, gives it the directories.
pub(crate) async fn materialise(
    client: &ShardedCas,
    cache: &Arc<Cache>,
    inputs: &Inputs,
    root_dir: &Path,
    user: Option<Identity>,
) -> Result<(), Failure> {
    let (dir, root, directories) = (
        root_dir.to_path_buf(),
        inputs.root.clone(),
        inputs.directories.clone(),
    );
    let wanted = tokio::task::spawn_blocking(move || lay_out(&dir, &root, &directories)).await??;
    let from_cache = cache.clone();
    let to_fetch = tokio::task::spawn_blocking(move || link_cached(&from_cache, wanted)).await??;
    fetch_into_cache(client, cache, to_fetch).await?;
    let (dir, layout) = (root_dir.to_path_buf(), inputs.layout.clone());
    tokio::task::spawn_blocking(move || prepare_outputs(&dir, &layout)).await??;
    if let Some(path) = &inputs.platform.jdk_symlink {
        let (dir, path) = (root_dir.to_path_buf(), path.clone());
        tokio::task::spawn_blocking(move || link_java_home(&dir, &path)).await??;
    }
    let Some(user) = user else {
        return Ok(());
    };
    let dir = root_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        hand_over(&dir, user).map_err(|e| {
            Failure::io(
                &e,
                format!("giving the directories of {} to {user}", dir.display()),
            )
        })
    })
    .await?
}

/// Checks that a rootfs action's input root has a `/bin/sh` it can run (following symlinks
/// as they resolve inside the root): clients of rootfs sandboxes run their commands with it.
/// Blocking.
pub(crate) fn check_shell(root: &Path) -> Result<(), Failure> {
    let unusable = |why: &str| {
        Failure::new(
            tonic::Code::FailedPrecondition,
            format!(
                "the action runs with its input root as its filesystem (rootfs), but that root \
                 has no usable /bin/sh: {why}"
            ),
        )
    };
    let mut path = PathBuf::from("bin/sh");
    for _ in 0..40 {
        let mut resolved = root.to_path_buf();
        let mut followed = None;
        let components: Vec<_> = path.components().collect();
        for (i, component) in components.iter().enumerate() {
            match component {
                std::path::Component::Normal(name) => resolved.push(name),
                std::path::Component::ParentDir if resolved != root => {
                    resolved.pop();
                }
                _ => {}
            }
            let meta = fs::symlink_metadata(&resolved)
                .map_err(|_| unusable(&format!("{} does not exist", shown(root, &resolved))))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&resolved)
                    .map_err(|e| unusable(&format!("{}: {e}", shown(root, &resolved))))?;
                let rest: PathBuf = components[i + 1..].iter().collect();
                let base = if target.is_absolute() {
                    target.strip_prefix("/").unwrap_or(&target).to_path_buf()
                } else {
                    let parent = resolved
                        .parent()
                        .and_then(|p| p.strip_prefix(root).ok())
                        .unwrap_or(Path::new(""));
                    parent.join(target)
                };
                followed = Some(base.join(rest));
                break;
            }
        }
        match followed {
            Some(next) => path = next,
            None => {
                let meta = fs::metadata(&resolved)
                    .map_err(|e| unusable(&format!("{}: {e}", shown(root, &resolved))))?;
                return if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                    Ok(())
                } else {
                    Err(unusable(&format!(
                        "{} is not an executable file",
                        shown(root, &resolved)
                    )))
                };
            }
        }
    }
    Err(unusable("too many levels of symbolic links"))
}

/// `path` as the action sees it.
fn shown(root: &Path, path: &Path) -> String {
    format!("/{}", path.strip_prefix(root).unwrap_or(path).display())
}

/// Gives every directory of the input root (input, output and working directories alike) to
/// the user actions run as, so that they can create outputs anywhere in it, as they could
/// locally. Files and symlinks stay the worker's: input files are read-only to the action.
/// Blocking.
fn hand_over(dir: &Path, user: Identity) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            hand_over(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Creates the `JDK_SYMLINK` symlink to this worker's `$JAVA_HOME`. Blocking.
fn link_java_home(root: &Path, path: &str) -> Result<(), Failure> {
    let Some(java_home) = std::env::var_os("JAVA_HOME").filter(|v| !v.is_empty()) else {
        return Err(Failure::new(
            tonic::Code::FailedPrecondition,
            format!(
                "the action asks for {} but this worker has no JAVA_HOME",
                JDK_SYMLINK_PROPERTY
            ),
        ));
    };
    let link = under(root, path);
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Failure::io(&e, format!("creating {}", parent.display())))?;
    }
    std::os::unix::fs::symlink(&java_home, &link).map_err(|e| {
        let failure = Failure::io(&e, format!("linking {} to JAVA_HOME", link.display()));
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::invalid(format!(
                "{}={path} names an input that already exists",
                JDK_SYMLINK_PROPERTY
            ))
        } else {
            failure
        }
    })
}

/// Creates the directories, symlinks and empty files of the tree and returns the files still to
/// place, by digest. Blocking.
fn lay_out(
    root_dir: &Path,
    root: &Digest,
    directories: &HashMap<Digest, v2::Directory>,
) -> Result<Vec<Wanted>, Failure> {
    let mut wanted: HashMap<Digest, Wanted> = HashMap::new();
    let mut stack = vec![(root_dir.to_path_buf(), root.clone())];
    while let Some((path, digest)) = stack.pop() {
        let directory = directories.get(&digest).ok_or_else(|| {
            Failure::internal(format!("input directory {digest} was not fetched"))
        })?;
        // Identical repeated entries are allowed (`validate_directory`); the first wins.
        let mut names = HashSet::new();
        for file in &directory.files {
            if !names.insert(file.name.as_str()) {
                continue;
            }
            let digest = from_proto(file.digest.as_ref(), "file")?;
            let target = path.join(&file.name);
            if digest.is_empty_blob() {
                create_empty(&target, file.is_executable)
                    .map_err(|e| Failure::io(&e, format!("creating {}", target.display())))?;
                continue;
            }
            let entry = wanted.entry(digest.clone()).or_insert_with(|| Wanted {
                digest,
                plain: Vec::new(),
                executable: Vec::new(),
            });
            if file.is_executable {
                entry.executable.push(target);
            } else {
                entry.plain.push(target);
            }
        }
        for link in &directory.symlinks {
            if names.insert(link.name.as_str()) {
                let target = path.join(&link.name);
                std::os::unix::fs::symlink(&link.target, &target)
                    .map_err(|e| Failure::io(&e, format!("creating {}", target.display())))?;
            }
        }
        for child in &directory.directories {
            if names.insert(child.name.as_str()) {
                let child_path = path.join(&child.name);
                fs::create_dir(&child_path)
                    .map_err(|e| Failure::io(&e, format!("creating {}", child_path.display())))?;
                stack.push((child_path, from_proto(child.digest.as_ref(), "directory")?));
            }
        }
    }
    Ok(wanted.into_values().collect())
}

/// An empty input file, with the modes cached files have (no blob to link to).
fn create_empty(path: &Path, executable: bool) -> std::io::Result<()> {
    fs::File::create_new(path)?;
    let mode = if executable { 0o555 } else { 0o444 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Links every file the cache has, copies blobs the cache has only in the other mode, and
/// returns what remains to fetch. Blocking.
fn link_cached(cache: &Cache, wanted: Vec<Wanted>) -> Result<Vec<Wanted>, Failure> {
    let mut to_fetch = Vec::new();
    for mut want in wanted {
        for executable in [false, true] {
            if want.destinations(executable).is_empty() {
                continue;
            }
            let key = Key {
                digest: want.digest.clone(),
                executable,
            };
            if cache.acquire(&key).is_some() {
                let placed = cache.place(&key, want.destinations(executable));
                cache.release(&key);
                // Not placed: the entry had changed and was dropped; fetch the blob again.
                if placed.map_err(|e| link_failure(&e, &want.digest))? {
                    if executable {
                        want.executable.clear();
                    } else {
                        want.plain.clear();
                    }
                }
            }
        }
        if want.is_done() {
            continue;
        }
        // The modes still wanted are not cached, so any entry found is the other mode's.
        let other = [false, true].into_iter().find_map(|executable| {
            let key = Key {
                digest: want.digest.clone(),
                executable,
            };
            cache.acquire(&key).map(|path| (key, path))
        });
        match other {
            Some((key, path)) => {
                let temp = cache.temp_path();
                let copied = fs::copy(&path, &temp);
                cache.release(&key);
                copied.map_err(|e| {
                    let _ = fs::remove_file(&temp);
                    Failure::io(&e, format!("copying {}", path.display()))
                })?;
                install(cache, &want, temp)?;
            }
            None => to_fetch.push(want),
        }
    }
    Ok(to_fetch)
}

/// Puts `temp`, a verified copy of the blob, into the cache in every mode still wanted and
/// places it at the destinations. Blocking.
fn install(cache: &Cache, want: &Wanted, temp: PathBuf) -> Result<(), Failure> {
    let modes: Vec<bool> = [false, true]
        .into_iter()
        .filter(|&executable| !want.destinations(executable).is_empty())
        .collect();
    let mut file = temp;
    for (i, &executable) in modes.iter().enumerate() {
        let key = Key {
            digest: want.digest.clone(),
            executable,
        };
        let path = cache.insert(&key, &file).map_err(|e| {
            let _ = fs::remove_file(&file);
            Failure::io(&e, format!("adding blobs/{} to the cache", want.digest))
        })?;
        let placed = place_pinned(cache, &key, &path, want, i + 1 < modes.len());
        cache.release(&key);
        if let Some(next) = placed? {
            file = next;
        }
    }
    Ok(())
}

/// Places an entry just inserted (and pinned) at its destinations; with `copy`, also copies it
/// to a new temporary file for the other mode, which needs its own inode. Blocking.
fn place_pinned(
    cache: &Cache,
    key: &Key,
    path: &Path,
    want: &Wanted,
    copy: bool,
) -> Result<Option<PathBuf>, Failure> {
    let placed = cache
        .place(key, want.destinations(key.executable))
        .map_err(|e| link_failure(&e, &want.digest))?;
    if !placed {
        return Err(Failure::internal(format!(
            "blobs/{} changed in the local cache as it was placed",
            want.digest
        )));
    }
    if !copy {
        return Ok(None);
    }
    let next = cache.temp_path();
    fs::copy(path, &next).map_err(|e| {
        let _ = fs::remove_file(&next);
        Failure::io(&e, format!("copying {}", path.display()))
    })?;
    Ok(Some(next))
}

fn link_failure(error: &std::io::Error, digest: &Digest) -> Failure {
    Failure::io(error, format!("placing input file blobs/{digest}"))
}

/// Fetches the blobs into the cache and links them; FAILED_PRECONDITION if some vanished from
/// the CAS since it was checked.
async fn fetch_into_cache(
    client: &ShardedCas,
    cache: &Arc<Cache>,
    wanted: Vec<Wanted>,
) -> Result<(), Failure> {
    let (small, large): (Vec<Wanted>, Vec<Wanted>) = wanted
        .into_iter()
        .partition(|w| u64::try_from(w.digest.size_bytes).unwrap_or(0) <= MAX_BATCH_BLOB_BYTES);
    let mut small: HashMap<Digest, Wanted> =
        small.into_iter().map(|w| (w.digest.clone(), w)).collect();
    let mut jobs: Vec<BoxFuture<'_, Result<Vec<Digest>, Failure>>> = Vec::new();
    let groups = batch_groups(small.keys());
    for group in groups {
        let group: Vec<Wanted> = group.iter().filter_map(|d| small.remove(d)).collect();
        jobs.push(fetch_batch(client, cache.clone(), group).boxed());
    }
    for want in large {
        jobs.push(fetch_large(client, cache.clone(), want).boxed());
    }
    let missing: Vec<Vec<Digest>> = futures::stream::iter(jobs)
        .buffer_unordered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    let missing: Vec<(Digest, &'static str)> = missing
        .into_iter()
        .flatten()
        .map(|d| (d, "an input file"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::missing(missing))
    }
}

/// One batch of small blobs: read into memory, written to temporary files, installed. Returns
/// the digests the CAS lacked.
async fn fetch_batch(
    client: &ShardedCas,
    cache: Arc<Cache>,
    group: Vec<Wanted>,
) -> Result<Vec<Digest>, Failure> {
    let digests: Vec<Digest> = group.iter().map(|w| w.digest.clone()).collect();
    let read = client
        .try_read_blobs(&digests)
        .await
        .map_err(|e| Failure::cas(e, "fetching input files"))?;
    let mut data: HashMap<Digest, Bytes> = read.blobs.into_iter().collect();
    tokio::task::spawn_blocking(move || {
        for want in group {
            let Some(bytes) = data.remove(&want.digest) else {
                continue;
            };
            let temp = cache.temp_path();
            fs::write(&temp, &bytes)
                .map_err(|e| Failure::io(&e, format!("writing {}", temp.display())))?;
            install(&cache, &want, temp)?;
        }
        Ok::<_, Failure>(())
    })
    .await??;
    Ok(read.missing)
}

/// One large blob, streamed to a temporary file in the cache, then installed.
async fn fetch_large(
    client: &ShardedCas,
    cache: Arc<Cache>,
    want: Wanted,
) -> Result<Vec<Digest>, Failure> {
    let temp = cache.temp_path();
    match client.download_to_file(&want.digest, &temp).await {
        Ok(()) => {}
        Err(e) if e.code == Code::NotFound => return Ok(vec![want.digest]),
        Err(e) => {
            return Err(Failure::cas(
                e,
                &format!("fetching input file blobs/{}", want.digest),
            ));
        }
    }
    tokio::task::spawn_blocking(move || install(&cache, &want, temp)).await??;
    Ok(Vec::new())
}

/// Creates the working directory, the parents of every output and every directory declared in
/// `output_directories` (Bazel creates those for tree artifacts when it
/// runs an action locally, and actions rely on it). Blocking.
fn prepare_outputs(root: &Path, layout: &CommandLayout) -> Result<(), Failure> {
    let create = |relative: &str| {
        let path = under(root, relative);
        fs::create_dir_all(&path)
            .map_err(|e| Failure::io(&e, format!("creating {}", path.display())))
    };
    create(&layout.working_directory)?;
    for output in &layout.outputs {
        if let Some((parent, _)) = output.resolved.rsplit_once('/') {
            create(parent)?;
        }
    }
    for dir in &layout.tree_directories {
        create(dir)?;
    }
    Ok(())
}

/// Removes an action's directory, even where the action took away write permission from its
/// directories. Blocking.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(
        dir,
        fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
    );
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}
