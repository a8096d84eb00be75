//! Behaviour every store must have, run against each store (`both!`), then the file store's own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tempfile::TempDir;

use crate::chunks::READ_CHUNK;
use crate::fs;
use crate::{
    BlobError, BlobStore, Digest, FsBlobStore, MemoryBlobStore, get, next_chunk, put, sha256_digest,
};

/// A store under test and what the tests need to look at besides the trait.
struct Fixture {
    store: Arc<dyn BlobStore>,
    used: Box<dyn Fn() -> u64 + Send + Sync>,
    count: Box<dyn Fn() -> usize + Send + Sync>,
    /// The file store's directory (kept alive by `_tmp`).
    dir: Option<PathBuf>,
    _tmp: Option<TempDir>,
}

fn memory(capacity: u64) -> Fixture {
    let store = MemoryBlobStore::new(capacity);
    let (a, b) = (store.clone(), store.clone());
    Fixture {
        store: Arc::new(store),
        used: Box::new(move || a.used_bytes()),
        count: Box::new(move || b.blob_count()),
        dir: None,
        _tmp: None,
    }
}

fn fs(capacity: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let store = FsBlobStore::open(dir.clone(), capacity).unwrap();
    let (a, b) = (store.clone(), store.clone());
    Fixture {
        store: Arc::new(store),
        used: Box::new(move || a.used_bytes()),
        count: Box::new(move || b.blob_count()),
        dir: Some(dir),
        _tmp: Some(tmp),
    }
}

impl Fixture {
    fn s(&self) -> &dyn BlobStore {
        self.store.as_ref()
    }

    fn used(&self) -> u64 {
        (self.used)()
    }

    fn count(&self) -> usize {
        (self.count)()
    }

    /// For the file store: no write leftovers in `tmp/`, and `digest` has a file iff `stored`.
    fn check_files(&self, digest: &Digest, stored: bool) {
        let Some(dir) = &self.dir else { return };
        let path = blob_file(dir, digest);
        assert_eq!(path.exists(), stored, "{}", path.display());
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("w-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    async fn missing(&self, digests: &[&Digest]) -> Vec<Digest> {
        let owned: Vec<Digest> = digests.iter().map(|d| (*d).clone()).collect();
        self.s().find_missing(&owned).await.unwrap()
    }

    async fn has(&self, digest: &Digest) -> bool {
        self.missing(&[digest]).await.is_empty()
    }
}

fn blob_file(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(&digest.hash[..2])
        .join(format!("{}-{}", digest.hash, digest.size_bytes))
}

/// `len` pseudo-random bytes (xorshift), different for each `seed`.
fn data(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn blob(len: usize, seed: u64) -> (Digest, Bytes) {
    let bytes = data(len, seed);
    (sha256_digest(&bytes), bytes)
}

/// Reads a range; also checks that no chunk is empty or larger than READ_CHUNK.
async fn read_range(
    store: &dyn BlobStore,
    digest: &Digest,
    offset: u64,
    limit: u64,
) -> Result<Vec<u8>, BlobError> {
    let mut stream = store.read(digest, offset, limit).await?;
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk?;
        assert!(
            !chunk.is_empty() && chunk.len() <= READ_CHUNK,
            "chunk of {}",
            chunk.len()
        );
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Writes `bytes` as `digest` in chunks of `chunk` bytes.
async fn put_chunked(
    store: &dyn BlobStore,
    digest: &Digest,
    bytes: &Bytes,
    chunk: usize,
) -> Result<(), BlobError> {
    let mut writer = store.begin_write(digest).await?;
    for start in (0..bytes.len()).step_by(chunk.max(1)) {
        let end = (start + chunk).min(bytes.len());
        writer.write(bytes.slice(start..end)).await?;
        assert_eq!(writer.written(), end as u64);
    }
    writer.finish().await
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fs() {
                super::$name(super::fs).await;
            }
        }
    )*};
}

both!(
    round_trip,
    bad_writes_are_not_stored,
    offsets_and_limits,
    find_missing_is_exact,
    concurrent_writers_of_one_blob,
    eviction_is_lru_and_bounded,
    reading_pins_a_blob,
    pins_can_hold_the_store_over_capacity,
    large_blob_in_chunks,
);

