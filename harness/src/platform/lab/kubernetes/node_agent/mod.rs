//! The node agent: the kubelet's stand-in on each node of the Kubernetes lab, one process
//! per node (`zonebench lab node-agent`), in the node's network namespace, with the node's
//! own credentials (`system:node:<name>`, so the Node authorizer and NodeRestriction limit
//! it as they limit a kubelet).
//!
//! It registers its Node (zone label, InternalIP, allocatable CPU: [`super::nodes`]) and
//! renews the node's Lease every 10 s, as a kubelet does, so the real node-lifecycle
//! controller keeps it Ready and lifts the `not-ready` taint the apiserver puts on new
//! nodes. Then it watches the pods bound to it (the real kube-scheduler binds them) and for
//! each:
//! - makes a sandbox: a network namespace wired to the node's pod bridge, with the next
//!   free address of the node's pod CIDR ([`runtime`]);
//! - writes its Secret and ConfigMap volumes (read with the node's credentials, which the
//!   Node authorizer allows only for pods bound here);
//! - runs each container's program as a process in the sandbox, as the pod's user, its
//!   volumes bind-mounted in a mount namespace of its own ([`pod_spec`] says what an image
//!   stands for and refuses what the lab cannot run, with a reason in the pod's status);
//! - reports status (Running, the pod IP, Ready once the readiness probe really answers:
//!   [`status`]) through the `status` subresource;
//! - on deletion: SIGTERM, SIGKILL after the grace period, removes the sandbox, and deletes
//!   the pod object for good (grace 0, uid precondition), as a kubelet does.
//!
//! What a kubelet does that this does not: images (only the zonebench agent has a program
//! here), restarts, liveness and startup probes, logs and exec and port-forward (no
//! streaming server: the kube platform reaches agents directly at pod IPs on this cluster),
//! resource limits, node status updates after registration (the Lease is the heartbeat).
//! Before a container's first successful readiness probe
//! it probes every 100 ms instead of every `periodSeconds`, so pods become Ready as soon as
//! they answer; after that it keeps the pod's period and thresholds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams};
use kube::{Api, Client};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::nodes::{self, LabNode};
use crate::platform::lab::services::LAB_NODE_CPU_MILLIS;
use crate::platform::lab::topology::{LabId, NodePlan, Plan, PodPlan, MAX_PODS_PER_NODE};
use crate::scenario::LabConfig;

pub mod pod_spec;
pub mod runtime;
pub mod status;

use pod_spec::{Images, PodRun, Unrunnable, VolumeRun};
use status::{ContainerObserved, ContainerState, PodObserved};

/// The subcommand, after the executable.
pub const SUBCOMMAND: [&str; 2] = ["lab", "node-agent"];
/// How often running pods are looked at (exits, probes, grace periods).
const TICK: Duration = Duration::from_millis(100);
/// How long the Node authorizer may take to learn that a new pod on this node uses a Secret
/// (it follows the pods it is told of, with a short lag).
const VOLUME_ACCESS_WITHIN: Duration = Duration::from_secs(10);
/// How often the node's Lease is renewed, and how long it says it lasts (the kubelet's).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECS: i32 = 40;
/// How long registration waits for the node-lifecycle controller to lift the not-ready taint.
const SCHEDULABLE_WITHIN: Duration = Duration::from_secs(30);
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The `kubernetes` Service's address and port, in every container's environment.
const KUBERNETES_SERVICE: (&str, &str) = ("198.18.128.1", "443");

/// The lab a node agent serves: its id and configuration (the plan follows from them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabFile {
    pub id: String,
    pub config: LabConfig,
}

