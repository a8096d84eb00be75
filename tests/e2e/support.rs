//! Starting and stopping real binaries for tests, and the small clients tests use.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port nothing listens on, never handed out before in this test process: a scheduler whose
/// worker a test killed keeps probing that worker's port, and would abort the runs of another
/// test's worker that got the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no port that was not handed out before");
}

/// Polls `probe` until it returns `Some`, failing the test with `what` after [`DEADLINE`].
pub fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process in its own process group, killed with its whole group when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// The process's TMPDIR, removed after it is killed: servers killed with SIGKILL cannot
    /// remove their own temporary directories (checkouts, snapshot repositories, outputs).
    _scratch: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        // Passable (0711) for the unprivileged user a root worker runs actions as.
        let scratch = tempfile::Builder::new()
            .prefix("e2e-scratch")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .tempdir()
            .unwrap();
        // A TMPDIR the caller chose is kept (Bazel's server outlives the client started here).
        if !cmd.get_envs().any(|(key, _)| key == "TMPDIR") {
            cmd.env("TMPDIR", scratch.path());
        }
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            _scratch: scratch,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }

    /// Waits for `port` to accept connections; `Err` if the process exits first.
    fn try_wait_for_port(&mut self, port: u16) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {} to listen on {port}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_for_port(&mut self, port: u16) {
        poll(&format!("{} to listen on {port}", self.name), || {
            self.assert_running();
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A log file under target/e2e-logs for a server's stderr, so a failing test can be diagnosed.
pub fn log_file(name: &str) -> Stdio {
    let dir = repo_root().join("target/e2e-logs");
    std::fs::create_dir_all(&dir).expect("create target/e2e-logs");
    let path = dir.join(format!("{name}.log"));
    std::fs::File::create(&path)
        .map(Stdio::from)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
}

/// Starts a server on `count` free ports (as built by `command`) and waits until it listens on
/// all of them. A free port can be taken by someone else between choosing and binding it; a
/// server that exits before listening is therefore started again on fresh ports.
pub fn spawn_listening(
    name: &str,
    count: usize,
    command: impl Fn(&[u16]) -> Command,
) -> (Proc, Vec<u16>) {
    for _ in 0..5 {
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let mut proc = Proc::spawn(name, command(&ports));
        if ports.iter().all(|p| proc.try_wait_for_port(*p).is_ok()) {
            return (proc, ports);
        }
    }
    panic!("{name} could not start on free ports five times (see target/e2e-logs)");
}

pub struct Worker {
    pub proc: Proc,
    pub thrift_port: u16,
    pub http_port: u16,
}

impl Worker {
    pub fn start(extra_args: &[&str]) -> Worker {
        Worker::start_with_env(extra_args, &[])
    }

    /// A worker with `env` added to its environment.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Worker {
        let (proc, ports) = spawn_listening("workerserver", 2, |ports| {
            let mut cmd = Worker::command(ports[0], ports[1], extra_args);
            cmd.envs(env.iter().copied())
                .stderr(log_file(&format!("workerserver-{}", ports[0])));
            cmd
        });
        Worker::initialised(proc, ports[0], ports[1])
    }

    /// A worker on the given ports (a restart of one that was killed), logging to `log`.
    pub fn start_on(thrift_port: u16, http_port: u16, log: &str) -> Worker {
        let mut cmd = Worker::command(thrift_port, http_port, &[]);
        cmd.stderr(log_file(log));
        let mut proc = Proc::spawn("workerserver", cmd);
        proc.wait_for_port(thrift_port);
        proc.wait_for_port(http_port);
        Worker::initialised(proc, thrift_port, http_port)
    }

    /// A worker started with `flags` that make it serve Thrift over TLS (`-thrift_tls`,
    /// `-tls_cert`, ...), initialised as QueryWorker over TLS with `tls` reports.
    pub fn start_tls(flags: &[&str], tls: &scoot_security::ClientTls) -> Worker {
        use scoot_thrift::worker::TWorkerSyncClient;
        let (proc, ports) = spawn_listening("workerserver", 2, |ports| {
            let mut cmd = Worker::command(ports[0], ports[1], flags);
            cmd.stderr(log_file(&format!("workerserver-{}", ports[0])));
            cmd
        });
        let addr = format!("127.0.0.1:{}", ports[0]);
        poll("the worker to be initialised", || {
            let (i, o) = scoot_thrift::client::connect(&addr, DEADLINE, Some(tls.rustls())).ok()?;
            let status = scoot_thrift::worker::WorkerSyncClient::new(i, o)
                .query_worker()
                .ok()?;
            status.initialized.then_some(())
        });
        Worker {
            proc,
            thrift_port: ports[0],
            http_port: ports[1],
        }
    }

    fn command(thrift_port: u16, http_port: u16, extra_args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_workerserver"));
        cmd.arg("-thrift_addr")
            .arg(format!("127.0.0.1:{thrift_port}"))
            .arg("-http_addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(extra_args);
        if !extra_args.contains(&"-log_level") {
            cmd.args(["-log_level", "debug"]);
        }
        cmd
    }

    /// Waits for initialisation (the snapshot data repository), which finishes after the ports
    /// open.
    fn initialised(proc: Proc, thrift_port: u16, http_port: u16) -> Worker {
        let worker = Worker {
            proc,
            thrift_port,
            http_port,
        };
        poll("the worker to be initialised", || {
            (worker.http_get("/health", &[]).status == 200).then_some(())
        });
        worker
    }

    pub fn http_get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_get(self.http_port, path, headers)
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 GET (Connection: close), enough to check status, headers and body.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to http port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_http_response(&raw)
}

/// Status 0 means the server closed the connection without answering.
fn parse_http_response(raw: &[u8]) -> HttpResponse {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return HttpResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("http status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// The Python interpreter that has the Apache `thrift` package (`make test-deps` creates it).
pub fn python() -> PathBuf {
    let path = std::env::var_os("SCOOT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/pyenv/bin/python"));
    assert!(
        path.exists(),
        "{} not found: run `make test-deps` (creates a venv with the PyPI thrift package)",
        path.display()
    );
    path
}

/// Generates Python bindings for `idl` with the Apache Thrift compiler into a temp dir.
fn generate_python(idl: &str) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("thrift")
        .args(["--gen", "py", "-out"])
        .arg(out.path())
        .arg(repo_root().join("thrift").join(idl))
        .status()
        .expect("the thrift compiler is needed: run `make test-deps`");
    assert!(status.success(), "thrift --gen py {idl} failed");
    out
}

/// A client generated by Apache Thrift (Python) talking to a worker over one connection.
pub struct PyWorkerClient {
    _proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _gen: tempfile::TempDir,
}

impl PyWorkerClient {
    pub fn connect(port: u16) -> PyWorkerClient {
        let gen_dir = generate_python("worker.thrift");
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/e2e/py/worker_driver.py"))
            .arg(gen_dir.path())
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("python worker client", cmd);
        let stdin = proc.child.stdin.take().unwrap();
        let stdout = BufReader::new(proc.child.stdout.take().unwrap());
        PyWorkerClient {
            _proc: proc,
            stdin,
            stdout,
            _gen: gen_dir,
        }
    }

    pub fn call(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad reply {line:?} to {request}: {e}"));
        assert!(reply.get("exception").is_none(), "{request} raised {reply}");
        reply
    }

    pub fn run(&mut self, argv: &[&str], timeout_ms: Option<i32>) -> Value {
        self.call(
            serde_json::json!({"call": "Run", "argv": argv, "timeoutMs": timeout_ms,
            "jobId": "job1", "taskId": "task1", "tag": "tag1"}),
        )
    }

    /// Polls QueryWorker until `run_id` is in a final state and returns that status.
    pub fn wait_done(&mut self, run_id: &str) -> Value {
        poll(&format!("run {run_id} to finish"), || {
            let status = self.call(serde_json::json!({"call": "QueryWorker"}));
            status["runs"]
                .as_array()?
                .iter()
                .find(|r| {
                    r["runId"] == run_id
                        && [0, 3, 4, 5, 6].contains(&r["status"].as_i64().unwrap_or(-1))
                })
                .cloned()
        })
    }
}

/// The local file behind an output URI (`http://…/output/x?file=file://host/path` or `file://host/path`).
pub fn file_of_uri(uri: &str) -> PathBuf {
    let file_uri = uri.split_once("?file=").map_or(uri, |(_, f)| f);
    let rest = file_uri.strip_prefix("file://").expect("file:// URI");
    PathBuf::from(&rest[rest.find('/').expect("absolute path")..])
}

/// The command's own output: what follows the SCOOT_CMD_LOG header marker.
pub fn command_output(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_once("SCOOT_CMD_LOG\n")
        .map(|(_, body)| body.to_string())
        .expect("output has the SCOOT_CMD_LOG marker")
}

/// True when a non-zombie process belongs to process group `pgid`.
/// True while `pid` is a process that has not ended (a zombie has).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
    })
}

