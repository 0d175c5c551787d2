//! `zonebench lab up | status | down [--all]`: keep a lab up for exploring, see what labs
//! exist, and remove them, including leftovers of a coordinator that crashed (found by their
//! state file or, without one, by the `zb<4 hex>-` prefix of their namespaces).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use super::netns;
use super::state::{LabState, ProcRecord, STATE_DIR};
use super::topology::LabId;
use super::{LabOptions, LabPlatform, KILL_GRACE};
use crate::scenario::LabConfig;

/// What `lab status` reports about one lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabStatus {
    pub id: String,
    /// False for namespaces found by prefix with no state file (a crash before it was written
    /// or after it was removed).
    pub has_state_file: bool,
    pub detached: bool,
    pub owner_pid: Option<u32>,
    pub owner_alive: bool,
    pub routing: Option<String>,
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
    pub namespaces_present: Vec<String>,
    pub namespaces_missing: Vec<String>,
    pub processes: Vec<ProcessStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessStatus {
    pub pid: i32,
    pub role: String,
    pub alive: bool,
}

fn state_dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}

/// Builds a lab and leaves it running (its forwarder detached); returns its id.
pub fn up(config: LabConfig, options: LabOptions) -> anyhow::Result<LabId> {
    let mut lab = LabPlatform::new(config, options)?;
    lab.detached = true;
    lab.build()?;
    Ok(lab.release())
}

/// The user's kubeconfig of Kubernetes lab `id` (`lab up --kubernetes`).
pub fn kubeconfig(id: &str) -> anyhow::Result<PathBuf> {
    let id = LabId::parse(id).map_err(anyhow::Error::msg)?;
    let st = LabState::load(&state_dir(), &id)?.with_context(|| format!("no lab {id} (no state file)"))?;
    if !st.config.kubernetes {
        anyhow::bail!("lab {id} is not a Kubernetes lab (it was built without --kubernetes)");
    }
    let path = super::kubernetes::cluster::kubeconfig_of(&st.run_dir);
    if !path.is_file() {
        anyhow::bail!("lab {id}'s kubeconfig {} is missing: its control plane did not come up", path.display());
    }
    Ok(path)
}

/// Every lab on this host, from state files and namespace names.
pub fn status() -> Vec<LabStatus> {
    status_in(&state_dir())
}

pub fn status_in(dir: &Path) -> Vec<LabStatus> {
    let mut ids = LabState::ids(dir);
    ids.extend(netns::lab_ids_present());
    ids.sort();
    ids.dedup();
    ids.iter().map(|id| status_of(dir, id)).collect()
}

