//! The EndpointSlice controller's hints: which zone (and node) each endpoint is hinted for.
//!
//! A port of `k8s.io/endpointslice` (`reconciler.go`, `topologycache/`, `trafficdist/`),
//! kept close to the Go so it can be checked line by line against it:
//!
//! - the mode: the `topology-aware-hints` annotation (deprecated, wins when present), else
//!   `topology-mode`, exactly `Auto` or `auto`, selects the CPU heuristic; otherwise a valid
//!   `spec.trafficDistribution` selects same-zone (same-node) hints; otherwise no hints;
//! - `SetNodes`: CPU ratios per zone from Ready, non-control-plane nodes; one such node
//!   without a zone label or CPU removes hints cluster-wide;
//! - `getAllocations`, the same-zone step, `getGivingAndReceivingZones` and
//!   `redistributeHints`, in IEEE f64 with Go's operation order (exact arithmetic gives
//!   different answers: 0.4 × 12 × 0.8333333333333334 rounds up to 5, not 4);
//! - the events, with their exact type, reason and message.
//!
//! Go iterates maps in a random order. Where that order matters (ties in `getMost`, and
//! which receiving zone a moved endpoint is hinted for) every possibility is followed: a
//! [`Reconciliation`] holds every possible outcome, canonical one first (ties broken by zone
//! name), and says whether the result is deterministic.
//!
//! A "fresh sync" is every slice in [`SyncState::Create`]: what the controller writes when it
//! builds the slices anew. A long-running controller keeps valid hints of unchanged slices
//! ([`SyncState::Unchanged`]), so what a cluster shows can differ from the fresh prediction.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::{AddressType, Endpoint, Hints, Node, RoutingMode, ServiceConfig, Slice, SyncState};

/// `overloadThreshold` in `topologycache.go`: no endpoint should get more than 20% above its
/// fair share of a zone's traffic.
pub const OVERLOAD_THRESHOLD: f64 = 0.2;
/// `1 / (1 + overloadThreshold)` as Go folds the constant (0.83333333333333337034…).
pub const MIN_FACTOR: f64 = 0.8333333333333334;

pub const REASON_DISABLED: &str = "TopologyAwareHintsDisabled";
pub const REASON_ENABLED: &str = "TopologyAwareHintsEnabled";
pub const MSG_NO_ZONE_SPECIFIED: &str = "One or more endpoints do not have a zone specified";
pub const MSG_NO_ALLOCATED_HINTS: &str = "No hints allocated for zones";
pub const MSG_ENABLED: &str = "Topology Aware Hints has been enabled";
pub const MSG_DISABLED: &str = "Topology Aware Hints has been disabled";
pub const MSG_INSUFFICIENT_NODE_INFO: &str =
    "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes";
pub const MSG_NODES_READY_IN_ONE_ZONE_ONLY: &str = "Nodes only ready in one zone";
pub const MSG_INSUFFICIENT_ENDPOINTS: &str = "Insufficient number of endpoints";
pub const MSG_MIN_ALLOCATION_EXCEEDS: &str =
    "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold";

/// Bound on the tie states followed in `getGivingAndReceivingZones`; far above what a
/// cluster with a handful of zones reaches. Past it the outcome list is marked incomplete.
pub const MAX_TIE_STATES: usize = 200_000;

/// Controller settings that are not in the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerOptions {
    /// The `PreferSameTrafficDistribution` feature gate (alpha 1.33, on by default from 1.34,
    /// GA 1.35): without it `PreferSameZone` and `PreferSameNode` are ignored.
    pub prefer_same_traffic_distribution: bool,
    /// The controller's cache already holds hints for this Service (an earlier sync enabled
    /// them): no `TopologyAwareHintsEnabled` event then, and a `TopologyAwareHintsDisabled`
    /// one if the annotation is gone. `false` for a fresh sync.
    pub hints_previously_populated: bool,
    /// Which slices to allocate (the controller does IPv4 and IPv6 separately).
    pub address_type: AddressType,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            prefer_same_traffic_distribution: true,
            hints_previously_populated: false,
            address_type: AddressType::IPv4,
        }
    }
}

pub use crate::model::EventType;

/// An event the controller records on the Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
}

