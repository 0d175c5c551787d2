//! The Kubernetes lab as one piece: on a built lab (namespaces, router, links), the
//! certificates and kubeconfigs, the control plane in its namespace, a node agent (the
//! kubelet's stand-in, which registers the node's Node object and runs the pods bound to
//! it) and a real kube-proxy in every node namespace, and the API forwarder that gives the
//! user's kubectl a loopback address for the apiserver, with a kubeconfig that uses it.
//! [`KubeCluster::start`] returns once every node agent has registered its node and watches
//! its pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::api_forwarder::{api_forwarder_command, read_port_file, SUBCOMMAND};
use super::control_plane::{ControlPlane, ControlPlaneFiles, ControlPlaneSpec, APISERVER_PORT};
use super::kube_proxy::{KubeProxy, KubeProxySpec, ProxyMode};
use super::kubeconfig::{self, KubeconfigSpec};
use super::node_agent::{self, LabFile, NodeAgentArgs};
use super::pki::Pki;
use crate::model::{AgentProgram, DataplaneKind};
use crate::platform::lab::delay::ForwarderProgram;
use crate::platform::lab::services::SERVICE_CIDR;
use crate::platform::lab::topology::{Plan, POD_SUPERNET};
use crate::platform::process::{log_tail, stop_child, Spawner};
use crate::scenario::LabConfig;

/// The `kubernetes` Service's ClusterIP: the first address of the lab's Service range.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
const FORWARDER_READY_WITHIN: Duration = Duration::from_secs(10);
/// How long node agents may take to register their nodes and list their pods.
const NODE_AGENTS_READY_WITHIN: Duration = Duration::from_secs(30);

/// A node agent as started: its process, node and log.
struct NodeAgentProc {
    node: String,
    netns: String,
    child: Child,
    log: PathBuf,
}

/// A running Kubernetes lab's components (the lab's namespaces are its owner's).
pub struct KubeCluster {
    pub control_plane: ControlPlane,
    pub proxies: Vec<KubeProxy>,
    node_agents: Vec<NodeAgentProc>,
    forwarder: Child,
    forwarder_log: PathBuf,
    /// The user's kubeconfig: the apiserver through the forwarder on 127.0.0.1.
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig as the lab's namespaces reach the apiserver.
    pub admin_kubeconfig: PathBuf,
    /// From the start of the control plane to every node registered and its agent watching.
    pub ready_after: Duration,
    /// The binaries, the lab's Kubernetes directory and the control plane's namespace, for
    /// restarting kube-proxy in another mode.
    bin: PathBuf,
    dir: PathBuf,
    control_plane_netns: String,
}

/// Where a lab keeps its Kubernetes files: `<run dir>/kubernetes`.
pub fn dir_of(run_dir: &Path) -> PathBuf {
    run_dir.join("kubernetes")
}

/// The user's kubeconfig of the lab with run directory `run_dir`.
pub fn kubeconfig_of(run_dir: &Path) -> PathBuf {
    dir_of(run_dir).join("kubeconfig")
}

