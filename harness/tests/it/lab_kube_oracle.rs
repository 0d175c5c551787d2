//! The real EndpointSlice controller as the hints doctor's oracle (issue 14, part 1).
//!
//! One real control plane (etcd, kube-apiserver, kube-controller-manager from
//! `scripts/kube-binaries.sh`, in a network namespace of the test's own) is given
//! [`TOPOLOGIES`] generated topologies from a fixed seed, in batches that share their Nodes:
//! 2–5 zones, nodes of varied CPU (sometimes equal, for Go's map-order ties), now and then
//! an unready node, a control-plane node or a Ready node without a zone label; 0–7 endpoints
//! per zone, some unready and some terminating; and every mode: none, the `topology-mode` /
//! `topology-aware-hints` annotations, `trafficDistribution` PreferClose, PreferSameZone and
//! PreferSameNode. Each topology is API objects only: Nodes (zone label, allocatable CPU,
//! Ready condition), pods bound with `spec.nodeName` that get a status and no process (a
//! pod IP, Ready or not, Running; terminating = deleted while a finalizer holds it), and a
//! selector Service created last, so the controller's sync that writes the slice sees every
//! pod.
//!
//! For each topology the test reads the objects back as `zonebench hints -n NS SERVICE`
//! does, runs the doctor on them and checks that the hints the controller wrote are one of
//! the outcomes the doctor predicts (exactly: moved endpoints by receiving zone and count),
//! that the event it predicts was recorded on the Service, and that the live comparison's
//! verdict agrees; every tenth topology also goes through the real `zonebench hints` binary.
//! A mismatch is a bug in the doctor (fixed there, and kept as a case in its table); the
//! test then re-syncs that Service from scratch (deleting its slice) and reports both, so a
//! failure says whether the fresh sync disagrees too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nix::sched::CloneFlags;
use serde_json::{json, Value};

use zonebench::platform::kube::{client, services, Cluster as KubeCluster, ClusterSource};
use zonebench::topology::doctor::{self, Analysis, Settings};
use zonebench::topology::hints::{EndpointRef, Reconciliation};
use zonebench::topology::live::{self, gate_default, minor_version, LiveContext, RecordedEvent};
use zonebench::topology::{Hints, RoutingMode, TOPOLOGY_AWARE_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION, ZONE_LABEL};

use crate::lab_kube_control_plane::{cluster, Cluster};
use crate::support::lab_lock;

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
/// How long a predicted event may take to be recorded.
const EVENT_WITHIN: Duration = Duration::from_secs(10);
/// The label that ties a topology's pods to its Service.
const TOPOLOGY_LABEL: &str = "oracle.zonebench.dev/topology";
/// Holds a deleted pod in Terminating (no kubelet will ever finish it).
const FINALIZER: &str = "oracle.zonebench.dev/hold";

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
    /// Index into the batch's nodes.
    node: usize,
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
    let prefix = ["", "us-east-1", "zone-"][b % 3];
    let zones: Vec<String> = (0..rng.range(2, 5)).map(|z| format!("{prefix}{}", (b'a' + z as u8) as char)).collect();
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
    let extra_zone = format!("{prefix}x");
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
    let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        groups.entry(n.zone.clone()).or_default().push(i);
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
                        _ => PodState::Terminating { serving: r % 2 == 0 },
                    };
                    let i = pods.len();
                    pods.push(GenPod {
                        name: format!("t{index}-{i}"),
                        node: rng.pick(members),
                        ip: format!("10.{}.{}.{}", 100 + index / 250, index % 250, i + 1),
                        state,
                    });
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
        let _ = write!(s, " {}@{}={:?}", p.ip, b.nodes[p.node].name, p.state);
    }
    s
}

/// What the controller should write for a pod: address → (ready, serving, terminating,
/// node, zone).
type EndpointKey = (bool, bool, bool, String, Option<String>);