const MIB: u64 = 1024 * 1024;

async fn round_trip(make: fn(u64) -> Fixture) {
    let fx = make(16 * MIB);
    for (i, len) in [1, 1000, READ_CHUNK, READ_CHUNK + 1, 3 * READ_CHUNK + 17]
        .into_iter()
        .enumerate()
    {
        let (digest, bytes) = blob(len, i as u64);
        assert_eq!(fx.missing(&[&digest]).await, vec![digest.clone()]);
        assert!(matches!(
            fx.s().read(&digest, 0, 0).await,
            Err(BlobError::NotFound(_))
        ));
        put(fx.s(), &digest, bytes.clone()).await.unwrap();
        assert!(fx.has(&digest).await);
        assert_eq!(get(fx.s(), &digest, 16 * MIB).await.unwrap(), bytes);
        assert_eq!(read_range(fx.s(), &digest, 0, 0).await.unwrap(), bytes);
        fx.check_files(&digest, true);
        // Writing it again is a success that changes nothing.
        put_chunked(fx.s(), &digest, &bytes, 333).await.unwrap();
        assert_eq!(get(fx.s(), &digest, 16 * MIB).await.unwrap(), bytes);
    }
    assert_eq!(fx.count(), 5);

    // Chunked writes, with empty chunks in between.
    let (digest, bytes) = blob(5000, 99);
    let mut w = fx.s().begin_write(&digest).await.unwrap();
    w.write(Bytes::new()).await.unwrap();
    w.write(bytes.slice(..10)).await.unwrap();
    w.write(Bytes::new()).await.unwrap();
    w.write(bytes.slice(10..)).await.unwrap();
    assert_eq!(w.written(), 5000);
    w.finish().await.unwrap();
    assert_eq!(get(fx.s(), &digest, 5000).await.unwrap(), bytes);

    // get refuses blobs larger than asked for.
    assert!(matches!(
        get(fx.s(), &digest, 4999).await,
        Err(BlobError::TooLarge(_))
    ));

    // The empty blob is always there and never stored.
    let empty = Digest::empty();
    assert!(get(fx.s(), &empty, 0).await.unwrap().is_empty());
    put(fx.s(), &empty, Bytes::new()).await.unwrap();
    assert_eq!(fx.count(), 6);
    fx.check_files(&empty, false);
}

async fn bad_writes_are_not_stored(make: fn(u64) -> Fixture) {
    let fx = make(MIB);
    let (good, bytes) = blob(1000, 1);

    // Right size, wrong content.
    let other = data(1000, 2);
    let err = put(fx.s(), &good, other).await.unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
    // Too short: refused at finish.
    let err = put(fx.s(), &good, bytes.slice(..999)).await.unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
    // Too long: refused at the write that goes past the size, and at finish.
    let mut w = fx.s().begin_write(&good).await.unwrap();
    w.write(bytes.clone()).await.unwrap();
    assert!(matches!(
        w.write(Bytes::from_static(b"x")).await,
        Err(BlobError::DigestMismatch { .. })
    ));
    assert!(matches!(
        w.finish().await,
        Err(BlobError::DigestMismatch { .. })
    ));
    // Right content, announced with the wrong size.
    let wrong_size = Digest {
        hash: good.hash.clone(),
        size_bytes: 1001,
    };
    let mut padded = bytes.to_vec();
    padded.push(0);
    assert!(matches!(
        put(fx.s(), &wrong_size, Bytes::from(padded)).await,
        Err(BlobError::DigestMismatch { .. })
    ));
    let wrong_size_small = Digest {
        hash: good.hash.clone(),
        size_bytes: 999,
    };
    assert!(put(fx.s(), &wrong_size_small, bytes.clone()).await.is_err());

    assert_eq!(
        fx.missing(&[&good, &wrong_size, &wrong_size_small]).await,
        vec![good.clone(), wrong_size.clone(), wrong_size_small.clone()]
    );
    for d in [&good, &wrong_size, &wrong_size_small] {
        fx.check_files(d, false);
        assert!(matches!(
            fx.s().read(d, 0, 0).await,
            Err(BlobError::NotFound(_))
        ));
    }
    assert_eq!(fx.count(), 0);
    assert_eq!(fx.used(), 0);

    // The empty blob with data.
    assert!(matches!(
        put(fx.s(), &Digest::empty(), Bytes::from_static(b"x")).await,
        Err(BlobError::DigestMismatch { .. })
    ));

    // Digests no blob can have: refused, never touching the file system.
    for bad in [
        Digest {
            hash: "../../../../etc/passwd".into(),
            size_bytes: 4,
        },
        Digest {
            hash: good.hash.to_uppercase(),
            size_bytes: 1000,
        },
        Digest {
            hash: good.hash.clone(),
            size_bytes: -1,
        },
    ] {
        assert!(fx.s().begin_write(&bad).await.is_err(), "{bad}");
        assert_eq!(fx.missing(&[&bad]).await, vec![bad.clone()]);
        assert!(matches!(
            fx.s().read(&bad, 0, 0).await,
            Err(BlobError::NotFound(_))
        ));
    }

    // Larger than the whole store.
    let (huge, _) = blob(10, 3);
    let huge = Digest {
        size_bytes: MIB as i64 + 1,
        ..huge
    };
    assert!(matches!(
        fx.s().begin_write(&huge).await,
        Err(BlobError::TooLarge(_))
    ));

    // After all that, the right bytes still go in.
    put(fx.s(), &good, bytes.clone()).await.unwrap();
    assert_eq!(get(fx.s(), &good, MIB).await.unwrap(), bytes);
    fx.check_files(&good, true);
}