impl Event {
    fn disabled(message: &str, t: AddressType) -> Event {
        Event {
            event_type: EventType::Warning,
            reason: REASON_DISABLED.into(),
            message: format!("{message}, addressType: {t}"),
        }
    }
}

/// `hintsEnabled` in `utils.go`: the deprecated annotation wins when present; only the
/// exact values `Auto` and `auto` count.
pub fn auto_annotation(svc: &ServiceConfig) -> bool {
    let v = svc.topology_aware_hints.as_deref().or(svc.topology_mode.as_deref());
    matches!(v, Some("Auto" | "auto"))
}

/// The heuristic `spec.trafficDistribution` asks for, if the controller accepts the value.
pub fn traffic_distribution_mode(td: Option<&str>, gate: bool) -> Option<RoutingMode> {
    match td {
        Some("PreferClose") => Some(RoutingMode::PreferClose),
        Some("PreferSameZone") if gate => Some(RoutingMode::PreferSameZone),
        Some("PreferSameNode") if gate => Some(RoutingMode::PreferSameNode),
        _ => None,
    }
}

/// The mode the controller uses for `svc`, and why, in words.
pub fn decide_mode(svc: &ServiceConfig, opts: &ControllerOptions) -> (RoutingMode, Vec<String>) {
    use super::{TOPOLOGY_AWARE_HINTS_ANNOTATION as TAH, TOPOLOGY_MODE_ANNOTATION as TM};
    let mut why = Vec::new();
    let (key, val) = match (&svc.topology_aware_hints, &svc.topology_mode) {
        (Some(v), other) => {
            if let Some(o) = other {
                why.push(format!("{TAH}: {v} (deprecated) takes precedence over {TM}: {o}"));
            }
            (Some(TAH), Some(v.as_str()))
        }
        (None, Some(v)) => (Some(TM), Some(v.as_str())),
        (None, None) => (None, None),
    };
    let td = svc.traffic_distribution.as_deref();
    if auto_annotation(svc) {
        why.push(format!(
            "annotation {}: {} selects the CPU-proportional heuristic",
            key.unwrap_or(TM),
            val.unwrap_or("")
        ));
        if let Some(td) = td {
            why.push(format!("the annotation takes precedence over spec.trafficDistribution: {td}"));
        }
        return (RoutingMode::Auto, why);
    }
    if let (Some(k), Some(v)) = (key, val) {
        if v.eq_ignore_ascii_case("auto") {
            why.push(format!("annotation {k}: {v} is ignored: only the exact values Auto and auto count"));
        } else {
            why.push(format!("annotation {k}: {v} does not enable hints"));
        }
    }
    match (td, traffic_distribution_mode(td, opts.prefer_same_traffic_distribution)) {
        (Some(t), Some(m)) => {
            why.push(format!(
                "spec.trafficDistribution: {t}: every ready endpoint is hinted for its own zone{}",
                if m == RoutingMode::PreferSameNode { " and node" } else { "" }
            ));
            (m, why)
        }
        (Some(t @ ("PreferSameZone" | "PreferSameNode")), None) => {
            why.push(format!("spec.trafficDistribution: {t} needs the PreferSameTrafficDistribution feature gate (off here), so no hints"));
            (RoutingMode::None, why)
        }
        (Some(t), None) => {
            why.push(format!("spec.trafficDistribution: {t} is not a value the controller knows, so no hints"));
            (RoutingMode::None, why)
        }
        (None, _) => {
            if key.is_none() {
                why.push("no topology annotation and no spec.trafficDistribution: no hints".into());
            }
            (RoutingMode::None, why)
        }
    }
}

/// Why a node is left out of the CPU ratios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exclusion {
    ControlPlane,
    NotReady,
}

/// Why the controller has no CPU ratios (`InsufficientNodeInfo` for every Auto Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insufficiency {
    /// A Ready worker node has no (or an empty) zone label; the first one found.
    NodeWithoutZone(String),
    /// A Ready worker node has no allocatable CPU; the first one found.
    NodeWithoutCpu(String),
    /// No Ready worker node at all.
    NoEligibleNodes,
    /// Every Ready worker node is in this one zone.
    OneZone(String),
}

