//! Services on a cluster: the echo Service of each routing variant, waiting for the
//! EndpointSlice controller to publish its endpoints and reading the zone hints it wrote
//! (set beside the hints doctor's prediction by the caller); service scaling with
//! selector-less Services whose EndpointSlices point at the echo pods (no extra pods),
//! created and deleted in batches with progress.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use serde::{Deserialize, Serialize};

use super::client::Cluster;
use super::manifests::{self, RoutingVariant, RunMeta};
use super::{post, KubeError};

/// One endpoint as an EndpointSlice publishes it, with the zones it is hinted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHint {
    pub address: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    /// `hints.forZones`; empty when the controller wrote none.
    pub for_zones: Vec<String>,
}

/// A Service's routing configuration and its endpoints' hints, as the cluster has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHints {
    pub namespace: String,
    pub service: String,
    /// The `service.kubernetes.io/topology-mode` annotation.
    pub topology_mode: Option<String>,
    pub traffic_distribution: Option<String>,
    pub endpoints: Vec<EndpointHint>,
}

/// The endpoints of a Service's slices, sorted by address.
pub fn slice_hints(slices: &[EndpointSlice]) -> Vec<EndpointHint> {
    let mut out: Vec<EndpointHint> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let for_zones: Vec<String> = e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default();
            e.addresses.iter().map(move |a| EndpointHint {
                address: a.clone(),
                node: e.node_name.clone(),
                zone: e.zone.clone(),
                ready,
                for_zones: for_zones.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// A Service and its slices as [`ServiceHints`].
pub fn service_hints(service: &Service, slices: &[EndpointSlice]) -> ServiceHints {
    ServiceHints {
        namespace: service.metadata.namespace.clone().unwrap_or_default(),
        service: service.metadata.name.clone().unwrap_or_default(),
        topology_mode: service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| {
                a.get(manifests::TOPOLOGY_MODE).or_else(|| a.get("service.kubernetes.io/topology-aware-hints"))
            })
            .cloned(),
        traffic_distribution: service.spec.as_ref().and_then(|s| s.traffic_distribution.clone()),
        endpoints: slice_hints(slices),
    }
}

async fn slices_of(cluster: &Cluster, namespace: &str, service: &str) -> Result<Vec<EndpointSlice>, KubeError> {
    Api::<EndpointSlice>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{}={service}", manifests::SERVICE_NAME_LABEL)))
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.api_error(format!("listing EndpointSlices of {namespace}/{service}"), &e))
}

/// A live Service's routing settings and hints as written (`zonebench hints -n NAMESPACE
/// SERVICE` reads more, for the doctor: [`read_for_hints`]).
pub async fn live_hints(cluster: &Cluster, namespace: &str, service: &str) -> Result<ServiceHints, KubeError> {
    let svc = Api::<Service>::namespaced(cluster.client.clone(), namespace)
        .get(service)
        .await
        .map_err(|e| cluster.api_error(format!("reading Service {namespace}/{service}"), &e))?;
    let slices = slices_of(cluster, namespace, service).await?;
    Ok(service_hints(&svc, &slices))
}

/// What `zonebench hints -n NAMESPACE SERVICE` reads: the Service, its EndpointSlices, every
/// Node (the controller's CPU ratios span the cluster), and the topology events the
/// controller recorded on the Service.
#[derive(Debug, Clone)]
pub struct HintsObjects {
    pub service: Service,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// `TopologyAwareHints*` events on the Service, oldest first; `Err`: why they could not
    /// be read (evidence only, so not fatal: RBAC may allow Services but not Events).
    pub events: Result<Vec<Event>, String>,
}

/// Reads [`HintsObjects`]. A missing Service or namespace is a [`KubeError::NotFound`] naming
/// both, with the Services the namespace does have.
pub async fn read_for_hints(cluster: &Cluster, namespace: &str, service: &str) -> Result<HintsObjects, KubeError> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let svc = match services.get_opt(service).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(not_found(cluster, namespace, service).await),
        Err(e) => return Err(cluster.api_error(format!("reading Service {namespace}/{service}"), &e)),
    };
    let slices = slices_of(cluster, namespace, service).await?;
    let nodes = Api::<Node>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.api_error("listing Nodes (the controller's CPU ratios need every node)", &e))?;
    let fields = format!("involvedObject.kind=Service,involvedObject.name={service}");
    let events = Api::<Event>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default().fields(&fields))
        .await
        .map(|l| {
            // Filtered here too: the field selector is a server-side convenience.
            let mut ev: Vec<Event> = l
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object.kind.as_deref() == Some("Service")
                        && e.involved_object.name.as_deref() == Some(service)
                        && e.reason.as_deref().is_some_and(|r| r.starts_with("TopologyAwareHints"))
                })
                .collect();
            ev.sort_by_key(event_time);
            ev
        })
        .map_err(|e| super::client::error_chain(&e));
    Ok(HintsObjects { service: svc, slices, nodes, events })
}