async fn offsets_and_limits(make: fn(u64) -> Fixture) {
    let fx = make(16 * MIB);
    let len = 2 * READ_CHUNK + 1234;
    let (digest, bytes) = blob(len, 7);
    put(fx.s(), &digest, bytes.clone()).await.unwrap();
    let size = len as u64;
    let mid = READ_CHUNK as u64 + 5;
    let slice = |a: u64, b: u64| bytes[a as usize..b as usize].to_vec();
    let cases = [
        // (offset, limit, expected range)
        (0, 0, (0, size)),
        (0, 10, (0, 10)),
        (0, size, (0, size)),
        (0, size + 1, (0, size)),
        (mid, 0, (mid, size)),
        (mid, 100, (mid, mid + 100)),
        (mid, u64::MAX, (mid, size)),
        (size - 1, 0, (size - 1, size)),
        (size - 1, 5, (size - 1, size)),
        (size, 0, (size, size)),
        (size, 10, (size, size)),
    ];
    for (offset, limit, (a, b)) in cases {
        let got = read_range(fx.s(), &digest, offset, limit).await.unwrap();
        assert_eq!(got, slice(a, b), "offset {offset} limit {limit}");
    }
    for offset in [size + 1, u64::MAX] {
        assert!(matches!(
            fx.s().read(&digest, offset, 0).await,
            Err(BlobError::OffsetOutOfRange { .. })
        ));
    }

    let empty = Digest::empty();
    assert!(read_range(fx.s(), &empty, 0, 0).await.unwrap().is_empty());
    assert!(read_range(fx.s(), &empty, 0, 10).await.unwrap().is_empty());
    assert!(matches!(
        fx.s().read(&empty, 1, 0).await,
        Err(BlobError::OffsetOutOfRange { .. })
    ));
}

async fn find_missing_is_exact(make: fn(u64) -> Fixture) {
    let fx = make(MIB);
    let (a, a_bytes) = blob(10, 1);
    let (b, _) = blob(10, 2);
    let (c, c_bytes) = blob(20, 3);
    let (d, _) = blob(30, 4);
    put(fx.s(), &a, a_bytes).await.unwrap();
    put(fx.s(), &c, c_bytes).await.unwrap();
    let empty = Digest::empty();
    // Same hash as `a`, other size: another blob.
    let a_other_size = Digest {
        size_bytes: 11,
        ..a.clone()
    };
    assert_eq!(
        fx.missing(&[&a, &b, &empty, &c, &d, &a_other_size, &b])
            .await,
        vec![b.clone(), d.clone(), a_other_size.clone(), b.clone()]
    );
    assert!(fx.missing(&[]).await.is_empty());
    assert!(fx.missing(&[&empty, &a, &c]).await.is_empty());
}

