//! The lab: a multi-zone cluster emulated with network namespaces on one Linux host (root).
//!
//! Each node is a namespace on its zone's underlay subnet; a router namespace joins the
//! zones (a bridge per zone) and shapes and delays inter-zone traffic; pods are namespaces
//! inside their node's pod CIDR, created when an agent is deployed. Pod routing is native,
//! VXLAN, or VXLAN across zones only. Nothing is created in the host's namespace: the
//! coordinator reaches agents over unix sockets in the run directory.
//!
//! Services get virtual IPs that each node's service dataplane (`lab.service_dataplane`:
//! kube-proxy's iptables or nftables layout, or an eBPF socket load balancer) translates
//! to the agents behind them; each node's pod processes share a cgroup, where the eBPF
//! dataplane attaches.
//!
//! - [`topology`]: the addressing plan and build commands (pure);
//! - [`netns`]: running `ip`/`tc` and reading namespaces and processes;
//! - [`delay`]: the TUN delay forwarder (the kernel here has no netem);
//! - [`state`]: the state file each lab leaves in `/run/zonebench/labs`;
//! - [`admin`]: `zonebench lab up | status | down [--all]`;
//! - [`services`]: Service VIPs, the endpoints each node uses, the per-node dataplanes;
//! - [`cgroup`]: the per-node cgroups; [`probe`]: the programming-latency connect probe.
//!
//! Every lab is removed by [`LabPlatform`]'s `teardown` (also on drop), or later by
//! [`admin::down`]/[`admin::down_all`] from its state file and name prefix.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};

use super::process::log_tail;
use super::{Capability, Platform};
use crate::control_client::ControlClient;
use crate::dataplane::NodeTarget;
use crate::model::{
    AgentPort, AgentProgram, AgentRequest, ClusterTopology, ControlEndpoint, DeployedAgent, DeployedService,
    Fingerprint, Node, NodeProgramming, ProbeRequest, ServiceRequest, ServicesApplied,
};
use crate::model::{DataplaneKind, DataplaneName};
use crate::scenario::LabConfig;

pub mod admin;
pub mod cgroup;
pub mod delay;
pub mod kubernetes;
pub mod netns;
pub mod probe;
pub mod services;
pub mod state;
pub mod topology;

pub use admin::{down, down_all, kubeconfig, status, up, LabStatus};
pub use delay::{forwarder_command, run_delay_forwarder, DelayForwarderArgs, ForwarderProgram, StopOn};
pub use probe::ConnectProbeArgs;
use services::{LabService, LabServices, ServiceEndpoint};
use state::{LabState, ProcRecord};
use topology::{LabId, Plan, PodPlan};

/// Agent ports inside each pod: the agent's own defaults (every pod has its own address, so
/// all agents share them).
pub use zonebench_agent::ports::{
    DEFAULT_HTTP_PORT as AGENT_HTTP_PORT, DEFAULT_TCP_PORT as AGENT_TCP_PORT, DEFAULT_UDP_PORT as AGENT_UDP_PORT,
};
/// How long a freshly started agent may take to answer its health check.
const HEALTHY_WITHIN: Duration = Duration::from_secs(15);
/// How long the forwarder may take to attach to its TUN device.
const FORWARDER_READY_WITHIN: Duration = Duration::from_secs(5);
/// How long processes get between SIGTERM and SIGKILL at teardown.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Knobs besides the scenario's `[lab]` table.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// The agent to start in pods (needed by `deploy` only).
    pub agent: Option<AgentProgram>,
    /// The delay forwarder (default: this executable's `lab delay-forwarder`).
    pub forwarder: Option<ForwarderProgram>,
    /// Where agent sockets, the token and logs go (default `/run/zonebench/<id>`, removed
    /// with the lab). Unix socket paths must stay under 108 bytes, so keep it short.
    pub run_dir: Option<PathBuf>,
    /// A fixed lab id (default: random).
    pub id: Option<LabId>,
    /// Where state files go (default [`state::STATE_DIR`]).
    pub state_dir: Option<PathBuf>,
    /// The connect probe (default: this executable's `lab connect-probe`).
    pub probe: Option<ForwarderProgram>,
}