/// When an event last happened (series, legacy `lastTimestamp`, `eventTime`).
pub fn event_time(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

/// Why `namespace/service` was not found: no such namespace, or no such Service in it.
async fn not_found(cluster: &Cluster, namespace: &str, service: &str) -> KubeError {
    let message = match Api::<Namespace>::all(cluster.client.clone()).get_opt(namespace).await {
        Ok(None) => format!("namespace {namespace:?} does not exist (looking for Service {service:?})"),
        Ok(Some(_)) => {
            let there = Api::<Service>::namespaced(cluster.client.clone(), namespace)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.into_iter().filter_map(|s| s.metadata.name).collect::<Vec<_>>());
            match there {
                Ok(names) if names.is_empty() => {
                    format!("no Service {service:?} in namespace {namespace:?}, which has no Services")
                }
                Ok(names) => {
                    format!("no Service {service:?} in namespace {namespace:?} (its Services: {})", names.join(", "))
                }
                Err(_) => format!("no Service {service:?} in namespace {namespace:?}"),
            }
        }
        // Namespaces may not be readable with the user's RBAC: say both possibilities.
        Err(_) => format!("no Service {service:?} in namespace {namespace:?} (or no such namespace)"),
    };
    KubeError::NotFound { cluster: cluster.describe(), message }
}

/// Creates the echo Service of each variant in the run's namespace.
pub async fn create_variant_services(
    cluster: &Cluster,
    run: &RunMeta,
    variants: &[RoutingVariant],
) -> Result<Vec<Service>, KubeError> {
    let ns = run.namespace();
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &ns);
    let mut out = Vec::new();
    for v in variants {
        let svc = manifests::variant_service(run, *v);
        let created = api
            .create(&post(), &svc)
            .await
            .map_err(|e| cluster.api_error(format!("creating Service {ns}/{}", v.service_name()), &e))?;
        out.push(created);
    }
    Ok(out)
}

/// Polls a Service's EndpointSlices until `expected` ready endpoints are published and, when
/// `want_hints`, each carries hints (or `within` passes: then what is there is returned,
/// since a controller that writes no hints is an answer, not an error).
pub async fn wait_for_endpoints(
    cluster: &Cluster,
    namespace: &str,
    service: &str,
    expected: usize,
    want_hints: bool,
    within: Duration,
) -> Result<ServiceHints, KubeError> {
    let svc = Api::<Service>::namespaced(cluster.client.clone(), namespace)
        .get(service)
        .await
        .map_err(|e| cluster.api_error(format!("reading Service {namespace}/{service}"), &e))?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let slices = slices_of(cluster, namespace, service).await?;
        let hints = service_hints(&svc, &slices);
        let ready: Vec<&EndpointHint> = hints.endpoints.iter().filter(|e| e.ready).collect();
        let complete = ready.len() >= expected && (!want_hints || ready.iter().all(|e| !e.for_zones.is_empty()));
        if complete {
            return Ok(hints);
        }
        if tokio::time::Instant::now() >= deadline {
            if ready.len() < expected {
                return Err(KubeError::Pods {
                    cluster: cluster.describe(),
                    message: format!(
                        "Service {namespace}/{service} has {} of {expected} ready endpoints after {within:?}",
                        ready.len()
                    ),
                });
            }
            return Ok(hints);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates selector-less Services, each followed by its EndpointSlice, `batch` at a time
/// (each batch's requests concurrent), calling `progress(done, total)` after each batch.
pub async fn create_written_services(
    cluster: &Cluster,
    namespace: &str,
    objects: Vec<(Service, EndpointSlice)>,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Service>, KubeError> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), namespace);
    let total = objects.len();
    let mut created = Vec::with_capacity(total);
    for chunk in objects.chunks(batch.max(1)) {
        let results = join_all(chunk.iter().map(|(svc, slice)| {
            let (services, slices) = (services.clone(), slices.clone());
            let name = svc.metadata.name.clone().unwrap_or_default();
            async move {
                let made = services.create(&post(), svc).await.map_err(|e| (name.clone(), "Service", e))?;
                slices.create(&post(), slice).await.map_err(|e| (name, "EndpointSlice", e))?;
                Ok::<Service, (String, &str, kube::Error)>(made)
            }
        }))
        .await;
        for r in results {
            created.push(
                r.map_err(|(name, kind, e)| cluster.api_error(format!("creating {kind} {namespace}/{name}"), &e))?,
            );
        }
        progress(created.len(), total);
    }
    Ok(created)
}

/// Deletes Services and the EndpointSlices of the same name (a selector-less Service's
/// slice has no owner reference to it, so it goes explicitly), `batch` at a time. Objects
/// already gone are fine.
pub async fn delete_written_services(
    cluster: &Cluster,
    namespace: &str,
    names: &[String],
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), KubeError> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), namespace);
    let mut done = 0;
    for chunk in names.chunks(batch.max(1)) {
        let results = join_all(chunk.iter().map(|name| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                for r in [
                    services.delete(name, &DeleteParams::default()).await.map(|_| ()),
                    slices.delete(name, &DeleteParams::default()).await.map(|_| ()),
                ] {
                    match r {
                        Ok(()) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err((name, e)),
                    }
                }
                Ok(())
            }
        }))
        .await;
        for r in results {
            r.map_err(|(name, e)| cluster.api_error(format!("deleting {namespace}/{name}"), &e))?;
        }
        done += chunk.len();
        progress(done, names.len());
    }
    Ok(())
}
