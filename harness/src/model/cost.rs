//! Measured locality and the run's `cost` section, as results.json carries them, and the
//! scenario's `[cost]` prices they are computed with (`analysis::locality` computes both).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Decimal gigabyte, as clouds bill.
pub const GB: f64 = 1e9;

/// Where one measurement's answers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// Answers served in the client's zone over all answers (0 when there were none).
    pub in_zone_fraction: f64,
    /// Answers per serving zone.
    pub answers_by_zone: BTreeMap<String, u64>,
    /// Payload bytes that crossed a zone boundary, both directions together.
    pub cross_zone_bytes: u64,
    /// Answers from servers the run does not know (no zone to attribute them to).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_server_answers: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The scenario's `[cost]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostModel {
    /// Price of one GB crossing zones, charged in each direction (AWS, GCP: 0.01 USD).
    pub per_gb_cross_zone: f64,
    /// The request rate the monthly estimate is scaled to.
    pub requests_per_sec: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel { per_gb_cross_zone: 0.01, requests_per_sec: 1000.0 }
    }
}

impl CostModel {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.per_gb_cross_zone.is_finite() || self.per_gb_cross_zone < 0.0 {
            return Err(("per_gb_cross_zone", format!("{} must be a price ≥ 0", self.per_gb_cross_zone)));
        }
        if !self.requests_per_sec.is_finite() || self.requests_per_sec <= 0.0 {
            return Err(("requests_per_sec", format!("{} must be a rate > 0", self.requests_per_sec)));
        }
        Ok(())
    }

    /// Cost of `bytes` crossing zones once (billed out and in).
    pub fn cost_of(&self, bytes: u64) -> f64 {
        bytes as f64 / GB * self.per_gb_cross_zone * 2.0
    }
}

/// One measurement's line in the run's `cost` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostLine {
    /// Index into `measurements`.
    pub measurement: usize,
    pub name: String,
    pub variant: String,
    pub client_zone: String,
    pub cross_zone_gb: f64,
    /// What the measured bytes cost.
    pub measured_usd: f64,
    /// Cross-zone bytes per request, from the measured answers.
    pub cross_zone_bytes_per_request: f64,
    /// A month at `requests_per_sec` with this locality.
    pub monthly_usd_at_rate: f64,
}

/// The run-level `cost` section of results.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostSection {
    /// USD per GB crossing zones, in each direction.
    pub per_gb_cross_zone: f64,
    pub requests_per_sec: f64,
    pub cross_zone_gb: f64,
    pub measured_usd: f64,
    pub lines: Vec<CostLine>,
}
