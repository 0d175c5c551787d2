//! `zonebench hints`: the topology hints doctor.
//!
//! From what kubectl prints (nodes, EndpointSlices, optionally the Service) it predicts,
//! for a fresh sync, the hints the EndpointSlice controller writes ([`super::hints`]) and the
//! endpoints kube-proxy on a node of each zone routes ClusterIP traffic to
//! ([`super::proxy`]), and explains both in words: the failing inequality with its numbers,
//! the endpoint without a hint, the node without a zone label. Without `--service` it
//! answers "what if I set `service.kubernetes.io/topology-mode: Auto`?".
//!
//! Its live form, `zonebench hints -n NAMESPACE SERVICE`, reads the same objects from a
//! cluster and sets the hints the controller actually wrote beside the prediction
//! ([`super::live`]).
//!
//! The JSON output (`-o json`) is pinned by `results/schema/hints.schema.json`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use super::hints::{self, AllocationError, ControllerOptions, Event, Exclusion, Insufficiency, Reconciliation};
use super::input::{InputError, ServiceObject, SliceObject};
use super::proxy::{self, Categorized, Decision, ProxyNode, ProxyOptions};
use super::{AddressType, Endpoint, Hints, Node, RoutingMode, ServiceConfig, Slice, TrafficPolicy};

/// The version of the JSON layout.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// The inputs need a flag to be unambiguous.
    #[error("{0}")]
    Usage(String),
}

/// What the doctor reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub nodes: Vec<Node>,
    pub slices: Vec<SliceObject>,
    pub service: Option<ServiceObject>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub address_type: Option<AddressType>,
    pub prefer_same_traffic_distribution: bool,
    /// The inputs come from a live cluster: the current hints are compared endpoint by
    /// endpoint ([`super::live`]), so the notes leave them out.
    pub live: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { address_type: None, prefer_same_traffic_distribution: true, live: false }
    }
}

/// The doctor's answer; `-o json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The version of this layout (`results/schema/hints.schema.json`).
    pub schema_version: u32,
    /// `namespace/name`, or null without `--service`.
    pub service: Option<String>,
    pub address_type: AddressType,
    pub mode: RoutingMode,
    /// No Service given: `topology-mode: Auto` was assumed.
    pub mode_assumed: bool,
    pub mode_reasons: Vec<String>,
    pub hints_enabled: bool,
    pub event: Option<Event>,
    pub deterministic: bool,
    /// The controller's decision in words, with its numbers.
    pub explanation: Vec<String>,
    pub zones: Vec<ZoneReport>,
    pub endpoints: Vec<EndpointReport>,
    pub routing: Vec<RoutingReport>,
    /// Warnings about the inputs (excluded nodes, absent conditions, stale hints…).
    pub notes: Vec<String>,
    /// Live form only: the hints the controller wrote, set against the prediction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<super::live::Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    pub zone: String,
    pub nodes: usize,
    /// Ready nodes without a control-plane label: the ones whose CPU counts.
    pub eligible_nodes: usize,
    pub cpu_millis: u128,
    pub cpu_ratio: Option<f64>,
    /// Auto: `max(ratio × n, minimum)`; null when there are no ratios or in other modes.
    pub desired: Option<f64>,
    pub minimum: Option<usize>,
    /// Auto, only when the allocation succeeded.
    pub maximum: Option<usize>,
    /// Endpoints with `ready: true` in this zone.
    pub ready_endpoints: usize,
    /// Ready endpoints hinted for this zone (canonical outcome).
    pub hinted_endpoints: usize,
    /// Every possible value of `hinted_endpoints` when the result is not deterministic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hinted_endpoints_possible: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub address: String,
    pub slice: String,
    pub zone: Option<String>,
    pub node: Option<String>,
    /// The `ready` condition as written (null when absent).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// `forZones` after the predicted sync (canonical outcome); null = no hints.
    pub hints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_hints: Option<Vec<String>>,
    /// Every possible `forZones` when Go's map order decides (null entries = no hints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hints_possible: Option<Vec<Option<Vec<String>>>>,
    /// `forZones` in the input slices, as the cluster shows them now (in the live form: what
    /// the controller actually wrote).
    pub current_hints: Option<Vec<String>>,
    /// `forNodes` in the input slices, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_node_hints: Option<Vec<String>>,
    /// Live form only: the current hints (zones and nodes) are the predicted ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agrees: Option<bool>,
    /// The slice is managed by the EndpointSlice controller.
    pub managed: bool,
    /// Expected share of ClusterIP traffic relative to an even spread over the ready
    /// endpoints (1.0 = fair), with each zone's traffic proportional to its CPU.
    pub expected_load: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingReason {
    FilteredToZone,
    FilteredToNode,
    NoHints,
    EndpointWithoutHint,
    NoHintForZone,
    NodeWithoutZoneLabel,
    NoReadyEndpoints,
    InternalTrafficPolicyLocal,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
    /// null: nodes without a zone label.
    pub zone: Option<String>,
    pub filtered: bool,
    pub reason: RoutingReason,
    pub detail: String,
    /// Addresses ClusterIP traffic from a node of this zone (hosting no endpoint) goes to.
    pub endpoints: Vec<String>,
    /// Every address some outcome routes to, when the result is not deterministic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints_possible: Option<Vec<String>>,
    /// Nodes of this zone that route differently (node hints, internalTrafficPolicy: Local).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRouting>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRouting {
    pub node: String,
    pub filtered: bool,
    pub reason: RoutingReason,
    pub detail: String,
    pub endpoints: Vec<String>,
}

