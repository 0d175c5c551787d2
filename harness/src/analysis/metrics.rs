//! What a comparison pairs and what it measures: the key that identifies "the same
//! measurement" across runs, the groups of repeats sharing a key, and the metrics read off
//! them (p50, p99, connect p50/p99, throughput, loss) with the direction that is worse.
//!
//! The key is (test name and kind, via, variant, client zone, server zone, params). Two
//! things are deliberately left out of it: the measured window (`duration_ms`, `warmup_ms`),
//! so a nightly run shortened with `--set` still pairs with its baseline (the comparison
//! warns that the windows differ), and, for `via = "service"`, the server zone, which is
//! whoever the Service sent the traffic to and not part of what was asked.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;
use zonebench_agent::histogram;
use zonebench_agent::spec::{LatencySummary, TestKind};
use zonebench_agent::units::{format_bps, format_ns};

use crate::model::{Measurement, Via};

/// Parameters that set how long a test ran, not what it measured.
const TIMING_PARAMS: [&str; 2] = ["duration_ms", "warmup_ms"];

/// Stands in for the server zone of Service tests (see the module doc).
pub const ANY_SERVER: &str = "*";

/// Identifies one measured thing across repeats and runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub name: String,
    pub test: String,
    pub via: Via,
    pub variant: String,
    pub client_zone: String,
    pub server_zone: String,
    /// The params without the timing ones, as canonical JSON (BTreeMap keeps keys sorted).
    pub params: String,
}

impl Key {
    pub fn of(m: &Measurement) -> Key {
        let params: BTreeMap<&String, &serde_json::Value> =
            m.params.iter().filter(|(k, _)| !TIMING_PARAMS.contains(&k.as_str())).collect();
        Key {
            name: m.name.clone(),
            test: m.test.to_string(),
            via: m.via,
            variant: m.variant.clone(),
            client_zone: m.client.zone.clone(),
            server_zone: if m.via == Via::Service { ANY_SERVER.to_string() } else { m.server.zone.clone() },
            params: serde_json::to_string(&params).unwrap_or_default(),
        }
    }

    /// `params.services` of a service-scaling point, when present.
    pub fn services(&self) -> Option<u64> {
        serde_json::from_str::<serde_json::Value>(&self.params).ok()?.get("services")?.as_u64()
    }

    /// Same zone or cross zone; `None` for Service tests (the Service picks the zone).
    pub fn same_zone(&self) -> Option<bool> {
        (self.server_zone != ANY_SERVER).then(|| self.client_zone == self.server_zone)
    }
}

/// A short human label: `tcp-rr a→b`, with via, variant and service count when set.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.via != Via::Pod {
            write!(f, " via {}", self.via)?;
        }
        if !self.variant.is_empty() {
            write!(f, " [{}]", self.variant)?;
        }
        if let Some(n) = self.services() {
            write!(f, " services={n}")?;
        }
        write!(f, " {}→{}", self.client_zone, self.server_zone)
    }
}

/// Measurements grouped by key, in the order keys first appear.
pub fn group(ms: &[Measurement]) -> Vec<(Key, Vec<&Measurement>)> {
    let mut order: Vec<Key> = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&Measurement>> = BTreeMap::new();
    for m in ms {
        let k = Key::of(m);
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(m);
    }
    order
        .into_iter()
        .filter_map(|k| {
            let v = groups.remove(&k)?;
            Some((k, v))
        })
        .collect()
}

/// Stream tests report throughput; the others latency.
pub fn is_throughput(kind: TestKind) -> bool {
    matches!(kind, TestKind::TcpStream | TestKind::UdpStream)
}

pub fn latency_of(m: &Measurement) -> Option<&LatencySummary> {
    m.latency.as_ref()
}

pub fn connect_of(m: &Measurement) -> Option<&LatencySummary> {
    m.connect.as_ref()
}

/// The merged histogram of `pick` over `ms` (percentiles of repeats and pairs are taken
/// from the merge, never averaged); `None` when none has a histogram that decodes.
pub fn merged<'a>(
    ms: impl IntoIterator<Item = &'a Measurement>,
    pick: fn(&Measurement) -> Option<&LatencySummary>,
) -> Option<Histogram<u64>> {
    let mut h = histogram::new();
    for m in ms {
        let Some(s) = pick(m) else { continue };
        match histogram::decode(&s.histogram) {
            Ok(d) => histogram::merge(&mut h, &d),
            Err(e) => tracing::warn!("skipping a histogram of {} that does not decode: {e}", m.name),
        }
    }
    (!h.is_empty()).then_some(h)
}

