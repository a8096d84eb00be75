//! Big blobs (issue #13): one blob of 256 MiB, 1 GiB and 2 GiB uploaded to and downloaded from a
//! real apiserver (release build, filesystem CAS) through ByteStream, streamed on both sides, with
//! the apiserver's memory watched: a fresh apiserver per size, its resident set at rest and its
//! peak (the kernel's high-water mark) after the upload and the download. The client generates
//! and checks the bytes as they stream, so it holds no blob either. Goal: peak < 100 MB above
//! the idle apiserver. Plots peak memory and throughput by size.
//!
//! Run by `make bench-scale`; under `cargo test` it runs 1 and 4 MiB.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
use scoot_proto::bytestream::{ReadRequest, WriteRequest};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;
/// Bytes per WriteRequest, as Bazel sends them.
const CHUNK: usize = MIB;

/// The `index`th chunk of a pseudo-random blob of `len` bytes: the same bytes every time, made
/// on the fly so that no side holds the whole blob.
fn chunk(len: usize, index: usize) -> Bytes {
    let start = index * CHUNK;
    let size = CHUNK.min(len - start);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    Bytes::from(data)
}

fn hash_of(len: usize) -> String {
    let mut hasher = Sha256::new();
    for i in 0..len.div_ceil(CHUNK) {
        hasher.update(chunk(len, i));
    }
    hex::encode(hasher.finalize())
}

/// A process's resident set now and its peak so far, in MB.
fn rss_now_and_peak(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn upload(channel: Channel, hash: &str, len: usize) -> Duration {
    let name = format!("uploads/{}/blobs/{hash}/{len}", uuid::Uuid::new_v4());
    let chunks = (0..len.div_ceil(CHUNK)).map(move |i| WriteRequest {
        resource_name: if i == 0 { name.clone() } else { String::new() },
        write_offset: (i * CHUNK) as i64,
        finish_write: (i + 1) * CHUNK >= len,
        data: chunk(len, i),
    });
    let started = Instant::now();
    let response = ByteStreamClient::new(channel)
        .write(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, len as i64);
    started.elapsed()
}

async fn download(channel: Channel, hash: &str, len: usize) -> Duration {
    let started = Instant::now();
    let mut stream = ByteStreamClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .read(ReadRequest {
            resource_name: format!("blobs/{hash}/{len}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut hasher = Sha256::new();
    let mut received = 0;
    while let Some(part) = stream.message().await.unwrap() {
        received += part.data.len();
        hasher.update(&part.data);
    }
    let took = started.elapsed();
    assert_eq!(received, len);
    assert_eq!(
        hex::encode(hasher.finalize()),
        hash,
        "the blob came back changed"
    );
    took
}

struct Point {
    mib: usize,
    idle_mb: f64,
    after_upload_mb: f64,
    peak_mb: f64,
    up: Duration,
    down: Duration,
}

fn measure(runtime: &tokio::runtime::Runtime, len: usize) -> Point {
    let hash = hash_of(len);
    let api = support::ApiServer::start();
    let pid = api.proc.pid().as_raw();
    let channel = runtime.block_on(async {
        Channel::from_shared(format!("http://127.0.0.1:{}", api.grpc_port))
            .unwrap()
            .initial_stream_window_size(8 * MIB as u32)
            .initial_connection_window_size(16 * MIB as u32)
            .connect()
            .await
            .unwrap()
    });
    let (idle_mb, _) = rss_now_and_peak(pid);
    let up = runtime.block_on(upload(channel.clone(), &hash, len));
    let (_, after_upload_mb) = rss_now_and_peak(pid);
    let down = runtime.block_on(download(channel, &hash, len));
    let (_, peak_mb) = rss_now_and_peak(pid);
    Point {
        mib: len / MIB,
        idle_mb,
        after_upload_mb,
        peak_mb,
        up,
        down,
    }
}

fn mb_per_s(mib: usize, took: Duration) -> f64 {
    (mib * MIB) as f64 / 1e6 / took.as_secs_f64()
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let sizes_mib: &[usize] = if benchmarking {
        &[256, 1024, 2048]
    } else {
        &[1, 4]
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let points: Vec<Point> = sizes_mib
        .iter()
        .map(|&mib| measure(&runtime, mib * MIB))
        .collect();
    let rows: Vec<String> = points
        .iter()
        .map(|p| {
            let above = p.peak_mb - p.idle_mb;
            format!(
                "| {} MiB | {:.0} MB/s | {:.0} MB/s | {:.0} MB | {:.0} MB | {:.0} MB | {:.0} MB | {} |",
                p.mib,
                mb_per_s(p.mib, p.up),
                mb_per_s(p.mib, p.down),
                p.idle_mb,
                p.after_upload_mb,
                p.peak_mb,
                above,
                if above < 100.0 { "met" } else { "not met" },
            )
        })
        .collect();
    for row in &rows {
        println!("{row}");
    }
    if !benchmarking {
        return;
    }
    common::plot(
        "docs/bench-big-blobs.svg",
        "One blob through ByteStream: apiserver memory and throughput",
        "blob size (MiB)",
        common::Axis {
            label: "apiserver peak RSS above idle (MB)",
            series: vec![(
                "peak RSS above idle (MB)",
                points
                    .iter()
                    .map(|p| (p.mib as f64, p.peak_mb - p.idle_mb))
                    .collect(),
            )],
        },
        Some(common::Axis {
            label: "MB/s",
            series: vec![
                (
                    "upload (MB/s)",
                    points
                        .iter()
                        .map(|p| (p.mib as f64, mb_per_s(p.mib, p.up)))
                        .collect(),
                ),
                (
                    "download (MB/s)",
                    points
                        .iter()
                        .map(|p| (p.mib as f64, mb_per_s(p.mib, p.down)))
                        .collect(),
                ),
            ],
        }),
    );
    let table = format!(
        "## Big blobs\n\n\
         One blob per size through ByteStream to a fresh apiserver (release build, filesystem \
         CAS, one client connection, 1 MiB WriteRequests; the upload ends fsynced, the download \
         is checked by SHA-256 on the client). The client makes and checks the bytes as they \
         stream. Memory is the apiserver's resident set (`VmRSS` at rest, `VmHWM` after the \
         upload and after the download). Goal: peak < 100 MB above idle.\n\n\
         ![apiserver memory and throughput by blob size](bench-big-blobs.svg)\n\n\
         | blob | upload | download | apiserver idle | peak after upload | peak after download | peak above idle | goal |\n\
         |---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    common::write_benchmark_section("Big blobs", &table);
}
