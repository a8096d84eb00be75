//! The scheduler's and workers' Thrift ports stay open to new clients while idle and slow
//! clients hold connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use scoot_thrift::worker::{TWorkerSyncClient, WorkerSyncClient};
use serde_json::json;
use thrift::protocol::{TBinaryOutputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol};

use crate::support::*;

const IDLE: usize = 1000;
const SLOW: usize = 100;
/// How long a new client may wait for an answer while a port is flooded.
const ANSWERED_WITHIN: Duration = Duration::from_secs(20);

/// A call with no arguments, as a client sends it.
fn call(name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let out = &mut TBinaryOutputProtocol::new(&mut bytes, true);
    out.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Call, 1))
        .unwrap();
    out.write_field_stop().unwrap();
    bytes
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Connections to one port that never finish a request: idle ones, and slow ones that send all
/// but the last byte of a real request, one byte a second. They are held until dropped.
struct Flood {
    _idle: Vec<TcpStream>,
    stop: Option<mpsc::Sender<()>>,
    dribbler: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(port: u16, request: Vec<u8>) -> Flood {
        let idle = (0..IDLE).map(|_| connect(port)).collect();
        let mut slow: Vec<TcpStream> = (0..SLOW).map(|_| connect(port)).collect();
        let (stop, stopped) = mpsc::channel();
        let dribbler = std::thread::spawn(move || {
            for byte in &request[..request.len() - 1] {
                for stream in &mut slow {
                    // A server may close a request that takes too long; that is its right.
                    let _ = stream.write_all(&[*byte]);
                }
                if stopped.recv_timeout(Duration::from_secs(1)) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            }
            let _ = stopped.recv();
        });
        Flood {
            _idle: idle,
            stop: Some(stop),
            dribbler: Some(dribbler),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(dribbler) = self.dribbler.take() {
            let _ = dribbler.join();
        }
    }
}

/// Sockets the process has open (its listeners and connections).
fn open_sockets(proc: &Proc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", proc.child.id()))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn idle_and_slow_connections_do_not_lock_clients_out() {
    // This process holds both floods.
    scoot_thrift::server::raise_open_files_limit().unwrap();
    let worker = Worker::start(&[]);
    let sched = Scheduler::start(&[&worker], json!({}));
    let _floods = [
        Flood::start(worker.thrift_port, call("QueryWorker")),
        Flood::start(sched.thrift_port, call("GetSchedulerStatus")),
    ];
    for (proc, name) in [(&worker.proc, "worker"), (&sched.proc, "scheduler")] {
        poll(&format!("the {name} to hold every connection"), || {
            (open_sockets(proc) >= IDLE + SLOW).then_some(())
        });
    }

    let started = Instant::now();
    let (input, output) = scoot_thrift::client::connect(
        &format!("127.0.0.1:{}", worker.thrift_port),
        ANSWERED_WITHIN,
        None,
    )
    .unwrap();
    let status = WorkerSyncClient::new(input, output)
        .query_worker()
        .expect("QueryWorker answered while the worker's port is flooded");
    assert!(status.initialized);
    let (input, output) = scoot_thrift::client::connect(
        &format!("127.0.0.1:{}", sched.thrift_port),
        ANSWERED_WITHIN,
        None,
    )
    .unwrap();
    let mut client = CloudScoot(CloudScootClient::new(input, output));
    client
        .0
        .get_scheduler_status()
        .expect("GetSchedulerStatus answered while the scheduler's port is flooded");
    assert!(started.elapsed() < ANSWERED_WITHIN);

    // The scheduler reaches the flooded worker too: a job runs to completion.
    let id = client
        .0
        .run_job(job(vec![task("echo", &["echo", "hi"])]))
        .unwrap()
        .id;
    let status = wait_job(&mut client, &id);
    let echo = &status.task_data.unwrap()["echo"];
    assert_eq!(
        (echo.status, echo.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0))
    );
}

/// A scheduler with no workers and no gRPC port, with `flags` added. Its worker list is an empty
/// static file: the default config would find every workerserver process on the machine, and
/// abort other tests' runs as leftovers.
fn scheduler_with(flags: &[&str]) -> (Proc, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let workers_file = dir.path().join("workers");
    write_workers(&workers_file, &[]);
    let config = json!({"Cluster": {"Type": "static", "File": workers_file}});
    let (proc, ports) = spawn_listening("scheduler", 2, |ports| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scheduler"));
        cmd.args(["-config", &config.to_string()])
            .arg("-thrift_addr")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("-http_addr")
            .arg(format!("127.0.0.1:{}", ports[1]))
            .args(["-grpc_addr", "", "-log_level", "debug"])
            .args(flags)
            .stderr(log_file(&format!("scheduler-{}", ports[0])));
        cmd
    });
    (proc, ports[0], dir)
}

#[test]
fn a_request_slower_than_the_message_timeout_is_cut_off() {
    let flags = [
        "-thrift_message_timeout",
        "1s",
        "-thrift_idle_timeout",
        "1h",
        "-thrift_max_conns",
        "5000",
    ];
    let worker = Worker::start(&flags);
    let (_sched, sched_port, _dir) = scheduler_with(&flags);
    for (port, request) in [
        (worker.thrift_port, call("QueryWorker")),
        (sched_port, call("GetSchedulerStatus")),
    ] {
        let mut idle = connect(port);
        let mut slow = connect(port);
        let started = Instant::now();
        slow.write_all(&request[..5]).unwrap();
        let mut byte = [0; 1];
        assert!(
            matches!(slow.read(&mut byte), Ok(0)),
            "a partial request is not cut off"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        // Idle longer than a request may take, the other connection is still served.
        idle.write_all(&request).unwrap();
        assert!(idle.read(&mut byte).unwrap() == 1, "no reply");
    }
}

#[test]
fn bad_thrift_limits_are_reported() {
    let binaries = [
        (env!("CARGO_BIN_EXE_scheduler"), &["-grpc_addr", ""][..]),
        (env!("CARGO_BIN_EXE_workerserver"), &[][..]),
    ];
    for (binary, extra) in binaries {
        for (flag, value, reason) in [
            ("-thrift_max_conns", "0", "at least 1"),
            ("-thrift_message_timeout", "0s", "longer than zero"),
            ("-thrift_idle_timeout", "0s", "longer than zero"),
        ] {
            let what = format!("{binary} {flag} {value}");
            let mut cmd = Command::new(binary);
            cmd.args(["-thrift_addr", "127.0.0.1:0", "-http_addr", "127.0.0.1:0"])
                .args(extra)
                .args([flag, value])
                .stderr(std::process::Stdio::piped());
            let mut proc = Proc::spawn(&what, cmd);
            let status = poll(&format!("{what} to exit"), || {
                proc.child.try_wait().unwrap()
            });
            let mut stderr = String::new();
            proc.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(!status.success(), "{what}");
            assert!(
                stderr.contains(flag) && stderr.contains(reason),
                "{what}: {stderr}"
            );
        }
    }
}
