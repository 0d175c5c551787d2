//! The kube platform: the same scenarios on a real cluster (EKS, GKE, kind, on-premises)
//! through kube-rs, with the care a tool needs to be let into one: least privilege (pods
//! pass the `restricted` Pod Security Standard, which the run's namespace enforces), no
//! leftovers (one labelled namespace per run, deleted on every exit path; `zonebench gc`
//! for killed runs) and clear errors (every message names the cluster).
//!
//! - [`client`]: kubeconfig, context, connection check;
//! - [`discovery`]: nodes, zones and the fingerprint (version, CNI, kube-proxy mode);
//! - [`manifests`]: every object a run creates, as pure functions (`zonebench render`);
//! - [`pss`]: the restricted Pod Security Standard checked on pod specs;
//! - [`pods`]: creating the run's objects and waiting for agents to become ready;
//! - [`portforward`]: loopback listeners bridged to port-forwards, for the control API
//!   (`--control port-forward`; `direct` connects to pod IPs, `auto` picks: [`ControlMode`]);
//! - [`services`]: Services per routing variant, EndpointSlice hints, batched creation and
//!   deletion of selector-less Services, and what the live hints doctor reads;
//! - [`run_services`]: the Services of `via = "service"` steps and of sweeps (`apply_services`);
//! - [`inspect`]: the node inspector's reports (`--inspect-nodes`): rules and sync times;
//! - [`hints_check`]: the hints doctor with its live comparison on a Service's objects
//!   (`zonebench hints -n`, and the verdict each Service test records);
//! - [`gc`]: removing what killed runs left;
//! - [`settings`]: the scenario's `[kube]` table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::Api;

use super::{Capability, Platform};
use crate::control_client::ControlClient;
use crate::model::{
    AgentRequest, ClusterTopology, ControlEndpoint, DataplaneKind, DataplaneName, DeployedAgent, Node, ProbeRequest,
    ServiceRequest, ServicesApplied,
};
use crate::scenario::KubeSettings;

pub mod client;
pub mod discovery;
pub mod gc;
pub mod hints_check;
pub mod inspect;
pub mod manifests;
pub mod pods;
pub mod portforward;
pub mod pss;
pub mod run_services;
pub mod services;

pub use client::{Cluster, ClusterSource};
pub use manifests::{RoutingVariant, RunMeta};

/// How long an agent may take to answer through its port-forward once its pod is ready.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// How long a point waits for every node inspector pod to report after programming (its
/// script reports every 5 s; a fresh report may need two).
const INSPECT_FRESH_WITHIN: Duration = Duration::from_secs(20);
/// How long teardown waits for the namespace to be gone before leaving it to the cluster.
const NAMESPACE_GONE_WITHIN: Duration = Duration::from_secs(90);

/// Everything that goes wrong talking to a cluster, each naming the cluster.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {origin}: {cause}")]
    Kubeconfig { origin: String, cause: String },
    #[error("cannot reach the Kubernetes API at {cluster}: {cause}")]
    Unreachable { cluster: String, cause: String },
    #[error("cluster {cluster}: {what}: {cause}")]
    Api { cluster: String, what: String, cause: String },
    #[error("cluster {cluster}: none of its {nodes} nodes carries the label topology.kubernetes.io/zone (scripts/kind-cluster.sh shows how to label them)")]
    NoZones { cluster: String, nodes: usize },
    #[error("cluster {cluster}: {message}")]
    Pods { cluster: String, message: String },
    /// An object the user named is not there (`zonebench hints -n NAMESPACE SERVICE`).
    #[error("cluster {cluster}: {message}")]
    NotFound { cluster: String, message: String },
    #[error(transparent)]
    Manifest(#[from] manifests::ManifestError),
}

/// How the coordinator reaches the agents' control APIs (`--control`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ControlMode {
    /// Direct where the first agent's pod IP answers, else port-forward.
    #[default]
    Auto,
    /// TCP to each pod IP: inside the cluster (the nightly CronJob), or where pod IPs are
    /// routed to the coordinator (the Kubernetes lab, whose node agents have no port-forward).
    Direct,
    /// Through the API server, as `kubectl port-forward` (a laptop outside the cluster).
    PortForward,
}