/// `zonebench lab node-agent`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "node-agent", about = "Run the pods bound to one Kubernetes-lab node (lab internals)")]
pub struct NodeAgentArgs {
    /// The node's name (e.g. a-1).
    #[arg(long)]
    pub node: String,
    /// The lab file (JSON: id and configuration) the node belongs to.
    #[arg(long)]
    pub lab: PathBuf,
    /// The node's kubeconfig (its client certificate, the apiserver as nodes reach it).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The program the zonebench agent image stands for.
    #[arg(long)]
    pub agent: PathBuf,
    /// Arguments before the container's own (e.g. `agent` for the coordinator's embedded agent).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Where pods' volumes and logs go.
    #[arg(long)]
    pub pods_dir: PathBuf,
    /// The cgroup pod processes join (the node's).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Written once the Node is registered and the pods are watched.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Exit when stdin reaches end of file (the spawning coordinator has gone).
    #[arg(long)]
    pub watch_stdin: bool,
}

/// Runs the node agent (the CLI's entry point) until stopped.
pub fn run(args: &NodeAgentArgs) -> anyhow::Result<()> {
    let lab: LabFile = serde_json::from_slice(
        &std::fs::read(&args.lab).with_context(|| format!("reading the lab file {}", args.lab.display()))?,
    )
    .with_context(|| format!("the lab file {}", args.lab.display()))?;
    let id = LabId::parse(&lab.id).map_err(anyhow::Error::msg)?;
    let plan = Plan::new(id, &lab.config).map_err(anyhow::Error::msg)?;
    let node = plan.node(&args.node).with_context(|| format!("lab {} has no node {}", plan.id, args.node))?.clone();
    // The whole process lives in the node's namespace: entered on the only thread there is,
    // before the runtime starts any other (threads inherit it). Only the network namespace:
    // `ip netns add` must still mount into the host's /run/netns.
    let ns = std::fs::File::open(Path::new(crate::platform::lab::netns::NETNS_DIR).join(&node.netns))
        .with_context(|| format!("opening node {}'s namespace {}", node.name, node.netns))?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {}", node.netns))?;
    drop(ns);
    let cpu_millis = lab.config.cpu_millis_of(&node.name, &node.zone, LAB_NODE_CPU_MILLIS);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args, plan, node, cpu_millis))
}

async fn serve(args: &NodeAgentArgs, plan: Plan, node: NodePlan, cpu_millis: u64) -> anyhow::Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("the kubeconfig {}", args.kubeconfig.display()))?;
    let client = Client::try_from(config).context("building the API client")?;
    let lab_node = LabNode { name: node.name.clone(), zone: node.zone.clone(), ip: node.underlay_ip, cpu_millis };
    register(&client, &lab_node).await.with_context(|| format!("registering node {}", node.name))?;
    renew_lease(&client, &node.name).await.with_context(|| format!("node {}'s Lease", node.name))?;
    wait_schedulable(&client, &node.name).await;

    let images = Images { agent: args.agent.clone(), agent_args: args.agent_args.clone() };
    let mut agent = Agent {
        client: client.clone(),
        plan,
        node,
        images,
        pods_dir: args.pods_dir.clone(),
        cgroup: args.cgroup.clone(),
        desired: BTreeMap::new(),
        managed: BTreeMap::new(),
    };
    let stdin_closed = stdin_watch(args.watch_stdin);
    let mut stdin_closed = std::pin::pin!(stdin_closed);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let pods: Api<Pod> = Api::all(client);
    let field = format!("spec.nodeName={}", agent.node.name);
    let mut ready_written = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = tokio::time::interval_at(tokio::time::Instant::now() + LEASE_RENEW, LEASE_RENEW);
    'relist: loop {
        let list = match pods.list(&ListParams::default().fields(&field)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("node agent {}: listing pods: {e}; again in 1 s", agent.node.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        agent.desired = list.items.into_iter().filter_map(|p| Some((p.metadata.uid.clone()?, p))).collect();
        agent.reconcile().await;
        if !ready_written {
            if let Some(f) = &args.ready_file {
                std::fs::write(f, b"ready\n").with_context(|| format!("writing {}", f.display()))?;
            }
            ready_written = true;
        }
        let rv = list.metadata.resource_version.unwrap_or_default();
        let params = WatchParams::default().fields(&field).timeout(290);
        let mut stream = match pods.watch(&params, &rv).await {
            Ok(s) => s.boxed(),
            Err(e) => {
                eprintln!("node agent {}: watching pods: {e}; listing again", agent.node.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                event = stream.try_next() => match event {
                    Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                        if let Some(uid) = p.metadata.uid.clone() {
                            agent.desired.insert(uid, p);
                        }
                        agent.reconcile().await;
                    }
                    Ok(Some(WatchEvent::Deleted(p))) => {
                        if let Some(uid) = &p.metadata.uid {
                            agent.desired.remove(uid);
                        }
                        agent.reconcile().await;
                    }
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    Ok(Some(WatchEvent::Error(e))) => {
                        if e.code != 410 {
                            eprintln!("node agent {}: pod watch: {}", agent.node.name, e.message);
                        }
                        continue 'relist;
                    }
                    Ok(None) => continue 'relist,
                    Err(e) => {
                        eprintln!("node agent {}: pod watch broke: {e}", agent.node.name);
                        continue 'relist;
                    }
                },
                _ = tick.tick() => agent.tick().await,
                _ = lease.tick() => {
                    if let Err(e) = renew_lease(&agent.client, &agent.node.name).await {
                        eprintln!("node agent {}: renewing the Lease: {e:#}", agent.node.name);
                    }
                }
                _ = &mut stdin_closed => break 'relist,
                _ = terminate.recv() => break 'relist,
            }
        }
    }
    agent.shutdown();
    Ok(())
}

