//! The scenario's `[lab]` table: the emulated cluster's zones and nodes, how pods route
//! between them, the inter-zone link, and the Service dataplane every node programs.
//! Validated with the scenario, so a bad value is reported against `lab.<field>` before
//! anything is built.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{DataplaneKind, Routing};

/// The scenario's `[lab]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// Zone names; `"a,b,c"` or `["a", "b", "c"]`.
    #[serde(default = "default_zones", deserialize_with = "zones_list")]
    pub zones: Vec<String>,
    #[serde(default = "default_nodes_per_zone")]
    pub nodes_per_zone: u32,
    #[serde(default)]
    pub routing: Routing,
    /// Inter-zone link rate, e.g. `"1gbit"` (none = unshaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_zone_rate: Option<String>,
    /// Extra one-way delay between zones, e.g. `"250us"` (none = no added delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_zone_delay: Option<String>,
    /// What every node programs Services with: `iptables` (kube-proxy's default mode),
    /// `iptables-legacy`, `nftables` or `ebpf`.
    #[serde(default)]
    pub service_dataplane: DataplaneKind,
    /// A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) and
    /// a real kube-proxy on every node (`zonebench lab up --kubernetes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kubernetes: bool,
    /// Allocatable CPU of the Kubernetes lab's Node objects, by zone or by node name (a node
    /// wins over its zone), e.g. `{ a = "8", b = "4", c = "4" }`; default 4 cores each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_cpu: BTreeMap<String, String>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            zones: default_zones(),
            nodes_per_zone: default_nodes_per_zone(),
            routing: Routing::default(),
            inter_zone_rate: None,
            inter_zone_delay: None,
            service_dataplane: DataplaneKind::default(),
            kubernetes: false,
            node_cpu: BTreeMap::new(),
        }
    }
}

impl LabConfig {
    /// Checks values; errors name the field under `lab.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("lab.{f}"), m));
        if self.zones.is_empty() || self.zones.len() > 16 {
            return bad("zones", "must name 1 to 16 zones".into());
        }
        for z in &self.zones {
            if z.is_empty() || z.len() > 8 || !z.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                return bad("zones", format!("zone {z:?} must be 1-8 lowercase letters or digits"));
            }
        }
        let mut sorted = self.zones.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.zones.len() {
            return bad("zones", "zone names must be unique".into());
        }
        if self.nodes_per_zone == 0 || self.nodes_per_zone > 16 {
            return bad("nodes_per_zone", "must be 1 to 16".into());
        }
        if let Some(r) = &self.inter_zone_rate {
            zonebench_agent::units::parse_rate_bps(r).map_err(|e| ("lab.inter_zone_rate".to_string(), e))?;
        }
        if let Some(d) = &self.inter_zone_delay {
            let d = self.delay_of(d).map_err(|e| ("lab.inter_zone_delay".to_string(), e))?;
            if d > Duration::from_secs(1) {
                return bad("inter_zone_delay", "must be at most 1s".into());
            }
        }
        for (key, q) in &self.node_cpu {
            let node = self.zones.iter().any(|z| {
                key.strip_prefix(z.as_str())
                    .and_then(|r| r.strip_prefix('-'))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n >= 1 && n <= self.nodes_per_zone)
            });
            if !self.zones.contains(key) && !node {
                return bad("node_cpu", format!("{key:?} is neither a zone nor a node (nodes are named <zone>-<n>)"));
            }
            match crate::scenario::kube::parse_cpu_millis(q) {
                Ok(m) if m > 0 => {}
                Ok(_) => return bad("node_cpu", format!("{key} = {q:?}: must be above 0")),
                Err(e) => return bad("node_cpu", format!("{key} = {q:?}: {e}")),
            }
        }
        if !self.node_cpu.is_empty() && !self.kubernetes {
            return bad(
                "node_cpu",
                "sets the CPU of the Kubernetes lab's Node objects: set lab.kubernetes = true".into(),
            );
        }
        if self.kubernetes && !matches!(self.service_dataplane, DataplaneKind::Iptables | DataplaneKind::Nftables) {
            return bad(
                "service_dataplane",
                format!(
                    "{} is no kube-proxy mode: the Kubernetes lab runs the real kube-proxy, iptables or nftables",
                    self.service_dataplane
                ),
            );
        }
        Ok(())
    }

    /// The allocatable CPU (millicores) of node `name` in `zone`: `node_cpu` by node, then
    /// by zone, else `default`.
    pub fn cpu_millis_of(&self, name: &str, zone: &str, default: u64) -> u64 {
        self.node_cpu
            .get(name)
            .or_else(|| self.node_cpu.get(zone))
            .and_then(|q| crate::scenario::kube::parse_cpu_millis(q).ok())
            .unwrap_or(default)
    }

    fn delay_of(&self, s: &str) -> Result<Duration, String> {
        zonebench_agent::units::parse_duration(s)
    }
}

fn default_zones() -> Vec<String> {
    vec!["a".into(), "b".into(), "c".into()]
}
fn default_nodes_per_zone() -> u32 {
    2
}

fn zones_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Zones {
        Csv(String),
        List(Vec<String>),
    }
    Ok(match Zones::deserialize(d)? {
        Zones::Csv(s) => s.split(',').map(|z| z.trim().to_string()).filter(|z| !z.is_empty()).collect(),
        Zones::List(v) => v,
    })
}
