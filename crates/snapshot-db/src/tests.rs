//! Tests against real git in temporary directories, with an in-memory bundlestore.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use scoot_bundlestore::id::{Kind, SnapshotId};
use scoot_bundlestore::store::{Expiry, Store, StoreError};
use scoot_core::exit_code;

use crate::cli;
use crate::{Cause, GitDb, GitDbConfig, Op};

/// A bundlestore in memory.
#[derive(Default)]
struct MemoryStore {
    blobs: Mutex<HashMap<String, (Bytes, Expiry)>>,
}

impl MemoryStore {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.blobs.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    fn expiry(&self, name: &str) -> Expiry {
        self.blobs
            .lock()
            .unwrap()
            .get(name)
            .and_then(|(_, expiry)| *expiry)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.blobs.lock().unwrap().contains_key(name))
    }

    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .get(name)
            .map(|(data, _)| data.clone()))
    }

    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError> {
        self.blobs
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert((data, expiry));
        Ok(())
    }
}

/// A scratch area: repositories, directories to ingest, and the databases' temp root.
struct Fixture {
    root: tempfile::TempDir,
    store: Arc<MemoryStore>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            root: tempfile::tempdir().unwrap(),
            store: Arc::new(MemoryStore::default()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Where the databases put checkouts and scratch files.
    fn temp(&self) -> PathBuf {
        let dir = self.path("tmp");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(&self) -> GitDbConfig {
        GitDbConfig {
            temp_dir: Some(self.temp()),
            ..GitDbConfig::default()
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// A database in a fresh repository of its own (a worker's).
    async fn worker_db(&self) -> GitDb {
        GitDb::init_temp(self.store(), self.config()).await.unwrap()
    }

    /// A user repository at `rel` with one commit of `files`.
    fn user_repo(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let repo = self.path(rel);
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "--quiet", "-b", "master"]);
        write_files(&repo, files);
        commit_all(&repo, "first");
        repo
    }

    /// Entries of the temp root (should be empty once every checkout was released).
    fn temp_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.temp())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Runs git synchronously for test setup; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "--all"]);
    git(repo, &["commit", "--quiet", "--no-gpg-sign", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// A directory with nested files, an executable and a symlink.
fn sample_dir(dir: &Path) {
    write_files(
        dir,
        &[
            ("top.txt", "top\n"),
            ("a/b/deep.txt", "deep\n"),
            ("a/empty.txt", ""),
            ("bin/run.sh", "#!/bin/sh\necho hi\n"),
        ],
    );
    let script = dir.join("bin/run.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a/b/deep.txt", dir.join("link")).unwrap();
}

/// Every file under `dir` (relative path → description of type, mode and content), ignoring
/// `.git`.
fn tree_listing(dir: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((rel, format!("link -> {}", target.display())));
            } else if meta.is_dir() {
                walk(base, &path, out);
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                let content = std::fs::read_to_string(&path).unwrap();
                out.push((rel, format!("file exec={exec} {content:?}")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn refs(repo: &Path) -> String {
    git(repo, &["for-each-ref", "--format=%(refname)"])
}

#[tokio::test]
async fn ingested_dir_checks_out_identically_in_another_repository() {
    let fx = Fixture::new();
    let src = fx.path("src");
    sample_dir(&src);

    let ingester = fx.worker_db().await;
    let id = ingester.ingest_dir(&src).await.unwrap();
    let SnapshotId::Bundlestore {
        kind: Kind::Fs,
        bundle_key,
        stream,
        sha,
    } = &id
    else {
        panic!("unexpected id {id}");
    };
    assert!(stream.is_empty());
    assert_eq!(id.to_string(), format!("bs-fs-{bundle_key}--{sha}"));
    assert_eq!(fx.store.names(), vec![format!("bs-{bundle_key}.bundle")]);
    // The bundle's commit carries the tree.
    let tree = git(
        ingester.git_dir(),
        &["rev-parse", &format!("{bundle_key}^{{tree}}")],
    );
    assert_eq!(&tree, sha);
    // No refs or index files are left behind.
    assert_eq!(refs(ingester.git_dir()), "");
    assert!(!ingester.git_dir().join("index").exists());

    // A worker with its own repository gets everything from the bundle.
    let worker = fx.worker_db().await;
    let checkout = worker.checkout(&id.to_string()).await.unwrap();
    assert!(
        checkout
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("checkout")
    );
    assert_eq!(tree_listing(checkout.path()), tree_listing(&src));
    let listing = tree_listing(checkout.path());
    assert!(listing.contains(&("link".into(), "link -> a/b/deep.txt".into())));
    assert!(listing.contains(&(
        "bin/run.sh".into(),
        "file exec=true \"#!/bin/sh\\necho hi\\n\"".into()
    )));
    let path = checkout.path().to_path_buf();
    checkout.release().await.unwrap();
    assert!(!path.exists());
    // Only the two databases' repositories remain in the temp root.
    assert_eq!(fx.temp_entries().len(), 2, "{:?}", fx.temp_entries());
}

#[tokio::test]
async fn files_keep_their_bytes_and_modes_whatever_the_repository_config() {
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("f", "1")]);
    git(&repo, &["config", "core.autocrlf", "true"]);
    git(&repo, &["config", "core.fileMode", "false"]);
    git(&repo, &["config", "core.symlinks", "false"]);
    let src = fx.path("src");
    sample_dir(&src);
    write_files(&src, &[("dos.txt", "one\r\ntwo\r\n")]);

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let id = user.ingest_dir(&src).await.unwrap();
    for db in [&user, &fx.worker_db().await] {
        let checkout = db.checkout(&id.to_string()).await.unwrap();
        assert_eq!(tree_listing(checkout.path()), tree_listing(&src));
        checkout.release().await.unwrap();
    }
}

#[tokio::test]
async fn ids_depend_only_on_content() {
    let fx = Fixture::new();
    let one = fx.path("one");
    let two = fx.path("two");
    let other = fx.path("other");
    write_files(&one, &[("file.txt", "first"), ("d/x", "x")]);
    write_files(&two, &[("file.txt", "first"), ("d/x", "x")]);
    write_files(&other, &[("file.txt", "second"), ("d/x", "x")]);

    let db = fx.worker_db().await;
    let id1 = db.ingest_dir(&one).await.unwrap();
    let id1_again = db.ingest_dir(&one).await.unwrap();
    let id2 = db.ingest_dir(&two).await.unwrap();
    let id3 = db.ingest_dir(&other).await.unwrap();
    assert_eq!(id1, id1_again);
    assert_eq!(id1, id2);
    assert_ne!(id1, id3);
    // Another repository produces the same id for the same content.
    let elsewhere = fx.worker_db().await;
    assert_eq!(elsewhere.ingest_dir(&two).await.unwrap(), id1);
    assert_eq!(fx.store.names().len(), 2);
}

#[tokio::test]
async fn read_file_from_fs_and_gc_snapshots() {
    let fx = Fixture::new();
    let src = fx.path("src");
    sample_dir(&src);
    let repo = fx.user_repo("repo", &[("README", "hello\n"), ("dir/x.txt", "x\n")]);

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let fs_id = user.ingest_dir(&src).await.unwrap().to_string();
    let gc_id = user.ingest_git_commit("HEAD").await.unwrap().to_string();

    // A worker reads through the bundlestore.
    let worker = fx.worker_db().await;
    let read = |id: String, path: &'static str| {
        let worker = &worker;
        async move { worker.read_file(&id, path).await }
    };
    assert_eq!(
        read(fs_id.clone(), "a/b/deep.txt").await.unwrap().unwrap(),
        Bytes::from_static(b"deep\n")
    );
    assert_eq!(
        read(fs_id.clone(), "./a//empty.txt")
            .await
            .unwrap()
            .unwrap(),
        Bytes::new()
    );
    assert_eq!(read(fs_id.clone(), "missing.txt").await.unwrap(), None);
    assert_eq!(
        read(gc_id.clone(), "dir/x.txt").await.unwrap().unwrap(),
        Bytes::from_static(b"x\n")
    );
    assert_eq!(read(gc_id.clone(), "dir/nope").await.unwrap(), None);

    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x"] {
        let err = read(fs_id.clone(), bad).await.unwrap_err();
        assert_eq!(err.exit_code(), exit_code::READ_FILE_FAILURE, "{bad}");
        assert!(matches!(err.cause, Cause::InvalidPath { .. }), "{err}");
    }
    let err = read(fs_id.clone(), "a").await.unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    let err = read("bs-fs-nonsense".into(), "a").await.unwrap_err();
    assert_eq!(err.exit_code(), exit_code::READ_FILE_FAILURE);
}

#[tokio::test]
async fn gc_snapshots_check_out_into_the_clean_work_tree_one_at_a_time() {
    let fx = Fixture::new();
    let repo = fx.user_repo(
        "repo",
        &[
            ("README", "v1\n"),
            (".gitignore", "*.log\n"),
            ("src/a.rs", "a\n"),
        ],
    );
    let first = git(&repo, &["rev-parse", "HEAD"]);
    write_files(&repo, &[("README", "v2\n"), ("src/b.rs", "b\n")]);
    let second = commit_all(&repo, "second");

    let user = GitDb::open(repo.join("src"), fx.store(), fx.config())
        .await
        .unwrap();
    assert_eq!(
        user.work_tree().unwrap(),
        std::fs::canonicalize(&repo).unwrap()
    );
    let id1 = user.ingest_git_commit(&first).await.unwrap();
    let id2 = user.ingest_git_commit("master").await.unwrap();
    assert_eq!(id1.to_string(), format!("bs-gc-{first}--{first}"));
    assert_eq!(id2.to_string(), format!("bs-gc-{second}--{second}"));
    assert_eq!(refs(&repo), "refs/heads/master");

    let worker = Arc::new(fx.worker_db().await);
    let checkout = worker.checkout(&id2.to_string()).await.unwrap();
    assert_eq!(checkout.path(), worker.work_tree().unwrap());
    assert_eq!(
        std::fs::read_to_string(checkout.path().join("README")).unwrap(),
        "v2\n"
    );
    assert!(checkout.path().join("src/b.rs").exists());
    // A task leaves stray and ignored files behind.
    write_files(
        checkout.path(),
        &[("stray.txt", "x"), ("out.log", "y"), ("new/dir/f", "z")],
    );
    std::fs::write(checkout.path().join("README"), "changed").unwrap();

    // The work tree is taken until released.
    let waiting = {
        let worker = worker.clone();
        let id = id1.to_string();
        tokio::spawn(async move { worker.checkout(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second work-tree checkout must wait for the release"
    );
    checkout.release().await.unwrap();
    let checkout = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let listing = tree_listing(checkout.path());
    let names: Vec<&str> = listing.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, vec![".gitignore", "README", "src/a.rs"]);
    assert_eq!(
        std::fs::read_to_string(checkout.path().join("README")).unwrap(),
        "v1\n"
    );
    checkout.release().await.unwrap();
}

#[tokio::test]
async fn checkout_failures_carry_scoot_exit_codes() {
    let fx = Fixture::new();
    let db = fx.worker_db().await;
    let sha = "0123456789abcdef0123456789abcdef01234567";

    let err = db
        .checkout(&format!("bs-fs-{sha}--{sha}"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::CHECKOUT_FAILURE);
    assert!(
        matches!(&err.cause, Cause::BundleNotFound(name) if name == &format!("bs-{sha}.bundle")),
        "{err}"
    );
    assert!(
        err.to_string().contains("is not in the bundlestore"),
        "{err}"
    );

    let err = db
        .checkout(&format!("bs-gc-{sha}--{sha}"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::CHECKOUT_FAILURE);

    for bad in ["", "nonsense", "bs-fs-123--456", "local-xx-0123"] {
        let err = db.checkout(bad).await.unwrap_err();
        assert_eq!(err.exit_code(), exit_code::CHECKOUT_FAILURE, "{bad}");
        assert!(matches!(err.cause, Cause::InvalidId(_)), "{bad}: {err}");
    }

    let err = db.checkout(&format!("local-fs-{sha}")).await.unwrap_err();
    assert!(matches!(err.cause, Cause::NotFound(_)), "{err}");

    let err = db
        .checkout(&format!("stream-gc-sm-{sha}"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::CHECKOUT_FAILURE);
    assert!(
        err.to_string().contains("stream backend not initialized"),
        "{err}"
    );
    let err = db
        .checkout(&format!("tags-fs-rel-{sha}"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tags backend not initialized"),
        "{err}"
    );

    // A bundle that does not hold the snapshot's object.
    let src = fx.path("src");
    write_files(&src, &[("f", "f")]);
    let real = db.ingest_dir(&src).await.unwrap();
    let SnapshotId::Bundlestore { bundle_key, .. } = &real else {
        panic!()
    };
    let err = db
        .checkout(&format!("bs-fs-{bundle_key}--{sha}"))
        .await
        .unwrap_err();
    assert!(matches!(err.cause, Cause::BundleIncomplete { .. }), "{err}");

    // Local snapshots work when the object is there.
    let local = format!("local-fs-{}", real.sha());
    let checkout = db.checkout(&local).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(checkout.path().join("f")).unwrap(),
        "f"
    );
    checkout.release().await.unwrap();
}

#[tokio::test]
async fn clean_and_checkout_failures_have_their_own_codes() {
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("f", "1")]);
    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let id = user.ingest_git_commit("HEAD").await.unwrap().to_string();

    // A git whose `clean` fails.
    let real_git = which_git();
    let wrapper = fx.path("clean-fails-git");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nif [ \"$1\" = clean ]; then echo 'clean broke' >&2; exit 1; fi\nexec {} \"$@\"\n", real_git.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = GitDb::init_temp(
        fx.store(),
        GitDbConfig {
            git_binary: wrapper,
            ..fx.config()
        },
    )
    .await
    .unwrap();
    let err = broken.checkout(&id).await.unwrap_err();
    assert_eq!(err.exit_code(), exit_code::CLEAN_FAILURE, "{err}");
    assert_eq!(err.op, Op::Clean);
    assert!(err.to_string().contains("clean broke"), "{err}");

    let worker = fx.worker_db().await;
    // git checkout fails when the index is locked by someone else.
    let lock = worker.git_dir().join("index.lock");
    std::fs::write(&lock, "").unwrap();
    let err = worker.checkout(&id).await.unwrap_err();
    assert_eq!(err.exit_code(), exit_code::GIT_CHECKOUT_FAILURE, "{err}");
    std::fs::remove_file(&lock).unwrap();
    // The failure did not keep the work tree locked.
    tokio::time::timeout(Duration::from_secs(30), worker.checkout(&id))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn export_makes_the_commit_available_in_another_repository() {
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("f", "1")]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let src = fx.path("src");
    write_files(&src, &[("g", "2")]);

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let gc_id = user.ingest_git_commit("HEAD").await.unwrap().to_string();
    let fs_id = user.ingest_dir(&src).await.unwrap();

    // Export through a worker's database, which first fetches the bundles.
    let worker = fx.worker_db().await;
    let dest = fx.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    git(&dest, &["init", "--quiet"]);
    assert_eq!(worker.export_git_commit(&gc_id, &dest).await.unwrap(), head);
    assert_eq!(git(&dest, &["cat-file", "-t", &head]), "commit");
    let SnapshotId::Bundlestore { bundle_key, .. } = &fs_id else {
        panic!()
    };
    let exported = worker
        .export_git_commit(&fs_id.to_string(), &dest)
        .await
        .unwrap();
    assert_eq!(&exported, bundle_key);
    assert_eq!(git(&dest, &["show", &format!("{exported}:g")]), "2");
    // No refs in either repository.
    assert_eq!(refs(&dest), "");
    assert_eq!(refs(worker.git_dir()), "");

    // Exporting into the database's own repository needs no transfer.
    assert_eq!(user.export_git_commit(&gc_id, &repo).await.unwrap(), head);

    let err = worker
        .export_git_commit(&format!("local-fs-{}", fs_id.sha()), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::EXPORT_GIT_COMMIT_FAILURE);
    let err = worker
        .export_git_commit(&gc_id, &fx.path("not-a-repo"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::EXPORT_GIT_COMMIT_FAILURE);
}

#[tokio::test]
async fn working_dir_ingest_includes_changes_without_touching_the_repository() {
    let fx = Fixture::new();
    let repo = fx.user_repo(
        "repo",
        &[
            ("tracked.txt", "old\n"),
            (".gitignore", "*.log\n"),
            ("gone.txt", "bye\n"),
        ],
    );
    let head = git(&repo, &["rev-parse", "HEAD"]);
    write_files(
        &repo,
        &[
            ("tracked.txt", "new\n"),
            ("untracked.txt", "u\n"),
            ("build.log", "l\n"),
        ],
    );
    std::fs::remove_file(repo.join("gone.txt")).unwrap();
    let status_before = git(&repo, &["status", "--porcelain"]);

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let id = user.ingest_git_working_dir().await.unwrap();
    let commit = id.sha().to_string();
    assert_eq!(git(&repo, &["rev-parse", &format!("{commit}^")]), head);
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s", &commit]),
        "__scoot_commit"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), status_before);
    assert_eq!(refs(&repo), "refs/heads/master");
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head);

    let worker = fx.worker_db().await;
    let checkout = worker.checkout(&id.to_string()).await.unwrap();
    let names: Vec<String> = tree_listing(checkout.path())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, vec![".gitignore", "tracked.txt", "untracked.txt"]);
    assert_eq!(
        std::fs::read_to_string(checkout.path().join("tracked.txt")).unwrap(),
        "new\n"
    );
    checkout.release().await.unwrap();
}

#[tokio::test]
async fn published_bundles_are_named_by_their_commits_and_ref() {
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("f", "1")]);
    let basis = git(&repo, &["rev-parse", "HEAD"]);
    write_files(&repo, &[("f", "2")]);
    commit_all(&repo, "two");
    write_files(&repo, &[("f", "3")]);
    let tip = commit_all(&repo, "three");

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let expiry = Some(std::time::SystemTime::now() + Duration::from_secs(3600));
    let published = user
        .publish_git_bundle(&basis, "master", expiry)
        .await
        .unwrap();
    let rev_list = git(&repo, &["rev-list", &format!("{basis}..master")]);
    let expected_key = sha1_smol::Sha1::from(format!("{rev_list}\nmaster"))
        .digest()
        .to_string();
    assert_eq!(published.key, expected_key);
    assert_eq!(published.name, format!("bs-{expected_key}.bundle"));
    assert_eq!(published.commit, tip);
    assert_eq!(
        published.id.to_string(),
        format!("bs-gc-{expected_key}--{tip}")
    );
    assert_eq!(fx.store.expiry(&published.name), expiry);

    // A worker that has the basis can check the published commit out.
    let base_id = user.ingest_git_commit(&basis).await.unwrap();
    let worker = fx.worker_db().await;
    worker
        .checkout(&base_id.to_string())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let checkout = worker.checkout(&published.id.to_string()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(checkout.path().join("f")).unwrap(),
        "3"
    );
    checkout.release().await.unwrap();

    let err = user
        .publish_git_bundle(&tip, "master", None)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::BUNDLE_UPLOAD_FAILURE, "{err}");
}

