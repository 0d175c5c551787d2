//! `via = "service"` and service scaling on a cluster. Each requested Service is one of two
//! kinds ([`EndpointsBy`]):
//! - **controller**: a ClusterIP Service selecting exactly its backend agents' pods through
//!   a per-Service label the run sets on them (a selector is equality-only, so a set of agent
//!   ids needs a shared label), with the request's routing mode; the EndpointSlice
//!   controller's answer is waited for and the hints doctor's prediction set beside the hints
//!   it actually wrote;
//! - **run**: a selector-less Service with one EndpointSlice the run writes, pointing at the
//!   backends' pods, created and deleted in batches (thousands of them in a sweep).
//!
//! Applying is incremental: a Service requested exactly as it was applied before stays,
//! so a sweep's next point only adds its new Services. The Service a probe watches is
//! created last, alone, and the probe starts the moment its ClusterIP is known.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;

use super::client::Cluster;
use super::hints_check;
use super::manifests::{self, EchoEndpoint, RunMeta};
use super::post;
use super::services::{self, ServiceHints};
use crate::control_client::ControlClient;
use crate::model::HintsVerdict;
use crate::model::RoutingMode;
use crate::model::{AgentPort, DeployedService, EndpointsBy, Node, ProbeRequest, ServiceRequest};
use crate::topology::{self};
use zonebench_agent::probe::{ProbeProtocol, ProbeSpec};

/// The label (prefix + Service name) marking a pod as one of that Service's backends. The
/// name part is the Service name, which `check_name` keeps a valid label name (≤63).
pub const BACKEND_LABEL_PREFIX: &str = "svc.zonebench.dev/";
const BACKEND_VALUE: &str = "backend";
/// How long the EndpointSlice controller may take to list every backend (and write hints).
pub const ENDPOINTS_WITHIN: Duration = Duration::from_secs(60);
/// Run-written Services created (or deleted) at once: enough to make 10,000 Services a
/// matter of seconds, few enough that API priority and fairness does not queue us.
pub const BATCH: usize = 25;

pub fn backend_label(service: &str) -> String {
    format!("{BACKEND_LABEL_PREFIX}{service}")
}

/// A Service as applied: what was asked for and what was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub request: ServiceRequest,
    pub deployed: DeployedService,
}

/// The run's Services as far as this process knows them.
#[derive(Debug, Default)]
pub struct State {
    /// What exists, by name.
    pub applied: BTreeMap<String, Applied>,
    /// Services a failed apply may have left half-made, with who writes their slices:
    /// deleted first by the next one.
    pub uncertain: BTreeMap<String, EndpointsBy>,
}

/// A programming-latency probe for [`apply`]: the agent in a client pod that connects, and
/// which Service and port it connects to.
pub struct Probe<'a> {
    pub client: &'a ControlClient,
    pub request: &'a ProbeRequest,
}

