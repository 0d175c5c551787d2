//! The cluster as the coordinator sees it, and what platforms are asked for and give back:
//! nodes and the run's fingerprint, agents wanted and deployed, Services wanted and created,
//! programming probes. Platforms produce these; the planner, the runner and results read
//! them, so they live below all of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zonebench_agent::spec::TestKind;

use super::hints::HintsVerdict;
use super::kinds::{DataplaneName, Protocol, Routing, RoutingMode};

/// A node as discovered: the unit agents are placed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub zone: String,
    /// Allocatable CPU in millicores (used by topology hints).
    pub cpu_millis: u64,
    pub ready: bool,
}

/// What a run records about where it ran; compared across runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `lab`, `local` or `kube`.
    pub platform: String,
    pub kernel: String,
    /// Lab pod routing (`native`, `vxlan`, `vxlan-crosssubnet`); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// Pod interface MTU, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub zones: Vec<String>,
    pub nodes: usize,
    pub zonebench_version: String,
    /// Platform-specific facts (inter-zone delay and rate in the lab, CNI on a cluster…).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTopology {
    pub nodes: Vec<Node>,
    pub fingerprint: Fingerprint,
}

impl ClusterTopology {
    /// Zones in first-seen order.
    pub fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !zones.contains(&n.zone) {
                zones.push(n.zone.clone());
            }
        }
        zones
    }
}

/// An agent the run wants, on a named node.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRequest {
    /// Unique agent id (also the identity it stamps on answers), e.g. `srv-a-0`.
    pub id: String,
    pub node: String,
    /// The agent's servers answer at most this many HTTP requests/s (`--max-answer-qps`):
    /// an application at capacity, for capacity searches and overload studies.
    pub max_answer_qps: Option<f64>,
    /// Relay service-chain requests (`serve --relay`).
    pub relay: bool,
}

/// How the coordinator reaches an agent's control API.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlEndpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running agent.
#[derive(Debug, Clone)]
pub struct DeployedAgent {
    pub id: String,
    pub node: String,
    pub zone: String,
    /// The address other agents target (the pod IP in the lab, 127.0.0.1 locally).
    pub ip: IpAddr,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub http_port: u16,
    pub control: ControlEndpoint,
    /// Bearer token of its control API.
    pub token: String,
}

/// The agent program a platform launches: a path and the arguments that precede `serve`
/// (the coordinator binary embeds the agent as `zonebench agent …`).
#[derive(Debug, Clone)]
pub struct AgentProgram {
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// An agent port a Service exposes. Each becomes a Service port named after it (`tcp`,
/// `udp`, `http`) with the agent's port number, targeting that port on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentPort {
    Tcp,
    Udp,
    Http,
}

impl AgentPort {
    pub fn name(self) -> &'static str {
        match self {
            AgentPort::Tcp => "tcp",
            AgentPort::Udp => "udp",
            AgentPort::Http => "http",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            AgentPort::Udp => Protocol::Udp,
            AgentPort::Tcp | AgentPort::Http => Protocol::Tcp,
        }
    }

    /// The port a test kind talks to.
    pub fn of_test(kind: TestKind) -> AgentPort {
        match kind {
            TestKind::TcpStream | TestKind::TcpRr | TestKind::TcpCrr => AgentPort::Tcp,
            TestKind::UdpStream | TestKind::UdpRr => AgentPort::Udp,
            TestKind::Http => AgentPort::Http,
        }
    }

    /// This port's number on `agent`.
    pub fn on(self, agent: &DeployedAgent) -> u16 {
        match self {
            AgentPort::Tcp => agent.tcp_port,
            AgentPort::Udp => agent.udp_port,
            AgentPort::Http => agent.http_port,
        }
    }
}

/// A ClusterIP Service the run wants in front of some agents.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// Unique in the run: lowercase letters, digits and '-' (`echo`, `svc-00042`).
    pub name: String,
    /// The agents whose pods are its endpoints.
    pub backends: Vec<String>,
    pub ports: Vec<AgentPort>,
    /// Topology-aware routing as the Service asks for it (`none`: neither the annotation
    /// nor `trafficDistribution`).
    pub routing: RoutingMode,
    /// Who lists the backends as the Service's endpoints (on a cluster; the lab programs
    /// every Service from the request itself).
    pub endpoints: EndpointsBy,
}

/// Who writes a Service's EndpointSlices on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointsBy {
    /// The cluster's EndpointSlice controller, from a selector on the backends' pods: what
    /// users' Services get, hints included.
    #[default]
    Controller,
    /// The run itself: a selector-less Service and one EndpointSlice it writes, so thousands
    /// of Services need no pod labels and no controller work (service scaling). No hints:
    /// only the controller writes those, so the routing must be `none`.
    Run,
}

/// A Service as created: its virtual IP and port numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployedService {
    pub name: String,
    pub ip: IpAddr,
    pub ports: Vec<(AgentPort, u16)>,
    /// The EndpointSlice controller's verdict on its hints, when the platform knows it.
    pub hints: Option<HintsVerdict>,
    /// The endpoints (agent ids) each node's dataplane routes the Service to, by node name,
    /// when the platform knows (the lab programs them itself); empty when it does not.
    pub routes: BTreeMap<String, Vec<String>>,
}

impl DeployedService {
    /// Where a client connects to reach `port` through the Service.
    pub fn address(&self, port: AgentPort) -> Option<SocketAddr> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, n)| SocketAddr::new(self.ip, *n))
    }
}

/// While Services are programmed, measure from `from_agent`'s node how long after the
/// creation of `service` a pod's connect to its `port` first succeeds (network programming
/// latency as a client sees it). A platform may probe from a pod of its own on that node,
/// so the probe's failed attempts leave nothing the agent's own connections could meet.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub from_agent: String,
    pub service: String,
    pub port: AgentPort,
    /// Give up after this long.
    pub within: Duration,
}

/// What programming one node's dataplane cost.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProgramming {
    pub node: String,
    /// Rules or entries after programming, as the dataplane counts them (None: nothing on
    /// the node could count them).
    pub rules: Option<u64>,
    /// From the start of the sync until the kernel accepted it (on a cluster, kube-proxy's
    /// mean sync duration meanwhile); None when unknown.
    pub elapsed: Option<Duration>,
}

/// The outcome of [`Platform::apply_services`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesApplied {
    pub services: Vec<DeployedService>,
    /// The dataplane that programmed them (`iptables`, …, or the cluster's kube-proxy mode).
    pub dataplane: DataplaneName,
    pub nodes: Vec<NodeProgramming>,
    /// The probe's answer, when one was asked for.
    pub probe: Option<Duration>,
}
