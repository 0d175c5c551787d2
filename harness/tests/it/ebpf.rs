//! The eBPF socket load balancer on a real kernel: real BPF programs on real cgroups, a real
//! network namespace with backends, and client processes placed in the cgroup, as the lab
//! places a node's agents. These tests need root (CI runs as root) and fail, rather than
//! skip, without it.
//!
//! Each test makes a namespace with backend addresses on its loopback device (TCP and UDP servers
//! on threads that answer with their own address) and a VIP that exists on no interface, so
//! a connect that is not rewritten fails with ENETUNREACH and no packet leaves. Clients are
//! this test binary re-run as a child (`client_process`): it moves itself into the cgroup,
//! enters the namespace, runs the probes it was given and prints what answered.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::lab_lock;
use serde::{Deserialize, Serialize};
use zonebench::dataplane::ebpf::{cgroup::cgroup2_mount, EbpfDataplane};
use zonebench::dataplane::{Dataplane, Endpoint, NodeTarget, ServicePort, ServiceRules};
use zonebench::model::Protocol;

const CLIENT_ENV: &str = "ZONEBENCH_EBPF_TEST_CLIENT";
const RESULT_PREFIX: &str = "ebpf-client-result ";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// Probes per check: the chance that a uniform pick misses one of 3 backends in 60 tries is
/// 3·(2/3)^60 ≈ 1e-10.
const PROBES: usize = 60;
const EPERM: i32 = 1;
const ENETUNREACH: i32 = 101;

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with `backends` addresses on its loopback device; deleted on drop.
struct Netns {
    name: String,
    backends: Vec<Ipv4Addr>,
}

impl Netns {
    fn new(backends: usize) -> Netns {
        let name = unique("zbebpf");
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name, backends: (1..=backends).map(|i| Ipv4Addr::new(10, 251, 0, i as u8)).collect() };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        for ip in &ns.backends {
            run(Command::new("ip").args(["-n", &ns.name, "addr", "add", &format!("{ip}/32"), "dev", "lo"]));
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// TCP and UDP servers on every backend address, answering with their own address.
struct Backends {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backends {
    fn start(ns: &Netns) -> Backends {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for &ip in &ns.backends {
            let path = format!("/run/netns/{}", ns.name);
            let (stop_tcp, stop_udp, ready_tcp, ready_udp) =
                (stop.clone(), stop.clone(), ready_tx.clone(), ready_tx.clone());
            let enter = move |path: &str| {
                nix::sched::setns(File::open(path).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap()
            };
            let tcp_path = path.clone();
            threads.push(std::thread::spawn(move || {
                enter(&tcp_path);
                let listener = TcpListener::bind((ip, TCP_PORT)).unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tcp.send(()).unwrap();
                let answer = format!("{ip}:{TCP_PORT}\n");
                while !stop_tcp.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.write_all(answer.as_bytes());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                        Err(e) => panic!("accept on {ip}: {e}"),
                    }
                }
            }));
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let socket = UdpSocket::bind((ip, UDP_PORT)).unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_udp.send(()).unwrap();
                let answer = format!("{ip}:{UDP_PORT}");
                let mut buf = [0u8; 64];
                while !stop_udp.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(answer.as_bytes(), from);
                    }
                }
            }));
        }
        for _ in 0..threads.len() {
            ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        Backends { stop, threads }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A cgroup v2 directory for one node; removed on drop (its client processes have exited).
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn new() -> Cgroup {
        let path = cgroup2_mount().unwrap().join(unique("zonebench-ebpf-test-"));
        std::fs::create_dir(&path).unwrap();
        Cgroup { path }
    }

    fn target(&self, ns: &Netns) -> NodeTarget {
        NodeTarget { netns: ns.name.clone(), cgroup: self.path.clone(), pod_cidr: (Ipv4Addr::new(10, 251, 0, 0), 24) }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// What a client process does: one probe kind, `count` times, against `target`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Probe {
    /// connect(2), then read the server's answer.
    TcpConnect,
    /// sendto(2) on one unconnected UDP socket, then recvfrom(2).
    UdpSendTo,
    /// A new UDP socket per probe, connect(2)ed to the target (as the agent's udp-rr does),
    /// then send(2) and recvfrom(2).
    UdpConnect,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientJob {
    cgroup: PathBuf,
    netns: String,
    probe: Probe,
    target: SocketAddrV4,
    count: usize,
}

/// One probe's outcome: the answer and who the kernel said sent it, or the errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Outcome {
    Answer { answer: String, from: String },
    Errno(i32),
}

/// Runs `count` probes from a child process placed in `cgroup` inside `ns`.
fn probe_from(cgroup: &Cgroup, ns: &Netns, probe: Probe, target: SocketAddrV4, count: usize) -> Vec<Outcome> {
    let job = ClientJob { cgroup: cgroup.path.clone(), netns: ns.name.clone(), probe, target, count };
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ebpf::client_process", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CLIENT_ENV, serde_json::to_string(&job).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client process failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // libtest prints "test ebpf::client_process ... " on the same line, before our output.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(RESULT_PREFIX).map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no result in {stdout}"));
    serde_json::from_str(line).unwrap()
}