impl ControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::Auto => "auto",
            ControlMode::Direct => "direct",
            ControlMode::PortForward => "port-forward",
        }
    }
}

/// How long `--control auto` waits for a TCP connect to the first agent's pod IP.
const DIRECT_PROBE_WITHIN: Duration = Duration::from_secs(1);

/// What a kube run needs besides the scenario's tests.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    pub source: ClusterSource,
    /// `--image`, over the scenario's `kube.image`.
    pub image: Option<String>,
    pub settings: KubeSettings,
    pub scenario: String,
    /// `--inspect-nodes`: the inspector image. Deploys the privileged DaemonSet (only then).
    pub inspector_image: Option<String>,
    /// A fixed run id (tests); default random.
    pub run_id: Option<String>,
    /// Echo Services to create with the agents, one per routing variant (for `via = "service"`).
    pub variants: Vec<RoutingVariant>,
    /// `--control`.
    pub control: ControlMode,
    /// Direct access to the nodes (the Kubernetes lab): their rules and kube-proxy's sync
    /// metrics without the inspector DaemonSet, and kube-proxy's mode switched for a sweep.
    pub nodes: Option<std::sync::Arc<dyn inspect::NodeAccess>>,
}

/// Runs a blocking [`inspect::NodeAccess`] call off the async threads.
async fn on_nodes<T: Send + 'static>(
    nodes: &std::sync::Arc<dyn inspect::NodeAccess>,
    f: impl FnOnce(&dyn inspect::NodeAccess) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let nodes = nodes.clone();
    tokio::task::spawn_blocking(move || f(nodes.as_ref())).await.context("a node reader panicked")?
}

impl KubeOptions {
    pub fn image(&self) -> String {
        self.image.clone().or_else(|| self.settings.image.clone()).unwrap_or_else(crate::scenario::kube::default_image)
    }
}

/// A fresh run id: 8 hex digits (namespace `zonebench-<id>`).
pub fn fresh_run_id() -> anyhow::Result<String> {
    Ok(crate::platform::process::random_token()?[..8].to_string())
}

/// The kube platform for one cluster.
pub struct KubePlatform {
    options: KubeOptions,
    run: RunMeta,
    token: String,
    cluster: Option<Cluster>,
    nodes: Vec<Node>,
    /// Set before the namespace create is sent, so teardown deletes it even when the
    /// create's answer was lost to a signal.
    namespace_requested: bool,
    bridges: Vec<portforward::Bridge>,
    /// How agents are reached, once `deploy` has decided (auto picks then).
    control: Option<ControlMode>,
    /// The agents as deployed, for their control APIs (the programming probe runs in one).
    agents: BTreeMap<String, DeployedAgent>,
    /// The Services `apply_services` made, so a later call changes only what differs.
    services: run_services::State,
    /// The cluster's kube-proxy mode as discovered (what programs the Services).
    dataplane: String,
    /// The inspector's reports as the last `apply_services` ended (or at deploy).
    reports: Vec<inspect::NodeReport>,
    progress: Option<std::sync::Arc<dyn super::Progress>>,
}

impl KubePlatform {
    pub fn new(options: KubeOptions) -> anyhow::Result<KubePlatform> {
        let run_id = match &options.run_id {
            Some(id) => id.clone(),
            None => fresh_run_id()?,
        };
        let run = RunMeta { run_id, scenario: options.scenario.clone() };
        Ok(KubePlatform {
            options,
            run,
            token: crate::platform::process::random_token()?,
            cluster: None,
            nodes: Vec::new(),
            namespace_requested: false,
            bridges: Vec::new(),
            control: None,
            agents: BTreeMap::new(),
            services: run_services::State::default(),
            dataplane: String::new(),
            reports: Vec::new(),
            progress: None,
        })
    }

