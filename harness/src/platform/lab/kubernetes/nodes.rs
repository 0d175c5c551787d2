//! The lab's Node objects: what a kubelet would register for each lab node. The
//! EndpointSlice controller reads the zone label and the allocatable CPU (topology hints
//! weigh zones by CPU), the node-lifecycle controller the Ready condition, kube-proxy reads the node's addresses (it waits for an InternalIP
//! before it programs anything), and the kube platform reads both when it discovers the
//! cluster. Nothing here talks to the apiserver: these are the objects to write.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::topology::ZONE_LABEL;

/// One lab node as its Node object says it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabNode {
    pub name: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    /// Allocatable CPU in millicores (`lab.node_cpu`, else the lab's default).
    pub cpu_millis: u64,
}

/// The Node object (metadata and spec; the status goes through the `status` subresource).
pub fn object(n: &LabNode) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "labels": {
                ZONE_LABEL: n.zone,
                "kubernetes.io/hostname": n.name,
                "kubernetes.io/os": "linux",
                "node.zonebench.dev/lab": "true",
            },
        },
    })
}

/// The Node's status: Ready (as of `now`, RFC 3339), its addresses, and the CPU the
/// controller weighs zones by.
pub fn status(n: &LabNode, now: &str) -> Value {
    let cpu = format!("{}m", n.cpu_millis);
    let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
    json!({
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": n.ip.to_string()},
                {"type": "Hostname", "address": n.name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "reason": "ZonebenchLabNode",
                "message": "a lab node: its pods run as processes in namespaces",
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_carries_its_zone_address_and_cpu() {
        let n = LabNode { name: "b-2".into(), zone: "b".into(), ip: Ipv4Addr::new(198, 18, 1, 11), cpu_millis: 8000 };
        assert_eq!(object(&n)["metadata"]["labels"][ZONE_LABEL], "b");
        let s = status(&n, "2026-12-02T12:00:00Z");
        assert_eq!(s["status"]["addresses"][0], json!({"type": "InternalIP", "address": "198.18.1.11"}));
        assert_eq!(s["status"]["allocatable"]["cpu"], "8000m");
        assert_eq!(s["status"]["conditions"][0]["status"], "True");
    }
}