/// The report in the chosen format.
pub fn render(report: &Report, format: OutputFormat) -> Result<String, DoctorError> {
    Ok(match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(report).map_err(|e| DoctorError::Usage(e.to_string()))?;
            s.push('\n');
            s
        }
        OutputFormat::Table => render_table(report),
    })
}

fn key(ns: &Option<String>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The slices of the Service: by `--service`, else the only Service the slices name.
fn select_slices<'a>(inputs: &'a Inputs, notes: &mut Vec<String>) -> Result<Vec<&'a SliceObject>, DoctorError> {
    if let Some(svc) = &inputs.service {
        let ours: Vec<&SliceObject> = inputs
            .slices
            .iter()
            .filter(|s| {
                s.service.as_deref() == Some(svc.name.as_str())
                    && (s.namespace.is_none() || svc.namespace.is_none() || s.namespace == svc.namespace)
            })
            .collect();
        if ours.is_empty() {
            return Err(DoctorError::Usage(format!(
                "no EndpointSlice is labelled kubernetes.io/service-name={} (found: {})",
                svc.name,
                service_names(&inputs.slices).join(", ")
            )));
        }
        let others = inputs.slices.len() - ours.len();
        if others > 0 {
            notes.push(format!("{others} slices of other Services were left out"));
        }
        return Ok(ours);
    }
    let names = service_names(&inputs.slices);
    if names.len() > 1 {
        return Err(DoctorError::Usage(format!(
            "the slices belong to {} Services ({}): pass --service, or select one with `kubectl get endpointslices -l kubernetes.io/service-name=NAME`",
            names.len(),
            names.join(", ")
        )));
    }
    Ok(inputs.slices.iter().collect())
}

fn service_names(slices: &[SliceObject]) -> Vec<String> {
    let set: BTreeSet<String> = slices
        .iter()
        .map(|s| match &s.service {
            Some(n) => key(&s.namespace, n),
            None => "(no kubernetes.io/service-name label)".into(),
        })
        .collect();
    set.into_iter().collect()
}

/// Predicts and explains; see the module docs.
pub fn diagnose(inputs: &Inputs, settings: &Settings) -> Result<Report, DoctorError> {
    analyse(inputs, settings).map(|a| a.report)
}

/// The report and what it was computed from, for comparing with what a cluster shows.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub report: Report,
    /// The fresh sync; its `input` holds the Service's slices of the report's address type
    /// with their current hints, in the order of `report.endpoints`.
    pub reconciliation: Reconciliation,
    /// The controller's CPU ratios (`None` = nil).
    pub ratios: Option<std::collections::BTreeMap<String, f64>>,
    pub service: ServiceConfig,
    pub options: ControllerOptions,
}

