//! Service dataplanes: what turns a Service's virtual IP into one of its endpoints on a node.
//!
//! Each lab node programs one dataplane, chosen by the scenario (`lab.service_dataplane`):
//! kube-proxy's iptables layout (nft or legacy backend), kube-proxy's nftables layout, or an
//! eBPF socket load balancer (cgroup connect4/sendmsg4, as Cilium's socket LB). They all take
//! the same input: the full table of Services with, per Service, the endpoints *this node*
//! routes to. Choosing those endpoints (traffic policies, topology hints) is
//! `topology::proxy`'s job, never the dataplane's, so hints change routing the same way on
//! every dataplane.
//!
//! A `sync` replaces the whole table, as a kube-proxy full resync does; the sweep times it.

pub mod ebpf;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The dataplane a node programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataplaneKind {
    /// kube-proxy iptables mode through `iptables-nft` (the default backend on current distros).
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

/// One Service port: kube-proxy writes one chain (or map entry) per Service *port*.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// `namespace/name:port-name`, as kube-proxy names its chains' comments.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint a Service port forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A Service port and the endpoints this node routes it to (already filtered by
/// `topology::proxy`). An empty list means "no endpoints": kube-proxy rejects such
/// connections, and so must every dataplane (an ICMP/RST reject or a refused connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRules {
    pub service: ServicePort,
    pub endpoints: Vec<Endpoint>,
}

/// Where one node's dataplane lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// The node's network namespace (`ip netns` name): iptables and nftables rules go here,
    /// where pod traffic is routed.
    pub netns: String,
    /// The node's cgroup v2 directory holding every agent process of the node's pods: the
    /// eBPF socket LB attaches here (cgroup hooks see the sockets of processes in the cgroup).
    pub cgroup: PathBuf,
    /// The node's pod CIDR (kube-proxy's `--cluster-cidr` masquerade decisions use it).
    pub pod_cidr: (Ipv4Addr, u8),
}

/// What one `sync` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Rules after the sync: `iptables-save`/`nft list ruleset` line counts, or BPF map entries.
    pub rules: u64,
    /// Wall time from starting the sync to the kernel having accepted it.
    pub elapsed: Duration,
}

/// One node's programmed dataplane.
pub trait Dataplane: Send {
    fn kind(&self) -> DataplaneKind;
    /// Replaces this node's whole Service table (a full resync).
    fn sync(&mut self, services: &[ServiceRules]) -> anyhow::Result<SyncReport>;
    /// Rules or entries currently programmed, counted the way [`SyncReport::rules`] is.
    fn rule_count(&self) -> anyhow::Result<u64>;
    /// Removes every rule, map and BPF attachment this dataplane made. Safe to call twice
    /// and after a failed `sync`.
    fn teardown(&mut self) -> anyhow::Result<()>;
}
