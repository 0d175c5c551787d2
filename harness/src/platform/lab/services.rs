//! Services in the lab: a ClusterIP-style virtual IP per Service, taken from
//! [`SERVICE_CIDR`], with the pod IPs of its backend agents as endpoints, programmed on every
//! node by the scenario's dataplane (`lab.service_dataplane`).
//!
//! A pod's connection to a VIP leaves the pod for its node's namespace, where the node's
//! dataplane rewrites it to an endpoint (or, for eBPF, the connect itself is rewritten in
//! the pod's node cgroup). Which endpoints a node uses is decided in one place,
//! [`endpoints_for_node`], so the zone rules of `topology::proxy` change every dataplane the
//! same way.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context as _};

use super::topology::Cidr;
use crate::dataplane::{self, Dataplane, Endpoint, NodeTarget, ServicePort, ServiceRules};
use crate::model::AgentPort;
use crate::model::DataplaneKind;
use crate::model::HintsVerdict;
use crate::model::RoutingMode;
use crate::topology::{self, proxy, Hints, ServiceConfig};

/// Service VIPs: the upper half of the underlay's 198.18.0.0/16, whose zones use only
/// 198.18.0.0/24 to 198.18.15.0/24, so no address here is a node, pod or router. Inside
/// RFC 2544's benchmark range, like the rest of the lab; nothing routes it: a VIP a node
/// does not translate goes to the router, which has no route for it.
pub const SERVICE_CIDR: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 128, 0), 17);
/// The Kubernetes namespace in Service port names (`zonebench/<service>:<port>`).
pub const NAMESPACE: &str = "zonebench";

/// The `index`-th VIP (0-based): the range's network and broadcast addresses are skipped.
pub fn vip(index: u32) -> Option<Ipv4Addr> {
    let size = 1u32 << (32 - u32::from(SERVICE_CIDR.len));
    (index < size - 2).then(|| Ipv4Addr::from(u32::from(SERVICE_CIDR.addr) + 1 + index))
}

/// An endpoint as the EndpointSlice controller sees it: a ready pod of the Service, where
/// it runs, and the hints the controller wrote on it (`None`: no hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub agent: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub zone: String,
    pub hints: Option<Hints>,
}

impl ServiceEndpoint {
    /// The endpoint as an EndpointSlice holds it (every lab pod is ready and serving).
    pub fn slice_endpoint(&self) -> topology::Endpoint {
        topology::Endpoint {
            hints: self.hints.clone(),
            ..topology::Endpoint::ready(self.ip.to_string(), self.node.clone(), &self.zone)
        }
    }
}

/// A Service as the lab holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabService {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<(AgentPort, u16)>,
    /// How the Service asks for topology-aware routing (annotation or trafficDistribution).
    pub routing: RoutingMode,
    pub endpoints: Vec<ServiceEndpoint>,
}

/// A lab node as the EndpointSlice controller sees it. Every lab node gets the same
/// allocatable CPU, so a zone's CPU share is its share of nodes, as on a cluster of one
/// instance type.
pub const LAB_NODE_CPU_MILLIS: u64 = 4000;

/// Writes the hints the EndpointSlice controller would write for `service` (one fresh sync
/// of one slice holding every endpoint, in backend order) and returns the controller's
/// verdict in the doctor's words, to store beside what is then measured.
pub fn write_hints(service: &mut LabService, nodes: &[(String, String)]) -> anyhow::Result<HintsVerdict> {
    let cluster: Vec<topology::Node> = nodes
        .iter()
        .map(|(name, zone)| topology::Node::new(name.clone(), zone, topology::Cpu::from_millis(LAB_NODE_CPU_MILLIS)))
        .collect();
    for e in &mut service.endpoints {
        e.hints = None;
    }
    let slice = topology::Slice::new(
        format!("{}-lab", service.name),
        service.endpoints.iter().map(ServiceEndpoint::slice_endpoint).collect(),
    );
    let (rec, verdict) = topology::verdict(NAMESPACE, &service.name, cluster, slice, service.routing)
        .map_err(|e| anyhow::anyhow!("explaining the hints of service {}: {e}", service.name))?;
    // The canonical outcome; a tie Go's map order could break differently is reported by
    // the verdict's `deterministic`, and the lab follows the first outcome.
    let written = rec.slices();
    let eps = written.first().map(|s| s.endpoints.as_slice()).unwrap_or(&[]);
    for (e, w) in service.endpoints.iter_mut().zip(eps) {
        e.hints = w.hints.clone();
    }
    Ok(verdict)
}

/// The endpoints node `node` (in `zone`) sends a Service's traffic to: the one point where
/// zone rules apply. kube-proxy's own selection (`topology::proxy::categorize`) on the
/// hints [`write_hints`] wrote, so hints steer every dataplane as they steer kube-proxy.
pub fn endpoints_for_node<'a>(node: &str, zone: &str, service: &'a LabService) -> Vec<&'a ServiceEndpoint> {
    let eps: Vec<topology::Endpoint> = service.endpoints.iter().map(ServiceEndpoint::slice_endpoint).collect();
    let config = ServiceConfig::with_mode(service.routing);
    let c = proxy::categorize(&eps, &config, &proxy::ProxyNode::new(node, Some(zone)), &proxy::ProxyOptions::default());
    c.internal().iter().filter_map(|&i| service.endpoints.get(i)).collect()
}