/// [`diagnose`], keeping the reconciliation behind the report.
pub fn analyse(inputs: &Inputs, settings: &Settings) -> Result<Analysis, DoctorError> {
    let mut notes = Vec::new();
    let selected = select_slices(inputs, &mut notes)?;
    let present: BTreeSet<AddressType> = selected.iter().map(|s| s.slice.address_type).collect();
    let address_type = match settings.address_type {
        Some(t) => t,
        None if present.contains(&AddressType::IPv6) && !present.contains(&AddressType::IPv4) => AddressType::IPv6,
        None => AddressType::IPv4,
    };
    if !selected.is_empty() && !present.contains(&address_type) {
        let have: Vec<&str> = present.iter().map(|t| t.as_str()).collect();
        return Err(DoctorError::Usage(format!(
            "no {address_type} EndpointSlice (the slices are {})",
            have.join(", ")
        )));
    }
    for t in present.iter().filter(|t| **t != address_type) {
        notes.push(match t {
            AddressType::Fqdn => {
                "FQDN slices are left out: the controller neither writes nor reads hints for them".into()
            }
            _ => format!("the Service also has {t} slices: hints are allocated per address type (--address-type {t})"),
        });
    }
    let slices: Vec<Slice> =
        selected.iter().filter(|s| s.slice.address_type == address_type).map(|s| s.slice.clone()).collect();

    let (svc, mode_assumed, service) = match &inputs.service {
        Some(s) => (s.config.clone(), false, Some(key(&s.namespace, &s.name))),
        None => (ServiceConfig::with_mode(RoutingMode::Auto), true, None),
    };
    let opts = ControllerOptions {
        prefer_same_traffic_distribution: settings.prefer_same_traffic_distribution,
        hints_previously_populated: false,
        address_type,
    };
    let census = hints::zone_ratios(&inputs.nodes);
    let rec = hints::reconcile(census.ratios.as_ref(), &slices, &svc, &opts);
    let mut mode_reasons = rec.mode_reasons.clone();
    if mode_assumed {
        mode_reasons.insert(0, "no --service given: assuming service.kubernetes.io/topology-mode: Auto".into());
    }
    let popts = ProxyOptions { prefer_same_traffic_distribution: settings.prefer_same_traffic_distribution };

    // Every endpoint of the Service, in slice order, as kube-proxy sees them.
    let refs: Vec<hints::EndpointRef> = slices
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.endpoints.len()).map(move |ei| hints::EndpointRef { slice: si, endpoint: ei }))
        .collect();
    let flat = |written: &[Slice]| -> Vec<Endpoint> {
        refs.iter().map(|r| written[r.slice].endpoints[r.endpoint].clone()).collect()
    };
    let canonical = flat(&rec.slices());

    let zones = zone_reports(inputs, &census, &rec, &slices);
    let routing = routing_reports(inputs, &rec, &svc, &popts, &canonical, &flat);
    let loads = expected_loads(&census, &svc, &canonical, &routing);

    let endpoints: Vec<EndpointReport> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let input_ep = &slices[r.slice].endpoints[r.endpoint];
            let e = &canonical[i];
            let possible = rec.possible_hints(*r);
            EndpointReport {
                address: e.address.clone(),
                slice: slices[r.slice].name.clone(),
                zone: e.zone.clone(),
                node: e.node.clone(),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                hints: e.hints.as_ref().map(|h| h.for_zones.clone()),
                node_hints: e.hints.as_ref().filter(|h| !h.for_nodes.is_empty()).map(|h| h.for_nodes.clone()),
                hints_possible: (possible.len() > 1)
                    .then(|| possible.iter().map(|h| h.as_ref().map(|h| h.for_zones.clone())).collect()),
                current_hints: input_ep.hints.as_ref().map(|h| h.for_zones.clone()),
                current_node_hints: input_ep
                    .hints
                    .as_ref()
                    .filter(|h| !h.for_nodes.is_empty())
                    .map(|h| h.for_nodes.clone()),
                agrees: None,
                managed: slices[r.slice].managed_by_controller,
                expected_load: loads.as_ref().map(|l| l[i]),
            }
        })
        .collect();

    notes.extend(input_notes(inputs, &census, &rec, &slices, &svc, settings.live));
    let report = Report {
        schema_version: SCHEMA_VERSION,
        service,
        address_type,
        mode: rec.mode,
        mode_assumed,
        mode_reasons,
        hints_enabled: rec.hints_enabled(),
        event: rec.event.clone(),
        deterministic: rec.deterministic(),
        explanation: explain(&census, &rec, &slices, &zones),
        zones,
        endpoints,
        routing,
        notes,
        live: None,
    };
    Ok(Analysis { report, reconciliation: rec, ratios: census.ratios, service: svc, options: opts })
}

fn eligible(n: &Node) -> bool {
    n.ready && !n.control_plane
}

