//! The live form of the hints doctor, without the cluster: given the doctor's analysis of
//! objects read from a cluster (`crate::live` reads them), sets the hints the controller
//! actually wrote beside the prediction, endpoint by endpoint, with a verdict.
//!
//! The prediction is a fresh sync, so a difference is not always a fault. The verdict says
//! which explanation fits, checking them in this order:
//!
//! - **agree**: the hints are the canonical prediction;
//! - **map-order**: they are another outcome Go's random map order allows (ties);
//! - **kept**: a running controller keeps them: its next sync, with these slices unchanged,
//!   leaves them as they are (valid older hints survive; a fresh sync would write others);
//! - **controller-version**: the cluster's version explains it (a feature gate's default, a
//!   field or annotation its controller does not know yet);
//! - **not-synced**: the next sync would rewrite them: the controller has not synced the
//!   Service since something changed (or, if it persists, allocates differently).
//!
//! The topology events the controller recorded on the Service are shown as evidence.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::doctor::{self, Analysis};
use super::hints::{self, ControllerOptions, EndpointRef, Reconciliation};
use super::proxy::{self, ProxyNode, ProxyOptions};
use super::{Endpoint, Hints, RoutingMode, Slice, SyncState};

/// The newest Kubernetes minor whose EndpointSlice controller was read for the port
/// (`k8s.io/endpointslice` up to v0.37; its allocation is unchanged since 1.28).
pub const NEWEST_MODELLED_MINOR: u32 = 37;
/// The oldest minor with the same allocation code (the move to staging, mid 2023).
pub const OLDEST_MODELLED_MINOR: u32 = 28;

/// How the verdict explains the hints the controller wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Agree,
    MapOrder,
    Kept,
    ControllerVersion,
    NotSynced,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::MapOrder => "map-order",
            Verdict::Kept => "kept",
            Verdict::ControllerVersion => "controller-version",
            Verdict::NotSynced => "not-synced",
        }
    }
}

/// The live part of a report: where the objects came from and how the hints compare.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// `server (context c)`.
    pub cluster: String,
    pub context: String,
    pub server: String,
    /// The API server's `gitVersion`.
    pub server_version: String,
    pub namespace: String,
    /// The hints are a possible result of the predicted sync (verdict agree or map-order).
    pub agree: bool,
    pub verdict: Verdict,
    /// The verdict in one sentence.
    pub summary: String,
    /// The endpoints whose hints are not the canonical prediction.
    pub differences: Vec<Difference>,
    /// The likely reasons, in words.
    pub reasons: Vec<String>,
    /// `TopologyAwareHints*` events on the Service, oldest first.
    pub events: Vec<RecordedEvent>,
    /// Where kube-proxy on a node of each zone routes with the hints written now (same zones
    /// as the report's `routing`).
    pub routing_now: Vec<RoutingNow>,
}

/// kube-proxy's routing from a node of one zone (hosting no endpoint), with the actual hints.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingNow {
    /// null: nodes without a zone label.
    pub zone: Option<String>,
    pub filtered: bool,
    pub reason: doctor::RoutingReason,
    pub detail: String,
    pub endpoints: Vec<String>,
    /// The same endpoints as with the predicted hints (canonical outcome).
    pub as_predicted: bool,
}

/// One endpoint whose actual hints are not the predicted ones.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub address: String,
    pub slice: String,
    pub zone: Option<String>,
    pub ready: Option<bool>,
    /// Predicted `forZones` (canonical outcome); null: no hints.
    pub predicted: Option<Vec<String>>,
    /// Every `forZones` the prediction allows, when Go's map order decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_possible: Option<Vec<Option<Vec<String>>>>,
    /// `forZones` the controller wrote; null: no hints.
    pub actual: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_node_hints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_node_hints: Option<Vec<String>>,
    pub reason: Verdict,
    pub detail: String,
}

/// An event the controller recorded on the Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub reason: String,
    pub message: String,
    pub count: Option<i32>,
    /// RFC 3339.
    pub last_seen: Option<String>,
}

