//! The Kubernetes lab's nodes as the kube platform's [`NodeAccess`]: what `--inspect-nodes`'s
//! privileged DaemonSet reads on a cluster (each node's service rules, kube-proxy's sync
//! metrics), read here straight from each node's network namespace with the very script the
//! DaemonSet runs ([`INSPECTOR_SCRIPT`], once), so a lab figure and a cluster figure count the
//! same lines. The lab can also restart its kube-proxies in the other mode, which a cluster
//! cannot: a sweep on the lab measures iptables and nftables mode in one run.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::kube_proxy::{ProxyMode, METRICS_PORT};
use crate::platform::kube::inspect::{last_report, NodeAccess, NodeReport};
use crate::platform::kube::manifests::INSPECTOR_SCRIPT;
use crate::platform::lab::LabPlatform;

/// How long restarted kube-proxies may take to finish their first sync.
pub const FIRST_SYNC_WITHIN: Duration = Duration::from_secs(90);

/// A lab node as the reader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    /// Where its kube-proxy serves metrics.
    pub ip: Ipv4Addr,
}

/// One node's report, now: the inspector script run once in its namespace with the host's
/// iptables and nft (every lab node shares the host's tools, not its tables).
pub fn report(node: &LabNode) -> anyhow::Result<NodeReport> {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.netns, "env"])
        .arg(format!("NODE_NAME={}", node.name))
        .arg(format!("METRICS_HOST={}", node.ip))
        .args(["ONCE=1", "bash", "-c", INSPECTOR_SCRIPT])
        .output()
        .with_context(|| format!("reading node {}'s rules and kube-proxy metrics (ip netns exec)", node.name))?;
    let text = String::from_utf8_lossy(&out.stdout);
    last_report(&text).with_context(|| {
        format!(
            "node {}: the inspector script printed no report ({}): {}",
            node.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Every node's report, read in parallel (at 10,000 Services one listing takes a while).
pub fn reports(nodes: &[LabNode]) -> anyhow::Result<Vec<NodeReport>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes.iter().map(|n| s.spawn(move || report(n))).collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a node reader panicked"))?).collect()
    })
}

/// The Kubernetes lab of a one-command run (`lab.kubernetes = true`), shared with the kube
/// platform that runs on it; the lab's handle stays the owner of every process.
#[derive(Clone)]
pub struct KubeLabNodes {
    nodes: Vec<LabNode>,
    lab: Arc<Mutex<LabPlatform>>,
}

impl std::fmt::Debug for KubeLabNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLabNodes").field("nodes", &self.nodes).finish_non_exhaustive()
    }
}

impl KubeLabNodes {
    pub fn new(lab: Arc<Mutex<LabPlatform>>) -> anyhow::Result<KubeLabNodes> {
        let nodes = lab.lock().map_err(|_| anyhow::anyhow!("the lab's lock is poisoned"))?.kube_nodes();
        Ok(KubeLabNodes { nodes, lab })
    }
}

impl NodeAccess for KubeLabNodes {
    fn reports(&self) -> anyhow::Result<Vec<NodeReport>> {
        reports(&self.nodes)
    }

    fn can_switch_proxy_mode(&self) -> bool {
        true
    }

    fn set_proxy_mode(&self, mode: &str) -> anyhow::Result<()> {
        let mode = match mode {
            "iptables" => ProxyMode::Iptables,
            "nftables" => ProxyMode::Nftables,
            other => bail!("{other} is no kube-proxy mode the Kubernetes lab runs: use iptables or nftables"),
        };
        self.lab.lock().map_err(|_| anyhow::anyhow!("the lab's lock is poisoned"))?.set_kube_proxy_mode(mode)?;
        // Synced: every node's kube-proxy has finished a sync in the new mode.
        let deadline = Instant::now() + FIRST_SYNC_WITHIN;
        loop {
            let r = reports(&self.nodes)?;
            let waiting: Vec<&str> =
                r.iter().filter(|r| r.sync_count.unwrap_or(0) == 0).map(|r| r.node.as_str()).collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-proxy in {} mode has not synced within {FIRST_SYNC_WITHIN:?} on {} (metrics on port {METRICS_PORT})",
                    mode.as_str(),
                    waiting.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
