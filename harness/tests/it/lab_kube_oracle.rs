//! The real components as the oracles of the pure ports (issue 14, part 1): the real
//! EndpointSlice controller for the hints doctor, the real kube-proxy for `topology::proxy`.
//!
//! One real control plane (etcd, kube-apiserver, kube-controller-manager from
//! `scripts/kube-binaries.sh`, in a network namespace of the test's own) is given
//! [`TOPOLOGIES`] generated topologies from a fixed seed, in batches that share their Nodes:
//! 2–5 zones, nodes of varied CPU (sometimes equal, for Go's map-order ties), now and then
//! an unready node, a control-plane node or a node without a zone label; 0–7 endpoints per
//! zone, some unready and some terminating (now and then none ready); and every mode: none
//! (and annotation values that do not count), the `topology-mode` / `topology-aware-hints`
//! annotations, `trafficDistribution` PreferClose, PreferSameZone and PreferSameNode. Each
//! topology is API objects only: Nodes (zone label, allocatable CPU, Ready condition), pods
//! bound with `spec.nodeName` that get a status and no process (a pod IP, Ready or not,
//! Running; terminating = deleted while a finalizer holds it), and a selector Service
//! created last, so the controller's sync that writes the slice sees every pod.
//!
//! For each topology the test reads the objects back as `zonebench hints -n NS SERVICE`
//! does, runs the doctor on them and checks that the hints the controller wrote are one of
//! the outcomes the doctor predicts (exactly: moved endpoints by receiving zone and count),
//! that the event it predicts was recorded on the Service, and that the live comparison's
//! verdict agrees; every tenth topology also goes through the real `zonebench hints` binary.
//! A mismatch is a bug in the doctor (fixed there, and kept as a case in its table); the
//! test then re-syncs that Service from scratch (deleting its slice) and reports both, so a
//! failure says whether the fresh sync disagrees too.
//!
//! Three [`OBSERVERS`] run the real kube-proxy (iptables and nftables mode) on nodes of
//! zones a, b and x; for every Service of a batch, the endpoints each one programs for the
//! ClusterIP (read from its rules) must be those `topology::proxy::categorize` chooses for
//! that node from the slices as written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nix::sched::CloneFlags;
use serde_json::{json, Value};

use zonebench::platform::kube::{client, services, Cluster as KubeCluster, ClusterSource};
use zonebench::platform::lab::kubernetes::kube_proxy::{KubeProxy, KubeProxySpec, ProxyMode};
use zonebench::platform::process::Spawner;
use zonebench::topology::doctor::{self, Analysis, Settings};
use zonebench::topology::hints::{EndpointRef, Reconciliation};
use zonebench::topology::live::{self, gate_default, minor_version, LiveContext, RecordedEvent};
use zonebench::topology::proxy::{self, Decision, ProxyNode, ProxyOptions};
use zonebench::topology::{
    Endpoint, Hints, RoutingMode, TOPOLOGY_AWARE_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION, ZONE_LABEL,
};

use crate::lab_kube_control_plane::{cluster, Cluster, Netns};
use crate::support::{kube_lab_lock, lab_lock};

/// How many topologies run (the issue asks for at least 200).
const TOPOLOGIES: usize = 400;
/// Topologies per batch of Nodes, each in a namespace of its own: one per mode, and more
/// of Auto, whose arithmetic has the most to get wrong.
const PER_BATCH: usize = MODES.len();
/// The generator's seed: the same topologies on every run.
const SEED: u64 = 0x0014_0AC1_E5EE_D001;
/// Allocatable CPUs a node may have, in millicores (odd ones make ratios that are not
/// round in f64).
const CPUS: &[u64] = &[250, 500, 1000, 1500, 2000, 3000, 3920, 4000, 7910, 8000, 16000];
/// How long the controller may take to write a Service's slice as the pods say.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// The head start a batch's Node events get over its Services (see the batch loop).
const NODES_SETTLE: Duration = Duration::from_millis(300);
/// How long a predicted event may take to be recorded.
const EVENT_WITHIN: Duration = Duration::from_secs(10);
/// The label that ties a topology's pods to its Service.
const TOPOLOGY_LABEL: &str = "oracle.zonebench.dev/topology";
/// Holds a deleted pod in Terminating (no kubelet will ever finish it).
const FINALIZER: &str = "oracle.zonebench.dev/hold";

/// A node that stays for the whole run, with a real kube-proxy in a namespace of its own:
/// the endpoints it programs for each Service must be `topology::proxy`'s choice. Labelled
/// control-plane, so the controller's CPU ratios leave it out; now and then a pod is bound
/// to it (a local endpoint, and node hints naming it with PreferSameNode).
struct Observer {
    name: &'static str,
    zone: &'static str,
    mode: ProxyMode,
    ip: Ipv4Addr,
}

const OBSERVERS: &[Observer] = &[
    Observer { name: "observer-a", zone: "zone-a", mode: ProxyMode::Iptables, ip: Ipv4Addr::new(198, 18, 250, 21) },
    Observer { name: "observer-b", zone: "zone-b", mode: ProxyMode::Nftables, ip: Ipv4Addr::new(198, 18, 250, 22) },
    Observer { name: "observer-x", zone: "zone-x", mode: ProxyMode::Nftables, ip: Ipv4Addr::new(198, 18, 250, 23) },
];
/// How long an observer's kube-proxy may take to program a batch's Services (its minimum
/// sync period is 1 s; a loaded CI machine has needed more than 20 s).
const PROGRAM_WITHIN: Duration = Duration::from_secs(60);

/// splitmix64: small, deterministic, good enough to spread topologies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.range(0, from.len() - 1)]
    }
}

