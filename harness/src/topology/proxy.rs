//! kube-proxy's choice of endpoints on one node: `CategorizeEndpoints` in
//! `pkg/proxy/topology.go` (1.33+, with `PreferSameNode`), ported as is.
//!
//! kube-proxy never reads the topology annotation or `trafficDistribution`: only the hints.
//! A node filters to the endpoints hinted for it only when every ready endpoint has a hint
//! (one endpoint without a zone hint turns filtering off for every node of the Service) and
//! at least one is hinted for the node (or its zone); otherwise it uses every ready endpoint.
//! Traffic policies and terminating endpoints follow upstream exactly:
//!
//! - `internalTrafficPolicy: Local`: ClusterIP traffic uses only this node's endpoints, and
//!   topology is ignored; with none, traffic is dropped (yet `has_any_endpoints` is true).
//! - `externalTrafficPolicy: Local` (with a node port, LB or external IP): external traffic
//!   uses this node's endpoints, internal traffic the topology-filtered cluster list.
//! - serving and terminating endpoints are used only when no endpoint is ready (cluster
//!   list, without topology) or no local endpoint is ready (local list).
//!
//! kube-proxy reads absent conditions differently from the controller: `ready` and
//! `serving` absent mean true, `terminating` absent means false.

use std::collections::HashSet;

use serde::Serialize;

use super::{Endpoint, Node, ServiceConfig, TrafficPolicy};

/// kube-proxy settings that are not in the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    /// The `PreferSameTrafficDistribution` feature gate in kube-proxy (GA in 1.35): node
    /// hints are read only with it.
    pub prefer_same_traffic_distribution: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions { prefer_same_traffic_distribution: true }
    }
}

/// The node kube-proxy runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    /// `None`: a node hosting no endpoint and named in no node hint, which is how a zone's
    /// nodes route when they host no endpoint of the Service.
    pub name: Option<String>,
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

impl ProxyNode {
    pub fn new(name: &str, zone: Option<&str>) -> ProxyNode {
        ProxyNode { name: Some(name.into()), zone: zone.map(String::from) }
    }

    /// A node of `zone` that hosts no endpoint.
    pub fn in_zone(zone: Option<&str>) -> ProxyNode {
        ProxyNode { name: None, zone: zone.map(String::from) }
    }
}

/// The topology mode kube-proxy picks from the hints for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyTopology {
    /// No filtering: every ready endpoint.
    None,
    PreferSameZone,
    PreferSameNode,
}

/// Why kube-proxy filters or not, for the cluster (ClusterIP) endpoint list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Decision {
    /// Filtered to the endpoints hinted for this node.
    FilteredToNode,
    /// Filtered to the endpoints hinted for this zone.
    FilteredToZone,
    /// This ready endpoint (index into the input) has no zone hint: no filtering anywhere.
    EndpointWithoutHint { endpoint: usize },
    /// The node has no (or an empty) zone label.
    NodeWithoutZone,
    /// No ready endpoint is hinted for this node's zone.
    NoHintForZone,
    /// No endpoint is ready: serving and terminating endpoints (if any), no topology.
    NoReadyEndpoints,
    /// The Service never uses the cluster list here (`internalTrafficPolicy: Local` and not
    /// externally accessible): topology is not consulted.
    LocalOnly,
}

/// The result of `CategorizeEndpoints`: indices into the endpoints given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Categorized {
    pub topology: ProxyTopology,
    pub decision: Decision,
    /// Set when node hints were present but not used, and why (for explanations).
    pub node_hints_ignored: Option<String>,
    /// Endpoints for Cluster policy traffic; `None` when the Service never uses them.
    pub cluster: Option<Vec<usize>>,
    /// Endpoints for Local policy traffic; `None` when the Service never uses them.
    pub local: Option<Vec<usize>>,
    /// Every endpoint reachable from this node (union of the two, by address).
    pub all: Vec<usize>,
    /// Some usable endpoint exists somewhere (traffic to a node without local ones is
    /// dropped rather than rejected).
    pub has_any_endpoints: bool,
    internal_local: bool,
}

