//! What a task's process does between fork and exec: the only unsafe code of the workspace,
//! since std runs such code only through `pre_exec`.
//!
//! It joins the run's cgroup before the program can start anything, and marks every
//! descriptor above stderr close-on-exec, so that none of the worker's (an inherited one, or
//! one a library opened without O_CLOEXEC) reaches the task.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

use tokio::process::Command;

/// Arranges the child setup for `command`; `cgroup_procs` is an open `cgroup.procs` to join.
pub(crate) fn set_up(command: &mut Command, cgroup_procs: Option<RawFd>) {
    // SAFETY: the hook makes only async-signal-safe system calls and allocates nothing, as
    // code between fork and exec in a multithreaded process must.
    unsafe {
        command.pre_exec(move || in_child(cgroup_procs));
    }
}

fn in_child(cgroup_procs: Option<RawFd>) -> std::io::Result<()> {
    if let Some(fd) = cgroup_procs {
        // `0` names the writer. SAFETY: one byte from a static buffer to a descriptor the
        // parent keeps open until the child has started.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: close_range only changes the flags of this process's descriptors.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked == 0 {
        return Ok(());
    }
    // Kernels before 5.11 lack close_range: mark each descriptor up to the limit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills in the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // An unlimited limit is bounded by fs.nr_open, 1 << 20 unless raised.
    let last = libc::c_int::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(libc::c_int::MAX);
    for fd in 3..last {
        // SAFETY: fcntl on a number that is no open descriptor only fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}