#[derive(Debug, Clone)]
struct GenNode {
    name: String,
    zone: Option<String>,
    cpu_millis: u64,
    ready: bool,
    control_plane: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodState {
    Ready,
    Unready,
    /// Deleted while the finalizer holds it; `serving` is its Ready condition.
    Terminating {
        serving: bool,
    },
}

#[derive(Debug, Clone)]
struct GenPod {
    name: String,
    /// The node it is bound to: one of the batch's, or an observer.
    node: String,
    zone: Option<String>,
    ip: String,
    state: PodState,
}

#[derive(Debug, Clone)]
struct GenTopology {
    index: usize,
    namespace: String,
    service: String,
    /// The mode it was generated for: none, Auto, PreferClose, PreferSameZone, PreferSameNode.
    mode: RoutingMode,
    annotations: BTreeMap<String, String>,
    traffic_distribution: Option<String>,
    pods: Vec<GenPod>,
}

#[derive(Debug, Clone)]
struct Batch {
    index: usize,
    nodes: Vec<GenNode>,
    topologies: Vec<GenTopology>,
}

const MODES: [RoutingMode; 8] = [
    RoutingMode::None,
    RoutingMode::Auto,
    RoutingMode::Auto,
    RoutingMode::Auto,
    RoutingMode::Auto,
    RoutingMode::PreferClose,
    RoutingMode::PreferSameZone,
    RoutingMode::PreferSameNode,
];

fn namespace(slot: usize) -> String {
    format!("oracle-{slot}")
}

/// One batch: its nodes, and one topology per mode on them.
fn generate_batch(rng: &mut Rng, b: usize) -> Batch {
    // Fixed zone names, so the observers' zones are in every batch (a and b) or in some (x).
    let zones: Vec<String> = (0..rng.range(2, 5)).map(|z| format!("zone-{}", (b'a' + z as u8) as char)).collect();
    let uniform = rng.chance(0.5);
    let base_cpu = rng.pick(CPUS);
    let base_nodes = rng.range(1, 3);
    let mut nodes = Vec::new();
    let node = |name: String, zone: Option<&str>, cpu_millis, ready, control_plane| GenNode {
        name,
        zone: zone.map(String::from),
        cpu_millis,
        ready,
        control_plane,
    };
    for z in &zones {
        let n = if uniform { base_nodes } else { rng.range(1, 3) };
        for k in 0..n {
            let cpu = if uniform { base_cpu } else { rng.pick(CPUS) };
            nodes.push(node(format!("b{b}-{z}-{k}"), Some(z), cpu, true, false));
        }
    }
    // The nodes the controller leaves out of its ratios, in a zone of their own or not.
    let extra_zone = "zone-x".to_string();
    if rng.chance(0.15) {
        let z = if rng.chance(0.5) { extra_zone.clone() } else { rng.pick(&zones.iter().collect::<Vec<_>>()).clone() };
        nodes.push(node(format!("b{b}-{z}-down"), Some(&z), rng.pick(CPUS), false, false));
    }
    if rng.chance(0.15) {
        let z = if rng.chance(0.5) { extra_zone.clone() } else { rng.pick(&zones.iter().collect::<Vec<_>>()).clone() };
        nodes.push(node(format!("b{b}-{z}-cp"), Some(&z), rng.pick(CPUS), true, true));
    }
    // Without a zone label: a Ready worker takes every Auto Service's hints away
    // (InsufficientNodeInfo); an excluded one only gives its endpoints no zone.
    match rng.next() % 100 {
        0..=4 => nodes.push(node(format!("b{b}-nozone"), None, rng.pick(CPUS), true, false)),
        5..=9 => nodes.push(node(format!("b{b}-nozone-cp"), None, rng.pick(CPUS), true, true)),
        10..=12 => nodes.push(node(format!("b{b}-nozone-down"), None, rng.pick(CPUS), false, false)),
        _ => {}
    }
    // Every zone label the nodes carry (and the nodes without one), each with its nodes.
    let mut groups: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for n in &nodes {
        groups.entry(n.zone.clone()).or_default().push(n.name.clone());
    }
    let topologies = MODES
        .iter()
        .enumerate()
        .map(|(slot, &mode)| {
            let index = b * PER_BATCH + slot;
            let mut pods = Vec::new();
            for (zone, members) in &groups {
                let k = if zone.is_none() { rng.range(0, 2) } else { rng.range(0, 7) };
                for _ in 0..k {
                    let r = rng.next() % 100;
                    let state = match r {
                        0..=71 => PodState::Ready,
                        72..=85 => PodState::Unready,
                        _ => PodState::Terminating { serving: r.is_multiple_of(2) },
                    };
                    let i = pods.len();
                    // Now and then on the observer of the zone: its kube-proxy then has a
                    // local endpoint (and, with PreferSameNode, node hints naming it).
                    let observer = OBSERVERS.iter().find(|o| zone.as_deref() == Some(o.zone));
                    let node = match observer {
                        Some(o) if rng.chance(0.12) => o.name.to_string(),
                        _ => members[rng.range(0, members.len() - 1)].clone(),
                    };
                    pods.push(GenPod {
                        name: format!("t{index}-{i}"),
                        node,
                        zone: zone.clone(),
                        ip: format!("10.{}.{}.{}", 100 + index / 250, index % 250, i + 1),
                        state,
                    });
                }
            }
            // Now and then no pod is ready: kube-proxy falls back to the serving terminating ones.
            if rng.chance(0.08) {
                for p in &mut pods {
                    if p.state == PodState::Ready {
                        p.state =
                            if rng.chance(0.7) { PodState::Terminating { serving: true } } else { PodState::Unready };
                    }
                }
            }
            let (annotations, traffic_distribution) = mode_objects(rng, mode);
            GenTopology {
                index,
                namespace: namespace(slot),
                service: format!("svc-t{index}"),
                mode,
                annotations,
                traffic_distribution,
                pods,
            }
        })
        .collect();
    Batch { index: b, nodes, topologies }
}

/// The annotations and `trafficDistribution` that ask for `mode`, in the spellings users
/// write (and a few that do not count, for the none mode).
fn mode_objects(rng: &mut Rng, mode: RoutingMode) -> (BTreeMap<String, String>, Option<String>) {
    let ann = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    let r = rng.next() % 100;
    match mode {
        RoutingMode::None => match r {
            0..=69 => (BTreeMap::new(), None),
            70..=84 => (ann(TOPOLOGY_MODE_ANNOTATION, "Disabled"), None),
            _ => (ann(TOPOLOGY_MODE_ANNOTATION, "AUTO"), None),
        },
        RoutingMode::Auto => match r {
            0..=59 => (ann(TOPOLOGY_MODE_ANNOTATION, "Auto"), None),
            60..=79 => (ann(TOPOLOGY_MODE_ANNOTATION, "auto"), None),
            80..=89 => (ann(TOPOLOGY_AWARE_HINTS_ANNOTATION, "Auto"), None),
            _ => (ann(TOPOLOGY_MODE_ANNOTATION, "Auto"), Some("PreferClose".into())),
        },
        RoutingMode::PreferClose => match r {
            0..=84 => (BTreeMap::new(), Some("PreferClose".into())),
            _ => (ann(TOPOLOGY_AWARE_HINTS_ANNOTATION, "Disabled"), Some("PreferClose".into())),
        },
        RoutingMode::PreferSameZone => (BTreeMap::new(), Some("PreferSameZone".into())),
        RoutingMode::PreferSameNode => (BTreeMap::new(), Some("PreferSameNode".into())),
    }
}

/// The whole run's batches, from [`SEED`].
fn generate() -> Vec<Batch> {
    let mut rng = Rng(SEED);
    (0..TOPOLOGIES.div_ceil(PER_BATCH)).map(|b| generate_batch(&mut rng, b)).collect()
}

fn describe_batch(b: &Batch) -> String {
    let mut s = format!("batch {} nodes:", b.index);
    for n in &b.nodes {
        let _ = write!(
            s,
            " {}(zone {}, {}m{}{})",
            n.name,
            n.zone.as_deref().unwrap_or("-"),
            n.cpu_millis,
            if n.ready { "" } else { ", NotReady" },
            if n.control_plane { ", control-plane" } else { "" }
        );
    }
    s
}

fn describe_topology(b: &Batch, t: &GenTopology) -> String {
    let mut s = format!(
        "topology {} ({}/{}, mode {:?}, annotations {:?}, trafficDistribution {:?})\n  {}\n  pods:",
        t.index,
        t.namespace,
        t.service,
        t.mode,
        t.annotations,
        t.traffic_distribution,
        describe_batch(b)
    );
    for p in &t.pods {
        let _ = write!(s, " {}@{}={:?}", p.ip, p.node, p.state);
    }
    s
}

/// What the controller should write for a pod: address → (ready, serving, terminating,
/// node, zone).
type EndpointKey = (bool, bool, bool, String, Option<String>);

fn expected_endpoints(t: &GenTopology) -> BTreeMap<String, EndpointKey> {
    t.pods
        .iter()
        .map(|p| {
            let (ready, serving, terminating) = match p.state {
                PodState::Ready => (true, true, false),
                PodState::Unready => (false, false, false),
                PodState::Terminating { serving } => (false, serving, true),
            };
            (p.ip.clone(), (ready, serving, terminating, p.node.clone(), p.zone.clone()))
        })
        .collect()
}

fn written_endpoints(slices: &[EndpointSlice]) -> BTreeMap<String, EndpointKey> {
    let mut out = BTreeMap::new();
    for s in slices {
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            out.insert(
                e.addresses.first().cloned().unwrap_or_default(),
                (
                    c.ready.unwrap_or(false),
                    c.serving.unwrap_or(false),
                    c.terminating.unwrap_or(false),
                    e.node_name.clone().unwrap_or_default(),
                    e.zone.clone(),
                ),
            );
        }
    }
    out
}

