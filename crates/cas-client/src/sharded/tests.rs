use std::time::{Duration, Instant};

use scoot_blobstore::{BlobError, BlobStore, get, put};

use super::*;
use crate::digest_of;
use crate::testing::TestServer;

/// Three real CAS servers and a sharded client over them.
struct Shards {
    servers: Vec<Option<TestServer>>,
    /// One plain client per server, to see what each holds.
    direct: Vec<CasClient>,
    cas: ShardedCas,
}

async fn shards(n: usize, replicas: usize) -> Shards {
    let mut servers = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..n {
        let server = TestServer::start().await.unwrap();
        direct.push(server.client("").await.unwrap());
        servers.push(Some(server));
    }
    let addrs = servers
        .iter()
        .map(|s| s.as_ref().unwrap().address())
        .collect();
    let spec = ShardSpec::new(addrs, replicas).unwrap();
    let cas = ShardedCas::connect_lazy(&spec, "", &ClientSecurity::default()).unwrap();
    Shards {
        servers,
        direct,
        cas,
    }
}

impl Shards {
    /// Which servers hold `digest`.
    async fn holders(&self, digest: &Digest) -> Vec<usize> {
        let mut holders = Vec::new();
        for (i, client) in self.direct.iter().enumerate() {
            if self.servers[i].is_some()
                && client
                    .find_missing(std::slice::from_ref(digest))
                    .await
                    .unwrap()
                    .is_empty()
            {
                holders.push(i);
            }
        }
        holders
    }

    /// Stops server `i` and waits until it no longer answers.
    async fn kill(&mut self, i: usize) {
        drop(self.servers[i].take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.direct[i]
            .find_missing(&[digest_of(b"probe")])
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "server {i} still answers");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn blobs(count: usize, size: usize) -> Vec<(Digest, Bytes)> {
    (0..count)
        .map(|i| {
            let mut data = format!("blob {i} ").into_bytes();
            data.resize(size.max(data.len()), b'x');
            let data = Bytes::from(data);
            (digest_of(&data), data)
        })
        .collect()
}

#[test]
fn specs_are_checked() {
    let spec = ShardSpec::parse("a:1, b:2,c:3", 3).unwrap();
    assert_eq!(spec.addrs(), ["a:1", "b:2", "c:3"]);
    assert_eq!(
        ShardSpec::parse("a:1,b:2", 3),
        Err(ShardSpecError::TooManyReplicas {
            replicas: 3,
            shards: 2
        })
    );
    let message = ShardSpec::parse("a:1,b:2", 3).unwrap_err().to_string();
    assert!(message.contains("only 2 CAS shards"), "{message}");
    assert_eq!(ShardSpec::parse("", 1), Err(ShardSpecError::Empty));
    assert_eq!(
        ShardSpec::parse("a:1,,b:2", 1),
        Err(ShardSpecError::EmptyAddress)
    );
    assert_eq!(
        ShardSpec::parse("a:1,a:1", 1),
        Err(ShardSpecError::Duplicate("a:1".into()))
    );
    assert_eq!(ShardSpec::parse("a:1", 0), Err(ShardSpecError::NoReplicas));
    assert_eq!(ShardSpec::single("a:1").replicas(), 1);
}

#[tokio::test]
async fn blobs_go_to_their_owners_and_survive_one_shard() {
    let mut shards = shards(3, 2).await;
    let stored = blobs(60, 100);
    shards.cas.upload_blobs(stored.clone()).await.unwrap();
    let ring = Ring::new(shards.cas.spec().addrs());
    for (digest, _) in &stored {
        let mut owners = ring.owners(digest, 2);
        owners.sort();
        assert_eq!(shards.holders(digest).await, owners, "blobs/{digest}");
    }

    shards.kill(0).await;
    let digests: Vec<Digest> = stored.iter().map(|(d, _)| d.clone()).collect();
    let absent = digest_of(b"never uploaded");
    let mut asked = digests.clone();
    asked.push(absent.clone());
    assert_eq!(
        shards.cas.find_missing(&asked).await.unwrap(),
        vec![absent.clone()]
    );
    let read = shards.cas.try_read_blobs(&asked).await.unwrap();
    assert_eq!(read.missing, vec![absent.clone()]);
    assert_eq!(read.blobs, stored);
    let dir = tempfile::tempdir().unwrap();
    for (digest, data) in &stored {
        let path = dir.path().join(&digest.hash);
        shards.cas.download_to_file(digest, &path).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data.as_ref());
    }
    let lost = shards
        .cas
        .download_to_file(&absent, &dir.path().join("absent"))
        .await
        .unwrap_err();
    assert_eq!(lost.code, Code::NotFound, "{lost}");

    // New blobs still get two copies: one owner is down, so the next shard in the order
    // stands in, and they are found.
    let fresh = blobs(90, 30)[60..].to_vec();
    shards.cas.upload_blobs(fresh.clone()).await.unwrap();
    for (digest, _) in &fresh {
        assert_eq!(shards.holders(digest).await, vec![1, 2], "blobs/{digest}");
    }
    let fresh_digests: Vec<Digest> = fresh.iter().map(|(d, _)| d.clone()).collect();
    assert!(
        shards
            .cas
            .find_missing(&fresh_digests)
            .await
            .unwrap()
            .is_empty()
    );

    // With a second shard gone, no blob can get two copies: refused, not half-stored.
    shards.kill(1).await;
    let refused = shards
        .cas
        .upload_blobs(blobs(91, 40)[90..].to_vec())
        .await
        .unwrap_err();
    assert_eq!(refused.code, Code::Unavailable, "{refused}");
    assert!(refused.message.contains("2 are needed"), "{refused}");
}

#[tokio::test]
async fn find_missing_never_reports_present_what_no_answering_owner_has() {
    let shards = shards(3, 2).await;
    let stored = blobs(20, 10);
    // Each blob only on the shard last in its order: not an owner, so it counts as missing
    // (the client uploads it again, to its owners), though a read still finds it.
    let ring = Ring::new(shards.cas.spec().addrs());
    for (digest, data) in &stored {
        let last = ring.preference(digest)[2];
        shards.direct[last]
            .upload_blobs(vec![(digest.clone(), data.clone())])
            .await
            .unwrap();
    }
    let digests: Vec<Digest> = stored.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(shards.cas.find_missing(&digests).await.unwrap(), digests);
    assert_eq!(shards.cas.read_blobs(&digests).await.unwrap(), stored);
}

#[tokio::test]
async fn the_action_cache_is_replicated_and_read_past_a_dead_owner() {
    let mut shards = shards(3, 2).await;
    let action = digest_of(b"an action");
    let result = v2::ActionResult {
        exit_code: 0,
        stdout_digest: Some(crate::to_proto(&digest_of(b"out"))),
        ..Default::default()
    };
    assert_eq!(
        shards.cas.stored_action_result(&action).await.unwrap(),
        None
    );
    shards
        .cas
        .update_action_result(&action, &result)
        .await
        .unwrap();
    let owners = Ring::new(shards.cas.spec().addrs()).owners(&action, 2);
    for (i, client) in shards.direct.iter().enumerate() {
        let held = client.action_result_bytes(&action, true).await.unwrap();
        assert_eq!(held.is_some(), owners.contains(&i), "shard {i}");
    }
    shards.kill(owners[0]).await;
    let bytes = shards
        .cas
        .stored_action_result(&action)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2::ActionResult::decode(bytes).unwrap(), result);
    // Checked, a shard that lacks the stdout blob has no usable result; unchecked it does.
    let survivor = &shards.direct[owners[1]];
    assert_eq!(survivor.get_action_result(&action).await.unwrap(), None);
}

