//! The service dataplanes on real namespaces and real rules: each one load-balances across
//! every endpoint, routes each node to exactly the endpoints it was given (zone filtering),
//! rejects Services without endpoints, handles a pod reaching an endpoint on its own node,
//! and leaves no rule behind. Needs root (CI runs as root); takes the lab tests' shared lock.
//!
//! Who answered is read from the agents' answers: every echo server stamps its id, and the
//! agent's tcp-crr result counts answers per id.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::lab_lock;
use zonebench::control_client::ControlClient;
use zonebench::dataplane::{self, Endpoint, ServicePort, ServiceRules};
use zonebench::model::Routing;
use zonebench::model::RoutingMode;
use zonebench::model::{AgentPort, AgentProgram, AgentRequest, DeployedAgent, ProbeRequest, ServiceRequest};
use zonebench::model::{DataplaneKind, Protocol};
use zonebench::platform::lab::{self, netns, LabOptions, LabPlatform};
use zonebench::platform::Platform;
use zonebench::scenario::LabConfig;
use zonebench_agent::spec::{TestKind, TestSpec};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
const PORT: u16 = 7101;

fn zonebench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zonebench"))
}

/// Zones a and b, two nodes each; servers srv-a-0 and srv-a-1 on a-1, srv-b-0 on b-1;
/// clients cli-a on a-2, cli-b on b-2, and cli-hairpin on a-1 beside two of the servers.
async fn lab_with_agents(kind: DataplaneKind) -> (LabPlatform, BTreeMap<String, DeployedAgent>) {
    let config = LabConfig {
        zones: vec!["a".into(), "b".into()],
        nodes_per_zone: 2,
        routing: Routing::Native,
        service_dataplane: kind,
        ..LabConfig::default()
    };
    let exe = zonebench_bin();
    let options = LabOptions {
        agent: Some(AgentProgram { path: exe.clone(), args: vec!["agent".into()] }),
        forwarder: Some(lab::ForwarderProgram {
            path: exe.clone(),
            args: vec!["lab".into(), "delay-forwarder".into()],
        }),
        probe: Some(lab::ForwarderProgram { path: exe, args: vec!["lab".into(), "connect-probe".into()] }),
        ..LabOptions::default()
    };
    let mut lab = LabPlatform::new(config, options).unwrap();
    lab.discover().await.unwrap();
    let want = [
        ("srv-a-0", "a-1"),
        ("srv-a-1", "a-1"),
        ("srv-b-0", "b-1"),
        ("cli-a", "a-2"),
        ("cli-b", "b-2"),
        ("cli-hairpin", "a-1"),
    ];
    let requests: Vec<AgentRequest> = want
        .iter()
        .map(|(id, node)| AgentRequest {
            id: id.to_string(),
            node: node.to_string(),
            max_answer_qps: None,
            relay: false,
        })
        .collect();
    let agents = lab.deploy(&requests).await.unwrap();
    (lab, agents.into_iter().map(|a| (a.id.clone(), a)).collect())
}

fn ip(agents: &BTreeMap<String, DeployedAgent>, id: &str) -> Ipv4Addr {
    match agents[id].ip {
        std::net::IpAddr::V4(v) => v,
        other => panic!("{id} has a non-IPv4 address {other}"),
    }
}

/// The test table: `echo` with `endpoints`, and `empty` with none.
fn table(agents: &BTreeMap<String, DeployedAgent>, endpoints: &[&str]) -> Vec<ServiceRules> {
    let port = |name: &str, vip| ServicePort { name: name.into(), vip, port: PORT, protocol: Protocol::Tcp };
    vec![
        ServiceRules {
            service: port("zonebench/echo:tcp", VIP),
            endpoints: endpoints.iter().map(|id| Endpoint { ip: ip(agents, id), port: PORT }).collect(),
        },
        ServiceRules { service: port("zonebench/empty:tcp", EMPTY_VIP), endpoints: vec![] },
    ]
}

/// Answers per server id from one second of tcp-crr by agent `client` to `target`.
async fn answers(agents: &BTreeMap<String, DeployedAgent>, client: &str, target: SocketAddr) -> BTreeMap<String, u64> {
    let a = &agents[client];
    let control = ControlClient::new(a.control.clone(), a.token.clone());
    let mut spec = TestSpec::new(TestKind::TcpCrr, target.to_string());
    spec.duration_ms = 1000;
    spec.warmup_ms = 100;
    let id = control.start_test(&spec).await.unwrap();
    let r = control.wait_for(&id, &spec).await.unwrap();
    assert_eq!(r.metrics.errors, Some(0), "tcp-crr from {client} to {target} had errors: {r:?}");
    r.servers
}

fn assert_spread(got: &BTreeMap<String, u64>, want: &[&str], who: &str) {
    let total: u64 = got.values().sum();
    let ids: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(ids, want, "{who}: answers came from {got:?}");
    // Equal shares of a thousand or more connections: each is far above a fifth of 1/n.
    for (id, n) in got {
        assert!(*n * want.len() as u64 * 5 > total, "{who}: {id} answered {n} of {total}: {got:?}");
    }
}

