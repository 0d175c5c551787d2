//! The node agent's hands: a pod's sandbox (a network namespace wired to the node's pod
//! bridge exactly as the plain lab wires its pods, so pods get real addresses of the node's
//! pod CIDR), its volumes as files, its processes, and the readiness probes the agent
//! sends them from the node's namespace, as a kubelet does from its host.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::pod_spec::{ContainerRun, ProbeAction, VolumeRun};
use crate::platform::lab::netns;
use crate::platform::lab::topology::{NodePlan, Plan, PodPlan};

/// The `slot`-th sandbox of `node`: its namespace, address and veth names.
pub fn sandbox(plan: &Plan, node: &NodePlan, slot: u32, pod: &str) -> anyhow::Result<PodPlan> {
    let mut p = plan.pod(pod, node, slot, 0).map_err(anyhow::Error::msg)?;
    // `-pod` in the name: the lab's removal deletes pods before their nodes.
    p.netns = format!("{}pod-{}-{slot}", plan.id.prefix(), node.name);
    Ok(p)
}

/// Creates the sandbox's namespace and wires it to the node (removing a stale one first).
pub fn create_sandbox(plan: &Plan, sandbox: &PodPlan) -> anyhow::Result<()> {
    if netns::exists(&sandbox.netns) {
        netns::delete(&sandbox.netns)?;
    }
    netns::run_all(&plan.pod_commands(sandbox)).with_context(|| format!("creating the sandbox {}", sandbox.netns))
}

/// Removes the sandbox (its veth goes with it).
pub fn remove_sandbox(sandbox: &PodPlan) -> anyhow::Result<()> {
    if netns::exists(&sandbox.netns) {
        netns::delete(&sandbox.netns)?;
    }
    Ok(())
}

/// Writes a volume's files into `dir`: each key of `data` (or each of `items`, as its
/// path) as a file of the volume's mode, owned by root and `fs_group`.
pub fn write_volume(
    dir: &Path,
    volume: &VolumeRun,
    data: &BTreeMap<String, Vec<u8>>,
    fs_group: Option<u32>,
) -> anyhow::Result<()> {
    let (mode, items) = match volume {
        VolumeRun::Secret { mode, items, .. } | VolumeRun::ConfigMap { mode, items, .. } => (*mode, items),
        VolumeRun::EmptyDir { .. } => {
            std::fs::DirBuilder::new().recursive(true).mode(0o777).create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
            return Ok(());
        }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    let files: Vec<(String, &Vec<u8>)> = if items.is_empty() {
        data.iter().map(|(k, v)| (k.clone(), v)).collect()
    } else {
        let mut v = Vec::new();
        for (key, path) in items {
            let value = data.get(key).with_context(|| format!("volume {}: no key {key:?}", volume.name()))?;
            v.push((path.clone(), value));
        }
        v
    };
    for (path, value) in files {
        if path.split('/').any(|p| p.is_empty() || p == "..") || path.starts_with('/') {
            bail!("volume {}: file path {path:?} is not a relative path inside the volume", volume.name());
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, value).with_context(|| format!("writing {}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        if let Some(g) = fs_group {
            std::os::unix::fs::chown(&file, Some(0), Some(g)).with_context(|| format!("chown {}", file.display()))?;
        }
    }
    Ok(())
}

/// Starts one container's process in `sandbox`, its output to `log`, with `env` resolved and
/// `mounts` as (volume directory, mount path, read-only). Mount paths that do not exist are
/// created and returned, so the caller removes them with the pod.
pub fn spawn(
    c: &ContainerRun,
    sandbox: &PodPlan,
    env: &[(String, String)],
    mounts: &[(PathBuf, PathBuf, bool)],
    log: &Path,
) -> anyhow::Result<(Child, Vec<PathBuf>)> {
    let netns = std::fs::File::open(Path::new(netns::NETNS_DIR).join(&sandbox.netns))
        .with_context(|| format!("opening the sandbox {}", sandbox.netns))?;
    let mut created = Vec::new();
    let mut binds = Vec::new();
    for (source, target, read_only) in mounts {
        if !target.exists() {
            std::fs::create_dir_all(target)
                .with_context(|| format!("creating the mount point {}", target.display()))?;
            created.push(target.clone());
        }
        let cs = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
        binds.push((cs(source)?, cs(target)?, *read_only));
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // Exec'd through a descriptor opened here, as root: the program's path may be one the
    // pod's user cannot traverse (under /root), or one a volume mount hides (a mount over
    // /run/zonebench hides the lab's own files).
    let program = std::fs::File::open(&c.program).with_context(|| format!("opening {}", c.program.display()))?;
    let mut cmd = Command::new(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&program)));
    std::os::unix::process::CommandExt::arg0(&mut cmd, &c.program);
    cmd.args(&c.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
    // Its own process group: a signal to the node agent's group is not the pod's.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let entry = crate::sys::PodEntry { netns, mounts: binds, uid: c.uid, gid: c.gid, groups: c.groups.clone() };
    crate::sys::enter_pod(&mut cmd, entry);
    let child = cmd.spawn().with_context(|| format!("starting {} for container {}", c.program.display(), c.name))?;
    drop(program);
    Ok((child, created))
}

/// One readiness probe of a container at `ip`; `Err` says why it failed.
pub async fn probe(ip: Ipv4Addr, action: &ProbeAction, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match action {
            ProbeAction::Tcp { port } => {
                tokio::net::TcpStream::connect(SocketAddr::from((ip, *port))).await.map_err(|e| e.to_string())?;
                Ok(())
            }
            ProbeAction::Http { port, path } => http_get(SocketAddr::from((ip, *port)), path).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `GET path` as the kubelet's prober sends it; a status of 200–399 is a success.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    // The status line is all a probe reads.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or_default()))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}
