//! The client against the real `scoot_cas_services` services on 127.0.0.1.

use bytes::Bytes;
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use tonic::Code;

use crate::testing::TestServer;
use crate::*;

fn blob(data: impl Into<Bytes>) -> (Digest, Bytes) {
    let data = data.into();
    (digest_of(&data), data)
}

/// 3 MiB that do not repeat every chunk, so a misplaced chunk changes the digest.
fn large_blob() -> (Digest, Bytes) {
    blob(
        (0..3 * 1024 * 1024u32)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn absent(n: u8) -> Digest {
    digest_of(&[n; 17])
}

#[tokio::test]
async fn blobs_round_trip_small_large_and_empty() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("").await.unwrap();
    let small = blob("alpha");
    let large = large_blob();
    let empty = blob(Bytes::new());
    assert!(large.0.size_bytes as u64 > MAX_BATCH_BLOB_BYTES);

    let all = [small.0.clone(), large.0.clone(), empty.0.clone()];
    assert_eq!(
        client.find_missing(&all).await.unwrap(),
        vec![small.0.clone(), large.0.clone()],
        "the empty blob is never missing"
    );
    client
        .upload_blobs(vec![
            small.clone(),
            large.clone(),
            empty.clone(),
            small.clone(),
        ])
        .await
        .unwrap();
    assert!(client.find_missing(&all).await.unwrap().is_empty());

    let read = client
        .read_blobs(&[
            large.0.clone(),
            small.0.clone(),
            empty.0.clone(),
            small.0.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![large.clone(), small.clone(), empty, small.clone()]
    );

    // Uploading again is a no-op (FindMissingBlobs says nothing is needed).
    client.upload_blobs(vec![large.clone()]).await.unwrap();
}

#[tokio::test]
async fn missing_blobs_are_not_found_by_name() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("").await.unwrap();
    let present = blob("here");
    client.upload_blobs(vec![present.clone()]).await.unwrap();
    let (small_absent, large_absent) = (
        absent(1),
        Digest::new(absent(2).hash, 5 * 1024 * 1024).unwrap(),
    );

    let e = client
        .read_blobs(&[present.0.clone(), small_absent.clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert!(e.message.contains(&format!("blobs/{small_absent}")), "{e}");
    let e = client
        .read_blobs(std::slice::from_ref(&large_absent))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert!(e.message.contains(&format!("blobs/{large_absent}")), "{e}");

    let read = client
        .try_read_blobs(&[
            small_absent.clone(),
            present.0.clone(),
            large_absent.clone(),
            small_absent.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(read.blobs, vec![present]);
    assert_eq!(read.missing, vec![small_absent.clone(), large_absent]);

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("blob");
    let e = client
        .download_to_file(&small_absent, &target)
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert!(e.message.contains(&format!("blobs/{small_absent}")), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, not even a temporary one, is left behind"
    );
}

#[tokio::test]
async fn files_are_downloaded_and_uploaded_by_stream() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let large = large_blob();
    let small = blob("small file");
    std::fs::write(dir.path().join("large"), &large.1).unwrap();
    std::fs::write(dir.path().join("small"), &small.1).unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    assert_eq!(digest_of_file(&dir.path().join("large")).unwrap(), large.0);

    client
        .upload_files(vec![
            (large.0.clone(), dir.path().join("large")),
            (small.0.clone(), dir.path().join("small")),
            (Digest::empty(), dir.path().join("empty")),
        ])
        .await
        .unwrap();
    assert!(
        client
            .find_missing(&[large.0.clone(), small.0.clone()])
            .await
            .unwrap()
            .is_empty()
    );

    for (digest, data) in [large, small, blob(Bytes::new())] {
        let target = dir.path().join(format!("copy-{}", digest.size_bytes));
        client.download_to_file(&digest, &target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".part")), "{names:?}");
}

#[tokio::test]
async fn a_file_that_does_not_match_its_digest_is_refused() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let large = large_blob();
    // Shorter than its digest says: the stream runs out of data.
    std::fs::write(&path, &large.1[..1024 * 1024 + 10]).unwrap();
    let e = client
        .upload_files(vec![(large.0.clone(), path.clone())])
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    // Right size, wrong bytes: the server verifies and refuses.
    let mut wrong = large.1.to_vec();
    wrong[12345] ^= 1;
    std::fs::write(&path, &wrong).unwrap();
    let e = client
        .upload_files(vec![(large.0.clone(), path)])
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    // Data shorter than its digest says, in memory.
    let e = client
        .upload_blobs(vec![(large.0.clone(), large.1.slice(..2 << 20))])
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(
        client
            .find_missing(std::slice::from_ref(&large.0))
            .await
            .unwrap(),
        vec![large.0]
    );
}

#[tokio::test]
async fn the_action_cache_round_trips_per_instance() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("main").await.unwrap();
    let action = digest_of(b"an action");
    assert_eq!(client.get_action_result(&action).await.unwrap(), None);
    let stdout = blob("hello\n");
    client.upload_blobs(vec![stdout.clone()]).await.unwrap();
    let result = v2::ActionResult {
        exit_code: 0,
        stdout_digest: Some(to_proto(&stdout.0)),
        ..Default::default()
    };
    client.update_action_result(&action, &result).await.unwrap();
    assert_eq!(
        client.get_action_result(&action).await.unwrap(),
        Some(result)
    );
    assert_eq!(
        client
            .with_instance("other")
            .get_action_result(&action)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn addresses_with_and_without_a_scheme_connect() {
    let server = TestServer::start().await.unwrap();
    for addr in [server.address(), format!("http://{}", server.address())] {
        let client = CasClient::connect(&addr, "").await.unwrap();
        assert!(client.find_missing(&[absent(3)]).await.unwrap().len() == 1);
    }
    assert_eq!(
        CasClient::connect("bad address", "")
            .await
            .unwrap_err()
            .code,
        Code::InvalidArgument
    );
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = CasClient::connect(&format!("127.0.0.1:{port}"), "")
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    let lazy =
        CasClient::connect_lazy(&format!("127.0.0.1:{port}"), "", &Default::default()).unwrap();
    assert_eq!(
        lazy.find_missing(&[absent(4)]).await.unwrap_err().code,
        Code::Unavailable
    );
}

#[test]
fn batches_respect_the_byte_and_count_limits() {
    let sized = |n: i64| Digest::new(absent(0).hash, n).unwrap();
    let mib = 1 << 20;
    let digests = [
        sized(mib),
        sized(mib),
        sized(mib),
        sized(mib),
        sized(1),
        sized(mib),
    ];
    let groups = batch_groups(&digests);
    let sizes: Vec<Vec<i64>> = groups
        .iter()
        .map(|g| g.iter().map(|d| d.size_bytes).collect())
        .collect();
    assert_eq!(sizes, vec![vec![mib; 4], vec![1, mib]]);
    let tiny = vec![sized(1); MAX_BATCH_BLOBS + 1];
    assert_eq!(
        batch_groups(&tiny).iter().map(Vec::len).collect::<Vec<_>>(),
        vec![MAX_BATCH_BLOBS, 1]
    );
}

#[test]
fn wrong_data_is_data_loss() {
    let (digest, _) = blob("right");
    assert!(digest::check_blob(&digest, b"right").is_ok());
    assert_eq!(
        digest::check_blob(&digest, b"wrong").unwrap_err().code,
        Code::DataLoss
    );
}

#[test]
fn stream_deadlines_grow_with_size() {
    assert_eq!(stream_deadline(0), std::time::Duration::from_secs(60));
    assert_eq!(
        stream_deadline(1_000_000_000),
        std::time::Duration::from_secs(160)
    );
    let day = std::time::Duration::from_secs(24 * 60 * 60);
    assert_eq!(stream_deadline(9_223_372_036_854_775_000), day);
    assert_eq!(stream_deadline(u64::MAX), day);
}

#[tokio::test]
async fn a_read_of_an_absurd_size_is_an_error_not_a_panic() {
    let server = TestServer::start().await.unwrap();
    let client = server.client("").await.unwrap();
    let digest = Digest::new("ab".repeat(32), 9_223_372_036_854_775_000).unwrap();
    let err = client.read_blobs(&[digest]).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
}