/// Connects to `to` from `agent`'s pod as a process of its node's cgroup (where the eBPF
/// socket LB hooks connect(2); the netfilter dataplanes act in the node namespace instead),
/// with bash's /dev/tcp. Ok, or what bash said (e.g. "Connection refused").
fn connect_from(lab: &LabPlatform, agent: &str, to: SocketAddr) -> Result<(), String> {
    let pod = lab.pods().iter().find(|p| p.agent_id == agent).unwrap();
    let cgroup = lab.node_target(&pod.node).unwrap().cgroup;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} timeout 3 bash -c 'exec 3<>/dev/tcp/{}/{}'",
        cgroup.display(),
        pod.netns,
        to.ip(),
        to.port()
    );
    let out = std::process::Command::new("bash").arg("-c").arg(&script).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} (status {})", String::from_utf8_lossy(&out.stderr).trim(), out.status))
    }
}

fn tool(netns: &str, argv: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", netns];
    full.extend_from_slice(argv);
    netns::run_argv(&full.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// Asserts the node namespace holds no rule of any dataplane.
fn assert_no_rules(netns: &str) {
    let nft = tool(netns, &["nft", "list", "ruleset"]);
    assert!(nft.trim().is_empty(), "nftables rules left in {netns}:\n{nft}");
    let legacy = tool(netns, &["iptables-legacy-save"]);
    let left: Vec<&str> = legacy.lines().filter(|l| l.starts_with("-A") || l.starts_with(":KUBE")).collect();
    assert!(left.is_empty(), "iptables-legacy rules left in {netns}: {left:?}");
}

/// Asserts no BPF program is attached to the node's cgroup.
fn assert_no_bpf(cgroup: &std::path::Path) {
    let out = std::process::Command::new("bpftool").args(["cgroup", "show"]).arg(cgroup).output().unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("connect4") && !shown.contains("sendmsg4"), "BPF left on {}: {shown}", cgroup.display());
}

async fn check(kind: DataplaneKind) {
    let _g = lab_lock(false);
    let (mut lab, agents) = lab_with_agents(kind).await;
    let nodes = ["a-1", "a-2", "b-1", "b-2"];
    let mut dps: BTreeMap<&str, Box<dyn dataplane::Dataplane>> =
        nodes.iter().map(|n| (*n, dataplane::open(kind, &lab.node_target(n).unwrap()).unwrap())).collect();
    let vip = SocketAddr::from((VIP, PORT));

    // Every node routes echo to all three servers.
    let all = table(&agents, &["srv-a-0", "srv-a-1", "srv-b-0"]);
    for dp in dps.values_mut() {
        let report = dp.sync(&all).unwrap();
        assert_eq!(report.rules, dp.rule_count().unwrap());
        // BPF maps hold one entry per Service and per backend; rule sets are far longer.
        let least = if kind == DataplaneKind::Ebpf { 5 } else { 10 };
        assert!(report.rules >= least, "{kind}: only {} rules", report.rules);
    }
    assert_spread(&answers(&agents, "cli-a", vip).await, &["srv-a-0", "srv-a-1", "srv-b-0"], "cli-a, all endpoints");

    // Zone filtering: each client's node uses only its own zone's endpoints.
    dps.get_mut("a-2").unwrap().sync(&table(&agents, &["srv-a-0", "srv-a-1"])).unwrap();
    dps.get_mut("b-2").unwrap().sync(&table(&agents, &["srv-b-0"])).unwrap();
    assert_spread(&answers(&agents, "cli-a", vip).await, &["srv-a-0", "srv-a-1"], "cli-a, zone a subset");
    assert_spread(&answers(&agents, "cli-b", vip).await, &["srv-b-0"], "cli-b, zone b subset");

    // A pod reaching an endpoint on its own node, with bridged frames kept out of
    // netfilter (no br_netfilter help): the reply must still come back through the node.
    let a1 = lab.node_target("a-1").unwrap().netns;
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        tool(&a1, &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    }
    dps.get_mut("a-1").unwrap().sync(&table(&agents, &["srv-a-0", "srv-a-1"])).unwrap();
    assert_spread(&answers(&agents, "cli-hairpin", vip).await, &["srv-a-0", "srv-a-1"], "hairpin on a-1");

    // No endpoints: refused at once, as kube-proxy's reject does (the socket LB fails the
    // connect itself with EPERM, as Cilium's does).
    let refused = connect_from(&lab, "cli-a", SocketAddr::from((EMPTY_VIP, PORT))).unwrap_err();
    let want = if kind == DataplaneKind::Ebpf { "Operation not permitted" } else { "Connection refused" };
    assert!(refused.contains(want), "{kind}: {refused}");
    connect_from(&lab, "cli-a", vip).unwrap();

    // Teardown removes every rule, twice is fine, and the VIP is dead.
    for (node, dp) in dps.iter_mut() {
        dp.teardown().unwrap();
        dp.teardown().unwrap();
        let target = lab.node_target(node).unwrap();
        assert_no_rules(&target.netns);
        assert_no_bpf(&target.cgroup);
    }
    assert!(connect_from(&lab, "cli-a", vip).is_err(), "{kind}: the VIP still answers after teardown");
    lab.teardown().await.unwrap();
}

#[tokio::test]
async fn iptables_balances_filters_by_node_and_cleans_up() {
    check(DataplaneKind::Iptables).await;
}

#[tokio::test]
async fn iptables_legacy_balances_filters_by_node_and_cleans_up() {
    check(DataplaneKind::IptablesLegacy).await;
}

#[tokio::test]
async fn nftables_balances_filters_by_node_and_cleans_up() {
    check(DataplaneKind::Nftables).await;
}

#[tokio::test]
async fn lab_services_get_vips_every_node_programs_and_the_probe_times_the_first_connect() {
    let _g = lab_lock(false);
    let (mut lab, agents) = lab_with_agents(DataplaneKind::Nftables).await;
    let echo = ServiceRequest {
        name: "echo".into(),
        backends: vec!["srv-a-0".into(), "srv-b-0".into()],
        ports: vec![AgentPort::Tcp, AgentPort::Udp],
        routing: RoutingMode::None,
        endpoints: Default::default(),
    };
    let filler = ServiceRequest {
        name: "filler".into(),
        backends: vec!["srv-a-1".into()],
        ports: vec![AgentPort::Tcp],
        routing: RoutingMode::None,
        endpoints: Default::default(),
    };
    let probe = ProbeRequest {
        from_agent: "cli-b".into(),
        service: "echo".into(),
        port: AgentPort::Tcp,
        within: Duration::from_secs(20),
    };
    let unprogrammed = connect_from(&lab, "cli-b", SocketAddr::from((VIP, PORT)));
    assert!(unprogrammed.is_err(), "a VIP answers before any Service exists");
    let applied = lab.apply_services(&[filler.clone(), echo.clone()], Some(&probe)).await.unwrap();
    assert_eq!(applied.dataplane.as_str(), "nftables");
    assert_eq!(applied.nodes.len(), 4);
    assert_eq!(applied.nodes[0].node, "b-2", "the probing client's node is programmed first");
    // The kernel commits before the loading tool exits, so the probe may beat the sync's
    // own clock; it cannot beat the start of programming.
    let latency = applied.probe.unwrap();
    assert!(latency > Duration::ZERO && latency < probe.within, "probe latency {latency:?}");
    let svc = applied.services.iter().find(|s| s.name == "echo").unwrap();
    let to = svc.address(AgentPort::Tcp).unwrap();
    assert_spread(&answers(&agents, "cli-a", to).await, &["srv-a-0", "srv-b-0"], "lab service from cli-a");

    // Switching the dataplane removes the old rules; the next apply programs the new one.
    lab.set_service_dataplane(DataplaneKind::IptablesLegacy).await.unwrap();
    for n in ["a-1", "a-2", "b-1", "b-2"] {
        assert_no_rules(&lab.node_target(n).unwrap().netns);
    }
    let again = lab.apply_services(&[echo], None).await.unwrap();
    assert_eq!(again.dataplane.as_str(), "iptables-legacy");
    assert_eq!(again.services[0].ip, svc.ip, "a Service keeps its VIP");
    assert_spread(&answers(&agents, "cli-b", to).await, &["srv-a-0", "srv-b-0"], "after switching to iptables-legacy");

    let unknown = ServiceRequest {
        name: "x".into(),
        backends: vec!["nobody".into()],
        ports: vec![AgentPort::Tcp],
        routing: RoutingMode::None,
        endpoints: Default::default(),
    };
    let e = format!("{:#}", lab.apply_services(&[unknown], None).await.unwrap_err());
    assert!(e.contains("backend agent \"nobody\" is not deployed"), "{e}");

    let cgroups: Vec<PathBuf> = ["a-1", "b-2"].iter().map(|n| lab.node_cgroup(n).unwrap()).collect();
    for dir in &cgroups {
        assert!(dir.join("cgroup.procs").exists(), "{} exists while the lab runs", dir.display());
    }
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 3, "a-1's three agents are in its cgroup: {procs}");
    lab.teardown().await.unwrap();
    for dir in &cgroups {
        assert!(!dir.exists(), "{} is removed with the lab", dir.display());
    }
}

#[tokio::test]
async fn ebpf_balances_filters_by_node_and_cleans_up() {
    check(DataplaneKind::Ebpf).await;
}

#[tokio::test]
async fn lab_down_removes_the_node_cgroups_of_a_lab_whose_coordinator_crashed() {
    let _g = lab_lock(false);
    let config = LabConfig { zones: vec!["a".into()], nodes_per_zone: 2, ..LabConfig::default() };
    let mut lab = LabPlatform::new(config, LabOptions::default()).unwrap();
    lab.discover().await.unwrap();
    let dirs: Vec<PathBuf> = ["a-1", "a-2"].iter().map(|n| lab.node_cgroup(n).unwrap()).collect();
    assert!(dirs.iter().all(|d| d.is_dir()));
    let id = lab.id().to_string();
    std::mem::forget(lab);
    lab::down(&id).unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} survived lab down", d.display());
    }
}