async fn concurrent_writers_of_one_blob(make: fn(u64) -> Fixture) {
    let fx = make(16 * MIB);
    let (digest, bytes) = blob(3 * MIB as usize + 100, 5);
    let chunk = 256 * 1024;

    // Two writers interleaving chunks, finishing at the same time.
    let mut w1 = fx.s().begin_write(&digest).await.unwrap();
    let mut w2 = fx.s().begin_write(&digest).await.unwrap();
    for start in (0..bytes.len()).step_by(chunk) {
        let piece = bytes.slice(start..(start + chunk).min(bytes.len()));
        w1.write(piece.clone()).await.unwrap();
        w2.write(piece).await.unwrap();
    }
    let (r1, r2) = tokio::join!(w1.finish(), w2.finish());
    r1.unwrap();
    r2.unwrap();
    assert_eq!(get(fx.s(), &digest, 16 * MIB).await.unwrap(), bytes);
    assert_eq!(fx.count(), 1);
    assert_eq!(fx.used(), bytes.len() as u64);
    fx.check_files(&digest, true);

    // A writer that started before the blob was stored, finishing after: also a success.
    let (digest2, bytes2) = blob(100_000, 6);
    let mut late = fx.s().begin_write(&digest2).await.unwrap();
    late.write(bytes2.slice(..50_000)).await.unwrap();
    put(fx.s(), &digest2, bytes2.clone()).await.unwrap();
    late.write(bytes2.slice(50_000..)).await.unwrap();
    late.finish().await.unwrap();
    assert_eq!(get(fx.s(), &digest2, MIB).await.unwrap(), bytes2);

    // A bad writer beside a good one: only the good one's bytes count.
    let (digest3, bytes3) = blob(70_000, 8);
    let mut good = fx.s().begin_write(&digest3).await.unwrap();
    let mut bad = fx.s().begin_write(&digest3).await.unwrap();
    bad.write(data(70_000, 9)).await.unwrap();
    good.write(bytes3.clone()).await.unwrap();
    assert!(bad.finish().await.is_err());
    good.finish().await.unwrap();
    assert_eq!(get(fx.s(), &digest3, MIB).await.unwrap(), bytes3);
    assert_eq!(fx.count(), 3);
    fx.check_files(&digest3, true);
}

async fn eviction_is_lru_and_bounded(make: fn(u64) -> Fixture) {
    let fx = make(100);
    let blobs: Vec<(Digest, Bytes)> = (0..6).map(|i| blob(30, 100 + i)).collect();
    let d = |i: usize| &blobs[i].0;
    for (digest, bytes) in &blobs[..3] {
        put(fx.s(), digest, bytes.clone()).await.unwrap();
    }
    assert_eq!(fx.used(), 90);
    // Use 0 (find_missing) and 1 (read): 2 becomes the least recently used.
    assert!(fx.has(d(0)).await);
    read_range(fx.s(), d(1), 0, 0).await.unwrap();
    put(fx.s(), d(3), blobs[3].1.clone()).await.unwrap();
    assert_eq!(
        fx.missing(&[d(0), d(1), d(2), d(3)]).await,
        vec![d(2).clone()]
    );
    assert_eq!(fx.used(), 90);
    fx.check_files(d(2), false);
    fx.check_files(d(3), true);
    // Order of use is now 0, 1, 3 (the find_missing above touched them in that order).
    put(fx.s(), d(4), blobs[4].1.clone()).await.unwrap();
    assert_eq!(fx.missing(&[d(0)]).await, vec![d(0).clone()]);
    put(fx.s(), d(5), blobs[5].1.clone()).await.unwrap();
    assert_eq!(
        fx.missing(&[d(0), d(1), d(2), d(3), d(4), d(5)]).await,
        vec![d(0).clone(), d(1).clone(), d(2).clone()]
    );
    assert!(fx.used() <= 100);
    assert_eq!(fx.count(), 3);
    // An evicted blob can be stored again.
    put(fx.s(), d(0), blobs[0].1.clone()).await.unwrap();
    assert_eq!(get(fx.s(), d(0), 100).await.unwrap(), blobs[0].1);
    assert!(fx.used() <= 100);
}