/// The Service table one node programs: every port of every Service, with the endpoints
/// [`endpoints_for_node`] picks for the node.
pub fn rules_for_node(node: &str, zone: &str, services: &[LabService]) -> Vec<ServiceRules> {
    let mut rules = Vec::with_capacity(services.len());
    for s in services {
        let chosen = endpoints_for_node(node, zone, s);
        for &(port, number) in &s.ports {
            rules.push(ServiceRules {
                service: ServicePort {
                    name: format!("{NAMESPACE}/{}:{}", s.name, port.name()),
                    vip: s.vip,
                    port: number,
                    protocol: port.protocol(),
                },
                // Every agent in the lab listens on the same port numbers.
                endpoints: chosen.iter().map(|e| Endpoint { ip: e.ip, port: number }).collect(),
            });
        }
    }
    rules
}

/// Checks a Service name: it becomes part of chain names and rule comments.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("service name {name:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'");
    }
    Ok(())
}

/// The lab's Services and each node's dataplane.
pub struct LabServices {
    kind: DataplaneKind,
    /// VIPs by Service name; a name keeps its VIP for the life of the lab.
    vips: BTreeMap<String, Ipv4Addr>,
    /// Opened on first use, by node name.
    dataplanes: BTreeMap<String, Box<dyn Dataplane>>,
}

impl LabServices {
    pub fn new(kind: DataplaneKind) -> LabServices {
        LabServices { kind, vips: BTreeMap::new(), dataplanes: BTreeMap::new() }
    }

    pub fn kind(&self) -> DataplaneKind {
        self.kind
    }

    /// The VIP of Service `name`, allocated on first use.
    pub fn vip_for(&mut self, name: &str) -> anyhow::Result<Ipv4Addr> {
        if let Some(v) = self.vips.get(name) {
            return Ok(*v);
        }
        let index = u32::try_from(self.vips.len()).unwrap_or(u32::MAX);
        let v = vip(index).with_context(|| format!("the lab's Service range {SERVICE_CIDR} is full"))?;
        self.vips.insert(name.to_string(), v);
        Ok(v)
    }

    /// The node's dataplane, opened now if it is not yet.
    pub fn dataplane(&mut self, node: &str, target: &NodeTarget) -> anyhow::Result<&mut Box<dyn Dataplane>> {
        if !self.dataplanes.contains_key(node) {
            let dp = dataplane::open(self.kind, target)
                .with_context(|| format!("opening the {} dataplane on node {node}", self.kind))?;
            self.dataplanes.insert(node.to_string(), dp);
        }
        self.dataplanes.get_mut(node).context("a dataplane just opened is missing")
    }

    /// Removes every node's rules; the next sync opens `kind` afresh.
    pub fn switch(&mut self, kind: DataplaneKind) -> anyhow::Result<()> {
        if kind == self.kind {
            return Ok(());
        }
        self.teardown()?;
        self.kind = kind;
        Ok(())
    }

    /// Removes every rule each node's dataplane made; reports the first failure after
    /// trying all nodes.
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        let mut first = None;
        for (node, mut dp) in std::mem::take(&mut self.dataplanes) {
            if let Err(e) = dp.teardown() {
                first.get_or_insert(e.context(format!("removing the {} rules of node {node}", dp.kind())));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::topology::{LabId, Plan, POD_SUPERNET, UNDERLAY_SUPERNET};
    use super::super::LabConfig;
    use super::*;

    fn ep(agent: &str, ip: [u8; 4], zone: &str) -> ServiceEndpoint {
        ServiceEndpoint {
            agent: agent.into(),
            ip: ip.into(),
            node: format!("{zone}-1"),
            zone: zone.into(),
            hints: None,
        }
    }

    #[test]
    fn vips_never_land_on_a_lab_address() {
        let zones: Vec<String> = (0..16).map(|i| format!("z{i}")).collect();
        let config = LabConfig { zones, nodes_per_zone: 16, ..LabConfig::default() };
        let plan = Plan::new(LabId::from_bits(1), &config).unwrap();
        let last = vip(32765).unwrap();
        assert_eq!(vip(0), Some(Ipv4Addr::new(198, 18, 128, 1)));
        assert_eq!(last, Ipv4Addr::new(198, 18, 255, 254));
        assert_eq!(vip(32766), None);
        for v in [vip(0).unwrap(), vip(9_999).unwrap(), last] {
            assert!(SERVICE_CIDR.contains(v) && !POD_SUPERNET.contains(v));
            assert!(plan.zones.iter().all(|z| !z.subnet.contains(v) && !z.pod_block.contains(v)), "{v}");
            assert!(plan.nodes.iter().all(|n| !n.pod_cidr.contains(v) && n.underlay_ip != v));
        }
        // The underlay supernet holds the range, but the zones only use its lower half.
        assert!(UNDERLAY_SUPERNET.contains(last));
        assert!(plan.zones.iter().all(|z| !SERVICE_CIDR.contains(z.gateway)));
    }

    #[test]
    fn a_name_keeps_its_vip_and_new_names_take_the_next() {
        let mut s = LabServices::new(DataplaneKind::Nftables);
        let a = s.vip_for("a").unwrap();
        let b = s.vip_for("b").unwrap();
        assert_eq!((a, b), (vip(0).unwrap(), vip(1).unwrap()));
        assert_eq!(s.vip_for("a").unwrap(), a);
    }

    #[test]
    fn every_port_becomes_a_service_port_with_the_chosen_endpoints() {
        let svc = LabService {
            name: "echo".into(),
            vip: Ipv4Addr::new(198, 18, 128, 1),
            ports: vec![(AgentPort::Tcp, 7101), (AgentPort::Udp, 7102)],
            routing: RoutingMode::None,
            endpoints: vec![ep("srv-a-0", [198, 19, 0, 2], "a"), ep("srv-b-0", [198, 19, 16, 2], "b")],
        };
        let rules = rules_for_node("a-1", "a", std::slice::from_ref(&svc));
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].service.name, "zonebench/echo:tcp");
        assert_eq!(rules[1].service.name, "zonebench/echo:udp");
        assert_eq!(rules[1].service.protocol, crate::model::Protocol::Udp);
        assert_eq!(rules[1].endpoints[1], Endpoint { ip: Ipv4Addr::new(198, 19, 16, 2), port: 7102 });
        crate::dataplane::validate(&rules).unwrap();
    }

