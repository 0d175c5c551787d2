//! Topology-aware routing, computed the way Kubernetes computes it.
//!
//! Two decisions make traffic stay in a zone or not, and they are made by two programs:
//!
//! - [`hints`]: the EndpointSlice controller (kube-controller-manager) writes `hints.forZones`
//!   (and `forNodes`) on each endpoint. With `service.kubernetes.io/topology-mode: Auto` it runs
//!   a CPU-proportional heuristic that often refuses; with `spec.trafficDistribution` it simply
//!   hints every endpoint for its own zone (and node).
//! - [`proxy`]: kube-proxy on each node reads those hints and picks the endpoints it routes to
//!   (`CategorizeEndpoints`), together with the traffic policies and terminating endpoints.
//!
//! Both are ports of the upstream Go code (see `shared/reference/topology-hints.md` for the
//! commits read), down to the f64 arithmetic and the randomised map order: where Go's map
//! order can change the result, every possible result is computed. The lab uses them to
//! route like a cluster would, and `zonebench hints` ([`doctor`]) explains them on kubectl
//! output or, with [`live`], on a cluster beside the hints its controller actually wrote. [`locality`] turns the answers each server counted into per-zone counts, the
//! in-zone fraction and the cross-zone bytes and their cost: what actually happened.
//!
//! # API (plain Rust: no YAML, no Kubernetes types)
//!
//! ```
//! use zonebench::topology::{hints, proxy, Cpu, Endpoint, Node, RoutingMode, ServiceConfig, Slice};
//!
//! // The cluster: name, zone, allocatable CPU (Ready, not control-plane unless set).
//! let nodes: Vec<Node> = ["a", "b", "c"]
//!     .iter()
//!     .map(|z| Node::new(format!("node-{z}"), z, Cpu::from_millis(4000)))
//!     .collect();
//! // The Service's endpoints, in one or more slices (order matters to the controller).
//! let endpoints = ["a", "a", "b", "b", "c", "c"]
//!     .iter()
//!     .enumerate()
//!     .map(|(i, z)| Endpoint::ready(format!("10.0.0.{i}"), format!("node-{z}"), z))
//!     .collect();
//! let slices = vec![Slice::new("web-abc12", endpoints)];
//! let service = ServiceConfig::with_mode(RoutingMode::Auto);
//!
//! // (a) What the controller writes.
//! let r = hints::predict(&nodes, &slices, &service, &hints::ControllerOptions::default());
//! assert_eq!(r.mode, RoutingMode::Auto);
//! assert!(r.deterministic());
//! let written = r.slices(); // the slices with the hints of the first (canonical) outcome
//!
//! // (b) What kube-proxy on a node of zone "b" routes to (ClusterIP traffic).
//! let eps: Vec<Endpoint> = written.iter().flat_map(|s| s.endpoints.clone()).collect();
//! let node = proxy::ProxyNode::new("node-b", Some("b"));
//! let c = proxy::categorize(&eps, &service, &node, &proxy::ProxyOptions::default());
//! let addrs: Vec<&str> = c.internal().iter().map(|&i| eps[i].address.as_str()).collect();
//! assert_eq!(addrs, ["10.0.0.2", "10.0.0.3"]);
//! ```
//!
//! [`hints::Reconciliation`] also carries every possible outcome (`outcomes`), the per-zone
//! allocation figures and the event the controller records; [`proxy::routing_by_zone`]
//! gives, per zone, the endpoints a node there routes to and why.

pub mod doctor;
pub mod hints;
pub mod input;
pub mod live;
pub mod proxy;
#[cfg(test)]
mod reference_tests;
mod verdict;

pub use verdict::verdict;

use std::fmt;

use serde::{Deserialize, Serialize};

/// The well-known zone label on Nodes.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Nodes with this label (any value) are left out of the CPU ratios.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The older spelling of [`CONTROL_PLANE_LABEL`], also left out.
pub const MASTER_LABEL: &str = "node-role.kubernetes.io/master";
/// The annotation that turns on the CPU-proportional heuristic (Kubernetes 1.27+).
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// The deprecated annotation; when present it wins over [`TOPOLOGY_MODE_ANNOTATION`].
pub const TOPOLOGY_AWARE_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// The label that names the controller owning an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller's name in [`MANAGED_BY_LABEL`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Allocatable CPU, exact to the nanocore like a Kubernetes `Quantity` (`"4"`, `"3920m"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu {
    nanos: u128,
}

