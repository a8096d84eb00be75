//! Several "hosts" on one machine for multi-host end-to-end tests, made of Linux network
//! namespaces (needs root; see [`NetnsError::Unsupported`]).
//!
//! [`Network::create`] makes a private *switch* namespace holding a bridge, `br0`, and one
//! namespace per host. Each host has `lo` and `eth0`, a veth whose peer, `h<i>`, sits in the
//! switch namespace on the bridge; host `i` is `host<i>` at `10.213.<k>.<i+1>/24`, where `k`
//! counts the networks this process has made (mod 256). These addresses exist only inside the
//! network's namespaces: nothing (interface, address, route) is added to the caller's namespace,
//! so the hosts cannot reach it and it cannot reach them. The subnets of two networks never meet
//! either, as each has its own switch; `k` only makes addresses easier to tell apart in logs.
//!
//! Code runs "on" a host in two ways: a child process from [`Host::command`] (through
//! `ip netns exec`, which also maps `/etc/netns/<ns>/hosts` over `/etc/hosts`, so the host
//! names resolve), or a closure on a thread that has joined the host's namespace
//! ([`Host::run_on_thread`], [`Host::spawn_on_thread`]). A socket stays in the namespace it was
//! created in, so a listener bound on a host's thread can be returned and used from any thread.
//!
//! [`Network::cut`] pulls a host's cable (its switch-side port goes down), [`Network::restore`]
//! plugs it back in, and [`Network::kill_host`] takes the host off the network for good. Dropping
//! the [`Network`] deletes its namespaces and `/etc/netns` directories; leftovers of processes
//! that died without dropping theirs are removed by [`cleanup_stale`], which every
//! [`Network::create`] calls first.
//!
//! Namespace names are `scoot-t<pid>-<start>-<k>-sw` and `scoot-t<pid>-<start>-<k>-h<i>`:
//! `<pid>` and `<start>` (its start time, from `/proc/<pid>/stat`) identify the creating
//! process, so parallel test processes never clash and a leftover whose pid was reused by an
//! unrelated process is still recognised as stale.
//!
//! Timing, as measured here: a network of two hosts is up in about 0.1 s. During a cut, TCP
//! connections through the host stall (writes are buffered, nothing is lost or reset) and new
//! connections time out; after [`Network::restore`], new connections work at once, and stalled
//! data arrives at the sender's next retransmission, which backs off exponentially from
//! 200 ms (cuts of 1 to 6 s: 0.1 to 0.7 s after the restore; long cuts can take as long again).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::kill;
use nix::unistd::{Pid, geteuid};