impl KubeCluster {
    /// Starts everything on the built lab `plan` (whose `control_plane` is set). Pods run
    /// `agent` for the zonebench agent image; `cgroup_of(node)` is the cgroup a node's pod
    /// processes join.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        plan: &Plan,
        config: &LabConfig,
        run_dir: &Path,
        program: &ForwarderProgram,
        agent: &AgentProgram,
        cgroup_of: &dyn Fn(&str) -> Option<PathBuf>,
        spawner: &Spawner,
        attached: bool,
    ) -> anyhow::Result<KubeCluster> {
        let cp_plan = plan.control_plane.as_ref().context("the lab plan has no control plane")?;
        let bin = super::bin_dir();
        let mode = match config.service_dataplane {
            DataplaneKind::Iptables => ProxyMode::Iptables,
            DataplaneKind::Nftables => ProxyMode::Nftables,
            other => bail!("lab.service_dataplane = {other} is no kube-proxy mode: use iptables or nftables"),
        };
        let started = Instant::now();
        let dir = dir_of(run_dir);
        let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        let ips = [IpAddr::V4(cp_plan.ip), IpAddr::V4(KUBERNETES_SERVICE_IP)];
        let pki = Pki::generate(&dir.join("pki"), &ips, &names).context("generating the lab's certificates")?;
        let id = plan.id.to_string();
        let server = format!("https://{}:{APISERVER_PORT}", cp_plan.ip);
        let write = |file: &str, user: &str, client, server: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            kubeconfig::write(&path, &KubeconfigSpec { lab_id: &id, server, ca_cert: &pki.ca.cert, client, user })?;
            Ok(path)
        };
        let admin = write("admin.kubeconfig", "admin", &pki.admin, &server)?;
        let kcm =
            write("kube-controller-manager.kubeconfig", "kube-controller-manager", &pki.controller_manager, &server)?;
        let kube_proxy = write("kube-proxy.kubeconfig", "kube-proxy", &pki.kube_proxy, &server)?;
        let scheduler = write("kube-scheduler.kubeconfig", "kube-scheduler", &pki.scheduler, &server)?;

        let control_plane = ControlPlane::start(ControlPlaneSpec {
            netns: cp_plan.netns.clone(),
            ip: cp_plan.ip,
            dir: dir.join("control-plane"),
            bin: bin.clone(),
            service_cidr: SERVICE_CIDR.to_string(),
            files: ControlPlaneFiles::of(&pki, kcm, admin.clone()).with_node_agents(scheduler),
            attached,
        })?;

        // The node agents register the nodes, as kubelets do.
        let lab_file = dir.join("lab.json");
        std::fs::write(&lab_file, serde_json::to_vec(&LabFile { id: id.clone(), config: config.clone() })?)?;
        let agent_program = program.with_args(&node_agent::SUBCOMMAND);
        let mut node_agents = Vec::new();
        for n in &plan.nodes {
            let cert = pki.node(&n.name).with_context(|| format!("no certificate for node {}", n.name))?;
            let user = format!("node-{}", n.name);
            let kubeconfig = write(&format!("node-{}.kubeconfig", n.name), &user, cert, &server)?;
            let ready_file = dir.join(format!("node-agent-{}.ready", n.name));
            let _ = std::fs::remove_file(&ready_file);
            let args = NodeAgentArgs {
                node: n.name.clone(),
                lab: lab_file.clone(),
                kubeconfig,
                agent: agent.path.clone(),
                agent_args: agent.args.clone(),
                pods_dir: dir.join("pods"),
                cgroup: cgroup_of(&n.name),
                ready_file: Some(ready_file),
                watch_stdin: attached,
            };
            let mut cmd = node_agent::command(&agent_program, &args, attached);
            let log = dir.join(format!("node-agent-{}.log", n.name));
            let out = std::fs::File::create(&log)?;
            cmd.stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
            let child = spawner.spawn(cmd).with_context(|| format!("starting the node agent of {}", n.name))?;
            node_agents.push(NodeAgentProc { node: n.name.clone(), netns: n.netns.clone(), child, log });
        }
        // As kubeadm publishes it, so the kube platform's discovery finds the mode.
        publish_proxy_config(&bin, &cp_plan.netns, &admin, &dir, mode, false)?;

        let port_file = dir.join("api-forwarder.port");
        let _ = std::fs::remove_file(&port_file);
        let program = program.with_args(&SUBCOMMAND);
        let target = SocketAddr::new(IpAddr::V4(cp_plan.ip), APISERVER_PORT);
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let mut cmd = api_forwarder_command(&program, &cp_plan.netns, target, listen, &port_file, attached);
        let forwarder_log = dir.join("api-forwarder.log");
        let out = std::fs::File::create(&forwarder_log)?;
        cmd.stdin(if attached { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        let mut forwarder = spawner.spawn(cmd).context("starting the API forwarder")?;
        let deadline = Instant::now() + FORWARDER_READY_WITHIN;
        let port = loop {
            if let Some(p) = read_port_file(&port_file)? {
                break p;
            }
            if let Ok(Some(st)) = forwarder.try_wait() {
                bail!("the API forwarder exited ({st}): {}", log_tail(&forwarder_log));
            }
            if Instant::now() > deadline {
                bail!(
                    "the API forwarder did not listen within {FORWARDER_READY_WITHIN:?}: {}",
                    log_tail(&forwarder_log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let kubeconfig = write("kubeconfig", "admin", &pki.admin, &format!("https://127.0.0.1:{port}"))?;
        let mut cluster = KubeCluster {
            control_plane,
            proxies: Vec::new(),
            node_agents,
            forwarder,
            forwarder_log,
            kubeconfig,
            admin_kubeconfig: admin,
            ready_after: Duration::ZERO,
            bin: bin.clone(),
            dir: dir.clone(),
            control_plane_netns: cp_plan.netns.clone(),
        };
        cluster.wait_node_agents(&dir)?;
        // kube-proxy only once its Node exists, as a DaemonSet pod is only scheduled to a
        // registered node: started earlier, it can miss the node's zone label and route
        // every Service cluster-wide whatever its hints.
        for n in &plan.nodes {
            cluster.proxies.push(KubeProxy::start(
                KubeProxySpec {
                    netns: n.netns.clone(),
                    node: n.name.clone(),
                    node_ip: n.underlay_ip,
                    mode,
                    cluster_cidr: POD_SUPERNET.to_string(),
                    kubeconfig: kube_proxy.clone(),
                    dir: dir.join("kube-proxy"),
                    bin: bin.clone(),
                    attached,
                },
                spawner,
            )?);
        }

        cluster.ready_after = started.elapsed();
        Ok(cluster)
    }

    /// Waits for every node agent's ready file; one that exits is reported with its log.
    fn wait_node_agents(&mut self, dir: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_AGENTS_READY_WITHIN;
        for a in &mut self.node_agents {
            let ready = dir.join(format!("node-agent-{}.ready", a.node));
            while !ready.is_file() {
                if let Ok(Some(st)) = a.child.try_wait() {
                    bail!("the node agent of {} exited ({st}): {}", a.node, log_tail(&a.log));
                }
                if Instant::now() > deadline {
                    bail!(
                        "the node agent of {} was not ready within {NODE_AGENTS_READY_WITHIN:?}: {}",
                        a.node,
                        log_tail(&a.log)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// `(role, pid, netns)` of every process, for the lab's state file (the forwarder runs in
    /// the host's namespace: netns empty).
    pub fn processes(&self) -> Vec<(String, u32, String)> {
        let cp = &self.control_plane.spec().netns;
        let mut v: Vec<(String, u32, String)> =
            self.control_plane.pids().into_iter().map(|(role, pid)| (role.to_string(), pid, cp.clone())).collect();
        for p in &self.proxies {
            v.push((format!("kube-proxy:{}", p.spec().node), p.pid(), p.spec().netns.clone()));
        }
        for a in &self.node_agents {
            v.push((format!("node-agent:{}", a.node), a.child.id(), a.netns.clone()));
        }
        v.push(("api-forwarder".into(), self.forwarder.id(), String::new()));
        v
    }

    /// An error naming the first component that exited, with its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.proxies {
            p.check_alive()?;
        }
        for a in &mut self.node_agents {
            if let Ok(Some(st)) = a.child.try_wait() {
                bail!("the node agent of {} exited ({st}): {}", a.node, log_tail(&a.log));
            }
        }
        if let Ok(Some(st)) = self.forwarder.try_wait() {
            bail!("the API forwarder exited ({st}): {}", log_tail(&self.forwarder_log));
        }
        Ok(())
    }

    /// Stops the forwarder, every node agent (each ends its pods), every kube-proxy, then the
    /// control plane in its order.
    pub fn stop(&mut self) {
        stop_child(&mut self.forwarder);
        for a in &mut self.node_agents {
            crate::sys::terminate(&a.child);
        }
        for a in &mut self.node_agents {
            stop_child(&mut a.child);
        }
        for p in &mut self.proxies {
            p.stop();
        }
        self.control_plane.stop();
    }

    /// Restarts every node's kube-proxy in `mode`: each stops, `kube-proxy --cleanup` removes
    /// the rules it wrote (both modes'), and a new one starts (the first sync is its caller's
    /// to wait for). The published configuration follows, so discovery sees the new mode.
    pub fn set_proxy_mode(&mut self, mode: ProxyMode, spawner: &Spawner) -> anyhow::Result<()> {
        for p in &mut self.proxies {
            p.stop();
            p.cleanup()?;
            let spec = KubeProxySpec { mode, ..p.spec().clone() };
            *p = KubeProxy::start(spec, spawner)?;
        }
        publish_proxy_config(&self.bin, &self.control_plane_netns, &self.admin_kubeconfig, &self.dir, mode, true)
    }

    /// Leaves every process running (`lab up`); `lab down` ends them from the state file.
    pub fn detach(self) {
        let KubeCluster { control_plane, proxies, forwarder, node_agents, .. } = self;
        drop(node_agents);
        control_plane.detach();
        for p in proxies {
            p.detach();
        }
        drop(forwarder);
    }
}

/// Writes `kube-system/kube-proxy` (key `config.conf`) as kubeadm does: the configuration the
/// lab's kube-proxies share (each adds its node's name and addresses). `replace`: it exists.
fn publish_proxy_config(
    bin: &Path,
    netns: &str,
    admin: &Path,
    dir: &Path,
    mode: ProxyMode,
    replace: bool,
) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: {}\nclusterCIDR: {POD_SUPERNET}\n",
        mode.as_str()
    );
    let file = dir.join("kube-proxy-config.conf");
    std::fs::write(&file, config)?;
    let kubectl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", admin.display()))
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!("publishing kube-system/kube-proxy: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    if replace {
        kubectl(&["delete", "configmap", "kube-proxy", "--namespace=kube-system", "--ignore-not-found"])?;
    }
    let from = format!("--from-file=config.conf={}", file.display());
    kubectl(&["create", "configmap", "kube-proxy", "--namespace=kube-system", &from])
}