fn node_object(n: &GenNode) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), n.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    if let Some(z) = &n.zone {
        labels.insert(ZONE_LABEL.into(), z.clone());
    }
    if n.control_plane {
        labels.insert(zonebench::topology::CONTROL_PLANE_LABEL.into(), String::new());
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": labels}}))
        .unwrap()
}

fn node_status(n: &GenNode, i: usize) -> Value {
    let resources = json!({"cpu": format!("{}m", n.cpu_millis), "memory": "8Gi", "pods": "110"});
    json!({"status": {
        "addresses": [{"type": "InternalIP", "address": format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250)}],
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready",
            "status": if n.ready { "True" } else { "False" },
            "reason": "ZonebenchOracle",
            "message": "an API object only: no kubelet",
        }],
    }})
}

fn pod_object(t: &GenTopology, p: &GenPod) -> Pod {
    let finalizers: Vec<&str> = if matches!(p.state, PodState::Terminating { .. }) { vec![FINALIZER] } else { vec![] };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": t.namespace, "labels": {TOPOLOGY_LABEL: format!("t{}", t.index)}, "finalizers": finalizers},
        "spec": {
            "nodeName": p.node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "zonebench.invalid/none", "ports": [{"containerPort": 8080, "name": "tcp"}]}],
        },
    }))
    .unwrap()
}