/// The result of `SetNodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCensus {
    /// Allocatable CPU per zone of the eligible nodes (empty when insufficient).
    pub cpu_millis_by_zone: BTreeMap<String, u128>,
    pub total_cpu_millis: u128,
    /// `cpuRatiosByZone`: `None` is Go's nil (insufficient node information).
    pub ratios: Option<BTreeMap<String, f64>>,
    pub excluded: Vec<(String, Exclusion)>,
    pub insufficient: Option<Insufficiency>,
}

/// `SetNodes`: CPU ratios per zone, from Ready nodes without a control-plane label, in order.
pub fn zone_ratios(nodes: &[Node]) -> NodeCensus {
    let mut cpu = BTreeMap::<String, super::Cpu>::new();
    let mut total = super::Cpu::ZERO;
    let mut excluded = Vec::new();
    let mut insufficient = None;
    for n in nodes {
        if n.control_plane {
            excluded.push((n.name.clone(), Exclusion::ControlPlane));
            continue;
        }
        if !n.ready {
            excluded.push((n.name.clone(), Exclusion::NotReady));
            continue;
        }
        let zone = n.zone.as_deref().unwrap_or("");
        if zone.is_empty() || n.allocatable_cpu.is_zero() {
            // Go bails out at the first such node: one bad node disables hints everywhere.
            insufficient = Some(if zone.is_empty() {
                Insufficiency::NodeWithoutZone(n.name.clone())
            } else {
                Insufficiency::NodeWithoutCpu(n.name.clone())
            });
            cpu.clear();
            break;
        }
        total = total.saturating_add(n.allocatable_cpu);
        let e = cpu.entry(zone.to_string()).or_default();
        *e = e.saturating_add(n.allocatable_cpu);
    }
    if insufficient.is_none() {
        if total.is_zero() {
            insufficient = Some(Insufficiency::NoEligibleNodes);
        } else if cpu.len() < 2 {
            insufficient = cpu.keys().next().cloned().map(Insufficiency::OneZone);
        }
    }
    let ratios = if insufficient.is_some() {
        cpu.clear();
        None
    } else {
        let t = total.millis() as f64;
        Some(cpu.iter().map(|(z, c)| (z.clone(), c.millis() as f64 / t)).collect())
    };
    NodeCensus {
        cpu_millis_by_zone: cpu.iter().map(|(z, c)| (z.clone(), c.millis())).collect(),
        total_cpu_millis: if ratios.is_some() { total.millis() } else { 0 },
        ratios,
        excluded,
        insufficient,
    }
}

/// One zone's share of a Service's ready endpoints (`allocation` in Go, plus the inputs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Allocation {
    pub ratio: f64,
    /// `ratio × n` before it is raised to the minimum.
    pub proportional: f64,
    /// `max(ratio × n, minimum)`: the target the redistribution aims at.
    pub desired: f64,
    /// `ceil(ratio × n × 0.8333333333333334)`.
    pub minimum: usize,
    /// `minimum + n − Σ minimum`.
    pub maximum: usize,
}

/// Why `getAllocations` refuses.
#[derive(Debug, Clone, PartialEq)]
pub enum AllocationError {
    /// `cpuRatiosByZone` is nil.
    InsufficientNodeInfo,
    /// Fewer than 2 zones in a non-nil ratio map (only before the first `SetNodes`).
    NodesReadyInOneZoneOnly,
    /// More zones than ready endpoints.
    InsufficientEndpoints { endpoints: usize, zones: usize },
    /// Σ minimum > ready endpoints; every zone's minimum, for the explanation.
    MinimumExceedsThreshold { endpoints: usize, zones: usize, minimums: BTreeMap<String, usize> },
}

impl AllocationError {
    /// The event message, without the address-type suffix.
    pub fn message(&self) -> String {
        match self {
            AllocationError::InsufficientNodeInfo => MSG_INSUFFICIENT_NODE_INFO.into(),
            AllocationError::NodesReadyInOneZoneOnly => MSG_NODES_READY_IN_ONE_ZONE_ONLY.into(),
            AllocationError::InsufficientEndpoints { endpoints, zones } => {
                format!("{MSG_INSUFFICIENT_ENDPOINTS} ({endpoints} endpoints, {zones} zones)")
            }
            AllocationError::MinimumExceedsThreshold { endpoints, zones, .. } => {
                format!("{MSG_MIN_ALLOCATION_EXCEEDS} ({endpoints} endpoints, {zones} zones)")
            }
        }
    }
}

