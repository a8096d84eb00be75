//! Remote execution through the scheduler's gRPC port: a real scheduler and real workers, driven
//! by a tonic client the way Bazel drives them (upload, Execute, read the stream, fetch outputs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use prost::Message;
use scoot_cas_client::{CasClient, digest_of, encode, to_proto};
use scoot_core::Digest;
use scoot_proto::bytestream::ReadRequest;
use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
use scoot_proto::longrunning::operations_client::OperationsClient;
use scoot_proto::longrunning::{CancelOperationRequest, GetOperationRequest, Operation, operation};
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_client::ExecutionClient;
use tonic::transport::Channel;

use crate::support::*;

/// A scheduler serving REAPI and workers pointed at it.
struct Cluster {
    scheduler: Scheduler,
    workers: Vec<Worker>,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    cas: CasClient,
}

impl Cluster {
    fn start(workers: usize) -> Cluster {
        Cluster::start_with(workers, serde_json::json!({}))
    }

    fn start_with(workers: usize, scheduler_config: serde_json::Value) -> Cluster {
        let scheduler = Scheduler::start(&[], scheduler_config);
        let mut cluster_workers = Vec::new();
        for _ in 0..workers {
            cluster_workers.push(Cluster::worker(&scheduler));
        }
        let refs: Vec<&Worker> = cluster_workers.iter().collect();
        write_workers(&scheduler.workers_file, &refs);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let addr = format!("127.0.0.1:{}", scheduler.grpc_port);
        let cas = runtime.block_on(CasClient::connect(&addr, "")).unwrap();
        let channel = runtime.block_on(async {
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        Cluster {
            scheduler,
            workers: cluster_workers,
            runtime,
            channel,
            cas,
        }
    }

    fn worker(scheduler: &Scheduler) -> Worker {
        Worker::start(&["-cas_addr", &format!("127.0.0.1:{}", scheduler.grpc_port)])
    }

    fn upload(&self, blobs: Vec<(Digest, Bytes)>) {
        self.runtime.block_on(self.cas.upload_blobs(blobs)).unwrap();
    }

    fn read(&self, digest: &v2::Digest) -> Bytes {
        let digest = Digest::new(digest.hash.clone(), digest.size_bytes).unwrap();
        let mut blobs = self
            .runtime
            .block_on(self.cas.read_blobs(std::slice::from_ref(&digest)))
            .unwrap();
        blobs.pop().unwrap().1
    }

    /// Uploads a Command, an input root of `files` (path → (content, executable)) and the
    /// Action; returns the Action's digest.
    fn action(
        &self,
        command: v2::Command,
        files: &[(&str, &str, bool)],
        timeout: Option<Duration>,
    ) -> Digest {
        self.action_with(command, files, timeout, false)
    }

    fn action_with(
        &self,
        command: v2::Command,
        files: &[(&str, &str, bool)],
        timeout: Option<Duration>,
        do_not_cache: bool,
    ) -> Digest {
        let mut blobs = Vec::new();
        let root = directory(files, "", &mut blobs);
        let (command_digest, command_bytes) = encode(&command);
        blobs.push((command_digest.clone(), command_bytes));
        let action = v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: Some(to_proto(&root)),
            timeout: timeout.map(|t| scoot_proto::prost_types::Duration {
                seconds: t.as_secs() as i64,
                nanos: 0,
            }),
            do_not_cache,
            ..Default::default()
        };
        let (action_digest, action_bytes) = encode(&action);
        blobs.push((action_digest.clone(), action_bytes));
        self.upload(blobs);
        action_digest
    }

    /// Uploads `blobs`, the input root `root` and a Command and Action over them (for trees the
    /// regular helper cannot express); returns the Action's digest.
    fn raw_action(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        root: &v2::Directory,
        script: &str,
    ) -> Digest {
        self.action_on(blobs, root, &command(script, &[], &[]))
    }

    fn execute_stream(
        &self,
        action: &Digest,
        skip_cache: bool,
    ) -> Result<tonic::Streaming<Operation>, tonic::Status> {
        let request = v2::ExecuteRequest {
            action_digest: Some(to_proto(action)),
            skip_cache_lookup: skip_cache,
            ..Default::default()
        };
        self.runtime.block_on(async {
            ExecutionClient::new(self.channel.clone())
                .execute(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    /// Every message of a stream until it ends (within the deadline).
    fn drain(&self, mut stream: tonic::Streaming<Operation>) -> Vec<Operation> {
        self.runtime.block_on(async {
            let mut ops = Vec::new();
            loop {
                let next = tokio::time::timeout(DEADLINE, stream.message())
                    .await
                    .expect("the operation stream went silent")
                    .expect("the operation stream failed");
                match next {
                    Some(op) => ops.push(op),
                    None => return ops,
                }
            }
        })
    }

    fn execute(&self, action: &Digest, skip_cache: bool) -> Vec<Operation> {
        let stream = self.execute_stream(action, skip_cache).unwrap();
        self.drain(stream)
    }

    fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel.clone())
    }
}

pub(crate) fn command(script: &str, outputs: &[&str], dirs: &[&str]) -> v2::Command {
    v2::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![
            v2::command::EnvironmentVariable {
                name: "ONLY".into(),
                value: "this".into(),
            },
            v2::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/bin:/usr/bin".into(),
            },
        ],
        output_files: outputs.iter().map(|s| s.to_string()).collect(),
        output_directories: dirs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The Directory (and its blobs) holding those of `files` under `prefix`.
pub(crate) fn directory(
    files: &[(&str, &str, bool)],
    prefix: &str,
    blobs: &mut Vec<(Digest, Bytes)>,
) -> Digest {
    let mut dir = v2::Directory::default();
    let mut subdirs = BTreeMap::new();
    for (path, content, executable) in files {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((sub, _)) => {
                subdirs.insert(sub.to_string(), ());
            }
            None => {
                let data = Bytes::from(content.to_string());
                let digest = digest_of(&data);
                blobs.push((digest.clone(), data));
                dir.files.push(v2::FileNode {
                    name: rest.to_string(),
                    digest: Some(to_proto(&digest)),
                    is_executable: *executable,
                    ..Default::default()
                });
            }
        }
    }
    for sub in subdirs.keys() {
        let digest = directory(files, &format!("{prefix}{sub}/"), blobs);
        dir.directories.push(v2::DirectoryNode {
            name: sub.clone(),
            digest: Some(to_proto(&digest)),
        });
    }
    dir.files.sort_by(|a, b| a.name.cmp(&b.name));
    let (digest, data) = encode(&dir);
    blobs.push((digest.clone(), data));
    digest
}

fn metadata(op: &Operation) -> v2::ExecuteOperationMetadata {
    v2::ExecuteOperationMetadata::decode(op.metadata.as_ref().unwrap().value.as_slice()).unwrap()
}

fn stage(op: &Operation) -> v2::execution_stage::Value {
    v2::execution_stage::Value::try_from(metadata(op).stage).unwrap()
}

pub(crate) fn response_of(op: &Operation) -> v2::ExecuteResponse {
    assert!(op.done, "{op:?}");
    match &op.result {
        Some(operation::Result::Response(any)) => {
            v2::ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("no ExecuteResponse in {other:?}"),
    }
}

pub(crate) fn status_code(response: &v2::ExecuteResponse) -> tonic::Code {
    tonic::Code::from_i32(response.status.as_ref().map_or(0, |s| s.code))
}

#[test]
fn executes_an_action_and_serves_its_outputs_and_cached_result() {
    let cluster = Cluster::start(1);
    let script = "mkdir -p out outdir/sub && ./tool.sh in/words.txt > out/upper.txt \
                  && ln -s upper.txt out/link && cp in/words.txt outdir/sub/copy.txt \
                  && ln -s sub outdir/alias && env > out/env.txt \
                  && echo to-stdout && echo to-stderr >&2";
    let action = cluster.action(
        command(
            script,
            &["out/env.txt", "out/link", "out/upper.txt"],
            &["outdir"],
        ),
        &[
            ("in/words.txt", "alpha beta\n", false),
            ("tool.sh", "#!/bin/sh\ntr a-z A-Z < \"$1\"\n", true),
        ],
        None,
    );

    let ops = cluster.execute(&action, false);
    // QUEUED first, unless the worker took the action before the stream began.
    assert!(
        matches!(
            stage(&ops[0]),
            v2::execution_stage::Value::Queued | v2::execution_stage::Value::Executing
        ),
        "{ops:?}"
    );
    let last = ops.last().unwrap();
    assert_eq!(stage(last), v2::execution_stage::Value::Completed);
    assert_eq!(metadata(last).action_digest, Some(to_proto(&action)));
    let response = response_of(last);
    assert_eq!(status_code(&response), tonic::Code::Ok, "{response:?}");
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0, "{result:?}");

    let files: BTreeMap<&str, &v2::OutputFile> = result
        .output_files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    assert_eq!(
        cluster.read(files["out/upper.txt"].digest.as_ref().unwrap()),
        "ALPHA BETA\n"
    );
    // Exactly the Command's environment (sh itself adds PWD and the like, nothing of the
    // worker's own environment).
    let env = cluster.read(files["out/env.txt"].digest.as_ref().unwrap());
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.contains("ONLY=this\n") && env.contains("PATH=/bin:/usr/bin\n"),
        "{env}"
    );
    assert!(!env.contains("HOME=") && !env.contains("RUST"), "{env}");
    // The symlink is reported in the new and the legacy field.
    let link = v2::OutputSymlink {
        path: "out/link".into(),
        target: "upper.txt".into(),
        ..Default::default()
    };
    assert!(
        result
            .output_symlinks
            .iter()
            .any(|s| s.path == link.path && s.target == link.target),
        "{result:?}"
    );
    assert!(
        result
            .output_file_symlinks
            .iter()
            .any(|s| s.path == link.path && s.target == link.target),
        "{result:?}"
    );
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "to-stdout\n"
    );
    assert_eq!(
        cluster.read(result.stderr_digest.as_ref().unwrap()),
        "to-stderr\n"
    );