fn answers(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Answer { answer, .. } => answer.clone(),
            Outcome::Errno(e) => panic!("a probe failed with errno {e}: {outcomes:?}"),
        })
        .collect()
}

fn errnos(outcomes: &[Outcome]) -> BTreeSet<i32> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Errno(e) => *e,
            Outcome::Answer { answer, .. } => panic!("expected a failure, got an answer from {answer}"),
        })
        .collect()
}

fn tcp_service(vip: Ipv4Addr, backends: &[Ipv4Addr]) -> ServiceRules {
    service(vip, 80, Protocol::Tcp, backends, TCP_PORT)
}

fn service(vip: Ipv4Addr, port: u16, protocol: Protocol, backends: &[Ipv4Addr], backend_port: u16) -> ServiceRules {
    ServiceRules {
        service: ServicePort { name: format!("test/{vip}:{port}"), vip, port, protocol },
        endpoints: backends.iter().map(|&ip| Endpoint { ip, port: backend_port }).collect(),
    }
}

fn addrs(ips: &[Ipv4Addr], port: u16) -> BTreeSet<String> {
    ips.iter().map(|ip| format!("{ip}:{port}")).collect()
}

/// The programs attached to `cgroup`, read back with bpftool.
fn attached_programs(cgroup: &Path) -> Vec<serde_json::Value> {
    // Debian installs it in /usr/sbin, which a non-login PATH may lack.
    let bpftool = ["bpftool", "/usr/sbin/bpftool"]
        .into_iter()
        .find(|b| Command::new(b).arg("version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| panic!("bpftool is missing: apt-get install bpftool (.ci/run does)"));
    let out = Command::new(bpftool).args(["-j", "cgroup", "show"]).arg(cgroup).output().unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return vec![];
    }
    serde_json::from_str(&text).unwrap()
}

#[test]
fn connects_to_a_vip_are_spread_over_every_backend() {
    let _g = lab_lock(false);
    let ns = Netns::new(3);
    let _backends = Backends::start(&ns);
    let cg = Cgroup::new();
    let mut dp = EbpfDataplane::open(&cg.target(&ns)).unwrap();
    let vip = SocketAddrV4::new(VIP, 80);

    // The VIP exists nowhere: without a Service, a connect is not rewritten and cannot leave.
    let before = probe_from(&cg, &ns, Probe::TcpConnect, vip, 1);
    assert_eq!(errnos(&before), BTreeSet::from([ENETUNREACH]));

    let report = dp.sync(&[tcp_service(VIP, &ns.backends)]).unwrap();
    assert_eq!(report.rules, 4, "one service entry and three backend entries");
    assert_eq!(dp.rule_count().unwrap(), 4);

    let outcomes = probe_from(&cg, &ns, Probe::TcpConnect, vip, PROBES);
    assert_eq!(answers(&outcomes), addrs(&ns.backends, TCP_PORT));
    dp.teardown().unwrap();
}

#[test]
fn each_node_cgroup_routes_to_its_own_endpoint_subset() {
    let _g = lab_lock(false);
    let ns = Netns::new(3);
    let _backends = Backends::start(&ns);
    let (zone_a, zone_b) = (Cgroup::new(), Cgroup::new());
    let mut dp_a = EbpfDataplane::open(&zone_a.target(&ns)).unwrap();
    let mut dp_b = EbpfDataplane::open(&zone_b.target(&ns)).unwrap();
    let (a_eps, b_eps) = (&ns.backends[..2], &ns.backends[2..]);
    dp_a.sync(&[tcp_service(VIP, a_eps)]).unwrap();
    dp_b.sync(&[tcp_service(VIP, b_eps)]).unwrap();

    let vip = SocketAddrV4::new(VIP, 80);
    assert_eq!(answers(&probe_from(&zone_a, &ns, Probe::TcpConnect, vip, PROBES)), addrs(a_eps, TCP_PORT));
    assert_eq!(answers(&probe_from(&zone_b, &ns, Probe::TcpConnect, vip, PROBES)), addrs(b_eps, TCP_PORT));
    dp_a.teardown().unwrap();
    dp_b.teardown().unwrap();
}

#[test]
fn a_service_without_endpoints_refuses_connects_and_datagrams_with_eperm() {
    let _g = lab_lock(false);
    let ns = Netns::new(1);
    let _backends = Backends::start(&ns);
    let cg = Cgroup::new();
    let mut dp = EbpfDataplane::open(&cg.target(&ns)).unwrap();
    dp.sync(&[tcp_service(VIP, &[]), service(VIP, 53, Protocol::Udp, &[], UDP_PORT)]).unwrap();
    assert_eq!(dp.rule_count().unwrap(), 2);

    assert_eq!(
        errnos(&probe_from(&cg, &ns, Probe::TcpConnect, SocketAddrV4::new(VIP, 80), 3)),
        BTreeSet::from([EPERM])
    );
    assert_eq!(errnos(&probe_from(&cg, &ns, Probe::UdpSendTo, SocketAddrV4::new(VIP, 53), 3)), BTreeSet::from([EPERM]));
    dp.teardown().unwrap();
}

#[test]
fn udp_to_a_vip_reaches_every_backend_sent_or_connected_and_replies_come_from_the_vip() {
    let _g = lab_lock(false);
    let ns = Netns::new(3);
    let _backends = Backends::start(&ns);
    let cg = Cgroup::new();
    let mut dp = EbpfDataplane::open(&cg.target(&ns)).unwrap();
    dp.sync(&[service(VIP, 53, Protocol::Udp, &ns.backends, UDP_PORT)]).unwrap();

    let vip = SocketAddrV4::new(VIP, 53);
    for probe in [Probe::UdpSendTo, Probe::UdpConnect] {
        let outcomes = probe_from(&cg, &ns, probe, vip, PROBES);
        assert_eq!(answers(&outcomes), addrs(&ns.backends, UDP_PORT), "{probe:?}");
        for o in &outcomes {
            let Outcome::Answer { from, .. } = o else { unreachable!("answers() checked") };
            assert_eq!(from, &vip.to_string(), "{probe:?}: recvmsg4 must show the VIP as the reply's source");
        }
    }
    // A UDP service is not a TCP one: the same VIP and port over TCP is left alone.
    assert_eq!(errnos(&probe_from(&cg, &ns, Probe::TcpConnect, vip, 1)), BTreeSet::from([ENETUNREACH]));
    dp.teardown().unwrap();
}

#[test]
fn a_resync_replaces_the_table_and_drops_removed_services() {
    let _g = lab_lock(false);
    let ns = Netns::new(3);
    let _backends = Backends::start(&ns);
    let cg = Cgroup::new();
    let mut dp = EbpfDataplane::open(&cg.target(&ns)).unwrap();
    let (vip, vip2) = (SocketAddrV4::new(VIP, 80), SocketAddrV4::new(VIP2, 80));
    let b = &ns.backends;

    dp.sync(&[tcp_service(VIP, &b[..1])]).unwrap();
    assert_eq!(answers(&probe_from(&cg, &ns, Probe::TcpConnect, vip, 5)), addrs(&b[..1], TCP_PORT));

    // A bad table is refused whole, naming the clash, and the programmed one stays.
    let err = dp.sync(&[tcp_service(VIP2, b), tcp_service(VIP, b), tcp_service(VIP, &b[1..])]).unwrap_err();
    assert!(err.to_string().contains("both claim 10.96.0.10:80/tcp"), "{err}");
    assert_eq!(dp.rule_count().unwrap(), 2);
    assert_eq!(answers(&probe_from(&cg, &ns, Probe::TcpConnect, vip, 5)), addrs(&b[..1], TCP_PORT));

    let report = dp.sync(&[tcp_service(VIP, &b[1..]), tcp_service(VIP2, &b[..1])]).unwrap();
    assert_eq!(report.rules, 1 + 2 + 1 + 1);
    assert_eq!(dp.rule_count().unwrap(), report.rules, "stale backend entries must be gone");
    assert_eq!(answers(&probe_from(&cg, &ns, Probe::TcpConnect, vip, PROBES)), addrs(&b[1..], TCP_PORT));
    assert_eq!(answers(&probe_from(&cg, &ns, Probe::TcpConnect, vip2, 5)), addrs(&b[..1], TCP_PORT));

    let report = dp.sync(&[tcp_service(VIP2, &b[..1])]).unwrap();
    assert_eq!((report.rules, dp.rule_count().unwrap()), (2, 2));
    assert_eq!(errnos(&probe_from(&cg, &ns, Probe::TcpConnect, vip, 1)), BTreeSet::from([ENETUNREACH]));

    assert_eq!(dp.sync(&[]).unwrap().rules, 0);
    assert_eq!(dp.rule_count().unwrap(), 0);
    dp.teardown().unwrap();
}

#[test]
fn teardown_detaches_every_program_and_frees_every_map() {
    let _g = lab_lock(false);
    let ns = Netns::new(2);
    let _backends = Backends::start(&ns);
    let cg = Cgroup::new();
    let mut dp = EbpfDataplane::open(&cg.target(&ns)).unwrap();
    dp.sync(&[tcp_service(VIP, &ns.backends)]).unwrap();

    let ids = dp.kernel_ids().unwrap().unwrap();
    let attached: BTreeSet<u64> = attached_programs(&cg.path).iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(attached, ids.programs.iter().map(|&id| u64::from(id)).collect(), "connect4, sendmsg4 and recvmsg4");
    let live_maps: BTreeSet<u32> = aya::maps::loaded_maps().filter_map(Result::ok).map(|m| m.id()).collect();
    assert!(ids.maps.iter().all(|id| live_maps.contains(id)), "{ids:?} not in {live_maps:?}");

    dp.teardown().unwrap();
    dp.teardown().unwrap(); // idempotent
    assert_eq!(attached_programs(&cg.path), Vec::<serde_json::Value>::new());
    assert_eq!(dp.kernel_ids().unwrap(), None);
    // Nothing pinned and no fd left: the kernel frees the programs and the maps. A program
    // drops its map references after an RCU grace period, so the maps go a moment later.
    let gone = || {
        let live_progs: BTreeSet<u32> =
            aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect();
        let live_maps: BTreeSet<u32> = aya::maps::loaded_maps().filter_map(Result::ok).map(|m| m.id()).collect();
        ids.programs.iter().all(|id| !live_progs.contains(id)) && ids.maps.iter().all(|id| !live_maps.contains(id))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "programs {:?} or maps {:?} still exist 10 s after teardown", ids.programs, ids.maps);
    assert_eq!(dp.rule_count().unwrap(), 0);
    let err = dp.sync(&[tcp_service(VIP, &ns.backends)]).unwrap_err();
    assert!(err.to_string().contains("torn down"), "{err}");
    // And sockets in the cgroup are no longer redirected.
    assert_eq!(
        errnos(&probe_from(&cg, &ns, Probe::TcpConnect, SocketAddrV4::new(VIP, 80), 1)),
        BTreeSet::from([ENETUNREACH])
    );
}

#[test]
fn opening_on_a_directory_outside_cgroup_v2_names_the_problem() {
    let _g = lab_lock(false);
    let dir = std::env::temp_dir();
    let target =
        NodeTarget { netns: "unused".into(), cgroup: dir.clone(), pod_cidr: (Ipv4Addr::new(10, 251, 0, 0), 24) };
    let err = EbpfDataplane::open(&target).unwrap_err().to_string();
    assert!(err.contains("is not a cgroup v2 directory") && err.contains(&dir.display().to_string()), "{err}");
}

/// Not a test: the client process the tests above start (see `probe_from`).
#[test]
#[ignore = "a helper process: the other tests run it inside a test cgroup"]
fn client_process() {
    let job = std::env::var(CLIENT_ENV).unwrap_or_else(|_| panic!("{CLIENT_ENV} is unset: this runs only as a helper"));
    let job: ClientJob = serde_json::from_str(&job).unwrap();
    // Sockets belong to the cgroup of the process that creates them: move first, then open
    // sockets (writing our pid moves every thread of this process).
    std::fs::write(job.cgroup.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    nix::sched::setns(File::open(format!("/run/netns/{}", job.netns)).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap();
    let target = SocketAddr::V4(job.target);
    let timeout = Duration::from_secs(2);
    let outcomes: Vec<Outcome> = match job.probe {
        Probe::TcpConnect => (0..job.count)
            .map(|_| match TcpStream::connect_timeout(&target, timeout) {
                Ok(mut conn) => {
                    conn.set_read_timeout(Some(timeout)).unwrap();
                    let mut answer = String::new();
                    conn.read_to_string(&mut answer).unwrap();
                    Outcome::Answer { answer: answer.trim().to_string(), from: conn.peer_addr().unwrap().to_string() }
                }
                Err(e) => Outcome::Errno(e.raw_os_error().unwrap_or(-1)),
            })
            .collect(),
        Probe::UdpSendTo => {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            socket.set_read_timeout(Some(timeout)).unwrap();
            (0..job.count)
                .map(|i| {
                    if let Err(e) = socket.send_to(format!("probe {i}").as_bytes(), target) {
                        return Outcome::Errno(e.raw_os_error().unwrap_or(-1));
                    }
                    let mut buf = [0u8; 64];
                    let (n, from) = socket.recv_from(&mut buf).unwrap();
                    Outcome::Answer { answer: String::from_utf8_lossy(&buf[..n]).into_owned(), from: from.to_string() }
                })
                .collect()
        }
        Probe::UdpConnect => (0..job.count)
            .map(|i| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                socket.set_read_timeout(Some(timeout)).unwrap();
                if let Err(e) = socket.connect(target) {
                    return Outcome::Errno(e.raw_os_error().unwrap_or(-1));
                }
                socket.send(format!("probe {i}").as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = socket.recv_from(&mut buf).unwrap();
                Outcome::Answer { answer: String::from_utf8_lossy(&buf[..n]).into_owned(), from: from.to_string() }
            })
            .collect(),
    };
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&outcomes).unwrap());
}
