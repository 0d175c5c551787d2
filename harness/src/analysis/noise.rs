//! The noise figure of a run: for every measurement repeated at least twice, the spread of
//! each metric across its repeats (`(max - min) / median`), and a flag on every metric whose
//! spread exceeds the scenario's `max_spread_pct`. A flagged figure is still reported, but
//! the report and `compare` say it is not to be trusted rather than silently using it.

use std::collections::BTreeMap;

use super::metrics::{group, Key, Metric};
use super::stats::{median, spread_pct};
use crate::model::{Measurement, NoiseFigure, NoiseGroup, NoiseReport};

pub use crate::model::noise::DEFAULT_MAX_SPREAD_PCT;

/// The group of a key in `report`, if it was repeated.
pub fn find<'a>(report: &'a NoiseReport, key: &Key) -> Option<&'a NoiseGroup> {
    report.groups.iter().find(|g| {
        g.name == key.name
            && g.test == key.test
            && g.via == key.via
            && g.variant == key.variant
            && g.client_zone == key.client_zone
            && g.server_zone == key.server_zone
    })
}

/// The metrics a noise figure is computed for (loss has none: see [`Metric::is_absolute`]).
pub fn noise_metrics() -> impl Iterator<Item = Metric> {
    Metric::ALL.into_iter().filter(|m| !m.is_absolute())
}

/// Spread per metric of one group's repeats; `None` below two repeats.
pub fn figures(ms: &[&Measurement]) -> Option<BTreeMap<String, NoiseFigure>> {
    if ms.len() < 2 {
        return None;
    }
    let mut out = BTreeMap::new();
    for metric in noise_metrics() {
        let v = metric.values(ms);
        let (Some(med), Some(spread)) = (median(&v), spread_pct(&v)) else { continue };
        let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        out.insert(metric.as_str().to_string(), NoiseFigure { median: med, min, max, spread_pct: spread });
    }
    Some(out)
}

/// The noise section for a run's measurements.
pub fn compute(ms: &[Measurement], max_spread_pct: f64) -> NoiseReport {
    let mut groups = Vec::new();
    for (key, members) in group(ms) {
        let Some(metrics) = figures(&members) else { continue };
        let flagged =
            metrics.iter().filter(|(_, f)| f.spread_pct > max_spread_pct).map(|(name, _)| name.clone()).collect();
        groups.push(NoiseGroup {
            name: key.name,
            test: key.test,
            via: key.via,
            variant: key.variant,
            client_zone: key.client_zone,
            server_zone: key.server_zone,
            repeats: members.len() as u32,
            metrics,
            flagged,
        });
    }
    NoiseReport { max_spread_pct, groups }
}

#[cfg(test)]
mod tests {
    use zonebench_agent::spec::TestKind;

    use super::super::metrics::fixtures::*;
    use super::*;

    #[test]
    fn a_measurement_whose_repeats_disagree_is_flagged() {
        let ms = vec![
            latency(TestKind::TcpRr, "a", "a", 0, &[100_000]),
            latency(TestKind::TcpRr, "a", "b", 0, &[200_000]),
            latency(TestKind::TcpRr, "a", "a", 1, &[102_000]),
            latency(TestKind::TcpRr, "a", "b", 1, &[300_000]),
            latency(TestKind::TcpRr, "a", "a", 2, &[101_000]),
            latency(TestKind::TcpRr, "a", "b", 2, &[210_000]),
        ];
        let n = compute(&ms, 10.0);
        assert_eq!(n.groups.len(), 2);
        let quiet = &n.groups[0];
        assert_eq!((quiet.server_zone.as_str(), quiet.repeats), ("a", 3));
        assert!(quiet.flagged.is_empty(), "{quiet:?}");
        assert!(quiet.metrics["p50"].spread_pct < 3.0);
        let noisy = &n.groups[1];
        assert!(noisy.flagged.contains(&"p50".to_string()), "{noisy:?}");
        assert!(noisy.metrics["p50"].spread_pct > 40.0);
        assert_eq!(n.flagged_count(), 1);
    }

    #[test]
    fn single_repeats_have_no_noise_figure() {
        let ms = vec![latency(TestKind::TcpRr, "a", "a", 0, &[100_000])];
        assert!(compute(&ms, 10.0).groups.is_empty());
    }
}
