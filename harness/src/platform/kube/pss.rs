//! The `restricted` Pod Security Standard, checked on pod specs as JSON: every Pod, and every
//! pod template inside a workload (DaemonSet, Deployment, Job, CronJob). Used by tests on
//! everything `zonebench render` prints and by `render` itself, which warns about a pod that
//! would need a laxer namespace (the node inspector does, by design).
//!
//! The rules are those of the Kubernetes documentation's "Restricted" profile (which
//! includes "Baseline"), plus one of ours: a read-only root filesystem.

use serde_json::Value;

/// Volume types the restricted profile allows.
const ALLOWED_VOLUMES: [&str; 8] =
    ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: [&str; 9] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
];

/// `(path, pod spec)` of every pod spec in a manifest: a Pod's `spec`, or the pod template
/// of a workload, found wherever a `template.spec` sits under `spec`.
pub fn pod_specs(object: &Value) -> Vec<(String, &Value)> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    let mut out = Vec::new();
    if kind == "Pod" {
        if let Some(spec) = object.get("spec") {
            out.push((format!("{kind}/{name}.spec"), spec));
        }
        return out;
    }
    fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
        if let Some(obj) = v.as_object() {
            if let Some(spec) = obj.get("template").and_then(|t| t.get("spec")) {
                out.push((format!("{path}.template.spec"), spec));
            }
            for (k, child) in obj {
                if k != "template" {
                    walk(child, format!("{path}.{k}"), out);
                }
            }
        }
    }
    if let Some(spec) = object.get("spec") {
        walk(spec, format!("{kind}/{name}.spec"), &mut out);
    }
    out
}

/// Every way `spec` (a pod spec as JSON) breaks the restricted profile; empty when it passes.
pub fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let b = |p: &str| spec.pointer(p).and_then(Value::as_bool);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if b(&format!("/{host}")) == Some(true) {
            v.push(format!("{host} is true"));
        }
    }
    for vol in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        let name = vol.get("name").and_then(Value::as_str).unwrap_or("?");
        let types: Vec<&String> = vol.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| *k != "name").collect();
        for t in types {
            if !ALLOWED_VOLUMES.contains(&t.as_str()) {
                v.push(format!("volume {name} is of type {t}"));
            }
        }
    }
    let pod_sc = spec.get("securityContext");
    let pod = |k: &str| pod_sc.and_then(|s| s.get(k));
    for s in pod("sysctls").and_then(Value::as_array).into_iter().flatten() {
        let name = s.get("name").and_then(Value::as_str).unwrap_or("?");
        if !SAFE_SYSCTLS.contains(&name) {
            v.push(format!("sysctl {name} is not in the safe set"));
        }
    }
    if pod("runAsUser").and_then(Value::as_i64) == Some(0) {
        v.push("the pod's runAsUser is 0".into());
    }
    check_selinux(pod("seLinuxOptions"), "the pod", &mut v);
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten());
    let mut any = false;
    for c in containers {
        any = true;
        let name = format!("container {}", c.get("name").and_then(Value::as_str).unwrap_or("?"));
        let sc = c.get("securityContext");
        let get = |k: &str| sc.and_then(|s| s.get(k));
        if get("privileged").and_then(Value::as_bool) == Some(true) {
            v.push(format!("{name} is privileged"));
        }
        if get("allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
            v.push(format!("{name} does not set allowPrivilegeEscalation: false"));
        }
        let non_root = get("runAsNonRoot").or_else(|| pod("runAsNonRoot")).and_then(Value::as_bool);
        if non_root != Some(true) {
            v.push(format!("{name} does not run as non-root (runAsNonRoot: true)"));
        }
        if get("runAsUser").and_then(Value::as_i64) == Some(0) {
            v.push(format!("{name} sets runAsUser 0"));
        }
        let seccomp = get("seccompProfile").or_else(|| pod("seccompProfile"));
        match seccomp.and_then(|s| s.get("type")).and_then(Value::as_str) {
            Some("RuntimeDefault") | Some("Localhost") => {}
            other => v.push(format!("{name} has seccompProfile {other:?}, not RuntimeDefault or Localhost")),
        }
        let caps = get("capabilities");
        let dropped: Vec<&str> = caps
            .and_then(|c| c.get("drop"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !dropped.contains(&"ALL") {
            v.push(format!("{name} does not drop ALL capabilities"));
        }
        for add in caps.and_then(|c| c.get("add")).and_then(Value::as_array).into_iter().flatten() {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                v.push(format!("{name} adds capability {add}"));
            }
        }
        if get("procMount").and_then(Value::as_str).is_some_and(|m| m != "Default") {
            v.push(format!("{name} sets a non-default procMount"));
        }
        check_selinux(get("seLinuxOptions"), &name, &mut v);
        if get("readOnlyRootFilesystem").and_then(Value::as_bool) != Some(true) {
            v.push(format!("{name} does not set readOnlyRootFilesystem: true"));
        }
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if p.get("hostPort").and_then(Value::as_i64).is_some_and(|h| h != 0) {
                v.push(format!("{name} uses a hostPort"));
            }
        }
    }
    if !any {
        v.push("the pod has no containers".into());
    }
    v
}

fn check_selinux(opts: Option<&Value>, who: &str, v: &mut Vec<String>) {
    let Some(o) = opts else { return };
    if let Some(t) = o.get("type").and_then(Value::as_str) {
        if !matches!(t, "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t") {
            v.push(format!("{who} sets SELinux type {t}"));
        }
    }
    for k in ["user", "role"] {
        if o.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            v.push(format!("{who} sets SELinux {k}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "a",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true
                }
            }],
            "volumes": [{"name": "t", "secret": {"secretName": "s"}}]
        })
    }

    #[test]
    fn a_restricted_pod_spec_passes() {
        assert_eq!(restricted_violations(&good()), Vec::<String>::new());
    }

    #[test]
    fn each_missing_restriction_is_reported() {
        let cases: [(&str, Value); 6] = [
            ("/containers/0/securityContext/allowPrivilegeEscalation", json!(true)),
            ("/containers/0/securityContext/capabilities/drop", json!([])),
            ("/containers/0/securityContext/readOnlyRootFilesystem", json!(false)),
            ("/securityContext/runAsNonRoot", json!(false)),
            ("/securityContext/seccompProfile/type", json!("Unconfined")),
            ("/volumes/0", json!({"name": "h", "hostPath": {"path": "/"}})),
        ];
        for (path, value) in cases {
            let mut spec = good();
            *spec.pointer_mut(path).unwrap() = value;
            assert_eq!(restricted_violations(&spec).len(), 1, "{path}: {:?}", restricted_violations(&spec));
        }
        let mut spec = good();
        spec["hostNetwork"] = json!(true);
        spec["containers"][0]["securityContext"]["privileged"] = json!(true);
        assert_eq!(restricted_violations(&spec).len(), 2);
    }

    #[test]
    fn pod_templates_are_found_in_workloads_at_any_depth() {
        let cron = json!({
            "kind": "CronJob", "metadata": {"name": "n"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": good()}}}}
        });
        let found = pod_specs(&cron);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "CronJob/n.spec.jobTemplate.spec.template.spec");
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": good()});
        assert_eq!(pod_specs(&pod).len(), 1);
        let ns = json!({"kind": "Namespace", "metadata": {"name": "x"}});
        assert!(pod_specs(&ns).is_empty());
    }
}
