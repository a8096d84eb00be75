//! bzutil against the apiserver's REAPI CAS.

use std::process::Command;

use crate::support::*;

fn bzutil(api: &ApiServer, args: &[&str]) -> String {
    let (sub, rest) = args.split_first().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bzutil"))
        .arg(sub)
        .arg("--cas_addr")
        .arg(format!("127.0.0.1:{}", api.grpc_port))
        .args(rest)
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
