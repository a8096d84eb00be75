//! A cluster across machines: five network namespaces made by the test (private addresses
//! that exist only inside them), the scheduler and an apiserver on one, a worker on each of
//! three others, clients on the fifth; TLS and tokens on every gRPC and HTTP port.
//!
//! CloudScoot tasks spread over the three workers and their stdout is fetched over HTTPS from
//! the URIs the job reports; Bazel 2.1 builds the sample workspace through `grpcs://` with a
//! token; a worker's link is cut for 30 s in the middle of its task and every job still
//! completes; a worker host lost for good has its task retried elsewhere.
//!
//! Needs root (CI runs as root); elsewhere it says why it is skipped and passes.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use scoot_local_cluster::netns::{Host, NetnsError, Network};
use scoot_thrift::scoot::{Status, TCloudScootSyncClient};

use crate::bazel::{Sample, assert_all_remote, bazel_binary};
use crate::security::{BUILDER, WORKER, run_action, write_tokens};
use crate::support::*;

const THRIFT: u16 = 9090;
const HTTP: u16 = 9091;
const GRPC: u16 = 9099;
const API_HTTP: u16 = 9094;
const API_GRPC: u16 = 9098;
const WORKER_THRIFT: u16 = 9092;
const WORKER_HTTP: u16 = 9093;
/// How long a job of this test may take: a lost worker is given up on after the scheduler's
/// 60 s call timeout and its retry window.
const JOB_DEADLINE: Duration = Duration::from_secs(240);

fn addr(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::new(host.addr, port)
}

