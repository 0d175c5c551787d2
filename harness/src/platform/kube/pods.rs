//! Creating a run's objects and waiting for its agent pods to become ready. Readiness is
//! watched (a list, then a watch from its resourceVersion, re-listed when the watch ends),
//! and a pod that cannot start (image pull back-off, bad configuration, crash) fails the
//! wait at once with its reason, instead of at the timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;

use super::client::Cluster;
use super::manifests::RunManifests;
use super::{post, KubeError};

/// Creates the namespace, the Secret, the pods, the Services and the inspector (in its own
/// namespace), in order.
pub async fn create_run_objects(cluster: &Cluster, m: &RunManifests) -> Result<(), KubeError> {
    let c = &cluster.client;
    let ns = m.namespace.metadata.name.clone().unwrap_or_default();
    Api::<Namespace>::all(c.clone())
        .create(&post(), &m.namespace)
        .await
        .map_err(|e| cluster.api_error(format!("creating namespace {ns}"), &e))?;
    Api::<Secret>::namespaced(c.clone(), &ns)
        .create(&post(), &m.secret)
        .await
        .map_err(|e| cluster.api_error(format!("creating Secret {ns}/{}", super::manifests::SECRET_NAME), &e))?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    for p in &m.pods {
        let name = p.metadata.name.as_deref().unwrap_or("?");
        pods.create(&post(), p).await.map_err(|e| cluster.api_error(format!("creating pod {ns}/{name}"), &e))?;
    }
    let services: Api<Service> = Api::namespaced(c.clone(), &ns);
    for s in &m.services {
        let name = s.metadata.name.as_deref().unwrap_or("?");
        services
            .create(&post(), s)
            .await
            .map_err(|e| cluster.api_error(format!("creating Service {ns}/{name}"), &e))?;
    }
    if let Some((namespace, ds)) = &m.inspector {
        let ins = namespace.metadata.name.clone().unwrap_or_default();
        Api::<Namespace>::all(c.clone())
            .create(&post(), namespace)
            .await
            .map_err(|e| cluster.api_error(format!("creating namespace {ins}"), &e))?;
        Api::<DaemonSet>::namespaced(c.clone(), &ins).create(&post(), ds).await.map_err(|e| {
            cluster.api_error(format!("creating DaemonSet {ins}/{}", super::manifests::INSPECTOR_NAME), &e)
        })?;
    }
    Ok(())
}

/// Where a pod stands on its way to serving.
#[derive(Debug, Clone, PartialEq)]
pub enum PodState {
    Ready,
    /// Still starting; the text says where it is (for the timeout message).
    Pending(String),
    /// It will not become ready.
    Failed(String),
}

/// Container waiting reasons that do not clear up by themselves (`ImageNotInLab`: the
/// Kubernetes lab's node agent has no program for the image).
const FATAL_WAITING: [&str; 7] = [
    "ImageNotInLab",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Reads a pod's status.
pub fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else { return PodState::Pending("no status yet".into()) };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    for c in containers {
        let state = c.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let msg = t.message.as_deref().map(str::trim).unwrap_or_default();
            return PodState::Failed(format!(
                "container {} exited with code {} ({}){}{}",
                c.name,
                t.exit_code,
                t.reason.as_deref().unwrap_or("no reason"),
                if msg.is_empty() { "" } else { ": " },
                msg
            ));
        }
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("");
            if FATAL_WAITING.contains(&reason) {
                return PodState::Failed(format!(
                    "container {} is waiting: {reason}: {}",
                    c.name,
                    w.message.as_deref().unwrap_or("no message")
                ));
            }
        }
    }
    if matches!(phase, "Failed" | "Succeeded") {
        let why = status.message.as_deref().or(status.reason.as_deref()).unwrap_or("no reason given");
        return PodState::Failed(format!("phase {phase}: {why}"));
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    if ready && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty()) {
        return PodState::Ready;
    }
    // The most telling thing a pending pod says: unschedulable, a waiting container, or its phase.
    if let Some(c) = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False") {
        return PodState::Pending(format!(
            "not scheduled: {}: {}",
            c.reason.as_deref().unwrap_or("?"),
            c.message.as_deref().unwrap_or("")
        ));
    }
    if let Some((name, w)) = containers.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref().map(|w| (&c.name, w))) {
        return PodState::Pending(format!(
            "container {name} waiting: {} {}",
            w.reason.as_deref().unwrap_or(""),
            w.message.as_deref().unwrap_or("")
        ));
    }
    PodState::Pending(format!("phase {phase}, not ready"))
}