    pub fn run(&self) -> &RunMeta {
        &self.run
    }

    /// The connected cluster (after `discover`).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    pub fn source(&self) -> &ClusterSource {
        &self.options.source
    }

    /// Nodes to place agents on without discovering (`zonebench render`'s placeholders).
    pub fn set_nodes(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes;
    }

    /// Waits for the EndpointSlices of every variant Service to list all server agents and
    /// returns what the controller published, hints included (beside which the hints doctor
    /// sets its prediction). Variants that ask for topology wait up to `within` for hints.
    pub async fn variant_hints(&self, servers: usize, within: Duration) -> anyhow::Result<Vec<services::ServiceHints>> {
        let cluster = self.connected()?;
        let mut out = Vec::new();
        for v in &self.options.variants {
            let want_hints = *v != RoutingVariant::None;
            let h = services::wait_for_endpoints(
                cluster,
                &self.run.namespace(),
                &v.service_name(),
                servers,
                want_hints,
                within,
            )
            .await?;
            out.push(h);
        }
        Ok(out)
    }

    /// `--control`, with auto decided by one TCP connect to `ip` (the first agent's).
    async fn choose_control(&self, ip: IpAddr) -> ControlMode {
        let mode = match self.options.control {
            ControlMode::Auto => {
                let addr = std::net::SocketAddr::new(ip, manifests::AGENT_CONTROL_PORT);
                match tokio::time::timeout(DIRECT_PROBE_WITHIN, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => ControlMode::Direct,
                    _ => ControlMode::PortForward,
                }
            }
            m => m,
        };
        let why = match (self.options.control, mode) {
            (ControlMode::Auto, ControlMode::Direct) => " (auto: pod IPs answer from here)",
            (ControlMode::Auto, _) => " (auto: pod IPs do not answer from here)",
            _ => "",
        };
        self.say(format!("control: {}{why}", mode.as_str()));
        mode
    }

    fn say(&self, message: String) {
        match &self.progress {
            Some(p) => p.message(format!("kube: {message}")),
            None => eprintln!("kube: {message}"),
        }
    }

    /// How agents were reached (after `deploy`).
    pub fn control(&self) -> Option<ControlMode> {
        self.control
    }

    fn connected(&self) -> anyhow::Result<&Cluster> {
        self.cluster.as_ref().context("the kube platform is not connected (discover first)")
    }

    /// The manifests `deploy` creates for `agents` on the discovered nodes.
    pub fn manifests(&self, agents: &[AgentRequest]) -> anyhow::Result<manifests::RunManifests> {
        let pods = agent_pods(agents, &self.nodes)?;
        let image = self.options.image();
        let m = manifests::run_manifests(&manifests::RunInput {
            run: &self.run,
            settings: &self.options.settings,
            image: &image,
            token: &self.token,
            agents: &pods,
            variants: &self.options.variants,
            inspector_image: self.options.inspector_image.as_deref(),
        })?;
        Ok(m)
    }
}

/// The short name of a cluster's service dataplane, from the fingerprint's kube-proxy mode
/// (as the sweep's `variant` and `service_dataplane.kind`): `iptables`, `nftables`, `ipvs`,
/// `cilium-kpr` (Cilium's kube-proxy replacement), `none`, or `unknown`.
pub fn dataplane_name(kube_proxy_mode: Option<&str>) -> String {
    match kube_proxy_mode.map(str::trim) {
        Some(m) if m.starts_with("none (cilium") => "cilium-kpr".into(),
        Some(m) if !m.is_empty() => m.split_whitespace().next().unwrap_or("unknown").to_string(),
        _ => "unknown".into(),
    }
}

/// Agent pods for requests, each in the zone of its node.
pub fn agent_pods(agents: &[AgentRequest], nodes: &[Node]) -> anyhow::Result<Vec<manifests::AgentPod>> {
    agents
        .iter()
        .map(|a| {
            let node = nodes.iter().find(|n| n.name == a.node).with_context(|| format!("no node {}", a.node))?;
            Ok(manifests::AgentPod {
                id: a.id.clone(),
                node: a.node.clone(),
                zone: node.zone.clone(),
                max_answer_qps: a.max_answer_qps,
                relay: a.relay,
            })
        })
        .collect()
}

