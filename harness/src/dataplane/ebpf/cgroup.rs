//! Finding and checking the cgroup v2 directories the socket load balancer attaches to.
//!
//! BPF cgroup hooks exist only on the unified (v2) hierarchy, and where it is mounted varies
//! (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a hybrid one), so it is
//! read from `/proc/mounts`, never assumed. A v1 directory would attach nowhere useful: say
//! so before the kernel gives a bare EBADF.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/mounts: {0}")]
    Mounts(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (see /proc/mounts); the eBPF dataplane needs the unified hierarchy")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a cgroup v2 directory (the unified hierarchy is mounted at {mount})")]
    NotCgroup2 { path: PathBuf, mount: String },
}

/// Where the cgroup v2 (unified) hierarchy is mounted, from `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_mount_in(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// The first cgroup2 mount point in a `/proc/mounts` text.
fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(unescape_mount_field(mount_point)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `path` is a directory of the cgroup v2 hierarchy.
pub fn check_cgroup2_dir(path: &Path) -> Result<(), CgroupError> {
    let io = |source| CgroupError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    let fs = nix::sys::statfs::statfs(path).map_err(|e| io(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        let mount = cgroup2_mount().map_or_else(|e| format!("nowhere: {e}"), |p| p.display().to_string());
        return Err(CgroupError::NotCgroup2 { path: path.to_path_buf(), mount });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_a_hybrid_host() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn a_host_without_cgroup2_has_no_mount() {
        assert_eq!(cgroup2_mount_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(
            cgroup2_mount_in("none /mnt/my\\040cgroups\\134x cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cgroups\\x"))
        );
    }
}
