//! The Kubernetes lab's control plane: the real etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, as processes in the lab's control-plane
//! network namespace.
//!
//! etcd keeps its data on a tmpfs of its own, so a lab leaves nothing on disk and syncs
//! cost nothing. The apiserver has RBAC (with the Node authorizer) and PodSecurity
//! admission on, serving with the certificates `pki` generated. The controller-manager runs
//! the controllers a benchmark's objects need and no more: EndpointSlices (and their
//! mirroring), ServiceAccounts and their tokens, Namespace deletion and garbage collection,
//! and, with node agents, node lifecycle (node health from their Leases, and its taints).
//! The scheduler binds pods to nodes (the kube platform pins agents with required node
//! affinity, which the scheduler honours); the lab's node agents run what is bound.
//!
//! Shutdown order matters: the apiserver first (it waits on etcd while stopping), then the
//! controller-manager and scheduler, then etcd, then the tmpfs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::platform::process::{command_in, log_tail, stop_child, Spawner};

/// The apiserver's port in the control-plane namespace.
pub const APISERVER_PORT: u16 = 6443;
/// etcd's client and peer ports, on the namespace's loopback only.
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";
/// The controllers the lab's cluster runs (kube-controller-manager `--controllers`).
pub const CONTROLLERS: &str = "endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller,\
serviceaccount-token-controller,namespace-controller,garbage-collector-controller";
/// The controller that follows node health (the node agents' Leases), with node agents only.
const NODE_LIFECYCLE_CONTROLLER: &str = "node-lifecycle-controller";
/// How long the apiserver may take to answer `/readyz` (about 4 s warm on 2 cores).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The tmpfs etcd writes to: its 64 MiB write-ahead log and the lab's objects.
const ETCD_TMPFS_SIZE: &str = "512m";

/// The files the control plane is started with (written by `pki` and `kubeconfig`).
#[derive(Debug, Clone)]
pub struct ControlPlaneFiles {
    pub ca_crt: PathBuf,
    pub apiserver_crt: PathBuf,
    pub apiserver_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// The controller-manager's kubeconfig (its client certificate, the apiserver's address).
    pub controller_manager_kubeconfig: PathBuf,
    /// An admin kubeconfig, used here to wait for readiness.
    pub admin_kubeconfig: PathBuf,
    /// The scheduler's kubeconfig, for a cluster with node agents ([`Self::with_node_agents`]);
    /// without one, neither the scheduler nor the node-lifecycle controller runs (pods then
    /// need `spec.nodeName`, and nodes stay as written).
    pub scheduler_kubeconfig: Option<PathBuf>,
}

impl ControlPlaneFiles {
    /// The files of `pki`, with the controller-manager's and an admin kubeconfig.
    pub fn of(pki: &super::pki::Pki, controller_manager_kubeconfig: PathBuf, admin_kubeconfig: PathBuf) -> Self {
        ControlPlaneFiles {
            ca_crt: pki.ca.cert.clone(),
            apiserver_crt: pki.apiserver.cert.clone(),
            apiserver_key: pki.apiserver.key.clone(),
            sa_key: pki.service_account_key.clone(),
            sa_pub: pki.service_account_pub.clone(),
            controller_manager_kubeconfig,
            admin_kubeconfig,
            scheduler_kubeconfig: None,
        }
    }

    /// The same files, for a cluster whose nodes have node agents: the scheduler (with
    /// `kubeconfig`) places pods, and the node-lifecycle controller follows the agents'
    /// Leases (it lifts the not-ready taint of new nodes, and marks silent ones).
    pub fn with_node_agents(mut self, kubeconfig: PathBuf) -> Self {
        self.scheduler_kubeconfig = Some(kubeconfig);
        self
    }
}

/// Where and with what the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    /// The control-plane network namespace (made by the caller).
    pub netns: String,
    /// The apiserver's address in it, reachable from every node namespace.
    pub ip: Ipv4Addr,
    /// The control plane's directory: logs, the apiserver's cert dir, the etcd tmpfs.
    pub dir: PathBuf,
    /// Where etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl are.
    pub bin: PathBuf,
    /// The range ClusterIPs are allocated from (`--service-cluster-ip-range`).
    pub service_cidr: String,
    pub files: ControlPlaneFiles,
    /// Tied to the coordinator (killed when it dies); false for a lab left up by `lab up`.
    pub attached: bool,
}