fn which_git() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|dir| dir.join("git"))
        .find(|candidate| candidate.is_file())
        .expect("git on PATH")
}

/// A fake git that hangs, with a helper child holding its output open (its pid goes to
/// `<dir>/helper.pid`).
fn hanging_git(dir: &Path) -> PathBuf {
    let script = dir.join("slow-git");
    let pid_file = dir.join("helper.pid");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 60 &\necho $! > {}\nsleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn slow_git_commands_time_out() {
    let fx = Fixture::new();
    let config = GitDbConfig {
        git_timeout: Duration::from_millis(300),
        git_binary: hanging_git(fx.root.path()),
        ..fx.config()
    };
    let started = Instant::now();
    let err = GitDb::init_temp(fx.store(), config.clone())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.exit_code(), exit_code::DB_INIT_FAILURE);
    assert!(
        err.to_string().contains("did not finish within 300ms"),
        "{err}"
    );
    // The helper was killed with git.
    let pid = std::fs::read_to_string(fx.root.path().join("helper.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = std::fs::read_to_string(&stat).is_ok_and(|text| {
            !text
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the helper {pid} of a timed-out git is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A database whose git becomes slow after it was opened.
    let repo = fx.user_repo("repo", &[("f", "1")]);
    let db = GitDb::open(repo, fx.store(), fx.config()).await.unwrap();
    let slow = crate::git::Git::for_repo(
        config.git_binary.clone(),
        Duration::from_millis(200),
        db.git_dir(),
        db.git_dir(),
    );
    let started = Instant::now();
    let err = slow.cmd(["status"]).run().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn git_runs_with_a_fixed_environment() {
    let fx = Fixture::new();
    let db = fx.worker_db().await;
    // Commits made by the database do not depend on who runs it or when.
    let empty_tree = db
        .git()
        .cmd(["write-tree"])
        .env("GIT_INDEX_FILE", fx.path("idx"))
        .run_text()
        .await
        .unwrap();
    let commit = db
        .git()
        .cmd(["commit-tree", "-m", "x"])
        .arg(&empty_tree)
        .run_text()
        .await
        .unwrap();
    let text = db
        .git()
        .cmd(["cat-file", "commit"])
        .arg(&commit)
        .run_text()
        .await
        .unwrap();
    assert!(
        text.contains("author Scoot <scoot@localhost> 0 +0000"),
        "{text}"
    );
    assert!(
        text.contains("committer Scoot <scoot@localhost> 0 +0000"),
        "{text}"
    );
    let err = db.git().cmd(["no-such-command"]).run().await.unwrap_err();
    assert!(err.to_string().contains("git no-such-command"), "{err}");
}

#[tokio::test]
async fn open_requires_a_repository() {
    let fx = Fixture::new();
    let plain = fx.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let err = GitDb::open(plain, fx.store(), fx.config())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit_code::DB_INIT_FAILURE);
    assert!(err.to_string().contains("not a git repository"), "{err}");
}

// ----------------------------------------------------------------------------------------------
// Command line

#[test]
fn bundlestore_url_resolution_order() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".cloudscootaddr"),
        "sched:9091\napi:9094\n",
    )
    .unwrap();
    std::fs::write(home.path().join(".cloudscootaddr7"), "sched:1\napi7:2\n").unwrap();
    let resolve = |flag, env, id| cli::resolve_bundlestore_url(flag, env, Some(home.path()), id);
    assert_eq!(
        resolve(Some("http://f/bundle/"), Some("http://e/"), None).unwrap(),
        "http://f/bundle/"
    );
    assert_eq!(resolve(None, Some("http://e/"), None).unwrap(), "http://e/");
    assert_eq!(
        resolve(None, Some(" "), None).unwrap(),
        "http://api:9094/bundle/"
    );
    assert_eq!(
        resolve(None, None, Some("7")).unwrap(),
        "http://api7:2/bundle/"
    );
    let err = resolve(None, None, Some("9")).unwrap_err().to_string();
    assert!(
        err.contains("--bundlestore_url") && err.contains("SCOOT_BUNDLESTORE_URL"),
        "{err}"
    );
    assert!(err.contains(".cloudscootaddr9"), "{err}");
    let err = cli::resolve_bundlestore_url(None, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(".cloudscootaddr"), "{err}");
}