fn status_of(dir: &Path, id: &LabId) -> LabStatus {
    let st = LabState::load(dir, id).ok().flatten();
    let mut expected: Vec<String> = st.as_ref().map(|s| s.namespaces.clone()).unwrap_or_default();
    for ns in netns::of_lab(id) {
        if !expected.contains(&ns) {
            expected.push(ns);
        }
    }
    let (present, missing): (Vec<String>, Vec<String>) = expected.into_iter().partition(|ns| netns::exists(ns));
    let nodes = st
        .as_ref()
        .and_then(|s| super::topology::Plan::new(id.clone(), &s.config).ok())
        .map(|p| p.nodes.iter().map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    LabStatus {
        id: id.to_string(),
        has_state_file: st.is_some(),
        detached: st.as_ref().is_some_and(|s| s.detached),
        owner_pid: st.as_ref().map(|s| s.owner_pid),
        owner_alive: st.as_ref().is_some_and(|s| netns::alive(s.owner_pid as i32)),
        routing: st.as_ref().map(|s| s.config.routing.as_str().to_string()),
        zones: st.as_ref().map(|s| s.config.zones.clone()).unwrap_or_default(),
        nodes,
        namespaces_present: present,
        namespaces_missing: missing,
        processes: st
            .as_ref()
            .map(|s| {
                s.processes
                    .iter()
                    .map(|p| ProcessStatus { pid: p.pid, role: p.role.clone(), alive: p.alive() })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Removes lab `id`: its processes, namespaces, state file and (if it made it) run directory.
pub fn down(id: &str) -> anyhow::Result<()> {
    let id = LabId::parse(id).map_err(anyhow::Error::msg)?;
    let dir = state_dir();
    let st = LabState::load(&dir, &id)?;
    if st.is_none() && netns::of_lab(&id).is_empty() {
        anyhow::bail!("no lab {id} (no state file, no namespaces)");
    }
    remove_lab(&id, st.as_ref(), &dir)
}

/// Removes every lab on this host, with or without a state file; returns their ids.
pub fn down_all() -> anyhow::Result<Vec<String>> {
    let dir = state_dir();
    let mut ids = LabState::ids(&dir);
    ids.extend(netns::lab_ids_present());
    ids.sort();
    ids.dedup();
    let mut first_err = None;
    for id in &ids {
        let st = LabState::load(&dir, id).unwrap_or(None);
        if let Err(e) = remove_lab(id, st.as_ref(), &dir) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(ids.iter().map(|i| i.to_string()).collect()),
    }
}

/// The one removal path (teardown, `down`, `down --all`): kill recorded processes (if still
/// the same ones), then anything else inside the lab's namespaces, then delete the
/// namespaces (pods first), the run directory if the lab made it, and the state file last,
/// so an interrupted removal can be resumed.
pub(crate) fn remove_lab(id: &LabId, st: Option<&LabState>, dir: &Path) -> anyhow::Result<()> {
    if let Some(st) = st {
        let pids: Vec<i32> = st.processes.iter().filter(|p| p.alive()).map(|p: &ProcRecord| p.pid).collect();
        netns::kill_and_wait(&pids, KILL_GRACE);
    }
    let mut namespaces: Vec<String> = st.map(|s| s.namespaces.clone()).unwrap_or_default();
    for ns in netns::of_lab(id) {
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    namespaces.retain(|ns| ns.starts_with(&id.prefix()));
    // A Kubernetes lab's host link, first and explicitly: a namespace's removal frees its
    // devices asynchronously, and the host's route to the pod network must be gone on return.
    for link in netns::host_links(id) {
        netns::run_argv(&["ip".into(), "link".into(), "del".into(), link.clone()])
            .with_context(|| format!("removing lab {id}'s host link {link}"))?;
    }
    let entering: Vec<i32> = namespaces.iter().flat_map(|ns| netns::entering(ns)).collect();
    netns::kill_and_wait(&entering, KILL_GRACE);
    netns::kill_all_in(&namespaces, KILL_GRACE);
    // Pods hang off nodes, nodes off the router: delete leaves first.
    namespaces.sort_by_key(|ns| (!ns.contains("-pod"), ns.ends_with("-router")));
    let mut first_err = None;
    for ns in &namespaces {
        if let Err(e) = netns::delete(ns) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e.context(format!("removing the namespaces of lab {id}")));
    }
    // The cgroups are empty now: their processes lived in the namespaces just emptied.
    let mut cgroups: Vec<PathBuf> = st.map(|s| s.cgroups.clone()).unwrap_or_default();
    for dir in super::cgroup::of_lab(id) {
        if !cgroups.contains(&dir) {
            cgroups.push(dir);
        }
    }
    for dir in &cgroups {
        super::cgroup::remove(dir).with_context(|| format!("removing the cgroups of lab {id}"))?;
    }
    // The Kubernetes lab's etcd keeps its data on a tmpfs under the run directory: unmount
    // whatever is mounted there (a crashed coordinator's too) before the directory goes.
    if let Some(st) = st {
        for m in mounts_under(&st.run_dir) {
            super::kubernetes::control_plane::unmount(&m).with_context(|| format!("lab {id}"))?;
        }
    }
    if let Some(st) = st.filter(|s| s.owns_run_dir) {
        match std::fs::remove_dir_all(&st.run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", st.run_dir.display())),
        }
    }
    LabState::remove(dir, id)
}

/// Mount points at or under `dir`, deepest first (from `/proc/mounts`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut v: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}
