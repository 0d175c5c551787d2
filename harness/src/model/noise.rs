//! The `noise` section of results.json: the spread of each metric across a measurement's
//! repeats, and which metrics exceed the scenario's `max_spread_pct`. `analysis::noise`
//! computes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kinds::Via;

/// The default `max_spread_pct`: repeats of a latency median on a quiet machine agree within
/// a few percent; beyond 10 % a 5 % regression threshold can no longer be trusted.
pub const DEFAULT_MAX_SPREAD_PCT: f64 = 10.0;

/// The `noise` section of results.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseReport {
    pub max_spread_pct: f64,
    /// Measurements with at least two repeats, in the order they were first measured.
    pub groups: Vec<NoiseGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseGroup {
    pub name: String,
    pub test: String,
    pub via: Via,
    pub variant: String,
    pub client_zone: String,
    /// `*` for Service tests (the zone that answered is not part of what was asked).
    pub server_zone: String,
    pub repeats: u32,
    /// Per metric (`p50`, `p99`, `connect_p50`, `connect_p99`, `throughput`).
    pub metrics: BTreeMap<String, NoiseFigure>,
    /// Metrics whose spread exceeds `max_spread_pct`.
    pub flagged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseFigure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub spread_pct: f64,
}

impl NoiseReport {
    pub fn flagged_count(&self) -> usize {
        self.groups.iter().filter(|g| !g.flagged.is_empty()).count()
    }
}