/// `ratio × n` and the minimum `ceil(ratio × n × 0.8333333333333334)`, in Go's f64 order.
pub fn minimum_for(ratio: f64, n: usize) -> (f64, usize) {
    let proportional = ratio * n as f64;
    (proportional, (proportional * MIN_FACTOR).ceil() as usize)
}

/// `getAllocations(n)`. `ratios == None` is Go's nil map.
pub fn allocations(
    ratios: Option<&BTreeMap<String, f64>>,
    n: usize,
) -> Result<BTreeMap<String, Allocation>, AllocationError> {
    let Some(ratios) = ratios else { return Err(AllocationError::InsufficientNodeInfo) };
    if ratios.len() < 2 {
        return Err(AllocationError::NodesReadyInOneZoneOnly);
    }
    if ratios.len() > n {
        return Err(AllocationError::InsufficientEndpoints { endpoints: n, zones: ratios.len() });
    }
    let mut out = BTreeMap::new();
    let mut min_total = 0usize;
    for (zone, &ratio) in ratios {
        let (proportional, minimum) = minimum_for(ratio, n);
        out.insert(
            zone.clone(),
            Allocation { ratio, proportional, desired: proportional.max(minimum as f64), minimum, maximum: 0 },
        );
        min_total += minimum;
    }
    // Go stops at the first zone that overdraws; the sum decides either way.
    if min_total > n {
        return Err(AllocationError::MinimumExceedsThreshold {
            endpoints: n,
            zones: ratios.len(),
            minimums: out.iter().map(|(z, a)| (z.clone(), a.minimum)).collect(),
        });
    }
    for a in out.values_mut() {
        a.maximum = a.minimum + n - min_total;
    }
    Ok(out)
}

/// Endpoints to move: zone → count, for the giving and the receiving zones.
pub type Moves = (BTreeMap<String, usize>, BTreeMap<String, usize>);

/// `getGivingAndReceivingZones`, every outcome Go's map order can produce (ties in `getMost`
/// go either way). The first is the canonical one (ties to the first zone by name). The flag
/// is false when [`MAX_TIE_STATES`] cut the search short.
pub fn giving_and_receiving(
    alloc: &BTreeMap<String, Allocation>,
    allocated: &BTreeMap<String, i64>,
) -> (Vec<Moves>, bool) {
    let mut gd = BTreeMap::new();
    let mut rd = BTreeMap::new();
    for (zone, a) in alloc {
        let have = allocated.get(zone).copied().unwrap_or(0) as f64;
        if have > a.desired {
            gd.insert(zone.clone(), have - a.desired);
        } else if have < a.desired {
            rd.insert(zone.clone(), a.desired - have);
        }
    }
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Key(Vec<(String, usize)>, Vec<(String, usize)>);
    struct St {
        gd: BTreeMap<String, f64>,
        rd: BTreeMap<String, f64>,
        g: BTreeMap<String, usize>,
        r: BTreeMap<String, usize>,
    }
    // getMost: the strictly largest value above 0; every zone tying for it is possible.
    fn most(m: &BTreeMap<String, f64>) -> (Vec<String>, f64) {
        let best = m.values().copied().fold(0.0f64, f64::max);
        if best <= 0.0 {
            return (vec![], 0.0);
        }
        (m.iter().filter(|(_, v)| **v == best).map(|(z, _)| z.clone()).collect(), best)
    }
    let mut outcomes: Vec<Moves> = Vec::new();
    let mut seen_outcomes = HashSet::new();
    let mut seen = HashSet::new();
    let mut stack = vec![St { gd, rd, g: BTreeMap::new(), r: BTreeMap::new() }];
    let mut complete = true;
    // Depth first, first tie first: the first outcome found is the canonical one.
    while let Some(s) = stack.pop() {
        let (gz, ng) = most(&s.gd);
        let (rz, nr) = most(&s.rd);
        if gz.is_empty() || rz.is_empty() || (ng < 1.0 && nr < 1.0) || ng < 0.5 || nr < 0.5 {
            let key = Key(s.g.clone().into_iter().collect(), s.r.clone().into_iter().collect());
            if seen_outcomes.insert(key) {
                outcomes.push((s.g, s.r));
            }
            continue;
        }
        let mut next = Vec::new();
        for g in &gz {
            for r in &rz {
                let mut n = St { gd: s.gd.clone(), rd: s.rd.clone(), g: s.g.clone(), r: s.r.clone() };
                *n.g.entry(g.clone()).or_default() += 1;
                *n.r.entry(r.clone()).or_default() += 1;
                // Go decrements the float in place: repeated `-= 1`, not `initial - k`.
                if let Some(v) = n.gd.get_mut(g) {
                    *v -= 1.0;
                }
                if let Some(v) = n.rd.get_mut(r) {
                    *v -= 1.0;
                }
                let key = Key(n.g.clone().into_iter().collect(), n.r.clone().into_iter().collect());
                if seen.len() >= MAX_TIE_STATES {
                    complete = false;
                    continue;
                }
                if seen.insert(key) {
                    next.push(n);
                }
            }
        }
        stack.extend(next.into_iter().rev());
    }
    (outcomes, complete)
}