/// A scheduler process with its workers listed in a static file.
pub struct Scheduler {
    pub proc: Proc,
    pub thrift_port: u16,
    pub http_port: u16,
    /// The Remote Execution API (and its CAS, kept in the scheduler's temp dir).
    pub grpc_port: u16,
    pub workers_file: PathBuf,
    pub saga_dir: PathBuf,
    /// The config's SagaLog section, kept across restarts.
    saga_log: Value,
    _dir: tempfile::TempDir,
}

impl Scheduler {
    /// Starts a scheduler whose cluster is `workers`, with a file saga log and these
    /// SchedulerConfig settings merged in.
    pub fn start(workers: &[&Worker], scheduler_config: Value) -> Scheduler {
        Scheduler::start_with_flags(workers, scheduler_config, &[])
    }

    /// [`Scheduler::start`] with more command-line flags (e.g. `-cas_fallback`).
    pub fn start_with_flags(
        workers: &[&Worker],
        scheduler_config: Value,
        flags: &[&str],
    ) -> Scheduler {
        let dir = tempfile::tempdir().unwrap();
        let saga_dir = dir.path().join("sagas");
        let saga_log = serde_json::json!({"Type": "file", "Directory": saga_dir});
        Scheduler::start_in(dir, workers, saga_log, scheduler_config, flags)
    }