/// The Service object for a controller request: ClusterIP, selecting the pods labelled as
/// its backends, with the routing mode as the annotation or `spec.trafficDistribution`.
pub fn request_service(run: &RunMeta, r: &ServiceRequest) -> Service {
    let mut labels = run.labels();
    labels.insert(manifests::ROLE_LABEL.to_string(), "service".to_string());
    let annotations = (r.routing == RoutingMode::Auto)
        .then(|| BTreeMap::from([(manifests::TOPOLOGY_MODE.to_string(), "Auto".to_string())]));
    let traffic_distribution = match r.routing {
        RoutingMode::PreferClose => Some("PreferClose"),
        RoutingMode::PreferSameZone => Some("PreferSameZone"),
        RoutingMode::PreferSameNode => Some("PreferSameNode"),
        RoutingMode::Auto | RoutingMode::None => None,
    }
    .map(String::from);
    let selector = BTreeMap::from([
        (manifests::RUN_LABEL.to_string(), run.run_id.clone()),
        (backend_label(&r.name), BACKEND_VALUE.to_string()),
    ]);
    Service {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            namespace: Some(run.namespace()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(r.ports.iter().map(|&p| manifests::service_port(p)).collect()),
            traffic_distribution,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check_requests(requests: &[ServiceRequest], probe: Option<&Probe<'_>>) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for r in requests {
        crate::platform::lab::services::check_name(&r.name)?;
        if !seen.insert(r.name.as_str()) {
            bail!("service {:?} is requested twice", r.name);
        }
        if r.ports.is_empty() {
            bail!("service {:?} has no ports", r.name);
        }
        if r.backends.is_empty() {
            bail!("service {:?} has no backends", r.name);
        }
        if r.endpoints == EndpointsBy::Run && r.routing != RoutingMode::None {
            bail!(
                "service {:?}: routing {} needs the EndpointSlice controller's hints, which a selector-less Service does not get",
                r.name,
                r.routing.as_str()
            );
        }
    }
    if let Some(p) = probe {
        let r = requests
            .iter()
            .find(|r| r.name == p.request.service)
            .with_context(|| format!("the probe watches service {:?}, which is not requested", p.request.service))?;
        if !r.ports.contains(&p.request.port) {
            bail!(
                "the probe connects to port {} of service {:?}, which it does not expose",
                p.request.port.name(),
                r.name
            );
        }
    }
    Ok(())
}

/// Makes the run's Services exactly `requests`, keeping `state` up to date as it goes, so
/// after a failure it still says what may exist. With `probe`, the
/// probed Service is created last and its programming latency returned: from just before
/// its creation to the agent's first successful connect to its ClusterIP. Progress of
/// batched steps goes to `progress`.
pub async fn apply(
    cluster: &Cluster,
    run: &RunMeta,
    nodes: &[Node],
    requests: &[ServiceRequest],
    state: &mut State,
    probe: Option<Probe<'_>>,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<(Vec<DeployedService>, Option<Duration>)> {
    let result = apply_inner(cluster, run, nodes, requests, state, probe, progress).await;
    if result.is_err() {
        let unsure =
            requests.iter().filter(|r| !state.applied.contains_key(&r.name)).map(|r| (r.name.clone(), r.endpoints));
        state.uncertain.extend(unsure);
    }
    result
}

async fn apply_inner(
    cluster: &Cluster,
    run: &RunMeta,
    nodes: &[Node],
    requests: &[ServiceRequest],
    state: &mut State,
    probe: Option<Probe<'_>>,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<(Vec<DeployedService>, Option<Duration>)> {
    check_requests(requests, probe.as_ref())?;
    let ns = run.namespace();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&run.selector()))
        .await
        .map_err(|e| cluster.api_error("listing the run's pods", &e))?;
    let by_agent: BTreeMap<String, &Pod> = list
        .items
        .iter()
        .filter_map(|p| Some((p.metadata.labels.as_ref()?.get(manifests::AGENT_LABEL)?.clone(), p)))
        .collect();
    for r in requests {
        for b in &r.backends {
            if !by_agent.contains_key(b) {
                bail!("service {:?}: backend agent {b:?} is not deployed in {ns}", r.name);
            }
        }
    }

    if !state.uncertain.is_empty() {
        // Deleting a Service and the slice of its name covers both kinds; the controller's
        // slices (named otherwise) are waited out, or they would pass for a new Service's.
        let names: Vec<String> = state.uncertain.keys().cloned().collect();
        services::delete_written_services(cluster, &ns, &names, BATCH, |_, _| {}).await?;
        for (n, _) in state.uncertain.iter().filter(|(_, by)| **by == EndpointsBy::Controller) {
            wait_slices_gone(cluster, &ns, n, ENDPOINTS_WITHIN).await?;
        }
        state.uncertain.clear();
    }
    let applied = &mut state.applied;
    label_backends(cluster, &pods, &ns, &by_agent, requests, applied).await?;

    // What goes: Services no longer requested, and those requested differently (replaced,
    // not patched: a routing mode is removed as surely as it is added).
    let requested: BTreeMap<&str, &ServiceRequest> = requests.iter().map(|r| (r.name.as_str(), r)).collect();
    let stale: Vec<Applied> = applied
        .values()
        .filter(|a| requested.get(a.request.name.as_str()).is_none_or(|r| **r != a.request))
        .cloned()
        .collect();
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns);
    let written: Vec<String> =
        stale.iter().filter(|a| a.request.endpoints == EndpointsBy::Run).map(|a| a.request.name.clone()).collect();
    if !written.is_empty() {
        services::delete_written_services(cluster, &ns, &written, BATCH, |d, t| {
            progress(format!("deleting Services {d}/{t}"))
        })
        .await?;
    }
    for a in &stale {
        if a.request.endpoints == EndpointsBy::Controller
            && delete_service(cluster, &services, &ns, &a.request.name).await?
        {
            // The old Service's slices go first, or their endpoints and hints would pass for
            // a new one's of the same name.
            wait_slices_gone(cluster, &ns, &a.request.name, ENDPOINTS_WITHIN).await?;
        }
        applied.remove(&a.request.name);
    }

    let probed = probe.as_ref().map(|p| p.request.service.as_str());
    let new: Vec<&ServiceRequest> =
        requests.iter().filter(|r| !applied.contains_key(&r.name) && Some(r.name.as_str()) != probed).collect();
    let echo = |r: &ServiceRequest| echo_endpoints(&r.backends, &by_agent, nodes);

    // Run-written Services, in batches.
    let batch: Vec<&ServiceRequest> = new.iter().copied().filter(|r| r.endpoints == EndpointsBy::Run).collect();
    if !batch.is_empty() {
        let objects = batch.iter().map(|r| written_objects(run, r, &echo(r)?)).collect::<anyhow::Result<Vec<_>>>()?;
        let created = services::create_written_services(cluster, &ns, objects, BATCH, |d, t| {
            progress(format!("creating Services {d}/{t}"))
        })
        .await?;
        for (r, svc) in batch.iter().zip(&created) {
            let deployed = deployed(&ns, r, svc, None, BTreeMap::new())?;
            applied.insert(r.name.clone(), Applied { request: (*r).clone(), deployed });
        }
    }
    // Controller Services: created, then their endpoints waited for.
    for r in new.iter().copied().filter(|r| r.endpoints == EndpointsBy::Controller) {
        let svc = create_service(cluster, &services, &ns, &request_service(run, r)).await?;
        let d = await_controller(cluster, &ns, nodes, r, &svc).await?;
        applied.insert(r.name.clone(), Applied { request: r.clone(), deployed: d });
    }

    let mut latency = None;
    if let Some(p) = &probe {
        if let Some(r) = requests.iter().find(|r| r.name == p.request.service && !applied.contains_key(&r.name)) {
            let started = Instant::now();
            let (svc, d) = match r.endpoints {
                EndpointsBy::Run => {
                    let objects = vec![written_objects(run, r, &echo(r)?)?];
                    let svc = services::create_written_services(cluster, &ns, objects, 1, |_, _| {})
                        .await?
                        .pop()
                        .context("the API server created no Service")?;
                    let d = deployed(&ns, r, &svc, None, BTreeMap::new())?;
                    (svc, Some(d))
                }
                EndpointsBy::Controller => {
                    (create_service(cluster, &services, &ns, &request_service(run, r)).await?, None)
                }
            };
            let ip = cluster_ip(&ns, r, &svc)?;
            let target = SocketAddr::new(ip, manifests::agent_port(p.request.port));
            // The controller's endpoints are waited for while the probe runs, so the wait
            // does not delay the first connect the probe can see.
            let (reached, d) = match d {
                Some(d) => (probe_connect(p, target, started).await, d),
                None => {
                    let (reached, d) =
                        tokio::join!(probe_connect(p, target, started), await_controller(cluster, &ns, nodes, r, &svc));
                    (reached, d?)
                }
            };
            applied.insert(r.name.clone(), Applied { request: r.clone(), deployed: d });
            latency = Some(reached?);
        }
    }

    requests
        .iter()
        .map(|r| {
            applied
                .get(&r.name)
                .map(|a| a.deployed.clone())
                .with_context(|| format!("service {:?} was not made", r.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(|d| (d, latency))
}

/// Sets and removes the per-Service backend labels of controller Services on the run's
/// pods, before any Service is created, so each selects its backends from the moment it
/// exists. Run-written Services select nothing and label nothing.
async fn label_backends(
    cluster: &Cluster,
    pods: &Api<Pod>,
    ns: &str,
    by_agent: &BTreeMap<String, &Pod>,
    requests: &[ServiceRequest],
    applied: &BTreeMap<String, Applied>,
) -> anyhow::Result<()> {
    let controller = |r: &&ServiceRequest| r.endpoints == EndpointsBy::Controller;
    let managed: BTreeSet<&str> =
        applied.values().map(|a| &a.request).chain(requests).filter(controller).map(|r| r.name.as_str()).collect();
    if managed.is_empty() {
        return Ok(());
    }
    for (agent, pod) in by_agent {
        let have = pod.metadata.labels.clone().unwrap_or_default();
        let mut patch = serde_json::Map::new();
        for s in &managed {
            let key = backend_label(s);
            let want = requests.iter().filter(controller).any(|r| r.name == *s && r.backends.contains(agent));
            match (want, have.contains_key(&key)) {
                (true, false) => {
                    patch.insert(key, BACKEND_VALUE.into());
                }
                (false, true) => {
                    patch.insert(key, serde_json::Value::Null);
                }
                _ => {}
            }
        }
        if patch.is_empty() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let body = serde_json::json!({"metadata": {"labels": patch}});
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| cluster.api_error(format!("labelling pod {ns}/{name} as a Service backend"), &e))?;
    }
    Ok(())
}

/// The backends' pods as EndpointSlice endpoints: address, node and the node's zone.
fn echo_endpoints(
    backends: &[String],
    by_agent: &BTreeMap<String, &Pod>,
    nodes: &[Node],
) -> anyhow::Result<Vec<EchoEndpoint>> {
    backends
        .iter()
        .map(|b| {
            let pod = by_agent.get(b).with_context(|| format!("backend agent {b:?} is not deployed"))?;
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ip =
                pod.status.as_ref().and_then(|s| s.pod_ip.clone()).with_context(|| format!("pod {name} has no IP"))?;
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .with_context(|| format!("pod {name} is not scheduled"))?;
            let zone = nodes.iter().find(|n| n.name == node).map(|n| n.zone.clone()).unwrap_or_default();
            Ok(EchoEndpoint { pod: name, ip, node, zone })
        })
        .collect()
}

fn written_objects(
    run: &RunMeta,
    r: &ServiceRequest,
    echo: &[EchoEndpoint],
) -> anyhow::Result<(Service, EndpointSlice)> {
    Ok((
        manifests::selectorless_service(run, &r.name, &r.ports),
        manifests::run_endpoint_slice(run, &r.name, &r.ports, echo),
    ))
}

async fn create_service(cluster: &Cluster, api: &Api<Service>, ns: &str, svc: &Service) -> anyhow::Result<Service> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    api.create(&post(), svc).await.map_err(|e| cluster.api_error(format!("creating Service {ns}/{name}"), &e).into())
}

fn cluster_ip(ns: &str, r: &ServiceRequest, svc: &Service) -> anyhow::Result<IpAddr> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .with_context(|| format!("Service {ns}/{} was created without a ClusterIP", r.name))?
        .parse()
        .with_context(|| format!("Service {ns}/{}'s ClusterIP", r.name))
}