/// Where an endpoint is: `slices[slice].endpoints[endpoint]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EndpointRef {
    pub slice: usize,
    pub endpoint: usize,
}

/// One possible result of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The hints written, `[slice][endpoint]`, for every input slice (slices the controller
    /// does not manage, or of another address type, keep theirs).
    pub hints: Vec<Vec<Option<Hints>>>,
    /// Ready endpoints hinted for each zone (what the controller caches for Auto).
    pub counts: BTreeMap<String, usize>,
    /// Auto: endpoints each zone gives away and receives in the redistribution.
    pub giving: BTreeMap<String, usize>,
    pub receiving: BTreeMap<String, usize>,
    /// Auto: the endpoints hinted for another zone than their own. Which receiving zone each
    /// gets depends on Go's map order: any of `receiving`'s zones is possible for each.
    pub moved: Vec<EndpointRef>,
}

/// What one sync of one address type of a Service does.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciliation {
    pub address_type: AddressType,
    pub mode: RoutingMode,
    /// Why this mode, in words (annotation precedence, gates, unknown values).
    pub mode_reasons: Vec<String>,
    pub event: Option<Event>,
    /// Auto: the per-zone allocation, when `getAllocations` succeeded.
    pub allocations: Option<BTreeMap<String, Allocation>>,
    /// Auto: why `getAllocations` refused.
    pub allocation_error: Option<AllocationError>,
    /// Auto: the ready endpoint without a zone that made the controller remove all hints.
    pub endpoint_without_zone: Option<EndpointRef>,
    /// Auto: ready endpoints per zone after the same-zone step, before redistribution.
    pub same_zone: BTreeMap<String, usize>,
    /// Every possible outcome; the first is the canonical one (Go map ties broken by zone
    /// name, receivers filled in zone-name order). Never empty.
    pub outcomes: Vec<Outcome>,
    /// False when the tie search was cut short (see [`MAX_TIE_STATES`]).
    pub outcomes_complete: bool,
    /// The input slices.
    pub input: Vec<Slice>,
}

impl Reconciliation {
    /// Whether Go's map order cannot change any hint.
    pub fn deterministic(&self) -> bool {
        self.outcomes_complete && self.outcomes.len() == 1 && self.outcomes[0].receiving.len() <= 1
    }

    /// Whether the controller writes hints (Auto allocated them, or a trafficDistribution).
    pub fn hints_enabled(&self) -> bool {
        match self.mode {
            RoutingMode::Auto => self.allocations.is_some() && self.endpoint_without_zone.is_none(),
            RoutingMode::None => false,
            _ => true,
        }
    }

    /// The slices as the canonical outcome writes them.
    pub fn slices(&self) -> Vec<Slice> {
        self.slices_of(&self.outcomes[0])
    }

    /// The slices as `outcome` writes them.
    pub fn slices_of(&self, outcome: &Outcome) -> Vec<Slice> {
        let mut out = self.input.clone();
        for (s, hs) in out.iter_mut().zip(&outcome.hints) {
            for (e, h) in s.endpoints.iter_mut().zip(hs) {
                e.hints = h.clone();
            }
        }
        out
    }

