//! The CAS sharded over three apiservers (R = 2): a real scheduler and worker route to them,
//! a REAPI client uploads through the scheduler, and one apiserver is SIGKILLed: every blob is
//! still readable, FindMissingBlobs stays exact, actions still run and cached results are found.

use std::collections::BTreeSet;
use std::process::Command;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use scoot_cas_client::{CasClient, Ring, digest_of, encode, to_proto};
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_client::ExecutionClient;
use tonic::transport::Channel;

use crate::reapi::{command, directory, response_of, status_code};
use crate::support::*;

struct Sharded {
    apiservers: Vec<ApiServer>,
    /// The shards as every process is told them.
    addrs: Vec<String>,
    scheduler: Scheduler,
    _worker: Worker,
    runtime: tokio::runtime::Runtime,
    /// A REAPI client of the scheduler, as Bazel is.
    client: CasClient,
    channel: Channel,
    /// One client per apiserver, to see what each holds.
    direct: Vec<CasClient>,
}

impl Sharded {
    fn start() -> Sharded {
        let apiservers: Vec<ApiServer> = (0..3).map(|_| ApiServer::start()).collect();
        let addrs: Vec<String> = apiservers
            .iter()
            .map(|a| format!("127.0.0.1:{}", a.grpc_port))
            .collect();
        let shards = addrs.join(",");
        let flags = ["-cas_shards", shards.as_str(), "-cas_replicas", "2"];
        let scheduler = Scheduler::start_with_flags(&[], serde_json::json!({}), &flags);
        let worker = Worker::start(&flags);
        write_workers(&scheduler.workers_file, &[&worker]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let addr = format!("127.0.0.1:{}", scheduler.grpc_port);
        let client = runtime.block_on(CasClient::connect(&addr, "")).unwrap();
        let channel = runtime.block_on(async {
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        let direct = addrs
            .iter()
            .map(|a| runtime.block_on(CasClient::connect(a, "")).unwrap())
            .collect();
        Sharded {
            apiservers,
            addrs,
            scheduler,
            _worker: worker,
            runtime,
            client,
            channel,
            direct,
        }
    }

    /// The apiservers holding `digest`, by index (the killed one excluded).
    fn holders(&self, digest: &Digest, dead: Option<usize>) -> BTreeSet<usize> {
        (0..self.direct.len())
            .filter(|&i| Some(i) != dead)
            .filter(|&i| {
                self.runtime
                    .block_on(self.direct[i].find_missing(std::slice::from_ref(digest)))
                    .unwrap()
                    .is_empty()
            })
            .collect()
    }

    /// Uploads an action running `script` over one input file; returns its digest.
    fn action(&self, script: &str, input: &str) -> Digest {
        let mut blobs = Vec::new();
        let root = directory(&[("in.txt", input, false)], "", &mut blobs);
        let (command_digest, command_bytes) = encode(&command(script, &["out.txt"], &[]));
        blobs.push((command_digest.clone(), command_bytes));
        let (action_digest, action_bytes) = encode(&v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: Some(to_proto(&root)),
            ..Default::default()
        });
        blobs.push((action_digest.clone(), action_bytes));
        self.runtime
            .block_on(self.client.upload_blobs(blobs))
            .unwrap();
        action_digest
    }

    /// Executes `action` to the end; returns the final ExecuteResponse.
    fn execute(&self, action: &Digest) -> v2::ExecuteResponse {
        let request = v2::ExecuteRequest {
            action_digest: Some(to_proto(action)),
            ..Default::default()
        };
        let ops = self.runtime.block_on(async {
            let mut stream = ExecutionClient::new(self.channel.clone())
                .execute(request)
                .await
                .unwrap()
                .into_inner();
            let mut ops = Vec::new();
            while let Some(op) = tokio::time::timeout(DEADLINE, stream.message())
                .await
                .expect("the operation stream went silent")
                .unwrap()
            {
                ops.push(op);
            }
            ops
        });
        let response = response_of(ops.last().unwrap());
        assert_eq!(status_code(&response), tonic::Code::Ok, "{response:?}");
        response
    }

    fn output(&self, response: &v2::ExecuteResponse) -> String {
        let result = response.result.as_ref().unwrap();
        assert_eq!(result.exit_code, 0, "{result:?}");
        let digest = result.output_files[0].digest.as_ref().unwrap();
        let digest = Digest::new(digest.hash.clone(), digest.size_bytes).unwrap();
        let read = self.runtime.block_on(self.client.read_blobs(&[digest]));
        String::from_utf8(read.unwrap()[0].1.to_vec()).unwrap()
    }
}

#[test]
fn blobs_results_and_execution_survive_a_killed_apiserver() {
    let mut cluster = Sharded::start();
    let ring = Ring::new(&cluster.addrs);

    // Small blobs (batched) and a large one (ByteStream, spooled by the scheduler).
    let mut blobs: Vec<(Digest, Bytes)> = (0..40)
        .map(|i| {
            let data = Bytes::from(format!("blob number {i}"));
            (digest_of(&data), data)
        })
        .collect();
    let large = Bytes::from(vec![b'L'; 3 << 20]);
    blobs.push((digest_of(&large), large));
    cluster
        .runtime
        .block_on(cluster.client.upload_blobs(blobs.clone()))
        .unwrap();
    // Each on exactly its two owners.
    for (digest, _) in &blobs {
        let owners: BTreeSet<usize> = ring.owners(digest, 2).into_iter().collect();
        assert_eq!(cluster.holders(digest, None), owners, "blobs/{digest}");
    }

    let action = cluster.action("tr a-z A-Z < in.txt > out.txt", "before the kill\n");
    let first = cluster.execute(&action);
    assert!(!first.cached_result);
    assert_eq!(cluster.output(&first), "BEFORE THE KILL\n");

    // Kill the first owner of the action's cache entry, so that lookups must fall back.
    let victim = ring.owners(&action, 1)[0];
    let apiserver = &mut cluster.apiservers[victim];
    killpg(apiserver.proc.pid(), Signal::SIGKILL).unwrap();
    apiserver.proc.child.wait().unwrap();

    // Every blob is still readable through the scheduler.
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    let read = cluster
        .runtime
        .block_on(cluster.client.read_blobs(&digests))
        .unwrap();
    assert_eq!(read, blobs);
    // FindMissingBlobs is exact: nothing stored is reported missing, the absent blob is.
    let absent = digest_of(b"never uploaded anywhere");
    let mut asked = digests.clone();
    asked.push(absent.clone());
    let missing = cluster
        .runtime
        .block_on(cluster.client.find_missing(&asked))
        .unwrap();
    assert_eq!(missing, vec![absent]);

    // The cached result is found (on the other owner) with all its blobs.
    let cached = cluster.execute(&action);
    assert!(cached.cached_result, "{cached:?}");
    assert_eq!(cluster.output(&cached), "BEFORE THE KILL\n");

    // A new action runs: its inputs and outputs go to the two live shards, and its result is
    // cached there.
    let fresh = cluster.action("tr a-z A-Z < in.txt > out.txt", "after the kill\n");
    let ran = cluster.execute(&fresh);
    assert!(!ran.cached_result);
    assert_eq!(cluster.output(&ran), "AFTER THE KILL\n");
    let output = ran.result.as_ref().unwrap().output_files[0]
        .digest
        .clone()
        .unwrap();
    let output = Digest::new(output.hash, output.size_bytes).unwrap();
    assert_eq!(cluster.holders(&output, Some(victim)).len(), 2);
    let again = cluster.execute(&fresh);
    assert!(again.cached_result, "{again:?}");
    assert_eq!(cluster.output(&again), "AFTER THE KILL\n");
    cluster.scheduler.proc.assert_running();
}

#[test]
fn more_replicas_than_shards_is_refused_with_the_reason() {
    for binary in [
        env!("CARGO_BIN_EXE_scheduler"),
        env!("CARGO_BIN_EXE_workerserver"),
    ] {
        let output = Command::new(binary)
            .args([
                "-cas_shards",
                "127.0.0.1:1,127.0.0.1:2",
                "-cas_replicas",
                "3",
            ])
            .args(["-thrift_addr", "127.0.0.1:0", "-http_addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary}: {stderr}");
        assert!(
            stderr.contains("3 replicas of each blob asked for, but only 2 CAS shards given"),
            "{binary}: {stderr}"
        );
        // A replica count alone says nothing about where the shards are.
        let output = Command::new(binary)
            .args(["-cas_replicas", "2", "-thrift_addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary}: {stderr}");
        assert!(stderr.contains("--cas_shards"), "{binary}: {stderr}");
    }
    // The scheduler keeps nothing of a sharded CAS: a directory for it is a mistake.
    let output = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .args([
            "-cas_shards",
            "127.0.0.1:1",
            "-cas_replicas",
            "1",
            "-cas_dir",
            "/tmp",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("-cas_shards keeps the CAS and action cache on the shards; drop -cas_dir"),
        "{stderr}"
    );
}