#[test]
fn command_line_parses_scoot_style_flags() {
    use clap::Parser;
    let parse =
        |args: &[&str]| cli::Args::try_parse_from(args.iter().map(std::ffi::OsString::from));
    let args = parse(&[
        "scoot-snapshot-db",
        "--log_level",
        "debug",
        "create",
        "ingest_dir",
        "--dir",
        "d",
    ])
    .unwrap();
    assert_eq!(args.log_level, "debug");
    assert!(matches!(
        args.command,
        cli::Command::Create(cli::Create::IngestDir { .. })
    ));
    let args = parse(&[
        "scoot-snapshot-db",
        "create",
        "publish_git_bundle",
        "--basis",
        "b",
        "--bundlestore_url",
        "http://x/bundle/",
        "--output",
        "snapshot-id",
        "--ttl",
        "336h",
    ])
    .unwrap();
    assert_eq!(args.bundlestore_url.as_deref(), Some("http://x/bundle/"));
    let cli::Command::Create(cli::Create::PublishGitBundle {
        reference,
        ttl,
        output,
        ..
    }) = args.command
    else {
        panic!()
    };
    assert_eq!(reference, "master");
    assert_eq!(ttl, Duration::from_secs(336 * 3600));
    assert_eq!(output, cli::Output::SnapshotId);
    let args = parse(&[
        "scoot-snapshot-db",
        "create",
        "publish_git_bundle",
        "--basis",
        "b",
    ])
    .unwrap();
    let cli::Command::Create(cli::Create::PublishGitBundle { ttl, output, .. }) = args.command
    else {
        panic!()
    };
    assert_eq!(ttl, Duration::from_secs(180 * 24 * 3600));
    assert_eq!(output, cli::Output::Location);
    assert!(parse(&["scoot-snapshot-db", "read", "cat", "--id", "x", "a", "b"]).is_ok());
    assert!(parse(&["scoot-snapshot-db", "export", "to_git_commit", "--id", "x"]).is_ok());
    assert!(parse(&["scoot-snapshot-db", "create", "ingest_dir"]).is_err());
}