impl Platform for KubePlatform {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::Services => true,
            // A cluster's kube-proxy or CNI is what it is ([`Platform::fixed_service_dataplane`]);
            // the Kubernetes lab's kube-proxy can restart in the other mode.
            Capability::SwitchDataplane => self.options.nodes.as_ref().is_some_and(|n| n.can_switch_proxy_mode()),
        }
    }

    async fn discover(&mut self) -> anyhow::Result<ClusterTopology> {
        let cluster = client::connect(&self.options.source).await?;
        let topology = discovery::discover(&cluster).await?;
        self.nodes = topology.nodes.clone();
        self.dataplane = dataplane_name(topology.fingerprint.extra.get("kube_proxy_mode").map(String::as_str));
        self.cluster = Some(cluster);
        Ok(topology)
    }

    async fn deploy(&mut self, agents: &[AgentRequest]) -> anyhow::Result<Vec<DeployedAgent>> {
        let manifests = self.manifests(agents)?;
        let cluster = self.connected()?.clone();
        let ns = self.run.namespace();
        self.namespace_requested = true;
        pods::create_run_objects(&cluster, &manifests).await?;
        let pod_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
        let names: Vec<String> = manifests.pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let ready =
            pods::wait_ready(&cluster, &pod_api, &self.run.selector(), &names, self.options.settings.ready_timeout())
                .await?;

        let by_agent: BTreeMap<String, &AgentRequest> = agents.iter().map(|a| (a.id.clone(), a)).collect();
        let mut deployed = Vec::new();
        for pod in &ready {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let id = labels.get(manifests::AGENT_LABEL).cloned().unwrap_or_default();
            let request = by_agent.get(&id).with_context(|| format!("pod {name} is no agent of this run"))?;
            let ip: IpAddr = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .with_context(|| format!("pod {name} is ready but has no IP"))?
                .parse()
                .with_context(|| format!("pod {name}'s IP"))?;
            let mode = match self.control {
                Some(m) => m,
                None => {
                    let m = self.choose_control(ip).await;
                    self.control = Some(m);
                    m
                }
            };
            let control = if mode == ControlMode::Direct {
                let control = ControlEndpoint::Tcp(std::net::SocketAddr::new(ip, manifests::AGENT_CONTROL_PORT));
                let client = ControlClient::new(control.clone(), self.token.clone());
                if let Err(e) = client.wait_healthy(HEALTHY_WITHIN).await {
                    anyhow::bail!(
                        "agent {id} in pod {ns}/{name} does not answer at its pod IP {ip} (--control direct): {e:#}"
                    );
                }
                control
            } else {
                let bridge = portforward::Bridge::start(pod_api.clone(), &name, manifests::AGENT_CONTROL_PORT)
                    .await
                    .context("listening on loopback for a port-forward")?;
                let control = ControlEndpoint::Tcp(bridge.addr());
                let client = ControlClient::new(control.clone(), self.token.clone());
                if let Err(e) = client.wait_healthy(HEALTHY_WITHIN).await {
                    let why = bridge.last_error().map(|w| format!(" ({w})")).unwrap_or_default();
                    anyhow::bail!("agent {id} in pod {ns}/{name} does not answer through port-forward{why}: {e:#}");
                }
                self.bridges.push(bridge);
                control
            };
            let client = ControlClient::new(control.clone(), self.token.clone());
            let info = client.info().await.with_context(|| format!("agent {id}'s /v1/info"))?;
            let port = |n: &str| -> anyhow::Result<u16> {
                crate::control_client::info_port(&info, n)
                    .with_context(|| format!("agent {id}'s /v1/info has no {n} port"))
            };
            let zone = self.nodes.iter().find(|n| n.name == request.node).map(|n| n.zone.clone()).unwrap_or_default();
            deployed.push(DeployedAgent {
                id: id.clone(),
                node: request.node.clone(),
                zone,
                ip,
                tcp_port: port("tcp")?,
                udp_port: port("udp")?,
                http_port: port("http")?,
                control,
                token: self.token.clone(),
            });
        }
        if let Some(nodes) = &self.options.nodes {
            self.reports = on_nodes(nodes, |n| n.reports()).await.context("reading the nodes' rules")?;
        } else if let Some(image) = &self.options.inspector_image {
            let within = self.options.settings.ready_timeout();
            self.reports = inspect::wait_first_reports(&cluster, &self.run, image, within).await?;
            let mut missing: Vec<&str> = self.reports.iter().flat_map(inspect::NodeReport::missing_tools).collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                eprintln!(
                    "warning: the node inspector image {image} lacks {}: the rules those count are recorded as unknown",
                    missing.join(", ")
                );
            }
        }
        self.agents = deployed.iter().map(|a| (a.id.clone(), a.clone())).collect();
        Ok(deployed)
    }

    async fn apply_services(
        &mut self,
        services: &[ServiceRequest],
        probe: Option<&ProbeRequest>,
    ) -> anyhow::Result<ServicesApplied> {
        let cluster = self.connected()?.clone();
        let client = match probe {
            Some(p) => {
                let agent = self
                    .agents
                    .get(&p.from_agent)
                    .with_context(|| format!("the probe's client agent {:?} is not deployed", p.from_agent))?;
                Some(ControlClient::new(agent.control.clone(), agent.token.clone()))
            }
            None => None,
        };
        let probe = probe.zip(client.as_ref()).map(|(request, client)| run_services::Probe { client, request });
        let sink = self.progress.clone();
        let mut progress = |m: String| {
            if let Some(p) = &sink {
                p.message(format!("kube: {m}"));
            }
        };
        let (mut deployed, latency) =
            run_services::apply(&cluster, &self.run, &self.nodes, services, &mut self.services, probe, &mut progress)
                .await?;
        // Routes come back as the endpoints' pod IPs: name the agents behind them.
        let agent_at: BTreeMap<String, String> =
            self.agents.values().map(|a| (a.ip.to_string(), a.id.clone())).collect();
        for route in deployed.iter_mut().flat_map(|d| d.routes.values_mut()).flatten() {
            if let Some(id) = agent_at.get(route.as_str()) {
                *route = id.clone();
            }
        }
        // Each node's rules and sync time come from the nodes themselves where the coordinator
        // reaches them, else from the node inspector, when it runs.
        let after = if let Some(access) = &self.options.nodes {
            progress("reading the nodes' rules and kube-proxy's sync metrics".into());
            Some(on_nodes(access, |n| n.reports()).await.context("reading the nodes' rules")?)
        } else if self.options.inspector_image.is_some() {
            progress("waiting for the node inspector's next reports".into());
            Some(inspect::fresh_reports(&cluster, &self.run, INSPECT_FRESH_WITHIN).await?)
        } else {
            None
        };
        let nodes = match after {
            Some(after) => {
                let nodes = inspect::programming(&self.reports, &after, &self.dataplane);
                self.reports = after;
                nodes
            }
            None => Vec::new(),
        };
        Ok(ServicesApplied {
            services: deployed,
            dataplane: DataplaneName::of_cluster(&self.dataplane),
            nodes,
            probe: latency,
        })
    }

    fn fixed_service_dataplane(&self) -> Option<DataplaneName> {
        if self.supports(Capability::SwitchDataplane) {
            return None;
        }
        Some(DataplaneName::of_cluster(if self.dataplane.is_empty() { "unknown" } else { &self.dataplane }))
    }

    fn attach_progress(&mut self, progress: std::sync::Arc<dyn super::Progress>) {
        self.progress = Some(progress);
    }

    async fn set_service_dataplane(&mut self, kind: DataplaneKind) -> anyhow::Result<()> {
        if let Some(nodes) = self.options.nodes.clone().filter(|n| n.can_switch_proxy_mode()) {
            let mode = match kind {
                DataplaneKind::Iptables | DataplaneKind::Nftables => kind.as_str(),
                other => anyhow::bail!(
                    "{other} is no kube-proxy mode: the Kubernetes lab's kube-proxy runs iptables or nftables (the lab emulates the others: sweep them on the plain lab)"
                ),
            };
            if self.dataplane != mode {
                if let Some(p) = &self.progress {
                    p.message(format!("kube: restarting kube-proxy on every node in {mode} mode"));
                }
                on_nodes(&nodes, move |n| n.set_proxy_mode(mode)).await?;
                self.dataplane = mode.to_string();
                // The new processes' sync counters start at zero: the next point's baseline.
                self.reports = on_nodes(&nodes, |n| n.reports()).await.context("reading the nodes' rules")?;
            }
            return Ok(());
        }
        anyhow::bail!(
            "the kube platform cannot switch its service dataplane to {kind}: a cluster's dataplane is the cluster's (its kube-proxy mode or CNI); sweep dataplanes on the lab"
        )
    }

    async fn teardown(&mut self) -> anyhow::Result<()> {
        self.bridges.clear();
        self.control = None;
        self.agents.clear();
        self.services = run_services::State::default();
        if !self.namespace_requested {
            return Ok(());
        }
        let cluster = self.connected()?.clone();
        // The inspector's namespace first: it is the privileged one.
        if self.options.inspector_image.is_some() {
            delete_namespace(&cluster, &self.run.inspector_namespace(), NAMESPACE_GONE_WITHIN).await?;
        }
        delete_namespace(&cluster, &self.run.namespace(), NAMESPACE_GONE_WITHIN).await?;
        self.namespace_requested = false;
        Ok(())
    }
}