impl Cpu {
    pub const ZERO: Cpu = Cpu { nanos: 0 };

    pub fn from_millis(m: u64) -> Cpu {
        Cpu { nanos: u128::from(m) * 1_000_000 }
    }

    pub fn from_cores(c: u64) -> Cpu {
        Cpu { nanos: u128::from(c) * 1_000_000_000 }
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Millicores rounded up, as `Quantity.MilliValue()` does.
    pub fn millis(self) -> u128 {
        self.nanos.div_ceil(1_000_000)
    }

    pub fn saturating_add(self, o: Cpu) -> Cpu {
        Cpu { nanos: self.nanos.saturating_add(o.nanos) }
    }

    /// Parses a Kubernetes quantity: a decimal number with an optional SI (`n u m k M G T P
    /// E`), binary (`Ki Mi …`) or exponent (`e3`) suffix. Precision below a nanocore is
    /// rounded up, as Kubernetes does. Negative values are refused: no node has them.
    pub fn parse(s: &str) -> Result<Cpu, String> {
        parse_quantity_nanos(s).map(|nanos| Cpu { nanos })
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.millis())
    }
}

fn parse_quantity_nanos(s: &str) -> Result<u128, String> {
    let bad = |why: &str| format!("invalid quantity {s:?}: {why}");
    let t = s.trim();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad("no digits"));
    }
    if frac_part.contains('.') {
        return Err(bad("two decimal points"));
    }
    // (power of ten, power of 1024)
    let (exp10, exp1024): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        _ if suffix.starts_with(['e', 'E']) => {
            let e: i64 = suffix[1..].parse().map_err(|_| bad("bad exponent"))?;
            if !(-100..=100).contains(&e) {
                return Err(bad("exponent out of range"));
            }
            (e, 0)
        }
        _ => return Err(bad("unknown suffix")),
    };
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(bad("too many digits"));
    }
    let mantissa: u128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad("not a number"))? };
    if neg && mantissa != 0 {
        return Err(bad("negative"));
    }
    let too_big = || bad("too large");
    let scaled = mantissa.checked_mul(1024u128.pow(exp1024)).ok_or_else(too_big)?;
    // nanos = scaled × 10^(exp10 + 9 − fraction digits), rounded up.
    let e = exp10 + 9 - frac_part.len() as i64;
    if e >= 0 {
        let p = 10u128.checked_pow(e as u32).ok_or_else(too_big)?;
        let n = scaled.checked_mul(p).ok_or_else(too_big)?;
        // A node's CPU in nanocores stays far below this; it keeps sums and f64 exact.
        if n > 1u128 << 100 {
            return Err(too_big());
        }
        Ok(n)
    } else {
        match 10u128.checked_pow((-e) as u32) {
            Some(p) => Ok(scaled.div_ceil(p)),
            None => Ok(u128::from(scaled > 0)),
        }
    }
}

pub use crate::model::RoutingMode;

/// A Service's internal or external traffic policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// What the controller and kube-proxy read from a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `service.kubernetes.io/topology-aware-hints` (deprecated; wins when present).
    pub topology_aware_hints: Option<String>,
    /// `service.kubernetes.io/topology-mode`.
    pub topology_mode: Option<String>,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<String>,
    pub internal_traffic_policy: TrafficPolicy,
    pub external_traffic_policy: TrafficPolicy,
    /// A node port, a load-balancer IP or an external IP: kube-proxy then also uses the
    /// external traffic policy.
    pub externally_accessible: bool,
}

impl ServiceConfig {
    /// A ClusterIP Service asking for `mode` the way a user would write it.
    pub fn with_mode(mode: RoutingMode) -> ServiceConfig {
        let mut s = ServiceConfig::default();
        match mode {
            RoutingMode::Auto => s.topology_mode = Some("Auto".into()),
            RoutingMode::PreferClose => s.traffic_distribution = Some("PreferClose".into()),
            RoutingMode::PreferSameZone => s.traffic_distribution = Some("PreferSameZone".into()),
            RoutingMode::PreferSameNode => s.traffic_distribution = Some("PreferSameNode".into()),
            RoutingMode::None => {}
        }
        s
    }
}