fn zone_reports(
    inputs: &Inputs,
    census: &hints::NodeCensus,
    rec: &Reconciliation,
    slices: &[Slice],
) -> Vec<ZoneReport> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.extend(inputs.nodes.iter().filter_map(|n| n.zone.clone()).filter(|z| !z.is_empty()));
    names.extend(slices.iter().flat_map(|s| &s.endpoints).filter_map(|e| e.zone.clone()).filter(|z| !z.is_empty()));
    if let Some(c) = rec.outcomes.first() {
        names.extend(c.counts.keys().cloned());
    }
    let n_ready: usize = slices
        .iter()
        .filter(|s| s.managed_by_controller)
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.controller_ready())
        .count();
    let auto = rec.mode == RoutingMode::Auto;
    let deterministic = rec.deterministic();
    names
        .into_iter()
        .map(|z| {
            let in_zone = |n: &&Node| n.zone.as_deref() == Some(z.as_str());
            let ratio = census.ratios.as_ref().and_then(|r| r.get(&z)).copied();
            let alloc = rec.allocations.as_ref().and_then(|a| a.get(&z));
            // Shown even when the allocation is refused: they are the failing inequality.
            let (desired, minimum) = match (alloc, ratio) {
                (Some(a), _) => (Some(a.desired), Some(a.minimum)),
                (None, Some(r)) if auto => {
                    let (p, m) = hints::minimum_for(r, n_ready);
                    (Some(p.max(m as f64)), Some(m))
                }
                _ => (None, None),
            };
            ZoneReport {
                nodes: inputs.nodes.iter().filter(in_zone).count(),
                eligible_nodes: inputs.nodes.iter().filter(in_zone).filter(|n| eligible(n)).count(),
                cpu_millis: inputs
                    .nodes
                    .iter()
                    .filter(in_zone)
                    .filter(|n| eligible(n))
                    .fold(super::Cpu::ZERO, |a, n| a.saturating_add(n.allocatable_cpu))
                    .millis(),
                cpu_ratio: ratio,
                desired,
                minimum,
                maximum: alloc.map(|a| a.maximum),
                ready_endpoints: slices
                    .iter()
                    .filter(|s| s.managed_by_controller)
                    .flat_map(|s| &s.endpoints)
                    .filter(|e| e.controller_ready() && e.zone.as_deref() == Some(z.as_str()))
                    .count(),
                hinted_endpoints: rec.outcomes[0].counts.get(&z).copied().unwrap_or(0),
                hinted_endpoints_possible: (!deterministic).then(|| rec.possible_counts(&z)),
                zone: z,
            }
        })
        .collect()
}

/// Whether kube-proxy filters, why, and the reason in words with its numbers.
pub(super) fn reason_of(c: &Categorized, eps: &[Endpoint], zone: Option<&str>) -> (bool, RoutingReason, String) {
    let n_ready = eps.iter().filter(|e| e.ready.unwrap_or(true)).count();
    let shown = c.internal().len();
    match &c.decision {
        Decision::FilteredToZone => (
            true,
            RoutingReason::FilteredToZone,
            format!("{shown} of {n_ready} ready endpoints: those hinted for zone {}", zone.unwrap_or("")),
        ),
        Decision::FilteredToNode => {
            (true, RoutingReason::FilteredToNode, format!("{shown} of {n_ready} ready endpoints: those hinted for this node"))
        }
        Decision::EndpointWithoutHint { .. }
            if eps.iter().filter(|e| e.ready.unwrap_or(true)).all(|e| e.hints.as_ref().is_none_or(|h| h.for_zones.is_empty())) =>
        {
            (false, RoutingReason::NoHints, format!("all {n_ready} ready endpoints: no endpoint has a zone hint"))
        }
        Decision::EndpointWithoutHint { endpoint } => {
            let e = &eps[*endpoint];
            let why = if e.ready.is_none() {
                " (its ready condition is absent: kube-proxy counts it as ready, the controller does not and gave it no hint)"
            } else {
                ""
            };
            (
                false,
                RoutingReason::EndpointWithoutHint,
                format!("all {n_ready} ready endpoints: endpoint {} is ready without a zone hint{why}, which turns filtering off on every node", e.address),
            )
        }
        Decision::NoHintForZone => (
            false,
            RoutingReason::NoHintForZone,
            format!("all {n_ready} ready endpoints: no ready endpoint is hinted for zone {}", zone.unwrap_or("")),
        ),
        Decision::NodeWithoutZone => (
            false,
            RoutingReason::NodeWithoutZoneLabel,
            format!("all {n_ready} ready endpoints: a node without a topology.kubernetes.io/zone label never filters"),
        ),
        Decision::NoReadyEndpoints => (
            false,
            RoutingReason::NoReadyEndpoints,
            format!("no endpoint is ready: {shown} serving and terminating endpoints, without topology"),
        ),
        Decision::LocalOnly => (
            false,
            RoutingReason::InternalTrafficPolicyLocal,
            "internalTrafficPolicy: Local: each node uses only its own endpoints (drops traffic without one); hints are ignored".into(),
        ),
    }
}