/// Where the objects came from, and what the comparison needs besides them.
#[derive(Debug, Clone, Default)]
pub struct LiveContext {
    pub cluster: String,
    pub context: String,
    pub server: String,
    pub server_version: String,
    pub namespace: String,
    pub events: Vec<RecordedEvent>,
    /// Why the events are missing, when they could not be read.
    pub events_error: Option<String>,
    /// The PreferSameTrafficDistribution gate was taken from the server version's default
    /// (no `--prefer-same-traffic-distribution`).
    pub gate_from_version: bool,
}

/// `(major, minor)` of a `gitVersion` such as `v1.33.1`, `v1.29.3-eks-adc7111`, `v1.30.2+k3s1`.
pub fn minor_version(git_version: &str) -> Option<(u32, u32)> {
    let v = git_version.trim().trim_start_matches('v');
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor: String = it.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// The PreferSameTrafficDistribution gate's default: beta and on from 1.34, alpha (off) in
/// 1.33, absent before. Unknown versions get today's default, on.
pub fn gate_default(version: Option<(u32, u32)>) -> bool {
    match version {
        Some((1, m)) => m >= 34,
        _ => true,
    }
}

/// `None` for absent or empty hints; zones and nodes sorted: how two hints are compared.
fn norm(h: &Option<Hints>) -> Option<Hints> {
    let h = h.as_ref()?;
    if h.for_zones.is_empty() && h.for_nodes.is_empty() {
        return None;
    }
    let mut h = h.clone();
    h.for_zones.sort();
    h.for_nodes.sort();
    Some(h)
}

/// Whether `actual` (hints per `[slice][endpoint]`) is one of `rec`'s possible outcomes.
/// An endpoint moved to another zone may get any receiving zone with quota left, so those
/// are matched by count rather than one by one.
fn is_possible_outcome(rec: &Reconciliation, actual: &[Vec<Option<Hints>>]) -> bool {
    rec.outcomes.iter().any(|o| {
        let mut received: BTreeMap<&str, usize> = BTreeMap::new();
        let mut same = true;
        for (si, row) in actual.iter().enumerate() {
            for (ei, a) in row.iter().enumerate() {
                let a = norm(a);
                let moved = o.receiving.len() > 1 && o.moved.contains(&EndpointRef { slice: si, endpoint: ei });
                if moved {
                    match &a {
                        Some(h) if h.for_nodes.is_empty() && h.for_zones.len() == 1 => {
                            let z = h.for_zones[0].as_str();
                            match o.receiving.get_key_value(z) {
                                Some((k, _)) => *received.entry(k.as_str()).or_insert(0) += 1,
                                None => same = false,
                            }
                        }
                        _ => same = false,
                    }
                } else if o.hints.get(si).and_then(|r| r.get(ei)).map(norm) != Some(a) {
                    same = false;
                }
            }
        }
        same && received.iter().all(|(z, n)| o.receiving.get(*z).is_some_and(|q| n <= q))
    })
}

/// The next sync of a running controller that finds the slices as they are (unchanged).
fn steady_sync(a: &Analysis) -> Reconciliation {
    let slices: Vec<Slice> = a
        .reconciliation
        .input
        .iter()
        .cloned()
        .map(|mut s| {
            s.state = SyncState::Unchanged;
            s
        })
        .collect();
    let opts = ControllerOptions { hints_previously_populated: true, ..a.options };
    hints::reconcile(a.ratios.as_ref(), &slices, &a.service, &opts)
}

fn fmt_zones(h: &Option<Vec<String>>) -> String {
    match h {
        None => "no hints".into(),
        Some(v) if v.is_empty() => "no zone hint".into(),
        Some(v) => v.join(","),
    }
}

/// Sets the hints the controller wrote beside the prediction: per endpoint `agrees`, and the
/// report's `live` part with the verdict and its reasons.
pub fn compare(a: &mut Analysis, ctx: &LiveContext) {
    let rec = &a.reconciliation;
    let actual: Vec<Vec<Option<Hints>>> =
        rec.input.iter().map(|s| s.endpoints.iter().map(|e| e.hints.clone()).collect()).collect();
    let canonical = &rec.outcomes[0].hints;
    let refs: Vec<EndpointRef> = rec
        .input
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.endpoints.len()).map(move |ei| EndpointRef { slice: si, endpoint: ei }))
        .collect();
    let differs: Vec<bool> =
        refs.iter().map(|r| norm(&actual[r.slice][r.endpoint]) != norm(&canonical[r.slice][r.endpoint])).collect();
    let n_diff = differs.iter().filter(|d| **d).count();

    let steady = steady_sync(a);
    let version = minor_version(&ctx.server_version);
    let actual_hinted = rec
        .input
        .iter()
        .filter(|s| s.managed_by_controller)
        .flat_map(|s| &s.endpoints)
        .any(|e| e.controller_ready() && norm(&e.hints).is_some());
    let predicted_hinted = a.report.hints_enabled;
    let version_reason =
        version_explanation(a, version, &ctx.server_version, actual_hinted, predicted_hinted, ctx.gate_from_version);

    let verdict = if n_diff == 0 {
        Verdict::Agree
    } else if is_possible_outcome(rec, &actual) {
        Verdict::MapOrder
    } else if is_possible_outcome(&steady, &actual) {
        Verdict::Kept
    } else if version_reason.is_some() {
        Verdict::ControllerVersion
    } else {
        Verdict::NotSynced
    };

    let mut differences = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        a.report.endpoints[i].agrees = Some(!differs[i]);
        if !differs[i] {
            continue;
        }
        let e = &rec.input[r.slice].endpoints[r.endpoint];
        let act = norm(&actual[r.slice][r.endpoint]);
        let pred = norm(&canonical[r.slice][r.endpoint]);
        // In a mixed state some slices are kept and others wait for the sync: per endpoint.
        let reason = match verdict {
            Verdict::NotSynced | Verdict::ControllerVersion
                if steady.possible_hints(*r).iter().any(|h| norm(h) == act) =>
            {
                Verdict::Kept
            }
            v => v,
        };
        let mut detail = format!(
            "predicted {}, actual {}",
            fmt_zones(&pred.as_ref().map(|h| h.for_zones.clone())),
            fmt_zones(&act.as_ref().map(|h| h.for_zones.clone()))
        );
        let node_hints =
            |h: &Option<Hints>| h.as_ref().filter(|h| !h.for_nodes.is_empty()).map(|h| h.for_nodes.clone());
        if node_hints(&pred) != node_hints(&act) {
            let _ = write!(
                detail,
                "; node hints predicted {}, actual {}",
                node_hints(&pred).map(|v| v.join(",")).unwrap_or_else(|| "none".into()),
                node_hints(&act).map(|v| v.join(",")).unwrap_or_else(|| "none".into())
            );
        }
        if e.ready == Some(false) {
            detail.push_str(": the endpoint is not ready, kube-proxy ignores its hints");
        } else if act.as_ref().is_none_or(|h| h.for_zones.is_empty()) && actual_hinted {
            detail.push_str(": a ready endpoint without a zone hint makes kube-proxy on every node route cluster-wide");
        }
        let possible = rec.possible_hints(*r);
        differences.push(Difference {
            address: e.address.clone(),
            slice: rec.input[r.slice].name.clone(),
            zone: e.zone.clone(),
            ready: e.ready,
            predicted: pred.as_ref().map(|h| h.for_zones.clone()),
            predicted_possible: (possible.len() > 1)
                .then(|| possible.iter().map(|h| norm(h).map(|h| h.for_zones)).collect()),
            actual: act.as_ref().map(|h| h.for_zones.clone()),
            predicted_node_hints: node_hints(&pred),
            actual_node_hints: node_hints(&act),
            reason,
            detail,
        });
    }

    let total = refs.len();
    let summary = match verdict {
        Verdict::Agree => format!("the hints the controller wrote are the predicted ones ({total} endpoints)"),
        Verdict::MapOrder => format!(
            "{n_diff} of {total} endpoints carry other hints than the canonical prediction, as another outcome Go's random map order allows: they agree"
        ),
        Verdict::Kept => format!(
            "{n_diff} of {total} endpoints carry other hints than a fresh sync writes, which a running controller keeps"
        ),
        Verdict::ControllerVersion => format!(
            "{n_diff} of {total} endpoints differ from the prediction: the cluster's controller ({}) behaves differently",
            ctx.server_version
        ),
        Verdict::NotSynced => format!(
            "{n_diff} of {total} endpoints differ from the prediction, and the controller's next sync would rewrite them: it has not synced yet"
        ),
    };
    let reasons = reasons(a, ctx, verdict, version, version_reason, &steady, actual_hinted);
    let routing_now = routing_now(a);
    a.report.live = Some(Comparison {
        cluster: ctx.cluster.clone(),
        context: ctx.context.clone(),
        server: ctx.server.clone(),
        server_version: ctx.server_version.clone(),
        namespace: ctx.namespace.clone(),
        agree: matches!(verdict, Verdict::Agree | Verdict::MapOrder),
        verdict,
        summary,
        differences,
        reasons,
        events: ctx.events.clone(),
        routing_now,
    });
}

