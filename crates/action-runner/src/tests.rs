//! Actions prepared, run (by the test, as the runner would) and finished against the real
//! `scoot_cas_services` services on 127.0.0.1.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use scoot_cas_client::testing::TestServer;
use scoot_cas_client::{CasClient, digest_of, encode, to_proto};
use scoot_core::{Digest, LogTags, exit_code};
use scoot_proto::reapi::v2;
use scoot_proto::rpc;
use scoot_runner::action::{ActionFailure, ActionRunner, ActionSpec, PreparedAction};
use scoot_runner::execer::identity::Identity;
use tonic::Code;

use crate::{ActionConfig, ActionError, ReapiActions, ShardSpec};

struct Harness {
    // Dropped last: stops the server after the actions are gone.
    client: CasClient,
    actions: ReapiActions,
    dir: tempfile::TempDir,
    /// Who actions run as: as root, someone else, and inputs are then links into the cache.
    user: Option<Identity>,
    _server: TestServer,
}

/// A temporary directory other users can pass through (not list), as actions running as
/// another user must.
fn passable_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o711))
        .tempdir()
        .unwrap()
}

impl Harness {
    async fn start(cache_max_bytes: u64) -> Harness {
        let server = TestServer::start().await.unwrap();
        let client = server.client("").await.unwrap();
        let dir = passable_tempdir();
        let user = Identity::for_actions(None).unwrap();
        let actions = ReapiActions::open(ActionConfig {
            cas: ShardSpec::single(server.address()),
            security: Default::default(),
            work_dir: dir.path().join("work"),
            cache_dir: dir.path().join("cache"),
            cache_max_bytes,
            worker_name: "worker-7".into(),
            user,
            platform: unsandboxed(),
        })
        .await
        .unwrap();
        Harness {
            client,
            actions,
            dir,
            user,
            _server: server,
        }
    }

    fn cache_entry(&self, content: &[u8], executable: bool) -> PathBuf {
        let kind = if executable { "exec" } else { "plain" };
        self.dir
            .path()
            .join("cache")
            .join(kind)
            .join(digest_of(content).hash)
    }

    fn work_entries(&self) -> usize {
        fs::read_dir(self.dir.path().join("work")).unwrap().count()
    }

    /// Uploads the blobs, the Command, the root Directory and the Action; returns the
    /// ExecuteRequest for it and the action digest.
    async fn action(
        &self,
        command: &v2::Command,
        root: &v2::Directory,
        blobs: Vec<(Digest, Bytes)>,
        do_not_cache: bool,
    ) -> (Vec<u8>, Digest) {
        let (command_digest, command_blob) = encode(command);
        let (root_digest, root_blob) = encode(root);
        let action = v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: Some(to_proto(&root_digest)),
            do_not_cache,
            ..Default::default()
        };
        let (action_digest, action_blob) = encode(&action);
        let mut all = blobs;
        all.extend([
            (command_digest, command_blob),
            (root_digest, root_blob),
            (action_digest.clone(), action_blob),
        ]);
        self.client.upload_blobs(all).await.unwrap();
        (execute_request("", &action_digest), action_digest)
    }

    async fn prepare(&self, request: &[u8]) -> Result<Box<dyn PreparedAction>, ActionFailure> {
        let tags = LogTags {
            job_id: "job".into(),
            task_id: "task".into(),
            tag: "tag".into(),
        };
        self.actions.prepare(request, &tags).await
    }
}

fn execute_request(instance: &str, action: &Digest) -> Vec<u8> {
    v2::ExecuteRequest {
        instance_name: instance.into(),
        action_digest: Some(to_proto(action)),
        ..Default::default()
    }
    .encode_to_vec()
}

fn blob(data: &[u8]) -> (Digest, Bytes) {
    (digest_of(data), Bytes::copy_from_slice(data))
}

fn file(name: &str, data: &[u8], executable: bool) -> v2::FileNode {
    v2::FileNode {
        name: name.into(),
        digest: Some(to_proto(&digest_of(data))),
        is_executable: executable,
        ..Default::default()
    }
}

