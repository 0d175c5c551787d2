//! The scenario's `[topology]` table: the topology-aware routing A/B. Each routing mode is
//! tried on each placement of endpoints, every (placement, mode) pair being one Service and
//! one variant, so `via = "service"` tests measure what the hints really do to locality.
//!
//! ```toml
//! [topology]
//! modes = ["none", "auto", "prefer-close"]
//! [[topology.placements]]            # variants: none, auto, prefer-close
//! endpoints_per_zone = [3, 3, 3]
//! [[topology.placements]]            # variants: skewed-none, skewed-auto, …
//! prefix = "skewed-"
//! endpoints_per_zone = [2, 2, 1]
//! ```
//!
//! `endpoints_per_zone` is in the order of the cluster's zones (the lab's `lab.zones`).

use serde::{Deserialize, Serialize};

use crate::model::RoutingMode;

/// `[topology]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Routing modes to compare, run interleaved in this order.
    pub modes: Vec<RoutingMode>,
    pub placements: Vec<EndpointPlacement>,
}

/// `[[topology.placements]]`: how many of each zone's servers are the Service's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPlacement {
    /// Put before each mode's name to make the variant (`skewed-` → `skewed-auto`).
    #[serde(default)]
    pub prefix: String,
    /// Endpoints per zone, in zone order.
    pub endpoints_per_zone: Vec<u32>,
}

/// One variant: a placement under a mode.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyVariant {
    pub name: String,
    pub mode: RoutingMode,
    pub endpoints_per_zone: Vec<u32>,
}

/// Most servers a zone may get for a placement (as `agents.servers_per_zone`).
pub const MAX_ENDPOINTS_PER_ZONE: u32 = 16;

impl TopologyConfig {
    /// Every variant: placements outer, modes inner (`none auto prefer-close skewed-none …`).
    pub fn variants(&self) -> Vec<TopologyVariant> {
        let mut out = Vec::new();
        for p in &self.placements {
            for &mode in &self.modes {
                out.push(TopologyVariant {
                    name: format!("{}{}", p.prefix, mode.as_str()),
                    mode,
                    endpoints_per_zone: p.endpoints_per_zone.clone(),
                });
            }
        }
        out
    }

    /// The most endpoints any placement puts in one zone: the servers each zone needs.
    pub fn servers_per_zone(&self) -> u32 {
        self.placements.iter().flat_map(|p| p.endpoints_per_zone.iter().copied()).max().unwrap_or(0)
    }

    /// `zones`: the lab's zone count when known (the lab platform), to check the lists'
    /// lengths before anything runs.
    pub fn validate(&self, zones: Option<usize>) -> Result<(), (String, String)> {
        let bad = |f: String, m: String| Err((format!("topology.{f}"), m));
        if self.modes.is_empty() {
            return bad("modes".into(), "name at least one routing mode (none, auto, prefer-close, …)".into());
        }
        let mut seen = self.modes.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.modes.len() {
            return bad("modes".into(), "each mode may appear once".into());
        }
        if self.placements.is_empty() {
            return bad("placements".into(), "add at least one [[topology.placements]]".into());
        }
        for (i, p) in self.placements.iter().enumerate() {
            let f = |name: &str| format!("placements[{i}].{name}");
            if !p.prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || p.prefix.starts_with('-')
                || p.prefix.len() > 40
            {
                return bad(f("prefix"), format!("{:?} must be lowercase letters, digits and '-' (it names a Service), not starting with '-', at most 40", p.prefix));
            }
            if p.endpoints_per_zone.is_empty() {
                return bad(f("endpoints_per_zone"), "give one count per zone".into());
            }
            if let Some(n) = zones {
                if p.endpoints_per_zone.len() != n {
                    return bad(
                        f("endpoints_per_zone"),
                        format!("{} counts for {n} zones in lab.zones", p.endpoints_per_zone.len()),
                    );
                }
            }
            if p.endpoints_per_zone.iter().any(|&c| c > MAX_ENDPOINTS_PER_ZONE) {
                return bad(f("endpoints_per_zone"), format!("each count must be 0 to {MAX_ENDPOINTS_PER_ZONE}"));
            }
            if p.endpoints_per_zone.iter().all(|&c| c == 0) {
                return bad(f("endpoints_per_zone"), "a Service needs at least one endpoint".into());
            }
        }
        let mut names: Vec<String> = self.variants().into_iter().map(|v| v.name).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return bad(
                "placements".into(),
                format!("two placements make variant {:?}; give them distinct prefixes", w[0]),
            );
        }
        Ok(())
    }
}