    /// Every hint `ep` can get, over all outcomes and receiver orders (sorted, distinct).
    pub fn possible_hints(&self, ep: EndpointRef) -> Vec<Option<Hints>> {
        let mut set = BTreeSet::new();
        for o in &self.outcomes {
            if o.moved.contains(&ep) {
                for z in o.receiving.keys() {
                    set.insert(Some(Hints::zone(z)));
                }
            } else {
                set.insert(o.hints[ep.slice][ep.endpoint].clone());
            }
        }
        set.into_iter().collect()
    }

    /// The distinct hinted counts a zone can end with, over all outcomes.
    pub fn possible_counts(&self, zone: &str) -> Vec<usize> {
        let set: BTreeSet<usize> = self.outcomes.iter().map(|o| o.counts.get(zone).copied().unwrap_or(0)).collect();
        set.into_iter().collect()
    }
}

/// `SetNodes` then a sync: what the controller writes for these nodes and slices.
pub fn predict(nodes: &[Node], slices: &[Slice], svc: &ServiceConfig, opts: &ControllerOptions) -> Reconciliation {
    let census = zone_ratios(nodes);
    reconcile(census.ratios.as_ref(), slices, svc, opts)
}

/// One sync of `opts.address_type` for a Service, given `cpuRatiosByZone` (`None` = nil).
/// Slices of other address types and slices the controller does not manage keep their hints.
pub fn reconcile(
    ratios: Option<&BTreeMap<String, f64>>,
    slices: &[Slice],
    svc: &ServiceConfig,
    opts: &ControllerOptions,
) -> Reconciliation {
    let (mode, mode_reasons) = decide_mode(svc, opts);
    let t = opts.address_type;
    let ours = |s: &Slice| s.managed_by_controller && s.address_type == t;
    // Endpoints of created or updated slices are rebuilt from the pods: no hints yet.
    let mut work: Vec<Slice> = slices.to_vec();
    for s in work.iter_mut().filter(|s| ours(s) && s.state != SyncState::Unchanged) {
        for e in &mut s.endpoints {
            e.hints = None;
        }
    }
    let mut r = Reconciliation {
        address_type: t,
        mode,
        mode_reasons,
        event: None,
        allocations: None,
        allocation_error: None,
        endpoint_without_zone: None,
        same_zone: BTreeMap::new(),
        outcomes: vec![],
        outcomes_complete: true,
        input: slices.to_vec(),
    };
    let strip = |work: &mut Vec<Slice>| {
        for s in work.iter_mut().filter(|s| ours(s)) {
            for e in &mut s.endpoints {
                e.hints = None;
            }
        }
    };
    match mode {
        RoutingMode::Auto => {
            add_hints(&mut r, ratios, &mut work, opts);
            return r;
        }
        RoutingMode::None => {
            if opts.hints_previously_populated {
                r.event = Some(Event::disabled(MSG_DISABLED, t));
            }
            strip(&mut work);
        }
        RoutingMode::PreferClose | RoutingMode::PreferSameZone | RoutingMode::PreferSameNode => {
            if opts.hints_previously_populated {
                r.event = Some(Event::disabled(MSG_DISABLED, t));
            }
            let same_node = mode == RoutingMode::PreferSameNode;
            for s in work.iter_mut().filter(|s| ours(s)) {
                // An unchanged slice is rewritten only when a ready endpoint's hint is wrong.
                if s.state == SyncState::Unchanged && !prefer_close_needs_update(s, same_node) {
                    continue;
                }
                for e in s.endpoints.iter_mut().filter(|e| e.controller_ready()) {
                    e.hints = prefer_close_hints(e, same_node);
                }
            }
        }
    }
    r.outcomes = vec![outcome_of(&work, t, BTreeMap::new(), BTreeMap::new(), vec![])];
    r
}

/// `preferCloseHeuristic.update` for one ready endpoint.
fn prefer_close_hints(e: &Endpoint, same_node: bool) -> Option<Hints> {
    let for_zones: Vec<String> = e.zone.iter().cloned().collect();
    let for_nodes: Vec<String> = if same_node { e.node.iter().cloned().collect() } else { vec![] };
    if for_zones.is_empty() && for_nodes.is_empty() {
        None
    } else {
        Some(Hints { for_zones, for_nodes })
    }
}