/// What every namespace name made here starts with; [`cleanup_stale`] looks only at these.
pub const NAME_PREFIX: &str = "scoot-t";
/// The most hosts a network holds: one /24, less the network, broadcast and a margin.
pub const MAX_HOSTS: usize = 250;

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` looks for files to map over `/etc/<file>`.
const NETNS_ETC_DIR: &str = "/etc/netns";
const BRIDGE: &str = "br0";
const HOST_IF: &str = "eth0";
/// How long one `ip` command may take; they finish in milliseconds unless something is wrong.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a switch port may take to forward once up (immediately, as the bridge runs no STP).
const PORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers the networks of this process: their names and subnets.
static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);
/// Serialises [`Network::create`] and [`cleanup_stale`] within the process: the first
/// `ip netns add` on a machine makes `/run/netns` a shared mount, and concurrent first calls
/// could stack that mount; creation is quick, so tests lose little by waiting.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// What can go wrong while making, changing or entering a [`Network`].
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Namespaces cannot be made here (not root, no `ip`, no permission, no bridge or veth
    /// support): tests should skip, saying why.
    #[error("network namespaces are not available here: {0}")]
    Unsupported(String),
    #[error("a network holds 1 to {MAX_HOSTS} hosts, not {0}")]
    HostCount(usize),
    #[error("no host {index}: the network has {hosts}")]
    NoSuchHost { index: usize, hosts: usize },
    #[error("host {0} was taken off the network by kill_host")]
    HostKilled(usize),
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {waited:?}, so it was killed")]
    CommandTimeout { command: String, waited: Duration },
    #[error("switch port {port} of host {index} was not forwarding within {waited:?}: {state}")]
    PortNotForwarding {
        index: usize,
        port: String,
        waited: Duration,
        state: String,
    },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot join network namespace {ns}: {source}")]
    Setns {
        ns: String,
        #[source]
        source: Errno,
    },
    #[error("cannot start a thread for {host}: {source}")]
    Thread {
        host: String,
        #[source]
        source: io::Error,
    },
}

/// One host of a [`Network`].
#[derive(Clone, Debug)]
pub struct Host {
    /// `host<i>`: what the host's `/etc/hosts` (under [`Host::command`]) calls it.
    pub name: String,
    /// The namespace's name (for `ip netns exec`, `ip -n`).
    pub ns: String,
    /// The address of its `eth0`.
    pub addr: IpAddr,
    /// The `ip` binary, found at creation.
    ip: PathBuf,
}

impl Host {
    /// `/run/netns/<ns>`: the namespace itself, e.g. to compare with `/proc/<pid>/ns/net`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.ns)
    }

    /// A command that runs `program` in this host's namespace: `ip netns exec <ns> program`,
    /// to which the caller adds arguments, environment, stdio. `ip netns exec` execs the program
    /// (it does not fork), so the child's pid is the program's, and killing it kills the
    /// program. The program also gets its own mount namespace in which `/etc/hosts` is this
    /// network's (see [`Network::hosts_file`]) and `/sys` shows the host's interfaces.
    /// For tokio, convert it: `tokio::process::Command::from(host.command("x"))`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec"]).arg(&self.ns).arg(program);
        command
    }

    /// Runs `f` on a new OS thread that has joined this host's network namespace, and returns
    /// what it returns; a panic in `f` is resumed on the caller's thread. Sockets that `f`
    /// creates belong to the host (and stay so when returned), and so do threads `f` spawns
    /// (a multi-threaded tokio runtime built there, its blocking pool): build runtimes inside.
    /// The thread's other state (mounts, `/etc/hosts`) is the caller's, so use addresses, not
    /// host names.
    pub fn run_on_thread<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        // Opened here so that a missing namespace is reported before a thread is started.
        let netns = self.open_netns()?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    self.enter(&netns)?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    host: self.name.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Host::run_on_thread`], but returns at once with the thread's handle, for servers
    /// and other long-running work; joining gives `Err(Setns)` if the thread could not join
    /// the namespace (then `f` did not run).
    pub fn spawn_on_thread<F, T>(
        &self,
        f: F,
    ) -> Result<JoinHandle<Result<T, NetnsError>>, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let netns = self.open_netns()?;
        let host = self.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                host.enter(&netns)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread {
                host: self.name.clone(),
                source,
            })
    }

    fn open_netns(&self) -> Result<File, NetnsError> {
        let path = self.netns_path();
        File::open(&path).map_err(|source| NetnsError::Io {
            what: "open network namespace",
            path,
            source,
        })
    }

    /// Moves the calling thread (only it: the network namespace is per thread) into the host.
    fn enter(&self, netns: &File) -> Result<(), NetnsError> {
        setns(netns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
            ns: self.ns.clone(),
            source,
        })
    }
}

/// A switch and hosts in network namespaces; dropping it deletes them (see the module docs).
/// Kill the processes started on its hosts before dropping it: a namespace whose name is
/// deleted lives on while processes are in it (though without a link to the others).
#[derive(Debug)]
pub struct Network {
    ip: PathBuf,
    switch_ns: String,
    subnet: Ipv4Addr,
    hosts: Vec<Host>,
    killed: Vec<AtomicBool>,
    /// Every namespace created so far, deleted on drop (also after a failed creation).
    namespaces: Vec<String>,
    /// Every `/etc/netns/<ns>` directory written so far, removed on drop.
    etc_dirs: Vec<PathBuf>,
}

impl Network {
    /// Makes a switch and `hosts` hosts (see the module docs), after removing stale leftovers
    /// of dead processes. Returns [`NetnsError::Unsupported`] when namespaces cannot be made
    /// here. Returns once every host's port on the switch forwards.
    pub fn create(hosts: usize) -> Result<Network, NetnsError> {
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(NetnsError::HostCount(hosts));
        }
        if !geteuid().is_root() {
            return Err(NetnsError::Unsupported(
                "not running as root (named network namespaces need root)".to_string(),
            ));
        }
        let ip = find_ip().ok_or_else(|| {
            NetnsError::Unsupported(
                "no `ip` binary (iproute2) on PATH or in /usr/sbin, /sbin, /usr/bin, /bin"
                    .to_string(),
            )
        })?;
        let _serialised = CREATE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        remove_stale(&ip)?;

