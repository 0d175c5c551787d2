//! The fake's object store, what a real API server keeps in etcd and how its verbs change
//! it: objects in memory by (API prefix, namespace, resource) and name, one resourceVersion
//! counter bumped by every write, which also tells watchers; label selectors (`=`, `==`,
//! `!=`, `k`, `!k`, `in`, `notin`) and field selectors (any JSON path) choosing what a list,
//! watch or delete-collection covers; create, replace (PUT), JSON merge patch, delete and
//! delete-collection, with what a cluster does around them: the namespace must exist, names
//! are unique, a Secret's `stringData` becomes base64 `data`, a Service gets a ClusterIP that
//! a replace keeps, a deleted namespace stays Terminating a moment and then takes all it held,
//! a deleted Service its controller's slices and a deleted DaemonSet its pods.
//!
//! It cannot check what a real server would refuse or change: no schema validation,
//! defaulting or admission (Pod Security included: `kube_manifests` checks the manifests with
//! an independent validator), no `generateName`, strategic merge or server-side apply, no
//! optimistic concurrency (a stale resourceVersion is accepted), no finalizers or owner
//! references beyond the two collections above, and field selectors the real server would
//! refuse as unindexed are accepted.

use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::controllers::{daemonset_owner, daemonset_pods, daemonset_status, endpoint_slice_controller};
use super::kube_proxy::{cluster_ip, is_selectorless, proxied_services, reconcile};
use super::kubelet::{next_pod_ip, start_pod};
use super::router::{json_response, status, Target};
use super::{emit, now, Body, Events, Key, State, SLICE_CONTROLLER, SLICE_MANAGED_BY, SLICE_SERVICE_LABEL};

/// Where an object is stored: (api prefix, namespace, resource).
pub(super) fn key_of(o: &Value) -> (String, String, String) {
    let api_version = o["apiVersion"].as_str().unwrap_or("v1");
    let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
    let kind = o["kind"].as_str().unwrap();
    let resource = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ns = o["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    (prefix, ns, resource)
}

/// A label selector as the API server takes it: terms joined by commas, each `k=v`, `k==v`,
/// `k!=v`, `k`, `!k`, `k in (a,b)` or `k notin (a,b)` (kube-rs passes `ListParams::labels`
/// through and writes `Selector`s in this syntax).
pub(super) fn matches_selector(o: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.trim().is_empty()) else { return true };
    let labels = &o["metadata"]["labels"];
    selector_terms(sel).into_iter().all(|term| label_term(labels, term.trim()))
}

/// Splits a selector at the commas outside parentheses (`in (a,b)` holds commas).
fn selector_terms(sel: &str) -> Vec<&str> {
    let (mut out, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&sel[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sel[from..]);
    out
}

fn label_term(labels: &Value, term: &str) -> bool {
    let value = |k: &str| labels[k.trim()].as_str();
    if let Some(k) = term.strip_prefix('!') {
        return value(k).is_none();
    }
    for (op, want) in [(" notin ", false), (" in ", true)] {
        if let Some((k, set)) = term.split_once(op) {
            let set = set.trim().trim_start_matches('(').trim_end_matches(')');
            return value(k).is_some_and(|v| set.split(',').any(|s| s.trim() == v)) == want;
        }
    }
    if let Some((k, v)) = term.split_once("!=") {
        return value(k) != Some(v.trim());
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return value(k) == Some(v.trim());
    }
    value(term).is_some()
}

/// A field selector: `a.b.c=v`, `a.b.c==v` or `a.b.c!=v` terms on the object's JSON (a
/// missing field reads as "").
pub(super) fn matches_fields(o: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.trim().is_empty()) else { return true };
    sel.split(',').all(|term| {
        let (path, want, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return true;
        };
        let mut field = o;
        for seg in path.trim().split('.') {
            field = &field[seg];
        }
        let got = match field {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        (got == want.trim()) == equal
    })
}

/// The stored objects a list (or watch, or delete-collection) of `t` covers.
pub(super) fn selected<'a>(
    st: &'a State,
    t: &'a Target,
    labels: Option<&'a str>,
    fields: Option<&'a str>,
) -> impl Iterator<Item = &'a Value> + 'a {
    st.objects
        .iter()
        .filter(move |((p, ns, r), _)| {
            *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|want| want == ns)
        })
        .flat_map(|(_, m)| m.values())
        .filter(move |o| matches_selector(o, labels) && matches_fields(o, fields))
}