fn deployed(
    ns: &str,
    r: &ServiceRequest,
    svc: &Service,
    hints: Option<HintsVerdict>,
    routes: BTreeMap<String, Vec<String>>,
) -> anyhow::Result<DeployedService> {
    Ok(DeployedService {
        name: r.name.clone(),
        ip: cluster_ip(ns, r, svc)?,
        ports: r.ports.iter().map(|&p| (p, manifests::agent_port(p))).collect(),
        hints,
        routes,
    })
}

/// What each node's kube-proxy does with a Service's live endpoints and the hints the
/// cluster's controller wrote on them ([`topology::proxy`], kube-proxy's own filtering
/// ported): the endpoint addresses each node routes ClusterIP traffic to, the expected load
/// an overload verdict weighs the measured one against. The platform names the agents
/// behind the addresses. Empty for `PreferSameNode`, whose node hints are not read back.
pub fn routes(nodes: &[Node], routing: RoutingMode, live: &ServiceHints) -> BTreeMap<String, Vec<String>> {
    if routing == RoutingMode::PreferSameNode {
        return BTreeMap::new();
    }
    let eps: Vec<topology::Endpoint> = live
        .endpoints
        .iter()
        .map(|e| topology::Endpoint {
            address: e.address.clone(),
            node: e.node.clone(),
            zone: e.zone.clone(),
            ready: Some(e.ready),
            serving: Some(e.ready),
            terminating: Some(false),
            hints: (!e.for_zones.is_empty())
                .then(|| topology::Hints { for_zones: e.for_zones.clone(), for_nodes: Vec::new() }),
        })
        .collect();
    let svc = topology::ServiceConfig::with_mode(routing);
    topology::proxy::routing_by_node(&eps, &svc, &topology_nodes(nodes), &topology::proxy::ProxyOptions::default())
        .into_iter()
        .map(|(node, c)| (node, c.internal().iter().map(|&i| eps[i].address.clone()).collect()))
        .collect()
}

