//! Reading kubectl output (`kubectl get nodes|endpointslices|service -o yaml|json`) into
//! the plain model of [`super`], through the k8s-openapi types.
//!
//! A file holds one object, a `List` (what `kubectl get … -o yaml` prints), a typed list
//! (`NodeList`, from the API directly) or several YAML documents. Every error names the file,
//! the object (`Node/ip-10-0-1-5`, or its position when it has no name) and the field
//! (`status.allocatable.cpu`), so a hand-edited fixture is easy to fix.
//!
//! The conversions from the typed objects ([`node_from_api`], [`slice_from_api`],
//! [`service_from_api`]) are shared with [`super::live`], which reads the same objects from
//! a cluster: both forms of `zonebench hints` see exactly the same model.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::Value;

use super::{
    AddressType, Cpu, Endpoint, Hints, Node, ServiceConfig, Slice, SyncState, TrafficPolicy, CONTROLLER_NAME,
    CONTROL_PLANE_LABEL, MANAGED_BY_LABEL, MASTER_LABEL, SERVICE_NAME_LABEL, TOPOLOGY_AWARE_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION, ZONE_LABEL,
};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid {format}: {message}")]
    Syntax { path: PathBuf, format: &'static str, message: String },
    #[error("{path}: {object}: kind is {found}, expected {expected}{hint}")]
    WrongKind { path: PathBuf, object: String, expected: &'static str, found: String, hint: &'static str },
    #[error("{path}: {object}: {field}: {message}")]
    Field { path: PathBuf, object: String, field: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// An EndpointSlice and the Service it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceObject {
    pub namespace: Option<String>,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub slice: Slice,
}

/// A Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObject {
    pub namespace: Option<String>,
    pub name: String,
    pub config: ServiceConfig,
}

/// One object of a file, not yet typed.
struct Raw {
    /// `Kind/name`, or `Kind #3` without a name: how errors name it.
    label: String,
    value: Value,
}

fn kind_hint(expected: &str) -> &'static str {
    match expected {
        "Node" => " (use the output of `kubectl get nodes -o yaml`)",
        "EndpointSlice" => " (use the output of `kubectl get endpointslices -o yaml`)",
        _ => " (use the output of `kubectl get service NAME -o yaml`)",
    }
}

fn read_text(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Read { path: path.into(), source })
}

/// The objects of `text` (read from `path`, which errors name), each checked to be of `kind`.
fn read_objects(path: &Path, text: &str, kind: &'static str) -> Result<Vec<Raw>, InputError> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| InputError::Syntax {
            path: path.into(),
            format: "JSON",
            message: e.to_string(),
        })?;
        vec![v]
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| InputError::Syntax {
            path: path.into(),
            format: "YAML",
            message: e.to_string().trim_start_matches("error: ").to_string(),
        })?
    };
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let Value::Object(map) = &doc else {
            return Err(InputError::File {
                path: path.into(),
                message: format!("expected a {kind} or a List of them, found {}", json_type(&doc)),
            });
        };
        let doc_kind = map.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        let is_list = doc_kind == "List" || (doc_kind.ends_with("List") && map.contains_key("items"));
        if !is_list {
            out.push(one_object(path, doc, kind, None, out.len())?);
            continue;
        }
        // A typed list (`NodeList`) may leave `kind` out of its items.
        let implied = (doc_kind != "List").then(|| doc_kind.trim_end_matches("List").to_string());
        let items = match map.get("items") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => vec![],
            Some(other) => {
                return Err(InputError::Field {
                    path: path.into(),
                    object: doc_kind,
                    field: "items".into(),
                    message: format!("expected a list, found {}", json_type(other)),
                })
            }
        };
        for item in items {
            let n = out.len();
            out.push(one_object(path, item, kind, implied.as_deref(), n)?);
        }
    }
    Ok(out)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn one_object(
    path: &Path,
    mut v: Value,
    kind: &'static str,
    implied: Option<&str>,
    index: usize,
) -> Result<Raw, InputError> {
    let Value::Object(map) = &mut v else {
        return Err(InputError::File {
            path: path.into(),
            message: format!("item {}: expected a {kind} object, found {}", index + 1, json_type(&v)),
        });
    };
    let name = map.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(String::from);
    let found = match (map.get("kind"), implied) {
        (Some(Value::String(k)), _) => k.clone(),
        (None | Some(Value::Null), Some(k)) => {
            map.insert("kind".into(), Value::String(k.into()));
            k.to_string()
        }
        (None | Some(Value::Null), None) => {
            return Err(InputError::Field {
                path: path.into(),
                object: name.map(|n| format!("{kind}/{n}?")).unwrap_or_else(|| format!("object #{}", index + 1)),
                field: "kind".into(),
                message: format!("missing (expected kind: {kind})"),
            })
        }
        (Some(other), _) => {
            return Err(InputError::Field {
                path: path.into(),
                object: format!("object #{}", index + 1),
                field: "kind".into(),
                message: format!("expected a string, found {}", json_type(other)),
            })
        }
    };
    let label = match &name {
        Some(n) => format!("{found}/{n}"),
        None => format!("{found} #{}", index + 1),
    };
    if found != kind {
        return Err(InputError::WrongKind {
            path: path.into(),
            object: label,
            expected: kind,
            found,
            hint: kind_hint(kind),
        });
    }
    Ok(Raw { label, value: v })
}

