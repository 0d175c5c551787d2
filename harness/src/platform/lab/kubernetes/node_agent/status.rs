//! The pod status the node agent reports, as a kubelet writes it: the phase, the pod's and
//! node's IPs, the conditions (Initialized, ContainersReady, Ready, PodReadyToStartContainers)
//! and one status per container (waiting, running or terminated, and whether it is ready).
//! Pure: [`patch`] turns what the agent observed into the strategic-merge patch it sends to
//! the `status` subresource (conditions merge by type, so the scheduler's PodScheduled
//! stays).

use serde_json::{json, Value};

/// What the node agent knows of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerObserved {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { exit_code: i32, reason: String, message: String, started_at: String, finished_at: String },
}

/// What the node agent knows of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObserved {
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: String,
    /// The network namespace exists (PodReadyToStartContainers).
    pub sandbox_ready: bool,
    pub containers: Vec<ContainerObserved>,
}

impl PodObserved {
    /// The pod's phase, with restartPolicy Never (the kube platform's): Pending until every
    /// container has started, Running while any runs, then Succeeded if all exited 0.
    pub fn phase(&self) -> &'static str {
        let states = || self.containers.iter().map(|c| &c.state);
        if self.containers.is_empty() || states().any(|s| matches!(s, ContainerState::Waiting { .. })) {
            return "Pending";
        }
        if states().any(|s| matches!(s, ContainerState::Running { .. })) {
            return "Running";
        }
        if states().all(|s| matches!(s, ContainerState::Terminated { exit_code: 0, .. })) {
            "Succeeded"
        } else {
            "Failed"
        }
    }

    pub fn ready(&self) -> bool {
        !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready && matches!(c.state, ContainerState::Running { .. }))
    }
}

/// The strategic-merge patch of the pod's `status`; `now` stamps conditions.
pub fn patch(o: &PodObserved, now: &str) -> Value {
    let ready = o.ready();
    let not_ready: Vec<&str> = o.containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let condition = |kind: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now});
        if let (false, Some(r)) = (ok, reason) {
            c["reason"] = json!(r);
            c["message"] = json!(format!("containers with unready status: [{}]", not_ready.join(" ")));
        }
        c
    };
    let mut status = json!({
        "phase": o.phase(),
        "hostIP": o.host_ip,
        "hostIPs": [{"ip": o.host_ip}],
        "startTime": o.start_time,
        "conditions": [
            condition("PodReadyToStartContainers", o.sandbox_ready, None),
            condition("Initialized", true, None),
            condition("ContainersReady", ready, Some("ContainersNotReady")),
            condition("Ready", ready, Some("ContainersNotReady")),
        ],
        "containerStatuses": o.containers.iter().map(container).collect::<Vec<_>>(),
    });
    if let Some(ip) = &o.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({ "status": status })
}

fn container(c: &ContainerObserved) -> Value {
    let (state, started) = match &c.state {
        ContainerState::Waiting { reason, message } => {
            (json!({"waiting": {"reason": reason, "message": message}}), false)
        }
        ContainerState::Running { started_at } => (json!({"running": {"startedAt": started_at}}), true),
        ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => (
            json!({"terminated": {
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": started_at, "finishedAt": finished_at,
            }}),
            false,
        ),
    };
    json!({
        "name": c.name,
        "image": c.image,
        // No image is pulled: the program stands for it.
        "imageID": "",
        "ready": c.ready,
        "started": started,
        "restartCount": 0,
        "state": state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(states: Vec<(ContainerState, bool)>) -> PodObserved {
        PodObserved {
            pod_ip: Some("198.19.0.2".into()),
            host_ip: "198.18.0.10".into(),
            start_time: "2026-12-02T12:00:00Z".into(),
            sandbox_ready: true,
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, (state, ready))| ContainerObserved {
                    name: format!("c{i}"),
                    image: "zonebench-agent".into(),
                    state,
                    ready,
                })
                .collect(),
        }
    }

    fn running() -> ContainerState {
        ContainerState::Running { started_at: "2026-12-02T12:00:01Z".into() }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: "2026-12-02T12:00:01Z".into(),
            finished_at: "2026-12-02T12:00:09Z".into(),
        }
    }

    #[test]
    fn the_phase_follows_the_containers_as_with_restart_policy_never() {
        let waiting = ContainerState::Waiting { reason: "ImageNotInLab".into(), message: "m".into() };
        assert_eq!(observed(vec![(waiting, false)]).phase(), "Pending");
        assert_eq!(observed(vec![(running(), false)]).phase(), "Running");
        assert_eq!(observed(vec![(running(), true), (exited(0), false)]).phase(), "Running");
        assert_eq!(observed(vec![(exited(0), false), (exited(0), false)]).phase(), "Succeeded");
        assert_eq!(observed(vec![(exited(0), false), (exited(137), false)]).phase(), "Failed");
    }

    #[test]
    fn a_pod_is_ready_only_when_every_container_runs_ready() {
        let p = patch(&observed(vec![(running(), true)]), "now");
        let conds = p["status"]["conditions"].as_array().unwrap();
        let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(p["status"]["podIP"], "198.19.0.2");
        assert_eq!(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"], "2026-12-02T12:00:01Z");

        let p = patch(&observed(vec![(running(), true), (running(), false)]), "now");
        let conds = p["status"]["conditions"].as_array().unwrap();
        let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [c1]");
        assert_eq!(p["status"]["containerStatuses"][1]["ready"], false);
    }
}