/// Waits for the controller to publish a Service's endpoints (and hints, when its routing
/// asks for them) and sets the doctor's verdict beside them.
async fn await_controller(
    cluster: &Cluster,
    ns: &str,
    nodes: &[Node],
    r: &ServiceRequest,
    svc: &Service,
) -> anyhow::Result<DeployedService> {
    let want_hints = r.routing != RoutingMode::None;
    let live =
        services::wait_for_endpoints(cluster, ns, &r.name, r.backends.len(), want_hints, ENDPOINTS_WITHIN).await?;
    let mut v = verdict(ns, nodes, r.routing, &live)?;
    let routes = routes(nodes, r.routing, &live);
    // What the controller wrote against what the doctor predicts for the same objects: the
    // verdict `zonebench hints -n` would give now (a failed reading is said, not guessed).
    match hints_check::check(cluster, ns, &r.name).await {
        Ok(check) => v.live = Some(check),
        Err(e) => v.explanation.push(format!("the live comparison with the controller's hints failed: {e}")),
    }
    deployed(ns, r, svc, Some(v), routes)
}

/// Asks the client agent to connect to `target` until it answers; the latency counts from
/// `started` (just before the Service's creation) to the agent's first success. The
/// request's one-way trip through the port-forward is not counted: milliseconds against
/// programming latencies of tenths of seconds and more.
async fn probe_connect(p: &Probe<'_>, target: SocketAddr, started: Instant) -> anyhow::Result<Duration> {
    let before = started.elapsed();
    let within = p.request.within.saturating_sub(before);
    if within.is_zero() {
        bail!("creating service {:?} took longer than the probe's {:?}", p.request.service, p.request.within);
    }
    let spec = ProbeSpec {
        target,
        protocol: match p.request.port {
            AgentPort::Udp => ProbeProtocol::Udp,
            AgentPort::Tcp | AgentPort::Http => ProbeProtocol::Tcp,
        },
        within_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1),
        attempt_timeout_ms: 100,
        interval_ms: 5,
    };
    let sent = started.elapsed();
    let outcome = p.client.probe(&spec).await.with_context(|| {
        format!("asking agent {} to probe service {:?} at {target}", p.request.from_agent, p.request.service)
    })?;
    if !outcome.reached {
        bail!(
            "service {:?} at {target} did not answer agent {} within {:?} ({} attempts; last: {})",
            p.request.service,
            p.request.from_agent,
            p.request.within,
            outcome.attempts,
            outcome.last_error.as_deref().unwrap_or("no error recorded")
        );
    }
    Ok(sent + Duration::from_nanos(outcome.elapsed_ns))
}

