//! Scenarios: the TOML files that say where to run, which agents to place and which tests
//! to run between which zones. This module parses and validates them (errors name the
//! file, line and field), applies `--set key.path=value` overrides, and expands a scenario
//! and owns every configuration table (`[lab]`, `[kube]`, `[sweep]`, `[topology]`); `plan`
//! expands a scenario into steps.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zonebench_agent::spec::TestKind;

pub use crate::model::Via;

pub mod builtin;
pub mod capacity;
pub mod chain;
pub mod concurrency;
pub mod kube;
pub mod lab;
mod overrides;
mod spec;
pub mod sweep;
pub mod topology;
mod values;

pub use capacity::{Qps, SearchSpec};
pub use concurrency::{Clients, ZoneShare};
pub use kube::KubeSettings;
pub use lab::LabConfig;
pub use overrides::apply_override;
pub use spec::spec_for;
pub use sweep::SweepConfig;
pub use values::{HumanDuration, Rate, Size};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformChoice {
    /// The lab when it can run here (Linux, root), else local.
    #[default]
    Auto,
    Lab,
    Local,
    /// A Kubernetes cluster from the kubeconfig (`--kubeconfig`, `--context`).
    Kube,
}

/// Which (client zone, server zone) pairs a test measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairs {
    /// Every ordered client zone × server zone.
    #[default]
    ZoneMatrix,
    SameZone,
    CrossZone,
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file name without `.toml`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub platform: PlatformChoice,
    #[serde(default)]
    pub lab: LabConfig,
    /// Agent pods on a cluster (the kube platform).
    #[serde(default)]
    pub kube: KubeSettings,
    #[serde(default)]
    pub agents: Agents,
    #[serde(default)]
    pub defaults: Defaults,
    /// A service-scaling sweep instead of the zone matrix (see `run::sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepConfig>,
    /// Topology-aware routing variants for the `via = "service"` tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<topology::TopologyConfig>,
    /// How cross-zone bytes are priced in the run's `cost` section.
    #[serde(default)]
    pub cost: crate::model::CostModel,
    pub tests: Vec<TestEntry>,
}

/// How many agents each zone gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    #[serde(default = "one")]
    pub servers_per_zone: u32,
    #[serde(default = "one")]
    pub clients_per_zone: u32,
    /// Server agents answer at most this many HTTP requests/s each (`serve
    /// --max-answer-qps`): an application at capacity, for capacity searches and overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answer_qps: Option<f64>,
}

impl Default for Agents {
    fn default() -> Self {
        Agents { servers_per_zone: 1, clients_per_zone: 1, max_answer_qps: None }
    }
}

/// Values every test takes unless it sets its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_duration")]
    pub duration: HumanDuration,
    #[serde(default = "default_warmup")]
    pub warmup: HumanDuration,
    #[serde(default)]
    pub pairs: Pairs,
    #[serde(default)]
    pub via: Via,
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Spread of a metric across repeats (percent of its median) above which the
    /// measurement is flagged as noisy in results, report and comparisons.
    #[serde(default = "default_max_spread_pct")]
    pub max_spread_pct: f64,
    /// A concurrent Service test flags an endpoint that answers more than this many times
    /// the mean of the Service's endpoints.
    #[serde(default = "default_overload_threshold")]
    pub overload_threshold: f64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            duration: default_duration(),
            warmup: default_warmup(),
            pairs: Pairs::default(),
            via: Via::default(),
            repeat: 1,
            timeout: default_timeout(),
            max_spread_pct: default_max_spread_pct(),
            overload_threshold: default_overload_threshold(),
        }
    }
}