/// kube-proxy's routing per zone with the hints the slices carry now.
fn routing_now(a: &Analysis) -> Vec<RoutingNow> {
    let eps: Vec<Endpoint> = a.reconciliation.input.iter().flat_map(|s| s.endpoints.clone()).collect();
    let popts = ProxyOptions { prefer_same_traffic_distribution: a.options.prefer_same_traffic_distribution };
    a.report
        .routing
        .iter()
        .map(|predicted| {
            let zone = predicted.zone.as_deref();
            let c = proxy::categorize(&eps, &a.service, &ProxyNode::in_zone(zone), &popts);
            let (filtered, reason, detail) = doctor::reason_of(&c, &eps, zone);
            let endpoints: Vec<String> = c.internal().iter().map(|&i| eps[i].address.clone()).collect();
            let sorted = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v
            };
            RoutingNow {
                zone: predicted.zone.clone(),
                filtered,
                reason,
                as_predicted: sorted(&endpoints) == sorted(&predicted.endpoints),
                detail,
                endpoints,
            }
        })
        .collect()
}

/// A difference the cluster's version explains: a feature gate's default, or a field or
/// annotation its controller does not know.
fn version_explanation(
    a: &Analysis,
    version: Option<(u32, u32)>,
    git_version: &str,
    actual_hinted: bool,
    predicted_hinted: bool,
    gate_from_version: bool,
) -> Option<String> {
    let svc = &a.service;
    if hints::auto_annotation(svc) {
        let only_new_annotation = svc.topology_aware_hints.is_none();
        return match version {
            Some((1, m)) if m < 27 && only_new_annotation && !actual_hinted => Some(format!(
                "Kubernetes {git_version} predates the service.kubernetes.io/topology-mode annotation (1.27): its controller reads only service.kubernetes.io/topology-aware-hints"
            )),
            _ => None,
        };
    }
    let gate = a.options.prefer_same_traffic_distribution;
    match svc.traffic_distribution.as_deref() {
        Some(td @ ("PreferSameZone" | "PreferSameNode")) => {
            if !gate && actual_hinted {
                Some(format!(
                    "the controller honours spec.trafficDistribution: {td}, so this cluster has the PreferSameTrafficDistribution feature gate on{}: rerun with --prefer-same-traffic-distribution true",
                    if gate_from_version { format!(" although {git_version} leaves it off by default") } else { String::new() }
                ))
            } else if gate && predicted_hinted && !actual_hinted && version.is_some_and(|(ma, mi)| ma == 1 && mi < 34) {
                Some(format!(
                    "on Kubernetes {git_version} the PreferSameTrafficDistribution feature gate is {} and off by default, so the controller ignores spec.trafficDistribution: {td}: rerun with --prefer-same-traffic-distribution false",
                    if version.is_some_and(|(_, mi)| mi >= 33) { "alpha" } else { "not there yet" }
                ))
            } else {
                None
            }
        }
        Some("PreferClose") if predicted_hinted && !actual_hinted => match version {
            Some((1, m)) if m < 31 => Some(format!(
                "on Kubernetes {git_version} spec.trafficDistribution needs the ServiceTrafficDistribution feature gate, on by default only from 1.31: the controller ignores it"
            )),
            _ => None,
        },
        _ => None,
    }
}

