//! One cgroup v2 directory per lab node, holding the processes of that node's pods (agents,
//! connect probes). A socket belongs to the cgroup of the process that created it, and the
//! eBPF socket load balancer attaches its `connect4`/`sendmsg4` programs to the node's
//! cgroup, so that only pods of that node see that node's Service table, as on a cluster.
//!
//! The directories are `<cgroup2 mount>/<lab id>-<node>`, named with the lab prefix so a
//! crashed lab's are found and removed by `lab down`. The mount point is read from
//! `/proc/mounts` (hosts mount cgroup2 at `/sys/fs/cgroup` or, in hybrid setups,
//! `/sys/fs/cgroup/unified`). No controller is enabled: the directories only group
//! processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::topology::LabId;

/// The cgroup v2 mount point, if the host has one.
pub fn mount_point() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    parse_mount_point(&mounts)
}

fn parse_mount_point(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        // Mount points with spaces are escaped as \040 in /proc/mounts.
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// The directory of `node` of lab `id` under `mount`.
pub fn node_dir(mount: &Path, id: &LabId, node: &str) -> PathBuf {
    mount.join(format!("{}{node}", id.prefix()))
}

/// Creates a node's directory (an existing one is reused).
pub fn create(dir: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the cgroup {}", dir.display())),
    }
}

/// Moves process `pid` (all its threads) into the cgroup.
pub fn join(dir: &Path, pid: u32) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).with_context(|| format!("moving process {pid} into {}", procs.display()))
}

/// The processes in the cgroup.
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes the directory; one already gone is fine. Processes that were just killed may
/// take a moment to leave, so a busy directory is retried for up to two seconds.
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let left = pids(dir);
                return Err(e)
                    .with_context(|| format!("removing the cgroup {} (processes in it: {left:?})", dir.display()));
            }
        }
    }
}

/// Directories of lab `id` under the mount, found by name (for labs whose state is lost).
pub fn of_lab(id: &LabId) -> Vec<PathBuf> {
    let Some(mount) = mount_point() else { return vec![] };
    let prefix = id.prefix();
    let Ok(entries) = std::fs::read_dir(&mount) else { return vec![] };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_hierarchies() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(parse_mount_point(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_mount_point("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_mount_point("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn node_directories_carry_the_lab_prefix() {
        let d = node_dir(Path::new("/sys/fs/cgroup"), &LabId::from_bits(0x3f2a), "a-1");
        assert_eq!(d, PathBuf::from("/sys/fs/cgroup/zb3f2a-a-1"));
    }
}