fn dir_node(name: &str, directory: &v2::Directory) -> v2::DirectoryNode {
    v2::DirectoryNode {
        name: name.into(),
        digest: Some(to_proto(&encode(directory).0)),
    }
}

fn symlink(name: &str, target: &str) -> v2::SymlinkNode {
    v2::SymlinkNode {
        name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn shell(script: &str) -> v2::Command {
    v2::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![v2::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
}

/// Runs the spec the way the runner does: exactly its argv, environment and directory.
fn run(spec: &ActionSpec, logs: &Path) -> (i32, PathBuf, PathBuf) {
    let (stdout, stderr) = (logs.join("stdout"), logs.join("stderr"));
    let status = std::process::Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.dir)
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .status()
        .unwrap();
    (status.code().unwrap(), stdout, stderr)
}

fn response_of(failure: &ActionFailure) -> v2::ExecuteResponse {
    v2::ExecuteResponse::decode(failure.response.as_slice()).unwrap()
}

fn status_code(response: &v2::ExecuteResponse) -> Code {
    Code::from(response.status.as_ref().unwrap().code)
}

/// The `MISSING` subjects of a FAILED_PRECONDITION response.
fn missing_subjects(response: &v2::ExecuteResponse) -> Vec<String> {
    let status = response.status.as_ref().unwrap();
    assert_eq!(status.details.len(), 1);
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    let failure = rpc::PreconditionFailure::decode(status.details[0].value.as_slice()).unwrap();
    let mut subjects: Vec<String> = failure
        .violations
        .iter()
        .map(|v| {
            assert_eq!(v.r#type, "MISSING");
            v.subject.clone()
        })
        .collect();
    subjects.sort();
    subjects
}

fn root_of(spec: &ActionSpec, working_directory: &str) -> PathBuf {
    let mut root = spec.dir.clone();
    for _ in Path::new(working_directory).components() {
        root.pop();
    }
    root
}

#[tokio::test]
async fn inputs_come_from_the_cache() {
    let h = Harness::start(1 << 30).await;
    let shared = b"#!/bin/sh\necho shared\n";
    let big: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let deeper = v2::Directory {
        files: vec![file("leaf", b"leaf", false)],
        ..Default::default()
    };
    let sub = v2::Directory {
        files: vec![
            file("big.bin", &big, false),
            file("nested.txt", b"nested", false),
        ],
        directories: vec![dir_node("deeper", &deeper)],
        ..Default::default()
    };
    let root = v2::Directory {
        files: vec![
            file("data", shared, false),
            file("empty", b"", false),
            file("tool", shared, true),
        ],
        directories: vec![dir_node("sub", &sub)],
        symlinks: vec![symlink("link", "data")],
        ..Default::default()
    };
    let command = v2::Command {
        environment_variables: vec![
            v2::command::EnvironmentVariable {
                name: "A".into(),
                value: "1".into(),
            },
            v2::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/bin".into(),
            },
        ],
        working_directory: "sub".into(),
        output_files: vec!["out/result.txt".into()],
        output_directories: vec!["gen".into()],
        ..shell("true")
    };
    let blobs = vec![
        blob(shared),
        blob(&big),
        blob(b"nested"),
        blob(b"leaf"),
        encode(&sub),
        encode(&deeper),
    ];
    let (request, _) = h.action(&command, &root, blobs, false).await;
    let prepared = h.prepare(&request).await.unwrap();
    let spec = prepared.spec().clone();
    assert_eq!(spec.argv, command.arguments);
    assert_eq!(
        spec.env,
        BTreeMap::from([("A".into(), "1".into()), ("PATH".into(), "/bin".into())])
    );
    let root_dir = root_of(&spec, "sub");
    assert_eq!(spec.dir, root_dir.join("sub"));
    assert!(root_dir.starts_with(h.dir.path().join("work")));

    let read = |p: &str| fs::read(root_dir.join(p)).unwrap();
    assert_eq!(read("data"), shared);
    assert_eq!(read("tool"), shared);
    assert_eq!(read("link"), shared);
    assert_eq!(
        fs::read_link(root_dir.join("link")).unwrap(),
        Path::new("data")
    );
    assert_eq!(read("empty"), b"");
    assert_eq!(read("sub/nested.txt"), b"nested");
    assert_eq!(read("sub/deeper/leaf"), b"leaf");
    assert_eq!(read("sub/big.bin"), big);

    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    let mode = |p: &Path| meta(p).permissions().mode() & 0o777;
    let same_file = |a: &Path, b: &Path| meta(a).ino() == meta(b).ino();
    // Links only where actions cannot write the cache's files: as another user than the worker.
    let links = h.user.is_some();
    assert_eq!(mode(&root_dir.join("tool")), 0o555);
    assert_eq!(mode(&root_dir.join("data")), 0o444);
    // Same content, two modes: two cache entries, each linked (or copied).
    assert_eq!(
        same_file(&root_dir.join("tool"), &h.cache_entry(shared, true)),
        links
    );
    assert_eq!(
        same_file(&root_dir.join("data"), &h.cache_entry(shared, false)),
        links
    );
    assert!(!same_file(&root_dir.join("tool"), &root_dir.join("data")));
    assert_eq!(
        same_file(&root_dir.join("sub/big.bin"), &h.cache_entry(&big, false)),
        links
    );
    // Parents of outputs, and legacy output directories themselves, exist and are writable by
    // the action; its input files are not.
    assert!(root_dir.join("sub/out").is_dir());
    assert!(root_dir.join("sub/gen").is_dir());
    assert_eq!(mode(&root_dir.join("sub")) & 0o200, 0o200);
    let owner = h.user.unwrap_or_else(Identity::current);
    for dir in ["", "sub", "sub/out", "sub/gen", "sub/deeper"] {
        let m = meta(&root_dir.join(dir));
        assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid), "{dir:?}");
    }
    if links {
        assert_ne!(meta(&root_dir.join("data")).uid(), owner.uid);
    }

    // A second action hits the cache, and takes the executable from the plain entry.
    let root2 = v2::Directory {
        files: vec![file("again", b"nested", true)],
        ..Default::default()
    };
    let (request2, _) = h.action(&shell("true"), &root2, vec![], false).await;
    let prepared2 = h.prepare(&request2).await.unwrap();
    let again = prepared2.spec().dir.join("again");
    assert_eq!(fs::read(&again).unwrap(), b"nested");
    assert_eq!(mode(&again), 0o555);
    assert_eq!(same_file(&again, &h.cache_entry(b"nested", true)), links);

    assert_eq!(h.work_entries(), 2);
    prepared.release().await;
    prepared2.release().await;
    assert!(!root_dir.exists());
    assert_eq!(h.work_entries(), 0);
}