/// The apiserver's check of label values (`metadata.labels`): empty, or at most 63
/// alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric. The real
/// apiserver of the Kubernetes lab refused a value the fake had accepted (a '/' in
/// `endpointslice.kubernetes.io/managed-by`), so the fake refuses it too, with the same words.
pub(super) fn invalid_label(o: &Value) -> Option<String> {
    let labels = o["metadata"]["labels"].as_object()?;
    labels.iter().find_map(|(_, v)| {
        let v = v.as_str().unwrap_or_default();
        let ok = v.is_empty()
            || (v.len() <= 63
                && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        (!ok).then(|| {
            format!(
                "metadata.labels: Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            )
        })
    })
}

pub(super) fn create(t: &Target, body: Option<Value>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
    let Some(mut o) = body else { return status(400, "BadRequest", "body is not JSON") };
    if let Some(why) = invalid_label(&o) {
        return status(422, "Invalid", &why);
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
    let key = (t.prefix.clone(), ns.clone(), t.resource.clone());
    let mut guard = st.lock().unwrap();
    if !ns.is_empty()
        && !guard
            .objects
            .get(&("/api/v1".into(), String::new(), "namespaces".into()))
            .is_some_and(|m| m.contains_key(&ns))
    {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    if guard.objects.get(&key).is_some_and(|m| m.contains_key(&name)) {
        return status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", t.resource));
    }
    let pod_ip = if t.resource == "pods" {
        match next_pod_ip(&mut guard) {
            Some(ip) => Some(ip),
            None => return status(500, "InternalError", "the fake's 254 pod addresses are used up"),
        }
    } else {
        None
    };
    guard.rv += 1;
    let rv = guard.rv;
    o["metadata"]["resourceVersion"] = json!(rv.to_string());
    o["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
    o["metadata"]["creationTimestamp"] = json!(now());
    if !ns.is_empty() {
        o["metadata"]["namespace"] = json!(ns);
    }
    if t.resource == "secrets" {
        if let Some(sd) = o.as_object_mut().unwrap().remove("stringData") {
            use base64::Engine as _;
            let data: serde_json::Map<String, Value> = sd
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap()))))
                .collect();
            o["data"] = Value::Object(data);
        }
    }
    if t.resource == "namespaces" {
        o["status"] = json!({"phase": "Active"});
    }
    if t.resource == "pods" {
        o["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
    }
    if t.resource == "services" && o["spec"]["clusterIP"].is_null() && o["spec"]["type"] != "ExternalName" {
        let ip = if is_selectorless(&o) {
            // The kube-proxy forwards this address once the client writes the endpoints.
            match cluster_ip(&mut guard) {
                Some(ip) => ip.to_string(),
                None => return status(500, "InternalError", "the fake's 64770 ClusterIPs are used up"),
            }
        } else {
            // No kube-proxy here to route a virtual IP for a selecting Service: it gets the
            // address of the first pod it selects (by name), so a run's `via = "service"`
            // traffic reaches a real agent; one selecting nothing gets an address from the
            // usual Service range, where nothing is ever sent.
            let selected = o["spec"]["selector"].as_object().and_then(|sel| {
                guard.objects.get(&("/api/v1".to_string(), ns.clone(), "pods".to_string()))?.values().find_map(|p| {
                    let matches = sel.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v);
                    matches.then(|| p["status"]["podIP"].as_str().map(String::from)).flatten()
                })
            });
            selected.unwrap_or_else(|| format!("10.96.{}.{}", rv / 256 % 256, rv % 256))
        };
        o["spec"]["clusterIP"] = json!(ip);
        o["spec"]["clusterIPs"] = json!([ip]);
    }
    guard.objects.entry(key.clone()).or_default().insert(name.clone(), o.clone());
    emit(&ev, &key, "ADDED", &o);
    let touched = proxied_services(&key, [&o]);
    reconcile(&mut guard, &st, touched);
    if t.resource == "services" && !is_selectorless(&o) {
        drop(guard);
        endpoint_slice_controller(st, ev, ns, o.clone());
        return json_response(StatusCode::CREATED, &o);
    }
    if t.resource == "daemonsets" && t.prefix == "/apis/apps/v1" {
        let pods = daemonset_pods(&mut guard, &ev, &ns, &o);
        daemonset_status(&mut guard, &ev, &ns, &name);
        let (kubelet, hold) = (guard.kubelet.clone(), guard.hold_pods);
        drop(guard);
        if !hold {
            for (pod, ip) in pods {
                let key = ("/api/v1".to_string(), ns.clone(), "pods".to_string());
                start_pod(st.clone(), ev.clone(), key, pod, ip, kubelet.clone());
            }
        }
        return json_response(StatusCode::CREATED, &o);
    }
    if let Some(ip) = pod_ip {
        guard.pod_ips.insert(name.clone(), ip);
        let kubelet = guard.kubelet.clone();
        let hold = guard.hold_pods;
        drop(guard);
        if !hold {
            start_pod(st, ev, key, name, ip, kubelet);
        }
    }
    json_response(StatusCode::CREATED, &o)
}

/// A replace (PUT) of a stored object, as `Api::replace` sends it.
pub(super) fn replace(
    t: &Target,
    name: &str,
    body: Option<Value>,
    st: Arc<Mutex<State>>,
    ev: Events,
) -> Response<Body> {
    let Some(mut o) = body else { return status(400, "BadRequest", "body is not JSON") };
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(old) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    if o["metadata"]["name"].as_str() != Some(name) {
        return status(400, "BadRequest", &format!("the body's metadata.name is not {name:?}"));
    }
    for field in ["uid", "creationTimestamp", "namespace"] {
        o["metadata"][field] = old["metadata"][field].clone();
    }
    if t.resource == "services" {
        // The ClusterIP is immutable.
        o["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
        o["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
    modified(&mut g, &st, &ev, &key, name, &old, o)
}

/// Stores `o` as the new version of `name` (replaced or patched from `old`), as the
/// apiserver does after validating it: a label value it refuses is refused here too, and the
/// stored object is left as it was.
fn modified(
    g: &mut State,
    st: &Arc<Mutex<State>>,
    ev: &Events,
    key: &(String, String, String),
    name: &str,
    old: &Value,
    mut o: Value,
) -> Response<Body> {
    if let Some(why) = invalid_label(&o) {
        return status(422, "Invalid", &why);
    }
    g.rv += 1;
    o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
    g.objects.get_mut(key).unwrap().insert(name.to_string(), o.clone());
    emit(ev, key, "MODIFIED", &o);
    let touched = proxied_services(key, [old, &o]);
    reconcile(g, st, touched);
    json_response(StatusCode::OK, &o)
}

pub(super) fn delete(t: &Target, name: &str, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(mut o) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    if t.resource == "namespaces" {
        // Terminating for a moment (GETs still find it), then gone with all it held.
        o["metadata"]["deletionTimestamp"] = json!(now());
        o["status"] = json!({"phase": "Terminating"});
        g.objects.get_mut(&key).unwrap().insert(name.to_string(), o.clone());
        let wait = g.terminating_for;
        let (st2, ns, ev) = (st.clone(), name.to_string(), ev.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut g = st2.lock().unwrap();
            let held: Vec<Key> = g.objects.keys().filter(|(_, n, _)| *n == ns).cloned().collect();
            for k in held {
                for (_, o) in g.objects.remove(&k).unwrap_or_default() {
                    emit(&ev, &k, "DELETED", &o);
                }
            }
            let namespaces = ("/api/v1".to_string(), String::new(), "namespaces".to_string());
            if let Some(o) = g.objects.get_mut(&namespaces).and_then(|m| m.remove(&ns)) {
                emit(&ev, &namespaces, "DELETED", &o);
            }
            let forwarded: Vec<(String, String)> = g.proxy.rules.keys().filter(|(n, _)| *n == ns).cloned().collect();
            reconcile(&mut g, &st2, forwarded);
        });
        return json_response(StatusCode::OK, &o);
    }
    g.objects.get_mut(&key).unwrap().remove(name);
    emit(&ev, &key, "DELETED", &o);
    if t.resource == "services" {
        // Garbage collection of the slices the controller made for the Service (those the
        // client wrote have no owner and stay, as on a cluster).
        let slices = ("/apis/discovery.k8s.io/v1".to_string(), key.1.clone(), "endpointslices".to_string());
        if let Some(m) = g.objects.get_mut(&slices) {
            let owned: Vec<String> = m
                .iter()
                .filter(|(_, s)| {
                    s["metadata"]["labels"][SLICE_SERVICE_LABEL].as_str() == Some(name)
                        && s["metadata"]["labels"][SLICE_MANAGED_BY] == SLICE_CONTROLLER
                })
                .map(|(n, _)| n.clone())
                .collect();
            for n in owned {
                let s = m.remove(&n).unwrap();
                emit(&ev, &slices, "DELETED", &s);
            }
        }
    }
    if t.resource == "daemonsets" {
        // Garbage collection of its pods.
        let pods = ("/api/v1".to_string(), key.1.clone(), "pods".to_string());
        if let Some(m) = g.objects.get_mut(&pods) {
            let owned: Vec<String> =
                m.iter().filter(|(_, p)| daemonset_owner(p).as_deref() == Some(name)).map(|(n, _)| n.clone()).collect();
            for n in owned {
                let p = m.remove(&n).unwrap();
                emit(&ev, &pods, "DELETED", &p);
            }
        }
    }
    let touched = proxied_services(&key, [&o]);
    reconcile(&mut g, &st, touched);
    json_response(StatusCode::OK, &o)
}

/// `DELETE` on a collection (`Api::delete_collection`): every selected object, answered
/// with the list of them.
pub(super) fn delete_collection(
    t: &Target,
    labels: Option<&str>,
    fields: Option<&str>,
    st: Arc<Mutex<State>>,
    ev: Events,
) -> Response<Body> {
    if t.namespace.is_none() && t.resource == "namespaces" {
        return status(405, "MethodNotAllowed", "the fake deletes namespaces one at a time");
    }
    let chosen: Vec<(Option<String>, Value)> = {
        let g = st.lock().unwrap();
        g.objects
            .iter()
            .filter(|((p, ns, r), _)| {
                *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|w| w == ns)
            })
            .flat_map(|((_, ns, _), m)| m.values().map(move |o| ((!ns.is_empty()).then(|| ns.clone()), o)))
            .filter(|(_, o)| matches_selector(o, labels) && matches_fields(o, fields))
            .map(|(ns, o)| (ns, o.clone()))
            .collect()
    };
    let mut items = Vec::new();
    for (ns, o) in chosen {
        let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let one = Target { namespace: ns, name: Some(name.clone()), sub: None, ..t.clone() };
        delete(&one, &name, st.clone(), ev.clone());
        items.push(o);
    }
    json_response(StatusCode::OK, &json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}))
}

/// A JSON merge patch (RFC 7386) of a stored object (`kubectl label` and kube-rs `Patch::Merge`).
pub(super) fn merge_patch(
    t: &Target,
    name: &str,
    body: Option<Value>,
    st: Arc<Mutex<State>>,
    ev: Events,
) -> Response<Body> {
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }
    let Some(patch) = body else { return status(400, "BadRequest", "body is not JSON") };
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(old) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    let mut o = old.clone();
    merge(&mut o, &patch);
    modified(&mut g, &st, &ev, &key, name, &old, o)
}
