//! The launcher: a fresh, single-threaded process (the worker's own binary started with
//! [`LAUNCHER_ARG`]) that builds the sandbox and runs the program in it. It is separate from
//! the worker because a multithreaded process can neither join a new user namespace nor safely
//! allocate between fork and exec, and every step here allocates.
//!
//! Three processes take part:
//! * the launcher, outside, maps the sandbox's one user and group onto the run's user outside
//!   (`uid_map` and `gid_map` must be written from outside), waits, and ends as the program
//!   ended (the same exit code, or killed by the same signal);
//! * init, pid 1 of the new namespaces, takes the sandbox's ids (keeping its capabilities
//!   inside the user namespace), builds the filesystem, brings the loopback up, starts the
//!   program and reaps everything until the program ends. When init exits the kernel kills
//!   whatever is left in the pid namespace, so a sandboxed run leaves no process behind;
//! * the program, which drops what init kept (`no_new_privs`, default signal handling, a
//!   `RLIMIT_NPROC`) and is exec'd with exactly the environment it was given.
//!
//! Setup errors, and a program that cannot be started, reach the launcher as a line on a pipe
//! and go to the spec's report file, so the engine tells them apart from the program's own exit.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::spec::{Filesystem, LAUNCHER_ARG, LaunchSpec, SANDBOX_HOSTNAME};

/// The largest spec the launcher reads (argv and environment included).
const MAX_SPEC_BYTES: u64 = 64 << 20;
/// Init's stack; it runs ordinary Rust code, then forks the program onto its own copy.
const INIT_STACK_BYTES: usize = 8 << 20;
/// The exit code of a launcher whose sandbox or program could not be started.
pub const SETUP_FAILED: i32 = 127;
/// Signals the launcher ignores so that it outlives the program and reports how it ended; the
/// run's whole process group receives them, the program included.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Runs the launcher and exits when this process was started as one (its first argument is
/// [`LAUNCHER_ARG`]); returns at once otherwise. Call it first thing in `main`.
pub fn run_if_asked() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(LAUNCHER_ARG)) {
        return;
    }
    std::process::exit(launcher_main());
}

fn launcher_main() -> i32 {
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(message) => {
            eprintln!("scoot sandbox launcher: {message}");
            return SETUP_FAILED;
        }
    };
    match launch(&spec) {
        Ok(Ended::Exited(code)) => code,
        Ok(Ended::Signaled(signal)) => end_by_signal(signal),
        Err(message) => {
            if let Err(err) = fs::write(&spec.report, message.as_bytes()) {
                eprintln!("scoot sandbox launcher: {message} (and the report failed: {err})");
            }
            SETUP_FAILED
        }
    }
}

fn read_spec() -> Result<LaunchSpec, String> {
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_SPEC_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("reading the spec: {e}"))?;
    let spec = serde_json::from_slice(&text).map_err(|e| format!("the spec: {e}"))?;
    // The program's standard input is empty, as for every run.
    let null = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("stdin: {e}"))?;
    Ok(spec)
}

enum Ended {
    Exited(i32),
    Signaled(i32),
}

