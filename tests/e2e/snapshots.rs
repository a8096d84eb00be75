//! Snapshots end to end: scoot-snapshot-db ingests into an apiserver's bundlestore, workers check
//! the snapshots out, tasks see the files.

use std::path::Path;
use std::process::Command;

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use serde_json::json;

use crate::support::*;

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn snapshot_db(repo: &Path, api: &ApiServer, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_scoot-snapshot-db"))
        .arg("--bundlestore_url")
        .arg(api.bundle_url())
        .args(args)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scoot-snapshot-db {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn cat_on(client: &mut CloudScoot, snapshot: &str) -> scoot::RunStatus {
    let def = job(vec![scoot::TaskDefinition::new(
        scoot::Command::new(vec!["cat".to_string(), "file.txt".to_string()], None),
        Some(snapshot.to_string()),
        Some("cat".to_string()),
        None,
    )]);
    let id = client.0.run_job(def).unwrap().id;
    let status = wait_job(client, &id);
    status.task_data.unwrap()["cat"].clone()
}

#[test]
fn tasks_run_in_ingested_directories_and_commits() {
    let api = ApiServer::start();
    let worker = Worker::start(&["-bundlestore", &format!("127.0.0.1:{}", api.http_port)]);
    let sched = Scheduler::start(&[&worker], json!({}));
    let mut client = sched.client();

    let dir = tempfile::tempdir().unwrap();
    let (repo, data) = (dir.path().join("repo"), dir.path().join("data"));
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(data.join("nested")).unwrap();
    git(&repo, &["init", "-q"]);

    std::fs::write(data.join("file.txt"), "from a directory\n").unwrap();
    std::fs::write(data.join("nested/other.txt"), "nested\n").unwrap();
    let dir_snapshot = snapshot_db(
        &repo,
        &api,
        &["create", "ingest_dir", "--dir", data.to_str().unwrap()],
    );
    assert!(dir_snapshot.starts_with("bs-fs-"), "{dir_snapshot}");
    let run = cat_on(&mut client, &dir_snapshot);
    assert_eq!(
        (run.status, run.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0)),
        "{run:?}"
    );
    assert_eq!(
        command_output(&file_of_uri(run.out_uri.as_deref().unwrap())),
        "from a directory\n"
    );
    let read = snapshot_db(
        &repo,
        &api,
        &["read", "cat", "--id", &dir_snapshot, "nested/other.txt"],
    );
    assert_eq!(read, "nested");

    std::fs::write(repo.join("file.txt"), "from a commit\n").unwrap();
    git(&repo, &["add", "file.txt"]);
    git(&repo, &["commit", "-q", "-m", "c"]);
    let commit_snapshot = snapshot_db(
        &repo,
        &api,
        &["create", "ingest_git_commit", "--commit", "HEAD"],
    );
    assert!(commit_snapshot.starts_with("bs-gc-"), "{commit_snapshot}");
    let run = cat_on(&mut client, &commit_snapshot);
    assert_eq!(
        (run.status, run.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0)),
        "{run:?}"
    );
    assert_eq!(
        command_output(&file_of_uri(run.out_uri.as_deref().unwrap())),
        "from a commit\n"
    );

    // The apiserver serves the snapshot's files too.
    let view = http_get(
        api.http_port,
        &format!("/view/{dir_snapshot}/nested/other.txt"),
        &[],
    );
    assert_eq!((view.status, view.text().as_str()), (200, "nested\n"));
}

#[test]
fn bad_snapshot_input_is_refused_and_nothing_is_stored() {
    let api = ApiServer::start();
    let bundle = format!("bs-{}.bundle", "a".repeat(40));
    let stored = || {
        std::fs::read_dir(api.store_dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bundle"))
            .count()
    };

    let bad_name = http_request(
        api.http_port,
        "POST",
        "/bundle/evil.bundle",
        &[],
        b"# v2 git bundle\n",
        16,
    );
    assert_eq!(bad_name.status, 400);
    let truncated = http_request(
        api.http_port,
        "POST",
        &format!("/bundle/{bundle}"),
        &[],
        b"# v2 git bundle\nabc",
        1000,
    );
    assert!(
        truncated.status == 400 || truncated.status == 0,
        "{}",
        truncated.status
    );
    let not_a_bundle = http_request(
        api.http_port,
        "POST",
        &format!("/bundle/{bundle}"),
        &[],
        b"hello",
        5,
    );
    assert_eq!(not_a_bundle.status, 400);
    assert_eq!(stored(), 0, "nothing may be stored");
    assert_eq!(
        http_get(api.http_port, &format!("/bundle/{bundle}"), &[]).status,
        404
    );
    assert_eq!(
        http_get(api.http_port, "/view/bs-fs-x/../../etc/passwd", &[]).status,
        400
    );

    let worker = Worker::start(&["-bundlestore", &format!("127.0.0.1:{}", api.http_port)]);
    let sched = Scheduler::start(&[&worker], json!({}));
    let mut client = sched.client();
    let unknown = format!("bs-fs-{}--{}", "b".repeat(40), "c".repeat(40));
    let run = cat_on(&mut client, &unknown);
    assert_eq!(run.status, scoot::RunStatusState::FAILED, "{run:?}");
    assert!((210..=217).contains(&run.exit_code.unwrap()), "{run:?}");
    let run = cat_on(&mut client, "not-a-snapshot-id");
    assert_eq!(run.status, scoot::RunStatusState::FAILED, "{run:?}");
}
