//! What a cluster is: its nodes (zone, allocatable CPU, readiness, control-plane role,
//! instance type) and the fingerprint a run records (Kubernetes version, CNI, kube-proxy
//! mode, kernels, instance types). The reading is split from the interpreting: the pure
//! functions here take API objects, so they are tested on recorded ones.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node as K8sNode};
use kube::api::ListParams;
use kube::Api;

use super::client::Cluster;
use super::KubeError;
use crate::model::{ClusterTopology, Fingerprint, Node};
use crate::scenario::kube::parse_cpu_millis;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";
const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
const LEGACY_INSTANCE_TYPE_LABEL: &str = "beta.kubernetes.io/instance-type";

/// A node as the cluster describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNode {
    pub name: String,
    /// None when the node carries no zone label.
    pub zone: Option<String>,
    pub cpu_millis: u64,
    pub ready: bool,
    pub control_plane: bool,
    /// False when cordoned or tainted NoSchedule/NoExecute: agents would not be placed there.
    pub schedulable: bool,
    pub instance_type: Option<String>,
    pub kernel: Option<String>,
}

impl ClusterNode {
    pub fn from_api(n: &K8sNode) -> ClusterNode {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let label = |a: &str, b: &str| labels.get(a).or_else(|| labels.get(b)).filter(|v| !v.is_empty()).cloned();
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let cpu_millis = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .and_then(|q| parse_cpu_millis(&q.0).ok())
            .unwrap_or(0);
        let spec = n.spec.as_ref();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"));
        ClusterNode {
            name: n.metadata.name.clone().unwrap_or_default(),
            zone: label(ZONE_LABEL, LEGACY_ZONE_LABEL),
            cpu_millis,
            ready,
            control_plane: labels.contains_key("node-role.kubernetes.io/control-plane")
                || labels.contains_key("node-role.kubernetes.io/master"),
            schedulable: !cordoned && !tainted,
            instance_type: label(INSTANCE_TYPE_LABEL, LEGACY_INSTANCE_TYPE_LABEL),
            kernel: status.and_then(|s| s.node_info.as_ref()).map(|i| i.kernel_version.clone()),
        }
    }

    /// The platform's view: a node agents may go on only when ready and schedulable.
    fn to_node(&self) -> Option<Node> {
        Some(Node {
            name: self.name.clone(),
            zone: self.zone.clone()?,
            cpu_millis: self.cpu_millis,
            ready: self.ready && self.schedulable,
        })
    }
}

/// CNI plugins recognised by the DaemonSets they run, in the order they are reported.
const CNI_DAEMONSETS: [(&str, &str); 12] = [
    ("aws-node", "aws-vpc-cni"),
    ("cilium", "cilium"),
    ("anetd", "gke-dataplane-v2"),
    ("calico-node", "calico"),
    ("canal", "canal"),
    ("kube-flannel-ds", "flannel"),
    ("kube-flannel", "flannel"),
    ("kindnet", "kindnet"),
    ("weave-net", "weave"),
    ("antrea-agent", "antrea"),
    ("kube-router", "kube-router"),
    ("azure-cns", "azure-cni"),
];

/// The CNI plugins a cluster runs, from its DaemonSets' names (`aws-vpc-cni+cilium` when
/// chained); `unknown` when none is recognised.
pub fn detect_cni(daemonsets: &[DaemonSet]) -> String {
    let names: BTreeSet<&str> = daemonsets.iter().filter_map(|d| d.metadata.name.as_deref()).collect();
    let mut found: Vec<&str> = Vec::new();
    for (ds, cni) in CNI_DAEMONSETS {
        if names.contains(ds) && !found.contains(&cni) {
            found.push(cni);
        }
    }
    if found.is_empty() {
        "unknown".into()
    } else {
        found.join("+")
    }
}

/// kube-proxy's mode: from its configuration (kubeadm's `kube-proxy` ConfigMap, key
/// `config.conf`; EKS's `kube-proxy-config`, key `config`), `none` when kube-proxy does not
/// run (no DaemonSet and no configuration, or a kube-proxy replacement such as Cilium's
/// handles Services).
pub fn kube_proxy_mode(
    daemonsets: &[DaemonSet],
    config_maps: &[ConfigMap],
    cilium_config: Option<&ConfigMap>,
) -> String {
    // kube-proxy runs as a DaemonSet, or outside one (static pods, system services, the
    // Kubernetes lab's processes) with its configuration published kubeadm's way.
    let daemonset = daemonsets.iter().any(|d| d.metadata.name.as_deref() == Some("kube-proxy"));
    let replaced = cilium_config
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("kube-proxy-replacement"))
        .is_some_and(|v| matches!(v.as_str(), "true" | "strict"));
    let runs = daemonset || (!replaced && !config_maps.is_empty());
    if !runs {
        return if replaced { "none (cilium kube-proxy replacement)" } else { "none" }.into();
    }
    #[derive(serde::Deserialize)]
    struct ProxyConfig {
        #[serde(default)]
        mode: Option<String>,
    }
    for cm in config_maps {
        let Some(data) = cm.data.as_ref() else { continue };
        for key in ["config.conf", "config"] {
            let Some(text) = data.get(key) else { continue };
            if let Ok(cfg) = serde_saphyr::from_str::<ProxyConfig>(text) {
                // An empty mode means the platform default: iptables on Linux.
                return cfg.mode.filter(|m| !m.is_empty()).unwrap_or_else(|| "iptables".into());
            }
        }
    }
    "unknown (kube-proxy runs; no readable configuration)".into()
}