/// `preferCloseHeuristic.needsUpdate`: a ready endpoint's hints are missing or wrong.
fn prefer_close_needs_update(s: &Slice, same_node: bool) -> bool {
    let norm = |h: &Option<Hints>| h.clone().unwrap_or_default();
    s.endpoints
        .iter()
        .filter(|e| e.controller_ready())
        .any(|e| norm(&e.hints) != norm(&prefer_close_hints(e, same_node)))
}

fn outcome_of(
    work: &[Slice],
    t: AddressType,
    giving: BTreeMap<String, usize>,
    receiving: BTreeMap<String, usize>,
    moved: Vec<EndpointRef>,
) -> Outcome {
    let mut counts = BTreeMap::new();
    for s in work.iter().filter(|s| s.managed_by_controller && s.address_type == t) {
        for e in s.endpoints.iter().filter(|e| e.controller_ready()) {
            for z in e.hints.iter().flat_map(|h| &h.for_zones) {
                *counts.entry(z.clone()).or_insert(0) += 1;
            }
        }
    }
    Outcome {
        hints: work.iter().map(|s| s.endpoints.iter().map(|e| e.hints.clone()).collect()).collect(),
        counts,
        giving,
        receiving,
        moved,
    }
}

/// `getHintsByZone`: the hints an unchanged slice holds per zone, or `None` when the slice
/// must be rewritten (a ready endpoint without hints, a hint for an unknown zone, or more
/// than a zone's maximum).
pub fn hints_by_zone(
    s: &Slice,
    allocated: &BTreeMap<String, i64>,
    alloc: &BTreeMap<String, Allocation>,
) -> Option<BTreeMap<String, i64>> {
    let mut by_zone = BTreeMap::new();
    for e in s.endpoints.iter().filter(|e| e.controller_ready()) {
        let h = e.hints.as_ref().filter(|h| !h.for_zones.is_empty())?;
        for z in &h.for_zones {
            if !alloc.contains_key(z) {
                return None;
            }
            *by_zone.entry(z.clone()).or_insert(0) += 1;
        }
    }
    for (z, n) in &by_zone {
        let already = allocated.get(z).copied().unwrap_or(0);
        if n + already > alloc[z].maximum as i64 {
            return None;
        }
    }
    Some(by_zone)
}