#[tokio::test]
async fn invalid_names_and_paths_are_invalid_argument() {
    let h = Harness::start(1 << 30).await;
    let roots = [
        v2::Directory {
            files: vec![file("..", b"x", false)],
            ..Default::default()
        },
        v2::Directory {
            directories: vec![dir_node("a/b", &v2::Directory::default())],
            ..Default::default()
        },
        v2::Directory {
            symlinks: vec![symlink("", "target")],
            ..Default::default()
        },
    ];
    for root in roots {
        let (request, _) = h
            .action(&shell("true"), &root, vec![blob(b"x")], false)
            .await;
        let failure = h.prepare(&request).await.err().unwrap();
        assert_eq!(failure.exit_code, exit_code::CHECKOUT_FAILURE);
        let response = response_of(&failure);
        assert_eq!(status_code(&response), Code::InvalidArgument, "{failure:?}");
        assert!(
            failure.message.contains("invalid name"),
            "{}",
            failure.message
        );
    }
    // A nested directory with a bad name is found too.
    let bad = v2::Directory {
        files: vec![file("a/b", b"x", false)],
        ..Default::default()
    };
    let root = v2::Directory {
        directories: vec![dir_node("ok", &bad)],
        ..Default::default()
    };
    let (request, _) = h
        .action(&shell("true"), &root, vec![encode(&bad), blob(b"x")], false)
        .await;
    let failure = h.prepare(&request).await.err().unwrap();
    assert_eq!(status_code(&response_of(&failure)), Code::InvalidArgument);

    for command in [
        v2::Command {
            output_paths: vec!["../escape".into()],
            ..shell("true")
        },
        v2::Command {
            working_directory: "a".into(),
            output_files: vec!["../../escape".into()],
            ..shell("true")
        },
        v2::Command {
            output_directories: vec!["/abs".into()],
            ..shell("true")
        },
        v2::Command {
            working_directory: "/tmp".into(),
            ..shell("true")
        },
    ] {
        let (request, _) = h
            .action(&command, &v2::Directory::default(), vec![], false)
            .await;
        let failure = h.prepare(&request).await.err().unwrap();
        assert_eq!(
            status_code(&response_of(&failure)),
            Code::InvalidArgument,
            "{command:?}"
        );
    }
    assert_eq!(h.work_entries(), 0);

    let failure = h.prepare(b"\xff\xff not a request").await.err().unwrap();
    assert_eq!(status_code(&response_of(&failure)), Code::InvalidArgument);
}

