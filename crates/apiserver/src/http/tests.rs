//! The routes, exercised over real connections to a server on an ephemeral port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use scoot_bundlestore::store::{Expiry, HttpStore, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use scoot_snapshot_db::{GitDb, GitDbConfig};

use crate::{ApiServerConfig, SnapshotFiles};

const NAME: &str = "bs-0123456789abcdef0123456789abcdef01234567.bundle";
/// Starts like a bundle; for requests refused before the body is looked at.
const FAKE: &[u8] = b"# v2 git bundle\n0123456789abcdef0123456789abcdef01234567 HEAD\n\nPACK...";

/// A snapshot ingested by the snapshot database: its id, bundle name and bundle.
struct Ingested {
    id: String,
    name: String,
    bundle: Bytes,
}

/// Ingests a directory holding `content` in a scratch snapshot database, as a client would
/// before uploading the bundle.
async fn ingest(content: &str) -> Ingested {
    let store = Arc::new(MemStore::default());
    let db = GitDb::init_temp(store.clone(), GitDbConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file.txt"), content).unwrap();
    let id = db.ingest_dir(dir.path()).await.unwrap();
    let name = id.bundle_name().unwrap();
    let bundle = store.get(&name).unwrap().0;
    Ingested {
        id: id.to_string(),
        name,
        bundle,
    }
}

/// An in-memory store that remembers the expiry each blob was written with, and can be made
/// to fail.
#[derive(Default)]
struct MemStore {
    blobs: Mutex<HashMap<String, (Bytes, Expiry)>>,
    broken: bool,
}

impl MemStore {
    fn get(&self, name: &str) -> Option<(Bytes, Expiry)> {
        self.blobs.lock().unwrap().get(name).cloned()
    }
    fn is_empty(&self) -> bool {
        self.blobs.lock().unwrap().is_empty()
    }
    fn check(&self) -> Result<(), StoreError> {
        if self.broken {
            Err(StoreError::Io("disk on fire".to_string()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.check()?;
        Ok(self.get(name).is_some())
    }
    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.check()?;
        Ok(self.get(name).map(|(data, _)| data))
    }
    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError> {
        self.check()?;
        self.blobs
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert((data, expiry));
        Ok(())
    }
}

/// Files of snapshot "snap"; snapshot "broken" fails.
struct FakeFiles;

#[async_trait]
impl SnapshotFiles for FakeFiles {
    async fn read_file(&self, snapshot_id: &str, path: &str) -> Result<Option<Bytes>, String> {
        match (snapshot_id, path) {
            ("broken", _) => Err("git cat-file failed: bad object".to_string()),
            ("snap", "dir/file.txt") => Ok(Some(Bytes::from_static(b"contents\n"))),
            _ => Ok(None),
        }
    }
}

struct Server {
    addr: SocketAddr,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(self.client.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        self.send(self.client.post(self.url(path)).body(body)).await
    }

    /// Sends `request` as raw bytes (for what an HTTP client library would not send) and
    /// returns the status and body of the answer, if any came.
    async fn raw(&self, request: &[u8], close_write: bool) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        if close_write {
            stream.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    async fn raw_get(&self, path: &str) -> (u16, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        self.raw(request.as_bytes(), false).await.unwrap()
    }
}

async fn start(config: ApiServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(crate::run(listener, config, async {
        let _ = stopped.await;
    }));
    let client = scoot_security::http_client(None)
        .no_proxy()
        .build()
        .unwrap();
    Server {
        addr,
        client,
        _stop: stop,
    }
}

async fn start_with(store: Arc<MemStore>) -> Server {
    start(ApiServerConfig::new(store)).await
}

#[tokio::test]
async fn health_is_ok() {
    let server = start_with(Arc::default()).await;
    assert_eq!(server.get("/health").await, (200, "ok".to_string()));
}

#[test]
fn bundle_names() {
    assert!(crate::http::is_bundle_name(NAME));
    for bad in [
        "",
        "bs-.bundle",
        "bs-0123456789abcdef0123456789abcdef0123456.bundle",
        "bs-0123456789abcdef0123456789abcdef012345678.bundle",
        "bs-0123456789ABCDEF0123456789abcdef01234567.bundle",
        "bs-0123456789abcdef0123456789abcdef01234567.bundlex",
        "bs-0123456789abcdef0123456789abcdef01234567.bundle.tmp",
        "xbs-0123456789abcdef0123456789abcdef01234567.bundle",
        "bs-0123456789abcdef0123456789abcdef0123456-.bundle",
    ] {
        assert!(!crate::http::is_bundle_name(bad), "{bad:?} accepted");
    }
}

#[tokio::test]
async fn invalid_bundle_names_are_400() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    for path in [
        "/bundle",
        "/bundle/",
        "/bundle/x",
        "/bundle/bs-0123456789abcdef0123456789abcdef01234567.bundlex",
        "/bundle/bs-0123456789abcdef0123456789abcdef01234567.bundle/more",
        "/bundle/bs-0123456789ABCDEF0123456789abcdef01234567.bundle",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "GET {path}");
        assert!(body.contains("must match"), "{body}");
        assert_eq!(server.post(path, FAKE).await.0, 400, "POST {path}");
        let head = server.client.head(server.url(path)).send().await.unwrap();
        assert_eq!(head.status().as_u16(), 400, "HEAD {path}");
    }
    assert!(store.is_empty());
}

#[tokio::test]
async fn upload_then_download() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let Ingested { name, bundle, .. } = ingest("x").await;
    let path = format!("/bundle/{name}");

    let head = server.client.head(server.url(&path)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 404);
    assert_eq!(server.get(&path).await.0, 404);

    let before = std::time::SystemTime::now();
    let (status, body) = server.post(&path, bundle.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("Successfully wrote bundle {name}"));
    let (data, expiry) = store.get(&name).unwrap();
    assert_eq!(data, bundle);
    // No expiry header: the default TTL applies.
    let ttl = expiry.unwrap().duration_since(before).unwrap();
    let default = scoot_bundlestore::store::http::DEFAULT_TTL;
    assert!(ttl >= default && ttl < default + Duration::from_secs(60));

    let (status, body) = server.post(&path, FAKE).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("Bundle {name} already exists, no-op and return")
    );
    assert_eq!(store.get(&name).unwrap().0, bundle);

    let head = server.client.head(server.url(&path)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let response = server.client.get(server.url(&path)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap(), bundle);
}

#[tokio::test]
async fn the_expiry_header_sets_the_ttl() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let Ingested { name, bundle, .. } = ingest("x").await;
    let path = format!("/bundle/{name}");
    let request = server
        .client
        .post(server.url(&path))
        .header("X-Scoot-Expires", "Wed, 18 May 2033 03:33:20 GMT")
        .body(bundle);
    assert_eq!(server.send(request).await.0, 200);
    assert_eq!(
        store.get(&name).unwrap().1,
        Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
    );
}