/// Resolves when stdin reaches end of file (with `--watch-stdin`), never otherwise.
async fn stdin_watch(watch: bool) {
    if !watch {
        return std::future::pending().await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Creates the Node (or keeps the one there) and writes its status, as a kubelet registers.
async fn register(client: &Client, n: &LabNode) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(nodes::object(n))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the Node"),
    }
    api.patch_status(&n.name, &PatchParams::default(), &Patch::Merge(nodes::status(n, &now_rfc3339())))
        .await
        .context("writing the Node's status")?;
    Ok(())
}

/// Creates or renews `kube-node-lease/<node>`, owned by the Node (so it goes with it).
async fn renew_lease(client: &Client, node: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let renew = serde_json::json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_SECS, "renewTime": now}});
    match api.patch(node, &PatchParams::default(), &Patch::Merge(&renew)).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("renewing it"),
    }
    let owner: Node = Api::<Node>::all(client.clone()).get(node).await.context("reading the Node")?;
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": "kube-node-lease",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": node,
                "uid": owner.metadata.uid.unwrap_or_default(),
            }],
        },
        "spec": renew["spec"],
    }))?;
    api.create(&PostParams::default(), &lease).await.context("creating it")?;
    Ok(())
}

/// Waits (a while) for the node-lifecycle controller to lift the `not-ready` taint the
/// apiserver gave the new Node; until then the scheduler places nothing here.
async fn wait_schedulable(client: &Client, node: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + SCHEDULABLE_WITHIN;
    loop {
        let tainted = match api.get(node).await {
            Ok(n) => n.spec.and_then(|s| s.taints).is_some_and(|t| t.iter().any(|t| t.key == NOT_READY_TAINT)),
            Err(_) => true,
        };
        if !tainted {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("node agent {node}: the node still has the {NOT_READY_TAINT} taint after {SCHEDULABLE_WITHIN:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pod this agent has started (or refused).
struct Managed {
    namespace: String,
    name: String,
    started_at: String,
    /// What the status last said, not to send it again.
    last_sent: Option<PodObserved>,
    kind: ManagedKind,
}

enum ManagedKind {
    /// The lab cannot run it; the reason is in its status.
    Refused {
        containers: Vec<ContainerObserved>,
    },
    Running(Box<RunningPod>),
}

struct RunningPod {
    run: PodRun,
    sandbox: PodPlan,
    slot: u32,
    dir: PathBuf,
    containers: Vec<ContainerProc>,
    /// Mount points the pod needed that did not exist (removed with it).
    created_mount_points: Vec<PathBuf>,
    /// SIGTERM sent; SIGKILL at this instant.
    kill_at: Option<Instant>,
}

struct ContainerProc {
    name: String,
    image: String,
    child: Child,
    started_at: String,
    exited: Option<ContainerState>,
    probe: ProbeState,
}

#[derive(Default)]
struct ProbeState {
    ready: bool,
    ever_ready: bool,
    next_at: Option<Instant>,
    successes: u32,
    failures: u32,
}

struct Agent {
    client: Client,
    plan: Plan,
    node: NodePlan,
    images: Images,
    pods_dir: PathBuf,
    cgroup: Option<PathBuf>,
    /// The pods bound to this node, as the API server last said, by uid.
    desired: BTreeMap<String, Pod>,
    managed: BTreeMap<String, Managed>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Agent {
    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Starts what is new, stops what is deleted or gone.
    async fn reconcile(&mut self) {
        let uids: Vec<String> = self.desired.keys().cloned().collect();
        for uid in uids {
            let Some(pod) = self.desired.get(&uid).cloned() else { continue };
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let terminal =
                pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
            let running = matches!(self.managed.get(&uid), Some(Managed { kind: ManagedKind::Running(_), .. }));
            match (self.managed.contains_key(&uid), deleting) {
                (false, false) if !terminal => self.start(&uid, &pod).await,
                (true, true) if running => self.begin_stop(&uid, &pod),
                (_, true) => {
                    self.managed.remove(&uid);
                    self.delete_for_good(&pod).await;
                }
                _ => {}
            }
        }
        // Gone from the API (deleted with grace 0 by someone else): stop at once.
        let gone: Vec<String> = self.managed.keys().filter(|u| !self.desired.contains_key(*u)).cloned().collect();
        for uid in gone {
            if let Some(mut m) = self.managed.remove(&uid) {
                if let ManagedKind::Running(r) = &mut m.kind {
                    kill_now(r);
                    self.clean_up(r);
                }
                eprintln!("node agent {}: pod {}/{} is gone", self.node.name, m.namespace, m.name);
            }
        }
    }

    async fn start(&mut self, uid: &str, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let started_at = now_rfc3339();
        let kind = match pod_spec::plan(pod, &self.images) {
            Ok(run) => match self.launch(uid, pod, run).await {
                Ok(r) => ManagedKind::Running(Box::new(r)),
                Err(e) => {
                    eprintln!("node agent {}: pod {namespace}/{name}: {e:#}", self.node.name);
                    refused(pod, Unrunnable { reason: "CreateContainerError", message: format!("{e:#}") })
                }
            },
            Err(why) => {
                eprintln!("node agent {}: pod {namespace}/{name} cannot run here: {why}", self.node.name);
                refused(pod, why)
            }
        };
        if let ManagedKind::Running(r) = &kind {
            eprintln!("node agent {}: pod {namespace}/{name} runs at {}", self.node.name, r.sandbox.ip);
        }
        self.managed.insert(uid.to_string(), Managed { namespace, name, started_at, last_sent: None, kind });
        self.report(uid).await;
    }

    /// The sandbox, the volumes and the processes of a pod.
    async fn launch(&mut self, uid: &str, pod: &Pod, run: PodRun) -> anyhow::Result<RunningPod> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let used: BTreeSet<u32> = self
            .managed
            .values()
            .filter_map(|m| match &m.kind {
                ManagedKind::Running(r) => Some(r.slot),
                ManagedKind::Refused { .. } => None,
            })
            .collect();
        let slot = (0..MAX_PODS_PER_NODE).find(|s| !used.contains(s)).context("the node's pod CIDR is full")?;
        let sandbox = runtime::sandbox(&self.plan, &self.node, slot, &name)?;
        let dir = self.pods_dir.join(format!("{namespace}_{name}_{uid}"));
        let mut volume_dirs = BTreeMap::new();
        for v in &run.volumes {
            let data = self.volume_data(&namespace, v).await?;
            let vdir = dir.join("volumes").join(v.name());
            runtime::write_volume(&vdir, v, &data, run.fs_group)?;
            volume_dirs.insert(v.name().to_string(), vdir);
        }
        runtime::create_sandbox(&self.plan, &sandbox)?;
        let mut r = RunningPod {
            run: run.clone(),
            sandbox,
            slot,
            dir: dir.clone(),
            containers: Vec::new(),
            created_mount_points: Vec::new(),
            kill_at: None,
        };
        for c in &run.containers {
            let env = self.environment(pod, c, &r.sandbox);
            let mounts: Vec<(PathBuf, PathBuf, bool)> = c
                .mounts
                .iter()
                .filter_map(|m| Some((volume_dirs.get(&m.volume)?.clone(), m.path.clone(), m.read_only)))
                .collect();
            let log = dir.join(format!("{}.log", c.name));
            let spawned = runtime::spawn(c, &r.sandbox, &env, &mounts, &log);
            let (child, created) = match spawned {
                Ok(x) => x,
                Err(e) => {
                    kill_now(&mut r);
                    self.clean_up(&r);
                    return Err(e);
                }
            };
            r.created_mount_points.extend(created);
            if let Some(cg) = &self.cgroup {
                if let Err(e) = crate::platform::lab::cgroup::join(cg, child.id()) {
                    eprintln!("node agent {}: pod {namespace}/{name}: {e:#}", self.node.name);
                }
            }
            let probe = ProbeState {
                ready: c.readiness.is_none(),
                ever_ready: c.readiness.is_none(),
                next_at: c.readiness.as_ref().map(|p| Instant::now() + p.initial_delay),
                ..Default::default()
            };
            r.containers.push(ContainerProc {
                name: c.name.clone(),
                image: c.image.clone(),
                child,
                started_at: now_rfc3339(),
                exited: None,
                probe,
            });
        }
        Ok(r)
    }

    /// A Secret's or ConfigMap's data, read with the node's credentials. The Node authorizer
    /// learns of the pod's use of it shortly after binding: a refusal is retried a while.
    async fn volume_data(&self, namespace: &str, v: &VolumeRun) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let deadline = Instant::now() + VOLUME_ACCESS_WITHIN;
        loop {
            let got: Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> = match v {
                VolumeRun::EmptyDir { .. } => return Ok(BTreeMap::new()),
                VolumeRun::Secret { secret, .. } => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(secret)
                        .await
                        .map(|s| s.map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
                }
                VolumeRun::ConfigMap { config_map, .. } => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(config_map).await.map(|c| {
                        c.map(|c| {
                            let mut d: BTreeMap<String, Vec<u8>> =
                                c.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                            d.extend(c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                            d
                        })
                    })
                }
            };
            let optional =
                matches!(v, VolumeRun::Secret { optional: true, .. } | VolumeRun::ConfigMap { optional: true, .. });
            match got {
                Ok(Some(d)) => return Ok(d),
                Ok(None) if optional => return Ok(BTreeMap::new()),
                Ok(None) => bail!("volume {}: its {} does not exist", v.name(), volume_object(v)),
                Err(kube::Error::Api(s)) if s.code == 403 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("volume {}: reading its {}: {e}", v.name(), volume_object(v)),
            }
        }
    }

    /// The container's environment: what a kubelet always sets, then the pod's own.
    fn environment(&self, pod: &Pod, c: &pod_spec::ContainerRun, sandbox: &PodPlan) -> Vec<(String, String)> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut env = vec![
            ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
            ("HOSTNAME".to_string(), name.clone()),
            ("KUBERNETES_SERVICE_HOST".to_string(), KUBERNETES_SERVICE.0.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), KUBERNETES_SERVICE.1.to_string()),
        ];
        for (k, source) in &c.env {
            let value = match source {
                pod_spec::EnvSource::Value(v) => v.clone(),
                pod_spec::EnvSource::Field(f) => match f.as_str() {
                    "metadata.name" => name.clone(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "spec.nodeName" => self.node.name.clone(),
                    "spec.serviceAccountName" => {
                        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                    }
                    "status.podIP" => sandbox.ip.to_string(),
                    "status.hostIP" => self.node.underlay_ip.to_string(),
                    _ => String::new(),
                },
            };
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), value));
        }
        env
    }

    /// Exits, readiness probes and grace periods of the running pods.
    async fn tick(&mut self) {
        let uids: Vec<String> = self.managed.keys().cloned().collect();
        for uid in uids {
            let mut finished = false;
            if let Some(Managed { kind: ManagedKind::Running(r), .. }) = self.managed.get_mut(&uid) {
                let ip = r.sandbox.ip;
                for (i, c) in r.containers.iter_mut().enumerate() {
                    if c.exited.is_none() {
                        if let Ok(Some(st)) = c.child.try_wait() {
                            c.exited = Some(terminated(st, &c.started_at, &r.dir.join(format!("{}.log", c.name))));
                            c.probe.ready = false;
                        }
                    }
                    if c.exited.is_some() || r.kill_at.is_some() {
                        continue;
                    }
                    let Some(spec) = r.run.containers.get(i).and_then(|s| s.readiness.clone()) else { continue };
                    if c.probe.next_at.is_some_and(|t| Instant::now() >= t) {
                        let outcome = runtime::probe(ip, &spec.action, spec.timeout).await;
                        probed(&mut c.probe, outcome, &spec);
                    }
                }
                if let Some(kill_at) = r.kill_at {
                    if r.containers.iter().all(|c| c.exited.is_some()) {
                        finished = true;
                    } else if Instant::now() >= kill_at {
                        kill_now(r);
                    }
                }
            }
            if finished {
                self.finish(&uid).await;
            } else {
                self.report(&uid).await;
            }
        }
    }

    /// A deleted pod: SIGTERM to every container, SIGKILL after the shorter of the pod's grace
    /// period and the deletion's.
    fn begin_stop(&mut self, uid: &str, pod: &Pod) {
        let Some(Managed { kind: ManagedKind::Running(r), .. }) = self.managed.get_mut(uid) else { return };
        if r.kill_at.is_some() {
            return;
        }
        let asked = pod.metadata.deletion_grace_period_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
        let grace = asked.map_or(r.run.grace, |a| a.min(r.run.grace));
        for c in r.containers.iter().filter(|c| c.exited.is_none()) {
            crate::sys::terminate(&c.child);
        }
        r.kill_at = Some(Instant::now() + grace);
    }

    /// Removes a stopped pod's sandbox and files and deletes its object.
    async fn finish(&mut self, uid: &str) {
        let Some(m) = self.managed.remove(uid) else { return };
        if let ManagedKind::Running(r) = &m.kind {
            self.clean_up(r);
        }
        if let Some(pod) = self.desired.get(uid).cloned() {
            self.delete_for_good(&pod).await;
        }
    }

    /// The last step of a pod's deletion, once nothing of it runs: delete it for good.
    async fn delete_for_good(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match self.pods(&namespace).delete(&name, &params).await {
            Ok(_) => eprintln!("node agent {}: pod {namespace}/{name} deleted", self.node.name),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => eprintln!("node agent {}: deleting pod {namespace}/{name}: {e}", self.node.name),
        }
    }

    fn clean_up(&self, r: &RunningPod) {
        if let Err(e) = runtime::remove_sandbox(&r.sandbox) {
            eprintln!("node agent {}: {e:#}", self.node.name);
        }
        for p in r.created_mount_points.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
        let _ = std::fs::remove_dir_all(r.dir.join("volumes"));
    }

    /// Sends the pod's status if it changed since last sent.
    async fn report(&mut self, uid: &str) {
        let Some(m) = self.managed.get(uid) else { return };
        let observed = self.observe(m);
        if m.last_sent.as_ref() == Some(&observed) {
            return;
        }
        let patch = status::patch(&observed, &now_rfc3339());
        let (namespace, name) = (m.namespace.clone(), m.name.clone());
        match self.pods(&namespace).patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(_) => {
                if let Some(m) = self.managed.get_mut(uid) {
                    m.last_sent = Some(observed);
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => eprintln!("node agent {}: pod {namespace}/{name}'s status: {e}", self.node.name),
        }
    }

    fn observe(&self, m: &Managed) -> PodObserved {
        let host_ip = self.node.underlay_ip.to_string();
        match &m.kind {
            ManagedKind::Refused { containers } => PodObserved {
                pod_ip: None,
                host_ip,
                start_time: m.started_at.clone(),
                sandbox_ready: false,
                containers: containers.clone(),
            },
            ManagedKind::Running(r) => PodObserved {
                pod_ip: Some(r.sandbox.ip.to_string()),
                host_ip,
                start_time: m.started_at.clone(),
                sandbox_ready: true,
                containers: r
                    .containers
                    .iter()
                    .map(|c| ContainerObserved {
                        name: c.name.clone(),
                        image: c.image.clone(),
                        state: c
                            .exited
                            .clone()
                            .unwrap_or_else(|| ContainerState::Running { started_at: c.started_at.clone() }),
                        ready: c.probe.ready && c.exited.is_none(),
                    })
                    .collect(),
            },
        }
    }

    /// The node agent stops: its pods' processes and sandboxes go with it (a lab's node
    /// agent stops only when its lab goes).
    fn shutdown(&mut self) {
        let all: Vec<String> = self.managed.keys().cloned().collect();
        for uid in all {
            if let Some(Managed { kind: ManagedKind::Running(mut r), .. }) = self.managed.remove(&uid) {
                kill_now(&mut r);
                self.clean_up(&r);
            }
        }
    }
}

