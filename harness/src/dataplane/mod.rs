//! Service dataplanes: what turns a Service's virtual IP into one of its endpoints on a node.
//!
//! Each lab node programs one dataplane, chosen by the scenario (`lab.service_dataplane`):
//! kube-proxy's iptables layout (nft or legacy backend), kube-proxy's nftables layout, or an
//! eBPF socket load balancer (cgroup connect4/sendmsg4, as Cilium's socket LB). They all take
//! the same input: the full table of Services with, per Service, the endpoints *this node*
//! routes to. Choosing those endpoints (traffic policies, topology hints) is
//! `topology::proxy`'s job, never the dataplane's, so hints change routing the same way on
//! every dataplane.
//!
//! A `sync` is given the whole table and leaves the kernel holding exactly it, as a
//! kube-proxy sync does; how (a full reload, or only what changed) is each dataplane's, as it
//! is kube-proxy's in each mode. The sweep times it.
//!
//! - [`iptables`]: kube-proxy's iptables layout, loaded with `iptables-restore` (both backends);
//! - [`nftables`]: kube-proxy's nftables layout, loaded with `nft -f` in one transaction;
//! - [`open`] picks one by [`DataplaneKind`]; [`validate`] checks a table before any renders it.

pub mod ebpf;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub mod iptables;
pub mod nftables;
mod tool;

pub use tool::ToolError;

pub use crate::model::{DataplaneKind, Protocol};

/// One Service port: kube-proxy writes one chain (or map entry) per Service *port*.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// `namespace/name:port-name`, as kube-proxy names its chains' comments.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint a Service port forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A Service port and the endpoints this node routes it to (already filtered by
/// `topology::proxy`). An empty list means "no endpoints": kube-proxy rejects such
/// connections, and so must every dataplane (an ICMP/RST reject or a refused connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRules {
    pub service: ServicePort,
    pub endpoints: Vec<Endpoint>,
}

/// Where one node's dataplane lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// The node's network namespace (`ip netns` name): iptables and nftables rules go here,
    /// where pod traffic is routed.
    pub netns: String,
    /// The node's cgroup v2 directory holding every agent process of the node's pods: the
    /// eBPF socket LB attaches here (cgroup hooks see the sockets of processes in the cgroup).
    pub cgroup: PathBuf,
    /// The node's pod CIDR (kube-proxy's `--cluster-cidr` masquerade decisions use it).
    pub pod_cidr: (Ipv4Addr, u8),
}

/// What one `sync` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Rules after the sync: `iptables-save`/`nft list ruleset` line counts, or BPF map entries.
    pub rules: u64,
    /// Wall time from starting the sync to the kernel having accepted it.
    pub elapsed: Duration,
}

/// One node's programmed dataplane.
pub trait Dataplane: Send {
    fn kind(&self) -> DataplaneKind;
    /// Makes this node's Service table exactly `services` (the whole table, every time).
    fn sync(&mut self, services: &[ServiceRules]) -> anyhow::Result<SyncReport>;
    /// Rules or entries currently programmed, counted the way [`SyncReport::rules`] is.
    fn rule_count(&self) -> anyhow::Result<u64>;
    /// Removes every rule, map and BPF attachment this dataplane made. Safe to call twice
    /// and after a failed `sync`.
    fn teardown(&mut self) -> anyhow::Result<()>;
}

/// Opens `kind` on one node. Nothing is programmed until the first [`Dataplane::sync`];
/// opening checks that the tools it needs are installed, so a missing one is reported
/// before a run starts measuring.
pub fn open(kind: DataplaneKind, node: &NodeTarget) -> anyhow::Result<Box<dyn Dataplane>> {
    Ok(match kind {
        DataplaneKind::Iptables => Box::new(iptables::IptablesDataplane::open(node, iptables::Backend::Nft)?),
        DataplaneKind::IptablesLegacy => Box::new(iptables::IptablesDataplane::open(node, iptables::Backend::Legacy)?),
        DataplaneKind::Nftables => Box::new(nftables::NftablesDataplane::open(node)?),
        DataplaneKind::Ebpf => Box::new(ebpf::EbpfDataplane::open(node)?),
    })
}