    /// Like [`Scheduler::start`] with its saga log in the PostgreSQL database at `url`.
    pub fn start_on_postgres(workers: &[&Worker], url: &str, scheduler_config: Value) -> Scheduler {
        let saga_log = serde_json::json!({"Type": "postgres", "Url": url});
        let dir = tempfile::tempdir().unwrap();
        Scheduler::start_in(dir, workers, saga_log, scheduler_config, &[])
    }

    fn start_in(
        dir: tempfile::TempDir,
        workers: &[&Worker],
        saga_log: Value,
        scheduler_config: Value,
        flags: &[&str],
    ) -> Scheduler {
        let workers_file = dir.path().join("workers");
        write_workers(&workers_file, workers);
        let saga_dir = dir.path().join("sagas");
        let config = static_config(&workers_file, &saga_log, scheduler_config);
        Scheduler::start_with(dir, workers_file, saga_dir, config, flags)
    }

    /// Starts a scheduler with the whole `config`; restarts keep its SagaLog section.
    pub fn start_with(
        dir: tempfile::TempDir,
        workers_file: PathBuf,
        saga_dir: PathBuf,
        config: Value,
        flags: &[&str],
    ) -> Scheduler {
        let saga_log = config["SagaLog"].clone();
        let cas_dir = dir.path().join("cas");
        let (proc, ports) = spawn_listening("scheduler", 3, |ports| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_scheduler"));
            cmd.arg("-thrift_addr")
                .arg(format!("127.0.0.1:{}", ports[0]))
                .arg("-http_addr")
                .arg(format!("127.0.0.1:{}", ports[1]))
                .arg("-grpc_addr")
                .arg(format!("127.0.0.1:{}", ports[2]))
                .args(["-config", &config.to_string()]);
            if !flags.contains(&"-log_level") {
                cmd.args(["-log_level", "debug"]);
            }
            cmd.args(flags)
                .stderr(log_file(&format!("scheduler-{}", ports[0])));
            // A sharded CAS keeps nothing on the scheduler.
            if !flags.contains(&"-cas_shards") {
                cmd.arg("-cas_dir").arg(&cas_dir);
            }
            cmd
        });
        let (thrift_port, http_port, grpc_port) = (ports[0], ports[1], ports[2]);
        Scheduler {
            proc,
            thrift_port,
            http_port,
            grpc_port,
            workers_file,
            saga_dir,
            saga_log,
            _dir: dir,
        }
    }

    /// Kills this scheduler with SIGKILL and starts a new one on the same saga log and workers.
    pub fn kill_and_restart(self, scheduler_config: Value) -> Scheduler {
        self.kill_and_restart_with(scheduler_config, |_| {})
    }

    /// Like [`kill_and_restart`](Self::kill_and_restart), running `meanwhile` on the saga log's
    /// directory while no scheduler runs.
    pub fn kill_and_restart_with(
        self,
        scheduler_config: Value,
        meanwhile: impl FnOnce(&Path),
    ) -> Scheduler {
        let Scheduler {
            mut proc,
            workers_file,
            saga_dir,
            saga_log,
            _dir,
            ..
        } = self;
        let _ = killpg(proc.pid(), Signal::SIGKILL);
        let _ = proc.child.wait();
        meanwhile(&saga_dir);
        let config = static_config(&workers_file, &saga_log, scheduler_config);
        Scheduler::start_with(_dir, workers_file, saga_dir, config, &[])
    }

    pub fn client(&self) -> CloudScoot {
        CloudScoot::connect(self.thrift_port)
    }

    /// Waits until this scheduler leads: its `/health` answers 200 (a standby's, 503).
    pub fn wait_leading(&mut self) {
        poll("the scheduler to lead", || {
            self.proc.assert_running();
            (http_get(self.http_port, "/health", &[]).status == 200).then_some(())
        });
    }

    /// Where this scheduler's stderr goes (target/e2e-logs).
    pub fn log_path(&self) -> PathBuf {
        repo_root().join(format!(
            "target/e2e-logs/scheduler-{}.log",
            self.thrift_port
        ))
    }
}

