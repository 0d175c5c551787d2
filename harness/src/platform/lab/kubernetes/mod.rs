//! The pieces that make the lab a real Kubernetes cluster (etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler in a control-plane namespace of the lab, built by
//! `scripts/kube-binaries.sh`), each self-contained so the control-plane launcher only
//! composes them:
//!
//! - [`pki`]: the cluster's CA and every certificate and key the components and clients
//!   present, generated in-process (no openssl CLI at run time);
//! - [`kubeconfig`]: self-contained kubeconfig files (certificates embedded) for those
//!   clients;
//! - [`api_forwarder`]: `zonebench lab api-forwarder`, which lets a kubectl in the host's
//!   network namespace reach an apiserver that listens only inside a lab namespace;
//! - [`control_plane`]: etcd (on a tmpfs), kube-apiserver and kube-controller-manager as
//!   processes in a namespace, started in order, ready when `/readyz` answers, stopped in
//!   the order that does not hang;
//! - [`kube_proxy`]: the real kube-proxy in a node namespace, iptables or nftables mode;
//! - [`nodes`]: the Node objects a kubelet would register (zone, addresses, CPU);
//! - [`node_agent`]: the kubelet's stand-in on each node (`zonebench lab node-agent`):
//!   registers the Node and runs the pods bound to it as processes in pod namespaces;
//! - [`cluster`]: all of it started on a built lab (`zonebench lab up --kubernetes`);
//! - [`node_access`]: the nodes' rules and kube-proxy metrics read from their namespaces,
//!   and kube-proxy's mode switched, for the kube platform's sweep on the lab.

use std::path::PathBuf;

pub mod api_forwarder;
pub mod cluster;
pub mod control_plane;
pub mod kube_proxy;
pub mod kubeconfig;
pub mod node_access;
pub mod node_agent;
pub mod nodes;
pub mod pki;

/// The pins of `scripts/kube-binaries.sh` (`KUBE_VERSION`, `ETCD_VERSION`) as its cache
/// directory names them; a test keeps the two in step.
pub const BINARIES_TAG: &str = "v1.36.5-etcd3.6.16";

/// Where `scripts/kube-binaries.sh` puts the binaries:
/// `${ZONEBENCH_KUBE_CACHE:-$HOME/.cache/zonebench/kube}/<tag>/bin`.
pub fn bin_dir() -> PathBuf {
    let cache = std::env::var_os("ZONEBENCH_KUBE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/zonebench/kube")
    });
    cache.join(BINARIES_TAG).join("bin")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_binaries_tag_is_the_scripts_pins() {
        let script = include_str!("../../../../../scripts/kube-binaries.sh");
        let pin = |name: &str| -> String {
            let line = script.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap_or_default();
            line.trim_start_matches(&format!("{name}=")).split_whitespace().next().unwrap_or_default().to_string()
        };
        let tag = format!("{}-etcd{}", pin("KUBE_VERSION"), pin("ETCD_VERSION").trim_start_matches('v'));
        assert_eq!(tag, super::BINARIES_TAG);
    }
}
