//! A capacity search's record: the highest open-loop rate that met the SLO, and the curve
//! of every rate tried (rate → achieved, p50, p99, errors), as results.json carries it in
//! `capacities`. Each point's own measurement is in `measurements` (its `params.qps` is the
//! rate asked).

use serde::{Deserialize, Serialize};
use zonebench_agent::spec::TestKind;

use super::kinds::Via;
use super::results::Endpoint;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// `name/variant/client/target/rN`, the variant left out when empty.
    pub id: String,
    pub test: TestKind,
    pub name: String,
    pub via: Via,
    pub variant: String,
    pub repeat: u32,
    pub client: Endpoint,
    /// The server agent or Service searched against.
    pub target: String,
    pub slo_p99_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_error_pct: Option<f64>,
    /// The highest rate tried that met the SLO; absent when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_qps: Option<f64>,
    /// The lowest rate tried that did not; absent when every rate tried met it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_qps: Option<f64>,
    /// The outcome in one sentence.
    pub verdict: String,
    /// Every rate tried, in the order tried.
    pub curve: Vec<CapacityPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityPoint {
    pub asked_qps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_qps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_pct: Option<f64>,
    pub met: bool,
    /// Why the rate missed the SLO (or why it was not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Index into `measurements`; absent when the rate produced no measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<usize>,
}

/// A rate is met when the achieved rate is at least this share of the asked one.
pub const ACHIEVED_SHARE: f64 = 0.99;

/// What a search step needs: the SLO and the rates it may try.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    pub slo_p99_ns: u64,
    pub slo_error_pct: Option<f64>,
    pub min_qps: f64,
    pub max_qps: f64,
    pub precision_pct: f64,
}