#[tokio::test]
async fn command_line_commands_print_their_results() {
    use clap::Parser;
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("f", "1")]);
    let basis = git(&repo, &["rev-parse", "HEAD"]);
    write_files(&repo, &[("f", "2")]);
    let head = commit_all(&repo, "two");
    write_files(
        &repo,
        &[("data/x.txt", "x-content"), ("data/y.txt", "y-content")],
    );
    let db = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let mut full = vec!["scoot-snapshot-db"];
        full.extend_from_slice(args);
        let args = cli::Args::try_parse_from(full).unwrap();
        let db = &db;
        let repo = repo.clone();
        async move { cli::execute(&args.command, db, "http://api:9094/bundle/", &repo).await }
    };
    let text = |out: Vec<u8>| String::from_utf8(out).unwrap();

    let fs_id = text(
        run(&["create", "ingest_dir", "--dir", "data"])
            .await
            .unwrap(),
    );
    assert!(
        fs_id.starts_with("bs-fs-") && fs_id.ends_with('\n'),
        "{fs_id}"
    );
    let fs_id = fs_id.trim();
    assert_eq!(
        text(
            run(&["read", "cat", "--id", fs_id, "x.txt", "y.txt"])
                .await
                .unwrap()
        ),
        "x-contenty-content"
    );
    let err = run(&["read", "cat", "--id", fs_id, "nope.txt"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("nope.txt is not in snapshot"),
        "{err}"
    );

    let gc_id = text(
        run(&["create", "ingest_git_commit", "--commit", "HEAD"])
            .await
            .unwrap(),
    );
    assert_eq!(gc_id, format!("bs-gc-{head}--{head}\n"));
    assert_eq!(
        text(
            run(&["export", "to_git_commit", "--id", gc_id.trim()])
                .await
                .unwrap()
        ),
        format!("{head}\n")
    );
    let wd_id = text(run(&["create", "ingest_git_working_dir"]).await.unwrap());
    assert!(wd_id.starts_with("bs-gc-"), "{wd_id}");

    let location = text(
        run(&["create", "publish_git_bundle", "--basis", &basis])
            .await
            .unwrap(),
    );
    assert!(
        location.starts_with("http://api:9094/bundle/bs-") && location.ends_with(".bundle\n"),
        "{location}"
    );
    let snapshot = text(
        run(&[
            "create",
            "publish_git_bundle",
            "--basis",
            &basis,
            "--output",
            "snapshot-id",
        ])
        .await
        .unwrap(),
    );
    assert!(
        snapshot.starts_with("bs-gc-") && snapshot.ends_with(&format!("--{head}\n")),
        "{snapshot}"
    );
    assert!(
        run(&["create", "ingest_git_commit", "--commit", "no-such-ref"])
            .await
            .is_err()
    );
}