impl Categorized {
    /// The endpoints ClusterIP traffic from this node goes to.
    pub fn internal(&self) -> &[usize] {
        let l = if self.internal_local { &self.local } else { &self.cluster };
        l.as_deref().unwrap_or(&[])
    }
}

fn ready(e: &Endpoint) -> bool {
    e.ready.unwrap_or(true)
}

fn serving_terminating(e: &Endpoint) -> bool {
    e.serving.unwrap_or(true) && e.terminating.unwrap_or(false)
}

fn zone_hints(e: &Endpoint) -> &[String] {
    e.hints.as_ref().map(|h| h.for_zones.as_slice()).unwrap_or(&[])
}

fn node_hints<'a>(e: &'a Endpoint, opts: &ProxyOptions) -> &'a [String] {
    // Without the gate the EndpointSlice cache does not read forNodes at all.
    if !opts.prefer_same_traffic_distribution {
        return &[];
    }
    e.hints.as_ref().map(|h| h.for_nodes.as_slice()).unwrap_or(&[])
}

/// `topologyModeFromHints`, with the reason.
fn topology_mode(eps: &[Endpoint], node: &ProxyNode, opts: &ProxyOptions) -> (ProxyTopology, Decision, Option<String>) {
    let name = node.name.as_deref();
    let zone = node.zone.as_deref().unwrap_or("");
    let readies: Vec<usize> = (0..eps.len()).filter(|&i| ready(&eps[i])).collect();
    let without_node_hint = readies.iter().copied().find(|&i| node_hints(&eps[i], opts).is_empty());
    let for_node = readies.iter().any(|&i| name.is_some_and(|n| node_hints(&eps[i], opts).iter().any(|h| h == n)));
    let without_zone_hint = readies.iter().copied().find(|&i| zone_hints(&eps[i]).is_empty());
    let for_zone = readies.iter().any(|&i| zone_hints(&eps[i]).iter().any(|h| h == zone));
    let mut ignored = None;
    if opts.prefer_same_traffic_distribution {
        let any_node_hints = readies.iter().any(|&i| !node_hints(&eps[i], opts).is_empty());
        match without_node_hint {
            None if for_node => return (ProxyTopology::PreferSameNode, Decision::FilteredToNode, None),
            None if !readies.is_empty() => ignored = Some("no ready endpoint is hinted for this node".to_string()),
            Some(i) if any_node_hints => {
                ignored = Some(format!("endpoint {} has no node hint", eps[i].address));
            }
            _ => {}
        }
    }
    if readies.is_empty() {
        return (ProxyTopology::None, Decision::NoReadyEndpoints, ignored);
    }
    match without_zone_hint {
        None if for_zone => (ProxyTopology::PreferSameZone, Decision::FilteredToZone, ignored),
        None if zone.is_empty() => (ProxyTopology::None, Decision::NodeWithoutZone, ignored),
        None => (ProxyTopology::None, Decision::NoHintForZone, ignored),
        Some(i) => (ProxyTopology::None, Decision::EndpointWithoutHint { endpoint: i }, ignored),
    }
}