/// Deserializes `raw` as `T`, naming the field that fails.
fn typed<T: serde::de::DeserializeOwned>(path: &Path, raw: Raw) -> Result<(String, T), InputError> {
    match serde_path_to_error::deserialize::<_, T>(raw.value) {
        Ok(t) => Ok((raw.label, t)),
        Err(e) => {
            let field = e.path().to_string();
            Err(InputError::Field {
                path: path.into(),
                object: raw.label,
                field: if field == "." || field.is_empty() { "(object)".into() } else { field },
                message: e.into_inner().to_string(),
            })
        }
    }
}

fn field_err(path: &Path, object: &str, field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError::Field { path: path.into(), object: object.into(), field: field.into(), message: message.into() }
}

/// Kubernetes prints quantities as strings, but hand-written YAML often has `cpu: 4`.
fn quantities_as_strings(v: &mut Value) {
    for key in ["allocatable", "capacity"] {
        if let Some(Value::Object(m)) = v.get_mut("status").and_then(|s| s.get_mut(key)) {
            for q in m.values_mut() {
                if let Value::Number(n) = q {
                    *q = Value::String(n.to_string());
                }
            }
        }
    }
}

/// Nodes from `kubectl get nodes -o yaml`.
pub fn load_nodes(path: &Path) -> Result<Vec<Node>, InputError> {
    parse_nodes_str(&read_text(path)?, path)
}

/// [`load_nodes`] of text already read; `path` names it in errors.
pub fn parse_nodes_str(text: &str, path: &Path) -> Result<Vec<Node>, InputError> {
    let mut out = Vec::new();
    for mut raw in read_objects(path, text, "Node")? {
        quantities_as_strings(&mut raw.value);
        let (label, n): (String, core::Node) = typed(path, raw)?;
        out.push(node_from_api(&n).map_err(|e| e.at(path, &label))?);
    }
    if out.is_empty() {
        return Err(InputError::File { path: path.into(), message: "no Node in this file".into() });
    }
    Ok(out)
}

/// EndpointSlices from `kubectl get endpointslices -o yaml`, in file order.
pub fn load_slices(path: &Path) -> Result<Vec<SliceObject>, InputError> {
    parse_slices_str(&read_text(path)?, path)
}

/// [`load_slices`] of text already read; `path` names it in errors.
pub fn parse_slices_str(text: &str, path: &Path) -> Result<Vec<SliceObject>, InputError> {
    let mut out = Vec::new();
    for raw in read_objects(path, text, "EndpointSlice")? {
        let (label, s): (String, discovery::EndpointSlice) = typed(path, raw)?;
        out.push(slice_from_api(&s).map_err(|e| e.at(path, &label))?);
    }
    Ok(out)
}