#[test]
fn stores_are_chosen_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundles");
    let (_, location) = cli::open_store(path.to_str().unwrap(), None).unwrap();
    assert_eq!(location, path.display().to_string());
    assert!(path.is_dir());
    let (_, location) = cli::open_store(&format!("file://{}", path.display()), None).unwrap();
    assert_eq!(location, path.display().to_string());
    let (_, location) = cli::open_store("http://localhost:9094/bundle", None).unwrap();
    assert_eq!(location, "http://localhost:9094/bundle/");
}

#[tokio::test]
async fn handles_and_futures_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync::<GitDb>();
    assert_send_sync::<crate::Checkout>();
    assert_send_sync::<crate::GitDbError>();
    let fx = Fixture::new();
    let db = fx.worker_db().await;
    assert_send(&db.checkout("x"));
    assert_send(&db.ingest_dir(Path::new("x")));
    assert_send(&db.ingest_git_commit("x"));
    assert_send(&db.ingest_git_working_dir());
    assert_send(&db.read_file("x", "y"));
    assert_send(&db.export_git_commit("x", Path::new("y")));
    assert_send(&db.publish_git_bundle("a", "b", None));
    let checkout_release = |c: crate::Checkout| c.release();
    assert_send(&checkout_release);
}

/// Commits everything in `repo` with the same date as every other such commit, so that only
/// the graph decides the order `git rev-list` lists them in.
fn commit_all_at_epoch(repo: &Path, message: &str) -> String {
    git(repo, &["add", "--all"]);
    let status = std::process::Command::new("git")
        .args(["commit", "--quiet", "--no-gpg-sign", "-m", message])
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "@1000000000 +0000")
        .env("GIT_COMMITTER_DATE", "@1000000000 +0000")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE")
        .status()
        .unwrap();
    assert!(status.success());
    git(repo, &["rev-parse", "HEAD"])
}

