//! `via = "service"` on a cluster: one ClusterIP Service per requested Service, selecting
//! exactly its backend agents' pods through a per-Service label the run sets on them
//! (a Service selector is equality-only, so a set of agent ids needs a shared label), with
//! the request's routing mode; then the EndpointSlice controller's answer is waited for and
//! the hints doctor's prediction is set beside the hints it actually wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;

use super::client::Cluster;
use super::manifests::{self, RunMeta};
use super::post;
use super::services::{self, ServiceHints};
use crate::platform::lab::{AGENT_HTTP_PORT, AGENT_TCP_PORT, AGENT_UDP_PORT};
use crate::platform::{AgentPort, DeployedService, Node, ServiceRequest};
use crate::results::{HintsEvent, HintsVerdict};
use crate::topology::input::{ServiceObject, SliceObject};
use crate::topology::{self, doctor, hints, RoutingMode, ServiceConfig};

/// The label (prefix + Service name) marking a pod as one of that Service's backends. The
/// name part is the Service name, which `check_name` keeps a valid label name (≤63).
pub const BACKEND_LABEL_PREFIX: &str = "svc.zonebench.dev/";
const BACKEND_VALUE: &str = "backend";
/// How long the EndpointSlice controller may take to list every backend (and write hints).
pub const ENDPOINTS_WITHIN: Duration = Duration::from_secs(60);

pub fn backend_label(service: &str) -> String {
    format!("{BACKEND_LABEL_PREFIX}{service}")
}

/// An agent port's number in every agent pod (the Service forwards to the same number).
pub fn agent_port(p: AgentPort) -> u16 {
    match p {
        AgentPort::Tcp => AGENT_TCP_PORT,
        AgentPort::Udp => AGENT_UDP_PORT,
        AgentPort::Http => AGENT_HTTP_PORT,
    }
}

/// The Service object for a request: ClusterIP, selecting the pods labelled as its backends,
/// with the routing mode as the annotation or `spec.trafficDistribution`.
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
    let ports = r
        .ports
        .iter()
        .map(|&p| ServicePort {
            name: Some(p.name().into()),
            port: i32::from(agent_port(p)),
            protocol: Some(if p == AgentPort::Udp { "UDP" } else { "TCP" }.into()),
            target_port: Some(IntOrString::Int(i32::from(agent_port(p)))),
            ..Default::default()
        })
        .collect();
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
            ports: Some(ports),
            traffic_distribution,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates (replacing) the requested Services, deletes the ones `previous` held that are no
/// longer requested, and waits for each one's endpoints. Returns the Services as deployed.
pub async fn apply(
    cluster: &Cluster,
    run: &RunMeta,
    nodes: &[Node],
    requests: &[ServiceRequest],
    previous: &BTreeSet<String>,
) -> anyhow::Result<Vec<DeployedService>> {
    let ns = run.namespace();
    let mut seen = BTreeSet::new();
    for r in requests {
        crate::platform::lab::services::check_name(&r.name)?;
        if !seen.insert(r.name.clone()) {
            bail!("service {:?} is requested twice", r.name);
        }
        if r.ports.is_empty() {
            bail!("service {:?} has no ports", r.name);
        }
        if r.backends.is_empty() {
            bail!("service {:?} has no backends", r.name);
        }
    }
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

    // Labels first, so each Service selects its backends from the moment it exists.
    let managed: BTreeSet<&String> = previous.iter().chain(seen.iter()).collect();
    for (agent, pod) in &by_agent {
        let have = pod.metadata.labels.clone().unwrap_or_default();
        let mut patch = serde_json::Map::new();
        for s in &managed {
            let key = backend_label(s);
            let want = requests.iter().any(|r| &&r.name == s && r.backends.contains(agent));
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

    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &ns);
    for gone in previous.difference(&seen) {
        delete_service(cluster, &api, &ns, gone).await?;
    }
    let mut created = Vec::with_capacity(requests.len());
    for r in requests {
        // Replaced, not patched: a routing mode is removed as surely as it is added. The old
        // Service's slices go first, or their endpoints and hints would pass for the new one's.
        if delete_service(cluster, &api, &ns, &r.name).await? {
            wait_slices_gone(cluster, &ns, &r.name, ENDPOINTS_WITHIN).await?;
        }
        let svc = api
            .create(&post(), &request_service(run, r))
            .await
            .map_err(|e| cluster.api_error(format!("creating Service {ns}/{}", r.name), &e))?;
        created.push(svc);
    }

    let mut out = Vec::with_capacity(requests.len());
    for (r, svc) in requests.iter().zip(&created) {
        let want_hints = r.routing != RoutingMode::None;
        let live =
            services::wait_for_endpoints(cluster, &ns, &r.name, r.backends.len(), want_hints, ENDPOINTS_WITHIN).await?;
        let ip: IpAddr = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .with_context(|| format!("Service {ns}/{} was created without a ClusterIP", r.name))?
            .parse()
            .with_context(|| format!("Service {ns}/{}'s ClusterIP", r.name))?;
        out.push(DeployedService {
            name: r.name.clone(),
            ip,
            ports: r.ports.iter().map(|&p| (p, agent_port(p))).collect(),
            hints: Some(verdict(&ns, nodes, r.routing, &live)?),
        });
    }
    Ok(out)
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

/// The doctor's prediction for the endpoints the cluster published (one fresh sync of one
/// slice, in address order, as the lab predicts), with a line comparing it to the hints the
/// controller actually wrote: `HintsVerdict` has no field for them, so its explanation says.
pub fn verdict(ns: &str, nodes: &[Node], routing: RoutingMode, live: &ServiceHints) -> anyhow::Result<HintsVerdict> {
    let cluster: Vec<topology::Node> = nodes
        .iter()
        .map(|n| topology::Node::new(n.name.clone(), &n.zone, topology::Cpu::from_millis(n.cpu_millis)))
        .collect();
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
    let config = ServiceConfig::with_mode(routing);
    let rec = hints::predict(&cluster, std::slice::from_ref(&slice), &config, &hints::ControllerOptions::default());
    let inputs = doctor::Inputs {
        nodes: cluster,
        slices: vec![SliceObject { namespace: Some(ns.into()), service: Some(live.service.clone()), slice }],
        service: Some(ServiceObject { namespace: Some(ns.into()), name: live.service.clone(), config }),
    };
    let report = doctor::diagnose(&inputs, &doctor::Settings::default())
        .map_err(|e| anyhow::anyhow!("explaining the hints of service {}: {e}", live.service))?;
    let mut explanation = report.explanation;
    let written: Vec<String> = ready
        .iter()
        .map(|e| {
            let zones = if e.for_zones.is_empty() { "none".to_string() } else { e.for_zones.join("+") };
            format!("{}→{zones}", e.address)
        })
        .collect();
    let hinted = ready.iter().filter(|e| !e.for_zones.is_empty()).count();
    explanation.push(format!(
        "the cluster's EndpointSlice controller wrote zone hints on {hinted} of {} ready endpoints ({})",
        ready.len(),
        written.join(", ")
    ));
    Ok(HintsVerdict {
        mode: routing.as_str().to_string(),
        enabled: rec.hints_enabled(),
        deterministic: rec.deterministic(),
        event: rec.event.as_ref().map(|e| HintsEvent {
            event_type: format!("{:?}", e.event_type),
            reason: e.reason.clone(),
            message: e.message.clone(),
        }),
        explanation,
    })
}