        let k = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        let stem = format!(
            "{NAME_PREFIX}{}-{}-{k}",
            std::process::id(),
            own_start_time()
        );
        // The third octet only tells networks apart in logs; % 256 keeps it one.
        let octet = u8::try_from(k % 256).unwrap_or(0);
        let mut network = Network {
            ip,
            switch_ns: format!("{stem}-sw"),
            subnet: Ipv4Addr::new(10, 213, octet, 0),
            hosts: Vec::with_capacity(hosts),
            killed: Vec::with_capacity(hosts),
            namespaces: Vec::with_capacity(hosts + 1),
            etc_dirs: Vec::with_capacity(hosts),
        };
        // From here on, an error drops `network`, which deletes whatever was made.
        network.make_switch()?;
        for i in 0..hosts {
            let last = u8::try_from(i + 1).map_err(|_| NetnsError::HostCount(hosts))?;
            let [a, b, c, _] = network.subnet.octets();
            network.hosts.push(Host {
                name: format!("host{i}"),
                ns: format!("{stem}-h{i}"),
                addr: IpAddr::V4(Ipv4Addr::new(a, b, c, last)),
                ip: network.ip.clone(),
            });
            network.killed.push(AtomicBool::new(false));
            network.make_host(i)?;
        }
        network.write_hosts_files()?;
        for i in 0..hosts {
            network.wait_forwarding(i)?;
        }
        tracing::debug!(switch = %network.switch_ns, hosts, subnet = %network.subnet, "network created");
        Ok(network)
    }

    /// Host `index`. Panics if there is no such host, like slice indexing.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The switch's namespace (holding `br0` and the hosts' ports `h<i>`).
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// The network's /24, e.g. `10.213.3.0`.
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// What `/etc/hosts` says for processes started with [`Host::command`]: localhost and
    /// every host's name.
    pub fn hosts_file(&self) -> String {
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for host in &self.hosts {
            text.push_str(&format!("{}\t{}\n", host.addr, host.name));
        }
        text
    }

    /// Pulls host `index`'s cable: its port on the switch goes down, so nothing it sends
    /// arrives and nothing reaches it (its `eth0` loses carrier but keeps its address and
    /// routes; the host still reaches itself). TCP connections through it stall and retransmit
    /// rather than break (unless the cut outlasts their retransmission limit, about 15 minutes
    /// by default); new connections time out, or fail with "no route to host" once ARP gives up.
    pub fn cut(&self, index: usize) -> Result<(), NetnsError> {
        self.check_alive(index)?;
        self.ip_switch(&["link", "set", &port_name(index), "down"])?;
        tracing::debug!(host = index, switch = %self.switch_ns, "link cut");
        Ok(())
    }

    /// Plugs host `index`'s cable back in, returning once its switch port forwards again
    /// (at once: the bridge runs no STP). Stalled TCP connections resume at their next
    /// retransmission, which backs off exponentially during the cut.
    pub fn restore(&self, index: usize) -> Result<(), NetnsError> {
        self.check_alive(index)?;
        self.ip_switch(&["link", "set", &port_name(index), "up"])?;
        self.wait_forwarding(index)?;
        tracing::debug!(host = index, switch = %self.switch_ns, "link restored");
        Ok(())
    }

    /// Takes host `index` off the network for good: its veth pair is deleted (its `eth0` with
    /// it), while its namespace and processes stay, reaching only themselves. Killing a host
    /// again does nothing; [`Network::cut`] and [`Network::restore`] refuse a killed host.
    pub fn kill_host(&self, index: usize) -> Result<(), NetnsError> {
        let killed = self.killed_flag(index)?;
        if killed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.ip_switch(&["link", "del", &port_name(index)])?;
        killed.store(true, Ordering::SeqCst);
        tracing::debug!(host = index, switch = %self.switch_ns, "host killed");
        Ok(())
    }

    fn killed_flag(&self, index: usize) -> Result<&AtomicBool, NetnsError> {
        self.killed.get(index).ok_or(NetnsError::NoSuchHost {
            index,
            hosts: self.hosts.len(),
        })
    }

    fn check_alive(&self, index: usize) -> Result<(), NetnsError> {
        if self.killed_flag(index)?.load(Ordering::SeqCst) {
            return Err(NetnsError::HostKilled(index));
        }
        Ok(())
    }

    fn ip_switch(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.switch_ns.as_str()];
        all.extend_from_slice(args);
        run_ip(&self.ip, &all)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), NetnsError> {
        unsupported_if_denied(run_ip(&self.ip, &["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    fn make_switch(&mut self) -> Result<(), NetnsError> {
        let switch = self.switch_ns.clone();
        self.add_namespace(&switch)?;
        // A kernel without bridge support says "Unknown device type": unsupported, not broken.
        // STP stays off (the default) so that ports forward as soon as they are up.
        unsupported_if_denied(self.ip_switch(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ]))?;
        self.ip_switch(&["link", "set", "lo", "up"])?;
        self.ip_switch(&["link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    fn make_host(&mut self, index: usize) -> Result<(), NetnsError> {
        let Some(host) = self.hosts.get(index).cloned() else {
            return Err(NetnsError::NoSuchHost {
                index,
                hosts: self.hosts.len(),
            });
        };
        let port = port_name(index);
        let addr = format!("{}/24", host.addr);
        self.add_namespace(&host.ns)?;
        let ns = host.ns.as_str();
        run_ip(&self.ip, &["-n", ns, "link", "set", "lo", "up"])?;
        // Made inside the host namespace with its peer put straight into the switch's, so
        // neither end ever exists in the caller's namespace.
        unsupported_if_denied(run_ip(
            &self.ip,
            &[
                "-n",
                ns,
                "link",
                "add",
                HOST_IF,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.switch_ns,
            ],
        ))?;
        run_ip(&self.ip, &["-n", ns, "addr", "add", &addr, "dev", HOST_IF])?;
        run_ip(&self.ip, &["-n", ns, "link", "set", HOST_IF, "up"])?;
        self.ip_switch(&["link", "set", &port, "master", BRIDGE])?;
        self.ip_switch(&["link", "set", &port, "up"])?;
        Ok(())
    }

    fn write_hosts_files(&mut self) -> Result<(), NetnsError> {
        let text = self.hosts_file();
        let dirs: Vec<PathBuf> = self
            .hosts
            .iter()
            .map(|host| Path::new(NETNS_ETC_DIR).join(&host.ns))
            .collect();
        for dir in dirs {
            // Recorded before it exists so that a half-written directory is removed too.
            self.etc_dirs.push(dir.clone());
            std::fs::create_dir_all(&dir).map_err(|source| NetnsError::Io {
                what: "create",
                path: dir.clone(),
                source,
            })?;
            let file = dir.join("hosts");
            std::fs::write(&file, &text).map_err(|source| NetnsError::Io {
                what: "write",
                path: file,
                source,
            })?;
        }
        Ok(())
    }

    /// Waits (bounded) until host `index`'s switch port has carrier and forwards.
    fn wait_forwarding(&self, index: usize) -> Result<(), NetnsError> {
        let port = port_name(index);
        let deadline = Instant::now() + PORT_TIMEOUT;
        loop {
            let state = self.ip_switch(&["-d", "-o", "link", "show", "dev", &port])?;
            if state.contains("LOWER_UP") && state.contains("bridge_slave state forwarding") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NetnsError::PortNotForwarding {
                    index,
                    port,
                    waited: PORT_TIMEOUT,
                    state: state.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Network {
    /// Deletes the namespaces (hosts first, then the switch, whose deletion removes the
    /// remaining veth pairs and the bridge) and the `/etc/netns` directories. Runs on panics
    /// too; a process killed outright leaves them to [`cleanup_stale`].
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = run_ip(&self.ip, &["netns", "del", ns]) {
                tracing::warn!(%err, ns, "cannot delete a test network namespace");
            }
        }
        for dir in &self.etc_dirs {
            remove_dir_if_present(dir);
        }
    }
}

/// Removes the namespaces and `/etc/netns` directories named with [`NAME_PREFIX`] whose
/// creating process is gone (its pid is free, or taken by a process that started at another
/// time), and returns their names. Leftovers of live processes are never touched.
/// [`Network::create`] calls it.
pub fn cleanup_stale() -> Result<Vec<String>, NetnsError> {
    let ip = find_ip()
        .ok_or_else(|| NetnsError::Unsupported("no `ip` binary (iproute2)".to_string()))?;
    let _serialised = CREATE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    remove_stale(&ip)
}

fn remove_stale(ip: &Path) -> Result<Vec<String>, NetnsError> {
    let mut removed = Vec::new();
    for name in stale_names(Path::new(NETNS_RUN_DIR))? {
        // Another process may be removing the same leftover: what matters is that it is gone.
        // One that cannot be removed is reported but does not stop this process's tests.
        match run_ip(ip, &["netns", "del", &name]) {
            Ok(_) => removed.push(name),
            Err(err) if Path::new(NETNS_RUN_DIR).join(&name).exists() => {
                tracing::warn!(%err, ns = name, "cannot delete a stale test network namespace");
            }
            Err(_) => {}
        }
    }
    for name in stale_names(Path::new(NETNS_ETC_DIR))? {
        remove_dir_if_present(&Path::new(NETNS_ETC_DIR).join(&name));
        if !removed.contains(&name) {
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        tracing::info!(?removed, "removed stale test network namespaces");
    }
    Ok(removed)
}

/// The entries of `dir` that are ours and whose creator is gone (none if `dir` is missing).
fn stale_names(dir: &Path) -> Result<Vec<String>, NetnsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Io {
                what: "read",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| owner_of(name).is_some_and(|(pid, start)| !owner_alive(pid, start)))
        .collect())
}

/// The pid and start time in a name made by [`Network::create`].
fn owner_of(name: &str) -> Option<(i32, u64)> {
    let mut parts = name.strip_prefix(NAME_PREFIX)?.split('-');
    let pid: i32 = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    // Pid 0 or less would make kill(2) address process groups: not a name of ours.
    (pid > 0).then_some((pid, start))
}

/// Whether process `pid`, started at `start` (0: unknown), still exists. When unsure (no
/// `/proc`), it is taken to be alive: a leftover is better than deleting a live test's network.
fn owner_alive(pid: i32, start: u64) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return false;
    }
    match start_time_of(&format!("/proc/{pid}/stat")) {
        Some(now) => start == 0 || now == start,
        None => true,
    }
}

fn start_time_of(stat_path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    crate::procs::parse_stat(&text).map(|stat| stat.start_time)
}

/// This process's start time, or 0 (unknown: only the pid will identify it) without `/proc`.
fn own_start_time() -> u64 {
    start_time_of("/proc/self/stat").unwrap_or(0)
}

fn port_name(index: usize) -> String {
    format!("h{index}")
}

fn remove_dir_if_present(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(%err, dir = %dir.display(), "cannot remove a test netns directory")
        }
    }
}