/// kube-proxy's name hash: SHA-256, then base32 (RFC 4648, upper case). Chain names use a
/// prefix of it (16 characters for iptables, 8 for nftables).
pub fn kube_hash(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = sha2::Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(52);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in digest.iter() {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A Service port name split as kube-proxy's `ServicePortName` holds it:
/// `namespace/name:port` → (`namespace/name`, `port`); the port name may be empty.
pub fn split_port_name(name: &str) -> (&str, &str) {
    name.rsplit_once(':').unwrap_or((name, ""))
}

/// A Service table no dataplane can program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "service port name {0:?} must be `namespace/name:port` of letters, digits, '-', '.' and '_' \
         (it names chains and rule comments)"
    )]
    BadName(String),
    #[error("service port {0:?} appears twice in the table")]
    DuplicateName(String),
    #[error("services {first:?} and {second:?} both claim {vip}:{port}/{protocol}")]
    DuplicateAddress { first: String, second: String, vip: Ipv4Addr, port: u16, protocol: &'static str },
    #[error("service port {0:?} has port 0 or an endpoint with port 0")]
    ZeroPort(String),
}

/// Checks what every renderer relies on: names that are safe inside rule text and chain
/// names, one Service per name and per (VIP, port, protocol), no zero ports.
pub fn validate(services: &[ServiceRules]) -> Result<(), TableError> {
    let mut names = std::collections::HashSet::new();
    let mut addresses = std::collections::HashMap::new();
    for s in services {
        let p = &s.service;
        let (svc, port) = split_port_name(&p.name);
        let ok_part = |t: &str| t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        let well_formed = match svc.split_once('/') {
            Some((ns, name)) => !ns.is_empty() && !name.is_empty() && ok_part(ns) && ok_part(name) && ok_part(port),
            None => false,
        };
        if !well_formed || p.name.len() > 200 {
            return Err(TableError::BadName(p.name.clone()));
        }
        if !names.insert(p.name.as_str()) {
            return Err(TableError::DuplicateName(p.name.clone()));
        }
        if let Some(first) = addresses.insert((p.vip, p.port, p.protocol), p.name.as_str()) {
            return Err(TableError::DuplicateAddress {
                first: first.to_string(),
                second: p.name.clone(),
                vip: p.vip,
                port: p.port,
                protocol: p.protocol.as_str(),
            });
        }
        if p.port == 0 || s.endpoints.iter().any(|e| e.port == 0) {
            return Err(TableError::ZeroPort(p.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A TCP Service port `ns/name:port-name` at `vip:port` with endpoints `ip:port`.
    pub fn svc(name: &str, vip: [u8; 4], port: u16, endpoints: &[([u8; 4], u16)]) -> ServiceRules {
        ServiceRules {
            service: ServicePort { name: name.into(), vip: Ipv4Addr::from(vip), port, protocol: Protocol::Tcp },
            endpoints: endpoints.iter().map(|(ip, port)| Endpoint { ip: Ipv4Addr::from(*ip), port: *port }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::svc;
    use super::*;

    #[test]
    fn names_hash_as_kube_proxy_hashes_them() {
        // Chain names from kube-proxy's own tests for ns1/svc1:p80 and endpoint 10.180.0.1:80.
        assert_eq!(&kube_hash("ns1/svc1:p80tcp")[..16], "XPGD46QRK7WJZT7O");
        assert_eq!(&kube_hash("ns1/svc1:p80tcp10.180.0.1:80")[..16], "SXIVWICOYRO3J4NJ");
        assert_eq!(&kube_hash("ns1/svc1/tcp/p80")[..8], "ULMVA6XW");
        assert_eq!(kube_hash("").len(), 52);
    }

    #[test]
    fn port_names_split_at_the_last_colon() {
        assert_eq!(split_port_name("ns/web:http"), ("ns/web", "http"));
        assert_eq!(split_port_name("ns/web"), ("ns/web", ""));
    }

    #[test]
    fn tables_with_unsafe_names_or_clashes_are_refused_by_name() {
        let ok = svc("zonebench/echo:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)]);
        validate(std::slice::from_ref(&ok)).unwrap();
        let quote = svc("zonebench/e\"cho:tcp", [198, 18, 128, 2], 7101, &[]);
        assert_eq!(validate(&[quote]), Err(TableError::BadName("zonebench/e\"cho:tcp".into())));
        assert!(matches!(validate(&[svc("no-namespace:tcp", [1, 1, 1, 1], 1, &[])]), Err(TableError::BadName(_))));
        let twin = svc("zonebench/other:tcp", [198, 18, 128, 1], 7101, &[]);
        let e = validate(&[ok.clone(), twin]).unwrap_err().to_string();
        assert!(e.contains("198.18.128.1:7101/tcp"), "{e}");
        assert!(matches!(validate(&[ok.clone(), ok]), Err(TableError::DuplicateName(_))));
        let zero = svc("zonebench/z:tcp", [198, 18, 128, 3], 7101, &[([198, 19, 0, 2], 0)]);
        assert!(matches!(validate(&[zero]), Err(TableError::ZeroPort(_))));
    }
}
