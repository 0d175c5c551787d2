//! The fake's kubelet (and, for agent pods, its scheduler): pod addresses from this server's
//! slot, and a moment after a pod is created its status, as [`Kubelet`] says: Running and
//! Ready, or stuck Pending in ImagePullBackOff, or held Pending ([`FakeApi::hold_pods`](super::FakeApi::hold_pods)).
//! In [`Kubelet::RunAgents`] mode an agent pod's container really runs, `zonebench agent`
//! with the pod's args bound to its pod address and the Secret's token in a file, and turns
//! Ready when its control port accepts, as its readiness probe would. A pod without a node
//! is bound to the one its required node affinity names. DaemonSet pods only turn Ready.
//!
//! It cannot check: images (nothing is pulled, the name is only copied into the status), the
//! pod's securityContext, resources, volumes and probes as written (`agent_image` runs the
//! agent as its pod spec says), restarts, eviction, or scheduling on capacity and taints; the
//! agent runs as the test's user in the host's network namespace, on a loopback address.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::controllers::{daemonset_owner, daemonset_status};
use super::{emit, now, Events, Key, Kubelet, State};

pub(super) fn next_pod_ip(g: &mut State) -> Option<Ipv4Addr> {
    let n = u8::try_from(g.next_ip).ok()?;
    g.next_ip += 1;
    Some(Ipv4Addr::new(127, g.slot, 0, n))
}

/// The kubelet: after a moment, a pod is running and ready (or stuck pulling its image).
/// Agent pods really run in [`Kubelet::RunAgents`] mode; DaemonSet pods never do.
pub(super) fn start_pod(st: Arc<Mutex<State>>, ev: Events, key: Key, name: String, ip: Ipv4Addr, kubelet: Kubelet) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let daemon = {
            let g = st.lock().unwrap();
            // Deleted meanwhile (its DaemonSet or namespace gone): nothing to start.
            let Some(pod) = g.objects.get(&key).and_then(|m| m.get(&name)) else { return };
            daemonset_owner(pod).is_some()
        };
        if let (Kubelet::RunAgents { zonebench, dir }, false) = (&kubelet, daemon) {
            let (pod, token) = {
                let g = st.lock().unwrap();
                let pod = g.objects.get(&key).and_then(|m| m.get(&name)).cloned().unwrap();
                let secret = g
                    .objects
                    .get(&("/api/v1".to_string(), key.1.clone(), "secrets".to_string()))
                    .and_then(|m| m.get("zonebench-control"))
                    .cloned()
                    .unwrap();
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD
                    .decode(secret["data"]["token"].as_str().unwrap())
                    .unwrap();
                (pod, token)
            };
            let token_file = dir.join(format!("{name}.token"));
            std::fs::write(&token_file, token).unwrap();
            let args: Vec<String> = pod["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    a.as_str()
                        .unwrap()
                        .replace("0.0.0.0", &ip.to_string())
                        .replace("/var/run/zonebench/token", &token_file.display().to_string())
                })
                .collect();
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            let child = Command::new(zonebench)
                .arg("agent")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            st.lock().unwrap().children.push(child);
            // Ready like the readiness probe: when /healthz answers on the control port.
            let control = SocketAddr::from((ip, 7100));
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(control).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let mut g = st.lock().unwrap();
        let Some(pod) = g.objects.get(&key).and_then(|m| m.get(&name)).cloned() else { return };
        let mut pod = pod;
        if pod["spec"]["nodeName"].is_null() {
            // The scheduler: agent pods name their node in a required node affinity.
            pod["spec"]["nodeName"] = pod["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"]
                [0]
            .clone();
        }
        let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("agent").to_string();
        pod["status"] = match kubelet {
            Kubelet::ImagePullBackOff => json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": container, "ready": false, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": format!("Back-off pulling image {}", pod["spec"]["containers"][0]["image"])}}}]
            }),
            _ => json!({
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": container, "ready": true, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"running": {"startedAt": now()}}}]
            }),
        };
        g.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        g.objects.entry(key.clone()).or_default().insert(name, pod.clone());
        emit(&ev, &key, "MODIFIED", &pod);
        if let Some(ds) = daemonset_owner(&pod) {
            daemonset_status(&mut g, &ev, &key.1, &ds);
        }
    });
}
