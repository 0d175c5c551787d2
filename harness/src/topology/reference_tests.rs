//! The validation cases of `shared/reference/topology-hints.md` §4, one table and one loop:
//! upstream `TestAddHints` (A), `TestSetNodes` (S), `Test_getGivingAndReceivingZones` (G),
//! `Test_redistributeHints` (R), `Test_getHintsByZone` (H), kube-proxy's
//! `TestCategorizeEndpoints` (K), and the reference's derived cases (D).

use std::collections::BTreeMap;

use super::hints::{self, Allocation, ControllerOptions, EventType};
use super::proxy::{self, ProxyNode, ProxyOptions};
use super::{Cpu, Endpoint, Hints, Node, RoutingMode, ServiceConfig, Slice, SyncState, TrafficPolicy};

type Pairs<T> = Vec<(&'static str, T)>;

enum Check {
    /// `reconcile` in Auto mode with injected `cpuRatiosByZone` (`None` = nil).
    AddHints {
        ratios: Option<Pairs<f64>>,
        create: Vec<Vec<Endpoint>>,
        update: Vec<Vec<Endpoint>>,
        /// `forZones[0]` per endpoint, in slice order.
        hints: Vec<Option<&'static str>>,
        counts: Pairs<usize>,
        event: (EventType, &'static str, &'static str),
    },
    /// `SetNodes`: `None` ratios = insufficient.
    SetNodes {
        nodes: Vec<Node>,
        ratios: Option<Pairs<f64>>,
        cpu_millis: Pairs<u128>,
    },
    GivingReceiving {
        desired: Pairs<f64>,
        allocated: Pairs<i64>,
        giving: Pairs<usize>,
        receiving: Pairs<usize>,
    },
    Redistribute {
        endpoints: Vec<Endpoint>,
        giving: Pairs<usize>,
        receiving: Pairs<usize>,
        diff: Pairs<i64>,
    },
    /// `getHintsByZone`: `None` = the slice must be rewritten.
    HintsByZone {
        endpoints: Vec<Endpoint>,
        allocated: Pairs<i64>,
        maximum: Pairs<usize>,
        want: Option<Pairs<i64>>,
    },
    /// kube-proxy on node "this-node"; `None` lists are nil upstream, `Some([])` empty sets.
    Proxy {
        zone: Option<&'static str>,
        svc: ServiceConfig,
        endpoints: Vec<Endpoint>,
        cluster: Option<Vec<&'static str>>,
        local: Option<Vec<&'static str>>,
        all: Vec<&'static str>,
        has_any: Option<bool>,
    },
    /// Nodes (zone, millicores) and ready endpoints per zone; every possible outcome must
    /// give these counts, or the refusal message.
    Derived {
        cpu: Pairs<u64>,
        ready: Pairs<usize>,
        want: Result<Pairs<usize>, &'static str>,
    },
}

struct Case {
    id: &'static str,
    name: &'static str,
    check: Check,
}

fn ep(addr: &str, zone: &str) -> Endpoint {
    Endpoint { address: addr.into(), zone: Some(zone.into()), ready: Some(true), ..Default::default() }
}

fn ep_ready(addr: &str, zone: &str, ready: Option<bool>) -> Endpoint {
    Endpoint { ready, ..ep(addr, zone) }
}

fn hinted(addr: &str, zone: &str) -> Endpoint {
    Endpoint { hints: Some(Hints::zone(zone)), ..ep(addr, zone) }
}

/// kube-proxy test endpoint: hints for these zones; `local` = on "this-node".
fn kp(addr: &str, zones: &[&str], local: bool) -> Endpoint {
    Endpoint {
        address: addr.into(),
        node: Some(if local { "this-node" } else { "other-node" }.into()),
        zone: zones.first().map(|z| z.to_string()),
        ready: Some(true),
        serving: Some(true),
        terminating: Some(false),
        hints: if zones.is_empty() {
            None
        } else {
            Some(Hints { for_zones: zones.iter().map(|z| z.to_string()).collect(), for_nodes: vec![] })
        },
    }
}

fn unready(mut e: Endpoint) -> Endpoint {
    e.ready = Some(false);
    e
}

fn node(zone: &str, millis: u64, ready: bool, control_plane: bool) -> Node {
    Node { ready, control_plane, ..Node::new(format!("n-{zone}-{millis}"), zone, Cpu::from_millis(millis)) }
}

fn node_port(itp: TrafficPolicy, etp: TrafficPolicy) -> ServiceConfig {
    ServiceConfig {
        internal_traffic_policy: itp,
        external_traffic_policy: etp,
        externally_accessible: true,
        ..Default::default()
    }
}

const INSUFFICIENT_NODE_INFO: &str =
    "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes, addressType: IPv4";
const ENABLED: (EventType, &str, &str) =
    (EventType::Normal, "TopologyAwareHintsEnabled", "Topology Aware Hints has been enabled, addressType: IPv4");

fn cases() -> Vec<Case> {
    use Check::*;
    use TrafficPolicy::{Cluster, Local};
    let warn = |m: &'static str| (EventType::Warning, "TopologyAwareHintsDisabled", m);
    let k_eps = || {
        vec![
            kp("10.1.2.3", &["a"], true),
            kp("10.1.2.4", &["b"], true),
            kp("10.1.2.5", &["c"], false),
            kp("10.1.2.6", &["a"], false),
        ]
    };
    vec![
        // --- TestAddHints
        Case { id: "A1", name: "empty", check: AddHints { ratios: None, create: vec![], update: vec![], hints: vec![], counts: vec![], event: warn(INSUFFICIENT_NODE_INFO) } },
        Case {
            id: "A2",
            name: "slice to create, no zone ratios",
            check: AddHints { ratios: None, create: vec![vec![ep("10.1.2.3", "a")]], update: vec![], hints: vec![None], counts: vec![], event: warn(INSUFFICIENT_NODE_INFO) },
        },
        Case {
            id: "A3",
            name: "slice to create with 2 endpoints, zone ratios require 3",
            check: AddHints {
                ratios: Some(vec![("a", 0.3), ("b", 0.4), ("c", 0.3)]),
                create: vec![vec![ep("10.1.2.3", "a"), ep("10.1.2.4", "b")]],
                update: vec![],
                hints: vec![None, None],
                counts: vec![],
                event: warn("Insufficient number of endpoints (2 endpoints, 3 zones), addressType: IPv4"),
            },
        },
        Case {
            id: "A4",
            name: "slice to create with 2 endpoints, zone ratios only require 2",
            check: AddHints {
                ratios: Some(vec![("a", 0.45), ("b", 0.55)]),
                create: vec![vec![ep("10.1.2.3", "a"), ep("10.1.2.4", "b")]],
                update: vec![],
                hints: vec![Some("a"), Some("b")],
                counts: vec![("a", 1), ("b", 1)],
                event: ENABLED,
            },
        },
        Case {
            id: "A5",
            name: "slice to create with 2 ready, 1 unready, 1 unknown endpoints, zone ratios only require 2",
            check: AddHints {
                ratios: Some(vec![("a", 0.45), ("b", 0.55)]),
                create: vec![vec![ep("10.1.2.3", "a"), ep("10.1.2.4", "b"), ep_ready("10.1.2.5", "b", Some(false)), ep_ready("10.1.2.6", "b", None)]],
                update: vec![],
                hints: vec![Some("a"), Some("b"), None, None],
                counts: vec![("a", 1), ("b", 1)],
                event: ENABLED,
            },
        },
        Case {
            id: "A6",
            name: "slices to create and update within 3 zone threshold",
            check: AddHints {
                ratios: Some(vec![("a", 0.35), ("b", 0.35), ("c", 0.30)]),
                create: vec![vec![ep("10.1.2.3", "a"), ep("10.1.2.4", "b")], vec![ep("10.1.3.3", "c"), ep("10.1.3.4", "c"), ep("10.1.3.4", "a")]],
                update: vec![vec![ep("10.2.2.3", "a"), ep("10.2.2.4", "a")], vec![ep("10.2.3.3", "b"), ep("10.2.3.4", "c"), ep("10.2.3.4", "a")]],
                hints: vec![Some("b"), Some("b"), Some("c"), Some("c"), Some("a"), Some("a"), Some("a"), Some("b"), Some("c"), Some("a")],
                counts: vec![("a", 4), ("b", 3), ("c", 3)],
                event: ENABLED,
            },
        },
        // --- TestSetNodes
        Case { id: "S1", name: "empty", check: SetNodes { nodes: vec![], ratios: None, cpu_millis: vec![] } },
        Case { id: "S2", name: "single node", check: SetNodes { nodes: vec![node("a", 1000, true, false)], ratios: None, cpu_millis: vec![] } },
        Case {
            id: "S3",
            name: "single zone",
            check: SetNodes { nodes: vec![node("a", 1000, true, false), node("a", 1000, true, false)], ratios: None, cpu_millis: vec![] },
        },
        Case {
            id: "S4",
            name: "2 zones",
            check: SetNodes {
                nodes: vec![node("a", 1000, true, false), node("b", 1000, true, false)],
                ratios: Some(vec![("a", 0.5), ("b", 0.5)]),
                cpu_millis: vec![("a", 1000), ("b", 1000)],
            },
        },
        Case {
            id: "S5",
            name: "2 zones, unready node in 1, ready node in 1",
            check: SetNodes { nodes: vec![node("a", 1000, false, false), node("b", 1000, true, false)], ratios: None, cpu_millis: vec![] },
        },
        Case {
            id: "S6",
            name: "2 zones, control plane node in 1, ready node in 1",
            check: SetNodes { nodes: vec![node("a", 1000, true, false), node("b", 1000, true, true)], ratios: None, cpu_millis: vec![] },
        },
        Case {
            id: "S7",
            name: "2 zones, unready node in 1, ready node in 2",
            check: SetNodes {
                nodes: vec![node("a", 1000, true, false), node("b", 1000, true, false), node("b", 1000, false, false)],
                ratios: Some(vec![("a", 0.5), ("b", 0.5)]),
                cpu_millis: vec![("a", 1000), ("b", 1000)],
            },
        },
        Case {
            id: "S8",
            name: "2 zones, control plane node in 1, ready node in 2",
            check: SetNodes {
                nodes: vec![node("a", 1000, true, false), node("b", 1000, true, false), node("b", 1000, true, true)],
                ratios: Some(vec![("a", 0.5), ("b", 0.5)]),
                cpu_millis: vec![("a", 1000), ("b", 1000)],
            },
        },
        Case {
            id: "S9",
            name: "3 zones, 4 nodes in 1, 2 nodes in 1, 1 node in 1",
            check: SetNodes {
                nodes: vec![
                    node("a", 1000, true, false),
                    node("a", 1000, true, false),
                    node("a", 1000, true, false),
                    node("a", 2000, true, false),
                    node("b", 3000, true, false),
                    node("b", 1500, true, false),
                    node("c", 500, true, false),
                ],
                ratios: Some(vec![("a", 0.5), ("b", 0.45), ("c", 0.05)]),
                cpu_millis: vec![("a", 5000), ("b", 4500), ("c", 500)],
            },
        },
        // --- Test_getGivingAndReceivingZones
        Case { id: "G1", name: "empty", check: GivingReceiving { desired: vec![], allocated: vec![], giving: vec![], receiving: vec![] } },
        Case {
            id: "G2",
            name: "simple allocation with no need for rebalancing",
            check: GivingReceiving { desired: vec![("a", 1.2), ("b", 1.1), ("c", 1.0)], allocated: vec![("a", 1), ("b", 1), ("c", 1)], giving: vec![], receiving: vec![] },
        },
        Case {
            id: "G3",
            name: "preference for same zone even when giving an extra endpoint would result in slightly better distribution",
            check: GivingReceiving { desired: vec![("a", 5.1), ("b", 5.1), ("c", 5.8)], allocated: vec![("a", 16)], giving: vec![("a", 10)], receiving: vec![("b", 5), ("c", 5)] },
        },
        Case {
            id: "G4",
            name: "when 2 zones need < 1 endpoint, give to zone that needs endpoint most",
            check: GivingReceiving { desired: vec![("a", 5.0), ("b", 5.6), ("c", 5.4)], allocated: vec![("a", 16)], giving: vec![("a", 11)], receiving: vec![("b", 6), ("c", 5)] },
        },
        Case {
            id: "G5",
            name: "when 2 zones have extra endpoints, give from zone with most extra",
            check: GivingReceiving { desired: vec![("a", 5.0), ("b", 5.6), ("c", 5.4)], allocated: vec![("b", 8), ("c", 8)], giving: vec![("b", 2), ("c", 3)], receiving: vec![("a", 5)] },
        },
        Case {
            id: "G6",
            name: "ensure function can handle unexpected data (more allocated than allocations)",
            check: GivingReceiving { desired: vec![("a", 5.0), ("b", 5.0), ("c", 5.0)], allocated: vec![("a", 6), ("b", 6), ("c", 6)], giving: vec![], receiving: vec![] },
        },
        Case {
            id: "G7",
            name: "ensure function can handle unexpected data (negative allocations)",
            check: GivingReceiving { desired: vec![("a", -5.0), ("b", -5.0), ("c", -5.0)], allocated: vec![("a", 6), ("b", 6), ("c", 6)], giving: vec![], receiving: vec![] },
        },
        Case {
            id: "G8",
            name: "ensure function can handle unexpected data (negative allocated)",
            check: GivingReceiving { desired: vec![("a", 5.0), ("b", 5.0), ("c", 5.0)], allocated: vec![("a", -4), ("b", -3), ("c", -2)], giving: vec![], receiving: vec![] },
        },
        Case {
            id: "G9",
            name: "ensure function can handle unexpected data (negative for 1 zone)",
            check: GivingReceiving {
                desired: vec![("a", 5.0), ("b", 5.0), ("c", 5.0)],
                allocated: vec![("a", -40), ("b", 20), ("c", 20)],
                giving: vec![("b", 15), ("c", 15)],
                receiving: vec![("a", 30)],
            },
        },
        // --- Test_redistributeHints
        Case {
            id: "R1",
            name: "single endpoint",
            check: Redistribute { endpoints: vec![hinted("10.1.2.3", "a")], giving: vec![("a", 1)], receiving: vec![("b", 1)], diff: vec![("a", -1), ("b", 1)] },
        },
        Case {
            id: "R2",
            name: "endpoints from 1 zone redistributed to 2 other zones",
            check: Redistribute {
                endpoints: vec![hinted("10.1.2.3", "a"), hinted("10.1.2.4", "a"), hinted("10.1.2.5", "a")],
                giving: vec![("a", 2)],
                receiving: vec![("b", 1), ("c", 1)],
                diff: vec![("a", -2), ("b", 1), ("c", 1)],
            },
        },
        // --- Test_getHintsByZone
        Case {
            id: "H1",
            name: "single zone hint",
            check: HintsByZone { endpoints: vec![hinted("10.1.2.3", "a")], allocated: vec![], maximum: vec![("a", 3)], want: Some(vec![("a", 1)]) },
        },
        Case {
            id: "H2",
            name: "endpoint without hints",
            check: HintsByZone { endpoints: vec![ep("10.1.2.3", "a")], allocated: vec![], maximum: vec![("a", 3)], want: None },
        },
        Case {
            id: "H3",
            name: "endpoint with empty forZones",
            check: HintsByZone {
                endpoints: vec![Endpoint { hints: Some(Hints::default()), ..ep("10.1.2.3", "a") }],
                allocated: vec![],
                maximum: vec![("a", 3)],
                want: None,
            },
        },
        Case {
            id: "H4",
            name: "hint for a zone without allocation",
            check: HintsByZone { endpoints: vec![hinted("10.1.2.3", "z")], allocated: vec![], maximum: vec![("a", 3)], want: None },
        },
        Case {
            id: "H5",
            name: "2 hints for a with 1 already allocated and a maximum of 2",
            check: HintsByZone { endpoints: vec![hinted("10.1.2.3", "a"), hinted("10.1.2.4", "a")], allocated: vec![("a", 1)], maximum: vec![("a", 2)], want: None },
        },
        Case {
            id: "H6",
            name: "unready and unknown endpoints are skipped",
            check: HintsByZone {
                endpoints: vec![hinted("10.1.2.3", "a"), unready(ep("10.1.2.4", "a")), ep_ready("10.1.2.5", "a", None)],
                allocated: vec![],
                maximum: vec![("a", 3)],
                want: Some(vec![("a", 1)]),
            },
        },
        // --- TestCategorizeEndpoints
        Case {
            id: "K1",
            name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
            check: Proxy {
                zone: Some("a"),
                svc: ServiceConfig::default(),
                endpoints: vec![kp("10.1.2.3", &["a"], false), kp("10.1.2.4", &["b"], false), kp("10.1.2.5", &["c"], false), kp("10.1.2.6", &["a"], false)],
                cluster: Some(vec!["10.1.2.3", "10.1.2.6"]),
                local: None,
                all: vec!["10.1.2.3", "10.1.2.6"],
                has_any: None,
            },
        },
        Case {
            id: "K2",
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            check: Proxy {
                zone: Some("a"),
                svc: node_port(Cluster, Local),
                endpoints: k_eps(),
                cluster: Some(vec!["10.1.2.3", "10.1.2.6"]),
                local: Some(vec!["10.1.2.3", "10.1.2.4"]),
                all: vec!["10.1.2.3", "10.1.2.4", "10.1.2.6"],
                has_any: None,
            },
        },
        Case {
            id: "K3",
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            check: Proxy {
                zone: Some("a"),
                svc: node_port(Local, Cluster),
                endpoints: k_eps(),
                cluster: Some(vec!["10.1.2.3", "10.1.2.6"]),
                local: Some(vec!["10.1.2.3", "10.1.2.4"]),
                all: vec!["10.1.2.3", "10.1.2.4", "10.1.2.6"],
                has_any: None,
            },
        },
        Case {
            id: "K4",
            name: "empty node labels",
            check: Proxy { zone: None, svc: ServiceConfig::default(), endpoints: vec![kp("10.1.2.3", &["a"], false)], cluster: Some(vec!["10.1.2.3"]), local: None, all: vec!["10.1.2.3"], has_any: None },
        },
        Case {
            id: "K5",
            name: "empty zone label",
            check: Proxy { zone: Some(""), svc: ServiceConfig::default(), endpoints: vec![kp("10.1.2.3", &["a"], false)], cluster: Some(vec!["10.1.2.3"]), local: None, all: vec!["10.1.2.3"], has_any: None },
        },
        Case {
            id: "K6",
            name: "node in different zone, no endpoint filtering",
            check: Proxy { zone: Some("b"), svc: ServiceConfig::default(), endpoints: vec![kp("10.1.2.3", &["a"], false)], cluster: Some(vec!["10.1.2.3"]), local: None, all: vec!["10.1.2.3"], has_any: None },
        },
        Case {
            id: "K7",
            name: "unready endpoint",
            check: Proxy {
                zone: Some("a"),
                svc: ServiceConfig::default(),
                endpoints: vec![kp("10.1.2.3", &["a"], false), kp("10.1.2.4", &["b"], false), kp("10.1.2.5", &["c"], false), unready(kp("10.1.2.6", &["a"], false))],
                cluster: Some(vec!["10.1.2.3"]),
                local: None,
                all: vec!["10.1.2.3"],
                has_any: None,
            },
        },
        Case {
            id: "K8",
            name: "only unready endpoints in same zone (should not filter)",
            check: Proxy {
                zone: Some("a"),
                svc: ServiceConfig::default(),
                endpoints: vec![unready(kp("10.1.2.3", &["a"], false)), kp("10.1.2.4", &["b"], false), kp("10.1.2.5", &["c"], false), unready(kp("10.1.2.6", &["a"], false))],
                cluster: Some(vec!["10.1.2.4", "10.1.2.5"]),
                local: None,
                all: vec!["10.1.2.4", "10.1.2.5"],
                has_any: None,
            },
        },
        Case {
            id: "K9",
            name: "missing hints, no filtering applied",
            check: Proxy {
                zone: Some("a"),
                svc: ServiceConfig::default(),
                endpoints: vec![kp("10.1.2.3", &["a"], false), kp("10.1.2.4", &["b"], false), kp("10.1.2.5", &[], false), kp("10.1.2.6", &["a"], false)],
                cluster: Some(vec!["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]),
                local: None,
                all: vec!["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"],
                has_any: None,
            },
        },
        Case {
            id: "K10",
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            check: Proxy {
                zone: Some("c"),
                svc: ServiceConfig::default(),
                endpoints: vec![kp("10.1.2.3", &["a", "b", "c"], false), kp("10.1.2.4", &["b", "c"], false), kp("10.1.2.5", &["b", "d"], false), kp("10.1.2.6", &["c"], false)],
                cluster: Some(vec!["10.1.2.3", "10.1.2.4", "10.1.2.6"]),
                local: None,
                all: vec!["10.1.2.3", "10.1.2.4", "10.1.2.6"],
                has_any: None,
            },
        },
        Case {
            id: "K11",
            name: "conflicting topology and localness require merging allEndpoints",
            check: Proxy {
                zone: Some("a"),
                svc: node_port(Cluster, Local),
                endpoints: vec![kp("10.0.0.0", &["a"], true), kp("10.0.0.1", &["b"], true), kp("10.0.0.2", &["a"], false), kp("10.0.0.3", &["b"], false)],
                cluster: Some(vec!["10.0.0.0", "10.0.0.2"]),
                local: Some(vec!["10.0.0.0", "10.0.0.1"]),
                all: vec!["10.0.0.0", "10.0.0.1", "10.0.0.2"],
                has_any: None,
            },
        },
        Case {
            id: "K12",
            name: "internalTrafficPolicy: Local, with empty endpoints",
            check: Proxy {
                zone: None,
                svc: ServiceConfig { internal_traffic_policy: Local, ..Default::default() },
                endpoints: vec![],
                cluster: None,
                local: Some(vec![]),
                all: vec![],
                has_any: Some(false),
            },
        },
        Case {
            id: "K13",
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            check: Proxy {
                zone: None,
                svc: ServiceConfig { internal_traffic_policy: Local, ..Default::default() },
                endpoints: vec![kp("10.0.0.0", &[], false), kp("10.0.0.1", &[], false)],
                cluster: None,
                local: Some(vec![]),
                all: vec![],
                has_any: Some(true),
            },
        },
        // --- DERIVED (not upstream)
        Case {
            id: "D1",
            name: "40/40/20 CPU with 4/4/4 endpoints is refused in f64 (minimums 5+5+3)",
            check: Derived {
                cpu: vec![("a", 4000), ("b", 4000), ("c", 2000)],
                ready: vec![("a", 4), ("b", 4), ("c", 4)],
                want: Err("Unable to allocate minimum required endpoints to each zone without exceeding overload threshold (12 endpoints, 3 zones), addressType: IPv4"),
            },
        },
        Case {
            id: "D2",
            name: "40/40/20 CPU with 5/5/3 endpoints needs no moves",
            check: Derived { cpu: vec![("a", 4000), ("b", 4000), ("c", 2000)], ready: vec![("a", 5), ("b", 5), ("c", 3)], want: Ok(vec![("a", 5), ("b", 5), ("c", 3)]) },
        },
        Case {
            id: "D3",
            name: "the KEP example: 20/16/14 cores, 10 endpoints in a",
            check: Derived { cpu: vec![("a", 20_000), ("b", 16_000), ("c", 14_000)], ready: vec![("a", 10)], want: Ok(vec![("a", 4), ("b", 3), ("c", 3)]) },
        },
        Case {
            id: "D4",
            name: "3 equal zones with 3/3/2 endpoints is refused (minimums 3+3+3 > 8)",
            check: Derived {
                cpu: vec![("a", 1000), ("b", 1000), ("c", 1000)],
                ready: vec![("a", 3), ("b", 3), ("c", 2)],
                want: Err("Unable to allocate minimum required endpoints to each zone without exceeding overload threshold (8 endpoints, 3 zones), addressType: IPv4"),
            },
        },
        Case {
            id: "D5",
            name: "3 equal zones, 7 endpoints in a",
            check: Derived { cpu: vec![("a", 1000), ("b", 1000), ("c", 1000)], ready: vec![("a", 7)], want: Ok(vec![("a", 3), ("b", 2), ("c", 2)]) },
        },
    ]
}

fn map<T: Clone>(p: &Pairs<T>) -> BTreeMap<String, T> {
    p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn addrs(eps: &[Endpoint], idx: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = idx.iter().map(|&i| eps[i].address.clone()).collect();
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn run(check: &Check) -> Result<(), String> {
    match check {
        Check::AddHints { ratios, create, update, hints: want_hints, counts, event } => {
            let mut slices = vec![];
            for (state, list) in [(SyncState::Create, create), (SyncState::Update, update)] {
                for (i, eps) in list.iter().enumerate() {
                    slices.push(Slice { state, ..Slice::new(format!("s{i}"), eps.clone()) });
                }
            }
            let ratios = ratios.as_ref().map(map);
            let r = hints::reconcile(
                ratios.as_ref(),
                &slices,
                &ServiceConfig::with_mode(RoutingMode::Auto),
                &ControllerOptions::default(),
            );
            if r.outcomes.len() != 1 {
                return Err(format!("{} outcomes, want 1", r.outcomes.len()));
            }
            let got: Vec<Option<String>> =
                r.outcomes[0].hints.iter().flatten().map(|h| h.as_ref().map(|h| h.for_zones.join(","))).collect();
            let want: Vec<Option<String>> = want_hints.iter().map(|h| h.map(String::from)).collect();
            if got != want {
                return Err(format!("hints {got:?}, want {want:?}"));
            }
            if r.outcomes[0].counts != map(counts) {
                return Err(format!("counts {:?}, want {counts:?}", r.outcomes[0].counts));
            }
            let ev = r.event.as_ref().ok_or("no event")?;
            if (ev.event_type, ev.reason.as_str(), ev.message.as_str()) != *event {
                return Err(format!("event {ev:?}, want {event:?}"));
            }
            Ok(())
        }
        Check::SetNodes { nodes, ratios, cpu_millis } => {
            let c = hints::zone_ratios(nodes);
            if c.ratios != ratios.as_ref().map(map) {
                return Err(format!("ratios {:?}, want {ratios:?}", c.ratios));
            }
            if c.cpu_millis_by_zone != map(cpu_millis) {
                return Err(format!("cpu {:?}, want {cpu_millis:?}", c.cpu_millis_by_zone));
            }
            Ok(())
        }
        Check::GivingReceiving { desired, allocated, giving, receiving } => {
            let alloc = desired
                .iter()
                .map(|(z, d)| {
                    (z.to_string(), Allocation { ratio: 0.0, proportional: *d, desired: *d, minimum: 0, maximum: 0 })
                })
                .collect();
            let (outcomes, complete) = hints::giving_and_receiving(&alloc, &map(allocated));
            let want = vec![(map(giving), map(receiving))];
            if outcomes != want || !complete {
                return Err(format!("{outcomes:?}, want {want:?}"));
            }
            Ok(())
        }
        Check::Redistribute { endpoints, giving, receiving, diff } => {
            let mut slices = vec![Slice::new("s", endpoints.clone())];
            let (got, moved) = hints::redistribute(&mut slices, &[0], &map(giving), &map(receiving));
            if got != map(diff) {
                return Err(format!("{got:?}, want {diff:?}"));
            }
            let n: usize = giving.iter().map(|(_, n)| n).sum();
            if moved.len() != n {
                return Err(format!("moved {moved:?}, want {n} endpoints"));
            }
            Ok(())
        }
        Check::HintsByZone { endpoints, allocated, maximum, want } => {
            let alloc = maximum
                .iter()
                .map(|(z, m)| {
                    (z.to_string(), Allocation { ratio: 0.0, proportional: 0.0, desired: 0.0, minimum: 0, maximum: *m })
                })
                .collect();
            let got = hints::hints_by_zone(&Slice::new("s", endpoints.clone()), &map(allocated), &alloc);
            if got != want.as_ref().map(map) {
                return Err(format!("{got:?}, want {want:?}"));
            }
            Ok(())
        }
        Check::Proxy { zone, svc, endpoints, cluster, local, all, has_any } => {
            let node = ProxyNode::new("this-node", *zone);
            let c = proxy::categorize(endpoints, svc, &node, &ProxyOptions::default());
            let got_cluster = c.cluster.as_ref().map(|l| addrs(endpoints, l));
            let got_local = c.local.as_ref().map(|l| addrs(endpoints, l));
            if got_cluster != cluster.as_ref().map(|v| strs(v)) {
                return Err(format!("cluster {got_cluster:?}, want {cluster:?}"));
            }
            if got_local != local.as_ref().map(|v| strs(v)) {
                return Err(format!("local {got_local:?}, want {local:?}"));
            }
            if addrs(endpoints, &c.all) != strs(all) {
                return Err(format!("all {:?}, want {all:?}", addrs(endpoints, &c.all)));
            }
            if let Some(h) = has_any {
                if c.has_any_endpoints != *h {
                    return Err(format!("has_any_endpoints {}, want {h}", c.has_any_endpoints));
                }
            }
            Ok(())
        }
        Check::Derived { cpu, ready, want } => {
            let nodes: Vec<Node> =
                cpu.iter().map(|(z, m)| Node::new(format!("node-{z}"), z, Cpu::from_millis(*m))).collect();
            let mut eps = vec![];
            for (z, n) in ready {
                for i in 0..*n {
                    eps.push(Endpoint::ready(format!("10.{}.0.{i}", eps.len()), format!("node-{z}"), z));
                }
            }
            let svc = ServiceConfig::with_mode(RoutingMode::Auto);
            let r = hints::predict(&nodes, &[Slice::new("s", eps)], &svc, &ControllerOptions::default());
            match want {
                Ok(counts) => {
                    for o in &r.outcomes {
                        if o.counts != map(counts) {
                            return Err(format!("an outcome has counts {:?}, want {counts:?}", o.counts));
                        }
                    }
                    if !r.outcomes_complete {
                        return Err("outcomes incomplete".into());
                    }
                    Ok(())
                }
                Err(msg) => match &r.event {
                    Some(e) if e.message == *msg && e.event_type == EventType::Warning => Ok(()),
                    other => Err(format!("event {other:?}, want warning {msg:?}")),
                },
            }
        }
    }
}

#[test]
fn every_reference_case_gives_the_upstream_result() {
    let cases = cases();
    let failures: Vec<String> =
        cases.iter().filter_map(|c| run(&c.check).err().map(|e| format!("{} ({}): {e}", c.id, c.name))).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), cases.len(), "case ids are unique");
}
