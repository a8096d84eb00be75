//! The snapshot database: a git repository holding snapshots' objects, and a bundlestore through
//! which snapshots travel between machines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use scoot_bundlestore::id::{Kind, SnapshotId, bundle_name};
use scoot_bundlestore::store::{Expiry, Store};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Cause, GitDbError, InOp, Op};
use crate::git::{DEFAULT_TIMEOUT, Git};

/// The message of the commit made to carry an ingested directory's tree in a bundle.
pub const FS_COMMIT_MESSAGE: &str = "commit to distribute GitDB FSSnapshot via bundlestore";
/// The message of the commit made by [`GitDb::ingest_git_working_dir`].
pub const WORKING_DIR_COMMIT_MESSAGE: &str = "__scoot_commit";
/// The ref that names a commit while it is being bundled; deleted afterwards.
pub const BUNDLE_TEMP_REF: &str = "refs/heads/reserved_scoot/bundlestore/__temp_for_writing";
/// The ref that names a commit while another repository fetches it; deleted afterwards.
pub const EXPORT_TEMP_REF: &str = "refs/heads/scoot/__temp_for_writing";
/// The branch a commit checkout leaves the data repository's work tree on.
pub const CHECKOUT_BRANCH: &str = "scoot/__temp_for_checkout";

/// Settings for ingesting a directory and writing a file-tree checkout, whatever the repository's
/// or user's configuration says: files keep their exact bytes (no end-of-line conversion), their
/// executable bit and symlinks.
const EXACT_FILES: [&str; 8] = [
    "-c",
    "core.autocrlf=false",
    "-c",
    "core.safecrlf=false",
    "-c",
    "core.fileMode=true",
    "-c",
    "core.symlinks=true",
];

/// How a `stream-` or `tags-` snapshot's objects get into the data repository (for example a
/// `git fetch` from the stream's remote). None is implemented here; without one such snapshots
/// fail with "stream backend not initialized", as on Scoot's open-source workers.
#[async_trait]
pub trait RemoteBackend: Send + Sync {
    /// Makes the objects of `id` available in the repository `git` works on.
    async fn fetch(&self, git: &Git, id: &SnapshotId) -> Result<(), Cause>;
}

#[derive(Clone)]
pub struct GitDbConfig {
    /// The deadline of every git command (Scoot: 10 minutes).
    pub git_timeout: Duration,
    /// The git executable.
    pub git_binary: PathBuf,
    /// Where checkouts and scratch files go; the system's temp directory if `None`.
    pub temp_dir: Option<PathBuf>,
    /// Fetches `stream-` snapshots.
    pub stream_backend: Option<Arc<dyn RemoteBackend>>,
    /// Fetches `tags-` snapshots.
    pub tags_backend: Option<Arc<dyn RemoteBackend>>,
}

impl Default for GitDbConfig {
    fn default() -> GitDbConfig {
        GitDbConfig {
            git_timeout: DEFAULT_TIMEOUT,
            git_binary: PathBuf::from("git"),
            temp_dir: None,
            stream_backend: None,
            tags_backend: None,
        }
    }
}

impl std::fmt::Debug for GitDbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitDbConfig")
            .field("git_timeout", &self.git_timeout)
            .field("git_binary", &self.git_binary)
            .field("temp_dir", &self.temp_dir)
            .field("stream_backend", &self.stream_backend.is_some())
            .field("tags_backend", &self.tags_backend.is_some())
            .finish()
    }
}

/// A bundle made by [`GitDb::publish_git_bundle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedBundle {
    /// The store name, `bs-<key>.bundle`.
    pub name: String,
    pub key: String,
    /// The commit the published ref pointed at.
    pub commit: String,
    /// `bs-gc-<key>--<commit>`.
    pub id: SnapshotId,
}