fn volume_object(v: &VolumeRun) -> String {
    match v {
        VolumeRun::Secret { secret, .. } => format!("Secret {secret}"),
        VolumeRun::ConfigMap { config_map, .. } => format!("ConfigMap {config_map}"),
        VolumeRun::EmptyDir { .. } => "emptyDir".into(),
    }
}

/// A pod the lab cannot run: every container waits with the reason.
fn refused(pod: &Pod, why: Unrunnable) -> ManagedKind {
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| ContainerObserved {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            state: ContainerState::Waiting { reason: why.reason.to_string(), message: why.message.clone() },
            ready: false,
        })
        .collect();
    ManagedKind::Refused { containers }
}

/// SIGKILL to whatever still runs, and reaps it.
fn kill_now(r: &mut RunningPod) {
    for c in &mut r.containers {
        if c.exited.is_none() {
            let _ = c.child.kill();
            if let Ok(st) = c.child.wait() {
                c.exited = Some(terminated(st, &c.started_at, Path::new("/nonexistent")));
            }
        }
    }
}

/// A container's terminated state from its exit status; a failure's message is the end of
/// its log (`FallbackToLogsOnError`).
fn terminated(st: std::process::ExitStatus, started_at: &str, log: &Path) -> ContainerState {
    use std::os::unix::process::ExitStatusExt as _;
    let exit_code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let message = if exit_code != 0 && log.is_file() { crate::platform::process::log_tail(log) } else { String::new() };
    ContainerState::Terminated {
        exit_code,
        reason: reason.into(),
        message,
        started_at: started_at.to_string(),
        finished_at: now_rfc3339(),
    }
}