/// The Service from `kubectl get service NAME -o yaml` (exactly one).
pub fn load_service(path: &Path) -> Result<ServiceObject, InputError> {
    parse_service_str(&read_text(path)?, path)
}

/// [`load_service`] of text already read; `path` names it in errors.
pub fn parse_service_str(text: &str, path: &Path) -> Result<ServiceObject, InputError> {
    let mut raws = read_objects(path, text, "Service")?;
    if raws.len() != 1 {
        let names: Vec<&str> = raws.iter().map(|r| r.label.as_str()).collect();
        return Err(InputError::File {
            path: path.into(),
            message: format!("expected exactly one Service, found {}: {}", raws.len(), names.join(", ")),
        });
    }
    let raw = raws.remove(0);
    let (label, s): (String, core::Service) = typed(path, raw)?;
    service_from_api(&s).map_err(|e| e.at(path, &label))
}

/// The field of an API object that cannot be used, and why. The caller names the object and
/// where it came from (a file, or a cluster for `zonebench hints -n NAMESPACE SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }

    fn at(self, path: &Path, object: &str) -> InputError {
        field_err(path, object, self.field, self.message)
    }
}

/// How errors name an object: `Kind/name`, or `Kind` alone without a name.
pub fn object_label(kind: &str, name: Option<&str>) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind.to_string(),
    }
}

/// A Node as the EndpointSlice controller sees it.
pub fn node_from_api(n: &core::Node) -> Result<Node, FieldError> {
    let name =
        n.metadata.name.clone().filter(|s| !s.is_empty()).ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    let Some(status) = &n.status else {
        return Err(FieldError::new("status", "missing: the controller needs the node's Ready condition and allocatable CPU (kubectl get nodes -o yaml prints them)"));
    };
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let cpu = match status.allocatable.as_ref().and_then(|a| a.get("cpu")) {
        Some(q) => Cpu::parse(&q.0).map_err(|e| FieldError::new("status.allocatable.cpu", e))?,
        None => Cpu::ZERO,
    };
    // Go's isNodeReady: the first Ready condition decides; none means not ready.
    let ready = status.conditions.iter().flatten().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True");
    Ok(Node {
        name,
        zone: labels.get(ZONE_LABEL).cloned(),
        allocatable_cpu: cpu,
        ready,
        control_plane: labels.contains_key(CONTROL_PLANE_LABEL) || labels.contains_key(MASTER_LABEL),
    })
}

/// An EndpointSlice with its endpoints' conditions and hints as written.
pub fn slice_from_api(s: &discovery::EndpointSlice) -> Result<SliceObject, FieldError> {
    let name =
        s.metadata.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    let address_type = match s.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        "" => return Err(FieldError::new("addressType", "missing (IPv4, IPv6 or FQDN)")),
        other => return Err(FieldError::new("addressType", format!("{other:?} is not IPv4, IPv6 or FQDN"))),
    };
    let labels = s.metadata.labels.clone().unwrap_or_default();
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    for (i, e) in s.endpoints.iter().enumerate() {
        let address = e
            .addresses
            .first()
            .filter(|a| !a.is_empty())
            .cloned()
            .ok_or_else(|| FieldError::new(format!("endpoints[{i}].addresses"), "missing or empty"))?;
        let c = e.conditions.clone().unwrap_or_default();
        endpoints.push(Endpoint {
            address,
            node: e.node_name.clone(),
            zone: e.zone.clone(),
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
            hints: e.hints.as_ref().map(|h| Hints {
                for_zones: h.for_zones.iter().flatten().map(|z| z.name.clone()).collect(),
                for_nodes: h.for_nodes.iter().flatten().map(|n| n.name.clone()).collect(),
            }),
        });
    }
    Ok(SliceObject {
        namespace: s.metadata.namespace.clone(),
        service: labels.get(SERVICE_NAME_LABEL).cloned(),
        slice: Slice {
            name,
            address_type,
            managed_by_controller: labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(CONTROLLER_NAME),
            state: SyncState::Create,
            endpoints,
        },
    })
}