#[tokio::test]
async fn an_unparsable_expiry_is_400() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let request = server
        .client
        .post(server.url(&format!("/bundle/{NAME}")))
        .header("x-scoot-expires", "2033-05-18T03:33:20Z")
        .body(FAKE);
    let (status, body) = server.send(request).await;
    assert_eq!(status, 400);
    assert!(body.contains("x-scoot-expires"), "{body}");
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_a_bundle_is_400() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let path = format!("/bundle/{NAME}");
    for body in [&b""[..], b"hello", b"# v4 git bundle\n", b"# v2 git bundle"] {
        let (status, text) = server
            .send(server.client.post(server.url(&path)).body(body))
            .await;
        assert_eq!(status, 400, "{body:?}");
        assert!(text.contains("not a git bundle"), "{text}");
    }
    assert!(store.is_empty());
    // v3 bundles are fine.
    let Ingested { name, bundle, .. } = ingest("x").await;
    let v3 = [
        &b"# v3 git bundle\n@object-format=sha1\n"[..],
        &bundle["# v2 git bundle\n".len()..],
    ]
    .concat();
    let (status, text) = server.post(&format!("/bundle/{name}"), v3).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_truncated_upload_stores_nothing() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let mut request = format!(
        "POST /bundle/{NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        FAKE.len() + 100
    )
    .into_bytes();
    request.extend_from_slice(FAKE);
    // The client stops sending but still listens: it is told why nothing was stored.
    let (status, body) = server.raw(&request, true).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("incomplete upload"), "{body}");
    assert!(store.is_empty());
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let store = Arc::new(MemStore::default());
    let Ingested { name, bundle, .. } = ingest("x").await;
    let server = start(ApiServerConfig {
        max_upload_bytes: bundle.len() as u64,
        ..ApiServerConfig::new(store.clone())
    })
    .await;
    let path = format!("/bundle/{name}");
    let big = [&bundle[..], b"."].concat();
    assert_eq!(server.post(&path, big.clone()).await.0, 413);
    // Without a Content-Length, the limit is found while reading.
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    request.extend_from_slice(&big);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _) = server.raw(&request, false).await.unwrap();
    assert_eq!(status, 413);
    assert!(store.is_empty());
    // At the limit is fine.
    assert_eq!(server.post(&path, bundle).await.0, 200);
}