fn addrs(eps: &[Endpoint], idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| eps[i].address.clone()).collect()
}

fn routing_reports(
    inputs: &Inputs,
    rec: &Reconciliation,
    svc: &ServiceConfig,
    popts: &ProxyOptions,
    canonical: &[Endpoint],
    flat: &dyn Fn(&[Slice]) -> Vec<Endpoint>,
) -> Vec<RoutingReport> {
    let mut set: BTreeSet<Option<String>> =
        inputs.nodes.iter().map(|n| n.zone.clone().filter(|z| !z.is_empty())).collect();
    if inputs.nodes.is_empty() {
        set.extend(canonical.iter().map(|e| e.zone.clone().filter(|z| !z.is_empty())));
    }
    // Zones by name, then nodes without a zone label.
    let zones: Vec<Option<String>> =
        set.iter().filter(|z| z.is_some()).chain(set.iter().filter(|z| z.is_none())).cloned().collect();
    let deterministic = rec.deterministic();
    zones
        .into_iter()
        .map(|zone| {
            let c = proxy::categorize(canonical, svc, &ProxyNode::in_zone(zone.as_deref()), popts);
            let (filtered, reason, detail) = reason_of(&c, canonical, zone.as_deref());
            let endpoints = addrs(canonical, c.internal());
            let endpoints_possible = (!deterministic).then(|| {
                let mut all: BTreeSet<usize> = c.internal().iter().copied().collect();
                for o in &rec.outcomes {
                    // Within one outcome a moved endpoint may go to any receiver: hint all of
                    // them for this zone to see every endpoint it can route to.
                    let mut w = rec.slices_of(o);
                    if let Some(z) = zone.as_ref().filter(|z| o.receiving.contains_key(*z)) {
                        for m in &o.moved {
                            w[m.slice].endpoints[m.endpoint].hints = Some(Hints::zone(z));
                        }
                    }
                    let eps = flat(&w);
                    let c = proxy::categorize(&eps, svc, &ProxyNode::in_zone(zone.as_deref()), popts);
                    all.extend(c.internal().iter().copied());
                }
                all.into_iter().map(|i| canonical[i].address.clone()).collect()
            });
            let nodes = inputs
                .nodes
                .iter()
                .filter(|n| n.zone.clone().filter(|z| !z.is_empty()) == zone)
                .filter_map(|n| {
                    let nc = proxy::categorize(canonical, svc, &ProxyNode::new(&n.name, n.zone.as_deref()), popts);
                    let eps = addrs(canonical, nc.internal());
                    if eps == endpoints && nc.decision == c.decision {
                        return None;
                    }
                    let (filtered, reason, detail) = reason_of(&nc, canonical, zone.as_deref());
                    Some(NodeRouting { node: n.name.clone(), filtered, reason, detail, endpoints: eps })
                })
                .collect();
            RoutingReport { zone, filtered, reason, detail, endpoints, endpoints_possible, nodes }
        })
        .collect()
}

/// Each endpoint's share of ClusterIP traffic relative to an even spread, when each zone
/// sends traffic in proportion to its CPU (the controller's own assumption).
fn expected_loads(
    census: &hints::NodeCensus,
    svc: &ServiceConfig,
    eps: &[Endpoint],
    routing: &[RoutingReport],
) -> Option<Vec<f64>> {
    let ratios = census.ratios.as_ref()?;
    if svc.internal_traffic_policy == TrafficPolicy::Local {
        return None;
    }
    let n_ready = eps.iter().filter(|e| e.ready.unwrap_or(true)).count();
    if n_ready == 0 {
        return None;
    }
    let mut load = vec![0.0; eps.len()];
    for r in routing {
        let Some(ratio) = r.zone.as_ref().and_then(|z| ratios.get(z)) else { continue };
        if r.endpoints.is_empty() {
            continue;
        }
        let share = ratio / r.endpoints.len() as f64;
        for (i, e) in eps.iter().enumerate() {
            if r.endpoints.contains(&e.address) {
                load[i] += share;
            }
        }
    }
    Some(load.into_iter().map(|l| (l * n_ready as f64 * 1000.0).round() / 1000.0).collect())
}