/// A Node as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The `topology.kubernetes.io/zone` label; `None` when absent.
    pub zone: Option<String>,
    /// `status.allocatable.cpu`; zero when absent.
    pub allocatable_cpu: Cpu,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Has the control-plane (or master) role label.
    pub control_plane: bool,
}

impl Node {
    /// A Ready worker node.
    pub fn new(name: impl Into<String>, zone: &str, cpu: Cpu) -> Node {
        Node { name: name.into(), zone: Some(zone.into()), allocatable_cpu: cpu, ready: true, control_plane: false }
    }
}

/// `hints` of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hints {
    pub for_zones: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_nodes: Vec<String>,
}

impl Hints {
    pub fn zone(z: &str) -> Hints {
        Hints { for_zones: vec![z.to_string()], for_nodes: vec![] }
    }
}

/// An endpoint of an EndpointSlice. Conditions keep the API's three states (`None` = absent)
/// because the controller reads an absent `ready` as not ready and kube-proxy as ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The first of `addresses` (kube-proxy uses only that one).
    pub address: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub hints: Option<Hints>,
}

impl Endpoint {
    /// A ready, serving, not terminating endpoint without hints.
    pub fn ready(address: impl Into<String>, node: impl Into<String>, zone: &str) -> Endpoint {
        Endpoint {
            address: address.into(),
            node: Some(node.into()),
            zone: Some(zone.into()),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            hints: None,
        }
    }

    /// Ready as the EndpointSlice controller counts it: `ready: true`, absent is not ready.
    pub fn controller_ready(&self) -> bool {
        self.ready == Some(true)
    }
}

/// `addressType` of an EndpointSlice: hints are allocated separately per address type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AddressType {
    #[default]
    IPv4,
    IPv6,
    #[serde(rename = "FQDN")]
    Fqdn,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the controller's sync meets a slice; it decides which existing hints survive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncState {
    /// A new slice (every slice in a fresh sync): its endpoints carry no hints yet.
    #[default]
    Create,
    /// A slice whose endpoints changed: rebuilt from the pods, so without hints.
    Update,
    /// A slice the sync did not otherwise change: its hints are kept while still valid.
    Unchanged,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub name: String,
    pub address_type: AddressType,
    /// Labelled `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`.
    /// Other slices (hand-made, mirrored) are never touched by the controller, but
    /// kube-proxy still routes to them.
    pub managed_by_controller: bool,
    pub state: SyncState,
    pub endpoints: Vec<Endpoint>,
}

impl Slice {
    /// A controller-managed IPv4 slice in a fresh sync.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Slice {
        Slice {
            name: name.into(),
            address_type: AddressType::IPv4,
            managed_by_controller: true,
            state: SyncState::Create,
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_millicores_rounding_up() {
        let m = |s: &str| Cpu::parse(s).unwrap().millis();
        assert_eq!(m("4"), 4000);
        assert_eq!(m("3920m"), 3920);
        assert_eq!(m("2.5"), 2500);
        assert_eq!(m(".5"), 500);
        assert_eq!(m("1500000u"), 1500);
        assert_eq!(m("1n"), 1);
        assert_eq!(m("1e3"), 1_000_000);
        assert_eq!(m("1Ki"), 1_024_000);
        assert_eq!(m("0"), 0);
        assert!(Cpu::parse("0").unwrap().is_zero());
        assert_eq!(Cpu::parse("+2").unwrap(), Cpu::from_cores(2));
    }

    #[test]
    fn bad_quantities_are_refused_with_the_reason() {
        for (s, why) in [
            ("", "no digits"),
            ("abc", "no digits"),
            ("4x", "unknown suffix"),
            ("-1", "negative"),
            ("1.2.3", "two decimal points"),
            ("1e999", "exponent out of range"),
        ] {
            let e = Cpu::parse(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn with_mode_writes_what_a_user_would() {
        assert_eq!(ServiceConfig::with_mode(RoutingMode::Auto).topology_mode.as_deref(), Some("Auto"));
        let s = ServiceConfig::with_mode(RoutingMode::PreferSameNode);
        assert_eq!(s.traffic_distribution.as_deref(), Some("PreferSameNode"));
        assert_eq!(ServiceConfig::with_mode(RoutingMode::None), ServiceConfig::default());
    }
}
