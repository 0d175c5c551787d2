//! The lab platform on real network namespaces. These tests need root (CI runs as root) and
//! fail, rather than skip, without it. Each test builds its own lab (random id) with few
//! namespaces; pod traffic runs on threads that entered a pod's namespace with `setns`.
//!
//! The delay forwarder and the agents run as the coordinator binary itself (`zonebench lab
//! delay-forwarder`, `zonebench agent`), which cargo builds for integration tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::lab_lock;
use zonebench::model::Routing;
use zonebench::model::{AgentProgram, AgentRequest, ControlEndpoint};
use zonebench::platform::lab::topology::PodPlan;
use zonebench::platform::lab::{self, netns, LabOptions, LabPlatform};
use zonebench::platform::Platform;
use zonebench::scenario::LabConfig;

fn zonebench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zonebench"))
}

fn forwarder() -> lab::ForwarderProgram {
    lab::ForwarderProgram { path: zonebench_bin(), args: vec!["lab".into(), "delay-forwarder".into()] }
}

fn config(routing: Routing, nodes_per_zone: u32, delay: Option<&str>) -> LabConfig {
    LabConfig {
        zones: vec!["a".into(), "b".into()],
        nodes_per_zone,
        routing,
        inter_zone_rate: None,
        inter_zone_delay: delay.map(String::from),
        ..LabConfig::default()
    }
}

fn new_lab(config: LabConfig) -> LabPlatform {
    LabPlatform::new(config, LabOptions { forwarder: Some(forwarder()), ..LabOptions::default() }).unwrap()
}

/// Runs `f` on a thread inside `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("{}/{netns}", netns::NETNS_DIR);
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

fn ip_of(pod: &PodPlan) -> Ipv4Addr {
    pod.ip
}

/// An echo server in `pod` for `conns` connections; returns its address.
fn echo_server(pod: &PodPlan, conns: usize) -> SocketAddr {
    let addr = SocketAddr::from((ip_of(pod), 7000));
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns, move || {
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    addr
}

fn connect(to: SocketAddr) -> TcpStream {
    let s =
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `bytes` from `client` to the echo server at `to` and checks they come back intact.
/// Larger than many MTUs, so a wrong pod MTU over VXLAN stalls it.
fn echo_from(client: &PodPlan, to: SocketAddr, bytes: usize) {
    in_netns(&client.netns, move || {
        let mut s = connect(to);
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; bytes];
        let writer = {
            let mut w = s.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || w.write_all(&data).unwrap())
        };
        s.read_exact(&mut back).unwrap_or_else(|e| panic!("echo from {to}: {e}"));
        writer.join().unwrap();
        assert!(back == data, "echo from {to} came back altered");
    })
    .join()
    .unwrap();
}

/// Median round trip of `n` 1-byte ping-pongs from `client` to the echo server at `to`.
fn median_rtt(client: &PodPlan, to: SocketAddr, n: usize) -> Duration {
    in_netns(&client.netns, move || {
        let mut s = connect(to);
        let mut b = [0u8; 1];
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let t = Instant::now();
            s.write_all(&[7]).unwrap();
            s.read_exact(&mut b).unwrap();
            if i >= 20 {
                rtts.push(t.elapsed());
            }
        }
        rtts.sort();
        rtts[n / 2]
    })
    .join()
    .unwrap()
}

