//! A private PostgreSQL server: `initdb` in a directory of its own, `postgres` on a free port of
//! 127.0.0.1, stopped when dropped. What the tests of the PostgreSQL saga log and of
//! highly-available schedulers start, so that no test depends on a database of the machine.
//!
//! PostgreSQL refuses to run as root; started by root, the server and `initdb` run as the
//! `postgres` user (which Debian's package creates), owning the data and socket directories.
//! The binaries come from `$SCOOT_PG_BIN` or the newest `/usr/lib/postgresql/<version>/bin`.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown};

/// The superuser `initdb` creates; clients connect as it without a password (trust, loopback
/// only).
pub const SUPERUSER: &str = "scoot";

/// How long the server may take to accept connections, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts on fresh ports when the chosen one was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) in $SCOOT_PG_BIN or /usr/lib/postgresql/*/bin; install Debian's postgresql-15"
    )]
    NoBinaries,
    #[error(
        "PostgreSQL does not run as root and there is no `postgres` user to run it as (install Debian's postgresql-15)"
    )]
    NoUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}):\n{output}")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("the PostgreSQL server did not accept connections within {waited:?}; its log:\n{log}")]
    NotReady { waited: Duration, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PostgresError {
    let what = what.into();
    move |source| PostgresError::Io { what, source }
}

/// A running private PostgreSQL server. Dropping it stops the server (fast shutdown, then
/// SIGKILL) and, if it made its own directory, removes it.
pub struct PrivateCluster {
    bin: PathBuf,
    dir: PathBuf,
    owner: Option<User>,
    port: u16,
    settings: Vec<(String, String)>,
    server: Option<Child>,
    _scratch: Option<tempfile::TempDir>,
}

/// What to start: where, and server settings (`-c name=value`).
#[derive(Default)]
pub struct Options {
    /// The cluster's directory (data, socket, log); a temporary one, removed on drop, if `None`.
    /// An existing data directory in it is reused.
    pub dir: Option<PathBuf>,
    /// Extra server settings, e.g. `("ssl", "on")`.
    pub settings: Vec<(String, String)>,
    /// A certificate and key to serve TLS with (copied into the data directory, `ssl=on`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

fn bin_dir() -> Result<PathBuf, PostgresError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("SCOOT_PG_BIN").map(PathBuf::from) {
        return has_server(&dir)
            .then_some(dir)
            .ok_or(PostgresError::NoBinaries);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| PostgresError::NoBinaries)?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(PostgresError::NoBinaries)
}

fn free_port() -> Result<u16, PostgresError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("choosing a free port"))
}