#[tokio::test]
async fn every_missing_blob_is_a_missing_violation() {
    let h = Harness::start(1 << 30).await;
    let lost_dir = v2::Directory {
        files: vec![file("inner", b"inner", false)],
        ..Default::default()
    };
    let root = v2::Directory {
        files: vec![
            file("present", b"present", false),
            file("lost1", b"lost one", false),
            file("lost2", b"lost two", true),
            file("lost1-again", b"lost one", false),
        ],
        directories: vec![dir_node("gone", &lost_dir)],
        ..Default::default()
    };
    let (request, _) = h
        .action(&shell("true"), &root, vec![blob(b"present")], false)
        .await;
    let failure = h.prepare(&request).await.err().unwrap();
    assert_eq!(failure.exit_code, exit_code::CHECKOUT_FAILURE);
    let response = response_of(&failure);
    assert_eq!(status_code(&response), Code::FailedPrecondition);
    let mut expected = vec![
        format!("blobs/{}", digest_of(b"lost one")),
        format!("blobs/{}", digest_of(b"lost two")),
        format!("blobs/{}", encode(&lost_dir).0),
    ];
    expected.sort();
    assert_eq!(missing_subjects(&response), expected);
    assert_eq!(h.work_entries(), 0);

    // A missing Command, and a missing Action.
    let command = shell("echo never stored");
    let (command_digest, _) = encode(&command);
    let (root_digest, root_blob) = encode(&v2::Directory::default());
    let action = v2::Action {
        command_digest: Some(to_proto(&command_digest)),
        input_root_digest: Some(to_proto(&root_digest)),
        ..Default::default()
    };
    let (action_digest, action_blob) = encode(&action);
    h.client
        .upload_blobs(vec![
            (action_digest.clone(), action_blob),
            (root_digest, root_blob),
        ])
        .await
        .unwrap();
    let failure = h
        .prepare(&execute_request("", &action_digest))
        .await
        .err()
        .unwrap();
    assert_eq!(
        missing_subjects(&response_of(&failure)),
        vec![format!("blobs/{command_digest}")]
    );
    let unknown = digest_of(b"no such action");
    let failure = h
        .prepare(&execute_request("", &unknown))
        .await
        .err()
        .unwrap();
    assert_eq!(
        missing_subjects(&response_of(&failure)),
        vec![format!("blobs/{unknown}")]
    );
}

const SCRIPT: &str = "\
mkdir -p out/dir/nested out/dir/empty1 out/dir/empty2
printf hello > out/file.txt
printf '#!/bin/sh\\necho hi\\n' > out/tool.sh && chmod 755 out/tool.sh
printf a > out/dir/a.txt
printf n > out/dir/nested/n.txt
ln -s a.txt out/dir/link
ln -s file.txt out/filelink
ln -s dir out/dirlink
chmod 500 out/dir/nested
echo to-stdout
echo to-stderr >&2
";