/// The `ip` binary: on PATH, or where Debian and others put it (root's PATH has sbin, a
/// user's may not).
fn find_ip() -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Turns a refusal by the kernel (no permission, no support for the device type) into
/// [`NetnsError::Unsupported`]; other failures pass unchanged.
fn unsupported_if_denied(result: Result<String, NetnsError>) -> Result<String, NetnsError> {
    const REFUSALS: [&str; 5] = [
        "Operation not permitted",
        "Permission denied",
        "Read-only file system",
        "Operation not supported",
        "Unknown device type",
    ];
    match result {
        Err(NetnsError::Command {
            command, stderr, ..
        }) if REFUSALS.iter().any(|refusal| stderr.contains(refusal)) => Err(
            NetnsError::Unsupported(format!("`{command}`: {}", stderr.trim())),
        ),
        other => other,
    }
}

/// Runs `ip ARGS` and returns its stdout; a failure carries its stderr. The output goes to
/// temporary files rather than pipes, so that waiting with a deadline cannot deadlock on a full
/// pipe; a command still running at [`IP_TIMEOUT`] is killed.
fn run_ip(ip: &Path, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let spawn_error = |source| NetnsError::Spawn {
        command: command.clone(),
        source,
    };
    let mut stdout = tempfile::tempfile().map_err(spawn_error)?;
    let mut stderr = tempfile::tempfile().map_err(spawn_error)?;
    let mut child = Command::new(ip)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(spawn_error)?)
        .stderr(stderr.try_clone().map_err(spawn_error)?)
        .spawn()
        .map_err(spawn_error)?;
    let status = match wait_with_deadline(&mut child, IP_TIMEOUT).map_err(spawn_error)? {
        Some(status) => status,
        None => {
            return Err(NetnsError::CommandTimeout {
                command,
                waited: IP_TIMEOUT,
            });
        }
    };
    let err_text = read_all(&mut stderr).map_err(spawn_error)?;
    if !status.success() {
        return Err(NetnsError::Command {
            command,
            status: status.to_string(),
            stderr: err_text.trim().to_string(),
        });
    }
    read_all(&mut stdout).map_err(spawn_error)
}