async fn stored(fx: &Fixture, name: &str) -> Bytes {
    fx.store.read(name).await.unwrap().unwrap()
}

#[tokio::test]
async fn ingested_bundles_must_hold_the_commit_they_are_named_after() {
    let fx = Fixture::new();
    let db = fx.worker_db().await;
    let dir_a = fx.path("a");
    let dir_b = fx.path("b");
    write_files(&dir_a, &[("f", "a\n")]);
    write_files(&dir_b, &[("f", "b\n")]);
    let key = |id: SnapshotId| match id {
        SnapshotId::Bundlestore { bundle_key, .. } => bundle_key,
        other => panic!("{other}"),
    };
    let a = key(db.ingest_dir(&dir_a).await.unwrap());
    let b = key(db.ingest_dir(&dir_b).await.unwrap());
    let bundle_a = stored(&fx, &format!("bs-{a}.bundle")).await;
    let bundle_b = stored(&fx, &format!("bs-{b}.bundle")).await;
    let config = fx.config();

    crate::verify_bundle(&config, &a, &bundle_a).await.unwrap();
    crate::verify_bundle(&config, &b, &bundle_b).await.unwrap();
    let err = crate::verify_bundle(&config, &b, &bundle_a)
        .await
        .unwrap_err();
    assert!(err.is_bad_bundle(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("does not hold commit {b}")),
        "{err}"
    );

    // A flipped byte in the pack is caught by its checksum or an object's hash.
    let mut corrupt = bundle_a.to_vec();
    let last = corrupt.len() - 30;
    corrupt[last] ^= 0x55;
    let err = crate::verify_bundle(&config, &a, &corrupt)
        .await
        .unwrap_err();
    assert!(err.is_bad_bundle(), "{err}");
    drop(db);
    assert!(fx.temp_entries().is_empty(), "{:?}", fx.temp_entries());
}

