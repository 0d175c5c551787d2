//! The hints doctor on a live Service: its objects as read from the cluster, the doctor's
//! prediction for them, and the live comparison with the hints the controller actually
//! wrote ([`topology::live`] compares and gives the verdict).
//!
//! Two users, one pipeline: `zonebench hints -n NAMESPACE SERVICE` (`crate::live` renders
//! the analysis), and every Service test of a kube run, which records the verdict beside its
//! measurement (`agree` when the doctor predicted what the real controller wrote). The
//! reading is here, in the platform, so that `topology` stays a pure port of Kubernetes that
//! reads no cluster.

use super::client::Cluster;
use super::services::{self, HintsObjects};
use super::KubeError;
use crate::model::LiveHintsCheck;
use crate::topology::doctor::{self, Analysis, DoctorError, Inputs, Settings};
use crate::topology::input::{self, FieldError};
use crate::topology::live::{compare, gate_default, minor_version, LiveContext, RecordedEvent};
use crate::topology::AddressType;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("cluster {cluster}: {object}: {field}: {message}")]
    Object { cluster: String, object: String, field: String, message: String },
    #[error("cluster {cluster}: Service {namespace}/{service} has no EndpointSlice (label kubernetes.io/service-name={service}): {why}")]
    NoSlices { cluster: String, namespace: String, service: String, why: String },
    #[error("cluster {cluster}: Service {namespace}/{service}: {source}")]
    Doctor { cluster: String, namespace: String, service: String, source: Box<DoctorError> },
}

impl LiveError {
    /// A usage error of the doctor's (a flag is needed, e.g. `--address-type`).
    pub fn is_usage(&self) -> bool {
        match self {
            LiveError::Usage(_) => true,
            LiveError::Doctor { source, .. } => matches!(**source, DoctorError::Usage(_)),
            _ => false,
        }
    }
}

/// What the doctor needs besides the objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiagnoseOptions {
    pub address_type: Option<AddressType>,
    /// The PreferSameTrafficDistribution gate; None: the cluster version's default.
    pub prefer_same_traffic_distribution: Option<bool>,
}

/// Reads `namespace/service`'s objects and runs the doctor on them with the live comparison
/// (`analysis.report.live` holds the verdict).
pub async fn diagnose(
    cluster: &Cluster,
    namespace: &str,
    service: &str,
    options: DiagnoseOptions,
) -> Result<Analysis, LiveError> {
    let objects = services::read_for_hints(cluster, namespace, service).await?;
    let inputs = to_inputs(&cluster.describe(), &objects)?;
    let doctor_error = |source| LiveError::Doctor {
        cluster: cluster.describe(),
        namespace: namespace.to_string(),
        service: service.to_string(),
        source: Box::new(source),
    };
    if inputs.slices.is_empty() {
        return Err(LiveError::NoSlices {
            cluster: cluster.describe(),
            namespace: namespace.to_string(),
            service: service.to_string(),
            why: why_no_slices(&objects.service),
        });
    }
    let version = minor_version(&cluster.version);
    let (gate, gate_from_version) = match options.prefer_same_traffic_distribution {
        Some(g) => (g, false),
        None => (gate_default(version), version.is_some()),
    };
    let settings = Settings { address_type: options.address_type, prefer_same_traffic_distribution: gate, live: true };
    let mut analysis = doctor::analyse(&inputs, &settings).map_err(doctor_error)?;
    let same_td = matches!(analysis.service.traffic_distribution.as_deref(), Some("PreferSameZone" | "PreferSameNode"));
    if gate_from_version && same_td {
        analysis.report.mode_reasons.push(format!(
            "the PreferSameTrafficDistribution feature gate is taken as {}, the default of Kubernetes {} (--prefer-same-traffic-distribution overrides it)",
            if gate { "on" } else { "off" },
            cluster.version
        ));
    }
    let (events, events_error) = match &objects.events {
        Ok(ev) => (ev.iter().map(recorded).collect(), None),
        Err(why) => (Vec::new(), Some(why.clone())),
    };
    let ctx = LiveContext {
        cluster: cluster.describe(),
        context: cluster.context.clone(),
        server: cluster.server.clone(),
        server_version: cluster.version.clone(),
        namespace: namespace.to_string(),
        events,
        events_error,
        gate_from_version,
    };
    compare(&mut analysis, &ctx);
    Ok(analysis)
}

/// The live comparison of `namespace/service` in the form a measurement records.
pub async fn check(cluster: &Cluster, namespace: &str, service: &str) -> Result<LiveHintsCheck, LiveError> {
    let analysis = diagnose(cluster, namespace, service, DiagnoseOptions::default()).await?;
    let live = analysis.report.live.as_ref().ok_or_else(|| {
        LiveError::Usage(format!("the doctor made no live comparison for Service {namespace}/{service}"))
    })?;
    Ok(LiveHintsCheck {
        verdict: live.verdict.as_str().to_string(),
        summary: live.summary.clone(),
        differences: live.differences.len() as u32,
    })
}

/// The API objects as the doctor's inputs; a field it cannot use names the object.
pub fn to_inputs(cluster: &str, o: &HintsObjects) -> Result<Inputs, LiveError> {
    let bad = |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let name = match (&meta.namespace, &meta.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (_, n) => n.clone(),
        };
        let object = input::object_label(kind, name.as_deref());
        move |e: FieldError| LiveError::Object {
            cluster: cluster.to_string(),
            object,
            field: e.field,
            message: e.message,
        }
    };
    let nodes = o
        .nodes
        .iter()
        .map(|n| input::node_from_api(n).map_err(bad("Node", &n.metadata)))
        .collect::<Result<Vec<_>, _>>()?;
    let slices = o
        .slices
        .iter()
        .map(|s| input::slice_from_api(s).map_err(bad("EndpointSlice", &s.metadata)))
        .collect::<Result<Vec<_>, _>>()?;
    let service = input::service_from_api(&o.service).map_err(bad("Service", &o.service.metadata))?;
    Ok(Inputs { nodes, slices, service: Some(service) })
}

/// Why a Service has no EndpointSlice, from its spec.
fn why_no_slices(svc: &k8s_openapi::api::core::v1::Service) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return "an ExternalName Service has no endpoints, so there are no hints".into();
    }
    match spec.selector.filter(|s| !s.is_empty()) {
        None => "it has no selector, and no EndpointSlice was made for it by hand".into(),
        Some(sel) => {
            let sel: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "no pod matches its selector {} yet, or the EndpointSlice controller has not created them",
                sel.join(",")
            )
        }
    }
}

fn recorded(e: &k8s_openapi::api::core::v1::Event) -> RecordedEvent {
    RecordedEvent {
        event_type: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count: e.count.or_else(|| e.series.as_ref().and_then(|s| s.count)),
        last_seen: services::event_time(e).map(|t| t.to_string()),
    }
}