struct Proc {
    record: ProcRecord,
    child: Child,
    /// Held open so an attached forwarder sees end of file only when we go.
    _stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// The lab as a [`Platform`]. `discover` builds it, `deploy` adds pods and agents,
/// `teardown` (or dropping the handle) removes everything.
pub struct LabPlatform {
    config: LabConfig,
    plan: Plan,
    options: LabOptions,
    state_dir: PathBuf,
    run_dir: PathBuf,
    owns_run_dir: bool,
    /// Some from the moment the build starts until teardown finishes.
    state: Option<LabState>,
    procs: Vec<Proc>,
    pods: Vec<PodPlan>,
    pod_slots: HashMap<String, u32>,
    token: Option<String>,
    spawner: Option<crate::platform::process::Spawner>,
    /// Built by `lab up`: processes outlive this handle and dropping it keeps the lab.
    detached: bool,
    /// Where cgroup v2 is mounted; without it node cgroups (and the eBPF dataplane) are
    /// unavailable, and nothing else changes.
    cgroup_mount: Option<PathBuf>,
    services: LabServices,
    /// The Kubernetes lab's components (`lab.kubernetes`), once started.
    kube: Option<kubernetes::cluster::KubeCluster>,
}

impl LabPlatform {
    pub fn new(config: LabConfig, options: LabOptions) -> anyhow::Result<LabPlatform> {
        let state_dir = options.state_dir.clone().unwrap_or_else(|| PathBuf::from(state::STATE_DIR));
        let id = match &options.id {
            Some(id) => id.clone(),
            None => fresh_id(&state_dir)?,
        };
        let plan = Plan::new(id.clone(), &config).map_err(anyhow::Error::msg)?;
        let config_dataplane = config.service_dataplane;
        let (run_dir, owns_run_dir) = match &options.run_dir {
            Some(d) => (d.clone(), false),
            None => (PathBuf::from(format!("/run/zonebench/{id}")), true),
        };
        Ok(LabPlatform {
            config,
            plan,
            options,
            state_dir,
            run_dir,
            owns_run_dir,
            state: None,
            procs: vec![],
            pods: vec![],
            pod_slots: HashMap::new(),
            token: None,
            spawner: None,
            detached: false,
            cgroup_mount: cgroup::mount_point(),
            services: LabServices::new(config_dataplane),
            kube: None,
        })
    }

    pub fn id(&self) -> &LabId {
        &self.plan.id
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Pods created so far.
    pub fn pods(&self) -> &[PodPlan] {
        &self.pods
    }

    /// Pids of the processes this handle started (forwarder, agents).
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.record.pid).collect()
    }