    let outdir = &result.output_directories[0];
    assert_eq!(outdir.path, "outdir");
    let tree = v2::Tree::decode(cluster.read(outdir.tree_digest.as_ref().unwrap())).unwrap();
    let root = tree.root.unwrap();
    assert_eq!(root.directories[0].name, "sub");
    assert_eq!(root.symlinks[0].name, "alias");
    assert_eq!(tree.children[0].files[0].name, "copy.txt");
    let timings = result.execution_metadata.unwrap();
    for stamp in [
        &timings.queued_timestamp,
        &timings.worker_start_timestamp,
        &timings.input_fetch_start_timestamp,
        &timings.execution_start_timestamp,
        &timings.execution_completed_timestamp,
        &timings.output_upload_completed_timestamp,
        &timings.worker_completed_timestamp,
    ] {
        assert!(stamp.is_some(), "{timings:?}");
    }

    // The result was cached: the same action is not run again...
    let again = cluster.execute(&action, false);
    assert_eq!(again.len(), 1);
    let cached = response_of(&again[0]);
    assert!(cached.cached_result);
    assert_eq!(cached.result.unwrap().output_files.len(), 2);
    // ...unless the client asks for that.
    let rerun = response_of(cluster.execute(&action, true).last().unwrap());
    assert!(!rerun.cached_result);