async fn reading_pins_a_blob(make: fn(u64) -> Fixture) {
    let fx = make(100);
    let blobs: Vec<(Digest, Bytes)> = (0..8).map(|i| blob(30, 200 + i)).collect();
    let d = |i: usize| &blobs[i].0;
    for (digest, bytes) in &blobs[..3] {
        put(fx.s(), digest, bytes.clone()).await.unwrap();
    }
    // 0 is the least recently used, but a stream on it is open.
    let mut stream = fx.s().read(d(0), 0, 0).await.unwrap();
    assert!(fx.has(d(1)).await);
    assert!(fx.has(d(2)).await);
    for (i, (digest, bytes)) in blobs.iter().enumerate().take(6).skip(3) {
        put(fx.s(), digest, bytes.clone()).await.unwrap();
        assert!(fx.has(d(0)).await, "pinned blob evicted by blob {i}");
        assert!(fx.used() <= 100);
    }
    assert_eq!(
        fx.missing(&[d(0), d(1), d(2), d(3), d(4), d(5)]).await,
        vec![d(1).clone(), d(2).clone(), d(3).clone()]
    );
    // The open stream still yields the blob.
    let mut got = Vec::new();
    while let Some(chunk) = next_chunk(&mut stream).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, blobs[0].1);
    fx.check_files(d(0), true);

    // Once dropped, 0 ranks by its last use (the find_missing above, where it came before 4
    // and 5) and goes first.
    drop(stream);
    put(fx.s(), d(6), blobs[6].1.clone()).await.unwrap();
    assert_eq!(
        fx.missing(&[d(0), d(4), d(5), d(6)]).await,
        vec![d(0).clone()]
    );
    fx.check_files(d(0), false);
    assert!(fx.used() <= 100);
}

async fn pins_can_hold_the_store_over_capacity(make: fn(u64) -> Fixture) {
    let fx = make(100);
    let (a, a_bytes) = blob(60, 300);
    let (b, b_bytes) = blob(60, 301);
    put(fx.s(), &a, a_bytes).await.unwrap();
    let stream = fx.s().read(&a, 10, 5).await.unwrap();
    // b does not fit beside a, but a is being read and b was just written: both stay for now.
    put(fx.s(), &b, b_bytes.clone()).await.unwrap();
    assert!(fx.missing(&[&a, &b]).await.is_empty());
    assert_eq!(fx.used(), 120);
    // Releasing a's pin brings the store back within bounds. The last use of a (the read started
    // before b was written) is older than b's, so a goes.
    drop(stream);
    assert_eq!(fx.used(), 60);
    assert_eq!(fx.missing(&[&a, &b]).await, vec![a.clone()]);
    assert_eq!(get(fx.s(), &b, 100).await.unwrap(), b_bytes);
}

async fn large_blob_in_chunks(make: fn(u64) -> Fixture) {
    let fx = make(128 * MIB);
    let (digest, bytes) = blob(64 * MIB as usize, 64);
    put_chunked(fx.s(), &digest, &bytes, MIB as usize)
        .await
        .unwrap();
    let mut stream = fx.s().read(&digest, 0, 0).await.unwrap();
    let mut pos = 0;
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk.unwrap();
        assert!(
            chunk[..] == bytes[pos..pos + chunk.len()],
            "differs at {pos}"
        );
        pos += chunk.len();
    }
    assert_eq!(pos, bytes.len());
    fx.check_files(&digest, true);
}