fn explain(census: &hints::NodeCensus, rec: &Reconciliation, slices: &[Slice], zones: &[ZoneReport]) -> Vec<String> {
    let mut out = Vec::new();
    match rec.mode {
        RoutingMode::Auto => {}
        RoutingMode::None => {
            out.push("the controller writes no hints, so kube-proxy on every node uses every ready endpoint".into());
            return out;
        }
        m => {
            out.push(format!(
                "{m}: every ready endpoint is hinted for its own zone{}; no CPU arithmetic, no minimums, no events",
                if m == RoutingMode::PreferSameNode { " and its own node" } else { "" }
            ));
            let unzoned =
                slices.iter().flat_map(|s| &s.endpoints).filter(|e| e.controller_ready() && e.zone.is_none()).count();
            if unzoned > 0 {
                out.push(format!(
                    "{unzoned} ready endpoints have no zone, so they get no zone hint and no node filters by zone"
                ));
            }
            return out;
        }
    }
    let n: usize = slices
        .iter()
        .filter(|s| s.managed_by_controller)
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.controller_ready())
        .count();
    match &rec.allocation_error {
        Some(AllocationError::InsufficientNodeInfo) => out.push(match &census.insufficient {
            Some(Insufficiency::NodeWithoutZone(n)) => format!("node {n} is Ready and not a control-plane node but has no topology.kubernetes.io/zone label: one such node makes the controller drop the CPU ratios for the whole cluster"),
            Some(Insufficiency::NodeWithoutCpu(n)) => format!("node {n} is Ready and not a control-plane node but has no allocatable CPU: one such node makes the controller drop the CPU ratios for the whole cluster"),
            Some(Insufficiency::NoEligibleNodes) => "no node is Ready without a control-plane label: there is no CPU to share out".into(),
            Some(Insufficiency::OneZone(z)) => format!("every Ready worker node is in zone {z}: hints need at least 2 zones"),
            None => "the controller has no CPU ratios".into(),
        }),
        Some(AllocationError::NodesReadyInOneZoneOnly) => out.push("nodes are ready in one zone only".into()),
        Some(AllocationError::InsufficientEndpoints { endpoints, zones }) => out.push(format!(
            "{zones} zones > {endpoints} ready endpoints: every zone needs at least one endpoint (ready: true; absent counts as not ready)"
        )),
        Some(AllocationError::MinimumExceedsThreshold { endpoints, minimums, .. }) => {
            let terms: Vec<String> = minimums.iter().map(|(z, m)| format!("{m} ({z})")).collect();
            let sum: usize = minimums.values().sum();
            out.push(format!(
                "Σ minimum = {} = {sum} > {endpoints} ready endpoints, where a zone's minimum = ceil(cpu_ratio × {endpoints} × 0.8333…) keeps its endpoints under 120% of their fair share",
                terms.join(" + ")
            ));
            if let Some(ok) = census.ratios.as_ref().and_then(|r| (endpoints + 1..=endpoints + 1000).find(|&k| hints::allocations(Some(r), k).is_ok())) {
                out.push(format!("with these zones {ok} ready endpoints would be the next count the controller accepts"));
            }
        }
        None => {}
    }
    if let Some(r) = rec.endpoint_without_zone {
        let e = &slices[r.slice].endpoints[r.endpoint];
        out.push(format!(
            "endpoint {} (node {}) is ready but has no zone: the controller removes every hint of the Service (pods on a node without a zone label, e.g. an excluded control-plane node)",
            e.address,
            e.node.as_deref().unwrap_or("unknown")
        ));
    }
    if let Some(alloc) = &rec.allocations {
        if rec.endpoint_without_zone.is_none() {
            let mins: Vec<String> = alloc.iter().map(|(z, a)| format!("{} ({z})", a.minimum)).collect();
            let sum: usize = alloc.values().map(|a| a.minimum).sum();
            out.push(format!(
                "{n} ready endpoints ≥ {} zones and Σ minimum = {} = {sum} ≤ {n}: hints are written",
                alloc.len(),
                mins.join(" + ")
            ));
            let o = &rec.outcomes[0];
            let same = &rec.same_zone;
            let first = if rec.deterministic() { "" } else { "in the first possible outcome, " };
            for (g, k) in &o.giving {
                let d = alloc.get(g).map(|a| a.desired).unwrap_or(0.0);
                let which = if *k == 1 {
                    "its first endpoint (in slice order) is".to_string()
                } else {
                    format!("its first {k} endpoints (in slice order) are")
                };
                out.push(format!(
                    "{first}zone {g} has {} ready endpoints for a desired {d:.2}: {which} hinted for {}",
                    same.get(g).copied().unwrap_or(0),
                    o.receiving.iter().map(|(z, k)| format!("{z} ({k})")).collect::<Vec<_>>().join(", ")
                ));
            }
            if o.giving.is_empty() {
                out.push("every ready endpoint is hinted for its own zone: no zone is far enough from its desired count to move one".into());
            }
            let foreign: Vec<&str> = same.keys().filter(|z| !alloc.contains_key(*z)).map(String::as_str).collect();
            if !foreign.is_empty() {
                out.push(format!(
                    "zones {} have endpoints but no eligible node: those endpoints keep their own zone's hint and are never given away",
                    foreign.join(", ")
                ));
            }
            if !rec.deterministic() {
                let varying: Vec<String> = zones
                    .iter()
                    .filter_map(|z| z.hinted_endpoints_possible.as_ref().filter(|p| p.len() > 1).map(|p| (z, p)))
                    .map(|(z, p)| {
                        format!("{} gets {}", z.zone, p.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" or "))
                    })
                    .collect();
                out.push(if varying.is_empty() {
                    format!(
                        "not deterministic: the counts are fixed, but which moved endpoint goes to which of {} depends on Go's random map order",
                        o.receiving.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                } else {
                    format!(
                        "not deterministic: Go's random map order breaks ties between equal excesses or deficits ({} possible outcomes): {}",
                        rec.outcomes.len(),
                        varying.join("; ")
                    )
                });
            }
        }
    }
    out
}