    // GetOperation still knows the first execution.
    let name = last.name.clone();
    let fetched = cluster
        .runtime
        .block_on(
            cluster
                .operations()
                .get_operation(GetOperationRequest { name }),
        )
        .unwrap()
        .into_inner();
    assert!(fetched.done);
}

#[test]
fn refuses_actions_with_missing_inputs_bad_names_or_escaping_outputs() {
    let mut cluster = Cluster::start(1);

    // An input that was never uploaded.
    let ghost = digest_of(b"never uploaded");
    let root = v2::Directory {
        files: vec![v2::FileNode {
            name: "ghost.txt".into(),
            digest: Some(to_proto(&ghost)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let action_digest = cluster.raw_action(Vec::new(), &root, "cat ghost.txt");
    let response = response_of(cluster.execute(&action_digest, false).last().unwrap());
    assert_eq!(status_code(&response), tonic::Code::FailedPrecondition);
    let details = &response.status.unwrap().details;
    let failure =
        scoot_proto::rpc::PreconditionFailure::decode(details[0].value.as_slice()).unwrap();
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "MISSING");
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", ghost.hash, ghost.size_bytes)
    );

    // An action that was never uploaded at all.
    let response = response_of(
        cluster
            .execute(&digest_of(b"no such action"), false)
            .last()
            .unwrap(),
    );
    assert_eq!(status_code(&response), tonic::Code::FailedPrecondition);

    // Input names that would leave the input root.
    for bad in ["..", "a/b", ""] {
        let data = Bytes::from_static(b"x");
        let digest = digest_of(&data);
        let root = v2::Directory {
            files: vec![v2::FileNode {
                name: bad.into(),
                digest: Some(to_proto(&digest)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let action_digest = cluster.raw_action(vec![(digest, data)], &root, &format!("true {bad}"));
        let err = cluster.execute_stream(&action_digest, false).err();
        assert_eq!(
            err.as_ref().map(tonic::Status::code),
            Some(tonic::Code::InvalidArgument),
            "input name {bad:?}: {err:?}"
        );
    }

    // Symlinks in the input root that lead out of it.
    for (target, depth) in [("/etc", 0), ("../outside", 0), ("../../outside", 1)] {
        let mut blobs = Vec::new();
        let mut dir = v2::Directory {
            symlinks: vec![v2::SymlinkNode {
                name: "link".into(),
                target: target.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        for _ in 0..depth {
            let (digest, data) = encode(&dir);
            blobs.push((digest.clone(), data));
            dir = v2::Directory {
                directories: vec![v2::DirectoryNode {
                    name: "sub".into(),
                    digest: Some(to_proto(&digest)),
                }],
                ..Default::default()
            };
        }
        let action_digest = cluster.raw_action(blobs, &dir, &format!("true {target}"));
        let err = cluster.execute_stream(&action_digest, false).err();
        assert_eq!(
            err.as_ref().map(tonic::Status::code),
            Some(tonic::Code::InvalidArgument),
            "symlink to {target:?}: {err:?}"
        );
    }

    // An action that makes an absolute symlink among its outputs.
    let absolute = cluster.action(command("ln -s /etc out", &["out"], &[]), &[], None);
    let response = response_of(cluster.execute(&absolute, false).last().unwrap());
    assert_eq!(
        status_code(&response),
        tonic::Code::FailedPrecondition,
        "{response:?}"
    );

    // Outputs outside the exec root.
    for bad in ["../escape.txt", "/etc/passwd", "a/../../b"] {
        let action = cluster.action(command("true", &[bad], &[]), &[], None);
        let err = cluster.execute_stream(&action, false).err();
        assert_eq!(
            err.as_ref().map(tonic::Status::code),
            Some(tonic::Code::InvalidArgument),
            "output path {bad:?}: {err:?}"
        );
    }
    cluster.scheduler.proc.assert_running();
}

#[test]
fn failures_and_timeouts_are_reported_and_not_cached() {
    let cluster = Cluster::start(1);
    let failing = cluster.action(command("echo oops >&2; exit 3", &[], &[]), &[], None);
    let response = response_of(cluster.execute(&failing, false).last().unwrap());
    assert_eq!(status_code(&response), tonic::Code::Ok);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 3);
    assert_eq!(
        cluster.read(result.stderr_digest.as_ref().unwrap()),
        "oops\n"
    );
    let cached = cluster
        .runtime
        .block_on(cluster.cas.get_action_result(&failing))
        .unwrap();
    assert!(cached.is_none(), "a failed action must not be cached");

    let slow = cluster.action(
        command("sleep 30", &[], &[]),
        &[],
        Some(Duration::from_secs(1)),
    );
    let response = response_of(cluster.execute(&slow, false).last().unwrap());
    assert_eq!(
        status_code(&response),
        tonic::Code::DeadlineExceeded,
        "{response:?}"
    );
}

#[test]
fn wait_execution_after_a_dropped_stream_merging_and_cancel() {
    let cluster = Cluster::start(2);
    let action = cluster.action(command("sleep 2; echo finished", &[], &[]), &[], None);
    let mut stream = cluster.execute_stream(&action, true).unwrap();
    let first = cluster.runtime.block_on(stream.message()).unwrap().unwrap();
    let name = first.name.clone();
    // An identical request while it runs joins the same execution.
    let mut twin = cluster.execute_stream(&action, true).unwrap();
    let twin_first = cluster.runtime.block_on(twin.message()).unwrap().unwrap();
    assert_eq!(twin_first.name, name);
    // Actions that must not be cached are never merged.
    let mut uncached = command("sleep 1", &[], &[]);
    uncached.arguments.push("uncached".into());
    let uncached = cluster.action_with(uncached, &[], None, true);
    let names: Vec<String> = (0..2)
        .map(|_| {
            let mut stream = cluster.execute_stream(&uncached, true).unwrap();
            cluster
                .runtime
                .block_on(stream.message())
                .unwrap()
                .unwrap()
                .name
        })
        .collect();
    assert_ne!(names[0], names[1]);
    drop(stream);
    drop(twin);

    let waited = cluster.runtime.block_on(async {
        ExecutionClient::new(cluster.channel.clone())
            .wait_execution(v2::WaitExecutionRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner()
    });
    let ops = cluster.drain(waited);
    let result = response_of(ops.last().unwrap()).result.unwrap();
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "finished\n"
    );

    let unknown = cluster.runtime.block_on(async {
        ExecutionClient::new(cluster.channel.clone())
            .wait_execution(v2::WaitExecutionRequest {
                name: "no-such-operation".into(),
            })
            .await
    });
    assert_eq!(unknown.err().map(|s| s.code()), Some(tonic::Code::NotFound));

    // Cancelling kills the job; the operation ends with CANCELLED.
    let long = cluster.action(command("sleep 60", &[], &[]), &[], None);
    let mut stream = cluster.execute_stream(&long, true).unwrap();
    let name = cluster
        .runtime
        .block_on(stream.message())
        .unwrap()
        .unwrap()
        .name;
    cluster
        .runtime
        .block_on(
            cluster
                .operations()
                .cancel_operation(CancelOperationRequest { name: name.clone() }),
        )
        .unwrap();
    let ops = cluster.drain(stream);
    let last = ops.last().unwrap();
    assert!(last.done);
    match &last.result {
        Some(operation::Result::Error(status)) => {
            assert_eq!(status.code, tonic::Code::Cancelled as i32, "{status:?}")
        }
        other => panic!("a cancelled operation ends with an error, not {other:?}"),
    }
}

#[test]
fn a_worker_dying_mid_action_gives_a_clear_error_and_the_scheduler_keeps_serving() {
    let mut cluster = Cluster::start(1);
    let action = cluster.action(command("sleep 60", &[], &[]), &[], None);
    let mut stream = cluster.execute_stream(&action, true).unwrap();
    let executing = cluster.runtime.block_on(async {
        loop {
            let op = tokio::time::timeout(DEADLINE, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if stage(&op) == v2::execution_stage::Value::Executing {
                return op;
            }
        }
    });
    let mut dead = cluster.workers.pop().unwrap();
    killpg(dead.proc.pid(), Signal::SIGKILL).unwrap();
    let _ = dead.proc.child.wait();
    let ops = cluster.drain(stream);
    let response = response_of(ops.last().unwrap());
    assert_eq!(
        status_code(&response),
        tonic::Code::Unavailable,
        "{} ended with {response:?}",
        executing.name
    );
    assert!(
        response
            .status
            .unwrap()
            .message
            .contains("could not be run"),
        "the error says what happened"
    );

    // A new worker joins and the next action runs.
    let worker = Cluster::worker(&cluster.scheduler);
    write_workers(&cluster.scheduler.workers_file, &[&worker]);
    cluster.workers.push(worker);
    let quick = cluster.action(command("echo alive", &[], &[]), &[], None);
    let result = response_of_last(&cluster.execute(&quick, true));
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "alive\n"
    );
    cluster.scheduler.proc.assert_running();
}

fn response_of_last(ops: &[Operation]) -> v2::ActionResult {
    response_of(ops.last().unwrap()).result.unwrap()
}

#[test]
fn an_execution_survives_a_scheduler_restart() {
    // No workers yet: the action stays queued across the restart.
    let mut cluster = Cluster::start(0);
    let action = cluster.action(command("echo recovered", &[], &[]), &[], None);
    let mut stream = cluster.execute_stream(&action, false).unwrap();
    let first = cluster.runtime.block_on(stream.message()).unwrap().unwrap();
    assert_eq!(stage(&first), v2::execution_stage::Value::Queued);
    drop(stream);

    // The saga log and the CAS are kept; the ports are new.
    cluster.scheduler = cluster.scheduler.kill_and_restart(serde_json::json!({}));
    let addr = format!("127.0.0.1:{}", cluster.scheduler.grpc_port);
    cluster.channel = cluster.runtime.block_on(async {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    cluster.cas = cluster
        .runtime
        .block_on(CasClient::connect(&addr, ""))
        .unwrap();
    let waited = cluster
        .runtime
        .block_on(async {
            ExecutionClient::new(cluster.channel.clone())
                .wait_execution(v2::WaitExecutionRequest {
                    name: first.name.clone(),
                })
                .await
        })
        .unwrap()
        .into_inner();
    let worker = Cluster::worker(&cluster.scheduler);
    write_workers(&cluster.scheduler.workers_file, &[&worker]);
    let ops = cluster.drain(waited);
    assert!(ops.iter().all(|op| op.name == first.name));
    let result = response_of(ops.last().unwrap()).result.unwrap();
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "recovered\n"
    );
}

#[test]
fn bazel_concurrency_is_not_capped_by_the_per_requestor_job_limit() {
    // Bazel's --jobs bounds its own concurrency; Scoot's job limit must not refuse actions.
    let cluster = Cluster::start_with(0, serde_json::json!({"MaxJobsPerRequestor": 1}));
    for n in 0..3 {
        let action = cluster.action(command(&format!("echo {n}"), &[], &[]), &[], None);
        let mut stream = cluster.execute_stream(&action, false).unwrap();
        let first = cluster.runtime.block_on(stream.message()).unwrap().unwrap();
        assert!(!first.done, "action {n} was refused: {first:?}");
        assert_eq!(stage(&first), v2::execution_stage::Value::Queued);
    }
}

#[test]
fn scoot_jdk_symlink_platform_property_links_the_workers_java_home() {
    let mut cluster = Cluster::start(0);
    let worker = Worker::start_with_env(
        &[
            "-cas_addr",
            &format!("127.0.0.1:{}", cluster.scheduler.grpc_port),
        ],
        &[("JAVA_HOME", "/opt/scoot-test-jdk")],
    );
    write_workers(&cluster.scheduler.workers_file, &[&worker]);
    cluster.workers.push(worker);
    let mut with_jdk = command("readlink tools/jdk", &[], &[]);
    with_jdk.platform = Some(v2::Platform {
        properties: vec![v2::platform::Property {
            name: "JDK_SYMLINK".into(),
            value: "tools/jdk".into(),
        }],
    });
    let action = cluster.action(with_jdk, &[], None);
    let result = response_of_last(&cluster.execute(&action, false));
    assert_eq!(result.exit_code, 0, "{result:?}");
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "/opt/scoot-test-jdk\n"
    );
}

#[test]
fn a_timed_out_action_leaves_no_setsid_process_behind() {
    use crate::task_processes::{Reaper, read_pid};
    use std::os::unix::fs::PermissionsExt;

    // Unsandboxed, so the action can tell the test its sleeper's pid through the host's /tmp
    // (a sandboxed run's end kills its whole pid namespace: sandbox::no_process_of_...).
    let mut cluster = Cluster::start(0);
    let worker = Worker::start(&[
        "-cas_addr",
        &format!("127.0.0.1:{}", cluster.scheduler.grpc_port),
        "-sandbox",
        "off",
    ]);
    write_workers(&cluster.scheduler.workers_file, &[&worker]);
    cluster.workers.push(worker);
    let scratch = tempfile::tempdir().unwrap();
    // Actions may run as an unprivileged user.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pid_file = scratch.path().join("sleeper.pid");
    let script = format!(
        "setsid sleep 300 & echo $! > {}; sleep 100",
        pid_file.display()
    );
    let slow = cluster.action(
        command(&script, &[], &[]),
        &[],
        Some(Duration::from_secs(1)),
    );
    let response = response_of(cluster.execute(&slow, false).last().unwrap());
    assert_eq!(
        status_code(&response),
        tonic::Code::DeadlineExceeded,
        "{response:?}"
    );
    let sleeper = read_pid(&pid_file);
    let _reaper = Reaper(Some(sleeper));
    poll("the setsid sleeper to be gone", || {
        (!process_alive(sleeper)).then_some(())
    });
}

#[test]
fn an_action_cannot_change_the_cached_inputs_of_later_actions() {
    let cluster = Cluster::start(1);
    let input = ("input.txt", "original\n", false);
    // Overwrite the input's first byte in place, restoring its mode and modification time (to
    // the nanosecond, through a reference file), so that only the change time tells.
    let tamper = "touch -r input.txt .stamp; chmod 644 input.txt; \
                  printf X | dd of=input.txt bs=1 count=1 conv=notrunc; \
                  chmod 444 input.txt; touch -m -r .stamp input.txt; cat input.txt";
    let tamper = cluster.action(command(tamper, &[], &[]), &[input], None);
    let tampered = response_of(cluster.execute(&tamper, false).last().unwrap());
    assert_eq!(status_code(&tampered), tonic::Code::Ok, "{tampered:?}");

    let expected = digest_of(b"original\n");
    for i in 0..3 {
        // Distinct commands: each one runs, on the worker whose cache held the input.
        let reader = cluster.action(
            command(
                &format!("cat input.txt > out.txt; echo {i}"),
                &["out.txt"],
                &[],
            ),
            &[input],
            None,
        );
        let response = response_of(cluster.execute(&reader, false).last().unwrap());
        let result = response.result.expect("a result");
        assert_eq!(result.exit_code, 0, "{result:?}");
        let out = &result.output_files[0];
        assert_eq!(
            cluster.read(out.digest.as_ref().unwrap()),
            "original\n",
            "reader {i} saw a changed input"
        );
        let cached = cluster
            .runtime
            .block_on(cluster.cas.get_action_result(&reader))
            .unwrap()
            .expect("the reader's result is cached");
        assert_eq!(
            cached.output_files[0].digest,
            Some(to_proto(&expected)),
            "reader {i}'s cached result"
        );
    }
}

/// The first answer to a ByteStream Read of `resource_name` at `addr`: OK or the error's code.
async fn read_answer(addr: &str, resource_name: String) -> tonic::Code {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ReadRequest {
        resource_name,
        read_offset: 0,
        read_limit: 0,
    };
    match ByteStreamClient::new(channel).read(request).await {
        Ok(response) => match response.into_inner().message().await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        },
        Err(status) => status.code(),
    }
}

#[test]
fn a_read_claiming_an_absurd_size_is_refused_and_the_scheduler_keeps_serving() {
    let api = ApiServer::start();
    let fallback = format!("127.0.0.1:{}", api.grpc_port);
    let mut sched =
        Scheduler::start_with_flags(&[], serde_json::json!({}), &["-cas_fallback", &fallback]);
    let scheduler = format!("127.0.0.1:{}", sched.grpc_port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let absurd = format!("blobs/{}/9223372036854775000", "ab".repeat(32));
    // Missing near, so the scheduler asks its fallback, with a deadline grown from the size.
    for addr in [&scheduler, &fallback] {
        let code = runtime.block_on(read_answer(addr, absurd.clone()));
        assert!(
            matches!(code, tonic::Code::NotFound | tonic::Code::InvalidArgument),
            "{addr}: {code:?}"
        );
    }
    sched.proc.assert_running();
    let data = Bytes::from_static(b"still serving");
    let digest = digest_of(&data);
    let cas = runtime
        .block_on(CasClient::connect(&scheduler, ""))
        .unwrap();
    runtime
        .block_on(cas.upload_blobs(vec![(digest.clone(), data.clone())]))
        .unwrap();
    let read = runtime.block_on(cas.read_blobs(&[digest])).unwrap();
    assert_eq!(read[0].1, data);
}

#[test]
fn an_apiserver_restarted_on_rotted_blobs_answers_data_loss_and_takes_them_again() {
    let api = ApiServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // One blob small enough to be checked before it is sent, one streamed in many messages.
    let blobs: Vec<Bytes> = [100_usize, 5 << 20]
        .iter()
        .map(|&len| Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()))
        .collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| digest_of(b)).collect();
    let upload = |addr: String| {
        let blobs: Vec<(Digest, Bytes)> = digests.iter().cloned().zip(blobs.clone()).collect();
        runtime.block_on(async move {
            let cas = CasClient::connect(&addr, "").await.unwrap();
            cas.upload_blobs(blobs).await.unwrap();
        })
    };
    upload(format!("127.0.0.1:{}", api.grpc_port));

    // After a restart no CRC is known, so the first reads are checked against the digest itself.
    let api = api.restart();
    for d in &digests {
        let path = api
            .store_dir
            .path()
            .join("cas")
            .join(&d.hash[..2])
            .join(format!("{}-{}", d.hash, d.size_bytes));
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    }
    let addr = format!("127.0.0.1:{}", api.grpc_port);
    runtime.block_on(async {
        let cas = CasClient::connect(&addr, "").await.unwrap();
        for d in &digests {
            let error = cas.read_blobs(std::slice::from_ref(d)).await.unwrap_err();
            assert_eq!(error.code, tonic::Code::DataLoss, "{d}: {error}");
        }
        assert_eq!(
            cas.find_missing(&digests).await.unwrap(),
            digests,
            "rotted blobs are dropped"
        );
    });
    upload(addr.clone());
    runtime.block_on(async {
        let cas = CasClient::connect(&addr, "").await.unwrap();
        let read = cas.read_blobs(&digests).await.unwrap();
        let read: Vec<Bytes> = read.into_iter().map(|(_, data)| data).collect();
        assert_eq!(read, blobs);
    });
}

/// A Command run by busybox's `sh` from `PATH`, asking for `platform`.
fn platform_command(script: &str, outputs: &[&str], platform: &[(&str, &str)]) -> v2::Command {
    let mut properties: Vec<v2::platform::Property> = platform
        .iter()
        .map(|(name, value)| v2::platform::Property {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect();
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    v2::Command {
        arguments: vec!["sh".into(), "-c".into(), script.into()],
        environment_variables: vec![v2::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/bin".into(),
        }],
        output_paths: outputs.iter().map(|s| s.to_string()).collect(),
        platform: Some(v2::Platform { properties }),
        ..Default::default()
    }
}

/// A sysroot of Debian's busybox-static: `bin/busybox` and `bin/sh` linking to it.
fn busybox_sysroot(blobs: &mut Vec<(Digest, Bytes)>) -> v2::Directory {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("busybox is needed (Debian's busybox-static; make test-deps installs it)");
    let data = Bytes::from(busybox);
    let digest = digest_of(&data);
    blobs.push((digest.clone(), data));
    let bin = v2::Directory {
        files: vec![v2::FileNode {
            name: "busybox".into(),
            digest: Some(to_proto(&digest)),
            is_executable: true,
            ..Default::default()
        }],
        symlinks: vec![v2::SymlinkNode {
            name: "sh".into(),
            target: "busybox".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (bin_digest, bin_bytes) = encode(&bin);
    blobs.push((bin_digest.clone(), bin_bytes));
    v2::Directory {
        directories: vec![v2::DirectoryNode {
            name: "bin".into(),
            digest: Some(to_proto(&bin_digest)),
        }],
        ..Default::default()
    }
}

impl Cluster {
    /// Uploads `command` over the input root `root` (with `blobs`) and its Action.
    fn action_on(
        &self,
        mut blobs: Vec<(Digest, Bytes)>,
        root: &v2::Directory,
        command: &v2::Command,
    ) -> Digest {
        let (root_digest, root_bytes) = encode(root);
        blobs.push((root_digest.clone(), root_bytes));
        let (command_digest, command_bytes) = encode(command);
        blobs.push((command_digest.clone(), command_bytes));
        let (action_digest, action_bytes) = encode(&v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: Some(to_proto(&root_digest)),
            ..Default::default()
        });
        blobs.push((action_digest.clone(), action_bytes));
        self.upload(blobs);
        action_digest
    }
}

#[test]
fn a_rootfs_action_on_a_busybox_sysroot_writes_its_output_at_an_absolute_path() {
    let cluster = Cluster::start(1);
    let mut blobs = Vec::new();
    let root = busybox_sysroot(&mut blobs);
    let command = platform_command(
        "mkdir -p /out && echo hello > /out/hello.txt && id -u && \
         if [ -e /etc/os-release ]; then echo host; else echo own root; fi",
        &["out/hello.txt"],
        &[("OSFamily", "linux"), ("ISA", "x86-64")],
    );
    let action = cluster.action_on(blobs, &root, &command);
    let result = response_of_last(&cluster.execute(&action, false));
    assert_eq!(result.exit_code, 0, "{result:?}");
    assert_eq!(
        cluster.read(result.stdout_digest.as_ref().unwrap()),
        "0\nown root\n"
    );
    let [file] = result.output_files.as_slice() else {
        panic!("{result:?}");
    };
    assert_eq!(file.path, "out/hello.txt");
    assert_eq!(cluster.read(file.digest.as_ref().unwrap()), "hello\n");
}

#[test]
fn an_action_no_worker_can_run_fails_at_once_naming_the_property() {
    let cluster = Cluster::start(1);
    let mut blobs = Vec::new();
    let root = busybox_sysroot(&mut blobs);
    let command = platform_command("true", &[], &[("OSFamily", "linux"), ("ISA", "sparc")]);
    let action = cluster.action_on(blobs, &root, &command);
    let started = Instant::now();
    let ops = cluster.execute(&action, false);
    let response = response_of(ops.last().unwrap());
    assert_eq!(status_code(&response), tonic::Code::FailedPrecondition);
    let message = &response.status.as_ref().unwrap().message;
    assert!(message.contains("ISA=sparc"), "{message}");
    // Refused before queueing: no run, and nothing like a timeout waited for.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        ops.iter()
            .all(|op| stage(op) != v2::execution_stage::Value::Executing)
    );
}

#[test]
fn malformed_platforms_and_rootfs_without_a_shell_are_refused_with_nothing_run() {
    let cluster = Cluster::start(1);
    for (name, value) in [("unixUID", "root"), ("network", "maybe"), ("sandbox", "vm")] {
        let command = platform_command("true", &[], &[("OSFamily", "linux"), (name, value)]);
        let mut blobs = Vec::new();
        let root = busybox_sysroot(&mut blobs);
        let action = cluster.action_on(blobs, &root, &command);
        let err = cluster.execute_stream(&action, false).err().unwrap();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{name}={value}: {err}"
        );
        assert!(err.message().contains(name), "{err}");
    }
    // An empty input root as a rootfs: the worker refuses it before running anything.
    let command = platform_command("echo ran", &[], &[("OSFamily", "linux")]);
    let action = cluster.action_on(Vec::new(), &v2::Directory::default(), &command);
    let response = response_of(cluster.execute(&action, false).last().unwrap());
    assert_eq!(status_code(&response), tonic::Code::FailedPrecondition);
    let message = &response.status.as_ref().unwrap().message;
    assert!(message.contains("/bin/sh"), "{message}");
}