#[tokio::test]
async fn a_shell_command_runs_and_its_outputs_are_uploaded() {
    let h = Harness::start(1 << 30).await;
    let command = v2::Command {
        working_directory: "work".into(),
        output_paths: [
            "out/absent",
            "out/dir",
            "out/dirlink",
            "out/file.txt",
            "out/filelink",
            "out/tool.sh",
        ]
        .map(String::from)
        .to_vec(),
        ..shell(SCRIPT)
    };
    let (request, action_digest) = h
        .action(&command, &v2::Directory::default(), vec![], false)
        .await;
    let mut prepared = h.prepare(&request).await.unwrap();
    let spec = prepared.spec().clone();
    let logs = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(&spec, logs.path());
    assert_eq!(code, 0, "{}", fs::read_to_string(&stderr).unwrap());
    let response = v2::ExecuteResponse::decode(
        prepared
            .finish(code, &stdout, &stderr)
            .await
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(status_code(&response), Code::Ok);
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);

    let files: Vec<(&str, Digest, bool)> = result
        .output_files
        .iter()
        .map(|f| {
            let d = f.digest.as_ref().unwrap();
            (
                f.path.as_str(),
                Digest::new(d.hash.clone(), d.size_bytes).unwrap(),
                f.is_executable,
            )
        })
        .collect();
    assert_eq!(
        files,
        vec![
            ("out/file.txt", digest_of(b"hello"), false),
            ("out/tool.sh", digest_of(b"#!/bin/sh\necho hi\n"), true),
        ]
    );
    let links = |list: &[v2::OutputSymlink]| -> Vec<(String, String)> {
        list.iter()
            .map(|s| (s.path.clone(), s.target.clone()))
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        links(&result.output_symlinks),
        vec![pair("out/dirlink", "dir"), pair("out/filelink", "file.txt")]
    );
    assert_eq!(
        links(&result.output_file_symlinks),
        vec![pair("out/filelink", "file.txt")]
    );
    assert_eq!(
        links(&result.output_directory_symlinks),
        vec![pair("out/dirlink", "dir")]
    );

    assert_eq!(result.output_directories.len(), 1);
    let output_dir = &result.output_directories[0];
    assert_eq!(output_dir.path, "out/dir");
    let tree_digest = output_dir.tree_digest.as_ref().unwrap();
    let tree_digest = Digest::new(tree_digest.hash.clone(), tree_digest.size_bytes).unwrap();
    let tree_blob = h.client.read_blobs(&[tree_digest]).await.unwrap();
    let tree = v2::Tree::decode(tree_blob[0].1.clone()).unwrap();
    let tree_root = tree.root.unwrap();
    assert_eq!(tree_root.files, vec![file("a.txt", b"a", false)]);
    assert_eq!(tree_root.symlinks, vec![symlink("link", "a.txt")]);
    let nested = v2::Directory {
        files: vec![file("n.txt", b"n", false)],
        ..Default::default()
    };
    let empty = v2::Directory::default();
    assert_eq!(
        tree_root.directories,
        vec![
            dir_node("empty1", &empty),
            dir_node("empty2", &empty),
            dir_node("nested", &nested),
        ]
    );
    // The two empty directories are one child.
    let mut children = tree.children.clone();
    children.sort_by_key(|c| c.files.len());
    assert_eq!(children, vec![empty, nested]);

    let stdout_digest = result.stdout_digest.as_ref().unwrap();
    assert_eq!(stdout_digest, &to_proto(&digest_of(b"to-stdout\n")));
    assert_eq!(
        result.stderr_digest.as_ref().unwrap(),
        &to_proto(&digest_of(b"to-stderr\n"))
    );
    let stored = h
        .client
        .read_blobs(&[
            digest_of(b"to-stdout\n"),
            digest_of(b"hello"),
            digest_of(b"#!/bin/sh\necho hi\n"),
            digest_of(b"a"),
            digest_of(b"n"),
        ])
        .await
        .unwrap();
    assert_eq!(stored[0].1, "to-stdout\n");

    let metadata = result.execution_metadata.clone().unwrap();
    assert_eq!(metadata.worker, "worker-7");
    assert!(metadata.queued_timestamp.is_none());
    let stamps = [
        &metadata.worker_start_timestamp,
        &metadata.input_fetch_start_timestamp,
        &metadata.input_fetch_completed_timestamp,
        &metadata.execution_start_timestamp,
        &metadata.execution_completed_timestamp,
        &metadata.output_upload_start_timestamp,
        &metadata.output_upload_completed_timestamp,
        &metadata.worker_completed_timestamp,
    ]
    .map(|t| {
        let t = t.unwrap();
        (t.seconds, t.nanos)
    });
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    assert_eq!(
        h.client.get_action_result(&action_digest).await.unwrap(),
        Some(result)
    );
    let root_dir = root_of(&spec, "work");
    prepared.release().await;
    assert!(
        !root_dir.exists(),
        "removed despite the read-only directory"
    );
}