#[tokio::test]
async fn as_a_blob_store_it_spools_verifies_and_reads_past_a_dead_owner() {
    let mut shards = shards(3, 2).await;
    let store = ShardedBlobStore::new(&shards.cas);
    let small = Bytes::from_static(b"small blob");
    let large = Bytes::from(vec![7u8; 3 << 20]);
    for data in [&small, &large] {
        put(&store, &digest_of(data), data.clone()).await.unwrap();
        assert_eq!(shards.holders(&digest_of(data)).await.len(), 2);
    }
    // A write whose bytes are not the blob stores nothing.
    let wrong = digest_of(b"something else");
    let mut writer = store.begin_write(&wrong).await.unwrap();
    writer
        .write(Bytes::from_static(b"something ELSE"))
        .await
        .unwrap();
    assert!(matches!(
        writer.finish().await,
        Err(BlobError::DigestMismatch { .. })
    ));
    assert!(shards.holders(&wrong).await.is_empty());

    let owner = Ring::new(shards.cas.spec().addrs()).owners(&digest_of(&large), 1)[0];
    shards.kill(owner).await;
    assert_eq!(
        get(&store, &digest_of(&large), 4 << 20).await.unwrap(),
        large
    );
    let mut tail = Vec::new();
    let mut stream = store
        .read(&digest_of(&large), (3 << 20) - 5, 0)
        .await
        .unwrap();
    while let Some(chunk) = scoot_blobstore::next_chunk(&mut stream).await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(tail, vec![7u8; 5]);
    assert!(matches!(
        store.read(&digest_of(b"absent"), 0, 0).await,
        Err(BlobError::NotFound(_))
    ));
    let missing = BlobStore::find_missing(&store, &[digest_of(&small), wrong.clone()]).await;
    assert_eq!(missing.unwrap(), vec![wrong]);
}
