//! The fake's controllers, minimally. The EndpointSlice controller: a moment after a Service
//! with a selector is created, one slice of its selected pods that have an address, with
//! node and zone, and, when the Service asks for topology (`topology-mode` or
//! `trafficDistribution`), a hint for each endpoint's own zone. The DaemonSet controller: one
//! pod per Node the template selects and tolerates, bound to it, owned by the DaemonSet,
//! and the DaemonSet's status from its pods.
//!
//! It cannot check: the real controller's hint allocation (by allocatable CPU, with its
//! overload threshold: `zonebench hints` and its fixtures cover that), slices kept up to
//! date (one is written once, at the Service's creation), slices split past 100 endpoints or
//! by address family, pods that come later, DaemonSet rolling updates, or scheduling by
//! resources.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::kubelet::next_pod_ip;
use super::{emit, now, Events, State, SLICE_CONTROLLER, SLICE_MANAGED_BY, SLICE_SERVICE_LABEL};

/// The DaemonSet a pod belongs to (its controller owner reference).
pub(super) fn daemonset_owner(pod: &Value) -> Option<String> {
    pod["metadata"]["ownerReferences"].as_array()?.iter().find_map(|r| {
        (r["kind"] == "DaemonSet" && r["controller"] == true).then(|| r["name"].as_str().map(String::from)).flatten()
    })
}

/// The DaemonSet controller, minimally: one pod per Node in the store that the template
/// lets it onto (its `nodeSelector`, and tolerations for the Node's NoSchedule/NoExecute
/// taints; like the real controller it tolerates the `node.kubernetes.io/*` condition taints
/// and cordons), named `<daemonset>-<node>`, with the template's labels and spec, bound to
/// its node. The kubelet then makes them Running and Ready with a pod address of this
/// server: a hostNetwork pod would show its node's IP on a cluster, but here nothing may be
/// sent off this machine. Returns the pods to start, with their addresses.
pub(super) fn daemonset_pods(g: &mut State, ev: &Events, ns: &str, ds: &Value) -> Vec<(String, Ipv4Addr)> {
    let ds_name = ds["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let template = &ds["spec"]["template"];
    let nodes: Vec<Value> = g
        .objects
        .get(&("/api/v1".to_string(), String::new(), "nodes".to_string()))
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let key = ("/api/v1".to_string(), ns.to_string(), "pods".to_string());
    let mut out = Vec::new();
    for node in nodes {
        let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
        let selects = template["spec"]["nodeSelector"]
            .as_object()
            .is_none_or(|sel| sel.iter().all(|(k, v)| node["metadata"]["labels"][k] == *v));
        if !selects || !tolerates(&template["spec"]["tolerations"], &node["spec"]["taints"]) {
            continue;
        }
        let name = format!("{ds_name}-{node_name}");
        if g.objects.get(&key).is_some_and(|m| m.contains_key(&name)) {
            continue;
        }
        let Some(ip) = next_pod_ip(g) else {
            eprintln!("fake DaemonSet controller: no pod address left for {ns}/{name}");
            continue;
        };
        g.rv += 1;
        let rv = g.rv;
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!(node_name);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{rv:012}"),
                "resourceVersion": rv.to_string(), "creationTimestamp": now(),
                "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds_name,
                    "uid": ds["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        });
        g.objects.entry(key.clone()).or_default().insert(name.clone(), pod.clone());
        g.pod_ips.insert(name.clone(), ip);
        emit(ev, &key, "ADDED", &pod);
        out.push((name, ip));
    }
    out
}

/// Whether tolerations let a pod onto a node with these taints.
fn tolerates(tolerations: &Value, taints: &Value) -> bool {
    let tolerations = tolerations.as_array().map(Vec::as_slice).unwrap_or_default();
    taints.as_array().map(Vec::as_slice).unwrap_or_default().iter().all(|taint| {
        let key = taint["key"].as_str().unwrap_or_default();
        taint["effect"] == "PreferNoSchedule"
            || key.starts_with("node.kubernetes.io/")
            || tolerations.iter().any(|tol| {
                let exists = tol["operator"] == "Exists";
                let key_ok = match tol["key"].as_str().filter(|k| !k.is_empty()) {
                    None => exists,
                    Some(k) => k == key,
                };
                let value_ok =
                    exists || tol["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
                let effect_ok = tol["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
                key_ok && value_ok && effect_ok
            })
    })
}

/// A DaemonSet's status from its pods, as its controller writes it.
pub(super) fn daemonset_status(g: &mut State, ev: &Events, ns: &str, ds_name: &str) {
    let pods: Vec<&Value> = g
        .objects
        .get(&("/api/v1".to_string(), ns.to_string(), "pods".to_string()))
        .map(|m| m.values().filter(|p| daemonset_owner(p).as_deref() == Some(ds_name)).collect())
        .unwrap_or_default();
    let ready = pods
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count();
    let desired = pods.len();
    let key = ("/apis/apps/v1".to_string(), ns.to_string(), "daemonsets".to_string());
    g.rv += 1;
    let rv = g.rv;
    let Some(ds) = g.objects.get_mut(&key).and_then(|m| m.get_mut(ds_name)) else { return };
    ds["status"] = json!({"currentNumberScheduled": desired, "desiredNumberScheduled": desired,
        "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
        "updatedNumberScheduled": desired, "observedGeneration": 1});
    ds["metadata"]["resourceVersion"] = json!(rv.to_string());
    let ds = ds.clone();
    emit(ev, &key, "MODIFIED", &ds);
}

/// The EndpointSlice controller, minimally: a moment after a Service with a selector is
/// created, one slice lists its selected ready pods with their node and zone, and (when the
/// Service asks for topology) a hint for the endpoint's own zone.
pub(super) fn endpoint_slice_controller(st: Arc<Mutex<State>>, ev: Events, ns: String, svc: Value) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut g = st.lock().unwrap();
        let name = svc["metadata"]["name"].as_str().unwrap().to_string();
        let selector: Vec<(String, String)> = svc["spec"]["selector"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let topology = !svc["metadata"]["annotations"]["service.kubernetes.io/topology-mode"].is_null()
            || !svc["spec"]["trafficDistribution"].is_null();
        let zone_of = |g: &State, node: &str| -> Option<String> {
            let n = g.objects.get(&("/api/v1".into(), String::new(), "nodes".into()))?.get(node)?;
            n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str().map(String::from)
        };
        let pods: Vec<Value> = g
            .objects
            .get(&("/api/v1".to_string(), ns.clone(), "pods".to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        for p in pods {
            if !selector.iter().all(|(k, v)| p["metadata"]["labels"][k].as_str() == Some(v)) {
                continue;
            }
            let Some(ip) = p["status"]["podIP"].as_str() else { continue };
            let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            let zone = zone_of(&g, &node);
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node, "zone": zone});
            if topology {
                e["hints"] = json!({"forZones": [{"name": zone}]});
            }
            endpoints.push(e);
        }
        g.rv += 1;
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-fake1"), "namespace": ns, "resourceVersion": g.rv.to_string(),
                "labels": {SLICE_SERVICE_LABEL: name, SLICE_MANAGED_BY: SLICE_CONTROLLER}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": svc["spec"]["ports"].as_array().unwrap().iter().map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]})).collect::<Vec<_>>(),
        });
        let key = ("/apis/discovery.k8s.io/v1".to_string(), ns, "endpointslices".to_string());
        g.objects.entry(key.clone()).or_default().insert(format!("{name}-fake1"), slice.clone());
        emit(&ev, &key, "ADDED", &slice);
    });
}