/// A scheduler config over a static worker list and the saga log `saga_log`, with recovery on
/// and `scheduler_config` merged into SchedulerConfig.
fn static_config(workers_file: &Path, saga_log: &Value, scheduler_config: Value) -> Value {
    let mut sched = serde_json::json!({"Type": "stateful", "RecoverJobsOnStartup": true});
    if let (Some(base), Some(extra)) = (sched.as_object_mut(), scheduler_config.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::json!({
        "Cluster": {"Type": "static", "File": workers_file},
        "SchedulerConfig": sched,
        "SagaLog": saga_log,
    })
}

pub fn write_workers(path: &Path, workers: &[&Worker]) {
    let list: String = workers
        .iter()
        .map(|w| format!("127.0.0.1:{}\n", w.thrift_port))
        .collect();
    std::fs::write(path, list).unwrap();
}

pub type CloudScootClient = scoot_thrift::scoot::CloudScootSyncClient<
    scoot_thrift::client::InputProtocol,
    scoot_thrift::client::OutputProtocol,
>;

/// Our Rust CloudScoot client (generated by Apache Thrift from thrift/scoot.thrift).
pub struct CloudScoot(pub CloudScootClient);

impl CloudScoot {
    pub fn connect(port: u16) -> CloudScoot {
        let (i, o) =
            scoot_thrift::client::connect(&format!("127.0.0.1:{port}"), DEADLINE, None).unwrap();
        CloudScoot(CloudScootClient::new(i, o))
    }
}

pub fn task(id: &str, argv: &[&str]) -> scoot_thrift::scoot::TaskDefinition {
    scoot_thrift::scoot::TaskDefinition::new(
        scoot_thrift::scoot::Command::new(
            argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            None,
        ),
        None,
        Some(id.to_string()),
        None,
    )
}

pub fn job(tasks: Vec<scoot_thrift::scoot::TaskDefinition>) -> scoot_thrift::scoot::JobDefinition {
    scoot_thrift::scoot::JobDefinition::new(tasks, None, None, None, None, None, None, None)
}

/// Polls GetStatus until the job is COMPLETED and returns that status.
pub fn wait_job(client: &mut CloudScoot, job_id: &str) -> scoot_thrift::scoot::JobStatus {
    use scoot_thrift::scoot::TCloudScootSyncClient;
    poll(&format!("job {job_id} to complete"), || {
        let status = client.0.get_status(job_id.to_string()).unwrap();
        (status.status == scoot_thrift::scoot::Status::COMPLETED).then_some(status)
    })
}

/// Generates Python bindings for scoot.thrift and returns (python, bindings dir).
pub fn python_with_bindings(idl: &str) -> (PathBuf, tempfile::TempDir) {
    (python(), generate_python(idl))
}

/// An apiserver on free ports with its own store directory.
pub struct ApiServer {
    pub proc: Proc,
    pub http_port: u16,
    pub grpc_port: u16,
    pub store_dir: tempfile::TempDir,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        ApiServer::start_in(tempfile::tempdir().unwrap())
    }

    /// Kills this apiserver and starts another on the same store directory.
    pub fn restart(self) -> ApiServer {
        let ApiServer {
            mut proc,
            store_dir,
            ..
        } = self;
        let _ = killpg(proc.pid(), Signal::SIGKILL);
        let _ = proc.child.wait();
        ApiServer::start_in(store_dir)
    }

    fn start_in(store_dir: tempfile::TempDir) -> ApiServer {
        let (proc, ports) = spawn_listening("apiserver", 2, |ports| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiserver"));
            cmd.arg("-http_addr")
                .arg(format!("127.0.0.1:{}", ports[0]))
                .arg("-grpc_addr")
                .arg(format!("127.0.0.1:{}", ports[1]))
                .args(["-log_level", "debug"])
                .env("BUNDLESTORE_STORE_DIR", store_dir.path())
                .stderr(log_file(&format!("apiserver-{}", ports[0])));
            cmd
        });
        let (http_port, grpc_port) = (ports[0], ports[1]);
        ApiServer {
            proc,
            http_port,
            grpc_port,
            store_dir,
        }
    }

    pub fn bundle_url(&self) -> String {
        format!("http://127.0.0.1:{}/bundle/", self.http_port)
    }
}