/// Nodes and fingerprint from API objects. Nodes without a zone label are left out (and
/// counted in the fingerprint); none having one is an error, since zones are the point.
pub fn topology(
    cluster: &Cluster,
    nodes: &[K8sNode],
    daemonsets: &[DaemonSet],
    proxy_configs: &[ConfigMap],
    cilium_config: Option<&ConfigMap>,
) -> Result<ClusterTopology, KubeError> {
    let described: Vec<ClusterNode> = nodes.iter().map(ClusterNode::from_api).collect();
    let zoned: Vec<Node> = described.iter().filter_map(ClusterNode::to_node).collect();
    if zoned.is_empty() {
        return Err(KubeError::NoZones { cluster: cluster.describe(), nodes: described.len() });
    }
    let mut zones: Vec<String> = Vec::new();
    for n in &zoned {
        if !zones.contains(&n.zone) {
            zones.push(n.zone.clone());
        }
    }
    let count = |items: Vec<String>| -> String {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for i in items {
            *m.entry(i).or_default() += 1;
        }
        m.iter().map(|(k, n)| format!("{k}×{n}")).collect::<Vec<_>>().join(",")
    };
    let mut extra = BTreeMap::new();
    extra.insert("kubernetes_version".into(), cluster.version.clone());
    extra.insert("cni".into(), detect_cni(daemonsets));
    extra.insert("kube_proxy_mode".into(), kube_proxy_mode(daemonsets, proxy_configs, cilium_config));
    extra.insert("server".into(), cluster.server.clone());
    extra.insert("context".into(), cluster.context.clone());
    let types = count(described.iter().filter_map(|n| n.instance_type.clone()).collect());
    if !types.is_empty() {
        extra.insert("instance_types".into(), types);
    }
    let unzoned = described.iter().filter(|n| n.zone.is_none()).count();
    if unzoned > 0 {
        extra.insert("nodes_without_zone".into(), unzoned.to_string());
    }
    let control_plane = described.iter().filter(|n| n.control_plane).count();
    extra.insert("control_plane_nodes".into(), control_plane.to_string());
    let kernels: BTreeSet<String> = described.iter().filter_map(|n| n.kernel.clone()).collect();
    let fingerprint = Fingerprint {
        platform: "kube".into(),
        kernel: kernels.into_iter().collect::<Vec<_>>().join(","),
        routing: None,
        mtu: None,
        zones,
        nodes: zoned.len(),
        zonebench_version: env!("CARGO_PKG_VERSION").into(),
        extra,
    };
    Ok(ClusterTopology { nodes: zoned, fingerprint })
}

/// Reads what [`topology`] needs: nodes, DaemonSets in every namespace (kube-system only
/// when listing all is forbidden), kube-proxy's and Cilium's ConfigMaps.
pub async fn discover(cluster: &Cluster) -> Result<ClusterTopology, KubeError> {
    let c = &cluster.client;
    let nodes = Api::<K8sNode>::all(c.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.api_error("listing nodes", &e))?
        .items;
    let daemonsets = match Api::<DaemonSet>::all(c.clone()).list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            Api::<DaemonSet>::namespaced(c.clone(), "kube-system")
                .list(&ListParams::default())
                .await
                .map_err(|e| cluster.api_error("listing DaemonSets in kube-system", &e))?
                .items
        }
        Err(e) => return Err(cluster.api_error("listing DaemonSets", &e)),
    };
    let cms = Api::<ConfigMap>::namespaced(c.clone(), "kube-system");
    let mut proxy_configs = Vec::new();
    for name in ["kube-proxy", "kube-proxy-config"] {
        match cms.get_opt(name).await {
            Ok(Some(cm)) => proxy_configs.push(cm),
            Ok(None) => {}
            // Unreadable configuration degrades the fingerprint, not the run.
            Err(e) => tracing::warn!("reading ConfigMap kube-system/{name}: {}", super::client::error_chain(&e)),
        }
    }
    let cilium = cms.get_opt("cilium-config").await.unwrap_or_else(|e| {
        tracing::warn!("reading ConfigMap kube-system/cilium-config: {}", super::client::error_chain(&e));
        None
    });
    topology(cluster, &nodes, &daemonsets, &proxy_configs, cilium.as_ref())
}

#[cfg(test)]
mod tests {
    use super::kube_proxy_mode;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config(text: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": text},
        }))
        .unwrap()
    }

    #[test]
    fn kube_proxy_outside_a_daemonset_is_found_by_its_published_configuration() {
        // The Kubernetes lab (and static-pod clusters): no DaemonSet, kubeadm's ConfigMap.
        let cm = config("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n");
        assert_eq!(kube_proxy_mode(&[], std::slice::from_ref(&cm), None), "nftables");
        assert_eq!(kube_proxy_mode(&[], &[], None), "none");
        // A leftover ConfigMap beside Cilium's replacement is not a running kube-proxy.
        let cilium: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cilium-config"}, "data": {"kube-proxy-replacement": "true"},
        }))
        .unwrap();
        assert_eq!(kube_proxy_mode(&[], &[cm], Some(&cilium)), "none (cilium kube-proxy replacement)");
    }
}