fn pod_status(p: &GenPod) -> Value {
    let ready = matches!(p.state, PodState::Ready | PodState::Terminating { serving: true });
    json!({"status": {
        "phase": "Running",
        "podIP": p.ip,
        "podIPs": [{"ip": p.ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }})
}

fn service_object(t: &GenTopology) -> Service {
    let mut spec = json!({
        "selector": {TOPOLOGY_LABEL: format!("t{}", t.index)},
        "ports": [{"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    });
    if let Some(td) = &t.traffic_distribution {
        spec["trafficDistribution"] = json!(td);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": t.service, "namespace": t.namespace, "annotations": t.annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn observer_node(o: &Observer) -> (Node, Value) {
    let n =
        GenNode { name: o.name.into(), zone: Some(o.zone.into()), cpu_millis: 2000, ready: true, control_plane: true };
    let mut status = node_status(&n, 0);
    status["status"]["addresses"][0]["address"] = json!(o.ip.to_string());
    (node_object(&n), status)
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// The observer's namespace, joined to the control plane's by a veth (as the kube-proxy
/// test's node is).
fn observer_netns(cp: &str, i: usize, o: &Observer) -> Netns {
    let name = format!("{cp}-{}", o.name);
    ip(&["netns", "add", &name]);
    let ns = Netns(name.clone());
    let (near, far) = (format!("ob{i}0"), format!("ob{i}1"));
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    ip(&["-n", cp, "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &name]);
    ip(&["-n", cp, "link", "set", &near, "up"]);
    ip(&["-n", cp, "route", "add", &format!("{}/32", o.ip), "dev", &near]);
    ip(&["-n", &name, "addr", "add", &format!("{}/32", o.ip), "dev", &far]);
    ip(&["-n", &name, "link", "set", &far, "up"]);
    ip(&["-n", &name, "route", "add", "198.18.250.10/32", "dev", &far]);
    ns
}

/// The endpoint addresses each Service's ClusterIP goes to in a node's ruleset, by
/// `namespace/name`: kube-proxy's KUBE-SVC chains (iptables-save, their comments name the
/// endpoint) or its `service-…` chains (nftables, whose vmap names the endpoint chains).
fn programmed(mode: ProxyMode, rules: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    match mode {
        ProxyMode::Iptables => {
            // -A KUBE-SVC-X -m comment --comment "ns/svc:tcp -> 10.1.2.3:8080" ... -j KUBE-SEP-Y
            for line in rules.lines().filter(|l| l.starts_with("-A KUBE-SVC-")) {
                let Some(comment) = line.split("--comment \"").nth(1).and_then(|c| c.split('"').next()) else {
                    continue;
                };
                let Some((svc, ep)) = comment.split_once(" -> ") else { continue };
                let svc = svc.rsplit_once(':').map_or(svc, |(s, _)| s);
                let ip = ep.rsplit_once(':').map_or(ep, |(a, _)| a);
                out.entry(svc.to_string()).or_default().insert(ip.to_string());
            }
        }
        ProxyMode::Nftables => {
            // chain service-HASH-ns/svc/port/proto { … vmap { 0 : goto endpoint-HASH-ns/svc/port/proto__10.1.2.3/8080 … } }
            let mut current: Option<String> = None;
            for line in rules.lines().map(str::trim) {
                if let Some(name) = line.strip_prefix("chain ").and_then(|l| l.strip_suffix(" {")) {
                    current = name.strip_prefix("service-").and_then(|n| n.split_once('-')).and_then(|(_, rest)| {
                        let parts: Vec<&str> = rest.split('/').collect();
                        (parts.len() == 4).then(|| format!("{}/{}", parts[0], parts[1]))
                    });
                    continue;
                }
                if line == "}" {
                    current = None;
                    continue;
                }
                let Some(svc) = &current else { continue };
                let set = out.entry(svc.clone()).or_default();
                // Endpoint chains: `goto endpoint-HASH-ns/svc/port/proto__10.1.2.3/8080`.
                for piece in line.split("__").skip(1) {
                    if let Some((ip, _)) = piece.split_once('/') {
                        set.insert(ip.to_string());
                    }
                }
                // Or straight to the address (1.36): `dnat ip to numgen random mod 2 map { 0 : 10.1.2.3 . 8080, … }`.
                if let Some(map) = line.split_once("map {").map(|(_, m)| m.trim_end_matches('}')) {
                    for element in map.split(',') {
                        if let Some(ip) = element.split_once(" : ").and_then(|(_, v)| v.split(" . ").next()) {
                            set.insert(ip.trim().to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The lines of `rules` about Service `svc` (`namespace/name`): those naming it, and the
/// nftables chains named after it.
fn rules_of(rules: &str, svc: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in rules.lines() {
        if l.trim_start().starts_with("chain ") {
            inside = l.contains(svc);
        }
        if inside || l.contains(svc) {
            out.push(l.to_string());
        }
        if l.trim() == "}" {
            inside = false;
        }
    }
    out
}

/// The observer's ruleset as `programmed` reads it.
async fn ruleset(netns: &str, mode: ProxyMode) -> anyhow::Result<String> {
    let argv: &[&str] = match mode {
        ProxyMode::Iptables => &["iptables-save", "-t", "nat"],
        ProxyMode::Nftables => &["nft", "list", "table", "ip", "kube-proxy"],
    };
    let out = tokio::process::Command::new("ip").args(["netns", "exec", netns]).args(argv).output().await?;
    // nftables: no table before kube-proxy's first sync.
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `None` for absent or empty hints, zones and nodes sorted.
fn norm(h: &Option<Hints>) -> Option<Hints> {
    let mut h = h.clone()?;
    if h.for_zones.is_empty() && h.for_nodes.is_empty() {
        return None;
    }
    h.for_zones.sort();
    h.for_nodes.sort();
    Some(h)
}

/// Whether `actual` (hints per `[slice][endpoint]`) is exactly one of `rec`'s outcomes: the
/// endpoints an outcome does not move have its hints; the moved ones one receiving zone
/// each, every receiving zone as many times as it receives (Go picks receivers in map
/// order, so any such assignment is possible).
fn is_outcome(rec: &Reconciliation, actual: &[Vec<Option<Hints>>]) -> bool {
    rec.outcomes.iter().any(|o| {
        let mut received: BTreeMap<String, usize> = BTreeMap::new();
        for (si, row) in actual.iter().enumerate() {
            for (ei, a) in row.iter().enumerate() {
                let a = norm(a);
                if o.moved.contains(&EndpointRef { slice: si, endpoint: ei }) {
                    match a {
                        Some(h) if h.for_nodes.is_empty() && h.for_zones.len() == 1 => {
                            *received.entry(h.for_zones[0].clone()).or_insert(0) += 1;
                        }
                        _ => return false,
                    }
                } else if o.hints.get(si).and_then(|r| r.get(ei)).map(norm) != Some(a) {
                    return false;
                }
            }
        }
        received == o.receiving
    })
}

fn fmt_hints(h: &Option<Hints>) -> String {
    match norm(h) {
        None => "-".into(),
        Some(h) if h.for_nodes.is_empty() => h.for_zones.join(","),
        Some(h) => format!("{}+node:{}", h.for_zones.join(","), h.for_nodes.join(",")),
    }
}

/// The slices as written, beside the doctor's canonical outcome and what it allows.
fn describe_mismatch(a: &Analysis) -> String {
    let rec = &a.reconciliation;
    let mut s = format!(
        "  doctor: mode {:?}, hints enabled {}, event {:?}, {} outcome(s), allocations {:?}\n",
        rec.mode,
        rec.hints_enabled(),
        rec.event,
        rec.outcomes.len(),
        rec.allocations
    );
    for (i, o) in rec.outcomes.iter().enumerate() {
        let _ = writeln!(s, "  outcome {i}: counts {:?}, giving {:?}, receiving {:?}", o.counts, o.giving, o.receiving);
    }
    for (si, sl) in rec.input.iter().enumerate() {
        for (ei, e) in sl.endpoints.iter().enumerate() {
            let r = EndpointRef { slice: si, endpoint: ei };
            let possible: Vec<String> = rec.possible_hints(r).iter().map(fmt_hints).collect();
            let _ = writeln!(
                s,
                "    {} {} zone {} node {} ready {:?} serving {:?} terminating {:?}: written {} predicted {} (possible {})",
                sl.name,
                e.address,
                e.zone.as_deref().unwrap_or("-"),
                e.node.as_deref().unwrap_or("-"),
                e.ready,
                e.serving,
                e.terminating,
                fmt_hints(&e.hints),
                fmt_hints(&rec.outcomes[0].hints[si][ei]),
                possible.join(" | ")
            );
        }
    }
    s
}

/// What one topology showed.
#[derive(Debug, Default)]
struct Tally {
    topologies: usize,
    endpoints: usize,
    by_mode: BTreeMap<String, usize>,
    auto_enabled: usize,
    auto_refused: BTreeMap<String, usize>,
    with_moves: usize,
    not_deterministic: usize,
    same_node_hints: usize,
    same_zone_hints: usize,
    events_checked: usize,
    binary_runs: usize,
    mismatches: Vec<String>,
    /// kube-proxy: Services checked on an observer, by how `topology::proxy` decided.
    proxy_checks: BTreeMap<String, usize>,
    /// … of which the observer had a local endpoint.
    proxy_local: usize,
    proxy_mismatches: Vec<String>,
    /// Slices the controller rewrote after their check, with other hints (each checked
    /// again): with an endpoint in a zone outside the CPU ratios, every sync of an Auto
    /// Service rewrites its slice, and ties then fall another way.
    rewritten: usize,
}

/// The client, and what the checks need besides it.
struct Oracle {
    kube: KubeCluster,
    admin: PathBuf,
    gate: bool,
    bin: PathBuf,
    /// The observers' network namespaces, in [`OBSERVERS`]' order.
    observer_netns: Vec<String>,
}

impl Oracle {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.kube.client.clone())
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    fn slices(&self, ns: &str) -> Api<EndpointSlice> {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    async fn apply_nodes(&self, b: &Batch) -> anyhow::Result<()> {
        try_join_all(b.nodes.iter().enumerate().map(|(i, n)| async move {
            self.nodes().create(&PostParams::default(), &node_object(n)).await?;
            self.nodes().patch_status(&n.name, &PatchParams::default(), &Patch::Merge(node_status(n, i))).await?;
            anyhow::Ok(())
        }))
        .await?;
        Ok(())
    }

    /// The pods with their status, the terminating ones deleted, then the Service.
    async fn apply_topology(&self, t: &GenTopology) -> anyhow::Result<()> {
        let pods = self.pods(&t.namespace);
        try_join_all(t.pods.iter().map(|p| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod_object(t, p)).await?;
                pods.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(pod_status(p))).await?;
                if matches!(p.state, PodState::Terminating { .. }) {
                    pods.delete(&p.name, &DeleteParams::default()).await?;
                }
                anyhow::Ok(())
            }
        }))
        .await?;
        self.services(&t.namespace).create(&PostParams::default(), &service_object(t)).await?;
        Ok(())
    }

    async fn service_slices(&self, t: &GenTopology) -> anyhow::Result<Vec<EndpointSlice>> {
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", t.service));
        Ok(self.slices(&t.namespace).list(&lp).await?.items)
    }

    /// Waits until the Service's slices hold exactly the pods' endpoints.
    async fn settle(&self, b: &Batch, t: &GenTopology) -> anyhow::Result<()> {
        let want = expected_endpoints(t);
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let slices = self.service_slices(t).await?;
            let got = written_endpoints(&slices);
            if !slices.is_empty() && got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the EndpointSlice controller did not write the slices of {}/{} within {SETTLE_WITHIN:?}: {} slices, endpoints {got:?}, want {want:?}\n{}",
                    t.namespace,
                    t.service,
                    slices.len(),
                    describe_topology(b, t)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The doctor on the objects as `zonebench hints -n` reads them, with the live comparison.
    async fn analyse(&self, t: &GenTopology) -> anyhow::Result<(Analysis, Vec<RecordedEvent>)> {
        let objects = services::read_for_hints(&self.kube, &t.namespace, &t.service).await?;
        let inputs = zonebench::live::to_inputs(&self.kube.describe(), &objects)?;
        let settings = Settings { address_type: None, prefer_same_traffic_distribution: self.gate, live: true };
        let mut analysis = doctor::analyse(&inputs, &settings)?;
        let events: Vec<RecordedEvent> = objects
            .events
            .map_err(|e| anyhow::anyhow!("reading the events of {}/{}: {e}", t.namespace, t.service))?
            .iter()
            .map(|e| RecordedEvent {
                event_type: e.type_.clone().unwrap_or_default(),
                reason: e.reason.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
                count: e.count,
                last_seen: None,
            })
            .collect();
        let ctx = LiveContext {
            cluster: self.kube.describe(),
            context: self.kube.context.clone(),
            server: self.kube.server.clone(),
            server_version: self.kube.version.clone(),
            namespace: t.namespace.clone(),
            events: events.clone(),
            events_error: None,
            gate_from_version: true,
        };
        live::compare(&mut analysis, &ctx);
        Ok((analysis, events))
    }

    /// Checks one topology; a mismatch is returned in words.
    async fn check(&self, b: &Batch, t: &GenTopology, tally: &mut Tally) -> anyhow::Result<(Option<String>, Analysis)> {
        let (a, mut events) = self.analyse(t).await?;
        let rec = &a.reconciliation;
        let actual: Vec<Vec<Option<Hints>>> =
            rec.input.iter().map(|s| s.endpoints.iter().map(|e| e.hints.clone()).collect()).collect();
        tally.topologies += 1;
        tally.endpoints += rec.input.iter().map(|s| s.endpoints.len()).sum::<usize>();
        *tally.by_mode.entry(format!("{:?}", rec.mode)).or_insert(0) += 1;
        if rec.mode == RoutingMode::Auto {
            if rec.hints_enabled() {
                tally.auto_enabled += 1;
            } else {
                // The event's message without its numbers and address type.
                let m = rec.event.as_ref().map_or("no event", |e| e.message.as_str());
                let key = m.split([',', '(']).next().unwrap_or(m).trim().to_string();
                *tally.auto_refused.entry(key).or_insert(0) += 1;
            }
            if rec.outcomes.iter().any(|o| !o.moved.is_empty()) {
                tally.with_moves += 1;
            }
        }
        if !rec.deterministic() {
            tally.not_deterministic += 1;
        }
        let written = rec.input.iter().flat_map(|s| &s.endpoints).filter_map(|e| e.hints.as_ref());
        for h in written {
            match t.mode {
                RoutingMode::PreferSameNode if !h.for_nodes.is_empty() => tally.same_node_hints += 1,
                RoutingMode::PreferSameZone if !h.for_zones.is_empty() => tally.same_zone_hints += 1,
                _ => {}
            }
        }

        let mut problems = Vec::new();
        if !is_outcome(rec, &actual) {
            problems.push("the hints the controller wrote are none of the doctor's outcomes".to_string());
        }
        let comparison = a.report.live.as_ref().expect("the live comparison");
        if !comparison.agree {
            problems.push(format!(
                "the live comparison says {} ({}), not agree",
                comparison.verdict.as_str(),
                comparison.summary
            ));
        }
        // The event the doctor predicts is recorded on the Service (asynchronously).
        if let Some(ev) = &rec.event {
            tally.events_checked += 1;
            let deadline = Instant::now() + EVENT_WITHIN;
            let seen = |events: &[RecordedEvent]| {
                events.iter().any(|e| {
                    e.event_type == ev.event_type.to_string() && e.reason == ev.reason && e.message == ev.message
                })
            };
            while !seen(&events) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                events = self.analyse(t).await?.1;
            }
            if !seen(&events) {
                problems.push(format!(
                    "the predicted event {} {} {:?} was not recorded within {EVENT_WITHIN:?}; recorded: {:?}",
                    ev.event_type, ev.reason, ev.message, events
                ));
            }
        } else if let Some(e) = events.first() {
            problems.push(format!("no event predicted, but the controller recorded {e:?}"));
        }
        // As a user would: the real binary, every tenth topology.
        if t.index.is_multiple_of(10) {
            tally.binary_runs += 1;
            let out = std::process::Command::new(&self.bin)
                .args(["hints", "-n", &t.namespace, &t.service, "-o", "json", "--kubeconfig"])
                .arg(&self.admin)
                .output()?;
            if !out.status.success() {
                problems.push(format!(
                    "zonebench hints -n {} {} exited {:?}: {}",
                    t.namespace,
                    t.service,
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            } else {
                let v: Value = serde_json::from_slice(&out.stdout)?;
                if v["live"]["agree"] != json!(true) {
                    problems.push(format!(
                        "zonebench hints -n {} {}: live.verdict {} ({})",
                        t.namespace, t.service, v["live"]["verdict"], v["live"]["summary"]
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok((None, a));
        }
        let m = format!("{}\n  {}\n{}", describe_topology(b, t), problems.join("\n  "), describe_mismatch(&a));
        Ok((Some(m), a))
    }

    /// Each observer's kube-proxy programs, for every Service of the batch, the endpoints
    /// `topology::proxy` chooses for that node from the slices as they are now. A slice the
    /// controller rewrote since its check (its hints can change: see [`Tally::rewritten`])
    /// is checked against the doctor again.
    async fn check_proxies(&self, b: &Batch, written: &mut [(GenTopology, Analysis)], tally: &mut Tally) {
        let opts = ProxyOptions { prefer_same_traffic_distribution: self.gate };
        let choice = |a: &Analysis, o: &Observer| {
            let eps: Vec<Endpoint> = a.reconciliation.input.iter().flat_map(|s| s.endpoints.iter().cloned()).collect();
            let c = proxy::categorize(&eps, &a.service, &ProxyNode::new(o.name, Some(o.zone)), &opts);
            let set: BTreeSet<String> = c.internal().iter().map(|&i| eps[i].address.clone()).collect();
            let decision = match &c.decision {
                Decision::EndpointWithoutHint { .. } => "endpoint-without-hint".to_string(),
                Decision::NoReadyEndpoints if !set.is_empty() => "serving-terminating".to_string(),
                d => serde_json::to_value(d).unwrap()["kind"].as_str().unwrap_or("?").to_string(),
            };
            let local = eps.iter().any(|e| e.node.as_deref() == Some(o.name));
            (set, decision, local)
        };
        let deadline = Instant::now() + PROGRAM_WITHIN;
        loop {
            for (t, a) in written.iter_mut() {
                let now =
                    self.service_slices(t).await.unwrap_or_else(|e| panic!("reading {}'s slices: {e:#}", t.service));
                let hints =
                    |eps: &mut dyn Iterator<Item = (String, Option<Hints>)>| -> BTreeMap<String, Option<Hints>> {
                        eps.map(|(addr, h)| (addr, norm(&h))).collect()
                    };
                let before = hints(
                    &mut a
                        .reconciliation
                        .input
                        .iter()
                        .flat_map(|s| &s.endpoints)
                        .map(|e| (e.address.clone(), e.hints.clone())),
                );
                let after = hints(&mut now.iter().flat_map(|s| &s.endpoints).map(|e| {
                    let h = e.hints.as_ref().map(|h| Hints {
                        for_zones: h.for_zones.iter().flatten().map(|z| z.name.clone()).collect(),
                        for_nodes: h.for_nodes.iter().flatten().map(|n| n.name.clone()).collect(),
                    });
                    (e.addresses.first().cloned().unwrap_or_default(), h)
                }));
                if before == after {
                    continue;
                }
                tally.rewritten += 1;
                let (again, _) = self.analyse(t).await.unwrap_or_else(|e| panic!("topology {}: {e:#}", t.index));
                let actual: Vec<Vec<Option<Hints>>> = again
                    .reconciliation
                    .input
                    .iter()
                    .map(|s| s.endpoints.iter().map(|e| e.hints.clone()).collect())
                    .collect();
                if !is_outcome(&again.reconciliation, &actual) {
                    let m = format!(
                        "{}\n  the controller rewrote the hints after the check, to none of the doctor's outcomes\n{}",
                        describe_topology(b, t),
                        describe_mismatch(&again)
                    );
                    eprintln!("MISMATCH {m}");
                    tally.mismatches.push(m);
                }
                *a = again;
            }
            let mut wrong = Vec::new();
            for (o, netns) in OBSERVERS.iter().zip(&self.observer_netns) {
                let rules = ruleset(netns, o.mode).await.unwrap_or_else(|e| panic!("reading {netns}'s rules: {e:#}"));
                let got = programmed(o.mode, &rules);
                for (t, a) in written.iter() {
                    let svc = format!("{}/{}", t.namespace, t.service);
                    let (want, decision, _) = choice(a, o);
                    let have = got.get(&svc).cloned().unwrap_or_default();
                    if have != want {
                        wrong.push((o, t, a, format!(
                            "{svc}: kube-proxy on {} ({}, zone {}) programs {have:?}, topology::proxy chooses {want:?} ({decision})",
                            o.name,
                            o.mode.as_str(),
                            o.zone
                        ), rules_of(&rules, &svc)));
                    }
                }
            }
            if wrong.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for (_, t, a, w, rules) in wrong {
                    let m = format!(
                        "{w}\n{}\n{}  the observer's rules for {}/{}:\n    {}",
                        describe_topology(b, t),
                        describe_mismatch(a),
                        t.namespace,
                        t.service,
                        rules.join("\n    ")
                    );
                    eprintln!("PROXY MISMATCH {m}");
                    tally.proxy_mismatches.push(m);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for o in OBSERVERS {
            for (_, a) in written.iter() {
                let (_, decision, local) = choice(a, o);
                *tally.proxy_checks.entry(format!("{} {decision}", o.mode.as_str())).or_insert(0) += 1;
                tally.proxy_local += usize::from(local);
            }
        }
    }

    /// A fresh sync of `t`'s Service: its slices deleted, the controller writes new ones.
    async fn resync(&self, b: &Batch, t: &GenTopology) -> anyhow::Result<String> {
        for s in self.service_slices(t).await? {
            let name = s.metadata.name.clone().unwrap_or_default();
            self.slices(&t.namespace).delete(&name, &DeleteParams::default()).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.settle(b, t).await?;
        let (a, _) = self.analyse(t).await?;
        let rec = &a.reconciliation;
        let actual: Vec<Vec<Option<Hints>>> =
            rec.input.iter().map(|s| s.endpoints.iter().map(|e| e.hints.clone()).collect()).collect();
        Ok(if is_outcome(rec, &actual) {
            "after a fresh re-sync (slices deleted) the hints are one of the doctor's outcomes".into()
        } else {
            format!("after a fresh re-sync (slices deleted) they still are not:\n{}", describe_mismatch(&a))
        })
    }

    /// Removes a batch's objects: pods (finalizers first), Services, Nodes.
    async fn clean(&self, b: &Batch) -> anyhow::Result<()> {
        try_join_all(b.topologies.iter().map(|t| async move {
            let pods = self.pods(&t.namespace);
            for p in t.pods.iter().filter(|p| matches!(p.state, PodState::Terminating { .. })) {
                pods.patch(&p.name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
                    .await?;
            }
            let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
            pods.delete_collection(&now, &ListParams::default().labels(&format!("{TOPOLOGY_LABEL}=t{}", t.index)))
                .await?;
            self.services(&t.namespace).delete(&t.service, &DeleteParams::default()).await?;
            anyhow::Ok(())
        }))
        .await?;
        try_join_all(b.nodes.iter().map(|n| async move {
            self.nodes().delete(&n.name, &DeleteParams::default()).await?;
            anyhow::Ok(())
        }))
        .await?;
        // The next batch's ratios must not count these nodes.
        let deadline = Instant::now() + SETTLE_WITHIN;
        let batch_nodes = || async {
            let names: Vec<String> = self
                .nodes()
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            anyhow::Ok(names.into_iter().filter(|n| !n.starts_with("observer-")).count())
        };
        while batch_nodes().await? > 0 {
            anyhow::ensure!(Instant::now() < deadline, "batch {}'s nodes were not deleted", b.index);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Runs `f` on a thread of its own inside network namespace `netns` (its sockets and
/// children are made there), propagating a panic.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// What the run needs from the test's cluster.
struct Setup {
    admin: PathBuf,
    /// kube-proxy's kubeconfig.
    kube_proxy: PathBuf,
    /// The Kubernetes binaries.
    kube_bin: PathBuf,
    /// `zonebench`.
    zonebench: PathBuf,
    dir: PathBuf,
    observer_netns: Vec<String>,
}

async fn run_oracle(setup: Setup) -> Tally {
    let Setup { admin, kube_proxy, kube_bin, zonebench: bin, dir, observer_netns } = setup;
    let kube = client::connect(&ClusterSource { kubeconfig: Some(admin.clone()), context: None }).await.unwrap();
    let gate = gate_default(minor_version(&kube.version));
    eprintln!(
        "cluster {} (Kubernetes {}), PreferSameTrafficDistribution default {gate}",
        kube.describe(),
        kube.version
    );
    let oracle = Oracle { kube, admin, gate, bin, observer_netns };
    // The observers: their Nodes, then a real kube-proxy on each.
    for o in OBSERVERS {
        let (node, status) = observer_node(o);
        oracle.nodes().create(&PostParams::default(), &node).await.unwrap();
        oracle.nodes().patch_status(o.name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }
    let spawner = Spawner::new("zbt-oracle").unwrap();
    let mut proxies: Vec<KubeProxy> = OBSERVERS
        .iter()
        .zip(&oracle.observer_netns)
        .map(|(o, netns)| {
            let spec = KubeProxySpec {
                netns: netns.clone(),
                node: o.name.into(),
                node_ip: o.ip,
                mode: o.mode,
                cluster_cidr: "10.0.0.0/8".into(),
                kubeconfig: kube_proxy.clone(),
                dir: dir.join(o.name),
                bin: kube_bin.clone(),
                attached: true,
            };
            KubeProxy::start(spec, &spawner).unwrap()
        })
        .collect();
    // One namespace per slot, made once: a new namespace's pods wait for its ServiceAccount.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(oracle.kube.client.clone());
    for slot in 0..PER_BATCH {
        let ns = serde_json::from_value(json!({"metadata": {"name": namespace(slot)}})).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    for slot in 0..PER_BATCH {
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(oracle.kube.client.clone(), &namespace(slot));
        while sa.get_opt("default").await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "namespace {}: no default ServiceAccount", namespace(slot));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut tally = Tally::default();
    for b in generate().iter() {
        let started = Instant::now();
        oracle.apply_nodes(b).await.unwrap_or_else(|e| panic!("{}: applying nodes: {e:#}", describe_batch(b)));
        // The controller sees Nodes and Services through separate watches: give the node
        // events a head start, so no Service is synced with the previous batch's CPU ratios
        // (nothing observable says the controller has them; a sync that did would show as a
        // mismatch that the fresh re-sync does not repeat).
        tokio::time::sleep(NODES_SETTLE).await;
        try_join_all(b.topologies.iter().map(|t| oracle.apply_topology(t)))
            .await
            .unwrap_or_else(|e| panic!("{}: applying: {e:#}", describe_batch(b)));
        try_join_all(b.topologies.iter().map(|t| oracle.settle(b, t))).await.unwrap_or_else(|e| panic!("{e:#}"));
        let mut written = Vec::new();
        for t in &b.topologies {
            let (found, a) =
                oracle.check(b, t, &mut tally).await.unwrap_or_else(|e| panic!("topology {}: {e:#}", t.index));
            match found {
                None => written.push((t.clone(), a)),
                Some(m) => {
                    let again = oracle.resync(b, t).await.unwrap_or_else(|e| format!("re-sync failed: {e:#}"));
                    eprintln!("MISMATCH {m}  {again}");
                    tally.mismatches.push(format!("{m}  {again}"));
                }
            }
        }
        oracle.check_proxies(b, &mut written, &mut tally).await;
        oracle.clean(b).await.unwrap_or_else(|e| panic!("{}: cleaning up: {e:#}", describe_batch(b)));
        for p in &mut proxies {
            p.check_alive().unwrap_or_else(|e| panic!("{e:#}"));
        }
        eprintln!("batch {} ({} topologies) in {:?}", b.index, b.topologies.len(), started.elapsed());
    }
    tally
}

#[test]
fn the_real_endpointslice_controller_writes_hints_the_doctor_predicts() {
    let _lock = lab_lock(false);
    // Not beside a whole Kubernetes lab: on 2 cores the two together slowed this test
    // ninefold in CI, and kube-proxy's syncs with it.
    let _kube = kube_lab_lock();
    let started = Instant::now();
    // Its fields drop in order (the control plane stops before its directory goes).
    let c: Cluster = cluster("kube-oracle");
    // Removed before the control plane stops (the kube-proxies in them stopped already).
    let observers: Vec<Netns> = OBSERVERS.iter().enumerate().map(|(i, o)| observer_netns(&c.netns.0, i, o)).collect();
    let setup = Setup {
        admin: c.admin.clone(),
        kube_proxy: c.kube_proxy.clone(),
        kube_bin: c.bin.clone(),
        zonebench: PathBuf::from(env!("CARGO_BIN_EXE_zonebench")),
        dir: c.dir.to_path_buf(),
        observer_netns: observers.iter().map(|n| n.0.clone()).collect(),
    };
    let tally = in_netns(&c.netns.0.clone(), move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run_oracle(setup))
    });
    let summary = format!(
        "{} topologies ({} endpoints) in {:?}: modes {:?}; Auto: {} with hints, refused {:?}, {} with moved endpoints; {} not deterministic; {} PreferSameNode node hints, {} PreferSameZone zone hints; {} events checked; {} runs of zonebench hints; {} mismatches; kube-proxy: {:?} Services checked on observers ({} with a local endpoint), {} mismatches; {} slices rewritten after their check",
        tally.topologies,
        tally.endpoints,
        started.elapsed(),
        tally.by_mode,
        tally.auto_enabled,
        tally.auto_refused,
        tally.with_moves,
        tally.not_deterministic,
        tally.same_node_hints,
        tally.same_zone_hints,
        tally.events_checked,
        tally.binary_runs,
        tally.mismatches.len(),
        tally.proxy_checks,
        tally.proxy_local,
        tally.proxy_mismatches.len(),
        tally.rewritten
    );
    eprintln!("{summary}");
    assert!(tally.mismatches.is_empty(), "{summary}\n\n{}", tally.mismatches.join("\n\n"));
    assert!(tally.proxy_mismatches.is_empty(), "{summary}\n\n{}", tally.proxy_mismatches.join("\n\n"));
    // The run covered what it is for (a generator change that loses a case fails here).
    assert!(tally.topologies >= 200, "{summary}");
    assert!(tally.auto_enabled >= 50 && tally.with_moves >= 20 && tally.not_deterministic >= 10, "{summary}");
    assert!(tally.auto_refused.len() >= 4, "every way Auto refuses, but only {:?}: {summary}", tally.auto_refused);
    assert!(tally.same_node_hints > 0 && tally.same_zone_hints > 0, "{summary}");
    for mode in ["iptables", "nftables"] {
        for decision in [
            "filtered-to-zone",
            "filtered-to-node",
            "no-hint-for-zone",
            "endpoint-without-hint",
            "no-ready-endpoints",
            "serving-terminating",
        ] {
            let n = tally.proxy_checks.get(&format!("{mode} {decision}")).copied().unwrap_or(0);
            assert!(n > 0, "no kube-proxy check in {mode} mode where topology::proxy decides {decision}: {summary}");
        }
    }
}
