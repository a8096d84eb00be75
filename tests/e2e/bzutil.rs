//! bzutil against the apiserver's REAPI CAS.

use std::process::Command;

use crate::support::*;

fn bzutil(api: &ApiServer, args: &[&str]) -> String {
    let (sub, rest) = args.split_first().unwrap();
    let mut all = vec![*sub, "--cas_addr"];
    let addr = format!("127.0.0.1:{}", api.grpc_port);
    all.push(&addr);
    all.extend(rest);
    run_bzutil(&all)
}

fn run_bzutil(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bzutil"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bzutil {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_commands_arguments_are_stored_as_typed() {
    let api = ApiServer::start();
    let addr = format!("127.0.0.1:{}", api.grpc_port);
    // Go-style flags before the argv are still flags; `-la` is the command's own. The digest
    // is Scoot's: SHA-256 of the Command proto {arguments: ["ls", "-la"]}, 9 bytes.
    let command = run_bzutil(&["upload_command", "-cas_addr", &addr, "ls", "-la"]);
    assert_eq!(
        command.trim(),
        "9fcca010f4242b149eddc3b90c9a867710e63a7628d347c8c9a8f1416036e371/9"
    );
}

#[test]
fn seed_walkthrough_uploads_and_finds_blobs() {
    let api = ApiServer::start();
    // Seed 002, step 2: the same digest Scoot printed.
    let command = bzutil(&api, &["upload_command", "sleep", "17"]);
    assert_eq!(
        command.trim(),
        "1833d7c57656d2b7ee97e2068ce742f80e61357fba12a8b8d627782da3a58c29/11"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.txt"), "alpha").unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 3 * 1024 * 1024]).unwrap();
    let root = bzutil(&api, &["upload_dir", "--dir", dir.path().to_str().unwrap()]);
    let action = bzutil(
        &api,
        &[
            "upload_action",
            "--command",
            command.trim(),
            "--input_root",
            root.trim(),
        ],
    );
    let (hash, size) = action.trim().split_once('/').unwrap();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{action}"
    );
    assert!(size.parse::<u64>().unwrap() > 0, "{action}");

    let missing = bzutil(
        &api,
        &[
            "find_missing_blobs",
            "--digests",
            &format!("{},{},{}", command.trim(), root.trim(), action.trim()),
        ],
    );
    assert_eq!(missing, "", "everything uploaded is present");
    let absent = format!("{}/5", "0".repeat(64));
    assert_eq!(
        bzutil(&api, &["find_missing_blobs", "--digests", &absent]).trim(),
        absent
    );

    let uploaded = bzutil(
        &api,
        &["batch_upload", "--dir", dir.path().to_str().unwrap()],
    );
    let alpha = uploaded
        .lines()
        .find(|l| l.ends_with("sub/a.txt"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let out = tempfile::tempdir().unwrap();
    bzutil(
        &api,
        &[
            "batch_download",
            "--digests",
            &alpha,
            "--dir",
            out.path().to_str().unwrap(),
        ],
    );
    let hash = alpha.split('/').next().unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join(hash)).unwrap(),
        "alpha"
    );
}

/// The name in the first line of a printed operation (`Operation: <name>`).
fn operation_name(printed: &str) -> String {
    printed
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Operation: "))
        .unwrap_or_else(|| panic!("not an operation: {printed}"))
        .to_string()
}

/// Seed 002's walk-through on a setup-cloud-scoot cluster: the Command, input directory and
/// Action go to the apiserver's CAS, the Action is executed through the scheduler, and the
/// operation is followed with get_operation (and another one cancelled).
#[test]
fn seed_walkthrough_executes_through_the_scheduler() {
    let cluster = LocalCluster::start(900);
    let cas = cluster.apiserver_grpc_addr();
    let grpc = cluster.grpc_addr();
    let upload = |args: &[&str]| {
        let (sub, rest) = args.split_first().unwrap();
        let mut all = vec![*sub, "--cas_addr", cas.as_str()];
        all.extend(rest);
        run_bzutil(&all).trim().to_string()
    };
    let command = upload(&[
        "upload_command",
        "--output_files",
        "out.txt",
        "sh",
        "-c",
        "cat sub/a.txt > out.txt; echo walked",
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.txt"), "alpha").unwrap();
    let root = upload(&["upload_dir", "--dir", dir.path().to_str().unwrap()]);
    let action = upload(&[
        "upload_action",
        "--command",
        &command,
        "--input_root",
        &root,
    ]);

    let queued = run_bzutil(&["execute", "--grpc_addr", &grpc, "--action", &action]);
    // The first state the stream sends: QUEUED, unless a worker took the action first.
    assert!(
        ["QUEUED", "EXECUTING", "COMPLETED"]
            .iter()
            .any(|stage| queued.contains(&format!("\t\tStage: {stage}\n"))),
        "{queued}"
    );
    assert!(
        queued.contains(&format!("\t\tActionDigest: {action}\n")),
        "{queued}"
    );
    let name = operation_name(&queued);

    let done = poll("the operation to be done", || {
        let text = run_bzutil(&["get_operation", "--grpc_addr", &grpc, "--name", &name]);
        text.contains("\tDone: true\n").then_some(text)
    });
    for expected in [
        "\t\tStage: COMPLETED\n",
        "\t\t\tCode: OK\n",
        "\t\t\tExitCode: 0\n",
        "\t\t\tOutputFiles: [\"out.txt\"]\n",
        "\t\t\t\tQueueLatency: ",
        "\t\t\t\tExecution: ",
    ] {
        assert!(done.contains(expected), "{expected:?} not in:\n{done}");
    }
    let full: serde_json::Value = serde_json::from_str(&run_bzutil(&[
        "get_operation",
        "--grpc_addr",
        &grpc,
        "--name",
        &name,
        "--json_full",
    ]))
    .unwrap();
    let result = &full["response"]["result"];
    let out_digest = result["output_files"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stdout_digest = result["stdout_digest"].as_str().unwrap().to_string();
    // The outputs are in the scheduler's CAS.
    let downloads = tempfile::tempdir().unwrap();
    run_bzutil(&[
        "batch_download",
        "--cas_addr",
        &grpc,
        "--digests",
        &format!("{out_digest},{stdout_digest}"),
        "--dir",
        downloads.path().to_str().unwrap(),
    ]);
    let read = |digest: &str| {
        std::fs::read_to_string(downloads.path().join(digest.split('/').next().unwrap())).unwrap()
    };
    assert_eq!(read(&out_digest), "alpha");
    assert_eq!(read(&stdout_digest), "walked\n");

    // A long action, cancelled.
    let sleeper = upload(&["upload_command", "sleep", "60"]);
    let sleeper = upload(&["upload_action", "--command", &sleeper]);
    let queued = run_bzutil(&["execute", "--grpc_addr", &grpc, "--action", &sleeper]);
    let name = operation_name(&queued);
    run_bzutil(&["cancel_operation", "--grpc_addr", &grpc, "--name", &name]);
    let cancelled = poll("the cancelled operation to be done", || {
        let text = run_bzutil(&["get_operation", "--grpc_addr", &grpc, "--name", &name]);
        text.contains("\tDone: true\n").then_some(text)
    });
    assert!(
        cancelled.contains("\tError:\n\t\tCode: CANCELLED\n"),
        "{cancelled}"
    );
}