fn launch(spec: &LaunchSpec) -> Result<Ended, String> {
    for signal in FORWARDED {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }
            .map_err(|e| format!("ignoring {signal}: {e}"))?;
    }
    let (go_read, go_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !spec.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; INIT_STACK_BYTES];
    // SAFETY: this process has one thread, so the child (a copy of it, on `stack`, which is
    // large for what init does) may allocate and run any code.
    let init = unsafe {
        nix::sched::clone(
            Box::new(|| init(spec, &go_read, &report_write)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| format!("cannot create the sandbox's namespaces: {e}"))?;
    drop(go_read);
    drop(report_write);
    if let Err(message) = write_id_maps(init, spec) {
        let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
        let _ = wait_for(init);
        return Err(message);
    }
    fs::File::from(go_write)
        .write_all(b"1")
        .map_err(|e| format!("starting init: {e}"))?;
    let status = wait_for(init)?;
    let mut report = String::new();
    fs::File::from(report_read)
        .read_to_string(&mut report)
        .map_err(|e| format!("reading init's report: {e}"))?;
    if let Some(error) = report.lines().find_map(|l| l.strip_prefix("error: ")) {
        return Err(error.to_string());
    }
    if let Some(signal) = report
        .lines()
        .find_map(|l| l.strip_prefix("signal ")?.parse().ok())
    {
        return Ok(Ended::Signaled(signal));
    }
    match status {
        WaitStatus::Exited(_, code) => Ok(Ended::Exited(code)),
        WaitStatus::Signaled(_, signal, _) => Ok(Ended::Signaled(signal as i32)),
        other => Err(format!("init ended unexpectedly: {other:?}")),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn wait_for(pid: Pid) -> Result<WaitStatus, String> {
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(status),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for init: {e}")),
        }
    }
}

/// Maps the sandbox's user and group (one each) onto the run's. Only a process outside with
/// the privilege to use those ids may write the maps; a launcher that is not root may map
/// only its own ids, and must give up `setgroups` inside first.
fn write_id_maps(init: Pid, spec: &LaunchSpec) -> Result<(), String> {
    let proc_dir = PathBuf::from(format!("/proc/{init}"));
    let write = |file: &str, text: String| {
        fs::write(proc_dir.join(file), text).map_err(|e| format!("writing {file}: {e}"))
    };
    write(
        "uid_map",
        format!("{} {} 1\n", spec.inside_uid, spec.outside_uid),
    )?;
    if !Uid::effective().is_root() {
        write("setgroups", "deny".to_string())?;
    }
    write(
        "gid_map",
        format!("{} {} 1\n", spec.inside_gid, spec.outside_gid),
    )
}

/// Pid 1 of the sandbox. Returns its exit code; every failure is reported on `report`.
fn init(spec: &LaunchSpec, go: &OwnedFd, report: &OwnedFd) -> isize {
    let mut byte = [0u8; 1];
    // Nothing to read means the launcher went away before mapping the ids.
    if !matches!(nix::unistd::read(go, &mut byte), Ok(1)) {
        return SETUP_FAILED as isize;
    }
    let say = |line: String| {
        let _ = nix::unistd::write(report, format!("{line}\n").as_bytes());
    };
    if let Err(message) = set_up(spec) {
        say(format!("error: {message}"));
        return SETUP_FAILED as isize;
    }
    // SAFETY: init has one thread.
    let program = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let message = exec_program(spec);
            say(format!("error: {message}"));
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            say(format!("error: cannot start the program: {e}"));
            return SETUP_FAILED as isize;
        }
    };
    // Reap everything (orphans come to pid 1) until the program itself ends.
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => return code as isize,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == program => {
                // Pid 1 cannot die of a signal it sends itself: tell the launcher.
                say(format!("signal {}", signal as i32));
                return 128 + signal as isize;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                say(format!("error: waiting for the program: {e}"));
                return SETUP_FAILED as isize;
            }
        }
    }
}

fn set_up(spec: &LaunchSpec) -> Result<(), String> {
    let gid = Gid::from_raw(spec.inside_gid);
    let uid = Uid::from_raw(spec.inside_uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setting the group: {e}"))?;
    // Denied when a launcher that is not root mapped the ids; its groups are its own then.
    let _ = nix::unistd::setgroups(&[]);
    // The ids of this namespace's root are not the launcher's, so init keeps its capabilities
    // in the namespace through this change.
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setting the user: {e}"))?;
    build_filesystem(spec)?;
    nix::unistd::sethostname(SANDBOX_HOSTNAME).map_err(|e| format!("hostname: {e}"))?;
    if !spec.network {
        loopback_up()?;
    }
    Ok(())
}

/// A staging tmpfs becomes the root, with the host's root under `/oldroot`; the sandbox's
/// tree is assembled at `/newroot` from there, then made the root and the rest detached.
fn build_filesystem(spec: &LaunchSpec) -> Result<(), String> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making the mounts private: {e}"))?;
    mount_tmpfs(Path::new("/tmp"), 0o755)?;
    for dir in ["/tmp/newroot", "/tmp/oldroot"] {
        make_dir(Path::new(dir), 0o755)?;
    }
    nix::unistd::chdir("/tmp").map_err(|e| format!("chdir: {e}"))?;
    nix::unistd::pivot_root(".", "oldroot").map_err(|e| format!("pivot_root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    let old = |path: &Path| join_absolute(Path::new("/oldroot"), path);
    let new = |path: &Path| join_absolute(Path::new("/newroot"), path);
    let newroot = Path::new("/newroot");
    match &spec.filesystem {
        Filesystem::HostTools { exec_root, hidden } => {
            bind(Path::new("/oldroot"), newroot, true)?;
            set_attributes(
                newroot,
                libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
                true,
            )?;
            mount_tmpfs(&new(Path::new("/tmp")), 0o1777)?;
            let mut covered = Vec::new();
            for dir in hidden {
                let target = new(dir);
                if target.is_dir() {
                    mount_tmpfs(&target, 0o755)?;
                    covered.push(target);
                }
            }
            private_proc_and_dev(newroot)?;
            let target = new(exec_root);
            make_dirs(&target)?;
            bind(&old(exec_root), &target, false)?;
            set_attributes(
                &target,
                libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
                false,
            )?;
            for target in covered {
                set_attributes(&target, libc::MOUNT_ATTR_RDONLY, false)?;
            }
        }
        Filesystem::Rootfs { root } => {
            bind(&old(root), newroot, true)?;
            set_attributes(
                newroot,
                libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
                false,
            )?;
            for dir in ["proc", "dev", "tmp"] {
                let path = newroot.join(dir);
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(format!(
                            "/{dir} in the input root is not a directory, so the sandbox \
                             cannot mount its own there"
                        ));
                    }
                    Err(_) => make_dir(&path, 0o755)?,
                }
            }
            mount_tmpfs(&newroot.join("tmp"), 0o1777)?;
            private_proc_and_dev(newroot)?;
        }
    }
    nix::unistd::chdir(newroot).map_err(|e| format!("chdir: {e}"))?;
    // Stacks the old root on the new one; detaching it leaves only the new tree reachable.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    Ok(())
}