/// A minimal HTTP/1.1 request with a body; `declared_len` may lie to simulate a truncated upload.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    declared_len: usize,
) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to http port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {declared_len}\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    if declared_len > body.len() {
        // The client gives up mid-upload.
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_http_response(&raw)
}

/// A `setup-cloud-scoot` cluster (`--strategy local.local` unless started with
/// [`LocalCluster::start_ha`]) at a port offset, in a directory that is also its HOME. Dropping
/// it stops it with SIGTERM (its children live in process groups of their own, so only
/// setup-cloud-scoot can take them down) and waits for it.
pub struct LocalCluster {
    pub proc: Proc,
    pub offset: u16,
    _home: tempfile::TempDir,
}

impl LocalCluster {
    pub fn start(offset: u16) -> LocalCluster {
        LocalCluster::start_with(offset, &[])
    }

    /// A cluster started with more `setup-cloud-scoot` flags.
    pub fn start_with(offset: u16, flags: &[&str]) -> LocalCluster {
        // The scheduler starts last and opens its gRPC port last.
        LocalCluster::launch(offset, "local.local", flags, 9099 + offset)
    }

    /// A `local.ha` cluster: PostgreSQL, two schedulers (the first leads), three apiservers
    /// sharing the CAS with two replicas.
    pub fn start_ha(offset: u16) -> LocalCluster {
        // The second scheduler starts once the first leads, and opens its gRPC port last.
        LocalCluster::launch(offset, "local.ha", &[], 9097 + offset)
    }

    fn launch(offset: u16, strategy: &str, flags: &[&str], last_port: u16) -> LocalCluster {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_setup-cloud-scoot"));
        cmd.current_dir(home.path())
            .env("HOME", home.path())
            .env_remove("SCOOT_ID")
            .args(["--strategy", strategy, "--port_offset"])
            .arg(offset.to_string())
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log_file(&format!("setup-cloud-scoot-{offset}")));
        let mut proc = Proc::spawn("setup-cloud-scoot", cmd);
        proc.wait_for_port(last_port);
        LocalCluster {
            proc,
            offset,
            _home: home,
        }
    }

    /// The (first) scheduler's Remote Execution API address.
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", 9099 + self.offset)
    }

    /// The second scheduler's of a `local.ha` cluster.
    pub fn standby_grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", 9097 + self.offset)
    }

    /// The first apiserver's gRPC (CAS) address.
    pub fn apiserver_grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", 12100 + self.offset)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.proc.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test CA, a certificate it signed for every name in `names` (plus 127.0.0.1 and localhost),
/// usable by servers and as a client certificate, and a second CA that signed nothing of ours.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, names: &[String]) -> Pki {
        fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert, rcgen::Issuer::new(params, key))
        }
        let (ca_cert, issuer) = ca("scoot test CA");
        let (other_cert, _) = ca("someone else's CA");
        let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        sans.extend(names.iter().cloned());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            other_ca: dir.join("other-ca.pem"),
        };
        std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
        std::fs::write(&pki.other_ca, other_cert.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// `-tls_cert … -tls_key … -tls_ca …`: serve TLS, trust the test CA.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "-tls_cert".into(),
            self.cert.display().to_string(),
            "-tls_key".into(),
            self.key.display().to_string(),
            "-tls_ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// A client trusting the test CA and sending `token` (none for `None`).
    pub fn client(&self, dir: &Path, token: Option<&str>) -> scoot_security::ClientSecurity {
        let token = match token {
            Some(token) => {
                let path = dir.join(format!("token-{}", &token[..8]));
                std::fs::write(&path, token).unwrap();
                scoot_security::grpc::BearerToken::from_file(&path).unwrap()
            }
            None => scoot_security::grpc::BearerToken::none(),
        };
        scoot_security::ClientSecurity {
            tls: Some(scoot_security::ClientTls::new(&self.ca, None).unwrap()),
            token,
            thrift_tls: false,
        }
    }
}