#[tokio::test]
async fn published_bundles_must_reproduce_their_key() {
    let fx = Fixture::new();
    let repo = fx.user_repo("repo", &[("big", "0\n")]);
    let mut big = String::from("0\n");
    let mut commit = |name: &str| {
        for line in 0..50 {
            big.push_str(&format!("{name} line {line}\n"));
        }
        write_files(&repo, &[("big", &big), (name, name)]);
        commit_all_at_epoch(&repo, name)
    };
    commit("c1");
    let fork = commit("c2");
    let basis = commit("c3");
    git(&repo, &["checkout", "--quiet", "-b", "side", &fork]);
    commit("s1");
    commit("s2");
    git(&repo, &["checkout", "--quiet", "master"]);
    commit("c4");
    git(
        &repo,
        &[
            "merge",
            "--quiet",
            "--no-edit",
            "--no-gpg-sign",
            "-X",
            "theirs",
            "side",
        ],
    );
    let tip = commit("c5");

    let user = GitDb::open(repo.clone(), fx.store(), fx.config())
        .await
        .unwrap();
    let config = fx.config();
    for reference in ["master", "refs/heads/master", "heads/master", "HEAD"] {
        let published = user
            .publish_git_bundle(&basis, reference, None)
            .await
            .unwrap();
        let data = stored(&fx, &published.name).await;
        assert!(
            data.windows(2).any(|w| w == b"\n-"),
            "{reference}: a thin bundle with prerequisites"
        );
        crate::verify_bundle(&config, &published.key, &data)
            .await
            .unwrap_or_else(|err| panic!("{reference}: {err}"));

        let other = sha1_smol::Sha1::from(format!("{}x", published.key))
            .digest()
            .to_string();
        let err = crate::verify_bundle(&config, &other, &data)
            .await
            .unwrap_err();
        assert!(err.is_bad_bundle(), "{err}");
        // The tip is in the bundle, but not the history an ingested bundle of it must have.
        let err = crate::verify_bundle(&config, &tip, &data)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not all of its history"), "{err}");
    }

    // With no common history, a published bundle has no prerequisites.
    let fresh = fx.user_repo("fresh", &[("f", "1")]);
    write_files(&fresh, &[("f", "2")]);
    commit_all(&fresh, "two");
    let unrelated = git(&repo, &["rev-parse", "side"]);
    git(
        &fresh,
        &["fetch", "--quiet", repo.to_str().unwrap(), "side"],
    );
    let fresh_db = GitDb::open(fresh, fx.store(), fx.config()).await.unwrap();
    let published = fresh_db
        .publish_git_bundle(&unrelated, "master", None)
        .await
        .unwrap();
    let data = stored(&fx, &published.name).await;
    crate::verify_bundle(&config, &published.key, &data)
        .await
        .unwrap();
    assert!(fx.temp_entries().is_empty(), "{:?}", fx.temp_entries());
}