/// Deletes a namespace (and so everything in it) and waits until it is gone or `within`
/// passes; a namespace still terminating then is left to the cluster, with a warning. An API
/// server that does not answer (restarting, say) is retried until `within` passes, so
/// teardown completes once it is back; a refusal is an error at once.
pub async fn delete_namespace(cluster: &Cluster, name: &str, within: Duration) -> Result<(), KubeError> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let unreachable = |e: &kube::Error| !matches!(e, kube::Error::Api(_));
    let mut said = false;
    let mut waiting_for_api = |e: &kube::Error| -> bool {
        if !unreachable(e) || tokio::time::Instant::now() >= deadline {
            return false;
        }
        if !said {
            eprintln!("kube: the API server does not answer ({e}); deleting namespace {name} once it is back");
            said = true;
        }
        true
    };
    loop {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) if waiting_for_api(&e) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(cluster.api_error(format!("deleting namespace {name}"), &e)),
        }
    }
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(
                    "namespace {name} is still terminating after {within:?}; the cluster finishes it (`zonebench gc` lists it while it stays)"
                );
                return Ok(());
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) if waiting_for_api(&e) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(cluster.api_error(format!("waiting for namespace {name} to go"), &e)),
        }
    }
}

/// Creating with `PostParams` defaults; a helper so call sites read as what they create.
pub(crate) fn post() -> PostParams {
    PostParams { dry_run: false, field_manager: Some(manifests::MANAGER.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::dataplane_name;

    #[test]
    fn a_clusters_dataplane_is_named_by_its_kube_proxy_mode_in_one_word() {
        assert_eq!(dataplane_name(Some("iptables")), "iptables");
        assert_eq!(dataplane_name(Some("nftables")), "nftables");
        assert_eq!(dataplane_name(Some("none (cilium kube-proxy replacement)")), "cilium-kpr");
        assert_eq!(dataplane_name(Some("none")), "none");
        assert_eq!(dataplane_name(Some("unknown (kube-proxy runs; no readable configuration)")), "unknown");
        assert_eq!(dataplane_name(None), "unknown");
    }
}