fn reasons(
    a: &Analysis,
    ctx: &LiveContext,
    verdict: Verdict,
    version: Option<(u32, u32)>,
    version_reason: Option<String>,
    steady: &Reconciliation,
    actual_hinted: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    match verdict {
        Verdict::Agree => {}
        Verdict::MapOrder => out.push(
            "the prediction is not deterministic: Go's random map order breaks ties between zones, and these hints are another of its possible outcomes"
                .into(),
        ),
        Verdict::Kept => out.push(
            "a running controller keeps hints that are still valid (every ready endpoint hinted, no zone above its maximum, hints on endpoints that are not ready left alone): its next sync leaves these as they are, while a fresh sync (slices recreated) would write the prediction"
                .into(),
        ),
        Verdict::ControllerVersion => out.extend(version_reason),
        Verdict::NotSynced => {
            out.push(
                "the controller's next sync of the Service would rewrite these hints, so it has not synced since the Service, its endpoints or the nodes changed: a sync normally follows within seconds (after node changes only Services whose zones became overloaded are re-synced), so run this again in a moment"
                    .into(),
            );
            if steady.hints_enabled() != a.report.hints_enabled || !a.report.hints_enabled && actual_hinted {
                out.push(format!(
                    "the prediction is {} while the slices {}: the annotation or spec.trafficDistribution changed, or the endpoints or nodes changed enough to {} the allocation",
                    if a.report.hints_enabled { "hints written" } else { "no hints" },
                    if actual_hinted { "carry hints" } else { "carry none" },
                    if a.report.hints_enabled { "allow" } else { "refuse" }
                ));
            }
            let modelled = match version {
                Some((1, m)) if m > NEWEST_MODELLED_MINOR => format!(
                    "this cluster ({}) is newer than the controller modelled (Kubernetes 1.{OLDEST_MODELLED_MINOR}–1.{NEWEST_MODELLED_MINOR})",
                    ctx.server_version
                ),
                Some((1, m)) if m < OLDEST_MODELLED_MINOR => format!(
                    "this cluster ({}) is older than the controller modelled (Kubernetes 1.{OLDEST_MODELLED_MINOR}–1.{NEWEST_MODELLED_MINOR})",
                    ctx.server_version
                ),
                _ => format!("the controller of {} allocates differently than modelled", ctx.server_version),
            };
            out.push(format!(
                "if they stay like this, {modelled}; the Service's events and kube-controller-manager's log say more"
            ));
        }
    }
    if verdict != Verdict::Agree {
        if let Some(latest) = ctx.events.last() {
            let predicted = a.report.event.as_ref();
            let same = predicted.is_some_and(|p| p.reason == latest.reason && p.message == latest.message);
            if !same && latest.reason == hints::REASON_DISABLED && a.report.hints_enabled {
                out.push(format!(
                    "the controller's latest topology event on the Service is {} {}: \"{}\", while the prediction writes hints: it saw other nodes or endpoints then",
                    latest.event_type, latest.reason, latest.message
                ));
            }
        }
    }
    if let Some(why) = &ctx.events_error {
        out.push(format!("the Service's events could not be read ({why}), so the controller's own word is missing"));
    }
    if a.report.mode == RoutingMode::None && !actual_hinted && verdict == Verdict::Agree {
        out.push("no hints are asked for and none are written: kube-proxy routes cluster-wide".into());
    }
    out
}

