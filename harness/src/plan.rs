//! A scenario expanded into what a run does: the agents to place, the Services to create
//! and the ordered steps (one measurement each). Pure: no platform, no I/O, so expansion is
//! tested on its own.

use zonebench_agent::spec::{TestKind, TestSpec};

use crate::model::RoutingMode;
use crate::model::Via;
use crate::model::{AgentPort, AgentRequest, ClusterTopology, EndpointsBy, ServiceRequest};
use crate::scenario::{self, Pairs, Scenario};

/// The role of a placed agent; ids are `srv-<zone>-<n>` and `cli-<zone>-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// An agent to place, with the zone it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub id: String,
    pub node: String,
    pub zone: String,
    pub role: Role,
    /// Servers: `agents.max_answer_qps`, the rate their answers are held to.
    pub max_answer_qps: Option<f64>,
    /// Servers: relay service-chain requests (the scenario has a chain).
    pub relay: bool,
}

/// One measurement: `client` runs `spec` against `server`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Index of the scenario's `[[tests]]` entry.
    pub test_index: usize,
    /// The entry's label (`name`, or the kind).
    pub name: String,
    pub kind: TestKind,
    pub via: Via,
    /// Routing variant; empty for pod tests (variants come with Services).
    pub variant: String,
    /// 0-based repetition.
    pub repeat: u32,
    pub client: String,
    /// An agent id, or for `via = service` the Service's name ([`SERVICE_NAME`]).
    pub server: String,
    /// The spec with a placeholder target; the run fills in the server's address.
    pub spec: TestSpec,
    /// The concurrent group this step is one client of ([`group_id`]); a group's steps are
    /// adjacent in the plan and run at once.
    pub group: Option<String>,
    /// A capacity search (`qps = "max"`): the step runs once per rate the search tries.
    pub search: Option<crate::model::capacity::SearchSpec>,
    /// A service chain: every hop's agent id (or [`SERVICE_NAME`] for a hop through the
    /// Service), first (`server`) to last; empty otherwise.
    pub chain: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Services the steps go through (none when every test goes to pods).
    pub services: Vec<ServiceRequest>,
    pub steps: Vec<Step>,
}

/// The Service `via = "service"` tests go through: every server of every zone behind it,
/// so where each connection lands is the dataplane's (and later the topology hints') doing.
pub const SERVICE_NAME: &str = "echo";

impl Plan {
    pub fn agent_requests(&self) -> Vec<AgentRequest> {
        self.placements
            .iter()
            .map(|p| AgentRequest {
                id: p.id.clone(),
                node: p.node.clone(),
                max_answer_qps: p.max_answer_qps,
                relay: p.relay,
            })
            .collect()
    }

