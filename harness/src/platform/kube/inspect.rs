//! The node inspector (`--inspect-nodes`): a privileged hostNetwork DaemonSet whose pods
//! print, every few seconds, one JSON line with their node's service rule counts and
//! kube-proxy's sync metrics ([`manifests::INSPECTOR_SCRIPT`]). The run reads the lines from
//! the pods' logs: no port is opened and nothing but the log API is needed.
//!
//! What a sweep point learns from it: the rules on each node once the point's Services are
//! programmed, and kube-proxy's mean sync duration while they were (the `_sum` and `_count`
//! of `kubeproxy_sync_proxy_rules_duration_seconds` before and after the point).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::Api;
use serde::{Deserialize, Serialize};

use super::client::Cluster;
use super::manifests::{self, RunMeta};
use super::KubeError;
use crate::model::NodeProgramming;

/// One inspector report (a JSON line of [`manifests::INSPECTOR_SCRIPT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// Counts reports since the pod started: a report with `seq` two above the newest one
    /// seen at some moment was measured entirely after it.
    #[serde(default)]
    pub seq: u64,
    /// Rules as `iptables-nft-save` lists them; None when the image lacks it.
    pub iptables_rules: Option<u64>,
    /// Rules as `iptables-legacy-save` lists them; None when the image lacks it.
    pub iptables_legacy_rules: Option<u64>,
    /// Every nftables rule on the node (iptables-nft's included); None without `nft`.
    pub nft_rules: Option<u64>,
    /// Rules of kube-proxy's own nftables tables (`ip kube-proxy`, `ip6 kube-proxy`).
    #[serde(default)]
    pub kube_proxy_nft_rules: Option<u64>,
    /// kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds` sum and count (absent when
    /// its metrics port does not answer on the node).
    pub sync_seconds_sum: Option<f64>,
    pub sync_count: Option<u64>,
}

impl NodeReport {
    /// The rules that program Services in kube-proxy `mode`; None where no rule table holds
    /// them (IPVS keeps Services in the kernel's IPVS table; Cilium without kube-proxy in
    /// BPF maps).
    /// In iptables mode the two backends' counts add up (kube-proxy uses one; the other
    /// holds what else the node runs), as far as the image could count them.
    pub fn service_rules(&self, mode: &str) -> Option<u64> {
        match mode {
            "iptables" => match (self.iptables_rules, self.iptables_legacy_rules) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            },
            "nftables" => self.kube_proxy_nft_rules.or(self.nft_rules),
            _ => None,
        }
    }

    /// The counting tools the inspector image lacks, by the counts it reported as null.
    pub fn missing_tools(&self) -> Vec<&'static str> {
        [
            (self.iptables_rules, "iptables-nft-save"),
            (self.iptables_legacy_rules, "iptables-legacy-save"),
            (self.nft_rules, "nft"),
        ]
        .into_iter()
        .filter(|(c, _)| c.is_none())
        .map(|(_, t)| t)
        .collect()
    }
}

/// Direct access to a cluster's nodes from the coordinator's host, where it has it: on the
/// Kubernetes lab every node is a network namespace of this host, so no DaemonSet is needed
/// (and none could run: the lab has no DaemonSet controller). It gives what the inspector's
/// reports give elsewhere and, where it can, switches kube-proxy's mode for a sweep. Its
/// methods block (they run tools in the nodes' namespaces): call them off the async threads.
pub trait NodeAccess: Send + Sync + std::fmt::Debug {
    /// One report per node, taken now (`seq` is 0: each is fresh).
    fn reports(&self) -> anyhow::Result<Vec<NodeReport>>;
    /// Whether [`NodeAccess::set_proxy_mode`] can work here.
    fn can_switch_proxy_mode(&self) -> bool;
    /// Restarts every node's kube-proxy in `mode` (`iptables` or `nftables`) with the other
    /// mode's rules removed, and returns once each has synced.
    fn set_proxy_mode(&self, mode: &str) -> anyhow::Result<()>;
}

/// The last report in an inspector pod's log.
pub fn last_report(log: &str) -> Option<NodeReport> {
    log.lines().rev().find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// The selector of the run's inspector pods.
fn selector(run: &RunMeta) -> String {
    format!("{}=zonebench-inspector,{}={}", manifests::NAME_LABEL, manifests::RUN_LABEL, run.run_id)
}

/// The latest report of each inspector pod of the run, by pod name; pods that have not
/// reported yet map to None.
pub async fn node_reports(cluster: &Cluster, run: &RunMeta) -> Result<BTreeMap<String, Option<NodeReport>>, KubeError> {
    let ns = run.inspector_namespace();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&selector(run)))
        .await
        .map_err(|e| cluster.api_error("listing the node inspector's pods", &e))?;
    let mut out = BTreeMap::new();
    for p in list.items {
        let name = p.metadata.name.unwrap_or_default();
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let report = if running {
            let log = pods
                .logs(&name, &LogParams { tail_lines: Some(5), ..Default::default() })
                .await
                .map_err(|e| cluster.api_error(format!("reading the log of {ns}/{name}"), &e))?;
            last_report(&log)
        } else {
            None
        };
        out.insert(name, report);
    }
    Ok(out)
}