/// The live part of the table output.
pub fn render_section(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nHints the controller wrote (cluster {}, Kubernetes {}):", c.cluster, c.server_version);
    let _ = writeln!(s, "  verdict: {} — {}", c.verdict.as_str(), c.summary);
    for d in &c.differences {
        let _ = writeln!(
            s,
            "  {} (slice {}, zone {}): {}{}",
            d.address,
            d.slice,
            d.zone.as_deref().unwrap_or("-"),
            d.detail,
            if d.reason != c.verdict { format!(" [{}]", d.reason.as_str()) } else { String::new() }
        );
    }
    for r in &c.reasons {
        let _ = writeln!(s, "  - {r}");
    }
    let changed: Vec<&RoutingNow> = c.routing_now.iter().filter(|r| !r.as_predicted).collect();
    if !changed.is_empty() {
        let _ = writeln!(s, "  kube-proxy now, with the hints written, routes otherwise than predicted:");
        for r in changed {
            let how = match (r.filtered, r.reason) {
                (true, _) => "filtered",
                (false, doctor::RoutingReason::InternalTrafficPolicyLocal) => "node-local",
                (false, _) => "cluster-wide",
            };
            let eps = if r.endpoints.is_empty() { "(nothing)".to_string() } else { r.endpoints.join(", ") };
            let _ = writeln!(s, "    {:<12} {how} — {} -> {eps}", r.zone.as_deref().unwrap_or("(no zone)"), r.detail);
        }
    }
    if c.events.is_empty() {
        let _ = writeln!(s, "  events: no topology event recorded on the Service (or they expired)");
    }
    for e in &c.events {
        let _ = writeln!(
            s,
            "  event: {} {}: \"{}\"{}{}",
            e.event_type,
            e.reason,
            e.message,
            e.count.filter(|n| *n > 1).map(|n| format!(" ×{n}")).unwrap_or_default(),
            e.last_seen.as_ref().map(|t| format!(", last {t}")).unwrap_or_default()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::doctor::{Inputs, Settings};
    use crate::topology::input::{ServiceObject, SliceObject};
    use crate::topology::{Cpu, Endpoint, Node, ServiceConfig};

    fn nodes(zones: &[&str]) -> Vec<Node> {
        zones.iter().map(|z| Node::new(format!("node-{z}"), z, Cpu::from_cores(4))).collect()
    }

    fn ep(i: usize, zone: &str, hint: Option<&str>) -> Endpoint {
        let mut e = Endpoint::ready(format!("10.0.0.{i}"), format!("node-{zone}"), zone);
        e.hints = hint.map(Hints::zone);
        e
    }

    fn inputs(eps: Vec<Endpoint>, svc: ServiceConfig, zones: &[&str]) -> Inputs {
        Inputs {
            nodes: nodes(zones),
            slices: vec![SliceObject {
                namespace: Some("shop".into()),
                service: Some("web".into()),
                slice: Slice::new("web-abc12", eps),
            }],
            service: Some(ServiceObject { namespace: Some("shop".into()), name: "web".into(), config: svc }),
        }
    }

    fn live(i: &Inputs, version: &str) -> Comparison {
        let settings = Settings { live: true, ..Default::default() };
        let mut a = doctor::analyse(i, &settings).unwrap();
        let ctx = LiveContext { server_version: version.into(), ..Default::default() };
        compare(&mut a, &ctx);
        a.report.live.unwrap()
    }

    const ABC: &[&str] = &["a", "b", "c"];

    #[test]
    fn hints_that_are_the_prediction_agree() {
        let eps = (0..6).map(|i| ep(i, ABC[i / 2], Some(ABC[i / 2]))).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC), "v1.33.1");
        assert_eq!((c.verdict, c.agree), (Verdict::Agree, true));
        assert!(c.differences.is_empty());
    }

    #[test]
    fn another_outcome_of_go_map_order_agrees_as_map_order() {
        // 3 equal zones, endpoints 4/1/1 with n = 6: zone a gives 2, b and c each receive 1;
        // which of a's first two endpoints goes to b and which to c is Go's map order.
        let zones = ["a", "a", "a", "a", "b", "c"];
        let hints = ["c", "b", "a", "a", "b", "c"];
        let eps = (0..6).map(|i| ep(i, zones[i], Some(hints[i]))).collect();
        let i = inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC);
        let c = live(&i, "v1.33.1");
        assert_eq!((c.verdict, c.agree), (Verdict::MapOrder, true), "{c:#?}");
        assert_eq!(c.differences.len(), 2);
        assert!(c.differences[0].predicted_possible.is_some());
        // Both to b is no outcome: a quota of one each.
        let hints = ["b", "b", "a", "a", "b", "c"];
        let eps = (0..6).map(|i| ep(i, zones[i], Some(hints[i]))).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC), "v1.33.1");
        assert_ne!(c.verdict, Verdict::MapOrder, "{c:#?}");
        assert!(!c.agree);
    }

    #[test]
    fn valid_older_hints_are_kept_by_a_running_controller() {
        // 7 endpoints (3/2/2) on equal zones: maximum 3 each. A fresh sync hints all for their
        // own zone; one of a's hinted for c is still within every maximum, so it stays.
        let zones = ["a", "a", "a", "b", "b", "c", "c"];
        let hints = ["c", "a", "a", "b", "b", "c", "c"];
        let eps = (0..7).map(|i| ep(i, zones[i], Some(hints[i]))).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC), "v1.33.1");
        assert_eq!((c.verdict, c.agree), (Verdict::Kept, false), "{c:#?}");
        assert_eq!(c.differences.len(), 1);
        assert_eq!(c.differences[0].predicted, Some(vec!["a".to_string()]));
        assert_eq!(c.differences[0].actual, Some(vec!["c".to_string()]));
    }

    #[test]
    fn hints_above_a_zones_maximum_are_not_synced_yet() {
        // 6 endpoints (2/2/2): maximum 2 each, so c with 3 is rewritten at the next sync.
        let zones = ["a", "a", "b", "b", "c", "c"];
        let hints = ["a", "a", "c", "b", "c", "c"];
        let eps = (0..6).map(|i| ep(i, zones[i], Some(hints[i]))).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC), "v1.33.1");
        assert_eq!((c.verdict, c.agree), (Verdict::NotSynced, false), "{c:#?}");
        assert_eq!(c.differences[0].address, "10.0.0.2");
        assert!(c.reasons[0].contains("has not synced"), "{:?}", c.reasons);
    }

    #[test]
    fn a_ready_endpoint_without_a_hint_is_named_with_its_effect_on_kube_proxy() {
        let eps = (0..6).map(|i| ep(i, ABC[i / 2], (i != 5).then_some(ABC[i / 2]))).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::PreferClose), ABC), "v1.33.1");
        assert_eq!(c.verdict, Verdict::NotSynced, "{c:#?}");
        assert!(c.differences[0].detail.contains("route cluster-wide"), "{}", c.differences[0].detail);
    }

    #[test]
    fn prefer_same_zone_without_hints_on_1_33_is_the_gates_default() {
        let eps = (0..3).map(|i| ep(i, ABC[i], None)).collect();
        let svc = ServiceConfig::with_mode(RoutingMode::PreferSameZone);
        let c = live(&inputs(eps, svc, ABC), "v1.33.1");
        assert_eq!(c.verdict, Verdict::ControllerVersion, "{c:#?}");
        assert!(c.reasons[0].contains("--prefer-same-traffic-distribution false"), "{:?}", c.reasons);
        // On 1.34 the gate is on by default: the controller simply has not written them yet.
        let eps = (0..3).map(|i| ep(i, ABC[i], None)).collect();
        let c = live(&inputs(eps, ServiceConfig::with_mode(RoutingMode::PreferSameZone), ABC), "v1.34.0");
        assert_eq!(c.verdict, Verdict::NotSynced, "{c:#?}");
    }

    #[test]
    fn the_controllers_own_refusal_is_cited_when_the_prediction_writes_hints() {
        let eps = (0..6).map(|i| ep(i, ABC[i / 2], None)).collect();
        let i = inputs(eps, ServiceConfig::with_mode(RoutingMode::Auto), ABC);
        let mut a = doctor::analyse(&i, &Settings { live: true, ..Default::default() }).unwrap();
        let ctx = LiveContext {
            server_version: "v1.32.0".into(),
            events: vec![RecordedEvent {
                event_type: "Warning".into(),
                reason: hints::REASON_DISABLED.into(),
                message: "Insufficient number of endpoints (2 endpoints, 3 zones), addressType: IPv4".into(),
                count: Some(4),
                last_seen: Some("2025-06-02T08:20:41Z".into()),
            }],
            ..Default::default()
        };
        compare(&mut a, &ctx);
        let c = a.report.live.unwrap();
        assert_eq!(c.verdict, Verdict::NotSynced);
        assert!(
            c.reasons.iter().any(|r| r.contains("latest topology event") && r.contains("2 endpoints, 3 zones")),
            "{:?}",
            c.reasons
        );
        assert!(c.routing_now.iter().all(|r| !r.filtered), "no hints now: every zone routes cluster-wide");
        assert!(render_section(&c).contains("×4, last 2025-06-02T08:20:41Z"));
    }

    #[test]
    fn versions_are_read_from_git_versions_of_managed_clusters() {
        assert_eq!(minor_version("v1.33.1"), Some((1, 33)));
        assert_eq!(minor_version("v1.29.3-eks-adc7111"), Some((1, 29)));
        assert_eq!(minor_version("v1.30.2+k3s1"), Some((1, 30)));
        assert_eq!(minor_version("1.31"), Some((1, 31)));
        assert_eq!(minor_version("devel"), None);
        assert!(!gate_default(Some((1, 33))));
        assert!(gate_default(Some((1, 34))));
        assert!(gate_default(None));
    }
}