#[tokio::test]
async fn legacy_outputs_and_uncacheable_results() {
    let h = Harness::start(1 << 30).await;
    // output_directories are created before the run: the script writes into d without mkdir.
    let script = "printf x > f && ln -s f flink && printf y > d/inside && rmdir dlink && ln -s d dlink && exit 1";
    let command = v2::Command {
        output_files: vec!["f".into(), "flink".into(), "missing".into()],
        output_directories: vec!["d".into(), "dlink".into()],
        ..shell(script)
    };
    let (request, action_digest) = h
        .action(&command, &v2::Directory::default(), vec![], false)
        .await;
    let mut prepared = h.prepare(&request).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(prepared.spec(), logs.path());
    assert_eq!(code, 1);
    let response = v2::ExecuteResponse::decode(
        prepared
            .finish(code, &stdout, &stderr)
            .await
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(status_code(&response), Code::Ok);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 1);
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "f");
    assert_eq!(result.output_directories.len(), 1);
    assert_eq!(result.output_directories[0].path, "d");
    assert_eq!(result.output_file_symlinks.len(), 1);
    assert_eq!(result.output_file_symlinks[0].path, "flink");
    assert_eq!(result.output_directory_symlinks.len(), 1);
    assert_eq!(result.output_directory_symlinks[0].target, "d");
    assert_eq!(result.output_symlinks.len(), 2);
    prepared.release().await;
    assert_eq!(
        h.client.get_action_result(&action_digest).await.unwrap(),
        None,
        "a failed action is not cached"
    );

    let (request, action_digest) = h
        .action(&shell("true"), &v2::Directory::default(), vec![], true)
        .await;
    let mut prepared = h.prepare(&request).await.unwrap();
    let (code, stdout, stderr) = run(prepared.spec(), logs.path());
    prepared.finish(code, &stdout, &stderr).await.unwrap();
    prepared.release().await;
    assert_eq!(
        h.client.get_action_result(&action_digest).await.unwrap(),
        None,
        "do_not_cache is honoured"
    );

    // The same action with caching allowed and exit 0 is cached (under its instance name).
    let (_, action_digest) = h
        .action(&shell("true"), &v2::Directory::default(), vec![], false)
        .await;
    let mut prepared = h
        .prepare(&execute_request("main", &action_digest))
        .await
        .unwrap();
    let (code, stdout, stderr) = run(prepared.spec(), logs.path());
    prepared.finish(code, &stdout, &stderr).await.unwrap();
    prepared.release().await;
    assert!(
        h.client
            .with_instance("main")
            .get_action_result(&action_digest)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        h.client.get_action_result(&action_digest).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn eviction_keeps_the_cache_bounded_without_breaking_linked_inputs() {
    let bound = 3 << 20;
    let h = Harness::start(bound).await;
    let first: Vec<u8> = vec![1; 2 << 20];
    let second: Vec<u8> = vec![2; 2 << 20];
    let root1 = v2::Directory {
        files: vec![file("input", &first, false)],
        ..Default::default()
    };
    let root2 = v2::Directory {
        files: vec![file("input", &second, false)],
        ..Default::default()
    };
    let (request1, _) = h
        .action(&shell("true"), &root1, vec![blob(&first)], false)
        .await;
    let (request2, _) = h
        .action(&shell("true"), &root2, vec![blob(&second)], false)
        .await;
    let prepared1 = h.prepare(&request1).await.unwrap();
    assert!(h.cache_entry(&first, false).exists());
    let prepared2 = h.prepare(&request2).await.unwrap();
    assert!(
        !h.cache_entry(&first, false).exists(),
        "the older entry was evicted"
    );
    assert!(h.cache_entry(&second, false).exists());
    let cached: u64 = ["plain", "exec"]
        .iter()
        .flat_map(|kind| fs::read_dir(h.dir.path().join("cache").join(kind)).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(cached <= bound, "{cached} bytes cached");
    assert_eq!(fs::read(prepared1.spec().dir.join("input")).unwrap(), first);
    assert_eq!(
        fs::read(prepared2.spec().dir.join("input")).unwrap(),
        second
    );
    prepared1.release().await;
    prepared2.release().await;
}

#[tokio::test]
async fn open_checks_filesystems_but_not_the_cas() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on a port we just released: open still works (the CAS may start later).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ActionConfig {
        cas: ShardSpec::single(format!("127.0.0.1:{port}")),
        security: Default::default(),
        work_dir: dir.path().join("work"),
        cache_dir: dir.path().join("cache"),
        cache_max_bytes: 1 << 20,
        worker_name: "w".into(),
        user: None,
        platform: unsandboxed(),
    };
    fs::create_dir_all(config.work_dir.join("action-left-over/sub")).unwrap();
    fs::set_permissions(
        config.work_dir.join("action-left-over"),
        fs::Permissions::from_mode(0o500),
    )
    .unwrap();
    fs::write(config.work_dir.join("not-ours"), "").unwrap();
    let actions = ReapiActions::open(config.clone()).await.unwrap();
    assert!(!config.work_dir.join("action-left-over").exists());
    assert!(config.work_dir.join("not-ours").exists());
    let tags = LogTags::default();
    let failure = actions
        .prepare(&execute_request("", &digest_of(b"x")), &tags)
        .await
        .err()
        .unwrap();
    assert_eq!(status_code(&response_of(&failure)), Code::Unavailable);

    // /dev/shm is a tmpfs on Linux: another filesystem than the temporary directory's.
    let shm = Path::new("/dev/shm");
    let other =
        shm.is_dir() && fs::metadata(shm).unwrap().dev() != fs::metadata(dir.path()).unwrap().dev();
    assert!(other, "this test needs /dev/shm on its own filesystem");
    let cache = tempfile::tempdir_in(shm).unwrap();
    let e = ReapiActions::open(ActionConfig {
        cache_dir: cache.path().to_path_buf(),
        ..config
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(e, ActionError::DifferentFilesystems { .. }), "{e}");
}

#[tokio::test]
async fn a_cache_entry_rewritten_in_place_is_fetched_again() {
    let h = Harness::start(1 << 30).await;
    let root = v2::Directory {
        files: vec![file("input", b"original", false)],
        ..Default::default()
    };
    let (request, _) = h
        .action(&shell("true"), &root, vec![blob(b"original")], false)
        .await;
    let first = h.prepare(&request).await.unwrap();
    first.release().await;

    // What `dd conv=notrunc` then `touch -m -d @<before>` do: size, mode and modification time
    // are as before (root needs no chmod, an unprivileged owner does).
    let entry = h.cache_entry(b"original", false);
    let before = fs::metadata(&entry).unwrap();
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o644)).unwrap();
    let mut writer = fs::File::options().write(true).open(&entry).unwrap();
    std::io::Write::write_all(&mut writer, b"poisone").unwrap();
    writer.set_modified(before.modified().unwrap()).unwrap();
    drop(writer);
    fs::set_permissions(&entry, before.permissions()).unwrap();
    let after = fs::metadata(&entry).unwrap();
    assert_eq!(
        (after.len(), after.mode(), after.modified().unwrap()),
        (before.len(), before.mode(), before.modified().unwrap())
    );

    let second = h.prepare(&request).await.unwrap();
    assert_eq!(
        fs::read(second.spec().dir.join("input")).unwrap(),
        b"original"
    );
    assert_eq!(fs::read(&entry).unwrap(), b"original", "fetched again");
    second.release().await;
}