/// A git-backed snapshot database. Operations may run concurrently, except that commit checkouts
/// into the work tree are taken one at a time (until the checkout is released) and the short
/// sections that use a temporary ref are serialised.
pub struct GitDb {
    git: Git,
    git_dir: PathBuf,
    work_tree: Option<PathBuf>,
    store: Arc<dyn Store>,
    config: GitDbConfig,
    /// Held from a commit checkout until its release.
    work_tree_lock: Arc<Mutex<()>>,
    /// Held while a temporary ref exists.
    ref_lock: Mutex<()>,
    /// The data repository when we created it; removed with the database.
    _owned_repo: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for GitDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitDb")
            .field("git_dir", &self.git_dir)
            .field("work_tree", &self.work_tree)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GitDb {
    /// Uses the existing repository that contains `repo` (a work tree or a bare repository).
    pub async fn open(
        repo: PathBuf,
        store: Arc<dyn Store>,
        config: GitDbConfig,
    ) -> Result<GitDb, GitDbError> {
        GitDb::open_inner(repo, store, config, None).await
    }

    /// Creates a fresh repository in a temporary directory owned by the database (removed when it
    /// is dropped): what a worker uses.
    pub async fn init_temp(
        store: Arc<dyn Store>,
        config: GitDbConfig,
    ) -> Result<GitDb, GitDbError> {
        let dir = temp_builder("gitdb")
            .tempdir_in(temp_root(&config))
            .map_err(Cause::io(
                "cannot create a temporary directory for the data repository",
            ))
            .in_op(Op::Init)?;
        let git = Git::discovering(&config.git_binary, config.git_timeout, dir.path());
        git.cmd(["init", "--quiet"])
            .arg(dir.path())
            .run()
            .await
            .in_op(Op::Init)?;
        // Nothing references unbundled objects; automatic gc must not prune them.
        git.cmd(["config", "gc.auto", "0"])
            .run()
            .await
            .in_op(Op::Init)?;
        let path = dir.path().to_path_buf();
        GitDb::open_inner(path, store, config, Some(dir)).await
    }

    async fn open_inner(
        repo: PathBuf,
        store: Arc<dyn Store>,
        config: GitDbConfig,
        owned: Option<tempfile::TempDir>,
    ) -> Result<GitDb, GitDbError> {
        let repo = std::path::absolute(&repo)
            .map_err(Cause::io(format!("bad repository path {}", repo.display())))
            .in_op(Op::Init)?;
        let discover = Git::discovering(&config.git_binary, config.git_timeout, &repo);
        let (git_dir, work_tree) = locate_repo(&discover, &repo).await.in_op(Op::Init)?;
        let dir = work_tree.clone().unwrap_or_else(|| git_dir.clone());
        let git = Git::for_repo(&config.git_binary, config.git_timeout, &git_dir, dir);
        tracing::debug!(git_dir = %git_dir.display(), "snapshot database opened");
        Ok(GitDb {
            git,
            git_dir,
            work_tree,
            store,
            config,
            work_tree_lock: Arc::new(Mutex::new(())),
            ref_lock: Mutex::new(()),
            _owned_repo: owned,
        })
    }

    /// The data repository's git directory.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The data repository's work tree (`None` for a bare repository).
    pub fn work_tree(&self) -> Option<&Path> {
        self.work_tree.as_deref()
    }

    /// Runs git on the data repository (for remote backends and tools).
    pub fn git(&self) -> &Git {
        &self.git
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ---------------------------------------------------------------------------------------
    // Ingest

    /// Snapshots the files under `dir` (which may be outside the repository) and uploads them:
    /// returns `bs-fs-<commit>--<tree>`, the bundle `bs-<commit>.bundle` holding a commit of the
    /// tree. The same content always gives the same id.
    pub async fn ingest_dir(&self, dir: &Path) -> Result<SnapshotId, GitDbError> {
        let tree = self.write_dir_tree(dir).await.in_op(Op::Ingest)?;
        let commit = self
            .git
            .cmd(["commit-tree", "--no-gpg-sign", "-m", FS_COMMIT_MESSAGE])
            .arg(&tree)
            .run_text()
            .await
            .in_op(Op::Ingest)?;
        self.upload_commit(&commit).await.in_op(Op::Ingest)?;
        let id = SnapshotId::Bundlestore {
            kind: Kind::Fs,
            bundle_key: commit,
            stream: String::new(),
            sha: tree,
        };
        tracing::info!(dir = %dir.display(), %id, "ingested directory");
        Ok(id)
    }

    /// The tree of everything under `dir`, written with a private index.
    async fn write_dir_tree(&self, dir: &Path) -> Result<String, Cause> {
        let dir = std::path::absolute(dir)
            .map_err(Cause::io(format!("bad directory {}", dir.display())))?;
        let meta = tokio::fs::metadata(&dir)
            .await
            .map_err(Cause::io(format!("cannot ingest {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(Cause::Unsupported(format!(
                "cannot ingest {}: not a directory",
                dir.display()
            )));
        }
        let scratch = self.scratch_dir()?;
        let index = scratch.path().join("index");
        self.git
            .cmd(EXACT_FILES)
            .args(["add", "--all"])
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_WORK_TREE", &dir)
            .current_dir(&dir)
            .run()
            .await?;
        let tree = self
            .git
            .cmd(["write-tree"])
            .env("GIT_INDEX_FILE", &index)
            .run_text()
            .await?;
        Ok(tree)
    }

    /// Uploads the history of `commitish` (a commit, or anything naming one):
    /// `bs-gc-<commit>--<commit>`.
    pub async fn ingest_git_commit(&self, commitish: &str) -> Result<SnapshotId, GitDbError> {
        let commit = self.resolve_commit(commitish).await.in_op(Op::Ingest)?;
        self.upload_commit(&commit).await.in_op(Op::Ingest)?;
        let id = commit_id(commit);
        tracing::info!(commitish, %id, "ingested commit");
        Ok(id)
    }

    /// Commits HEAD plus the changes in the work tree (tracked and untracked, not ignored files)
    /// without touching the repository's index or refs, and uploads that commit.
    pub async fn ingest_git_working_dir(&self) -> Result<SnapshotId, GitDbError> {
        let commit = self.commit_working_dir().await.in_op(Op::Ingest)?;
        self.upload_commit(&commit).await.in_op(Op::Ingest)?;
        let id = commit_id(commit);
        tracing::info!(%id, "ingested the working directory");
        Ok(id)
    }

    async fn commit_working_dir(&self) -> Result<String, Cause> {
        let Some(work_tree) = &self.work_tree else {
            return Err(Cause::Unsupported("the repository has no work tree".into()));
        };
        let head = self.resolve_commit("HEAD").await?;
        let scratch = self.scratch_dir()?;
        let index = scratch.path().join("index");
        // Starting from a copy of the real index keeps its stat cache, so only changed files are
        // hashed again; without one, start from HEAD.
        let real_index = self.git_dir.join("index");
        let copied = tokio::fs::copy(&real_index, &index).await.is_ok();
        if !copied {
            self.git
                .cmd(["read-tree"])
                .arg(&head)
                .env("GIT_INDEX_FILE", &index)
                .run()
                .await?;
        }
        self.git
            .cmd(["add", "--all"])
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_WORK_TREE", work_tree)
            .current_dir(work_tree)
            .run()
            .await?;
        let tree = self
            .git
            .cmd(["write-tree"])
            .env("GIT_INDEX_FILE", &index)
            .run_text()
            .await?;
        let commit = self
            .git
            .cmd(["commit-tree", "--no-gpg-sign", "-p"])
            .arg(&head)
            .args(["-m", WORKING_DIR_COMMIT_MESSAGE])
            .arg(&tree)
            .run_text()
            .await?;
        Ok(commit)
    }

    /// Bundles the history of `commit` (under a temporary ref) and stores it as
    /// `bs-<commit>.bundle`, unless the store has it already.
    async fn upload_commit(&self, commit: &str) -> Result<(), Cause> {
        let name = bundle_name(commit);
        if self.store.exists(&name).await? {
            tracing::debug!(bundle = %name, "bundle already in the bundlestore");
            return Ok(());
        }
        let scratch = self.scratch_dir()?;
        let file = scratch.path().join(&name);
        {
            let _ref_guard = self.ref_lock.lock().await;
            self.git
                .cmd(["update-ref", BUNDLE_TEMP_REF, commit])
                .run()
                .await?;
            let bundled = self
                .git
                .cmd([
                    "-c",
                    "core.packobjectedgesonlyshallow=0",
                    "bundle",
                    "create",
                    "--quiet",
                ])
                .arg(&file)
                .arg(BUNDLE_TEMP_REF)
                .run()
                .await;
            let deleted = self
                .git
                .cmd(["update-ref", "-d", BUNDLE_TEMP_REF])
                .run()
                .await;
            bundled?;
            deleted?;
        }
        self.upload_file(&file, &name, None).await
    }

    async fn upload_file(&self, file: &Path, name: &str, expiry: Expiry) -> Result<(), Cause> {
        let data = tokio::fs::read(file)
            .await
            .map_err(Cause::io(format!("cannot read bundle {}", file.display())))?;
        let size = data.len();
        self.store.write(name, Bytes::from(data), expiry).await?;
        tracing::info!(bundle = %name, size, "uploaded bundle");
        Ok(())
    }

    /// Bundles `basis..reference` (as `git bundle create` would) and uploads it as
    /// `bs-<key>.bundle`, the key being the SHA-1 of `git rev-list basis..reference`'s output
    /// followed by `reference` (so the same commits under another ref name get another bundle).
    pub async fn publish_git_bundle(
        &self,
        basis: &str,
        reference: &str,
        expiry: Expiry,
    ) -> Result<PublishedBundle, GitDbError> {
        self.publish_inner(basis, reference, expiry)
            .await
            .in_op(Op::Ingest)
    }

    async fn publish_inner(
        &self,
        basis: &str,
        reference: &str,
        expiry: Expiry,
    ) -> Result<PublishedBundle, Cause> {
        if basis.is_empty() || reference.is_empty() {
            return Err(Cause::Unsupported(
                "a bundle needs a basis and a ref".into(),
            ));
        }
        if basis.starts_with('-') || reference.starts_with('-') {
            return Err(Cause::Unsupported(
                "the basis and ref must not start with '-'".into(),
            ));
        }
        let range = format!("{basis}..{reference}");
        let rev_list = self.git.cmd(["rev-list"]).arg(&range).run().await?;
        let commit = self.resolve_commit(reference).await?;
        let mut keyed = rev_list;
        keyed.extend_from_slice(reference.as_bytes());
        let key = sha1_smol::Sha1::from(&keyed).digest().to_string();
        let name = bundle_name(&key);
        let scratch = self.scratch_dir()?;
        let file = scratch.path().join(&name);
        self.git
            .cmd([
                "-c",
                "core.packobjectedgesonlyshallow=0",
                "bundle",
                "create",
                "--quiet",
            ])
            .arg(&file)
            .arg(&range)
            .run()
            .await?;
        self.upload_file(&file, &name, expiry).await?;
        let id = SnapshotId::Bundlestore {
            kind: Kind::Gc,
            bundle_key: key.clone(),
            stream: String::new(),
            sha: commit.clone(),
        };
        Ok(PublishedBundle {
            name,
            key,
            commit,
            id,
        })
    }

    // ---------------------------------------------------------------------------------------
    // Checkout, read, export

    /// Checks out a snapshot. An `fs` snapshot goes into a fresh temporary directory (removed on
    /// release); a `gc` snapshot goes into the data repository's work tree, which is cleaned
    /// first and stays locked until the checkout is released.
    pub async fn checkout(&self, id: &str) -> Result<Checkout, GitDbError> {
        let id: SnapshotId = id.parse().in_op(Op::Checkout)?;
        match id.kind() {
            Kind::Fs => self.checkout_fs(id).await,
            Kind::Gc => self.checkout_gc(id).await,
        }
    }

    async fn checkout_fs(&self, id: SnapshotId) -> Result<Checkout, GitDbError> {
        let tree = format!("{}^{{tree}}", id.sha());
        self.ensure_object(&id, &tree).await.in_op(Op::Checkout)?;
        let dir = temp_builder("checkout")
            .tempdir_in(temp_root(&self.config))
            .map_err(Cause::io("cannot create a checkout directory"))
            .in_op(Op::Checkout)?;
        let scratch = self.scratch_dir().in_op(Op::Checkout)?;
        let index = scratch.path().join("index");
        self.git
            .cmd(["read-tree"])
            .arg(&tree)
            .env("GIT_INDEX_FILE", &index)
            .run()
            .await
            .in_op(Op::Checkout)?;
        let mut prefix_arg = std::ffi::OsString::from("--prefix=");
        prefix_arg.push(dir.path());
        prefix_arg.push("/");
        self.git
            .cmd(EXACT_FILES)
            .args(["checkout-index", "-a", "-f"])
            .arg(prefix_arg)
            .env("GIT_INDEX_FILE", &index)
            .env("GIT_WORK_TREE", dir.path())
            .current_dir(dir.path())
            .run()
            .await
            .in_op(Op::Checkout)?;
        tracing::debug!(%id, path = %dir.path().display(), "checked out file tree");
        Ok(Checkout {
            path: dir.path().to_path_buf(),
            id,
            hold: Hold::TempDir(dir),
        })
    }

    async fn checkout_gc(&self, id: SnapshotId) -> Result<Checkout, GitDbError> {
        let commit = format!("{}^{{commit}}", id.sha());
        self.ensure_object(&id, &commit).await.in_op(Op::Checkout)?;
        let Some(work_tree) = self.work_tree.clone() else {
            return Err(GitDbError::new(
                Op::Checkout,
                Cause::Unsupported("the data repository has no work tree".into()),
            ));
        };
        let guard = self.work_tree_lock.clone().lock_owned().await;
        let cleaned = self.git.cmd(["clean", "-f", "-f", "-d", "-x"]).run().await;
        if let Err(err) = cleaned {
            self.recover_after(&err).await;
            return Err(GitDbError::new(Op::Clean, err));
        }
        let checked_out = self
            .git
            .cmd(["checkout", "--quiet", "-f", "-B", CHECKOUT_BRANCH])
            .arg(id.sha())
            .run()
            .await;
        if let Err(err) = checked_out {
            self.recover_after(&err).await;
            return Err(GitDbError::new(Op::GitCheckout, err));
        }
        tracing::debug!(%id, path = %work_tree.display(), "checked out commit");
        Ok(Checkout {
            path: work_tree,
            id,
            hold: Hold::WorkTree(guard),
        })
    }

    /// A git killed for its timeout may leave the index locked, which would fail every later
    /// checkout; the lock is ours (we hold the work-tree lock), so remove it.
    async fn recover_after(&self, err: &crate::git::GitError) {
        if err.is_timeout() {
            let lock = self.git_dir.join("index.lock");
            if let Err(err) = tokio::fs::remove_file(&lock).await
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%err, lock = %lock.display(), "cannot remove the index lock");
            }
        }
    }

    /// The contents of the file `path` in a snapshot (`fs` or `gc`), or `None` if the snapshot
    /// has no such file. `path` is relative to the snapshot's root and may not contain `..`.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Option<Bytes>, GitDbError> {
        self.read_inner(id, path).await.in_op(Op::ReadFile)
    }

    async fn read_inner(&self, id: &str, path: &str) -> Result<Option<Bytes>, Cause> {
        let id: SnapshotId = id.parse()?;
        let path = clean_path(path)?;
        let object = match id.kind() {
            Kind::Fs => format!("{}^{{tree}}", id.sha()),
            Kind::Gc => format!("{}^{{commit}}", id.sha()),
        };
        self.ensure_object(&id, &object).await?;
        let spec = format!("{}:{path}", id.sha());
        let typed = self.git.cmd(["cat-file", "-t"]).arg(&spec).output().await?;
        if !typed.status.success() {
            return Ok(None);
        }
        match String::from_utf8_lossy(&typed.stdout).trim() {
            "blob" => {}
            "tree" => return Err(Cause::Unsupported(format!("{path} is a directory in {id}"))),
            other => {
                return Err(Cause::Unsupported(format!(
                    "{path} is a {other} in {id}, not a file"
                )));
            }
        }
        let data = self.git.cmd(["cat-file", "blob"]).arg(&spec).run().await?;
        Ok(Some(Bytes::from(data)))
    }

    /// Makes the snapshot's commit available in the repository containing `dest` and returns its
    /// sha. For an `fs` snapshot from the bundlestore that is the commit its bundle carries; other
    /// `fs` snapshots have no commit and cannot be exported. No ref is created in `dest`.
    pub async fn export_git_commit(&self, id: &str, dest: &Path) -> Result<String, GitDbError> {
        self.export_inner(id, dest).await.in_op(Op::Export)
    }

    async fn export_inner(&self, id: &str, dest: &Path) -> Result<String, Cause> {
        let id: SnapshotId = id.parse()?;
        let commit = match (&id, id.kind()) {
            (_, Kind::Gc) => id.sha().to_string(),
            (SnapshotId::Bundlestore { bundle_key, .. }, Kind::Fs) => bundle_key.clone(),
            (_, Kind::Fs) => {
                return Err(Cause::Unsupported(format!(
                    "{id} is a file tree without a commit"
                )));
            }
        };
        self.ensure_object(&id, &format!("{commit}^{{commit}}"))
            .await?;
        let dest = std::path::absolute(dest)
            .map_err(Cause::io(format!("bad repository path {}", dest.display())))?;
        let discover = Git::discovering(&self.config.git_binary, self.config.git_timeout, &dest);
        let (dest_git_dir, dest_work_tree) = locate_repo(&discover, &dest).await?;
        if same_dir(&dest_git_dir, &self.git_dir).await {
            return Ok(commit);
        }
        let dest_git = Git::for_repo(
            &self.config.git_binary,
            self.config.git_timeout,
            &dest_git_dir,
            dest_work_tree.unwrap_or_else(|| dest_git_dir.clone()),
        );
        {
            let _ref_guard = self.ref_lock.lock().await;
            self.git
                .cmd(["update-ref", EXPORT_TEMP_REF, commit.as_str()])
                .run()
                .await?;
            let fetched = dest_git
                .cmd(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"])
                .arg(&self.git_dir)
                .arg(EXPORT_TEMP_REF)
                .run()
                .await;
            let deleted = self
                .git
                .cmd(["update-ref", "-d", EXPORT_TEMP_REF])
                .run()
                .await;
            fetched?;
            deleted?;
        }
        let present = dest_git
            .cmd(["cat-file", "-e"])
            .arg(format!("{commit}^{{commit}}"))
            .output()
            .await?;
        if !present.status.success() {
            return Err(Cause::NotFound(format!(
                "{commit} (after fetching it into {})",
                dest.display()
            )));
        }
        tracing::info!(%id, dest = %dest.display(), %commit, "exported commit");
        Ok(commit)
    }

    // ---------------------------------------------------------------------------------------
    // Getting objects

    /// Makes sure `object` (an object expression such as `<sha>^{tree}`) exists, fetching the
    /// snapshot `id` from its backend if it does not.
    async fn ensure_object(&self, id: &SnapshotId, object: &str) -> Result<(), Cause> {
        if self.has_object(object).await? {
            return Ok(());
        }
        match id {
            SnapshotId::Local { .. } => return Err(Cause::NotFound(format!("snapshot {id}"))),
            SnapshotId::Stream { .. } => {
                let backend = self
                    .config
                    .stream_backend
                    .as_ref()
                    .ok_or(Cause::BackendNotInitialized("stream"))?;
                backend.fetch(&self.git, id).await?;
            }
            SnapshotId::Tags { .. } => {
                let backend = self
                    .config
                    .tags_backend
                    .as_ref()
                    .ok_or(Cause::BackendNotInitialized("tags"))?;
                backend.fetch(&self.git, id).await?;
            }
            SnapshotId::Bundlestore { bundle_key, .. } => {
                let name = bundle_name(bundle_key);
                self.download_bundle(&name).await?;
                if !self.has_object(object).await? {
                    return Err(Cause::BundleIncomplete {
                        bundle: name,
                        object: object.to_string(),
                    });
                }
                return Ok(());
            }
        }
        if self.has_object(object).await? {
            Ok(())
        } else {
            Err(Cause::NotFound(format!(
                "snapshot {id} (after fetching it)"
            )))
        }
    }

    async fn has_object(&self, object: &str) -> Result<bool, Cause> {
        let output = self
            .git
            .cmd(["cat-file", "-e"])
            .arg(object)
            .output()
            .await?;
        Ok(output.status.success())
    }

    /// Fetches `name` from the store and unbundles it into the data repository.
    async fn download_bundle(&self, name: &str) -> Result<(), Cause> {
        let data = self
            .store
            .read(name)
            .await?
            .ok_or_else(|| Cause::BundleNotFound(name.to_string()))?;
        let scratch = self.scratch_dir()?;
        let file = scratch.path().join(name);
        tokio::fs::write(&file, &data)
            .await
            .map_err(Cause::io(format!("cannot write bundle {}", file.display())))?;
        self.git
            .cmd(["bundle", "unbundle"])
            .arg(&file)
            .run()
            .await?;
        tracing::info!(bundle = %name, size = data.len(), "downloaded bundle");
        Ok(())
    }

    /// The commit `commitish` names.
    async fn resolve_commit(&self, commitish: &str) -> Result<String, Cause> {
        if commitish.is_empty() || commitish.starts_with('-') {
            return Err(Cause::NotFound(format!("commit {commitish:?}")));
        }
        let output = self
            .git
            .cmd(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{commitish}^{{commit}}"))
            .output()
            .await?;
        let sha = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if output.status.success() && scoot_bundlestore::id::is_sha(&sha) {
            Ok(sha)
        } else {
            Err(Cause::NotFound(format!("commit {commitish:?}")))
        }
    }

    fn scratch_dir(&self) -> Result<tempfile::TempDir, Cause> {
        temp_builder("gitdb-scratch")
            .tempdir_in(temp_root(&self.config))
            .map_err(Cause::io("cannot create a scratch directory"))
    }
}

fn commit_id(commit: String) -> SnapshotId {
    SnapshotId::Bundlestore {
        kind: Kind::Gc,
        bundle_key: commit.clone(),
        stream: String::new(),
        sha: commit,
    }
}

pub(crate) fn temp_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    builder
}