/// A probe's outcome applied with the container's thresholds. Until the first success the
/// next probe comes 100 ms later (the module docs say why), then every `period`.
fn probed(p: &mut ProbeState, outcome: Result<(), String>, spec: &pod_spec::ProbeRun) {
    match outcome {
        Ok(()) => {
            p.failures = 0;
            p.successes += 1;
            if p.successes >= spec.success_threshold {
                p.ready = true;
                p.ever_ready = true;
            }
        }
        Err(_) => {
            p.successes = 0;
            p.failures += 1;
            if p.failures >= spec.failure_threshold {
                p.ready = false;
            }
        }
    }
    let next = if p.ever_ready { spec.period } else { Duration::from_millis(100) };
    p.next_at = Some(Instant::now() + next);
}

/// The command that starts a node agent (`zonebench lab node-agent …`) in the host's
/// namespaces (it enters its node's network namespace itself).
pub fn command(
    program: &crate::platform::lab::ForwarderProgram,
    args: &NodeAgentArgs,
    attached: bool,
) -> std::process::Command {
    let mut c = crate::platform::process::command_in(None, &program.path, attached);
    c.args(&program.args);
    c.args(["--node", &args.node]);
    c.arg("--lab").arg(&args.lab);
    c.arg("--kubeconfig").arg(&args.kubeconfig);
    c.arg("--agent").arg(&args.agent);
    for a in &args.agent_args {
        c.arg(format!("--agent-arg={a}"));
    }
    c.arg("--pods-dir").arg(&args.pods_dir);
    if let Some(g) = &args.cgroup {
        c.arg("--cgroup").arg(g);
    }
    if let Some(f) = &args.ready_file {
        c.arg("--ready-file").arg(f);
    }
    crate::platform::process::watch_stdin(&mut c, attached);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn the_cli_parses_what_the_command_builder_writes() {
        let args = NodeAgentArgs {
            node: "a-1".into(),
            lab: "/run/zb/lab.json".into(),
            kubeconfig: "/run/zb/node-a-1.kubeconfig".into(),
            agent: "/bin/zonebench".into(),
            agent_args: vec!["agent".into(), "--x".into()],
            pods_dir: "/run/zb/pods".into(),
            cgroup: Some("/sys/fs/cgroup/zb/a-1".into()),
            ready_file: Some("/run/zb/a-1.ready".into()),
            watch_stdin: true,
        };
        let program = crate::platform::lab::ForwarderProgram { path: "/bin/zonebench".into(), args: vec![] }
            .with_args(&SUBCOMMAND);
        let c = command(&program, &args, true);
        let argv: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let at = argv.iter().position(|a| a == "node-agent").unwrap();
        let parsed = NodeAgentArgs::try_parse_from(&argv[at..]).unwrap();
        assert_eq!(parsed.node, "a-1");
        assert_eq!(parsed.agent_args, args.agent_args);
        assert_eq!(parsed.cgroup, args.cgroup);
        assert!(parsed.watch_stdin);
    }

    #[test]
    fn readiness_follows_the_thresholds_and_probes_fast_only_before_the_first_success() {
        let spec = pod_spec::ProbeRun {
            action: pod_spec::ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let mut p = ProbeState::default();
        probed(&mut p, Err("refused".into()), &spec);
        assert!(!p.ready);
        assert!(p.next_at.unwrap() < Instant::now() + Duration::from_millis(200));
        probed(&mut p, Ok(()), &spec);
        assert!(p.ready);
        assert!(p.next_at.unwrap() > Instant::now() + Duration::from_secs(1));
        probed(&mut p, Err("x".into()), &spec);
        probed(&mut p, Err("x".into()), &spec);
        assert!(p.ready, "two failures are below the threshold of 3");
        probed(&mut p, Err("x".into()), &spec);
        assert!(!p.ready);
    }
}