    fn service(routing: RoutingMode, per_zone: &[(&str, u8)]) -> (LabService, Vec<(String, String)>) {
        let mut endpoints = Vec::new();
        for (zi, (zone, n)) in per_zone.iter().enumerate() {
            for i in 0..*n {
                endpoints.push(ep(&format!("srv-{zone}-{i}"), [198, 19, 16 * zi as u8, 2 + i], zone));
            }
        }
        let nodes =
            per_zone.iter().flat_map(|(z, _)| [(format!("{z}-1"), z.to_string()), (format!("{z}-2"), z.to_string())]);
        let svc = LabService {
            name: "echo".into(),
            vip: Ipv4Addr::new(198, 18, 128, 1),
            ports: vec![(AgentPort::Tcp, 7101)],
            routing,
            endpoints,
        };
        (svc, nodes.collect())
    }

    fn zones_of(chosen: &[&ServiceEndpoint]) -> Vec<String> {
        chosen.iter().map(|e| e.zone.clone()).collect()
    }

    #[test]
    fn without_hints_every_zone_uses_every_endpoint() {
        let (mut svc, nodes) = service(RoutingMode::None, &[("a", 1), ("b", 1)]);
        let verdict = write_hints(&mut svc, &nodes).unwrap();
        assert!(!verdict.enabled);
        assert_eq!(endpoints_for_node("a-2", "a", &svc).len(), 2);
        assert_eq!(endpoints_for_node("c-2", "c", &svc).len(), 2);
    }

    #[test]
    fn auto_on_a_balanced_service_keeps_each_zone_to_its_own_endpoints() {
        let (mut svc, nodes) = service(RoutingMode::Auto, &[("a", 3), ("b", 3), ("c", 3)]);
        let verdict = write_hints(&mut svc, &nodes).unwrap();
        assert!(verdict.enabled, "{verdict:?}");
        assert_eq!(verdict.event.as_ref().map(|e| e.reason.as_str()), Some("TopologyAwareHintsEnabled"));
        for z in ["a", "b", "c"] {
            assert_eq!(zones_of(&endpoints_for_node(&format!("{z}-2"), z, &svc)), [z, z, z]);
        }
    }

    #[test]
    fn auto_on_a_skewed_service_is_refused_and_routes_cluster_wide() {
        let (mut svc, nodes) = service(RoutingMode::Auto, &[("a", 2), ("b", 2), ("c", 1)]);
        let verdict = write_hints(&mut svc, &nodes).unwrap();
        assert!(!verdict.enabled);
        let event = verdict.event.as_ref().unwrap();
        assert_eq!(event.reason, "TopologyAwareHintsDisabled");
        assert!(event.message.starts_with("Unable to allocate minimum required endpoints"), "{}", event.message);
        assert!(svc.endpoints.iter().all(|e| e.hints.is_none()));
        assert_eq!(endpoints_for_node("c-2", "c", &svc).len(), 5);
    }

    #[test]
    fn prefer_close_on_a_skewed_service_stays_in_zone() {
        let (mut svc, nodes) = service(RoutingMode::PreferClose, &[("a", 2), ("b", 2), ("c", 1)]);
        let verdict = write_hints(&mut svc, &nodes).unwrap();
        assert!(verdict.enabled);
        assert_eq!(zones_of(&endpoints_for_node("c-2", "c", &svc)), ["c"]);
        assert_eq!(zones_of(&endpoints_for_node("a-2", "a", &svc)), ["a", "a"]);
    }

    #[test]
    fn service_names_must_fit_chain_names() {
        check_name("svc-00042").unwrap();
        for bad in ["", "Echo", "a_b", "-a", "a-", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