    /// Builds the lab (namespaces, router, links, shaping, forwarder) unless already built.
    pub fn build(&mut self) -> anyhow::Result<()> {
        if self.state.is_some() {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the lab platform needs root (it creates network namespaces); run as root or choose another platform"
            );
        }
        let id = self.plan.id.clone();
        if netns::exists(&self.plan.router_netns) {
            bail!("lab {id} already exists; remove it with `zonebench lab down {id}`");
        }
        if self.plan.host_link.is_some() {
            host_link_free()?;
        }
        let created_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.state = Some(LabState {
            id: id.to_string(),
            config: self.config.clone(),
            created_unix,
            owner_pid: std::process::id(),
            detached: self.detached,
            run_dir: self.run_dir.clone(),
            owns_run_dir: self.owns_run_dir,
            namespaces: self.plan.namespaces(),
            processes: vec![],
            cgroups: self.cgroups(),
        });
        let built = self.build_inner();
        if let Err(e) = built {
            let cleanup = self.teardown_sync();
            let e = e.context(format!("building lab {id}"));
            return Err(match cleanup {
                Ok(()) => e,
                Err(c) => e.context(format!("and removing the partial lab failed too: {c:#}")),
            });
        }
        Ok(())
    }

    fn build_inner(&mut self) -> anyhow::Result<()> {
        self.save_state()?;
        std::fs::create_dir_all(&self.run_dir).with_context(|| format!("creating {}", self.run_dir.display()))?;
        self.spawner = Some(crate::platform::process::Spawner::new(self.plan.id.as_str())?);
        netns::run_all(&self.plan.build_commands())?;
        for dir in self.cgroups() {
            cgroup::create(&dir)?;
        }
        if let Some(delay) = self.plan.delay {
            self.start_forwarder(delay)?;
        }
        if self.plan.control_plane.is_some() {
            let program = match &self.options.forwarder {
                Some(p) => p.clone(),
                None => ForwarderProgram::current_exe()?,
            };
            let agent =
                self.options.agent.clone().context(
                    "no agent program configured for the lab: the Kubernetes lab's node agents run it in pods",
                )?;
            let cgroups: HashMap<String, PathBuf> =
                self.plan.nodes.iter().filter_map(|n| Some((n.name.clone(), self.node_cgroup(&n.name)?))).collect();
            let spawner = self.spawner.as_ref().context("the lab is not built")?;
            let kube = kubernetes::cluster::KubeCluster::start(
                &self.plan,
                &self.config,
                &self.run_dir,
                &program,
                &agent,
                &|node| cgroups.get(node).cloned(),
                spawner,
                !self.detached,
            )?;
            self.kube = Some(kube);
            self.save_state()?;
        }
        Ok(())
    }

    /// The Kubernetes lab's components, when `lab.kubernetes` is set and the lab is built.
    pub fn kube(&self) -> Option<&kubernetes::cluster::KubeCluster> {
        self.kube.as_ref()
    }

    /// The nodes as the Kubernetes lab's node reader needs them.
    pub fn kube_nodes(&self) -> Vec<kubernetes::node_access::LabNode> {
        self.plan
            .nodes
            .iter()
            .map(|n| kubernetes::node_access::LabNode {
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.underlay_ip,
            })
            .collect()
    }

    /// Restarts the Kubernetes lab's kube-proxies in `mode` (see
    /// [`kubernetes::cluster::KubeCluster::set_proxy_mode`]); the state file follows.
    pub fn set_kube_proxy_mode(&mut self, mode: kubernetes::kube_proxy::ProxyMode) -> anyhow::Result<()> {
        let spawner = self.spawner.as_ref().context("the lab is not built")?;
        let kube = self.kube.as_mut().context("the lab has no Kubernetes components")?;
        kube.set_proxy_mode(mode, spawner)?;
        self.config.service_dataplane = match mode {
            kubernetes::kube_proxy::ProxyMode::Iptables => DataplaneKind::Iptables,
            kubernetes::kube_proxy::ProxyMode::Nftables => DataplaneKind::Nftables,
        };
        self.save_state()
    }

    fn start_forwarder(&mut self, delay: Duration) -> anyhow::Result<()> {
        let program = match &self.options.forwarder {
            Some(p) => p.clone(),
            None => ForwarderProgram::current_exe()?,
        };
        let router = self.plan.router_netns.clone();
        let cmd = forwarder_command(&program, &router, &self.plan.tun, delay, !self.detached);
        let log = self.run_dir.join("delay-forwarder.log");
        let mut proc = self.spawn_logged(cmd, "delay-forwarder", &router, &log)?;
        proc._stdin = proc.child.stdin.take();
        self.procs.push(proc);
        self.save_state()?;
        // The TUN gains its carrier when the forwarder attaches; until then inter-zone
        // packets would be dropped.
        let deadline = Instant::now() + FORWARDER_READY_WITHIN;
        loop {
            if tun_attached(&router, &self.plan.tun)? {
                return Ok(());
            }
            let p = self.procs.last_mut().context("the forwarder's handle vanished")?;
            if let Some(status) = p.child.try_wait()? {
                bail!("the delay forwarder exited ({status}) before attaching: {}", log_tail(&log));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the delay forwarder did not attach to {} within {FORWARDER_READY_WITHIN:?}: {}",
                    self.plan.tun,
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn_logged(&mut self, mut cmd: Command, role: &str, netns: &str, log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let spawner = self.spawner.as_ref().context("the lab is not built")?;
        let child = spawner.spawn(cmd)?;
        let record = ProcRecord::new(child.id() as i32, role, netns);
        Ok(Proc { record, child, _stdin: None, log: log.to_path_buf() })
    }

    fn save_state(&mut self) -> anyhow::Result<()> {
        let mut procs: Vec<ProcRecord> = self.procs.iter().map(|p| p.record.clone()).collect();
        if let Some(k) = &self.kube {
            procs.extend(k.processes().into_iter().map(|(role, pid, netns)| ProcRecord::new(pid as i32, role, netns)));
        }
        if let Some(st) = self.state.as_mut() {
            st.processes = procs;
            st.save(&self.state_dir)?;
        }
        Ok(())
    }

    pub fn topology(&self) -> ClusterTopology {
        // The figure the hints are computed from (equal per node), not the host's cores.
        let cpu_millis = services::LAB_NODE_CPU_MILLIS;
        let nodes = self
            .plan
            .nodes
            .iter()
            .map(|n| Node { name: n.name.clone(), zone: n.zone.clone(), cpu_millis, ready: true })
            .collect::<Vec<_>>();
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("lab_id".to_string(), self.plan.id.to_string());
        extra.insert("underlay_mtu".to_string(), self.plan.underlay_mtu.to_string());
        extra.insert("service_dataplane".to_string(), self.services.kind().to_string());
        if let Some(d) = &self.config.inter_zone_delay {
            extra.insert("inter_zone_delay".to_string(), d.clone());
        }
        if let Some(r) = &self.config.inter_zone_rate {
            extra.insert("inter_zone_rate".to_string(), r.clone());
        }
        let fingerprint = Fingerprint {
            platform: "lab".into(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            routing: Some(self.plan.routing),
            mtu: Some(self.plan.pod_mtu),
            zones: self.plan.zones.iter().map(|z| z.name.clone()).collect(),
            nodes: nodes.len(),
            zonebench_version: env!("CARGO_PKG_VERSION").to_string(),
            extra,
        };
        ClusterTopology { nodes, fingerprint }
    }

    /// The cgroup directories of the nodes (none without a cgroup v2 mount).
    fn cgroups(&self) -> Vec<PathBuf> {
        let Some(mount) = &self.cgroup_mount else { return vec![] };
        self.plan.nodes.iter().map(|n| cgroup::node_dir(mount, &self.plan.id, &n.name)).collect()
    }

    /// The cgroup of `node`'s pod processes, when the host has cgroup v2.
    pub fn node_cgroup(&self, node: &str) -> Option<PathBuf> {
        let mount = self.cgroup_mount.as_ref()?;
        self.plan.node(node).map(|n| cgroup::node_dir(mount, &self.plan.id, &n.name))
    }

    /// Where `node`'s service dataplane lives. Without cgroup v2 the cgroup path is empty
    /// (only the eBPF dataplane needs it, and it says so).
    pub fn node_target(&self, node: &str) -> Option<NodeTarget> {
        let n = self.plan.node(node)?;
        Some(NodeTarget {
            netns: n.netns.clone(),
            cgroup: self.node_cgroup(node).unwrap_or_default(),
            pod_cidr: (n.pod_cidr.addr, n.pod_cidr.len),
        })
    }

    /// Allocates VIPs for `requests`, programs every node's dataplane with the whole table
    /// (the probe's node first, so the probe times that node's programming, not the
    /// others'), and runs the probe if asked.
    pub fn apply_services_sync(
        &mut self,
        requests: &[ServiceRequest],
        probe: Option<&ProbeRequest>,
    ) -> anyhow::Result<ServicesApplied> {
        if self.state.is_none() {
            bail!("the lab is not built yet (discover first)");
        }
        let mut table = Vec::with_capacity(requests.len());
        let mut seen = std::collections::HashSet::new();
        for r in requests {
            services::check_name(&r.name)?;
            if !seen.insert(r.name.as_str()) {
                bail!("service {:?} is requested twice", r.name);
            }
            if r.ports.is_empty() {
                bail!("service {:?} has no ports", r.name);
            }
            let mut endpoints = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let pod = self
                    .pods
                    .iter()
                    .find(|p| &p.agent_id == b)
                    .with_context(|| format!("service {:?}: backend agent {b:?} is not deployed", r.name))?;
                endpoints.push(ServiceEndpoint {
                    agent: b.clone(),
                    ip: pod.ip,
                    node: pod.node.clone(),
                    zone: pod.zone.clone(),
                    hints: None,
                });
            }
            let ports = r.ports.iter().map(|&p| (p, lab_port(p))).collect();
            table.push(LabService {
                name: r.name.clone(),
                vip: self.services.vip_for(&r.name)?,
                ports,
                routing: r.routing,
                endpoints,
            });
        }

        let mut nodes: Vec<(String, String)> =
            self.plan.nodes.iter().map(|n| (n.name.clone(), n.zone.clone())).collect();
        // The controller's hints, from the lab's nodes, before any node programs them.
        let mut verdicts = Vec::with_capacity(table.len());
        for s in &mut table {
            verdicts.push(services::write_hints(s, &nodes)?);
        }
        let mut started = None;
        if let Some(p) = probe {
            let client_node = self
                .pods
                .iter()
                .find(|pod| pod.agent_id == p.from_agent)
                .with_context(|| format!("the probe's client agent {:?} is not deployed", p.from_agent))?
                .node
                .clone();
            let pod = self.probe_pod(&client_node)?;
            let svc = table
                .iter()
                .find(|s| s.name == p.service)
                .with_context(|| format!("the probe's service {:?} is not among the services", p.service))?;
            let port = svc
                .ports
                .iter()
                .find(|(ap, _)| *ap == p.port)
                .with_context(|| format!("service {:?} has no {} port", p.service, p.port.name()))?
                .1;
            let program = match &self.options.probe {
                Some(prog) => prog.clone(),
                None => ForwarderProgram::current_exe()?.with_args(&["lab", "connect-probe"]),
            };
            let target = std::net::SocketAddr::from((svc.vip, port));
            let cgroup = self.node_cgroup(&pod.node);
            started = Some(probe::Probe::start(&program, &pod.netns, cgroup.as_deref(), target, p.within)?);
            nodes.sort_by_key(|(name, _)| *name != pod.node);
        }

        let mut programming = Vec::with_capacity(nodes.len());
        for (i, (node, zone)) in nodes.iter().enumerate() {
            let target = self.node_target(node).with_context(|| format!("node {node} vanished from the plan"))?;
            let rules = services::rules_for_node(node, zone, &table);
            let dp = self.services.dataplane(node, &target)?;
            if i == 0 {
                if let Some(p) = started.as_mut() {
                    p.go()?;
                }
            }
            let report = dp.sync(&rules).with_context(|| format!("programming Services on node {node}"))?;
            programming.push(NodeProgramming {
                node: node.clone(),
                rules: Some(report.rules),
                elapsed: Some(report.elapsed),
            });
        }
        let probed = started.map(probe::Probe::wait).transpose()?;
        Ok(ServicesApplied {
            services: table
                .iter()
                .zip(verdicts)
                .map(|(s, v)| DeployedService {
                    name: s.name.clone(),
                    ip: IpAddr::V4(s.vip),
                    ports: s.ports.clone(),
                    hints: Some(v),
                    routes: nodes
                        .iter()
                        .map(|(node, zone)| {
                            let chosen = services::endpoints_for_node(node, zone, s);
                            (node.to_string(), chosen.iter().map(|e| e.agent.clone()).collect())
                        })
                        .collect(),
                })
                .collect(),
            dataplane: DataplaneName::Lab(self.services.kind()),
            nodes: programming,
            probe: probed,
        })
    }

    /// The pod the connect probe runs in on `node`, created on first use. A pod of its own:
    /// see [`probe`] for why not an agent's.
    fn probe_pod(&mut self, node: &str) -> anyhow::Result<PodPlan> {
        let id = format!("probe-{node}");
        if let Some(p) = self.pods.iter().find(|p| p.agent_id == id) {
            return Ok(p.clone());
        }
        self.add_pod(&id, node)
    }

    /// Switches every node to another dataplane (the current one's rules are removed).
    pub fn set_service_dataplane_sync(&mut self, kind: DataplaneKind) -> anyhow::Result<()> {
        self.services.switch(kind)
    }

    /// Creates a pod namespace for `agent_id` on `node` and wires it up (no process yet).
    pub fn add_pod(&mut self, agent_id: &str, node: &str) -> anyhow::Result<PodPlan> {
        if self.state.is_none() {
            bail!("the lab is not built yet (discover first)");
        }
        if agent_id.is_empty()
            || agent_id.len() > 64
            || !agent_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || agent_id.starts_with('.')
        {
            bail!("agent id {agent_id:?} must be 1-64 letters, digits, '-', '_' or '.' (it names files)");
        }
        if self.pods.iter().any(|p| p.agent_id == agent_id) {
            bail!("agent {agent_id} is already deployed");
        }
        let Some(n) = self.plan.node(node) else {
            let known: Vec<&str> = self.plan.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!("no node {node:?} in lab {} (nodes: {})", self.plan.id, known.join(", "));
        };
        let slot = self.pod_slots.get(node).copied().unwrap_or(0);
        let pod = self.plan.pod(agent_id, n, slot, self.pods.len() as u32).map_err(anyhow::Error::msg)?;
        self.pod_slots.insert(node.to_string(), slot + 1);
        if let Some(st) = self.state.as_mut() {
            st.namespaces.push(pod.netns.clone());
        }
        self.save_state()?;
        netns::run_all(&self.plan.pod_commands(&pod))
            .with_context(|| format!("creating the pod of agent {agent_id}"))?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    fn token(&mut self) -> anyhow::Result<(String, PathBuf)> {
        let path = self.run_dir.join("token");
        if let Some(t) = &self.token {
            return Ok((t.clone(), path));
        }
        let token = crate::platform::process::random_token()?;
        crate::platform::process::write_token(&path, &token)?;
        self.token = Some(token.clone());
        Ok((token, path))
    }

    /// Creates the pod and starts the agent in it; does not wait for health.
    fn start_agent(&mut self, req: &AgentRequest) -> anyhow::Result<DeployedAgent> {
        let program = self.options.agent.clone().context("no agent program configured for the lab")?;
        let (token, token_path) = self.token()?;
        let pod = self.add_pod(&req.id, &req.node)?;
        let socket = self.run_dir.join(format!("{}.sock", req.id));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the control socket path {} is longer than unix sockets allow; use a shorter run directory",
                socket.display()
            );
        }
        let _ = std::fs::remove_file(&socket);
        let mut cmd = crate::platform::process::command_in(Some(&pod.netns), &program.path, true);
        cmd.args(&program.args).arg("serve");
        cmd.args(["--listen", &pod.ip.to_string()]);
        cmd.args(["--tcp-port", &AGENT_TCP_PORT.to_string()]);
        cmd.args(["--udp-port", &AGENT_UDP_PORT.to_string()]);
        cmd.args(["--http-port", &AGENT_HTTP_PORT.to_string()]);
        cmd.arg("--control").arg(format!("unix:{}", socket.display()));
        cmd.arg("--token-file").arg(&token_path);
        cmd.args(["--id", &req.id, "--zone", &pod.zone, "--node", &pod.node]);
        cmd.args(["--allow-cidr", &topology::POD_SUPERNET.to_string()]);
        cmd.args(["--allow-cidr", &services::SERVICE_CIDR.to_string()]);
        if let Some(q) = req.max_answer_qps {
            cmd.args(["--max-answer-qps", &q.to_string()]);
        }
        if req.relay {
            cmd.arg("--relay");
        }
        cmd.stdin(Stdio::null());
        let log = self.run_dir.join(format!("{}.log", req.id));
        let proc = self.spawn_logged(cmd, &format!("agent:{}", req.id), &pod.netns, &log)?;
        let pid = proc.child.id();
        self.procs.push(proc);
        self.save_state()?;
        // Before the agent opens any client socket (it does so only when a test starts), so
        // every socket of the pod is in its node's cgroup.
        if let Some(dir) = self.node_cgroup(&pod.node) {
            cgroup::join(&dir, pid)
                .with_context(|| format!("placing agent {} in node {}'s cgroup", req.id, pod.node))?;
        }
        Ok(DeployedAgent {
            id: req.id.clone(),
            node: pod.node.clone(),
            zone: pod.zone.clone(),
            ip: IpAddr::V4(pod.ip),
            tcp_port: AGENT_TCP_PORT,
            udp_port: AGENT_UDP_PORT,
            http_port: AGENT_HTTP_PORT,
            control: ControlEndpoint::Unix(socket),
            token,
        })
    }

    /// Why an agent is not healthy: its exit status if it died, and the tail of its log.
    fn agent_failure(&mut self, id: &str) -> String {
        let role = format!("agent:{id}");
        let Some(p) = self.procs.iter_mut().find(|p| p.record.role == role) else { return String::new() };
        let exited = match p.child.try_wait() {
            Ok(Some(status)) => format!("it exited ({status}); "),
            _ => String::new(),
        };
        format!("{exited}log {}: {}", p.log.display(), log_tail(&p.log))
    }

    /// Removes everything this lab created; safe to call again and after a partial build.
    pub fn teardown_sync(&mut self) -> anyhow::Result<()> {
        let Some(st) = self.state.clone() else { return Ok(()) };
        // Rules and BPF attachments first, while their namespaces and cgroups exist; the
        // namespaces' removal below would take nftables and iptables rules with it anyway.
        if let Err(e) = self.services.teardown() {
            tracing::warn!("lab {}: {e:#}", self.plan.id);
        }
        // The Kubernetes lab's components first, the apiserver before etcd.
        if let Some(mut k) = self.kube.take() {
            k.stop();
        }
        // Close the forwarder's stdin first: it exits on its own.
        for p in &mut self.procs {
            p._stdin = None;
        }
        let pids: Vec<i32> = self.procs.iter().filter(|p| p.record.alive()).map(|p| p.record.pid).collect();
        netns::kill_and_wait(&pids, KILL_GRACE);
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.clear();
        if let Some(mut s) = self.spawner.take() {
            s.stop();
        }
        admin::remove_lab(&self.plan.id, Some(&st), &self.state_dir)?;
        self.state = None;
        self.pods.clear();
        self.pod_slots.clear();
        self.token = None;
        Ok(())
    }

    /// Leaves the lab running after this handle goes (for `lab up`).
    fn release(mut self) -> LabId {
        self.state = None;
        if let Some(k) = self.kube.take() {
            k.detach();
        }
        for p in &mut self.procs {
            p._stdin = None;
        }
        self.plan.id.clone()
    }
}

impl Drop for LabPlatform {
    fn drop(&mut self) {
        if self.state.is_some() && !self.detached {
            if let Err(e) = self.teardown_sync() {
                tracing::warn!("removing lab {}: {e:#}", self.plan.id);
            }
        }
    }
}

impl Platform for LabPlatform {
    fn name(&self) -> &'static str {
        "lab"
    }

    fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::Services | Capability::SwitchDataplane => true,
        }
    }

    /// Builds the lab (blocking this thread for the build, about a second) and lists it.
    async fn discover(&mut self) -> anyhow::Result<ClusterTopology> {
        self.build()?;
        Ok(self.topology())
    }

    async fn deploy(&mut self, agents: &[AgentRequest]) -> anyhow::Result<Vec<DeployedAgent>> {
        let mut deployed = Vec::with_capacity(agents.len());
        for a in agents {
            deployed.push(self.start_agent(a)?);
        }
        // All agents start in parallel; then each must answer.
        for d in &deployed {
            let ControlEndpoint::Unix(_) = &d.control else { continue };
            let client = ControlClient::new(d.control.clone(), d.token.clone());
            let pid = self.procs.iter().find(|p| p.record.role == format!("agent:{}", d.id)).map(|p| p.record.pid);
            // An agent that died will never answer: say so at once, not after the timeout.
            let died = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if pid.is_none_or(|p| !netns::alive(p)) {
                        return;
                    }
                }
            };
            let healthy = tokio::select! {
                r = client.wait_healthy(HEALTHY_WITHIN) => r,
                () = died => Err(anyhow::anyhow!("the agent process is gone")),
            };
            if let Err(e) = healthy {
                let why = self.agent_failure(&d.id);
                return Err(e.context(format!("agent {} on node {} did not become healthy; {why}", d.id, d.node)));
            }
        }
        Ok(deployed)
    }

    async fn teardown(&mut self) -> anyhow::Result<()> {
        self.teardown_sync()
    }

    /// Programs every node (blocking this thread for as long as that takes: seconds for
    /// iptables at 10,000 Services).
    async fn apply_services(
        &mut self,
        services: &[ServiceRequest],
        probe: Option<&ProbeRequest>,
    ) -> anyhow::Result<ServicesApplied> {
        self.apply_services_sync(services, probe)
    }

    async fn set_service_dataplane(&mut self, kind: DataplaneKind) -> anyhow::Result<()> {
        self.set_service_dataplane_sync(kind)
    }
}