/// A figure compared across runs and watched for noise across repeats.
/// Named as in the noise section and on the command line (`p50`, `connect_p99`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
pub enum Metric {
    #[value(name = "p50")]
    #[serde(rename = "p50")]
    LatencyP50,
    #[value(name = "p99")]
    #[serde(rename = "p99")]
    LatencyP99,
    #[value(name = "connect_p50")]
    #[serde(rename = "connect_p50")]
    ConnectP50,
    #[value(name = "connect_p99")]
    #[serde(rename = "connect_p99")]
    ConnectP99,
    #[value(name = "throughput")]
    #[serde(rename = "throughput")]
    Throughput,
    #[value(name = "loss_pct")]
    #[serde(rename = "loss_pct")]
    LossPct,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::LatencyP50,
        Metric::LatencyP99,
        Metric::ConnectP50,
        Metric::ConnectP99,
        Metric::Throughput,
        Metric::LossPct,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::LatencyP50 => "p50",
            Metric::LatencyP99 => "p99",
            Metric::ConnectP50 => "connect_p50",
            Metric::ConnectP99 => "connect_p99",
            Metric::Throughput => "throughput",
            Metric::LossPct => "loss_pct",
        }
    }

    /// Whether a larger value is worse (latency, loss) rather than better (throughput).
    pub fn higher_is_worse(self) -> bool {
        !matches!(self, Metric::Throughput)
    }

    /// Loss is compared in percentage points (a relative change from 0 % is meaningless)
    /// and has no noise figure for the same reason.
    pub fn is_absolute(self) -> bool {
        matches!(self, Metric::LossPct)
    }

    /// The figure of one measurement (one repeat).
    pub fn value(self, m: &Measurement) -> Option<f64> {
        match self {
            Metric::LatencyP50 => m.latency.as_ref().map(|l| l.p50_ns as f64),
            Metric::LatencyP99 => m.latency.as_ref().map(|l| l.p99_ns as f64),
            Metric::ConnectP50 => m.connect.as_ref().map(|l| l.p50_ns as f64),
            Metric::ConnectP99 => m.connect.as_ref().map(|l| l.p99_ns as f64),
            Metric::Throughput => {
                m.metrics.throughput_bps.or(m.metrics.transactions_per_sec).or(m.metrics.requests_per_sec)
            }
            Metric::LossPct => m.metrics.loss_pct,
        }
    }

    /// The values of a group's repeats (those that have the figure).
    pub fn values(self, ms: &[&Measurement]) -> Vec<f64> {
        ms.iter().filter_map(|m| self.value(m)).collect()
    }

    /// A value in this metric's unit, for people.
    pub fn format(self, v: f64, kind: TestKind) -> String {
        match self {
            Metric::LatencyP50 | Metric::LatencyP99 | Metric::ConnectP50 | Metric::ConnectP99 => format_ns(v),
            Metric::Throughput => match kind {
                TestKind::TcpStream | TestKind::UdpStream => format_bps(v),
                TestKind::Http => format!("{v:.0} req/s"),
                _ => format!("{v:.0} tx/s"),
            },
            Metric::LossPct => format!("{v:.3} %"),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Measurements built in code for the analysis and report tests.
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use zonebench_agent::histogram;
    use zonebench_agent::spec::{Metrics, TestKind};

    use crate::model::Fingerprint;
    use crate::model::{Endpoint, Measurement, RunResults, RunStatus, SCHEMA_VERSION};

    /// A latency measurement whose histogram holds `values` (ns).
    pub fn latency(kind: TestKind, cz: &str, sz: &str, repeat: u32, values: &[u64]) -> Measurement {
        let mut h = histogram::new();
        for &v in values {
            histogram::record(&mut h, v);
        }
        let summary = histogram::summarize(&h).unwrap();
        let mut m = base(kind, cz, sz, repeat);
        m.metrics.transactions_per_sec = Some(1e9 / summary.mean_ns);
        if kind == TestKind::TcpCrr {
            m.connect = Some(summary.clone());
        }
        m.latency = Some(summary);
        m
    }

    pub fn throughput(cz: &str, sz: &str, repeat: u32, bps: f64) -> Measurement {
        let mut m = base(TestKind::TcpStream, cz, sz, repeat);
        m.metrics.throughput_bps = Some(bps);
        m
    }

    fn base(kind: TestKind, cz: &str, sz: &str, repeat: u32) -> Measurement {
        let mut params = BTreeMap::new();
        params.insert("duration_ms".to_string(), serde_json::json!(1000));
        params.insert("request_size".to_string(), serde_json::json!(1));
        Measurement {
            test: kind,
            name: kind.to_string(),
            via: crate::model::Via::Pod,
            variant: String::new(),
            repeat,
            client: Endpoint { agent: format!("cli-{cz}-0"), node: format!("{cz}-2"), zone: cz.into() },
            server: Endpoint { agent: format!("srv-{sz}-0"), node: format!("{sz}-1"), zone: sz.into() },
            params,
            target: "10.0.0.1:7101".into(),
            duration_ns: 1_000_000_000,
            metrics: Metrics::default(),
            latency: None,
            connect: None,
            servers: BTreeMap::from([(format!("srv-{sz}-0"), 100)]),
            window: None,
            group: None,
            chain: None,
            service_dataplane: None,
            locality: None,
            hints: None,
        }
    }

    pub fn run(ms: Vec<Measurement>) -> RunResults {
        RunResults {
            schema_version: SCHEMA_VERSION,
            scenario: "t".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: Some("2026-01-01T00:01:00Z".into()),
            status: RunStatus::Complete,
            fingerprint: Fingerprint {
                platform: "lab".into(),
                kernel: "6.1".into(),
                zones: vec!["a".into(), "b".into()],
                nodes: 4,
                zonebench_version: "0.1.0".into(),
                ..Default::default()
            },
            measurements: ms,
            failures: vec![],
            groups: vec![],
            capacities: vec![],
            error: None,
            noise: None,
            cost: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn the_key_ignores_the_measured_window_but_not_other_params() {
        let a = latency(TestKind::TcpRr, "a", "b", 0, &[100]);
        let mut b = a.clone();
        b.params.insert("duration_ms".into(), serde_json::json!(5000));
        assert_eq!(Key::of(&a), Key::of(&b));
        b.params.insert("request_size".into(), serde_json::json!(64));
        assert_ne!(Key::of(&a), Key::of(&b));
    }

    #[test]
    fn service_tests_are_keyed_without_the_zone_that_happened_to_answer() {
        let mut a = latency(TestKind::TcpRr, "a", "b", 0, &[100]);
        a.via = crate::model::Via::Service;
        let mut b = a.clone();
        b.server.zone = "c".into();
        assert_eq!(Key::of(&a), Key::of(&b));
        assert_eq!(Key::of(&a).same_zone(), None);
    }

    #[test]
    fn repeats_of_one_key_form_one_group_in_first_seen_order() {
        let ms = vec![
            latency(TestKind::TcpRr, "a", "b", 0, &[100]),
            latency(TestKind::TcpRr, "a", "a", 0, &[100]),
            latency(TestKind::TcpRr, "a", "b", 1, &[100]),
        ];
        let g = group(&ms);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0.server_zone, "b");
        assert_eq!(g[0].1.len(), 2);
        assert_eq!(g[0].0.to_string(), "tcp-rr a→b");
    }

    mod props {
        //! Repeats merge in any grouping to the same histogram, with every count.
        use proptest::prelude::*;

        use super::*;

        fn repeats() -> impl Strategy<Value = Vec<Vec<u64>>> {
            let value = (0u32..44, any::<u64>()).prop_map(|(bits, v)| v >> (63 - bits));
            proptest::collection::vec(proptest::collection::vec(value, 1..50), 1..6)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn merged_repeats_are_associative_and_keep_counts(values in repeats(), split: prop::sample::Index) {
                let ms: Vec<Measurement> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| latency(TestKind::TcpRr, "a", "b", i as u32, v))
                    .collect();
                let all = merged(&ms, latency_of).expect("every repeat has a histogram");
                prop_assert_eq!(all.len(), values.iter().map(Vec::len).sum::<usize>() as u64);
                // (first k) + (the rest) is the merge of all, whatever k.
                let k = split.index(ms.len() + 1);
                let mut grouped = histogram::new();
                for part in [&ms[..k], &ms[k..]] {
                    if let Some(h) = merged(part, latency_of) {
                        histogram::merge(&mut grouped, &h);
                    }
                }
                prop_assert_eq!(&grouped, &all);
                let mut reversed = ms.clone();
                reversed.reverse();
                prop_assert_eq!(&merged(&reversed, latency_of).expect("histograms"), &all);
            }
        }
    }
}