// ---- The file store's own behaviour ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_restart_keeps_blobs_and_recency() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let blobs: Vec<(Digest, Bytes)> = (0..4).map(|i| blob(1000 + i, 400 + i as u64)).collect();
    {
        let store = FsBlobStore::open(dir.clone(), 10_000).unwrap();
        for (digest, bytes) in &blobs[..3] {
            put(&store, digest, bytes.clone()).await.unwrap();
        }
    }
    // Make 1 the oldest and 0 the newest, as lazily refreshed modification times would.
    let now = SystemTime::now();
    for (i, age) in [(1, 3000), (2, 2000), (0, 1000)] {
        let file = std::fs::File::open(blob_file(&dir, &blobs[i].0)).unwrap();
        file.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    // Reopen with room for three: adding a fourth evicts the oldest, 1.
    let store = FsBlobStore::open(dir.clone(), 4000).unwrap();
    assert_eq!(store.blob_count(), 3);
    assert_eq!(store.used_bytes(), 1000 + 1001 + 1002);
    for (digest, bytes) in &blobs[..3] {
        assert_eq!(&get(&store, digest, 10_000).await.unwrap(), bytes);
    }
    // Reading refreshed the modification time of a blob last touched long ago.
    let mtime = std::fs::metadata(blob_file(&dir, &blobs[1].0))
        .unwrap()
        .modified()
        .unwrap();
    assert!(mtime > now - Duration::from_secs(60));
    drop(store);
    // The reads above all refreshed, so set the order again: 2 oldest.
    for (i, age) in [(2, 3000), (0, 2000), (1, 1000)] {
        let file = std::fs::File::open(blob_file(&dir, &blobs[i].0)).unwrap();
        file.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    let store = FsBlobStore::open(dir.clone(), 4000).unwrap();
    put(&store, &blobs[3].0, blobs[3].1.clone()).await.unwrap();
    // Checked by reading, which refreshes modification times before it returns (find_missing
    // does it in the background, which would race with the test setting them below).
    for (i, (digest, bytes)) in blobs.iter().enumerate() {
        match get(&store, digest, 10_000).await {
            Ok(got) => assert!(i != 2 && got == bytes, "blob {i}"),
            Err(BlobError::NotFound(_)) => assert_eq!(i, 2),
            Err(e) => panic!("blob {i}: {e}"),
        }
    }
    assert!(!blob_file(&dir, &blobs[2].0).exists());

    // Reopening with a smaller capacity evicts the oldest down to it.
    drop(store);
    for (i, age) in [(0, 3000), (1, 2000), (3, 1000)] {
        let file = std::fs::File::open(blob_file(&dir, &blobs[i].0)).unwrap();
        file.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    let store = FsBlobStore::open(dir.clone(), 2000).unwrap();
    let all: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(
        store.find_missing(&all).await.unwrap(),
        vec![blobs[0].0.clone(), blobs[1].0.clone(), blobs[2].0.clone()]
    );
    assert!(!blob_file(&dir, &blobs[0].0).exists());
    assert_eq!(store.used_bytes(), 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_open_cleans_temp_files_and_damaged_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (digest, bytes) = blob(5000, 500);
    {
        let store = FsBlobStore::open(dir.clone(), MIB).unwrap();
        put(&store, &digest, bytes.clone()).await.unwrap();
    }
    // What a crash can leave: writes in progress, evicted blobs not yet unlinked.
    std::fs::write(dir.join("tmp/w-0"), b"partial").unwrap();
    std::fs::write(dir.join("tmp/x-1"), b"evicted").unwrap();
    std::fs::create_dir_all(dir.join("tmp/nested")).unwrap();
    std::fs::write(dir.join("tmp/nested/x"), b"x").unwrap();
    // A truncated blob (we never make one, but the disk might) and a stranger.
    let (damaged, damaged_bytes) = blob(100, 502);
    let damaged_path = blob_file(&dir, &damaged);
    std::fs::create_dir_all(damaged_path.parent().unwrap()).unwrap();
    std::fs::write(&damaged_path, &damaged_bytes[..50]).unwrap();
    let stranger = dir.join(&digest.hash[..2]).join("README");
    std::fs::write(&stranger, b"not a blob").unwrap();

    let store = FsBlobStore::open(dir.clone(), MIB).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!damaged_path.exists());
    assert!(stranger.exists());
    assert_eq!(
        store
            .find_missing(&[digest.clone(), damaged.clone()])
            .await
            .unwrap(),
        vec![damaged]
    );
    assert_eq!(get(&store, &digest, MIB).await.unwrap(), bytes);
    assert_eq!(store.blob_count(), 1);
}

/// Larger than the file store's write batch, so a writer given this much has a temp file.
const WRITE_BATCH_TEST: usize = 1024 * 1024 + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_directory_has_one_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let first = FsBlobStore::open(tmp.path().to_path_buf(), MIB).unwrap();
    assert!(matches!(
        FsBlobStore::open(tmp.path().to_path_buf(), MIB),
        Err(BlobError::Lock(e)) if e.is_in_use()
    ));
    drop(first);
    FsBlobStore::open(tmp.path().to_path_buf(), MIB).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_vanished_file_is_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), MIB).unwrap();
    let (digest, bytes) = blob(100, 600);
    put(&store, &digest, bytes.clone()).await.unwrap();
    std::fs::remove_file(blob_file(tmp.path(), &digest)).unwrap();
    assert!(matches!(
        store.read(&digest, 0, 0).await,
        Err(BlobError::NotFound(_))
    ));
    assert_eq!(store.blob_count(), 0);
    assert_eq!(store.used_bytes(), 0);
    put(&store, &digest, bytes.clone()).await.unwrap();
    assert_eq!(get(&store, &digest, MIB).await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_abandoned_writer_removes_its_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), 4 * MIB).unwrap();
    let (digest, bytes) = blob(2 * MIB as usize, 700);
    let mut w = store.begin_write(&digest).await.unwrap();
    w.write(bytes.slice(..WRITE_BATCH_TEST)).await.unwrap();
    let tmp_dir = tmp.path().join("tmp");
    assert_eq!(std::fs::read_dir(&tmp_dir).unwrap().count(), 1);
    drop(w);
    // Removal runs on the blocking pool; wait for it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&tmp_dir).unwrap().count() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "temp file not removed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        store
            .find_missing(std::slice::from_ref(&digest))
            .await
            .unwrap(),
        vec![digest]
    );
}