#[tokio::test]
async fn chunked_uploads_are_accepted() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let Ingested { name, bundle, .. } = ingest("x").await;
    let (first, second) = bundle.split_at(7);
    let mut request = format!(
        "POST /bundle/{name} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        first.len()
    )
    .into_bytes();
    request.extend_from_slice(first);
    request.extend_from_slice(format!("\r\n{:x}\r\n", second.len()).as_bytes());
    request.extend_from_slice(second);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _) = server.raw(&request, false).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(store.get(&name).unwrap().0, bundle);
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = start_with(Arc::default()).await;
    let path = format!("/bundle/{NAME}");
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let response = server
            .client
            .request(method.clone(), server.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET, HEAD, POST");
    }
}

#[tokio::test]
async fn store_failures_are_500() {
    let store = Arc::new(MemStore {
        broken: true,
        ..MemStore::default()
    });
    let server = start_with(store).await;
    let path = format!("/bundle/{NAME}");
    let (status, body) = server.post(&path, FAKE).await;
    assert_eq!(status, 500);
    assert!(body.contains("disk on fire"), "{body}");
    assert_eq!(server.get(&path).await.0, 500);
}

#[tokio::test]
async fn the_http_store_talks_to_the_apiserver() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let Ingested { name, bundle, .. } = ingest("x").await;
    let remote = HttpStore::new(&server.addr.to_string()).unwrap();
    assert!(!remote.exists(&name).await.unwrap());
    assert_eq!(remote.read(&name).await.unwrap(), None);
    let expiry = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    remote
        .write(&name, bundle.clone(), Some(expiry))
        .await
        .unwrap();
    assert_eq!(store.get(&name).unwrap().1, Some(expiry));
    assert!(remote.exists(&name).await.unwrap());
    assert_eq!(remote.read(&name).await.unwrap().unwrap(), bundle);
    // Writing again is a no-op that succeeds.
    remote.write(&name, bundle, None).await.unwrap();
    // The server's refusals come back as errors, without retries.
    assert!(matches!(
        remote.read("bs-short.bundle").await,
        Err(StoreError::InvalidName(_))
    ));
    let other = "bs-1111111111111111111111111111111111111111.bundle";
    let err = remote
        .write(other, Bytes::from_static(b"not a bundle"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a git bundle"), "{err}");
}

#[tokio::test]
async fn view_serves_snapshot_files() {
    let server = start(ApiServerConfig {
        view: Some(Arc::new(FakeFiles)),
        ..ApiServerConfig::new(Arc::new(MemStore::default()))
    })
    .await;
    let response = server
        .client
        .get(server.url("/view/snap/dir/file.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "contents\n");

    assert_eq!(server.get("/view/snap/dir/missing.txt").await.0, 404);
    assert_eq!(server.get("/view/other/dir/file.txt").await.0, 404);
    let (status, body) = server.get("/view/broken/a.txt").await;
    assert_eq!(status, 500);
    assert!(body.contains("bad object"), "{body}");
}

#[tokio::test]
async fn view_paths_are_checked() {
    let server = start(ApiServerConfig {
        view: Some(Arc::new(FakeFiles)),
        ..ApiServerConfig::new(Arc::new(MemStore::default()))
    })
    .await;
    for path in [
        "/view",
        "/view/",
        "/view/snap",
        "/view/snap/",
        "/view//dir/file.txt",
        "/view/snap//etc/passwd",
        "/view/snap/dir//file.txt",
        "/view/snap/dir/",
        "/view/snap/../secret",
        "/view/snap/dir/../../secret",
        "/view/snap/./dir/file.txt",
        "/view/snap/%2E%2E/secret",
        "/view/snap/%2Fetc/passwd",
    ] {
        let (status, body) = server.raw_get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    assert_eq!(server.raw_get("/view/snap/dir/file.txt").await.0, 200);
    assert_eq!(server.raw_get("/view/snap/dir%2Ffile.txt").await.0, 200);
}

#[tokio::test]
async fn view_without_a_viewer_is_404() {
    let server = start_with(Arc::default()).await;
    let (status, body) = server.get("/view/snap/dir/file.txt").await;
    assert_eq!(status, 404);
    assert_eq!(body, "snapshot viewer not configured");
    // Bad paths are still refused first.
    assert_eq!(server.get("/view/snap").await.0, 400);
}

#[tokio::test]
async fn a_bundle_stored_under_another_commits_name_is_refused() {
    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let a = ingest("a\n").await;
    let b = ingest("b\n").await;

    let (status, body) = server.post(&format!("/bundle/{}", b.name), a.bundle).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("does not hold commit"), "{body}");
    assert!(store.is_empty());

    let (status, body) = server.post(&format!("/bundle/{}", b.name), b.bundle).await;
    assert_eq!(status, 200, "{body}");
    // A snapshot of b, fetched through this apiserver, has b's file.
    let remote = Arc::new(HttpStore::new(&server.addr.to_string()).unwrap());
    let worker = GitDb::init_temp(remote, GitDbConfig::default())
        .await
        .unwrap();
    let file = worker.read_file(&b.id, "file.txt").await.unwrap();
    assert_eq!(file.unwrap(), "b\n");
}

/// Runs git for test setup in `dir`.
fn git(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[tokio::test]
async fn a_published_bundle_is_accepted_under_its_own_key_only() {
    let repo = tempfile::tempdir().unwrap();
    let repo = repo.path();
    git(repo, &["init", "--quiet", "-b", "master"]);
    let mut content = String::new();
    for round in 0..3 {
        for line in 0..100 {
            content.push_str(&format!("round {round} line {line}\n"));
        }
        std::fs::write(repo.join("file.txt"), &content).unwrap();
        git(repo, &["add", "--all"]);
        git(repo, &["commit", "--quiet", "--no-gpg-sign", "-m", "round"]);
        if round == 0 {
            git(repo, &["tag", "basis"]);
        }
    }
    let publisher_store = Arc::new(MemStore::default());
    let publisher = GitDb::open(
        repo.to_path_buf(),
        publisher_store.clone(),
        GitDbConfig::default(),
    )
    .await
    .unwrap();
    let published = publisher
        .publish_git_bundle("basis", "master", None)
        .await
        .unwrap();
    let bundle = publisher_store.get(&published.name).unwrap().0;

    let store = Arc::new(MemStore::default());
    let server = start_with(store.clone()).await;
    let (status, body) = server
        .post(&format!("/bundle/{NAME}"), bundle.clone())
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("do not give the key"), "{body}");
    assert!(store.is_empty());
    let path = format!("/bundle/{}", published.name);
    let (status, body) = server.post(&path, bundle.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(store.get(&published.name).unwrap().0, bundle);
}