fn input_notes(
    inputs: &Inputs,
    census: &hints::NodeCensus,
    rec: &Reconciliation,
    slices: &[Slice],
    svc: &ServiceConfig,
    live: bool,
) -> Vec<String> {
    let mut notes = vec!["fresh-sync prediction: a running controller keeps older hints while they stay valid, and re-syncs a Service on node changes only when a zone becomes overloaded".to_string()];
    let cp: Vec<&str> =
        census.excluded.iter().filter(|(_, e)| *e == Exclusion::ControlPlane).map(|(n, _)| n.as_str()).collect();
    if !cp.is_empty() {
        notes.push(format!("control-plane nodes left out of the CPU ratios: {}", cp.join(", ")));
    }
    let nr: Vec<&str> =
        census.excluded.iter().filter(|(_, e)| *e == Exclusion::NotReady).map(|(n, _)| n.as_str()).collect();
    if !nr.is_empty() {
        notes.push(format!("nodes that are not Ready, left out of the CPU ratios: {}", nr.join(", ")));
    }
    let unlabelled: Vec<&str> =
        inputs.nodes.iter().filter(|n| n.zone.as_deref().unwrap_or("").is_empty()).map(|n| n.name.as_str()).collect();
    if !unlabelled.is_empty() {
        notes.push(format!(
            "nodes without a topology.kubernetes.io/zone label: {} (kube-proxy there never filters)",
            unlabelled.join(", ")
        ));
    }
    for s in slices.iter().filter(|s| !s.managed_by_controller) {
        notes.push(format!(
            "slice {} is not managed by endpointslice-controller.k8s.io: the controller keeps its hints as they are, kube-proxy still uses its endpoints",
            s.name
        ));
    }
    let absent: Vec<&str> =
        slices.iter().flat_map(|s| &s.endpoints).filter(|e| e.ready.is_none()).map(|e| e.address.as_str()).collect();
    if !absent.is_empty() {
        notes.push(format!(
            "endpoints without a ready condition: {}: the controller counts them not ready (no hint), kube-proxy counts them ready",
            absent.join(", ")
        ));
    }
    let written = rec.slices();
    let stale = slices
        .iter()
        .zip(&written)
        .filter(|(s, _)| s.managed_by_controller)
        .flat_map(|(s, w)| s.endpoints.iter().zip(&w.endpoints))
        .filter(|(a, b)| a.hints != b.hints)
        .count();
    let hinted_now = slices.iter().flat_map(|s| &s.endpoints).any(|e| e.hints.is_some());
    if live {
        // The live comparison says this endpoint by endpoint, with the likely reasons.
    } else if stale > 0 && !hinted_now {
        notes.push("the slices carry no hints now: the controller writes these at its next sync of the Service".into());
    } else if stale > 0 {
        notes.push(format!("{stale} endpoints carry other hints now than this prediction (hints from older settings, or older hints a running controller keeps while they stay valid)"));
    }
    if svc.internal_traffic_policy == TrafficPolicy::Local {
        notes.push(
            "internalTrafficPolicy: Local: ClusterIP traffic never leaves the node, hints do not matter for it".into(),
        );
    }
    notes
}