/// An agent port's number in every pod.
fn lab_port(p: AgentPort) -> u16 {
    match p {
        AgentPort::Tcp => AGENT_TCP_PORT,
        AgentPort::Udp => AGENT_UDP_PORT,
        AgentPort::Http => AGENT_HTTP_PORT,
    }
}

/// Whether the TUN has a reader attached (its carrier is up).
fn tun_attached(netns: &str, tun: &str) -> anyhow::Result<bool> {
    let argv = ["ip", "-n", netns, "-j", "link", "show", "dev", tun].map(String::from);
    let out = netns::run_argv(&argv)?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("parsing `{}`", argv.join(" ")))?;
    let flags = v.get(0).and_then(|l| l.get("flags")).and_then(|f| f.as_array()).cloned().unwrap_or_default();
    Ok(!flags.iter().any(|f| f.as_str() == Some("NO-CARRIER")) && flags.iter().any(|f| f.as_str() == Some("LOWER_UP")))
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(b)
}

/// A random lab id not used by any namespace or state file.
fn fresh_id(state_dir: &Path) -> anyhow::Result<LabId> {
    let taken = netns::lab_ids_present();
    for _ in 0..100 {
        let b = random_bytes::<2>()?;
        let id = LabId::from_bits(u16::from_be_bytes(b));
        if !taken.contains(&id) && !LabState::path(state_dir, &id).exists() {
            return Ok(id);
        }
    }
    bail!("no free lab id after 100 tries; remove old labs with `zonebench lab down --all`")
}

/// A Kubernetes lab routes the pod supernet from the host's namespace (its host link), and
/// only one route can: refuse a second one, naming what holds the route now.
fn host_link_free() -> anyhow::Result<()> {
    let supernet = topology::POD_SUPERNET.to_string();
    let out = netns::run_argv(&["ip".into(), "route".into(), "show".into(), "exact".into(), supernet.clone()])?;
    if let Some(route) = out.lines().map(str::trim).find(|l| !l.is_empty()) {
        bail!(
            "the host already routes the lab's pod network ({route}): another Kubernetes lab is up \
             (`zonebench lab status`; one Kubernetes lab per host), or something else uses {supernet}"
        );
    }
    Ok(())
}