/// Flips one bit of the byte at `at` of a file, in place (as damage on disk would).
fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
}

/// Every item of a read stream, data and errors, in order.
async fn drain(
    store: &dyn BlobStore,
    digest: &Digest,
    offset: u64,
) -> Vec<Result<Bytes, BlobError>> {
    let mut stream = store.read(digest, offset, 0).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = next_chunk(&mut stream).await {
        items.push(item);
    }
    items
}

/// After a blob was found corrupt: reported missing, its file gone, and a new upload of the right
/// bytes makes it readable again.
async fn check_dropped_then_repaired(
    store: &FsBlobStore,
    dir: &Path,
    digest: &Digest,
    bytes: &Bytes,
) {
    assert_eq!(
        store
            .find_missing(std::slice::from_ref(digest))
            .await
            .unwrap(),
        vec![digest.clone()]
    );
    assert!(!blob_file(dir, digest).exists());
    put(store, digest, bytes.clone()).await.unwrap();
    assert_eq!(get(store, digest, 64 * MIB).await.unwrap(), *bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_small_corrupt_blob_is_refused_before_any_byte_and_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), 64 * MIB).unwrap();
    for (i, len) in [1, 1000, fs::CHECK_FIRST_BYTES as usize]
        .into_iter()
        .enumerate()
    {
        let (digest, bytes) = blob(len, 800 + i as u64);
        put(&store, &digest, bytes.clone()).await.unwrap();
        // Whole or in part, nothing is served.
        for (offset, limit) in [(0, 0), (0, 1), (len as u64 / 2, 0)] {
            flip_byte(&blob_file(tmp.path(), &digest), len as u64 / 2);
            assert!(
                matches!(
                    store.read(&digest, offset, limit).await,
                    Err(BlobError::Corrupt { .. })
                ),
                "{len} bytes from {offset}"
            );
            check_dropped_then_repaired(&store, tmp.path(), &digest, &bytes).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_large_corrupt_blob_ends_its_stream_with_an_error_and_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), 64 * MIB).unwrap();
    let len = 3 * fs::CHECK_FIRST_BYTES as usize + 17;
    let (digest, bytes) = blob(len, 900);
    put(&store, &digest, bytes.clone()).await.unwrap();
    // Intact, a whole read ends cleanly.
    assert!(drain(&store, &digest, 0).await.iter().all(Result::is_ok));

    flip_byte(&blob_file(tmp.path(), &digest), len as u64 - 5);
    let items = drain(&store, &digest, 0).await;
    let (last, data) = items.split_last().unwrap();
    assert!(data.iter().all(Result::is_ok));
    assert!(
        matches!(last, Err(BlobError::Corrupt { .. })),
        "the stream must not end cleanly: {last:?}"
    );
    check_dropped_then_repaired(&store, tmp.path(), &digest, &bytes).await;

    // A range read checks the whole blob before serving any of it.
    flip_byte(&blob_file(tmp.path(), &digest), 3);
    assert!(matches!(
        store.read(&digest, len as u64 - 100, 0).await,
        Err(BlobError::Corrupt { .. })
    ));
    check_dropped_then_repaired(&store, tmp.path(), &digest, &bytes).await;
    // Intact, it is served.
    let tail = read_range(&store, &digest, len as u64 - 100, 0)
        .await
        .unwrap();
    assert_eq!(tail, bytes[len - 100..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_find_missing_or_corrupt_checks_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), 64 * MIB).unwrap();
    let (good, good_bytes) = blob(2 * fs::CHECK_FIRST_BYTES as usize, 1000);
    let (flipped, flipped_bytes) = blob(5000, 1001);
    let (cut, cut_bytes) = blob(5000, 1002);
    let (absent, _) = blob(10, 1003);
    for (digest, bytes) in [
        (&good, &good_bytes),
        (&flipped, &flipped_bytes),
        (&cut, &cut_bytes),
    ] {
        put(&store, digest, bytes.clone()).await.unwrap();
    }
    flip_byte(&blob_file(tmp.path(), &flipped), 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(blob_file(tmp.path(), &cut))
        .unwrap()
        .set_len(4999)
        .unwrap();
    let all = [
        good.clone(),
        flipped.clone(),
        cut.clone(),
        absent.clone(),
        Digest::empty(),
    ];
    // The plain lookup trusts the index; the checking one does not.
    assert_eq!(
        store.find_missing(&all).await.unwrap(),
        vec![absent.clone()]
    );
    let mut unusable = store.find_missing_or_corrupt(&all).await.unwrap();
    unusable.sort();
    let mut expected = vec![flipped.clone(), cut.clone(), absent.clone()];
    expected.sort();
    assert_eq!(unusable, expected);
    // The damaged ones were dropped.
    let mut missing = store.find_missing(&all).await.unwrap();
    missing.sort();
    assert_eq!(missing, expected);
    assert_eq!(store.blob_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_upload_over_a_corrupt_copy_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(tmp.path().to_path_buf(), 64 * MIB).unwrap();
    let (digest, bytes) = blob(5000, 1100);
    put(&store, &digest, bytes.clone()).await.unwrap();
    flip_byte(&blob_file(tmp.path(), &digest), 10);
    // Nothing read it since, so the store still believes it holds it; the upload is stored all
    // the same.
    put(&store, &digest, bytes.clone()).await.unwrap();
    assert_eq!(get(&store, &digest, MIB).await.unwrap(), bytes);
    assert_eq!(store.blob_count(), 1);
    assert_eq!(store.used_bytes(), 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_corruption_is_caught_after_a_restart_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let len = 2 * fs::CHECK_FIRST_BYTES as usize + 3;
    let (digest, bytes) = blob(len, 1200);
    let reopen = || FsBlobStore::open(dir.clone(), 64 * MIB).unwrap();
    let ends_corrupt = |items: Vec<Result<Bytes, BlobError>>| {
        matches!(items.last(), Some(Err(BlobError::Corrupt { .. })))
    };
    put(&reopen(), &digest, bytes.clone()).await.unwrap();

    // Reopened, the store knows nothing of the bytes but their digest, which catches the damage.
    let store = reopen();
    flip_byte(&blob_file(&dir, &digest), 1);
    assert!(ends_corrupt(drain(&store, &digest, 0).await));
    check_dropped_then_repaired(&store, &dir, &digest, &bytes).await;
    drop(store);

    // A good read by the digest teaches the store the bytes' checksum, which catches it too.
    let store = reopen();
    assert!(drain(&store, &digest, 0).await.iter().all(Result::is_ok));
    flip_byte(&blob_file(&dir, &digest), len as u64 - 1);
    assert!(ends_corrupt(drain(&store, &digest, 0).await));
    check_dropped_then_repaired(&store, &dir, &digest, &bytes).await;
}
