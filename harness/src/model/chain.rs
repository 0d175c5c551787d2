//! A service chain's record on its measurement: the hops it was planned through and the
//! zones they cross, beside what the answers said (each answer names every hop that
//! relayed it, so the measurement's `servers` counts answers per path).

use serde::{Deserialize, Serialize};

use super::results::Endpoint;

/// One chain measurement's route: `client → hops[0] → … → hops[n-1]`, the last answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// Every hop, first (the client's target) to last.
    pub hops: Vec<Endpoint>,
    /// The client's zone, then each hop's.
    pub zones: Vec<String>,
    /// Links between consecutive zones of `zones` that change zone.
    pub zones_crossed: u32,
    /// The path the answers name, when it is the planned one (`srv-b-0,srv-c-0,srv-a-0`).
    pub path: String,
    /// Answers whose path was exactly the planned one, percent of all answers; the rest were
    /// cut short (a hop refused or failed: their status says why).
    pub complete_pct: f64,
    /// The hops (by index) that went through the Service: their agent and zone are those of
    /// the complete path most answers took (`servers` has every path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<u32>,
}