pub(crate) fn temp_root(config: &GitDbConfig) -> PathBuf {
    config.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// The git directory and work tree (if any) of the repository `git` discovers.
async fn locate_repo(git: &Git, dir: &Path) -> Result<(PathBuf, Option<PathBuf>), Cause> {
    let is_dir = tokio::fs::metadata(dir).await.map(|meta| meta.is_dir());
    match is_dir {
        Ok(true) => {}
        Ok(false) => {
            return Err(Cause::Unsupported(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Err(err) => {
            return Err(Cause::io(format!(
                "cannot use repository {}",
                dir.display()
            ))(err));
        }
    }
    let text = git
        .cmd(["rev-parse", "--absolute-git-dir", "--is-bare-repository"])
        .run_text()
        .await?;
    let mut lines = text.lines();
    let git_dir = lines
        .next()
        .filter(|line| !line.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Cause::Unsupported("git rev-parse printed no git directory".into()))?;
    let bare = lines.next().map(str::trim) == Some("true");
    let work_tree = if bare {
        None
    } else {
        let top = git.cmd(["rev-parse", "--show-toplevel"]).run_text().await?;
        (!top.is_empty()).then(|| PathBuf::from(top))
    };
    Ok((git_dir, work_tree))
}

async fn same_dir(a: &Path, b: &Path) -> bool {
    match (
        tokio::fs::canonicalize(a).await,
        tokio::fs::canonicalize(b).await,
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `path` as a git path inside a snapshot: relative, `/`-separated, no `..`, no empty or `.`
/// components.
fn clean_path(path: &str) -> Result<String, Cause> {
    let invalid = |reason| Cause::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.starts_with('/') {
        return Err(invalid("absolute paths are not allowed"));
    }
    if path.contains('\0') {
        return Err(invalid("NUL in path"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(invalid("'..' is not allowed"));
    }
    if parts.is_empty() {
        return Err(invalid("names no file"));
    }
    Ok(parts.join("/"))
}

/// What keeps a checkout alive.
enum Hold {
    /// A file-tree checkout's own directory.
    TempDir(tempfile::TempDir),
    /// The data repository's work tree, locked.
    WorkTree(OwnedMutexGuard<()>),
}

/// A checked-out snapshot. Dropping it releases it too (a temporary directory is then removed
/// synchronously); [`Checkout::release`] does it without blocking and reports failures.
pub struct Checkout {
    path: PathBuf,
    id: SnapshotId,
    hold: Hold,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Checkout {
    /// Where the snapshot's files are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// Gives the checkout back: removes a file-tree checkout's directory, unlocks the work tree
    /// after a commit checkout.
    pub async fn release(self) -> Result<(), GitDbError> {
        match self.hold {
            Hold::WorkTree(guard) => {
                drop(guard);
                Ok(())
            }
            Hold::TempDir(dir) => {
                let shown = dir.path().display().to_string();
                tokio::task::spawn_blocking(move || dir.close())
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|closed| closed)
                    .map_err(Cause::io(format!("cannot remove checkout {shown}")))
                    .in_op(Op::Release)
            }
        }
    }
}

#[cfg(test)]
mod path_tests {
    use super::clean_path;

    #[test]
    fn paths_are_cleaned_and_checked() {
        assert_eq!(clean_path("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(clean_path("./a//b/").unwrap(), "a/b");
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "a\0b"] {
            assert!(clean_path(bad).is_err(), "{bad:?}");
        }
    }
}