#[tokio::test]
async fn open_refuses_a_work_directory_the_action_user_cannot_reach() {
    let closed = tempfile::tempdir().unwrap();
    fs::set_permissions(closed.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let me = Identity::current();
    let stranger = Identity {
        uid: me.uid.wrapping_add(1).max(1),
        gid: me.gid.wrapping_add(1),
    };
    let config = ActionConfig {
        cas: ShardSpec::single("127.0.0.1:1"),
        security: Default::default(),
        work_dir: closed.path().join("work"),
        cache_dir: closed.path().join("cache"),
        cache_max_bytes: 1 << 20,
        worker_name: "w".into(),
        user: Some(stranger),
        platform: unsandboxed(),
    };
    let e = ReapiActions::open(config.clone()).await.err().unwrap();
    match &e {
        ActionError::Unreachable { blocked, .. } => {
            assert_eq!(blocked, &fs::canonicalize(closed.path()).unwrap())
        }
        other => panic!("{other}"),
    }
    fs::set_permissions(closed.path(), fs::Permissions::from_mode(0o711)).unwrap();
    ReapiActions::open(config).await.unwrap();
}

/// The worker refuses what the scheduler refuses (see the scheduler's `execution` tests): an
/// Action without an input root, and messages above the one size limit, are INVALID_ARGUMENT.
#[tokio::test]
async fn actions_the_scheduler_refuses_are_refused_alike() {
    let h = Harness::start(1 << 30).await;
    let (command_digest, command_blob) = encode(&shell("true"));
    let oversized = Digest {
        hash: digest_of(b"a Directory too large to read").hash,
        size_bytes: scoot_reapi::MAX_MESSAGE_BYTES as i64 + 1,
    };
    let cases = [
        (None, "Action.input_root_digest: no digest given"),
        (Some(to_proto(&oversized)), "is larger than 16777216 bytes"),
    ];
    for (input_root_digest, expected) in cases {
        let action = v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest,
            ..Default::default()
        };
        let (action_digest, action_blob) = encode(&action);
        h.client
            .upload_blobs(vec![
                (command_digest.clone(), command_blob.clone()),
                (action_digest.clone(), action_blob),
            ])
            .await
            .unwrap();
        let failure = h
            .prepare(&execute_request("", &action_digest))
            .await
            .err()
            .unwrap();
        let response = response_of(&failure);
        assert_eq!(status_code(&response), Code::InvalidArgument, "{failure:?}");
        assert!(failure.message.contains(expected), "{}", failure.message);
    }
    assert_eq!(h.work_entries(), 0);
}