/// Waits until `port` of `host` accepts connections, as seen from `from`.
fn wait_listening(proc: &mut Proc, from: &Host, to: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        proc.assert_running();
        let up = from
            .run_on_thread(|| TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
            .unwrap();
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened on {to}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(host: &Host, name: &str, bin: &str, args: &[String]) -> Proc {
    let mut cmd = host.command(bin);
    cmd.args(args)
        .args(["-log_level", "debug"])
        .stderr(log_file(&format!("multihost-{name}")));
    Proc::spawn(name, cmd)
}

type Client = CloudScootClient;

fn cloudscoot(to: SocketAddr) -> Client {
    let (i, o) = scoot_thrift::client::connect(&to.to_string(), DEADLINE, None).unwrap();
    CloudScootClient::new(i, o)
}

/// Runs a job of `tasks` (id → shell script) and returns its final status.
fn run_job(
    client: &mut Client,
    tasks: &[(String, String)],
    on_running: impl FnOnce(),
) -> scoot_thrift::scoot::JobStatus {
    let definitions = tasks
        .iter()
        .map(|(id, script)| task(id, &["sh", "-c", script]))
        .collect();
    let job_id = client.run_job(job(definitions)).unwrap().id;
    poll_job_with(client, &job_id, tasks.len(), on_running)
}

fn poll_job(client: &mut Client, job_id: &str) -> scoot_thrift::scoot::JobStatus {
    poll_job_with(client, job_id, usize::MAX, || {})
}

/// Polls the job until it completes, calling `on_running` once all `tasks` of it run.
fn poll_job_with(
    client: &mut Client,
    job_id: &str,
    tasks: usize,
    on_running: impl FnOnce(),
) -> scoot_thrift::scoot::JobStatus {
    let job_id = job_id.to_string();
    let deadline = Instant::now() + JOB_DEADLINE;
    let mut on_running = Some(on_running);
    loop {
        let status = client.get_status(job_id.clone()).unwrap();
        if status.status == Status::COMPLETED {
            return status;
        }
        let running = status
            .task_status
            .as_ref()
            .is_some_and(|t| t.len() == tasks && t.values().all(|s| *s == Status::IN_PROGRESS));
        if running && let Some(callback) = on_running.take() {
            callback();
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} did not complete: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every task's stdout, fetched from the URI the job reports, by worker host.
fn outputs(status: &scoot_thrift::scoot::JobStatus, ca: &Path) -> Vec<(String, String, String)> {
    let tls = scoot_security::ClientTls::new(ca, None).unwrap();
    let http = scoot_security::http_client(Some(&tls))
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut found = Vec::new();
    for (task, run) in status.task_data.as_ref().unwrap() {
        let uri = run.out_uri.clone().unwrap_or_default();
        assert!(uri.starts_with("https://"), "{task}: {uri}");
        let host = uri["https://".len()..]
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let body = runtime
            .block_on(async {
                // The URI is the output's page (`…/output/<name>?file=…`); its raw bytes are
                // asked for as Scoot's are.
                let raw = format!("{uri}&content=true");
                http.get(raw).send().await?.error_for_status()?.text().await
            })
            .unwrap_or_else(|e| panic!("GET {uri}: {e}"));
        found.push((task.clone(), host, body));
    }
    found
}

#[test]
fn a_cluster_across_hosts_with_tls_and_tokens_survives_a_cut_link_and_a_lost_host() {
    let net = match Network::create(5) {
        Ok(net) => net,
        Err(NetnsError::Unsupported(why)) => {
            eprintln!("SKIPPED multi-host test: cannot create network namespaces here: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (control, client_host) = (net.host(0), net.host(4));
    let workers: Vec<&Host> = (1..=3).map(|i| net.host(i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = net
        .hosts()
        .iter()
        .flat_map(|h| [h.addr.to_string(), h.name.clone()])
        .collect();
    let pki = Pki::new(dir.path(), &names);
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, false);
    let worker_token = dir.path().join("worker-token");
    std::fs::write(&worker_token, WORKER).unwrap();
    let builder_token = dir.path().join("builder-token");
    std::fs::write(&builder_token, BUILDER).unwrap();
    let workers_file = dir.path().join("workers");
    let listed: String = workers
        .iter()
        .map(|w| format!("{}\n", addr(w, WORKER_THRIFT)))
        .collect();
    std::fs::write(&workers_file, listed).unwrap();
    let config = serde_json::json!({
        "Cluster": {"Type": "static", "File": workers_file},
        "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 2},
        "SagaLog": {"Type": "file", "Directory": dir.path().join("sagas")},
    });
    let server_flags = |extra: &[String]| -> Vec<String> {
        let mut flags = pki.flags();
        flags.extend(extra.iter().cloned());
        flags
    };
    let s = |v: &str| v.to_string();

    let mut scheduler = spawn(
        control,
        "scheduler",
        env!("CARGO_BIN_EXE_scheduler"),
        &server_flags(&[
            s("-thrift_addr"),
            format!("0.0.0.0:{THRIFT}"),
            s("-http_addr"),
            format!("0.0.0.0:{HTTP}"),
            s("-grpc_addr"),
            format!("0.0.0.0:{GRPC}"),
            s("-cas_dir"),
            dir.path().join("cas").display().to_string(),
            s("-auth_tokens"),
            tokens.display().to_string(),
            // Bazel 2.1 sends no --remote_header on its ByteStream uploads.
            s("-auth_connection_tokens"),
            s("-config"),
            config.to_string(),
        ]),
    );
    let mut apiserver = spawn(
        control,
        "apiserver",
        env!("CARGO_BIN_EXE_apiserver"),
        &server_flags(&[
            s("-http_addr"),
            format!("0.0.0.0:{API_HTTP}"),
            s("-grpc_addr"),
            format!("0.0.0.0:{API_GRPC}"),
            s("-store_dir"),
            dir.path().join("store").display().to_string(),
            s("-auth_tokens"),
            tokens.display().to_string(),
        ]),
    );
    let mut worker_procs: Vec<Option<Proc>> = workers
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Some(spawn(
                host,
                &format!("worker{}", i + 1),
                env!("CARGO_BIN_EXE_workerserver"),
                &server_flags(&[
                    s("-thrift_addr"),
                    format!("0.0.0.0:{WORKER_THRIFT}"),
                    s("-http_addr"),
                    format!("0.0.0.0:{WORKER_HTTP}"),
                    s("-advertise_host"),
                    host.addr.to_string(),
                    s("-cas_addr"),
                    addr(control, GRPC).to_string(),
                    s("-auth_token_file"),
                    worker_token.display().to_string(),
                    s("-bundlestore"),
                    addr(control, API_HTTP).to_string(),
                ]),
            ))
        })
        .collect();
    wait_listening(&mut scheduler, client_host, addr(control, GRPC));
    wait_listening(&mut apiserver, client_host, addr(control, API_GRPC));
    for (proc, host) in worker_procs.iter_mut().zip(&workers) {
        if let Some(proc) = proc {
            wait_listening(proc, client_host, addr(host, WORKER_HTTP));
        }
    }

    // The apiserver's cache takes uploads over TLS with a token (bzutil, from the client host).
    let bzutil = client_host
        .command(env!("CARGO_BIN_EXE_bzutil"))
        .arg("-tls_ca")
        .arg(&pki.ca)
        .arg("-auth_token_file")
        .arg(&builder_token)
        .args([
            "upload_command",
            "-cas_addr",
            &addr(control, API_GRPC).to_string(),
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        bzutil.status.success(),
        "{}",
        String::from_utf8_lossy(&bzutil.stderr)
    );

    // A snapshot made on the client host goes to the apiserver over HTTPS, and a worker checks
    // it out from there over HTTPS.
    let repo = dir.path().join("repo");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    crate::snapshots::git(&repo, &["init", "-q"]);
    std::fs::write(data.join("file.txt"), "snapshot across hosts\n").unwrap();
    let ingest = client_host
        .command(env!("CARGO_BIN_EXE_scoot-snapshot-db"))
        .arg("-tls_ca")
        .arg(&pki.ca)
        .args(["--bundlestore_url", &addr(control, API_HTTP).to_string()])
        .args(["create", "ingest_dir", "--dir"])
        .arg(&data)
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(
        ingest.status.success(),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    let snapshot = String::from_utf8(ingest.stdout).unwrap().trim().to_string();
    client_host
        .run_on_thread(|| {
            let mut client = cloudscoot(addr(control, THRIFT));
            let mut definition = task("cat", &["cat", "file.txt"]);
            definition.snapshot_id = Some(snapshot.clone());
            let job_id = client.run_job(job(vec![definition])).unwrap().id;
            let status = poll_job(&mut client, &job_id);
            let fetched = outputs(&status, &pki.ca);
            assert!(
                fetched[0].2.contains("snapshot across hosts"),
                "{:?}",
                fetched[0]
            );
        })
        .unwrap();

    // A REAPI action from the client host, run by a worker that fetches over TLS.
    client_host
        .run_on_thread(|| {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let security = pki.client(dir.path(), Some(BUILDER));
                let cas = scoot_cas_client::CasClient::connect_with(
                    &addr(control, GRPC).to_string(),
                    "",
                    &security,
                )
                .await
                .unwrap();
                let out = run_action(&cas, "echo across hosts > out.txt")
                    .await
                    .unwrap();
                assert_eq!(&out[..], b"across hosts\n");
            });
        })
        .unwrap();

    // CloudScoot tasks spread over every worker; their stdout comes over HTTPS from the worker
    // hosts' advertised addresses.
    client_host
        .run_on_thread(|| {
            let mut client = cloudscoot(addr(control, THRIFT));
            let tasks: Vec<(String, String)> = (0..9)
                .map(|i| (format!("t{i}"), format!("sleep 2; echo task-{i}")))
                .collect();
            let status = run_job(&mut client, &tasks, || {});
            let fetched = outputs(&status, &pki.ca);
            let hosts: BTreeSet<&str> = fetched.iter().map(|(_, h, _)| h.as_str()).collect();
            let expected: BTreeSet<String> = workers.iter().map(|w| w.addr.to_string()).collect();
            let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
            assert_eq!(hosts, expected, "tasks did not run on every worker");
            for (task, _, body) in &fetched {
                assert!(
                    body.contains(&format!("task-{}", &task[1..])),
                    "{task}: {body}"
                );
            }
        })
        .unwrap();

    // Bazel 2.1 builds the sample workspace through grpcs:// with a token, every action
    // remote, from the client host.
    let sample = Sample::new();
    let ns_host = client_host.clone();
    let bazel = sample
        .bazel(bazel_binary())
        .launched_by(move |bin| ns_host.command(bin));
    let executor = format!("--remote_executor=grpcs://{}", addr(control, GRPC));
    let certificate = format!("--tls_certificate={}", pki.ca.display());
    let header = format!("--remote_header=Authorization=Bearer {BUILDER}");
    let output = bazel.run(
        "multihost-build",
        &[
            "build",
            "--color=no",
            "--curses=no",
            &executor,
            &certificate,
            &header,
            "--jobs=8",
            "//...",
        ],
    );
    assert_all_remote("multihost-build", &output);
    drop(bazel);

    // A worker's link is cut for 30 s while every worker runs a task: every task completes.
    client_host
        .run_on_thread(|| {
            let mut client = cloudscoot(addr(control, THRIFT));
            let tasks: Vec<(String, String)> = (0..3)
                .map(|i| (format!("c{i}"), format!("sleep 20; echo survived-{i}")))
                .collect();
            let status = run_job(&mut client, &tasks, || {
                net.cut(1).unwrap();
                std::thread::sleep(Duration::from_secs(30));
                net.restore(1).unwrap();
            });
            for (task, run) in status.task_data.as_ref().unwrap() {
                assert_eq!(run.exit_code, Some(0), "{task}: {run:?}");
            }
            for (task, _, body) in outputs(&status, &pki.ca) {
                assert!(
                    body.contains(&format!("survived-{}", &task[1..])),
                    "{task}: {body}"
                );
            }
        })
        .unwrap();

    // A worker host is lost for good mid-task: its task is retried on the others.
    client_host
        .run_on_thread(|| {
            let mut client = cloudscoot(addr(control, THRIFT));
            let tasks: Vec<(String, String)> = (0..3)
                .map(|i| (format!("k{i}"), format!("sleep 10; echo after-{i}")))
                .collect();
            let lost = workers[2].addr.to_string();
            let status = run_job(&mut client, &tasks, || {
                drop(worker_procs[2].take());
                net.kill_host(3).unwrap();
            });
            for (task, run) in status.task_data.as_ref().unwrap() {
                assert_eq!(run.exit_code, Some(0), "{task}: {run:?}");
                let uri = run.out_uri.clone().unwrap_or_default();
                assert!(
                    !uri.contains(&lost),
                    "{task} reported from the lost host: {uri}"
                );
            }
        })
        .unwrap();
    scheduler.assert_running();
    apiserver.assert_running();
}
