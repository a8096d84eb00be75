//! `-thrift_tls` across a cluster: a worker and a scheduler serve their Thrift ports over TLS,
//! the scheduler reaches the worker over TLS, and scootcl the scheduler.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::*;

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_cluster_speaks_thrift_over_tls_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]);
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
    );
    let flags = [
        "-thrift_tls",
        "-tls_cert",
        cert,
        "-tls_key",
        key,
        "-tls_ca",
        ca,
        // Client certificates on every port: the scheduler presents its own to the worker.
        "-tls_client_ca",
        ca,
    ];
    let identity = scoot_security::client_tls::Identity {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    };
    let member = scoot_security::ClientTls::new(&pki.ca, Some(&identity)).unwrap();
    let worker = Worker::start_tls(&flags, &member);
    let sched = Scheduler::start_with_flags(&[&worker], json!({}), &flags);
    let addr = format!("127.0.0.1:{}", sched.thrift_port);
    let scootcl = |tls: &[&str], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_scootcl"))
            .args(tls)
            .args(["--addr", &addr])
            .args(args)
            .output()
            .unwrap()
    };
    let over_tls = [
        "-thrift_tls",
        "-tls_ca",
        ca,
        "-tls_cert",
        cert,
        "-tls_key",
        key,
    ];

    let id = ok(scootcl(
        &over_tls,
        &["run_job", "sh", "-c", "echo over-tls"],
    ))
    .trim()
    .to_string();
    let watched = ok(scootcl(&over_tls, &["watch_job", &id, "--timeout", "60s"]));
    assert!(
        watched.contains(&format!("JobStatus({{ID:{id} Status:COMPLETED ")),
        "{watched}"
    );
    let status: Value =
        serde_json::from_str(&ok(scootcl(&over_tls, &["get_job_status", &id, "--json"]))).unwrap();
    assert_eq!(status["taskData"]["task1"]["exitCode"], 0, "{status}");

    // Scoot's plaintext wire is refused on the TLS port, and so is a client without a
    // certificate; the port keeps serving.
    let error = failed(scootcl(&[], &["get_job_status", &id]));
    assert!(error.contains("scheduler at"), "{error}");
    let error = failed(scootcl(
        &["-thrift_tls", "-tls_ca", ca],
        &["get_job_status", &id],
    ));
    assert!(error.contains("scheduler at"), "{error}");
    ok(scootcl(&over_tls, &["get_job_status", &id]));
}

#[test]
fn thrift_tls_without_the_files_it_needs_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]);
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    // A scheduler connects to workers: it needs the CA that verifies them.
    let scheduler = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .args(["-thrift_tls", "-tls_cert", cert, "-tls_key", key])
        .args(["-thrift_addr", "127.0.0.1:0", "-http_addr", "127.0.0.1:0"])
        .args(["-grpc_addr", ""])
        .output()
        .unwrap();
    let error = failed(scheduler);
    assert!(error.contains("-tls_ca"), "{error}");
    // A worker serves Thrift: it needs a certificate.
    let worker = Command::new(env!("CARGO_BIN_EXE_workerserver"))
        .args(["-thrift_tls", "-thrift_addr", "127.0.0.1:0"])
        .args(["-http_addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let error = failed(worker);
    assert!(error.contains("-tls_cert and -tls_key"), "{error}");
}