/// What a worker running actions on its host offers.
fn unsandboxed() -> Vec<scoot_reapi::platform::Property> {
    let mut platform = scoot_reapi::platform::host_facts();
    platform.push(scoot_reapi::platform::Property::new(
        scoot_reapi::platform::SANDBOX,
        scoot_reapi::platform::UNSANDBOXED,
    ));
    platform
}

#[test]
fn a_rootfs_needs_an_executable_bin_sh_resolved_inside_it() {
    let root = tempfile::tempdir().unwrap();
    let check = || crate::inputs::check_shell(root.path()).map_err(|f| (f.code, f.message));
    let (code, message) = check().unwrap_err();
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("/bin does not exist"), "{message}");
    fs::create_dir_all(root.path().join("bin")).unwrap();
    fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    // An absolute link resolves inside the root, not on the worker's host.
    std::os::unix::fs::symlink("/usr/bin/busybox", root.path().join("bin/sh")).unwrap();
    let (_, message) = check().unwrap_err();
    assert!(
        message.contains("/usr/bin/busybox does not exist"),
        "{message}"
    );
    fs::write(root.path().join("usr/bin/busybox"), "#!").unwrap();
    let (_, message) = check().unwrap_err();
    assert!(message.contains("not an executable"), "{message}");
    fs::set_permissions(
        root.path().join("usr/bin/busybox"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    check().unwrap();
    // A link that climbs out of the root stays in it.
    fs::remove_file(root.path().join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("../../../../usr/bin/busybox", root.path().join("bin/sh")).unwrap();
    check().unwrap();
}