fn one() -> u32 {
    1
}
fn default_duration() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_warmup() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_spread_pct() -> f64 {
    crate::model::noise::DEFAULT_MAX_SPREAD_PCT
}
fn default_overload_threshold() -> f64 {
    crate::model::group::DEFAULT_OVERLOAD_THRESHOLD
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

/// One `[[tests]]` entry: a test kind, where it runs, and its parameters (the agent's
/// TestSpec fields, in the units users type: `"1G"`, `"64K"`, `"2s"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEntry {
    pub kind: TestKind,
    /// Label in results and reports; defaults to the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<Pairs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// A rate, or `"max"` for a capacity search (see [`capacity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<Qps>,
    /// A capacity search's SLO: the highest p99 a rate may have to count as met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_p99: Option<HumanDuration>,
    /// A capacity search's SLO: the most failed requests (percent) a rate may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_error_pct: Option<f64>,
    /// The lowest and highest rates a capacity search tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_min_qps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_max_qps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_close: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Run from many clients at once: `"all"` or a count per zone (see [`concurrency`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Clients>,
    /// Split the clients (or, with `qps`, the rate) over zones in this ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_weights: Option<BTreeMap<String, u32>>,
    /// A service chain: each request goes through these hops, zones or agent ids, in
    /// order (see [`chain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<Vec<String>>,
    /// A chain's client zone (default: the first zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl TestEntry {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.to_string())
    }
}

/// A scenario problem, located as precisely as is known.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct ScenarioError {
    /// `file:line:column`, `file` or `--set key=value`.
    pub location: String,
    /// Dotted field path (`lab.inter_zone_delay`, `tests[2].duration`), when known.
    pub field: String,
    pub message: String,
}

impl Scenario {
    /// Reads, parses and validates a scenario file; `overrides` are `key.path=value`
    /// strings applied after parsing (each validated as if written in the file).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            location: file.clone(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Scenario::parse(&text, &file, &stem, overrides)
    }

    /// Parses scenario text; `file` names it in errors, `stem` is the default name.
    pub fn parse(text: &str, file: &str, stem: &str, overrides: &[String]) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
        for o in overrides {
            scenario = apply_override(&scenario, o)?;
        }
        if scenario.name.is_empty() {
            scenario.name = stem.to_string();
        }
        scenario.validate().map_err(|(field, message)| {
            // Point at the line where the field's table or key is written, when we can.
            let location = locate(text, &field).map_or_else(|| file.to_string(), |line| format!("{file}:{line}"));
            ScenarioError { location, field, message }
        })?;
        Ok(scenario)
    }

    /// Checks the cross-field rules the types cannot express; `(field, message)` on failure.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: String, m: &str| Err((f, m.to_string()));
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return bad("name".into(), "must be letters, digits, '-' or '_' (it names the run directory)");
        }
        self.lab.validate()?;
        self.kube.validate()?;
        if self.agents.servers_per_zone == 0 || self.agents.servers_per_zone > 16 {
            return bad("agents.servers_per_zone".into(), "must be 1 to 16");
        }
        if self.agents.clients_per_zone == 0 || self.agents.clients_per_zone > 16 {
            return bad("agents.clients_per_zone".into(), "must be 1 to 16");
        }
        if self.agents.max_answer_qps.is_some_and(|q| !(q.is_finite() && q > 0.0)) {
            return bad("agents.max_answer_qps".into(), "must be a positive number of requests per second");
        }
        if self.defaults.repeat == 0 || self.defaults.repeat > 100 {
            return bad("defaults.repeat".into(), "must be 1 to 100");
        }
        let spread = self.defaults.max_spread_pct;
        if !(spread.is_finite() && spread > 0.0 && spread <= 1000.0) {
            return bad("defaults.max_spread_pct".into(), "must be a percentage above 0 (at most 1000)");
        }
        let threshold = self.defaults.overload_threshold;
        if !(threshold.is_finite() && threshold > 1.0 && threshold <= 100.0) {
            return bad("defaults.overload_threshold".into(), "must be a ratio above 1 (at most 100), e.g. 1.5");
        }
        if self.tests.is_empty() {
            return bad("tests".into(), "a scenario needs at least one [[tests]] entry");
        }
        let zones = self.lab.zones.len();
        let lab_zones =
            matches!(self.platform, PlatformChoice::Lab | PlatformChoice::Auto).then_some(&self.lab.zones[..]);
        for (i, t) in self.tests.iter().enumerate() {
            let f = |name: &str| format!("tests[{i}].{name}");
            if let Some(r) = t.repeat {
                if r == 0 || r > 100 {
                    return bad(f("repeat"), "must be 1 to 100");
                }
            }
            if t.pairs.unwrap_or(self.defaults.pairs) == Pairs::CrossZone && zones < 2 {
                return bad(f("pairs"), "cross-zone needs at least two zones in lab.zones");
            }
            // The agent's own rules (sizes, counts, paths) checked now, not mid-run.
            let spec = spec_for(self, t, "127.0.0.1:1");
            spec.validate().map_err(|e| (f(spec_field_to_scenario(e.field)), e.message))?;
            if let Some(name) = &t.name {
                if name.is_empty() || name.contains(',') {
                    return bad(f("name"), "must be non-empty and contain no commas");
                }
            }
            concurrency::validate(t, lab_zones).map_err(|(field, m)| (f(&field), m))?;
            capacity::validate(t).map_err(|(field, m)| (f(&field), m))?;
            chain::validate(t, lab_zones).map_err(|(field, m)| (f(&field), m))?;
            if chain::uses_service(t) && self.topology.is_some() {
                return bad(
                    f("hops"),
                    "a \"service\" hop goes through the run's one Service; [topology] variants are not supported in chains yet",
                );
            }
            if t.hops.is_some() && self.sweep.is_some() {
                return bad(f("hops"), "service chains are not supported in a [sweep] yet");
            }
            if t.search().is_some() && self.sweep.is_some() {
                return bad(f("qps"), "a capacity search (qps = \"max\") cannot run inside a [sweep] yet");
            }
            if t.is_concurrent() && self.sweep.is_some() {
                return bad(
                    f("clients"),
                    "concurrent tests (clients, zone_weights) are not supported in a [sweep] yet",
                );
            }
        }
        let mut labels: Vec<String> = self.tests.iter().map(TestEntry::label).collect();
        labels.sort();
        if let Some(w) = labels.windows(2).find(|w| w[0] == w[1]) {
            return Err(("tests".into(), format!("two tests are labelled {:?}; give one a distinct `name`", w[0])));
        }
        if let Some(sweep) = &self.sweep {
            sweep.validate(self)?;
        }
        self.cost.validate().map_err(|(f, m)| (format!("cost.{f}"), m))?;
        if let Some(t) = &self.topology {
            t.validate(lab_zones.map(<[String]>::len))?;
            if !self.tests.iter().any(|t| t.via.unwrap_or(self.defaults.via) == Via::Service) {
                return bad("topology".into(), "routing variants need a test with via = \"service\"");
            }
            if self.sweep.is_some() {
                return bad("topology".into(), "cannot be combined with [sweep]");
            }
        }
        Ok(())
    }
}