struct Proc {
    role: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane; [`ControlPlane::stop`] (also on drop) ends it in order.
pub struct ControlPlane {
    spec: ControlPlaneSpec,
    procs: Vec<Proc>,
    spawner: Spawner,
    tmpfs: Option<PathBuf>,
    /// From the first process started to the apiserver answering `/readyz`.
    pub ready_after: Duration,
}

impl ControlPlane {
    /// Starts etcd, the apiserver and the controller-manager in `spec.netns` and returns once
    /// the apiserver is ready. A binary that is missing names the script that builds it.
    pub fn start(spec: ControlPlaneSpec) -> anyhow::Result<ControlPlane> {
        let scheduler = spec.files.scheduler_kubeconfig.is_some();
        let binaries = ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "kube-scheduler"];
        for b in &binaries[..if scheduler { 5 } else { 4 }] {
            let p = spec.bin.join(b);
            if !p.is_file() {
                bail!("{} is missing: build the Kubernetes binaries with scripts/kube-binaries.sh", p.display());
            }
        }
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("creating {}", spec.dir.display()))?;
        let started = Instant::now();
        let mut cp = ControlPlane {
            spawner: Spawner::new(&spec.netns)?,
            spec,
            procs: Vec::new(),
            tmpfs: None,
            ready_after: Duration::ZERO,
        };
        cp.start_etcd()?;
        cp.start_apiserver()?;
        cp.wait_ready(started)?;
        cp.start_controller_manager()?;
        if scheduler {
            cp.start_scheduler()?;
        }
        cp.ready_after = started.elapsed();
        Ok(cp)
    }

    pub fn spec(&self) -> &ControlPlaneSpec {
        &self.spec
    }

    /// The apiserver's URL as node namespaces reach it.
    pub fn server(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.spec.ip)
    }

    /// PIDs of the control plane's processes, with their roles (for the lab's state file).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs.iter().map(|p| (p.role, p.child.id())).collect()
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let data = self.spec.dir.join("etcd");
        std::fs::create_dir_all(&data)?;
        mount_tmpfs(&data)?;
        self.tmpfs = Some(data.clone());
        let mut cmd = self.in_netns("etcd");
        cmd.arg("--name=cp")
            .arg(format!("--data-dir={}", data.join("member-data").display()))
            .arg(format!("--listen-client-urls={ETCD_CLIENT}"))
            .arg(format!("--advertise-client-urls={ETCD_CLIENT}"))
            .arg(format!("--listen-peer-urls={ETCD_PEER}"))
            .arg(format!("--initial-advertise-peer-urls={ETCD_PEER}"))
            .arg(format!("--initial-cluster=cp={ETCD_PEER}"))
            .arg("--initial-cluster-state=new")
            // The data is on a tmpfs that dies with the lab: nothing to make durable.
            .arg("--unsafe-no-fsync");
        self.spawn("etcd", cmd)
    }

    fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let f = self.spec.files.clone();
        let cert_dir = self.spec.dir.join("apiserver-certs");
        std::fs::create_dir_all(&cert_dir)?;
        let mut cmd = self.in_netns("kube-apiserver");
        cmd.arg(format!("--etcd-servers={ETCD_CLIENT}"))
            .arg("--bind-address=0.0.0.0")
            .arg(format!("--advertise-address={}", self.spec.ip))
            .arg(format!("--secure-port={APISERVER_PORT}"))
            .arg(format!("--tls-cert-file={}", f.apiserver_crt.display()))
            .arg(format!("--tls-private-key-file={}", f.apiserver_key.display()))
            .arg(format!("--client-ca-file={}", f.ca_crt.display()))
            .arg(format!("--service-account-key-file={}", f.sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", f.sa_key.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction,PodSecurity")
            .arg(format!("--service-cluster-ip-range={}", self.spec.service_cidr))
            // The node inspector's DaemonSet is privileged (only with --inspect-nodes).
            .arg("--allow-privileged=true")
            .arg(format!("--cert-dir={}", cert_dir.display()));
        self.spawn("kube-apiserver", cmd)
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let f = self.spec.files.clone();
        let mut cmd = self.in_netns("kube-controller-manager");
        cmd.arg(format!("--kubeconfig={}", f.controller_manager_kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", f.controller_manager_kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", f.controller_manager_kubeconfig.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(match f.scheduler_kubeconfig {
                Some(_) => format!("--controllers={CONTROLLERS},{NODE_LIFECYCLE_CONTROLLER}"),
                None => format!("--controllers={CONTROLLERS}"),
            })
            .arg(format!("--service-account-private-key-file={}", f.sa_key.display()))
            .arg(format!("--root-ca-file={}", f.ca_crt.display()))
            .arg("--use-service-account-credentials=true")
            // Nodes become schedulable (the not-ready taint lifted) within a second of
            // registering, not five.
            .arg("--node-monitor-period=1s")
            .arg("--leader-elect=false");
        self.spawn("kube-controller-manager", cmd)
    }

    fn start_scheduler(&mut self) -> anyhow::Result<()> {
        let Some(kubeconfig) = self.spec.files.scheduler_kubeconfig.clone() else { return Ok(()) };
        let mut cmd = self.in_netns("kube-scheduler");
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", kubeconfig.display()))
            .arg("--bind-address=127.0.0.1")
            .arg("--leader-elect=false");
        self.spawn("kube-scheduler", cmd)
    }

    /// `BIN/<name>` in the control-plane namespace (see [`command_in`]).
    fn in_netns(&self, name: &str) -> Command {
        command_in(Some(&self.spec.netns), &self.spec.bin.join(name), self.spec.attached)
    }

    fn spawn(&mut self, role: &'static str, mut cmd: Command) -> anyhow::Result<()> {
        let log = self.spec.dir.join(format!("{role}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
        let child = self.spawner.spawn(cmd).with_context(|| format!("starting {role}"))?;
        self.procs.push(Proc { role, child, log });
        Ok(())
    }

    /// Polls `/readyz` with the admin credentials from inside the namespace; an exited
    /// process is reported with its log at once.
    fn wait_ready(&mut self, started: Instant) -> anyhow::Result<()> {
        let kubectl = self.spec.bin.join("kubectl");
        loop {
            for p in &mut self.procs {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!("{} exited ({status}) while the control plane started: {}", p.role, log_tail(&p.log));
                }
            }
            let out = Command::new("ip")
                .args(["netns", "exec", &self.spec.netns])
                .arg(&kubectl)
                .arg(format!("--kubeconfig={}", self.spec.files.admin_kubeconfig.display()))
                .args(["get", "--raw=/readyz", "--request-timeout=2s"])
                .output()
                .context("running kubectl")?;
            if out.status.success() {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                let apiserver = self.procs.iter().find(|p| p.role == "kube-apiserver");
                bail!(
                    "the apiserver was not ready within {READY_WITHIN:?} ({}); its log: {}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    apiserver.map_or_else(String::new, |p| log_tail(&p.log))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the apiserver, then the controller-manager and scheduler, then etcd, and unmounts etcd's
    /// tmpfs. Safe to call twice.
    pub fn stop(&mut self) {
        for role in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
            for p in self.procs.iter_mut().filter(|p| p.role == role) {
                stop_child(&mut p.child);
            }
        }
        self.procs.clear();
        self.spawner.stop();
        if let Some(dir) = self.tmpfs.take() {
            let _ = unmount(&dir);
        }
    }
}

impl ControlPlane {
    /// Leaves the processes and the tmpfs running after this handle goes (`lab up`); the
    /// lab's removal (`lab down`) ends them from its state file.
    pub fn detach(mut self) {
        self.procs.clear();
        self.tmpfs = None;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mount_tmpfs(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={ETCD_TMPFS_SIZE},mode=0700"), "zonebench-etcd"])
        .arg(dir)
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!("mounting a tmpfs on {} for etcd: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Unmounts the tmpfs at `dir` (also what `lab down` does for a crashed lab's).
pub fn unmount(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("umount").arg(dir).output().context("running umount")?;
    if !out.status.success() {
        bail!("unmounting {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