fn expected_endpoints(b: &Batch, t: &GenTopology) -> BTreeMap<String, EndpointKey> {
    t.pods
        .iter()
        .map(|p| {
            let (ready, serving, terminating) = match p.state {
                PodState::Ready => (true, true, false),
                PodState::Unready => (false, false, false),
                PodState::Terminating { serving } => (false, serving, true),
            };
            let n = &b.nodes[p.node];
            (p.ip.clone(), (ready, serving, terminating, n.name.clone(), n.zone.clone()))
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

fn pod_object(b: &Batch, t: &GenTopology, p: &GenPod) -> Pod {
    let finalizers: Vec<&str> = if matches!(p.state, PodState::Terminating { .. }) { vec![FINALIZER] } else { vec![] };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": t.namespace, "labels": {TOPOLOGY_LABEL: format!("t{}", t.index)}, "finalizers": finalizers},
        "spec": {
            "nodeName": b.nodes[p.node].name,
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
}

/// The client, and what the checks need besides it.
struct Oracle {
    kube: KubeCluster,
    admin: PathBuf,
    gate: bool,
    bin: PathBuf,
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
    async fn apply_topology(&self, b: &Batch, t: &GenTopology) -> anyhow::Result<()> {
        let pods = self.pods(&t.namespace);
        try_join_all(t.pods.iter().map(|p| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod_object(b, t, p)).await?;
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
        let want = expected_endpoints(b, t);
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
    async fn check(&self, b: &Batch, t: &GenTopology, tally: &mut Tally) -> anyhow::Result<Option<String>> {
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
        if t.index % 10 == 0 {
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
            return Ok(None);
        }
        Ok(Some(format!("{}\n  {}\n{}", describe_topology(b, t), problems.join("\n  "), describe_mismatch(&a))))
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
        while !self.nodes().list(&ListParams::default()).await?.items.is_empty() {
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

async fn run_oracle(admin: PathBuf, bin: PathBuf) -> Tally {
    let kube = client::connect(&ClusterSource { kubeconfig: Some(admin.clone()), context: None }).await.unwrap();
    let gate = gate_default(minor_version(&kube.version));
    eprintln!(
        "cluster {} (Kubernetes {}), PreferSameTrafficDistribution default {gate}",
        kube.describe(),
        kube.version
    );
    let oracle = Oracle { kube, admin, gate, bin };
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
        try_join_all(b.topologies.iter().map(|t| oracle.apply_topology(b, t)))
            .await
            .unwrap_or_else(|e| panic!("{}: applying: {e:#}", describe_batch(b)));
        try_join_all(b.topologies.iter().map(|t| oracle.settle(b, t))).await.unwrap_or_else(|e| panic!("{e:#}"));
        for t in &b.topologies {
            let found = oracle.check(b, t, &mut tally).await.unwrap_or_else(|e| panic!("topology {}: {e:#}", t.index));
            if let Some(m) = found {
                let again = oracle.resync(b, t).await.unwrap_or_else(|e| format!("re-sync failed: {e:#}"));
                eprintln!("MISMATCH {m}  {again}");
                tally.mismatches.push(format!("{m}  {again}"));
            }
        }
        oracle.clean(b).await.unwrap_or_else(|e| panic!("{}: cleaning up: {e:#}", describe_batch(b)));
        eprintln!("batch {} ({} topologies) in {:?}", b.index, b.topologies.len(), started.elapsed());
    }
    tally
}

#[test]
fn the_real_endpointslice_controller_writes_hints_the_doctor_predicts() {
    let _lock = lab_lock(false);
    let started = Instant::now();
    let Cluster { cp: _cp, netns, dir: _dir, bin: _bin, admin, kube_proxy: _kp } = cluster("kube-oracle");
    let zonebench = PathBuf::from(env!("CARGO_BIN_EXE_zonebench"));
    let tally = in_netns(&netns.0, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_oracle(admin, zonebench))
    });
    let summary = format!(
        "{} topologies ({} endpoints) in {:?}: modes {:?}; Auto: {} with hints, refused {:?}, {} with moved endpoints; {} not deterministic; {} PreferSameNode node hints, {} PreferSameZone zone hints; {} events checked; {} runs of zonebench hints; {} mismatches",
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
        tally.mismatches.len()
    );
    eprintln!("{summary}");
    assert!(tally.mismatches.is_empty(), "{summary}\n\n{}", tally.mismatches.join("\n\n"));
    // The run covered what it is for (a generator change that loses a case fails here).
    assert!(tally.topologies >= 200, "{summary}");
    assert!(tally.auto_enabled >= 50 && tally.with_moves >= 20 && tally.not_deterministic >= 10, "{summary}");
    assert!(tally.auto_refused.len() >= 4, "every way Auto refuses, but only {:?}: {summary}", tally.auto_refused);
    assert!(tally.same_node_hints > 0 && tally.same_zone_hints > 0, "{summary}");
}
