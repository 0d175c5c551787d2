//! A concurrent group: the clients of one test entry that ran at once against one target
//! (an agent or a Service), each client's own measurement kept, and what they add up to.
//! The summary merges their histograms (never averaging percentiles), sums their rates,
//! counts the answers each server gave, and for a Service judges whether one endpoint took
//! more than its share: the overload a thin zone's endpoint meets under PreferClose.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zonebench_agent::spec::{LatencySummary, Metrics, TestKind, Window};

use super::kinds::Via;
use super::results::Endpoint;

/// Default overload threshold: an endpoint answering more than 1.5× the mean of its
/// Service's endpoints is flagged.
pub const DEFAULT_OVERLOAD_THRESHOLD: f64 = 1.5;

/// One concurrent group as results.json carries it in `groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// `name/variant/target/rN`; the members' measurements carry it as `group`.
    pub id: String,
    pub test: TestKind,
    pub name: String,
    pub via: Via,
    pub variant: String,
    pub repeat: u32,
    /// The server agent or the Service every member targeted.
    pub target: String,
    /// The clients that were armed and released together.
    pub clients: Vec<Endpoint>,
    /// Indices into `measurements` of the members that measured.
    pub members: Vec<usize>,
    /// Members that produced no measurement (their failures are in `failures`).
    pub failed: u32,
    /// From the earliest member's window start to the latest one's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<Window>,
    /// The window every member shared (latest start to earliest end) as a percentage of
    /// the longest member window: 100 when they ran exactly together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_pct: Option<f64>,
    /// The coordinator's wall time for the group, from arming the first client to the last
    /// member's result: against the members' warm-up plus window, what running them together
    /// cost (`scripts/bench-concurrency.sh` reports it).
    pub elapsed_ns: u64,
    /// Rates and counts summed over the members (loss and jitter recomputed, not summed).
    pub metrics: Metrics,
    /// The members' latency histograms merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<LatencySummary>,
    /// Answers per server id over every member: the per-server load.
    pub servers: BTreeMap<String, u64>,
    /// `via = service`: each endpoint's answers against its fair share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<EndpointLoad>,
}

/// How a group's answers spread over its Service's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLoad {
    /// An endpoint whose answers exceed this many times the mean is overloaded.
    pub threshold: f64,
    pub endpoints: Vec<EndpointShare>,
    /// The overloaded endpoints' agent ids (empty when the load is fair).
    pub overloaded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointShare {
    pub agent: String,
    pub zone: String,
    pub answers: u64,
    /// Answers over the mean answers per endpoint (1.0 is a fair share).
    pub ratio: f64,
    /// The share of the group's load the dataplane's endpoint choice predicts for this
    /// endpoint (each client's load split evenly over the endpoints its node routes to),
    /// over the mean share; absent when the platform does not know its nodes' choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ratio: Option<f64>,
}
