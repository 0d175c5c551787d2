//! The coordinator's only unsafe code, all of it between fork and exec of a child: making
//! child processes (agents, forwarders) die with the coordinator, so a killed run cannot
//! leave load generators running, and putting a Kubernetes-lab pod's process in its
//! namespaces as its user ([`enter_pod`]).
#![allow(unsafe_code)]

use std::process::Command;

/// Arranges for the child to get SIGKILL when this process dies (Linux `PR_SET_PDEATHSIG`),
/// and puts it in its own process group so a terminal's Ctrl-C reaches only the
/// coordinator, which then stops the child itself after saving results.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends SIGTERM to a child we started.
pub fn terminate(child: &std::process::Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) with a pid of a child we spawned and have not reaped; no memory involved.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// How the lab's node agent starts a pod's process: in the pod's network namespace, in a
/// mount namespace of its own where the pod's volumes are bind-mounted over their paths,
/// as the pod's user, with no way to gain privileges.
pub struct PodEntry {
    /// The pod's network namespace (`/run/netns/<pod>`), opened by the caller.
    pub netns: std::fs::File,
    /// (source, target, read-only) bind mounts.
    pub mounts: Vec<(std::ffi::CString, std::ffi::CString, bool)>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Arranges for `cmd` to enter the pod described by `entry` between fork and exec. Runs
/// after std's own setup, so `cmd` must not set a uid or gid itself: the switch to the
/// pod's user comes last here, after the namespaces and mounts that need root.
pub fn enter_pod(cmd: &mut Command, entry: PodEntry) {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes syscalls (setns,
    // unshare, mount, setgroups, setgid, setuid, prctl) on memory `entry` owns, which was
    // allocated before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setns(entry.netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here may reach the host's mount namespace.
            let root = c"/";
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (source, target, read_only) in &entry.mounts {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                if *read_only {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                    check(libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
            }
            check(libc::setgroups(entry.groups.len(), entry.groups.as_ptr()))?;
            check(libc::setgid(entry.gid))?;
            check(libc::setuid(entry.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0))?;
            Ok(())
        });
    }
}