/// Waits until every inspector pod has reported at least once (the figures of the first
/// sweep point are differences from these).
pub async fn wait_first_reports(
    cluster: &Cluster,
    run: &RunMeta,
    image: &str,
    within: Duration,
) -> Result<Vec<NodeReport>, KubeError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reports = node_reports(cluster, run).await?;
        let silent: Vec<&String> = reports.iter().filter(|(_, r)| r.is_none()).map(|(p, _)| p).collect();
        if !reports.is_empty() && silent.is_empty() {
            return Ok(reports.into_values().flatten().collect());
        }
        if tokio::time::Instant::now() >= deadline {
            let message = if reports.is_empty() {
                format!("the node inspector DaemonSet started no pods within {within:?}")
            } else {
                format!(
                    "node inspector pods {} have not reported within {within:?} (is the image {image} pullable, and does it have bash, iptables-save and nft?)",
                    silent.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            };
            return Err(KubeError::Pods { cluster: cluster.describe(), message });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for a report from every inspector pod measured wholly after this call began: one
/// whose `seq` is at least two above the newest seen now. Pods that do not get there within
/// `within` keep their latest report, with a warning.
pub async fn fresh_reports(cluster: &Cluster, run: &RunMeta, within: Duration) -> Result<Vec<NodeReport>, KubeError> {
    let now = node_reports(cluster, run).await?;
    let want: BTreeMap<String, u64> =
        now.iter().map(|(pod, r)| (pod.clone(), r.as_ref().map_or(1, |r| r.seq + 2))).collect();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reports = node_reports(cluster, run).await?;
        let stale: Vec<&String> = reports
            .iter()
            .filter(|(pod, r)| r.as_ref().is_none_or(|r| r.seq < want.get(*pod).copied().unwrap_or(0)))
            .map(|(p, _)| p)
            .collect();
        if stale.is_empty() || tokio::time::Instant::now() >= deadline {
            if !stale.is_empty() {
                tracing::warn!("node inspector pods {stale:?} sent no new report within {within:?}; using their last");
            }
            return Ok(reports.into_values().flatten().collect());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Each node's programming figures from the reports before and after a change: its service
/// rules for kube-proxy `mode`, and kube-proxy's mean sync duration in between (None when it
/// did not sync or its metrics are not readable).
pub fn programming(before: &[NodeReport], after: &[NodeReport], mode: &str) -> Vec<NodeProgramming> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.node == a.node);
            let elapsed = match (b, a.sync_seconds_sum, a.sync_count) {
                (Some(b), Some(sum), Some(count)) => {
                    let (b_sum, b_count) = (b.sync_seconds_sum.unwrap_or(0.0), b.sync_count.unwrap_or(0));
                    let syncs = count.saturating_sub(b_count);
                    let seconds = sum - b_sum;
                    (syncs > 0 && seconds.is_finite() && seconds >= 0.0)
                        .then(|| Duration::from_secs_f64(seconds / syncs as f64))
                }
                _ => None,
            };
            NodeProgramming { node: a.node.clone(), rules: a.service_rules(mode), elapsed }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, seq: u64, rules: u64, sum: Option<f64>, count: Option<u64>) -> NodeReport {
        NodeReport {
            node: node.into(),
            seq,
            iptables_rules: Some(rules),
            iptables_legacy_rules: Some(0),
            nft_rules: Some(rules + 7),
            kube_proxy_nft_rules: None,
            sync_seconds_sum: sum,
            sync_count: count,
        }
    }

    #[test]
    fn an_inspector_log_yields_its_last_complete_report() {
        let log = "{\"node\":\"n1\",\"seq\":1,\"iptables_rules\":10,\"iptables_legacy_rules\":0,\"nft_rules\":3,\"sync_seconds_sum\":null,\"sync_count\":null}\n\
                   {\"node\":\"n1\",\"seq\":2,\"iptables_rules\":12,\"iptables_legacy_rules\":0,\"nft_rules\":3,\"kube_proxy_nft_rules\":2,\"sync_seconds_sum\":1.5,\"sync_count\":30}\n\
                   bash: warning: something\n";
        let r = last_report(log).unwrap();
        assert_eq!((r.seq, r.iptables_rules, r.kube_proxy_nft_rules), (2, Some(12), Some(2)));
        assert_eq!(r.sync_count, Some(30));
        assert_eq!(last_report("nothing yet\n"), None);
    }

    #[test]
    fn programming_is_the_mean_sync_between_reports_and_the_rules_of_the_proxy_mode() {
        let before = [report("n1", 3, 100, Some(2.0), Some(10)), report("n2", 3, 100, None, None)];
        let after = [report("n1", 5, 5100, Some(3.0), Some(14)), report("n2", 5, 5100, None, None)];
        let p = programming(&before, &after, "iptables");
        assert_eq!(p[0].rules, Some(5100));
        assert_eq!(p[0].elapsed, Some(Duration::from_millis(250)), "1 s over 4 syncs");
        assert_eq!((p[1].rules, p[1].elapsed), (Some(5100), None), "no metrics, no duration");
        assert_eq!(
            programming(&before, &after, "nftables")[0].rules,
            Some(5107),
            "all nft rules without a kube-proxy count"
        );
        assert_eq!(programming(&before, &after, "ipvs")[0].rules, None);
        let no_legacy = NodeReport { iptables_legacy_rules: None, ..after[0].clone() };
        assert_eq!(no_legacy.service_rules("iptables"), Some(5100), "what could be counted");
        assert_eq!(no_legacy.missing_tools(), ["iptables-legacy-save"]);
        let no_tools =
            NodeReport { iptables_rules: None, iptables_legacy_rules: None, nft_rules: None, ..after[0].clone() };
        assert_eq!((no_tools.service_rules("iptables"), no_tools.service_rules("nftables")), (None, None));
        let idle = [report("n1", 9, 5100, Some(3.0), Some(14))];
        assert_eq!(programming(&after, &idle, "iptables")[0].elapsed, None, "no sync in between");
    }
}
