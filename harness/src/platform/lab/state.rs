//! The lab state file, `/run/zonebench/labs/<id>.json`: what a lab created (namespaces,
//! processes with their start times) so `lab status` can report it and `lab down` can remove
//! it even after the coordinator that built it crashed. Written before anything is built and
//! rewritten as the lab grows, so a crash mid-build still leaves a record.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::netns;
use super::topology::LabId;
use crate::scenario::LabConfig;

/// Where state files live; the override exists for the lab's own tests of the format.
pub const STATE_DIR: &str = "/run/zonebench/labs";

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: i32,
    /// From `/proc/PID/stat`; guards against killing a process that reused the pid.
    pub start_time: Option<u64>,
    /// `delay-forwarder` or `agent:<id>`.
    pub role: String,
    pub netns: String,
}

impl ProcRecord {
    pub fn new(pid: i32, role: impl Into<String>, netns: impl Into<String>) -> ProcRecord {
        ProcRecord { pid, start_time: netns::start_time(pid), role: role.into(), netns: netns.into() }
    }

    /// Whether the recorded process still runs (and is the same process).
    pub fn alive(&self) -> bool {
        netns::alive(self.pid) && (self.start_time.is_none() || netns::start_time(self.pid) == self.start_time)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub id: String,
    pub config: LabConfig,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// The coordinator that built it.
    pub owner_pid: u32,
    /// True for a lab left up by `lab up` (no coordinator owns it).
    pub detached: bool,
    pub run_dir: PathBuf,
    /// Whether `run_dir` was made by the lab (and so is removed with it).
    pub owns_run_dir: bool,
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcRecord>,
    /// The per-node cgroup directories (empty without cgroup v2, or in older state files).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

impl LabState {
    pub fn path(dir: &Path, id: &LabId) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Writes atomically (temporary file, then rename), so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = LabId::parse(&self.id).map_err(anyhow::Error::msg)?;
        let path = Self::path(dir, &id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn load(dir: &Path, id: &LabId) -> anyhow::Result<Option<LabState>> {
        let path = Self::path(dir, id);
        match std::fs::read(&path) {
            Ok(body) => Ok(Some(serde_json::from_slice(&body).with_context(|| format!("parsing {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn remove(dir: &Path, id: &LabId) -> anyhow::Result<()> {
        let path = Self::path(dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Ids of every lab with a state file.
    pub fn ids(dir: &Path) -> Vec<LabId> {
        let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
        let mut ids: Vec<LabId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").and_then(|id| LabId::parse(id).ok()))
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_round_trips_and_is_listed_by_id() {
        let dir = std::env::temp_dir().join(format!("zb-state-test-{}", std::process::id()));
        let id = LabId::from_bits(0xbeef);
        let st = LabState {
            id: id.to_string(),
            config: LabConfig::default(),
            created_unix: 1,
            owner_pid: 2,
            detached: false,
            run_dir: "/run/zonebench/zbbeef".into(),
            owns_run_dir: true,
            namespaces: vec!["zbbeef-router".into()],
            processes: vec![ProcRecord {
                pid: 3,
                start_time: Some(4),
                role: "delay-forwarder".into(),
                netns: "n".into(),
            }],
            cgroups: vec!["/sys/fs/cgroup/zbbeef-a-1".into()],
        };
        st.save(&dir).unwrap();
        std::fs::write(dir.join("not-a-lab.json"), "{}").unwrap();
        assert_eq!(LabState::load(&dir, &id).unwrap(), Some(st));
        assert_eq!(LabState::ids(&dir), vec![id.clone()]);
        LabState::remove(&dir, &id).unwrap();
        LabState::remove(&dir, &id).unwrap();
        assert_eq!(LabState::load(&dir, &id).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
