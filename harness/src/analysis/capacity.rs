//! The capacity search: which open-loop rate to try next, whether a measured rate met the
//! SLO, and the outcome in words. Pure, so the search is tested without a network.
//!
//! The search doubles the rate from `min_qps` until a rate misses (or `max_qps` is met),
//! then bisects between the highest rate met and the lowest missed until they are within
//! `precision_pct` of each other. A rate is met when the achieved rate is at least 99 % of
//! the asked one, its p99 is within the SLO and (with `slo_error_pct`) its failed requests
//! are within the allowance. At most [`MAX_PROBES`] rates are tried.

use zonebench_agent::units::format_ns;

use crate::model::capacity::{SearchSpec, ACHIEVED_SHARE};
use crate::model::{CapacityPoint, Measurement};

/// The most rates one search tries (bounded in count, as every load loop is).
pub const MAX_PROBES: u32 = 16;

#[derive(Debug, Clone)]
pub struct Search {
    spec: SearchSpec,
    met: Option<f64>,
    missed: Option<f64>,
    tried: u32,
    next: Option<f64>,
}

impl Search {
    pub fn new(spec: SearchSpec) -> Search {
        let first = spec.min_qps;
        Search { spec, met: None, missed: None, tried: 0, next: Some(first) }
    }

    /// The next rate to try; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records the outcome at `rate` and picks the next one.
    pub fn record(&mut self, rate: f64, met: bool) {
        self.tried += 1;
        if met {
            self.met = Some(self.met.map_or(rate, |m| m.max(rate)));
        } else {
            self.missed = Some(self.missed.map_or(rate, |m| m.min(rate)));
        }
        let s = &self.spec;
        self.next = match (self.met, self.missed) {
            _ if self.tried >= MAX_PROBES => None,
            (None, _) => None,
            (Some(m), None) if m >= s.max_qps => None,
            (Some(m), None) => Some((m * 2.0).min(s.max_qps)),
            (Some(m), Some(x)) if (x - m) / m * 100.0 <= s.precision_pct => None,
            (Some(m), Some(x)) => Some(((m + x) / 2.0).round()),
        };
    }

    pub fn met(&self) -> Option<f64> {
        self.met
    }

    pub fn missed(&self) -> Option<f64> {
        self.missed
    }

    /// The outcome in one sentence, from the curve measured.
    pub fn verdict(&self, curve: &[CapacityPoint]) -> String {
        let slo = format_ns(self.spec.slo_p99_ns as f64);
        let why =
            |rate: f64| curve.iter().find(|p| p.asked_qps == rate).and_then(|p| p.why.clone()).unwrap_or_default();
        match (self.met, self.missed) {
            (None, Some(x)) => format!("no rate met the SLO (p99 ≤ {slo}); lowest tried {x:.0} req/s: {}", why(x)),
            (None, None) => "no rate was tried".into(),
            (Some(m), None) => format!(
                "{m:.0} req/s met the SLO (p99 ≤ {slo}) and was the highest tried (search_max_qps): the capacity is higher"
            ),
            (Some(m), Some(x)) => format!("{m:.0} req/s meets the SLO (p99 ≤ {slo}); {x:.0} req/s did not: {}", why(x)),
        }
    }
}

/// One rate's point of the curve from its measurement (`index` in the results).
pub fn point(spec: &SearchSpec, asked: f64, m: &Measurement, index: usize) -> CapacityPoint {
    let achieved = m.metrics.requests_per_sec.or(m.metrics.transactions_per_sec);
    let answered = m.latency.as_ref().map_or(0, |l| l.count);
    let errors = m.metrics.errors.unwrap_or(0);
    let error_pct = (answered + errors > 0).then(|| 100.0 * errors as f64 / (answered + errors) as f64);
    let p99 = m.latency.as_ref().map(|l| l.p99_ns);
    let mut misses = Vec::new();
    match achieved {
        Some(a) if a >= ACHIEVED_SHARE * asked => {}
        Some(a) => misses.push(format!("achieved {a:.0} req/s, {:.1} % of the rate asked", 100.0 * a / asked)),
        None => misses.push("no rate was measured".into()),
    }
    match p99 {
        Some(p) if p <= spec.slo_p99_ns => {}
        Some(p) => {
            misses.push(format!("p99 {} over the SLO {}", format_ns(p as f64), format_ns(spec.slo_p99_ns as f64)))
        }
        None => misses.push("no latency was measured".into()),
    }
    if let (Some(allowed), Some(e)) = (spec.slo_error_pct, error_pct) {
        if e > allowed {
            misses.push(format!("{e:.2} % of requests failed, over {allowed} %"));
        }
    }
    CapacityPoint {
        asked_qps: asked,
        achieved_qps: achieved,
        p50_ns: m.latency.as_ref().map(|l| l.p50_ns),
        p99_ns: p99,
        error_pct,
        met: misses.is_empty(),
        why: (!misses.is_empty()).then(|| misses.join("; ")),
        measurement: Some(index),
    }
}

