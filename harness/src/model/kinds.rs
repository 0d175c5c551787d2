//! The closed sets the other records name: how a client reaches a server, how lab pods route,
//! which dataplane programs Services, which protocol a port speaks, how a Service asks for
//! topology-aware routing. Each serializes as the lowercase word results.json has always
//! carried, so moving them here from strings changed no file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a client reaches a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Straight to the server pod's IP.
    #[default]
    Pod,
    /// Through a Service virtual IP, translated by the platform's service dataplane.
    Service,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Pod => "pod",
            Via::Service => "service",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How pod traffic crosses nodes in the lab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Plain routes to each node's pod CIDR (like Calico/Cilium native routing).
    #[default]
    Native,
    /// Always encapsulate between nodes (flannel's vxlan backend).
    Vxlan,
    /// Encapsulate only between subnets, i.e. across zones (Calico's VXLANCrossSubnet).
    VxlanCrosssubnet,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Native => "native",
            Routing::Vxlan => "vxlan",
            Routing::VxlanCrosssubnet => "vxlan-crosssubnet",
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The dataplane a lab node programs; kube-proxy's default mode, iptables, unless chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataplaneKind {
    /// kube-proxy iptables mode through `iptables-nft` (the default backend on current distros).
    #[default]
    Iptables,
    /// kube-proxy iptables mode through the legacy x_tables backend.
    IptablesLegacy,
    /// kube-proxy nftables mode.
    Nftables,
    /// Socket-level load balancing with BPF cgroup hooks.
    Ebpf,
}

impl DataplaneKind {
    pub const ALL: [DataplaneKind; 4] =
        [DataplaneKind::Iptables, DataplaneKind::IptablesLegacy, DataplaneKind::Nftables, DataplaneKind::Ebpf];

    pub fn as_str(self) -> &'static str {
        match self {
            DataplaneKind::Iptables => "iptables",
            DataplaneKind::IptablesLegacy => "iptables-legacy",
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::Ebpf => "ebpf",
        }
    }
}

impl fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataplaneKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataplaneKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown service dataplane {s:?}: expected one of iptables, iptables-legacy, nftables, ebpf")
        })
    }
}

/// The dataplane a sweep point measured through: one of the lab's, or whatever a cluster
/// runs (kube-proxy's mode, or its CNI), which is an open set: a cluster names its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataplaneName {
    Lab(DataplaneKind),
    Cluster(String),
}

impl DataplaneName {
    /// A cluster's dataplane by its name; the lab's own names map to their kind.
    pub fn of_cluster(name: &str) -> DataplaneName {
        name.parse().map(DataplaneName::Lab).unwrap_or_else(|_| DataplaneName::Cluster(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            DataplaneName::Lab(k) => k.as_str(),
            DataplaneName::Cluster(s) => s,
        }
    }
}

impl fmt::Display for DataplaneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How a Service asks for topology-aware routing; also the mode the controller ends up using.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    /// `service.kubernetes.io/topology-mode: Auto`: the CPU-proportional heuristic.
    Auto,
    /// `spec.trafficDistribution: PreferClose` (1.31+; an alias of PreferSameZone from 1.33).
    PreferClose,
    /// `spec.trafficDistribution: PreferSameZone` (1.33+).
    PreferSameZone,
    /// `spec.trafficDistribution: PreferSameNode` (1.33+): node hints, zone hints as fallback.
    PreferSameNode,
    /// No hints.
    None,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Auto => "auto",
            RoutingMode::PreferClose => "prefer-close",
            RoutingMode::PreferSameZone => "prefer-same-zone",
            RoutingMode::PreferSameNode => "prefer-same-node",
            RoutingMode::None => "none",
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of an event the EndpointSlice controller records on a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_names_keep_their_words() {
        for k in DataplaneKind::ALL {
            let name = DataplaneName::of_cluster(k.as_str());
            assert_eq!(name, DataplaneName::Lab(k));
            assert_eq!(serde_json::to_string(&name).unwrap_or_default(), format!("\"{k}\""));
        }
        let ipvs: DataplaneName = serde_json::from_str("\"ipvs\"").unwrap_or(DataplaneName::Lab(DataplaneKind::Ebpf));
        assert_eq!(ipvs, DataplaneName::Cluster("ipvs".into()));
    }
}
