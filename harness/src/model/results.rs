//! What a run produces, as results.json carries it (schema in
//! `results/schema/results.schema.json`): the run, its measurements and failures, and the
//! sections written when it ends. Writing and reading these files is `results`'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zonebench_agent::spec::{LatencySummary, Metrics, TestKind, Window};

use super::capacity::Capacity;
use super::cluster::Fingerprint;
use super::cost::{CostSection, Locality};
use super::group::Group;
use super::hints::HintsVerdict;
use super::kinds::{DataplaneName, Via};
use super::noise::NoiseReport;

pub const SCHEMA_VERSION: u32 = 1;

/// How a run ended (`running` while it is in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Complete,
    /// Stopped by SIGINT/SIGTERM; the measurements are those finished before.
    Interrupted,
    /// Stopped by an error; the measurements are those finished before.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResults {
    pub schema_version: u32,
    pub scenario: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub fingerprint: Fingerprint,
    pub measurements: Vec<Measurement>,
    /// Steps that did not produce a measurement, and why.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Concurrent groups: clients of one test that ran at once, and what they add up to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Capacity searches (`qps = "max"`): the highest rate meeting the SLO, and the curve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacities: Vec<Capacity>,
    /// Why the run stopped early, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Spread across repeats per measurement and metric, with those above the scenario's
    /// `max_spread_pct` flagged; written when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseReport>,
    /// Cross-zone bytes of the Service tests and what they cost (the scenario's `[cost]`);
    /// written when the run ends, when some measurement has a `locality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostSection>,
}

/// An agent's place: `{agent, node, zone}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub agent: String,
    pub node: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub test: TestKind,
    /// The scenario entry's label (its `name`, or the kind).
    pub name: String,
    pub via: Via,
    pub variant: String,
    pub repeat: u32,
    pub client: Endpoint,
    /// Who actually answered (the identity in the answers), not who was targeted.
    pub server: Endpoint,
    /// The test's parameters as run (the TestSpec without its target).
    pub params: BTreeMap<String, serde_json::Value>,
    pub target: String,
    pub duration_ns: u64,
    pub metrics: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<LatencySummary>,
    pub servers: BTreeMap<String, u64>,
    /// The measured window on the client agent's wall clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The concurrent group this measurement belongs to (an id in `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A service chain (`hops`): its route, the zones it crosses, how many answers made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<super::chain::Chain>,
    /// Service-scaling sweep points: the dataplane's state when this was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_dataplane: Option<ServiceDataplaneStats>,
    /// `via = service`: where the answers came from, counted by the serving agent's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    /// `via = service`: the EndpointSlice controller's verdict on the Service's hints
    /// (the prediction, beside the measured `locality`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<HintsVerdict>,
}

/// What a service-scaling sweep point records about the dataplane it measured through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDataplaneStats {
    /// `iptables`, `iptables-legacy`, `nftables`, `ebpf` (the lab), or the cluster's mode.
    pub kind: DataplaneName,
    /// Services programmed (each with the same ports and real endpoints).
    pub services: u32,
    /// On the client's node: `iptables-save`/`nft list ruleset` lines, or BPF map entries.
    /// Absent on a cluster run without `--inspect-nodes` (nothing there can count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u64>,
    /// On the client's node: the sync that added the newest Service, start to kernel accept
    /// (on a cluster: kube-proxy's mean sync duration over the point, from its metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_ns: Option<u64>,
    /// From the newest Service's creation to a client pod's first successful connect to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programming_latency_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub test: TestKind,
    pub name: String,
    pub repeat: u32,
    pub client: String,
    pub server: String,
    pub error: String,
    /// The variant the step belonged to (a sweep point's dataplane), when it had one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// Parameters that locate the step (a sweep point's `services`), when it had any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The concurrent group the step belonged to, when it was one client of several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl RunResults {
    /// Indices of the measurements that are capacity-search probes (one rate of a search
    /// each): tables that pool a test's measurements leave them to the search's own table.
    pub fn search_probes(&self) -> std::collections::BTreeSet<usize> {
        self.capacities.iter().flat_map(|c| c.curve.iter().filter_map(|p| p.measurement)).collect()
    }
}

/// Now as RFC 3339 UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