/// Deletes a Service; whether there was one.
async fn delete_service(cluster: &Cluster, api: &Api<Service>, ns: &str, name: &str) -> anyhow::Result<bool> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(cluster.api_error(format!("deleting Service {ns}/{name}"), &e).into()),
    }
}

/// Waits until the garbage collector has removed a deleted Service's EndpointSlices.
async fn wait_slices_gone(cluster: &Cluster, ns: &str, service: &str, within: Duration) -> anyhow::Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("{}={service}", manifests::SERVICE_NAME_LABEL);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| cluster.api_error(format!("listing EndpointSlices of {ns}/{service}"), &e))?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the {left} EndpointSlices of the replaced Service {ns}/{service} are still there after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The cluster's nodes as the topology module takes them.
fn topology_nodes(nodes: &[Node]) -> Vec<topology::Node> {
    nodes
        .iter()
        .map(|n| topology::Node::new(n.name.clone(), &n.zone, topology::Cpu::from_millis(n.cpu_millis)))
        .collect()
}

/// The doctor's prediction for the endpoints the cluster published (one fresh sync of one
/// slice, in address order, as the lab predicts), with a line comparing it to the hints the
/// controller actually wrote: `HintsVerdict` has no field for them, so its explanation says.
pub fn verdict(ns: &str, nodes: &[Node], routing: RoutingMode, live: &ServiceHints) -> anyhow::Result<HintsVerdict> {
    let cluster = topology_nodes(nodes);
    let ready: Vec<_> = live.endpoints.iter().filter(|e| e.ready).collect();
    let slice = topology::Slice::new(
        format!("{}-live", live.service),
        ready
            .iter()
            .map(|e| {
                topology::Endpoint::ready(
                    e.address.clone(),
                    e.node.clone().unwrap_or_default(),
                    e.zone.as_deref().unwrap_or(""),
                )
            })
            .collect(),
    );
    let (_, mut verdict) = topology::verdict(ns, &live.service, cluster, slice, routing)
        .map_err(|e| anyhow::anyhow!("explaining the hints of service {}: {e}", live.service))?;
    let written: Vec<String> = ready
        .iter()
        .map(|e| {
            let zones = if e.for_zones.is_empty() { "none".to_string() } else { e.for_zones.join("+") };
            format!("{}→{zones}", e.address)
        })
        .collect();
    let hinted = ready.iter().filter(|e| !e.for_zones.is_empty()).count();
    verdict.explanation.push(format!(
        "the cluster's EndpointSlice controller wrote zone hints on {hinted} of {} ready endpoints ({})",
        ready.len(),
        written.join(", ")
    ));
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::kube::services::EndpointHint;

    fn node(name: &str, zone: &str) -> Node {
        Node { name: name.into(), zone: zone.into(), cpu_millis: 2000, ready: true }
    }

    fn ep(address: &str, node: &str, zone: &str, for_zones: &[&str]) -> EndpointHint {
        EndpointHint {
            address: address.into(),
            node: Some(node.into()),
            zone: Some(zone.into()),
            ready: true,
            for_zones: for_zones.iter().map(|z| z.to_string()).collect(),
        }
    }

    fn live(endpoints: Vec<EndpointHint>) -> ServiceHints {
        ServiceHints {
            namespace: "zb".into(),
            service: "echo".into(),
            topology_mode: None,
            traffic_distribution: Some("PreferClose".into()),
            endpoints,
        }
    }

    #[test]
    fn each_node_routes_as_its_kube_proxy_reads_the_controllers_hints() {
        let nodes = [node("a-1", "a"), node("b-1", "b"), node("c-1", "c")];
        // Zone c has no endpoint; the controller gave it b's second one.
        let hinted = live(vec![
            ep("10.0.0.1", "a-1", "a", &["a"]),
            ep("10.0.1.1", "b-1", "b", &["b"]),
            ep("10.0.1.2", "b-1", "b", &["c"]),
        ]);
        let r = routes(&nodes, RoutingMode::PreferClose, &hinted);
        assert_eq!(r["a-1"], ["10.0.0.1"]);
        assert_eq!(r["b-1"], ["10.0.1.1"]);
        assert_eq!(r["c-1"], ["10.0.1.2"]);
        // One endpoint without a hint turns filtering off for every node.
        let partial = live(vec![ep("10.0.0.1", "a-1", "a", &["a"]), ep("10.0.1.1", "b-1", "b", &[])]);
        let r = routes(&nodes, RoutingMode::PreferClose, &partial);
        assert!(r.values().all(|eps| eps.len() == 2), "{r:?}");
        assert!(routes(&nodes, RoutingMode::PreferSameNode, &hinted).is_empty());
    }
}
