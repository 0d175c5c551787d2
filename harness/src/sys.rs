//! The coordinator's only unsafe code: making child processes (agents, forwarders) die with
//! the coordinator, so a killed run cannot leave load generators running.
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
