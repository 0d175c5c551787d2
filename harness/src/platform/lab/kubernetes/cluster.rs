//! The Kubernetes lab as one piece: on a built lab (namespaces, router, links), the
//! certificates and kubeconfigs, the control plane in its namespace, the lab's Node objects,
//! a real kube-proxy in every node namespace, and the API forwarder that gives the user's
//! kubectl a loopback address for the apiserver, with a kubeconfig that uses it.
//!
//! What is not here yet: a node agent (the kubelet's stand-in) that runs the pods bound to
//! each node. Until it exists, pods stay Pending on this cluster; everything that needs no
//! running pod (Services, EndpointSlices, hints, kube-proxy's rules) is real.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::api_forwarder::{api_forwarder_command, read_port_file, SUBCOMMAND};
use super::control_plane::{ControlPlane, ControlPlaneFiles, ControlPlaneSpec, APISERVER_PORT};
use super::kube_proxy::{KubeProxy, KubeProxySpec, ProxyMode};
use super::kubeconfig::{self, KubeconfigSpec};
use super::nodes::{self, LabNode};
use super::pki::Pki;
use crate::model::DataplaneKind;
use crate::platform::lab::delay::ForwarderProgram;
use crate::platform::lab::services::{LAB_NODE_CPU_MILLIS, SERVICE_CIDR};
use crate::platform::lab::topology::{Plan, POD_SUPERNET};
use crate::platform::process::{log_tail, stop_child, Spawner};
use crate::scenario::LabConfig;

/// The `kubernetes` Service's ClusterIP: the first address of the lab's Service range.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
const FORWARDER_READY_WITHIN: Duration = Duration::from_secs(10);

/// A running Kubernetes lab's components (the lab's namespaces are its owner's).
pub struct KubeCluster {
    pub control_plane: ControlPlane,
    pub proxies: Vec<KubeProxy>,
    forwarder: Child,
    forwarder_log: PathBuf,
    /// The user's kubeconfig: the apiserver through the forwarder on 127.0.0.1.
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig as the lab's namespaces reach the apiserver.
    pub admin_kubeconfig: PathBuf,
    /// From the start of the control plane to every kube-proxy running.
    pub ready_after: Duration,
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
    /// Starts everything on the built lab `plan` (whose `control_plane` is set).
    pub fn start(
        plan: &Plan,
        config: &LabConfig,
        run_dir: &Path,
        program: &ForwarderProgram,
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

        let control_plane = ControlPlane::start(ControlPlaneSpec {
            netns: cp_plan.netns.clone(),
            ip: cp_plan.ip,
            dir: dir.join("control-plane"),
            bin: bin.clone(),
            service_cidr: SERVICE_CIDR.to_string(),
            files: ControlPlaneFiles::of(&pki, kcm, admin.clone()),
            attached,
        })?;

        for n in &plan.nodes {
            let node = LabNode {
                name: n.name.clone(),
                zone: n.zone.clone(),
                ip: n.underlay_ip,
                cpu_millis: config.cpu_millis_of(&n.name, &n.zone, LAB_NODE_CPU_MILLIS),
            };
            register(&bin, &cp_plan.netns, &admin, &dir, &node)?;
        }
        let mut proxies = Vec::new();
        for n in &plan.nodes {
            proxies.push(KubeProxy::start(
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
        Ok(KubeCluster {
            control_plane,
            proxies,
            forwarder,
            forwarder_log,
            kubeconfig,
            admin_kubeconfig: admin,
            ready_after: started.elapsed(),
        })
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
        v.push(("api-forwarder".into(), self.forwarder.id(), String::new()));
        v
    }

    /// An error naming the first component that exited, with its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.proxies {
            p.check_alive()?;
        }
        if let Ok(Some(st)) = self.forwarder.try_wait() {
            bail!("the API forwarder exited ({st}): {}", log_tail(&self.forwarder_log));
        }
        Ok(())
    }

    /// Stops the forwarder, every kube-proxy, then the control plane in its order.
    pub fn stop(&mut self) {
        stop_child(&mut self.forwarder);
        for p in &mut self.proxies {
            p.stop();
        }
        self.control_plane.stop();
    }

    /// Leaves every process running (`lab up`); `lab down` ends them from the state file.
    pub fn detach(self) {
        let KubeCluster { control_plane, proxies, forwarder, .. } = self;
        control_plane.detach();
        for p in proxies {
            p.detach();
        }
        drop(forwarder);
    }
}

/// Writes node `n`'s Node object and its status (through the `status` subresource), with
/// the lab's kubectl in the control-plane namespace.
fn register(bin: &Path, netns: &str, admin: &Path, dir: &Path, n: &LabNode) -> anyhow::Result<()> {
    let file = dir.join(format!("node-{}.json", n.name));
    std::fs::write(&file, serde_json::to_vec(&nodes::object(n))?)?;
    let status = serde_json::to_string(&nodes::status(n))?;
    let kubectl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", admin.display()))
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    kubectl(&["apply", "-f", &file.display().to_string()])
        .and_then(|()| kubectl(&["patch", "node", &n.name, "--subresource=status", "--type=merge", "-p", &status]))
        .with_context(|| format!("registering node {}", n.name))
}