/// Waits until every pod in `names` (selected by `selector`) is ready; returns them in
/// `names` order. Fails at once when one cannot start, and at `timeout` with each laggard's state.
pub async fn wait_ready(
    cluster: &Cluster,
    api: &Api<Pod>,
    selector: &str,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<Pod>, KubeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let fail = |message: String| KubeError::Pods { cluster: cluster.describe(), message };
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    loop {
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| cluster.api_error("listing the run's pods", &e))?;
        pods.clear();
        for p in list.items {
            pods.insert(p.metadata.name.clone().unwrap_or_default(), p);
        }
        if let Some(done) = verdict(&pods, names).map_err(fail)? {
            return Ok(done);
        }
        let rv = list.metadata.resource_version.unwrap_or_default();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(fail(timeout_message(&pods, names, timeout)));
        }
        // The server ends a watch after timeoutSeconds; we then list again.
        let secs = remaining.as_secs().clamp(1, 290) as u32;
        let params = WatchParams::default().labels(selector).timeout(secs);
        let stream = api.watch(&params, &rv).await.map_err(|e| cluster.api_error("watching the run's pods", &e))?;
        let mut stream = stream.boxed();
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.try_next()).await {
                Err(_) => return Err(fail(timeout_message(&pods, names, timeout))),
                Ok(Err(e)) => {
                    tracing::debug!("pod watch broke, listing again: {e}");
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(ev))) => ev,
            };
            match next {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    pods.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                WatchEvent::Deleted(p) => {
                    let name = p.metadata.name.unwrap_or_default();
                    if names.contains(&name) {
                        return Err(fail(format!("pod {name} was deleted while starting")));
                    }
                }
                WatchEvent::Bookmark(_) => {}
                // 410 Gone: our resourceVersion is too old; list again.
                WatchEvent::Error(e) if e.code == 410 => break,
                WatchEvent::Error(e) => return Err(fail(format!("watching the run's pods: {}", e.message))),
            }
            if let Some(done) = verdict(&pods, names).map_err(fail)? {
                return Ok(done);
            }
        }
    }
}

/// All ready (`Some`), one failed (`Err`), or still waiting (`None`).
fn verdict(pods: &BTreeMap<String, Pod>, names: &[String]) -> Result<Option<Vec<Pod>>, String> {
    let mut ready = Vec::new();
    for n in names {
        match pods.get(n).map(pod_state) {
            Some(PodState::Ready) => ready.extend(pods.get(n).cloned()),
            Some(PodState::Failed(why)) => return Err(format!("pod {n} cannot start: {why}")),
            Some(PodState::Pending(_)) | None => return Ok(None),
        }
    }
    Ok(Some(ready))
}

fn timeout_message(pods: &BTreeMap<String, Pod>, names: &[String], timeout: Duration) -> String {
    let laggards: Vec<String> = names
        .iter()
        .filter_map(|n| match pods.get(n).map(pod_state) {
            Some(PodState::Ready) => None,
            Some(PodState::Pending(s)) | Some(PodState::Failed(s)) => Some(format!("{n}: {s}")),
            None => Some(format!("{n}: not found")),
        })
        .collect();
    format!(
        "agent pods not ready within {} (kube.ready_timeout): {}",
        humantime::format_duration(timeout),
        laggards.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn a_ready_pod_with_an_ip_is_ready() {
        let p = pod(json!({"phase": "Running", "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": "True"}]}));
        assert_eq!(pod_state(&p), PodState::Ready);
    }

    #[test]
    fn image_pull_back_off_fails_at_once_with_its_message() {
        let p = pod(json!({"phase": "Pending", "containerStatuses": [{"name": "agent", "ready": false,
            "restartCount": 0, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        match pod_state(&p) {
            PodState::Failed(m) => assert!(m.contains("ImagePullBackOff") && m.contains("pulling image"), "{m}"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn an_unschedulable_pod_is_pending_with_the_schedulers_reason() {
        let p = pod(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/4 nodes are available: 1 Insufficient cpu."}]}));
        match pod_state(&p) {
            PodState::Pending(m) => assert!(m.contains("Insufficient cpu"), "{m}"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn an_exited_agent_fails_with_its_exit_code() {
        let p = pod(json!({"phase": "Failed", "containerStatuses": [{"name": "agent", "ready": false,
            "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "error: bad flag"}}}]}));
        match pod_state(&p) {
            PodState::Failed(m) => assert!(m.contains("code 2") && m.contains("bad flag"), "{m}"),
            s => panic!("{s:?}"),
        }
    }
}