impl PrivateCluster {
    /// Creates (unless it exists) and starts a cluster; returns once it accepts connections.
    pub fn start(options: Options) -> Result<PrivateCluster, PostgresError> {
        let bin = bin_dir()?;
        let owner = if nix::unistd::geteuid().is_root() {
            Some(
                User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or(PostgresError::NoUser)?,
            )
        } else {
            None
        };
        let (dir, scratch) = match options.dir {
            Some(dir) => (dir, None),
            None => {
                let scratch = tempfile::Builder::new()
                    .prefix("scoot-pg")
                    .tempdir()
                    .map_err(io("creating a directory for PostgreSQL"))?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        let mut cluster = PrivateCluster {
            bin,
            dir,
            owner,
            port: 0,
            settings: options.settings,
            server: None,
            _scratch: scratch,
        };
        cluster.prepare(options.tls.as_ref())?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The URL clients connect with (plaintext unless the server was given TLS and the caller
    /// adds `sslmode`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Where the server's binaries (and `psql`, `pg_dump`) are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command running `program` of the server's binaries as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some(owner) = &self.owner {
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        cmd.stdin(Stdio::null()).current_dir(&self.dir);
        cmd
    }

    fn give(&self, path: &Path) -> Result<(), PostgresError> {
        if let Some(owner) = &self.owner {
            chown(path, Some(owner.uid), Some(owner.gid))
                .map_err(|e| io(format!("chown {}", path.display()))(e.into()))?;
        }
        Ok(())
    }

    /// Runs `initdb` unless the data directory exists; places the TLS files.
    fn prepare(&self, tls: Option<&(PathBuf, PathBuf)>) -> Result<(), PostgresError> {
        fs::create_dir_all(&self.dir).map_err(io(format!("create {}", self.dir.display())))?;
        // The server's user must reach its directories inside ours.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", self.dir.display())))?;
        let socket = self.socket_dir();
        fs::create_dir_all(&socket).map_err(io(format!("create {}", socket.display())))?;
        self.give(&socket)?;
        let data = self.data_dir();
        if !data.join("PG_VERSION").is_file() {
            fs::create_dir_all(&data).map_err(io(format!("create {}", data.display())))?;
            fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
                .map_err(io(format!("chmod {}", data.display())))?;
            self.give(&data)?;
            let output = self
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
                .output()
                .map_err(io("running initdb"))?;
            if !output.status.success() {
                return Err(PostgresError::Failed {
                    what: "initdb".into(),
                    status: output.status,
                    output: format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    ),
                });
            }
        }
        if let Some((cert, key)) = tls {
            for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
                let to = data.join(name);
                fs::copy(from, &to).map_err(io(format!("copy {}", from.display())))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                    .map_err(io(format!("chmod {}", to.display())))?;
                self.give(&to)?;
            }
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<(), PostgresError> {
        let tls = self.data_dir().join("server.crt").is_file();
        let mut last = None;
        for attempt in 0..PORT_ATTEMPTS {
            // A restart keeps its port when it can, so that clients' URLs stay right.
            if attempt > 0 || self.port == 0 {
                self.port = free_port()?;
            }
            let log = fs::File::create(self.log_path())
                .map_err(io(format!("create {}", self.log_path().display())))?;
            let mut cmd = self.command("postgres");
            cmd.arg("-D")
                .arg(self.data_dir())
                .arg("-k")
                .arg(self.socket_dir())
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0);
            if tls {
                cmd.args(["-c", "ssl=on"]);
            }
            for (name, value) in &self.settings {
                cmd.arg("-c").arg(format!("{name}={value}"));
            }
            let child = cmd.spawn().map_err(io("starting postgres"))?;
            self.server = Some(child);
            match self.wait_ready() {
                Ok(()) => {
                    tracing::info!(port = self.port, dir = %self.dir.display(), "private PostgreSQL started");
                    return Ok(());
                }
                // The port was taken between choosing and binding it: try another.
                Err(err @ PostgresError::Failed { .. }) => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or(PostgresError::NoBinaries))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Polls `pg_isready` until the server accepts connections; `Failed` if it exits first.
    fn wait_ready(&mut self) -> Result<(), PostgresError> {
        let started = Instant::now();
        loop {
            if let Some(server) = &mut self.server
                && let Ok(Some(status)) = server.try_wait()
            {
                self.server = None;
                return Err(PostgresError::Failed {
                    what: "postgres".into(),
                    status,
                    output: self.log_text(),
                });
            }
            let ready = self
                .command("pg_isready")
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-p",
                ])
                .arg(self.port.to_string())
                .status()
                .map_err(io("running pg_isready"))?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                self.stop();
                return Err(PostgresError::NotReady {
                    waited: START_TIMEOUT,
                    log: self.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) -> Result<(), PostgresError> {
        let output = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-U", SUPERUSER, "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .output()
            .map_err(io("running createdb"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(PostgresError::Failed {
                what: format!("createdb {name}"),
                status: output.status,
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, committed work is kept), SIGKILL
    /// after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pid = Pid::from_raw(server.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            port = self.port,
            "PostgreSQL did not stop in time; killing it"
        );
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        let _ = server.wait();
    }

    /// Starts the server again on the same data directory and port (a new port only if the old
    /// one was taken meanwhile).
    pub fn restart(&mut self) -> Result<(), PostgresError> {
        self.stop();
        self.start_server()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_serves_and_stops() {
        let mut cluster = PrivateCluster::start(Options::default()).unwrap();
        cluster.create_database("scoot_test").unwrap();
        let pid = cluster.server.as_ref().unwrap().id() as i32;
        let dir = cluster.dir.clone();
        assert!(cluster.url("scoot_test").ends_with("/scoot_test"));
        cluster.stop();
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "postgres still running after stop"
        );
        drop(cluster);
        assert!(!dir.exists(), "the temporary directory is removed");
    }
}