/// TestSpec field names to the scenario's (which carry no unit suffix).
fn spec_field_to_scenario(field: &str) -> &str {
    match field {
        "duration_ms" => "duration",
        "warmup_ms" => "warmup",
        "timeout_ms" => "timeout",
        "rate_bps" => "rate",
        f => f,
    }
}

/// `file:line:col: message` from a TOML error, whose span is a byte range in `text`.
fn toml_error(e: &toml::de::Error, text: &str, file: &str) -> ScenarioError {
    let location = match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{file}:{line}:{col}")
        }
        None => file.to_string(),
    };
    ScenarioError { location, field: String::new(), message: e.message().trim().to_string() }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Best-effort line of a dotted field (`lab.zones`, `tests[2].duration`) in the file text.
fn locate(text: &str, field: &str) -> Option<usize> {
    let (table, key) = match field.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", field),
    };
    let (table_name, index) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let lines: Vec<&str> = text.lines().collect();
    // Find the start of the table (the nth `[[tests]]`, or `[lab]`).
    let mut start = 0;
    if !table_name.is_empty() {
        let header = if index.is_some() { format!("[[{table_name}]]") } else { format!("[{table_name}]") };
        let mut seen = 0;
        let mut found = None;
        for (i, l) in lines.iter().enumerate() {
            if l.trim() == header {
                if index.is_none_or(|n| n == seen) {
                    found = Some(i);
                    break;
                }
                seen += 1;
            }
        }
        start = found?;
    }
    for (i, l) in lines.iter().enumerate().skip(start) {
        if i > start && l.trim_start().starts_with('[') {
            break;
        }
        let t = l.trim_start();
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            return Some(i + 1);
        }
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests;