    pub fn placement(&self, id: &str) -> Option<&Placement> {
        self.placements.iter().find(|p| p.id == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("zone {0:?} has no ready node to place agents on")]
    EmptyZone(String),
    #[error("the cluster has no zones")]
    NoZones,
    #[error("topology placement {variant:?} gives {counts} endpoint counts but the cluster has {zones} zones")]
    PlacementZones { variant: String, counts: usize, zones: usize },
    #[error("tests[{test}] ({name}): {message}")]
    Concurrency { test: usize, name: String, message: String },
    #[error("tests[{test}] ({name}): hops: {message}")]
    Chain { test: usize, name: String, message: String },
}

/// Places agents and orders the steps. Servers go on each zone's first node and clients on
/// its second (when there is one), so even a same-zone pair crosses nodes, as pods of a
/// Deployment usually do.
pub fn expand(s: &Scenario, cluster: &ClusterTopology) -> Result<Plan, PlanError> {
    let zones = cluster.zones();
    if zones.is_empty() {
        return Err(PlanError::NoZones);
    }
    let variants = s.topology.as_ref().map(|t| t.variants()).unwrap_or_default();
    if let Some(v) = variants.iter().find(|v| v.endpoints_per_zone.len() != zones.len()) {
        return Err(PlanError::PlacementZones {
            variant: v.name.clone(),
            counts: v.endpoints_per_zone.len(),
            zones: zones.len(),
        });
    }
    let servers_per_zone = s
        .agents
        .servers_per_zone
        .max(s.topology.as_ref().map_or(0, |t| t.servers_per_zone()))
        .max(scenario::chain::servers_per_zone(s, &zones));
    let relay = scenario::chain::any(s);
    let mut placements = Vec::new();
    for zone in &zones {
        let nodes: Vec<&str> =
            cluster.nodes.iter().filter(|n| &n.zone == zone && n.ready).map(|n| n.name.as_str()).collect();
        let (Some(first), second) = (nodes.first(), nodes.get(1)) else {
            return Err(PlanError::EmptyZone(zone.clone()));
        };
        for i in 0..servers_per_zone {
            placements.push(Placement {
                id: format!("srv-{zone}-{i}"),
                node: first.to_string(),
                zone: zone.clone(),
                role: Role::Server,
                max_answer_qps: s.agents.max_answer_qps,
                relay,
            });
        }
        for i in 0..scenario::concurrency::placed_clients(s) {
            placements.push(Placement {
                id: format!("cli-{zone}-{i}"),
                node: second.unwrap_or(first).to_string(),
                zone: zone.clone(),
                role: Role::Client,
                max_answer_qps: None,
                relay: false,
            });
        }
    }

    // Repeats are the outer loop, so a slow drift in the machine spreads over every test,
    // pair and variant (A B A B …, never A A B B) instead of landing on one of them. Anything
    // that adds steps (variants, Service counts) must expand inside this loop:
    // [`repeats_interleave`] holds the rule and `expand` checks it in debug builds.
    let max_repeat = s.tests.iter().map(|t| t.repeat.unwrap_or(s.defaults.repeat)).max().unwrap_or(1);
    let mut steps = Vec::new();
    for repeat in 0..max_repeat {
        for (test_index, t) in s.tests.iter().enumerate() {
            if repeat >= t.repeat.unwrap_or(s.defaults.repeat) {
                continue;
            }
            let via = t.via.unwrap_or(s.defaults.via);
            let chain = scenario::chain::agents(t, &zones).map_err(|message| PlanError::Chain {
                test: test_index,
                name: t.label(),
                message,
            })?;
            if let Some(mut chain) = chain {
                // A Service hop is the run's Service (its name is the plan's to give).
                for hop in chain.iter_mut().filter(|h| *h == scenario::chain::SERVICE_HOP) {
                    *hop = SERVICE_NAME.to_string();
                }
                // One client, one route: the chain names its servers, `from` its client.
                let from = scenario::chain::client_zone(t, &zones).unwrap_or_default();
                if !zones.iter().any(|z| z == from) {
                    let message = format!("from: the cluster has no zone {from:?} (it has {})", zones.join(", "));
                    return Err(PlanError::Chain { test: test_index, name: t.label(), message });
                }
                steps.push(Step {
                    test_index,
                    name: t.label(),
                    kind: t.kind,
                    via: if chain[0] == SERVICE_NAME { Via::Service } else { Via::Pod },
                    variant: String::new(),
                    repeat,
                    client: format!("cli-{from}-0"),
                    server: chain[0].clone(),
                    spec: scenario::spec_for(s, t, "0.0.0.0:0"),
                    group: None,
                    search: t.search(),
                    chain,
                });
                continue;
            }
            let shares = scenario::concurrency::zone_shares(s, t, &zones)
                .map_err(|message| PlanError::Concurrency { test: test_index, name: t.label(), message })?;
            if let Some(shares) = shares {
                let base = Step {
                    test_index,
                    name: t.label(),
                    kind: t.kind,
                    via,
                    variant: String::new(),
                    repeat,
                    client: String::new(),
                    server: String::new(),
                    spec: scenario::spec_for(s, t, "0.0.0.0:0"),
                    group: None,
                    search: None,
                    chain: Vec::new(),
                };
                steps.extend(concurrent_steps(&base, t.pairs.unwrap_or(s.defaults.pairs), &shares, &zones, &variants));
                continue;
            }
            if via == Via::Service {
                // A Service has no server zone to choose: one step per client zone, and
                // the measured server is whoever answered. Routing variants run inside
                // the repeat (A B C A B C …), each through its own Service.
                let targets: Vec<(String, String)> = if variants.is_empty() {
                    vec![(String::new(), SERVICE_NAME.to_string())]
                } else {
                    variants.iter().map(|v| (v.name.clone(), variant_service(&v.name))).collect()
                };
                for (variant, service) in &targets {
                    for cz in &zones {
                        steps.push(Step {
                            test_index,
                            name: t.label(),
                            kind: t.kind,
                            via,
                            variant: variant.clone(),
                            repeat,
                            client: format!("cli-{cz}-0"),
                            server: service.clone(),
                            spec: scenario::spec_for(s, t, "0.0.0.0:0"),
                            group: None,
                            search: t.search(),
                            chain: Vec::new(),
                        });
                    }
                }
                continue;
            }
            let pairs = t.pairs.unwrap_or(s.defaults.pairs);
            for cz in &zones {
                for sz in &zones {
                    let keep = match pairs {
                        Pairs::ZoneMatrix => true,
                        Pairs::SameZone => cz == sz,
                        Pairs::CrossZone => cz != sz,
                    };
                    if !keep {
                        continue;
                    }
                    steps.push(Step {
                        test_index,
                        name: t.label(),
                        kind: t.kind,
                        via,
                        variant: String::new(),
                        repeat,
                        client: format!("cli-{cz}-0"),
                        server: format!("srv-{sz}-0"),
                        spec: scenario::spec_for(s, t, "0.0.0.0:0"),
                        group: None,
                        search: t.search(),
                        chain: Vec::new(),
                    });
                }
            }
        }
    }
    debug_assert!(repeats_interleave(&steps), "steps must be ordered by repeat");
    let services = service_requests(s, &placements, &zones);
    Ok(Plan { placements, services, steps })
}

/// The steps of one concurrent test in one repeat: for a Service test one group per routing
/// variant, every client of `shares` against the variant's Service; for a pod test one group
/// per server zone, the clients of the zones `pairs` keeps for it. Each client's spec carries
/// its part of the rate.
fn concurrent_steps(
    base: &Step,
    pairs: Pairs,
    shares: &[scenario::ZoneShare],
    zones: &[String],
    variants: &[scenario::topology::TopologyVariant],
) -> Vec<Step> {
    let targets: Vec<(String, String, Vec<&scenario::ZoneShare>)> = if base.via == Via::Service {
        let all: Vec<_> = shares.iter().collect();
        if variants.is_empty() {
            vec![(String::new(), SERVICE_NAME.to_string(), all)]
        } else {
            variants.iter().map(|v| (v.name.clone(), variant_service(&v.name), all.clone())).collect()
        }
    } else {
        zones
            .iter()
            .map(|sz| {
                let kept = shares
                    .iter()
                    .filter(|z| match pairs {
                        Pairs::ZoneMatrix => true,
                        Pairs::SameZone => &z.zone == sz,
                        Pairs::CrossZone => &z.zone != sz,
                    })
                    .collect();
                (String::new(), format!("srv-{sz}-0"), kept)
            })
            .collect()
    };
    let mut steps = Vec::new();
    for (variant, server, kept) in targets {
        if kept.is_empty() {
            continue;
        }
        let mut step = Step { variant, server, ..base.clone() };
        let id = group_id(&step);
        for share in kept {
            for i in 0..share.clients {
                let mut spec = base.spec.clone();
                if share.qps_per_client.is_some() {
                    spec.qps = share.qps_per_client;
                }
                step.client = format!("cli-{}-{i}", share.zone);
                steps.push(Step { spec, group: Some(id.clone()), ..step.clone() });
            }
        }
    }
    steps
}

/// A concurrent group's id: `name/variant/target/rN`, the variant left out when empty;
/// unique in a run, as one test has one group per target, variant and repeat.
pub fn group_id(step: &Step) -> String {
    step_id(step, &[&step.server])
}

/// `name/variant/<parts>/rN`, the variant left out when empty.
fn step_id(step: &Step, parts: &[&str]) -> String {
    let mut all = vec![step.name.as_str()];
    if !step.variant.is_empty() {
        all.push(&step.variant);
    }
    all.extend_from_slice(parts);
    format!("{}/r{}", all.join("/"), step.repeat)
}

/// A capacity search's id: `name/variant/client/target/rN`, the variant left out when empty.
pub fn search_id(step: &Step) -> String {
    step_id(step, &[&step.client, &step.server])
}

/// The ports the scenario's `via = service` tests use (tcp, udp, http), in that order.
pub fn service_ports(s: &Scenario) -> Vec<AgentPort> {
    let mut ports: Vec<AgentPort> = s
        .tests
        .iter()
        .filter(|t| t.via.unwrap_or(s.defaults.via) == Via::Service || scenario::chain::uses_service(t))
        .map(|t| AgentPort::of_test(t.kind))
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// The Service of a topology variant: `echo-<variant>`.
pub fn variant_service(variant: &str) -> String {
    format!("{SERVICE_NAME}-{variant}")
}

/// [`SERVICE_NAME`] in front of every server, with the ports the tests use; or with a
/// `[topology]` table one Service per variant, in front of the first `n` servers of each
/// zone as its placement says, asking for its routing mode. None when no test goes
/// through a Service.
fn service_requests(s: &Scenario, placements: &[Placement], zones: &[String]) -> Vec<ServiceRequest> {
    let ports = service_ports(s);
    if ports.is_empty() {
        return vec![];
    }
    let Some(topology) = &s.topology else {
        let backends = placements.iter().filter(|p| p.role == Role::Server).map(|p| p.id.clone()).collect();
        return vec![ServiceRequest {
            name: SERVICE_NAME.to_string(),
            backends,
            ports,
            routing: RoutingMode::None,
            endpoints: EndpointsBy::Controller,
        }];
    };
    topology
        .variants()
        .into_iter()
        .map(|v| {
            let backends = zones
                .iter()
                .zip(&v.endpoints_per_zone)
                .flat_map(|(z, &n)| (0..n).map(move |i| format!("srv-{z}-{i}")))
                .collect();
            ServiceRequest {
                name: variant_service(&v.name),
                backends,
                ports: ports.clone(),
                routing: v.mode,
                endpoints: EndpointsBy::Controller,
            }
        })
        .collect()
}

/// Whether repeats interleave: every step of repeat `r` comes before any step of repeat
/// `r + 1`, so each test, pair and variant runs once per round (A B A B …) and drift over
/// the run hits all of them alike rather than whichever ran last.
pub fn repeats_interleave(steps: &[Step]) -> bool {
    steps.windows(2).all(|w| w[0].repeat <= w[1].repeat)
}

/// The server port a test kind targets.
pub fn port_for(kind: TestKind, agent: &crate::model::DeployedAgent) -> u16 {
    match kind {
        TestKind::TcpStream | TestKind::TcpRr | TestKind::TcpCrr => agent.tcp_port,
        TestKind::UdpStream | TestKind::UdpRr => agent.udp_port,
        TestKind::Http => agent.http_port,
    }
}

/// The name of the `i`-th Service of a sweep (1-based): `svc-00001`.
pub fn service_name(i: u32) -> String {
    format!("svc-{i:05}")
}

/// A point's table: `count` Services with the same backends and ports, the newest last.
pub fn service_table(count: u32, backends: &[String], ports: &[AgentPort]) -> Vec<ServiceRequest> {
    (1..=count)
        .map(|i| ServiceRequest {
            name: service_name(i),
            backends: backends.to_vec(),
            ports: ports.to_vec(),
            routing: RoutingMode::None,
            endpoints: EndpointsBy::Run,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_service_comes_last_and_every_service_has_the_same_endpoints() {
        let backends = vec!["srv-a-0".to_string(), "srv-a-1".to_string()];
        let t = service_table(3, &backends, &[AgentPort::Tcp]);
        let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["svc-00001", "svc-00002", "svc-00003"]);
        assert!(t.iter().all(|s| s.backends == backends && s.ports == [AgentPort::Tcp]));
        assert_eq!(service_name(10_000), "svc-10000");
    }
    use crate::model::{Fingerprint, Node};

    fn cluster(zones: &[&str], per_zone: usize) -> ClusterTopology {
        let mut nodes = Vec::new();
        for z in zones {
            for i in 1..=per_zone {
                nodes.push(Node { name: format!("{z}-{i}"), zone: z.to_string(), cpu_millis: 2000, ready: true });
            }
        }
        ClusterTopology { nodes, fingerprint: Fingerprint::default() }
    }

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text, "t.toml", "t", &[]).unwrap()
    }

    #[test]
    fn a_zone_matrix_measures_every_ordered_pair() {
        let s = scenario("[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"http\"\n");
        let plan = expand(&s, &cluster(&["a", "b", "c"], 2)).unwrap();
        assert_eq!(plan.steps.len(), 18);
        let pairs: Vec<_> = plan
            .steps
            .iter()
            .filter(|s| s.kind == TestKind::TcpRr)
            .map(|s| (s.client.clone(), s.server.clone()))
            .collect();
        assert_eq!(pairs.len(), 9);
        assert!(pairs.contains(&("cli-c-0".into(), "srv-a-0".into())));
        assert!(pairs.contains(&("cli-b-0".into(), "srv-b-0".into())));
    }

    #[test]
    fn clients_and_servers_sit_on_different_nodes_of_a_zone() {
        let s = scenario("[[tests]]\nkind = \"tcp-rr\"\n");
        let plan = expand(&s, &cluster(&["a", "b"], 2)).unwrap();
        assert_eq!(plan.placement("srv-a-0").unwrap().node, "a-1");
        assert_eq!(plan.placement("cli-a-0").unwrap().node, "a-2");
        let single = expand(&s, &cluster(&["a"], 1)).unwrap();
        assert_eq!(single.placement("cli-a-0").unwrap().node, "a-1");
    }

    #[test]
    fn same_and_cross_zone_pick_their_pairs() {
        let s = scenario(
            "[[tests]]\nkind = \"tcp-rr\"\npairs = \"same-zone\"\n[[tests]]\nkind = \"tcp-crr\"\npairs = \"cross-zone\"\n",
        );
        let plan = expand(&s, &cluster(&["a", "b", "c"], 1)).unwrap();
        let same: Vec<_> = plan.steps.iter().filter(|s| s.kind == TestKind::TcpRr).collect();
        let cross: Vec<_> = plan.steps.iter().filter(|s| s.kind == TestKind::TcpCrr).collect();
        assert_eq!(same.len(), 3);
        assert!(same.iter().all(|s| s.client[4..5] == s.server[4..5]));
        assert_eq!(cross.len(), 6);
        assert!(cross.iter().all(|s| s.client[4..5] != s.server[4..5]));
    }

    #[test]
    fn repeats_interleave_tests_rather_than_bunching_them() {
        let s = scenario(
            "[defaults]\nrepeat = 2\npairs = \"same-zone\"\n[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"http\"\n",
        );
        let plan = expand(&s, &cluster(&["a"], 1)).unwrap();
        let order: Vec<_> = plan.steps.iter().map(|s| (s.kind, s.repeat)).collect();
        assert_eq!(order, vec![(TestKind::TcpRr, 0), (TestKind::Http, 0), (TestKind::TcpRr, 1), (TestKind::Http, 1)]);
    }

    #[test]
    fn repeats_run_in_rounds_even_when_tests_repeat_a_different_number_of_times() {
        let s = scenario(
            "[defaults]\nrepeat = 3\n[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"tcp-crr\"\nrepeat = 2\n[[tests]]\nkind = \"http\"\n",
        );
        let plan = expand(&s, &cluster(&["a", "b"], 2)).unwrap();
        assert!(repeats_interleave(&plan.steps));
        // Round by round: tcp-rr, tcp-crr, http; tcp-rr, tcp-crr, http; tcp-rr, http.
        let mut rounds: Vec<Vec<TestKind>> = vec![Vec::new(); 3];
        for st in &plan.steps {
            let r = &mut rounds[st.repeat as usize];
            if r.last() != Some(&st.kind) {
                r.push(st.kind);
            }
        }
        assert_eq!(rounds[0], [TestKind::TcpRr, TestKind::TcpCrr, TestKind::Http]);
        assert_eq!(rounds[1], [TestKind::TcpRr, TestKind::TcpCrr, TestKind::Http]);
        assert_eq!(rounds[2], [TestKind::TcpRr, TestKind::Http]);
    }

    #[test]
    fn bunched_repeats_are_recognised() {
        let s = scenario("[defaults]\nrepeat = 2\npairs = \"same-zone\"\n[[tests]]\nkind = \"tcp-rr\"\n");
        let mut steps = expand(&s, &cluster(&["a"], 1)).unwrap().steps;
        assert!(repeats_interleave(&steps));
        // A A B B: the second round first.
        steps.reverse();
        assert!(!repeats_interleave(&steps));
    }

    #[test]
    fn test_parameters_reach_the_spec() {
        let s = scenario(
            "[defaults]\nduration = \"3s\"\nwarmup = \"250ms\"\n[[tests]]\nkind = \"udp-stream\"\nrate = \"50M\"\nsize = 1200\n",
        );
        let plan = expand(&s, &cluster(&["a"], 1)).unwrap();
        let spec = &plan.steps[0].spec;
        assert_eq!(spec.duration_ms, 3000);
        assert_eq!(spec.warmup_ms, 250);
        assert_eq!(spec.rate_bps, Some(50_000_000));
        assert_eq!(spec.size, Some(1200));
    }

    #[test]
    fn service_tests_run_once_per_client_zone_through_one_service_in_front_of_every_server() {
        let s = scenario(
            "[agents]\nservers_per_zone = 2\n[[tests]]\nkind = \"tcp-crr\"\nvia = \"service\"\n[[tests]]\nkind = \"udp-rr\"\nvia = \"service\"\n[[tests]]\nkind = \"tcp-rr\"\n",
        );
        let plan = expand(&s, &cluster(&["a", "b"], 2)).unwrap();
        let via_service: Vec<&Step> = plan.steps.iter().filter(|s| s.via == Via::Service).collect();
        assert_eq!(via_service.len(), 4, "two tests × two client zones");
        assert!(via_service.iter().all(|s| s.server == SERVICE_NAME));
        assert_eq!(plan.steps.iter().filter(|s| s.via == Via::Pod).count(), 4, "the pod test keeps its zone matrix");
        assert_eq!(plan.services.len(), 1);
        assert_eq!(plan.services[0].backends, ["srv-a-0", "srv-a-1", "srv-b-0", "srv-b-1"]);
        assert_eq!(plan.services[0].ports, [AgentPort::Tcp, AgentPort::Udp]);
        let pods_only = scenario("[[tests]]\nkind = \"tcp-rr\"\n");
        assert!(expand(&pods_only, &cluster(&["a"], 1)).unwrap().services.is_empty());
    }

    #[test]
    fn topology_variants_interleave_inside_each_repeat_each_through_its_own_service() {
        let s = scenario(
            "[defaults]\nrepeat = 2\n[topology]\nmodes = [\"none\", \"auto\", \"prefer-close\"]\n[[topology.placements]]\nendpoints_per_zone = [3, 3, 3]\n[[topology.placements]]\nprefix = \"skewed-\"\nendpoints_per_zone = [2, 2, 1]\n[[tests]]\nkind = \"tcp-crr\"\nvia = \"service\"\n",
        );
        let plan = expand(&s, &cluster(&["a", "b", "c"], 2)).unwrap();
        assert_eq!(plan.steps.len(), 2 * 6 * 3);
        let order: Vec<&str> = plan.steps.iter().step_by(3).map(|s| s.variant.as_str()).collect();
        let round = ["none", "auto", "prefer-close", "skewed-none", "skewed-auto", "skewed-prefer-close"];
        assert_eq!(order, [round, round].concat());
        assert!(plan.steps.iter().all(|s| s.server == variant_service(&s.variant)));
        assert_eq!(plan.placements.iter().filter(|p| p.role == Role::Server).count(), 9);
        let skewed = plan.services.iter().find(|r| r.name == "echo-skewed-auto").unwrap();
        assert_eq!(skewed.backends, ["srv-a-0", "srv-a-1", "srv-b-0", "srv-b-1", "srv-c-0"]);
        assert_eq!(skewed.routing, RoutingMode::Auto);
        assert_eq!(plan.services.len(), 6);
    }

    #[test]
    fn a_zone_without_ready_nodes_is_an_error() {
        let s = scenario("[[tests]]\nkind = \"tcp-rr\"\n");
        let mut c = cluster(&["a", "b"], 1);
        c.nodes[1].ready = false;
        assert!(matches!(expand(&s, &c), Err(PlanError::EmptyZone(z)) if z == "b"));
    }

    mod props {
        //! Any valid pod scenario on any cluster expands the same way twice, and every step's
        //! agents are placed in zones the cluster has, on the pairs the test asked for.
        use proptest::prelude::*;

        use super::*;
        use crate::scenario::Pairs;

        const KINDS: [&str; 6] = ["tcp-rr", "tcp-crr", "http", "tcp-stream", "udp-rr", "udp-stream"];
        const PAIRS: [&str; 3] = ["zone-matrix", "same-zone", "cross-zone"];

        /// Zones, nodes per zone, and the scenario's text for them.
        fn case() -> impl Strategy<Value = (Vec<String>, usize, String)> {
            let test = (0..KINDS.len(), 0..PAIRS.len(), proptest::option::of(1u32..4));
            (1usize..5, 1usize..4, 1u32..4, 1u32..3, 1u32..3, proptest::collection::vec(test, 1..5)).prop_map(
                |(zones, per_zone, servers, clients, repeat, tests)| {
                    let zones: Vec<String> = ["a", "b", "c", "d"][..zones].iter().map(|z| z.to_string()).collect();
                    let mut text = format!(
                        "[lab]\nzones = \"{}\"\n[agents]\nservers_per_zone = {servers}\nclients_per_zone = {clients}\n\
                         [defaults]\nrepeat = {repeat}\n",
                        zones.join(",")
                    );
                    for (i, (kind, pairs, repeat)) in tests.into_iter().enumerate() {
                        // Cross-zone needs two zones; a one-zone case asks for the matrix instead.
                        let pairs = if zones.len() < 2 && pairs == 2 { 0 } else { pairs };
                        text += &format!(
                            "[[tests]]\nname = \"t{i}\"\nkind = \"{}\"\npairs = \"{}\"\n",
                            KINDS[kind], PAIRS[pairs]
                        );
                        if let Some(r) = repeat {
                            text += &format!("repeat = {r}\n");
                        }
                    }
                    (zones, per_zone, text)
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn expansion_is_deterministic_and_every_step_is_in_a_cluster_zone((zones, per_zone, text) in case()) {
                let zone_refs: Vec<&str> = zones.iter().map(String::as_str).collect();
                let s = scenario(&text);
                let c = cluster(&zone_refs, per_zone);
                let plan = expand(&s, &c).expect("a valid scenario expands on a cluster with every zone");
                prop_assert_eq!(&plan, &expand(&s, &c).expect("again"));
                prop_assert!(!plan.steps.is_empty());
                let zone_of = |id: &str| plan.placement(id).map(|p| p.zone.clone());
                for p in &plan.placements {
                    prop_assert!(zones.contains(&p.zone), "{} placed in unknown zone {}", p.id, p.zone);
                    prop_assert!(c.nodes.iter().any(|n| n.name == p.node && n.zone == p.zone), "{} on {}", p.id, p.node);
                }
                for step in &plan.steps {
                    let cz = zone_of(&step.client);
                    let sz = zone_of(&step.server);
                    prop_assert!(cz.is_some() && sz.is_some(), "step {} {}→{} has no placement", step.name, step.client, step.server);
                    let t = &s.tests[step.test_index];
                    match t.pairs.unwrap_or(s.defaults.pairs) {
                        Pairs::SameZone => prop_assert_eq!(&cz, &sz),
                        Pairs::CrossZone => prop_assert_ne!(&cz, &sz),
                        Pairs::ZoneMatrix => {}
                    }
                    prop_assert!(step.repeat < t.repeat.unwrap_or(s.defaults.repeat));
                }
                prop_assert!(repeats_interleave(&plan.steps));
            }
        }
    }
}

#[cfg(test)]
mod concurrent {
    use super::*;
    use crate::model::{Fingerprint, Node};

    fn cluster(zones: &[&str]) -> ClusterTopology {
        let nodes = zones
            .iter()
            .flat_map(|z| {
                (1..=2).map(move |i| Node {
                    name: format!("{z}-{i}"),
                    zone: z.to_string(),
                    cpu_millis: 2000,
                    ready: true,
                })
            })
            .collect();
        ClusterTopology { nodes, fingerprint: Fingerprint::default() }
    }

    fn plan(text: &str) -> Result<Plan, PlanError> {
        let s = Scenario::parse(text, "t.toml", "t", &[]).unwrap();
        expand(&s, &cluster(&["a", "b", "c"]))
    }

    #[test]
    fn every_client_of_a_service_test_shares_one_group_and_the_rate_is_split_over_them() {
        let p = plan("[[tests]]\nkind = \"http\"\nvia = \"service\"\nclients = 2\nqps = 600\n").unwrap();
        assert_eq!(p.placements.iter().filter(|p| p.role == Role::Client).count(), 6);
        assert_eq!(p.steps.len(), 6);
        assert!(p.steps.iter().all(|s| s.group.as_deref() == Some("http/echo/r0") && s.server == SERVICE_NAME));
        let clients: Vec<&str> = p.steps.iter().map(|s| s.client.as_str()).collect();
        assert_eq!(clients, ["cli-a-0", "cli-a-1", "cli-b-0", "cli-b-1", "cli-c-0", "cli-c-1"]);
        assert!(p.steps.iter().all(|s| s.spec.qps == Some(100.0)), "600 over 6 clients");
    }

    #[test]
    fn zone_weights_split_the_rate_or_set_the_client_counts() {
        let p =
            plan("[[tests]]\nkind = \"http\"\nvia = \"service\"\nqps = 500\nzone_weights = { a = 3, b = 1, c = 1 }\n")
                .unwrap();
        let qps: Vec<(String, Option<f64>)> = p.steps.iter().map(|s| (s.client.clone(), s.spec.qps)).collect();
        assert_eq!(
            qps,
            [("cli-a-0".into(), Some(300.0)), ("cli-b-0".into(), Some(100.0)), ("cli-c-0".into(), Some(100.0))]
        );
        let p = plan("[[tests]]\nkind = \"tcp-rr\"\nvia = \"service\"\nzone_weights = { a = 3, c = 1 }\n").unwrap();
        let clients: Vec<&str> = p.steps.iter().map(|s| s.client.as_str()).collect();
        assert_eq!(clients, ["cli-a-0", "cli-a-1", "cli-a-2", "cli-c-0"], "zone b left out gets none");
    }

    #[test]
    fn a_pod_test_has_a_group_per_server_zone_with_the_clients_its_pairs_keep() {
        let p = plan("[[tests]]\nkind = \"tcp-rr\"\nclients = \"all\"\npairs = \"cross-zone\"\nrepeat = 2\n").unwrap();
        let mut groups: Vec<&str> = p.steps.iter().filter_map(|s| s.group.as_deref()).collect();
        groups.dedup();
        assert_eq!(
            groups,
            [
                "tcp-rr/srv-a-0/r0",
                "tcp-rr/srv-b-0/r0",
                "tcp-rr/srv-c-0/r0",
                "tcp-rr/srv-a-0/r1",
                "tcp-rr/srv-b-0/r1",
                "tcp-rr/srv-c-0/r1"
            ]
        );
        let to_a: Vec<&str> = p
            .steps
            .iter()
            .filter(|s| s.group.as_deref() == Some("tcp-rr/srv-a-0/r0"))
            .map(|s| s.client.as_str())
            .collect();
        assert_eq!(to_a, ["cli-b-0", "cli-c-0"]);
        assert!(repeats_interleave(&p.steps));
    }

    #[test]
    fn weights_for_a_zone_the_cluster_lacks_are_an_error_naming_it() {
        let text = "platform = \"kube\"\n[[tests]]\nkind = \"tcp-rr\"\nzone_weights = { a = 1, eu-west-1d = 2 }\n";
        let e = plan(text).unwrap_err().to_string();
        assert!(e.contains("tests[0] (tcp-rr)") && e.contains("\"eu-west-1d\"") && e.contains("a, b, c"), "{e}");
    }
}