/// `TopologyCache.AddHints`, every outcome.
fn add_hints(
    r: &mut Reconciliation,
    ratios: Option<&BTreeMap<String, f64>>,
    work: &mut [Slice],
    opts: &ControllerOptions,
) {
    let t = opts.address_type;
    let ours: Vec<usize> =
        (0..work.len()).filter(|&i| work[i].managed_by_controller && work[i].address_type == t).collect();
    let strip = |work: &mut [Slice]| {
        for &i in &ours {
            for e in &mut work[i].endpoints {
                e.hints = None;
            }
        }
    };
    let n: usize = ours.iter().map(|&i| work[i].endpoints.iter().filter(|e| e.controller_ready()).count()).sum();
    let alloc = match allocations(ratios, n) {
        Ok(a) => a,
        Err(e) => {
            r.event = Some(Event::disabled(&e.message(), t));
            r.allocation_error = Some(e);
            strip(work);
            r.outcomes = vec![outcome_of(work, t, BTreeMap::new(), BTreeMap::new(), vec![])];
            return;
        }
    };
    r.allocations = Some(alloc.clone());

    // Step 0: unchanged slices keep their hints while they stay valid.
    let mut allocated: BTreeMap<String, i64> = BTreeMap::new();
    let mut moved_to_update = Vec::new();
    for &i in ours.iter().filter(|&&i| work[i].state == SyncState::Unchanged) {
        match hints_by_zone(&work[i], &allocated, &alloc) {
            Some(h) => {
                for (z, n) in h {
                    *allocated.entry(z).or_insert(0) += n;
                }
            }
            None => moved_to_update.push(i),
        }
    }
    // ToCreate ++ ToUpdate (the invalid unchanged slices are appended to ToUpdate).
    let allocatable: Vec<usize> = {
        let w = &*work;
        let of = |st: SyncState| ours.iter().copied().filter(|&i| w[i].state == st).collect::<Vec<_>>();
        [of(SyncState::Create), of(SyncState::Update), moved_to_update].concat()
    };

    // Step 1: every ready endpoint is hinted for its own zone. (Go "clears" unready
    // endpoints' hints on a copy, so in fact they keep what they had.)
    for &si in &allocatable {
        for ei in 0..work[si].endpoints.len() {
            let e = &mut work[si].endpoints[ei];
            if !e.controller_ready() {
                continue;
            }
            let Some(zone) = e.zone.clone().filter(|z| !z.is_empty()) else {
                r.event = Some(Event::disabled(MSG_NO_ZONE_SPECIFIED, t));
                r.endpoint_without_zone = Some(EndpointRef { slice: si, endpoint: ei });
                strip(work);
                r.outcomes = vec![outcome_of(work, t, BTreeMap::new(), BTreeMap::new(), vec![])];
                return;
            };
            *allocated.entry(zone.clone()).or_insert(0) += 1;
            e.hints = Some(Hints::zone(&zone));
        }
    }
    r.same_zone = allocated.iter().map(|(z, n)| (z.clone(), (*n).max(0) as usize)).collect();

    // Steps 2 and 3, once per possible give/receive outcome.
    let (moves, complete) = giving_and_receiving(&alloc, &allocated);
    r.outcomes_complete = complete;
    for (giving, receiving) in moves {
        let mut w = work.to_vec();
        let (_, moved) = redistribute(&mut w, &allocatable, &giving, &receiving);
        r.outcomes.push(outcome_of(&w, t, giving, receiving, moved));
    }
    // `len(allocatedHintsByZone) == 0` cannot happen after a successful getAllocations (it
    // needs at least 2 ready endpoints, each counted for its zone); kept as Go has it.
    if allocated.is_empty() {
        r.event = Some(Event::disabled(MSG_NO_ALLOCATED_HINTS, t));
        r.allocations = None;
        strip(work);
        r.outcomes = vec![outcome_of(work, t, BTreeMap::new(), BTreeMap::new(), vec![])];
        return;
    }
    if !opts.hints_previously_populated {
        r.event = Some(Event {
            event_type: EventType::Normal,
            reason: REASON_ENABLED.into(),
            message: format!("{MSG_ENABLED}, addressType: {t}"),
        });
    }
}

/// `redistributeHints`: the first ready endpoints of each giving zone, taking the slices in
/// `order`, are hinted for a receiving zone instead of their own. Receivers are taken in
/// zone-name order (Go takes them in map order: any receiver with quota left is possible).
/// Returns the change of hinted endpoints per zone and the endpoints moved.
pub fn redistribute(
    slices: &mut [Slice],
    order: &[usize],
    giving: &BTreeMap<String, usize>,
    receiving: &BTreeMap<String, usize>,
) -> (BTreeMap<String, i64>, Vec<EndpointRef>) {
    let mut g = giving.clone();
    let mut rc = receiving.clone();
    let mut diff = BTreeMap::new();
    let mut moved = Vec::new();
    for &si in order {
        for ei in 0..slices[si].endpoints.len() {
            let e = &mut slices[si].endpoints[ei];
            if !e.controller_ready() {
                continue;
            }
            if g.is_empty() || rc.is_empty() {
                return (diff, moved);
            }
            let Some(zone) = e.zone.clone().filter(|z| !z.is_empty()) else { continue };
            let Some(left) = g.get_mut(&zone) else { continue };
            let Some(to) = rc.keys().next().cloned() else { continue };
            e.hints = Some(Hints::zone(&to));
            *left -= 1;
            if *left == 0 {
                g.remove(&zone);
            }
            if let Some(q) = rc.get_mut(&to) {
                *q -= 1;
                if *q == 0 {
                    rc.remove(&to);
                }
            }
            *diff.entry(to).or_insert(0) += 1;
            *diff.entry(zone).or_insert(0) -= 1;
            moved.push(EndpointRef { slice: si, endpoint: ei });
        }
    }
    (diff, moved)
}

#[cfg(test)]
#[path = "hints_tests.rs"]
mod tests;