fn fmt_hints(h: &Option<Vec<String>>) -> String {
    match h {
        None => "-".into(),
        Some(v) if v.is_empty() => "(empty)".into(),
        Some(v) => v.join(","),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<width$}  ", width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// The report in words and tables.
pub fn render_table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Service {} ({}): mode {}{}",
        r.service.as_deref().unwrap_or("(none given)"),
        r.address_type,
        r.mode,
        if r.mode_assumed { " (assumed)" } else { "" }
    );
    for m in &r.mode_reasons {
        let _ = writeln!(s, "  {m}");
    }
    let _ = writeln!(s, "\nController (fresh sync): hints {}", if r.hints_enabled { "written" } else { "not written" });
    if let Some(e) = &r.event {
        let _ = writeln!(s, "  event: {:?} {}: \"{}\"", e.event_type, e.reason, e.message);
    }
    for x in &r.explanation {
        let _ = writeln!(s, "  {x}");
    }
    let _ = writeln!(s, "\nZones:");
    let rows: Vec<Vec<String>> = r
        .zones
        .iter()
        .map(|z| {
            vec![
                z.zone.clone(),
                format!("{}/{}", z.eligible_nodes, z.nodes),
                format!("{}m", z.cpu_millis),
                z.cpu_ratio.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into()),
                z.ready_endpoints.to_string(),
                z.desired.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
                opt(&z.minimum),
                opt(&z.maximum),
                match &z.hinted_endpoints_possible {
                    Some(p) if p.len() > 1 => p.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" or "),
                    _ => z.hinted_endpoints.to_string(),
                },
            ]
        })
        .collect();
    s.push_str(&table(&["ZONE", "NODES", "CPU", "RATIO", "READY", "DESIRED", "MIN", "MAX", "HINTED"], &rows));
    let _ = writeln!(s, "\nEndpoints:");
    let rows: Vec<Vec<String>> = r
        .endpoints
        .iter()
        .map(|e| {
            let hint = match &e.hints_possible {
                Some(p) => p.iter().map(fmt_hints).collect::<Vec<_>>().join(" | "),
                None => {
                    let mut h = fmt_hints(&e.hints);
                    if let Some(n) = &e.node_hints {
                        let _ = write!(h, " node:{}", n.join(","));
                    }
                    h
                }
            };
            let mut now = fmt_hints(&e.current_hints);
            if let Some(n) = &e.current_node_hints {
                let _ = write!(now, " node:{}", n.join(","));
            }
            let mut row = vec![
                e.address.clone(),
                opt(&e.zone),
                opt(&e.node),
                match e.ready {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "(absent)".into(),
                },
                hint,
                now,
            ];
            if let Some(same) = e.agrees {
                row.push(if same { "yes".into() } else { "NO".into() });
            }
            row.push(e.expected_load.map(|l| format!("{l:.2}x")).unwrap_or_else(|| "-".into()));
            row
        })
        .collect();
    let headers: &[&str] = if r.live.is_some() {
        &["ADDRESS", "ZONE", "NODE", "READY", "HINT", "ACTUAL", "SAME", "LOAD"]
    } else {
        &["ADDRESS", "ZONE", "NODE", "READY", "HINT", "NOW", "LOAD"]
    };
    s.push_str(&table(headers, &rows));
    if let Some(l) = &r.live {
        s.push_str(&super::live::render_section(l));
    }
    let _ = writeln!(
        s,
        "\nkube-proxy routing of ClusterIP traffic, from a node in each zone{}:",
        if r.live.is_some() { ", with the predicted hints" } else { "" }
    );
    let how = |filtered: bool, reason: RoutingReason| match (filtered, reason) {
        (true, _) => "filtered",
        (false, RoutingReason::InternalTrafficPolicyLocal) => "node-local",
        (false, _) => "cluster-wide",
    };
    for z in &r.routing {
        let _ = writeln!(
            s,
            "  {:<12} {} — {}",
            z.zone.as_deref().unwrap_or("(no zone)"),
            how(z.filtered, z.reason),
            z.detail
        );
        let _ = writeln!(
            s,
            "  {:<12}   -> {}",
            "",
            if z.endpoints.is_empty() { "(nothing)".into() } else { z.endpoints.join(", ") }
        );
        if let Some(p) = &z.endpoints_possible {
            let _ = writeln!(s, "  {:<12}   possible, depending on Go's map order: {}", "", p.join(", "));
        }
        for n in &z.nodes {
            let eps = if n.endpoints.is_empty() { "(nothing)".into() } else { n.endpoints.join(", ") };
            if n.reason == z.reason {
                let _ = writeln!(s, "  {:<12}   node {}: -> {eps}", "", n.node);
            } else {
                let _ = writeln!(
                    s,
                    "  {:<12}   node {}: {} — {} -> {eps}",
                    "",
                    n.node,
                    how(n.filtered, n.reason),
                    n.detail
                );
            }
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in &r.notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    s
}