/// A Service's routing settings: annotations, `trafficDistribution`, traffic policies.
pub fn service_from_api(s: &core::Service) -> Result<ServiceObject, FieldError> {
    let name =
        s.metadata.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    let Some(spec) = &s.spec else { return Err(FieldError::new("spec", "missing")) };
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    let policy = |field: &str, v: &Option<String>| match v.as_deref() {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(FieldError::new(format!("spec.{field}"), format!("{other:?} is not Cluster or Local"))),
    };
    let lb_ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| i.iter().any(|i| i.ip.as_deref().is_some_and(|ip| !ip.is_empty())));
    let node_port = spec.ports.iter().flatten().any(|p| p.node_port.is_some_and(|n| n != 0));
    let external_ips = spec.external_ips.as_ref().is_some_and(|v| !v.is_empty());
    Ok(ServiceObject {
        namespace: s.metadata.namespace.clone(),
        name,
        config: ServiceConfig {
            topology_aware_hints: ann.get(TOPOLOGY_AWARE_HINTS_ANNOTATION).cloned(),
            topology_mode: ann.get(TOPOLOGY_MODE_ANNOTATION).cloned(),
            traffic_distribution: spec.traffic_distribution.clone(),
            internal_traffic_policy: policy("internalTrafficPolicy", &spec.internal_traffic_policy)?,
            external_traffic_policy: policy("externalTrafficPolicy", &spec.external_traffic_policy)?,
            externally_accessible: node_port || lb_ingress || external_ips,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zb-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_typed_node_list_without_item_kinds_and_numeric_cpu_is_read() {
        let p = file(
            "nodelist.yaml",
            "kind: NodeList\napiVersion: v1\nitems:\n- metadata: {name: n1, labels: {topology.kubernetes.io/zone: a}}\n  status:\n    allocatable: {cpu: 4}\n    conditions: [{type: Ready, status: \"True\"}]\n",
        );
        let nodes = load_nodes(&p).unwrap();
        assert_eq!(nodes, vec![Node::new("n1", "a", Cpu::from_cores(4))]);
    }

    #[test]
    fn a_bad_quantity_names_the_node_and_the_field() {
        let p = file(
            "badcpu.yaml",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus:\n  allocatable: {cpu: four}\n  conditions: []\n",
        );
        let e = load_nodes(&p).unwrap_err().to_string();
        assert!(e.contains("Node/n1: status.allocatable.cpu: invalid quantity \"four\""), "{e}");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_its_path() {
        let p = file(
            "badready.yaml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s1}\naddressType: IPv4\nendpoints:\n- addresses: [10.0.0.1]\n  conditions: {ready: maybe}\n",
        );
        let e = load_slices(&p).unwrap_err().to_string();
        assert!(e.contains("EndpointSlice/s1: endpoints[0].conditions.ready:"), "{e}");
    }

    #[test]
    fn yaml_syntax_errors_say_so() {
        let p = file("syntax.yaml", "kind: Node\nmetadata: {name: [\n");
        let e = load_nodes(&p).unwrap_err();
        assert!(matches!(e, InputError::Syntax { format: "YAML", .. }), "{e}");
    }

    #[test]
    fn a_service_reads_annotations_policies_and_external_access() {
        let p = file(
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    service.kubernetes.io/topology-aware-hints: Disabled\n    service.kubernetes.io/topology-mode: Auto\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n  internalTrafficPolicy: Local\n  trafficDistribution: PreferClose\n",
        );
        let s = load_service(&p).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.config.topology_aware_hints.as_deref(), Some("Disabled"));
        assert_eq!(s.config.internal_traffic_policy, TrafficPolicy::Local);
        assert!(s.config.externally_accessible);
        assert_eq!(s.config.traffic_distribution.as_deref(), Some("PreferClose"));
    }
}