fn host_links() -> String {
    let out = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // Counters and states of real links may change; names and indices must not.
        .map(|l| l.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn processes_mentioning(s: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().into_string().unwrap_or_default();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(s) && netns::alive(name.parse().unwrap()) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

fn assert_gone(id: &str, pids: &[i32]) {
    let prefix = format!("{id}-");
    let left: Vec<String> = netns::list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for &p in pids {
        assert!(!netns::alive(p), "process {p} of lab {id} still runs");
    }
    let procs = processes_mentioning(&prefix);
    assert!(procs.is_empty(), "processes of lab {id} still run: {procs:?}");
    assert!(!PathBuf::from(format!("/run/zonebench/labs/{id}.json")).exists(), "state file of {id} left behind");
}

/// Builds a 2-zone × 2-node lab with pods on a-1, a-2 and b-1, checks same-zone and
/// cross-zone echo, pod MTU, and how the VXLAN device's counters move.
async fn check_routing(routing: Routing, want_mtu: u32, encap_same_zone: bool, encap_cross_zone: bool) {
    let _g = lab_lock(false);
    // VXLAN modes also run through the delay forwarder and the shaper, so encapsulated GSO
    // traffic crosses the TUN.
    let mut config = config(routing, 2, (routing != Routing::Native).then_some("100us"));
    if routing != Routing::Native {
        config.inter_zone_rate = Some("1gbit".into());
    }
    let mut lab = new_lab(config);
    let topo = lab.discover().await.unwrap();
    assert_eq!(topo.fingerprint.routing, Some(routing));
    assert_eq!(topo.fingerprint.mtu, Some(want_mtu));
    let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a-1", "a-2", "b-1", "b-2"]);
    for ns in lab.plan().namespaces() {
        assert!(netns::exists(&ns), "namespace {ns} missing");
    }
    let p1 = lab.add_pod("p1", "a-1").unwrap();
    let p2 = lab.add_pod("p2", "a-2").unwrap();
    let p3 = lab.add_pod("p3", "b-1").unwrap();
    for p in [&p1, &p2, &p3] {
        assert_eq!(netns::mtu(&p.netns, &p.ifname).unwrap(), want_mtu, "MTU of pod {}", p.agent_id);
    }
    let node_a1 = lab.plan().node("a-1").unwrap().clone();
    let vx_tx =
        || if routing == Routing::Native { 0 } else { netns::tx_stats(&node_a1.netns, &node_a1.vxlan_dev).unwrap().1 };

    let to_p2 = echo_server(&p2, 1);
    let before = vx_tx();
    echo_from(&p1, to_p2, 200_000);
    let same_zone = vx_tx() - before;

    let to_p3 = echo_server(&p3, 1);
    let before = vx_tx();
    echo_from(&p1, to_p3, 200_000);
    let cross_zone = vx_tx() - before;

    if routing != Routing::Native {
        // The 200 kB sent must all pass the VXLAN device where it encapsulates; a stray
        // ARP or two never come close.
        assert_eq!(same_zone > 200_000, encap_same_zone, "same-zone VXLAN tx bytes: {same_zone}");
        assert_eq!(cross_zone > 200_000, encap_cross_zone, "cross-zone VXLAN tx bytes: {cross_zone}");
    }
    let id = lab.id().to_string();
    lab.teardown().await.unwrap();
    assert_gone(&id, &[]);
}

#[tokio::test]
async fn native_routing_connects_pods_within_and_across_zones() {
    check_routing(Routing::Native, 1500, false, false).await;
}

#[tokio::test]
async fn vxlan_routing_encapsulates_all_node_to_node_pod_traffic() {
    check_routing(Routing::Vxlan, 1450, true, true).await;
}

#[tokio::test]
async fn crosssubnet_routing_encapsulates_only_across_zones() {
    check_routing(Routing::VxlanCrosssubnet, 1450, false, true).await;
}

#[tokio::test]
async fn the_delay_forwarder_adds_the_configured_round_trip_across_zones_only() {
    let _g = lab_lock(false);
    let one_way = Duration::from_millis(2);
    let mut lab = new_lab(config(Routing::Native, 2, Some("2ms")));
    lab.discover().await.unwrap();
    let p1 = lab.add_pod("p1", "a-1").unwrap();
    let p2 = lab.add_pod("p2", "a-2").unwrap();
    let p3 = lab.add_pod("p3", "b-1").unwrap();
    let same = median_rtt(&p1, echo_server(&p2, 1), 200);
    let cross = median_rtt(&p1, echo_server(&p3, 1), 200);
    let added = cross.saturating_sub(same);
    let want = 2 * one_way;
    eprintln!("same-zone RTT {same:?}, cross-zone RTT {cross:?}, added {added:?} (want {want:?})");
    assert!(same < Duration::from_millis(1), "same-zone RTT {same:?} must not carry the delay");
    assert!(
        added.as_secs_f64() > want.as_secs_f64() * 0.8 && added.as_secs_f64() < want.as_secs_f64() * 1.2,
        "added RTT {added:?} not within 20% of {want:?}"
    );
    let pids = lab.pids();
    assert_eq!(pids.len(), 1, "one forwarder process");
    let id = lab.id().to_string();
    lab.teardown().await.unwrap();
    assert_gone(&id, &pids);
}

#[tokio::test]
async fn teardown_leaves_nothing_behind_and_can_run_twice() {
    let _g = lab_lock(false);
    let links = host_links();
    let mut lab = new_lab(config(Routing::Vxlan, 1, Some("100us")));
    lab.discover().await.unwrap();
    lab.add_pod("p1", "b-1").unwrap();
    let id = lab.id().to_string();
    let pids = lab.pids();
    assert!(PathBuf::from(format!("/run/zonebench/labs/{id}.json")).exists());
    assert!(!processes_mentioning(&format!("{id}-")).is_empty(), "the forwarder runs");
    assert_eq!(host_links(), links, "the lab must not touch the host's links");
    lab.teardown().await.unwrap();
    lab.teardown().await.unwrap();
    assert_gone(&id, &pids);
    assert_eq!(host_links(), links);
    assert!(!lab.run_dir().exists(), "the lab's own run directory is removed");
}

#[tokio::test]
async fn dropping_the_handle_removes_the_lab() {
    let _g = lab_lock(false);
    let mut lab = new_lab(config(Routing::Native, 1, Some("100us")));
    lab.discover().await.unwrap();
    let id = lab.id().to_string();
    let pids = lab.pids();
    drop(lab);
    assert_gone(&id, &pids);
}

#[test]
fn a_failed_build_removes_what_it_built() {
    let _g = lab_lock(false);
    let bad = lab::ForwarderProgram { path: "/bin/false".into(), args: vec![] };
    let mut lab = LabPlatform::new(
        config(Routing::Native, 1, Some("1ms")),
        LabOptions { forwarder: Some(bad), ..LabOptions::default() },
    )
    .unwrap();
    let e = format!("{:#}", lab.build().unwrap_err());
    assert!(e.contains("delay forwarder exited"), "{e}");
    assert_gone(lab.id().as_str(), &[]);
}

#[test]
fn lab_up_stays_up_until_down_and_status_reports_it() {
    let _g = lab_lock(false);
    let options = LabOptions { forwarder: Some(forwarder()), ..LabOptions::default() };
    let id = lab::up(config(Routing::VxlanCrosssubnet, 1, Some("500us")), options).unwrap();
    let st = lab::status().into_iter().find(|s| s.id == id.as_str()).expect("status lists the lab");
    assert!(st.has_state_file && st.detached);
    assert_eq!(st.nodes, ["a-1", "b-1"]);
    assert_eq!(st.namespaces_present.len(), 3, "{st:?}");
    assert!(st.namespaces_missing.is_empty());
    assert_eq!(st.processes.len(), 1);
    assert!(st.processes[0].alive, "the forwarder outlives `up`");
    let pid = st.processes[0].pid;
    lab::down(id.as_str()).unwrap();
    assert!(lab::status().iter().all(|s| s.id != id.as_str()));
    assert_gone(id.as_str(), &[pid]);
    assert!(lab::down(id.as_str()).is_err(), "a second down says there is no such lab");
}

#[tokio::test]
async fn down_all_removes_a_lab_whose_coordinator_crashed() {
    let _g = lab_lock(true);
    let mut lab = new_lab(config(Routing::Native, 1, Some("100us")));
    lab.discover().await.unwrap();
    lab.add_pod("p1", "a-1").unwrap();
    let id = lab.id().to_string();
    let pids = lab.pids();
    // A crash: no teardown, no drop; the forwarder still runs.
    std::mem::forget(lab);
    assert!(pids.iter().all(|&p| netns::alive(p)));
    // And a stray namespace with the prefix but no state file.
    let stray = format!("{id}-stray");
    netns::run_argv(&["ip".into(), "netns".into(), "add".into(), stray.clone()]).unwrap();
    let removed = lab::down_all().unwrap();
    assert!(removed.contains(&id), "{removed:?}");
    assert_gone(&id, &pids);
}

#[tokio::test]
async fn a_failing_agent_is_reported_with_its_log() {
    let _g = lab_lock(false);
    let agent = AgentProgram { path: "/bin/sh".into(), args: vec!["-c".into(), "echo agent-boom >&2; exit 3".into()] };
    let mut lab =
        LabPlatform::new(config(Routing::Native, 1, None), LabOptions { agent: Some(agent), ..LabOptions::default() })
            .unwrap();
    lab.discover().await.unwrap();
    let t = Instant::now();
    let e = lab
        .deploy(&[AgentRequest { id: "srv-a-0".into(), node: "a-1".into(), max_answer_qps: None, relay: false }])
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("agent-boom") && e.contains("exited"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "a dead agent is reported at once, not after the health timeout");
    let unknown = lab
        .deploy(&[AgentRequest { id: "x".into(), node: "z-9".into(), max_answer_qps: None, relay: false }])
        .await
        .unwrap_err();
    assert!(format!("{unknown:#}").contains("no node \"z-9\""), "{unknown:#}");
    lab.teardown().await.unwrap();
}

#[tokio::test]
async fn deploy_starts_agents_that_answer_health_checks() {
    let _g = lab_lock(false);
    let agent = AgentProgram { path: zonebench_bin(), args: vec!["agent".into()] };
    let mut lab =
        LabPlatform::new(config(Routing::Vxlan, 1, None), LabOptions { agent: Some(agent), ..LabOptions::default() })
            .unwrap();
    lab.discover().await.unwrap();
    let agents = lab
        .deploy(&[
            AgentRequest { id: "srv-a-0".into(), node: "a-1".into(), max_answer_qps: None, relay: false },
            AgentRequest { id: "cli-b-0".into(), node: "b-1".into(), max_answer_qps: None, relay: false },
        ])
        .await
        .unwrap();
    assert_eq!(agents.len(), 2);
    let srv = &agents[0];
    assert_eq!(srv.zone, "a");
    assert!(matches!(&srv.control, ControlEndpoint::Unix(p) if p.exists()));
    let mode = std::fs::metadata(lab.run_dir().join("token")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    // The server's TCP port answers from the other zone's pod.
    let to = SocketAddr::new(srv.ip, srv.tcp_port);
    let client = lab.pods()[1].clone();
    in_netns(&client.netns, move || TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(|_| ()))
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("connecting to agent at {to}: {e}"));
    let pids = lab.pids();
    let id = lab.id().to_string();
    lab.teardown().await.unwrap();
    assert_gone(&id, &pids);
}