/// `CategorizeEndpoints` for one node.
pub fn categorize(eps: &[Endpoint], svc: &ServiceConfig, node: &ProxyNode, opts: &ProxyOptions) -> Categorized {
    let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
    let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
    let uses_cluster = !internal_local || svc.externally_accessible;
    let uses_local = internal_local || (external_local && svc.externally_accessible);
    let is_local = |e: &Endpoint| node.name.is_some() && e.node == node.name;
    let zone = node.zone.as_deref().unwrap_or("");
    let name = node.name.as_deref();

    let mut out = Categorized {
        topology: ProxyTopology::None,
        decision: Decision::LocalOnly,
        node_hints_ignored: None,
        cluster: None,
        local: None,
        all: vec![],
        has_any_endpoints: false,
        internal_local,
    };
    if uses_cluster {
        let (mode, decision, ignored) = topology_mode(eps, node, opts);
        out.topology = mode;
        out.decision = decision;
        out.node_hints_ignored = ignored;
        let available = |e: &Endpoint| match mode {
            ProxyTopology::None => true,
            ProxyTopology::PreferSameNode => name.is_some_and(|n| node_hints(e, opts).iter().any(|h| h == n)),
            ProxyTopology::PreferSameZone => zone_hints(e).iter().any(|h| h == zone),
        };
        let mut cluster: Vec<usize> = (0..eps.len()).filter(|&i| ready(&eps[i]) && available(&eps[i])).collect();
        if cluster.is_empty() {
            // No ready endpoint anywhere (topology already fell back otherwise).
            cluster = (0..eps.len()).filter(|&i| serving_terminating(&eps[i])).collect();
        }
        out.has_any_endpoints = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if !uses_local {
        out.all = out.cluster.clone().unwrap_or_default();
        return out;
    }
    let (mut local_ready, mut local_st) = (false, false);
    for e in eps {
        if ready(e) {
            out.has_any_endpoints = true;
            local_ready |= is_local(e);
        } else if serving_terminating(e) {
            out.has_any_endpoints = true;
            local_st |= is_local(e);
        }
    }
    let mut use_st = false;
    let local: Vec<usize> = if local_ready {
        (0..eps.len()).filter(|&i| is_local(&eps[i]) && ready(&eps[i])).collect()
    } else if local_st {
        use_st = true;
        (0..eps.len()).filter(|&i| is_local(&eps[i]) && serving_terminating(&eps[i])).collect()
    } else {
        vec![]
    };
    out.local = Some(local.clone());
    let Some(cluster) = out.cluster.clone() else {
        out.all = local;
        return out;
    };
    if out.topology == ProxyTopology::None && !use_st {
        // Every ready endpoint is in the cluster list, so it holds the local ones too.
        out.all = cluster;
        return out;
    }
    // Merged by address, as kube-proxy keys endpoints by "ip:port".
    let mut seen = HashSet::new();
    let mut all: Vec<usize> =
        cluster.into_iter().chain(local).filter(|&i| seen.insert(eps[i].address.clone())).collect();
    all.sort_unstable();
    out.all = all;
    out
}

/// Routing for a node of each zone that hosts no endpoint (`None` = a node without a zone
/// label). With `PreferSameNode` hints, nodes hosting endpoints differ: see
/// [`routing_by_node`].
pub fn routing_by_zone(
    eps: &[Endpoint],
    svc: &ServiceConfig,
    zones: &[Option<String>],
    opts: &ProxyOptions,
) -> Vec<(Option<String>, Categorized)> {
    zones.iter().map(|z| (z.clone(), categorize(eps, svc, &ProxyNode::in_zone(z.as_deref()), opts))).collect()
}

/// Routing on each of these nodes.
pub fn routing_by_node(
    eps: &[Endpoint],
    svc: &ServiceConfig,
    nodes: &[Node],
    opts: &ProxyOptions,
) -> Vec<(String, Categorized)> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), categorize(eps, svc, &ProxyNode::new(&n.name, n.zone.as_deref()), opts)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Hints;

    fn ep(addr: &str, node: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
        Endpoint {
            address: addr.into(),
            node: Some(node.into()),
            zone: zones.first().map(|z| z.to_string()),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            hints: Some(Hints {
                for_zones: zones.iter().map(|z| z.to_string()).collect(),
                for_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            }),
        }
    }

    fn addrs(eps: &[Endpoint], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| eps[i].address.clone()).collect()
    }

    fn same_node_eps() -> Vec<Endpoint> {
        vec![
            ep("10.0.0.1", "n1", &["a"], &["n1"]),
            ep("10.0.0.2", "n2", &["a"], &["n2"]),
            ep("10.0.0.3", "n3", &["b"], &["n3"]),
        ]
    }

    #[test]
    fn prefer_same_node_filters_to_the_nodes_own_endpoints() {
        let eps = same_node_eps();
        let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::new("n1", Some("a")), &ProxyOptions::default());
        assert_eq!(c.topology, ProxyTopology::PreferSameNode);
        assert_eq!(c.decision, Decision::FilteredToNode);
        assert_eq!(addrs(&eps, c.internal()), ["10.0.0.1"]);
    }

    #[test]
    fn a_node_without_its_own_endpoint_falls_back_to_its_zone() {
        let eps = same_node_eps();
        let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::new("n9", Some("a")), &ProxyOptions::default());
        assert_eq!(c.topology, ProxyTopology::PreferSameZone);
        assert_eq!(addrs(&eps, c.internal()), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.node_hints_ignored.as_deref(), Some("no ready endpoint is hinted for this node"));
    }

    #[test]
    fn one_endpoint_without_a_node_hint_turns_node_filtering_off_but_not_zone_filtering() {
        let mut eps = same_node_eps();
        eps[2].hints.as_mut().unwrap().for_nodes.clear();
        let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::new("n1", Some("a")), &ProxyOptions::default());
        assert_eq!(c.topology, ProxyTopology::PreferSameZone);
        assert_eq!(addrs(&eps, c.internal()), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.node_hints_ignored.as_deref(), Some("endpoint 10.0.0.3 has no node hint"));
    }

    #[test]
    fn without_the_gate_node_hints_are_not_read() {
        let eps = same_node_eps();
        let opts = ProxyOptions { prefer_same_traffic_distribution: false };
        let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::new("n1", Some("a")), &opts);
        assert_eq!(c.topology, ProxyTopology::PreferSameZone);
        assert_eq!(c.node_hints_ignored, None);
    }

    #[test]
    fn a_ready_endpoint_with_absent_ready_and_no_hint_disables_filtering_everywhere() {
        let mut eps = same_node_eps();
        eps.push(Endpoint { address: "10.0.0.4".into(), ready: None, ..Default::default() });
        for z in ["a", "b"] {
            let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::in_zone(Some(z)), &ProxyOptions::default());
            assert_eq!(c.decision, Decision::EndpointWithoutHint { endpoint: 3 });
            assert_eq!(c.internal().len(), 4);
        }
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
        let mut eps = same_node_eps();
        for e in &mut eps {
            e.ready = Some(false);
            e.terminating = Some(true);
        }
        eps[1].serving = Some(false);
        let c = categorize(&eps, &ServiceConfig::default(), &ProxyNode::new("n1", Some("a")), &ProxyOptions::default());
        assert_eq!(c.decision, Decision::NoReadyEndpoints);
        assert_eq!(addrs(&eps, c.internal()), ["10.0.0.1", "10.0.0.3"]);
        assert!(c.has_any_endpoints);
    }

    #[test]
    fn local_policy_falls_back_to_local_serving_terminating_endpoints() {
        let mut eps = same_node_eps();
        eps[0].ready = Some(false);
        eps[0].terminating = Some(true);
        let svc = ServiceConfig { internal_traffic_policy: TrafficPolicy::Local, ..Default::default() };
        let c = categorize(&eps, &svc, &ProxyNode::new("n1", Some("a")), &ProxyOptions::default());
        assert_eq!(c.cluster, None);
        assert_eq!(c.decision, Decision::LocalOnly);
        assert_eq!(addrs(&eps, c.internal()), ["10.0.0.1"]);
    }

    #[test]
    fn routing_by_zone_reports_a_zone_without_hints_and_an_unlabelled_node() {
        let eps = same_node_eps();
        let zones = [Some("a".to_string()), Some("c".to_string()), None];
        let r = routing_by_zone(&eps, &ServiceConfig::default(), &zones, &ProxyOptions::default());
        assert_eq!(r[0].1.decision, Decision::FilteredToZone);
        assert_eq!(r[1].1.decision, Decision::NoHintForZone);
        assert_eq!(r[1].1.internal().len(), 3);
        assert_eq!(r[2].1.decision, Decision::NodeWithoutZone);
        let nodes = [crate::topology::Node::new("n3", "b", crate::topology::Cpu::from_cores(1))];
        let by_node = routing_by_node(&eps, &ServiceConfig::default(), &nodes, &ProxyOptions::default());
        assert_eq!(addrs(&eps, by_node[0].1.internal()), ["10.0.0.3"]);
    }
}