fn read_all(file: &mut File) -> io::Result<String> {
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls `child` until it exits or `limit` passes; then it is killed and `None` returned.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // Reaped if it dies promptly; one stuck in the kernel is left as a zombie rather
            // than waited for without bound.
            let _ = child.kill();
            let reap_deadline = Instant::now() + Duration::from_secs(1);
            while child.try_wait()?.is_none() && Instant::now() < reap_deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Ok(None);
        }
        // `ip` commands take a few milliseconds; a short poll keeps creation quick.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::ExitStatusExt;

    use nix::sys::signal::Signal;

    use super::*;

    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    const LIMIT: Duration = Duration::from_secs(10);

    /// A network of `hosts`, or `None` (with the reason printed) where namespaces are
    /// unsupported, for the test to return.
    fn network(hosts: usize) -> Option<Network> {
        match Network::create(hosts) {
            Ok(network) => Some(network),
            Err(NetnsError::Unsupported(reason)) => {
                eprintln!("skipping: network namespaces are unsupported here: {reason}");
                None
            }
            Err(err) => panic!("cannot create a network of {hosts} hosts: {err}"),
        }
    }

    fn listen_on(host: &Host) -> TcpListener {
        host.run_on_thread(|| TcpListener::bind(SocketAddr::new(host.addr, 0)))
            .expect("run on host")
            .expect("bind on host")
    }

    fn connect_from(host: &Host, to: SocketAddr) -> io::Result<TcpStream> {
        host.run_on_thread(move || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
            .expect("run on host")
    }

    /// Accepts one connection, waiting at most `LIMIT`.
    fn accept(listener: &TcpListener) -> TcpStream {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let deadline = Instant::now() + LIMIT;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking stream");
                    return stream;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection within {LIMIT:?}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("accept: {err}"),
            }
        }
    }

    fn read_within(stream: &mut TcpStream, len: usize, limit: Duration) -> io::Result<Vec<u8>> {
        stream.set_read_timeout(Some(limit))?;
        let mut buf = vec![0; len];
        stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn ip_binary() -> PathBuf {
        find_ip().expect("ip binary")
    }

    /// The namespace names `ip netns list` shows.
    fn listed_namespaces() -> Vec<String> {
        run_ip(&ip_binary(), &["netns", "list"])
            .expect("ip netns list")
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Runs `command` to completion within `LIMIT`, returning its status and stdout.
    fn run_within(mut command: Command) -> (ExitStatus, String) {
        let mut stdout = tempfile::tempfile().expect("tempfile");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("clone"))
            .spawn()
            .expect("spawn");
        let status = wait_with_deadline(&mut child, LIMIT)
            .expect("wait")
            .expect("command finished in time");
        (status, read_all(&mut stdout).expect("read stdout"))
    }

    #[test]
    fn hosts_reach_each_other_but_not_the_root_namespace() {
        let Some(net) = network(2) else { return };
        let (host0, host1) = (net.host(0), net.host(1));
        assert_ne!(host0.addr, host1.addr);

        let listener = listen_on(host0);
        let addr = listener.local_addr().expect("local addr");
        let mut client = connect_from(host1, addr).expect("host1 connects to host0");
        let mut server = accept(&listener);
        assert_eq!(
            server.peer_addr().expect("peer").ip(),
            host1.addr,
            "seen from host0"
        );
        client.write_all(b"ping").expect("write");
        assert_eq!(read_within(&mut server, 4, LIMIT).expect("read"), b"ping");
        server.write_all(b"pong").expect("write");
        assert_eq!(read_within(&mut client, 4, LIMIT).expect("read"), b"pong");

        // The root namespace's loopback and the outside world are out of a host's reach.
        let root_listener = TcpListener::bind("127.0.0.1:0").expect("root listener");
        let root_addr = root_listener.local_addr().expect("root addr");
        assert!(
            connect_from(host1, root_addr).is_err(),
            "host1 reached root's {root_addr}"
        );
        let outside = SocketAddr::from(([1, 1, 1, 1], 80));
        assert!(
            connect_from(host1, outside).is_err(),
            "host1 has no route out"
        );

        // The root namespace holds nothing of the network. (Not probed with a connection: the
        // root namespace's default route would carry it off this machine.)
        let ip = ip_binary();
        for what in [
            &["-o", "addr", "show"][..],
            &["route", "show", "table", "all"],
            &["-o", "link", "show"],
        ] {
            let out = run_ip(&ip, what).expect("ip in the root namespace");
            assert!(
                !out.contains("10.213."),
                "root namespace has 10.213.x: {out}"
            );
            for ns in &net.namespaces {
                assert!(
                    !out.contains(ns.as_str()),
                    "root namespace links to {ns}: {out}"
                );
            }
        }
    }

    #[test]
    fn tokio_server_and_client_on_host_threads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let Some(net) = network(2) else { return };
        let (host0, host1) = (net.host(0), net.host(1));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        // Bound before the server thread starts, so that the client cannot come too early.
        let listener = listen_on(host0);
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let server = host0
            .spawn_on_thread(move || {
                runtime().block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let (mut stream, peer) =
                        tokio::time::timeout(LIMIT, listener.accept()).await??;
                    let mut buf = [0; 5];
                    tokio::time::timeout(LIMIT, stream.read_exact(&mut buf)).await??;
                    stream.write_all(&buf).await?;
                    io::Result::Ok(peer)
                })
            })
            .expect("spawn server");

        let echoed = host1
            .run_on_thread(|| {
                runtime().block_on(async {
                    let connect = tokio::net::TcpStream::connect(addr);
                    let mut stream = tokio::time::timeout(LIMIT, connect).await??;
                    stream.write_all(b"hello").await?;
                    let mut buf = [0; 5];
                    tokio::time::timeout(LIMIT, stream.read_exact(&mut buf)).await??;
                    io::Result::Ok(buf)
                })
            })
            .expect("run on host1")
            .expect("client");
        assert_eq!(&echoed, b"hello");
        let peer = server
            .join()
            .expect("server thread")
            .expect("setns")
            .expect("server");
        assert_eq!(peer.ip(), host1.addr);

        // Threads started on a host's thread are on the host too.
        let want = format!(
            "net:[{}]",
            std::fs::metadata(host1.netns_path())
                .expect("netns file")
                .ino()
        );
        let seen = host1
            .run_on_thread(|| {
                std::thread::spawn(|| std::fs::read_link("/proc/thread-self/ns/net"))
                    .join()
                    .expect("inner thread")
            })
            .expect("run on host1")
            .expect("read link");
        assert_eq!(seen.to_string_lossy(), want);
    }

    #[test]
    fn cut_stalls_traffic_and_restore_resumes_it() {
        let Some(net) = network(2) else { return };
        let (host0, host1) = (net.host(0), net.host(1));
        let listener = listen_on(host0);
        let addr = listener.local_addr().expect("local addr");
        let mut client = connect_from(host1, addr).expect("connect before the cut");
        let mut server = accept(&listener);
        client.write_all(b"before").expect("write");
        assert_eq!(read_within(&mut server, 6, LIMIT).expect("read"), b"before");

        net.cut(0).expect("cut");
        let err = connect_from(host1, addr).expect_err("connect during the cut must fail");
        eprintln!("connect during the cut: {err}");
        let during = b"during the cut";
        client
            .write_all(during)
            .expect("writes are buffered during the cut");
        let early = read_within(&mut server, during.len(), Duration::from_millis(300));
        assert!(early.is_err(), "data crossed a cut link: {early:?}");

        net.restore(0).expect("restore");
        let restored = Instant::now();
        assert_eq!(
            read_within(&mut server, during.len(), LIMIT).expect("read after restore"),
            during
        );
        let stalled_data_after = restored.elapsed();
        let deadline = Instant::now() + LIMIT;
        let mut fresh = loop {
            match connect_from(host1, addr) {
                Ok(stream) => break stream,
                Err(err) => assert!(Instant::now() < deadline, "no connect after restore: {err}"),
            }
        };
        let connect_after = restored.elapsed();
        eprintln!(
            "after restore: data written during the cut arrived in {stalled_data_after:?}, a new connection in {connect_after:?}"
        );
        let mut accepted = accept(&listener);
        fresh.write_all(b"again").expect("write");
        assert_eq!(
            read_within(&mut accepted, 5, LIMIT).expect("read"),
            b"again"
        );
    }

    #[test]
    fn command_runs_in_the_host_namespace_and_dies_with_its_pid() {
        let Some(net) = network(2) else { return };
        let host = net.host(1);
        let want = format!(
            "net:[{}]",
            std::fs::metadata(host.netns_path())
                .expect("netns file")
                .ino()
        );
        let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        assert_ne!(own.to_string_lossy(), want);

        let mut command = host.command("sleep");
        command.arg("30").stdin(Stdio::null());
        let mut child = command.spawn().expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // Until `ip netns exec` has joined the namespace and exec'd, the pid is still `ip`.
        let deadline = Instant::now() + LIMIT;
        loop {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("child's netns");
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("child's comm");
            if ns.to_string_lossy() == want && comm.trim() == "sleep" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} is {comm:?} in {ns:?}, not sleep in {want}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
        let status = wait_with_deadline(&mut child, LIMIT)
            .expect("wait")
            .expect("sleep died");
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));

        // `ip netns exec` maps the network's hosts file over /etc/hosts.
        let mut getent = host.command("getent");
        getent.args(["hosts", "host0"]);
        let (status, out) = run_within(getent);
        assert!(status.success(), "getent hosts host0: {status}");
        assert_eq!(
            out.split_whitespace().next(),
            Some(net.host(0).addr.to_string().as_str())
        );
    }

    #[test]
    fn drop_removes_namespaces_and_etc_dirs_even_on_panic() {
        let Some(net) = network(2) else { return };
        let names = net.namespaces.clone();
        let dirs = net.etc_dirs.clone();
        assert_eq!(names.len(), 3);
        assert_eq!(dirs.len(), 2);
        let listed = listed_namespaces();
        for name in &names {
            assert!(listed.contains(name), "{name} not in {listed:?}");
        }
        let hosts = std::fs::read_to_string(dirs[1].join("hosts")).expect("hosts file");
        assert!(
            hosts.contains("host1") && hosts.contains("localhost"),
            "{hosts}"
        );
        drop(net);
        let listed = listed_namespaces();
        for name in &names {
            assert!(!listed.contains(name), "{name} still in {listed:?}");
        }
        for dir in &dirs {
            assert!(!dir.exists(), "{} still exists", dir.display());
        }

        // A panicking test drops its network while unwinding.
        let made = Mutex::new(Vec::new());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let net = Network::create(1).expect("create");
            made.lock()
                .expect("lock")
                .extend(net.namespaces.iter().cloned());
            panic!("a test failing with its network up (on purpose)");
        }));
        assert!(outcome.is_err());
        let made = made.into_inner().expect("lock");
        assert_eq!(made.len(), 2);
        let listed = listed_namespaces();
        for name in &made {
            assert!(
                !listed.contains(name),
                "{name} outlived a panic: {listed:?}"
            );
        }
    }

    #[test]
    fn kill_host_takes_it_off_the_network_for_good() {
        let Some(net) = network(3) else { return };
        let listener = listen_on(net.host(0));
        let addr = listener.local_addr().expect("local addr");

        net.kill_host(1).expect("kill host1");
        assert!(
            connect_from(net.host(1), addr).is_err(),
            "a killed host connected"
        );
        let eth0 = run_ip(&net.ip, &["-n", &net.host(1).ns, "link", "show", HOST_IF]);
        assert!(eth0.is_err(), "host1 still has eth0: {eth0:?}");
        assert!(matches!(net.cut(1), Err(NetnsError::HostKilled(1))));
        assert!(matches!(net.restore(1), Err(NetnsError::HostKilled(1))));
        net.kill_host(1).expect("killing again does nothing");
        assert!(matches!(
            net.cut(3),
            Err(NetnsError::NoSuchHost { index: 3, hosts: 3 })
        ));

        // The others still talk.
        connect_from(net.host(2), addr).expect("host2 connects to host0");
        accept(&listener);
    }

    #[test]
    fn cleanup_stale_removes_only_leftovers_of_gone_processes() {
        // Also the check that namespaces work here at all.
        let Some(net) = network(1) else { return };
        let ip = net.ip.clone();
        let mut gone = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let dead_pid = gone.id();
        wait_with_deadline(&mut gone, LIMIT)
            .expect("wait")
            .expect("true ended");
        let me = std::process::id();
        let start = own_start_time();
        let dead = format!("{NAME_PREFIX}{dead_pid}-1-x-sw");
        let reused = format!("{NAME_PREFIX}{me}-{}-x-sw", start + 1);
        let live = format!("{NAME_PREFIX}{me}-{start}-x-sw");
        for name in [&dead, &reused, &live] {
            run_ip(&ip, &["netns", "add", name]).expect("netns add");
            std::fs::create_dir_all(Path::new(NETNS_ETC_DIR).join(name)).expect("etc dir");
        }

        cleanup_stale().expect("cleanup");
        let listed = listed_namespaces();
        // Another test's create may have removed the stale ones first: check what is left.
        for name in [&dead, &reused] {
            assert!(!listed.contains(name), "{name} survived: {listed:?}");
            assert!(
                !Path::new(NETNS_ETC_DIR).join(name).exists(),
                "{name} dir survived"
            );
        }
        assert!(
            listed.contains(&live),
            "a live process's namespace was removed"
        );
        assert!(Path::new(NETNS_ETC_DIR).join(&live).exists());
        assert!(
            listed.contains(&net.switch_ns),
            "our own network was removed"
        );

        run_ip(&ip, &["netns", "del", &live]).expect("netns del");
        remove_dir_if_present(&Path::new(NETNS_ETC_DIR).join(&live));
    }

    #[test]
    fn names_identify_their_owner() {
        assert_eq!(owner_of("scoot-t123-456-0-sw"), Some((123, 456)));
        assert_eq!(owner_of("scoot-t123-456-7-h12"), Some((123, 456)));
        assert_eq!(owner_of("scoot-t0-456-7-h1"), None);
        assert_eq!(owner_of("scoot-tx-1-sw"), None);
        assert_eq!(owner_of("other-123-456-0-sw"), None);
        assert!(owner_alive(
            i32::try_from(std::process::id()).expect("pid"),
            own_start_time()
        ));
    }

    #[test]
    fn host_counts_are_checked() {
        assert!(matches!(Network::create(0), Err(NetnsError::HostCount(0))));
        assert!(matches!(
            Network::create(MAX_HOSTS + 1),
            Err(NetnsError::HostCount(_))
        ));
    }
}