/// The point of a rate that produced no measurement: missed, with the reason.
pub fn failed_point(asked: f64, error: &str) -> CapacityPoint {
    CapacityPoint {
        asked_qps: asked,
        achieved_qps: None,
        p50_ns: None,
        p99_ns: None,
        error_pct: None,
        met: false,
        why: Some(format!("not measured: {error}")),
        measurement: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SearchSpec {
        SearchSpec {
            slo_p99_ns: 10_000_000,
            slo_error_pct: None,
            min_qps: 100.0,
            max_qps: 100_000.0,
            precision_pct: 5.0,
        }
    }

    /// Runs a search against a path that meets the SLO up to `capacity`.
    fn search(spec: SearchSpec, capacity: f64) -> (Search, Vec<f64>) {
        let mut s = Search::new(spec);
        let mut tried = Vec::new();
        while let Some(r) = s.next_rate() {
            tried.push(r);
            s.record(r, r <= capacity);
        }
        (s, tried)
    }

    #[test]
    fn steps_then_bisection_find_the_capacity_within_the_precision() {
        let (s, tried) = search(spec(), 2000.0);
        assert_eq!(&tried[..6], &[100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]);
        let met = s.met().unwrap();
        assert!((2000.0 * 0.95..=2000.0).contains(&met), "{met} after {tried:?}");
        assert!((s.missed().unwrap() - met) / met <= 0.05);
        assert!(tried.len() <= MAX_PROBES as usize);
    }

    #[test]
    fn a_path_that_misses_the_lowest_rate_says_so_and_one_above_the_range_says_it_is_higher() {
        let (s, tried) = search(spec(), 50.0);
        assert_eq!(tried, [100.0]);
        assert_eq!(s.met(), None);
        let why = failed_point(100.0, "p99 40ms over the SLO 10ms");
        assert!(s
            .verdict(&[why])
            .starts_with("no rate met the SLO (p99 ≤ 10.00ms); lowest tried 100 req/s: not measured"));
        let (s, tried) = search(spec(), f64::INFINITY);
        assert_eq!(*tried.last().unwrap(), 100_000.0);
        assert!(s.verdict(&[]).contains("the capacity is higher"), "{}", s.verdict(&[]));
    }

    #[test]
    fn a_search_is_bounded_in_probes_whatever_the_precision() {
        let (_, tried) = search(SearchSpec { precision_pct: 0.0, ..spec() }, 1234.5);
        assert_eq!(tried.len(), MAX_PROBES as usize);
    }

    #[test]
    fn a_rate_is_met_only_when_achieved_p99_and_errors_all_hold() {
        let mut m = crate::analysis::metrics::fixtures::latency(
            zonebench_agent::spec::TestKind::Http,
            "a",
            "b",
            0,
            &[1_000_000; 100],
        );
        m.metrics.requests_per_sec = Some(995.0);
        m.metrics.errors = Some(0);
        assert!(point(&spec(), 1000.0, &m, 0).met);
        m.metrics.requests_per_sec = Some(950.0);
        let p = point(&spec(), 1000.0, &m, 0);
        assert!(!p.met && p.why.as_deref().unwrap().contains("95.0 % of the rate asked"), "{p:?}");
        m.metrics.requests_per_sec = Some(1000.0);
        m.metrics.errors = Some(5);
        assert!(point(&spec(), 1000.0, &m, 0).met, "errors count only with slo_error_pct");
        let strict = SearchSpec { slo_error_pct: Some(1.0), ..spec() };
        let p = point(&strict, 1000.0, &m, 0);
        assert!(!p.met && p.why.as_deref().unwrap().contains("4.76 % of requests failed"), "{p:?}");
        let tight = SearchSpec { slo_p99_ns: 500_000, ..spec() };
        assert!(point(&tight, 1000.0, &m, 0).why.unwrap().contains("over the SLO"));
    }
}