/// A `/proc` of the sandbox's pid namespace and a `/dev` of a few harmless devices.
fn private_proc_and_dev(root: &Path) -> Result<(), String> {
    let none: Option<&str> = None;
    let proc_dir = root.join("proc");
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mounting {}: {e}", proc_dir.display()))?;
    let dev = root.join("dev");
    mount_tmpfs(&dev, 0o755)?;
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        let source = Path::new("/oldroot/dev").join(device);
        if !source.exists() {
            continue;
        }
        let target = dev.join(device);
        fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        bind(&source, &target, false)?;
    }
    let shm = dev.join("shm");
    make_dir(&shm, 0o755)?;
    mount_tmpfs(&shm, 0o1777)?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("/dev/{link}: {e}"))?;
    }
    Ok(())
}

fn mount_tmpfs(target: &Path, mode: u32) -> Result<(), String> {
    let options = format!("mode={mode:o}");
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", target.display()))?;
    // The mode option is applied before the umask-free chmod some kernels skip.
    fs::set_permissions(target, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", target.display()))
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), String> {
    let none: Option<&str> = None;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, none, flags, none)
        .map_err(|e| format!("binding {} on {}: {e}", source.display(), target.display()))
}

/// Adds mount attributes to the mount at `path` (and every mount below it, when
/// `recursive`) with `mount_setattr`, which, unlike remounting, needs no knowledge of the
/// flags each mount already has.
fn set_attributes(path: &Path, attributes: u64, recursive: bool) -> Result<(), String> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attributes,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the path and the attribute struct outlive the call, whose size is passed.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount_setattr on {} (Linux 5.12 or later is needed): {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Creates the missing directories of `path` (within the tmpfs that hides its parents).
fn make_dirs(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// `path` (absolute, or taken as such) under `base`, without `..` climbing out of it.
fn join_absolute(base: &Path, path: &Path) -> PathBuf {
    let mut joined = base.to_path_buf();
    for component in path.components() {
        if let Component::Normal(name) = component {
            joined.push(name);
        }
    }
    joined
}

/// Brings up the network namespace's own loopback, so the program can use 127.0.0.1.
fn loopback_up() -> Result<(), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("loopback socket: {e}"))?;
    // SAFETY: an all-zero ifreq is valid; the name fits with its NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: both calls read and write only `request`, which outlives them.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(format!(
                "reading the loopback's flags: {}",
                std::io::Error::last_os_error()
            ));
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(format!(
                "bringing the loopback up: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// In the program's process: drops what init kept and execs. Returns only on failure.
fn exec_program(spec: &LaunchSpec) -> String {
    for signal in FORWARDED {
        // SAFETY: restores the default disposition; no handler code is installed.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return format!("no_new_privs: {e}");
    }
    if let Some(max) = spec.pids_max {
        use nix::sys::resource::{Resource, setrlimit};
        if let Err(e) = setrlimit(Resource::RLIMIT_NPROC, max, max) {
            return format!("limiting processes: {e}");
        }
    }
    if let Err(e) = nix::unistd::chdir(&spec.working_dir) {
        return format!("the working directory {}: {e}", spec.working_dir.display());
    }
    let Some(program) = spec.argv.first() else {
        return "empty argv".to_string();
    };
    let to_c = |s: &str| CString::new(s.as_bytes());
    let Ok(argv) = spec
        .argv
        .iter()
        .map(|a| to_c(a))
        .collect::<Result<Vec<_>, _>>()
    else {
        return "an argument has a NUL byte".to_string();
    };
    let Ok(env) = spec
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()
    else {
        return "an environment variable has a NUL byte".to_string();
    };
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        path.split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .collect()
    };
    let mut last_error = nix::errno::Errno::ENOENT;
    for candidate in candidates {
        let Ok(c_path) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        let Err(e) = nix::unistd::execve(&c_path, &argv, &env);
        // Like execvp: a file found but not runnable is the error to report.
        if e != nix::errno::Errno::ENOENT && e != nix::errno::Errno::ENOTDIR {
            last_error = e;
        }
    }
    format!("cannot run {program}: {last_error}")
}

/// Ends this process as the program ended: killed by the same signal.
fn end_by_signal(signal: i32) -> i32 {
    if let Ok(signal) = Signal::try_from(signal) {
        // SAFETY: restores the default disposition so that the signal ends this process.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
        let _ = nix::sys::signal::raise(signal);
    }
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_under_the_base_without_climbing_out() {
        let base = Path::new("/newroot");
        assert_eq!(
            join_absolute(base, Path::new("/a/b")),
            PathBuf::from("/newroot/a/b")
        );
        assert_eq!(
            join_absolute(base, Path::new("/../../etc")),
            PathBuf::from("/newroot/etc")
        );
    }
}
