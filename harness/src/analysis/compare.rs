//! `zonebench compare`: pairs the measurements of a base run and a candidate run by key,
//! computes the delta of each metric and decides, per metric, whether it regressed.
//!
//! The point estimate of a side is the median of its repeats' values (one repeat: that
//! value). With at least [`MIN_REPEATS_FOR_TEST`] repeats on both sides a change counts only
//! when it is beyond the threshold *and* a one-sided Mann-Whitney U test says the candidate's
//! repeats are worse than the base's at `alpha`; with fewer, the threshold alone decides
//! (there is nothing to estimate noise from). Fingerprint differences and differing
//! measured windows are warned about, and keys present on one side only are listed.

use std::collections::BTreeMap;

use serde::Serialize;
use zonebench_agent::spec::TestKind;

use super::metrics::{group, Key, Metric};
use super::noise::{figures, DEFAULT_MAX_SPREAD_PCT};
use super::stats::{mann_whitney, median};
use crate::model::{Measurement, RunResults};

/// Repeats per side from which a statistical test replaces the bare threshold.
pub const MIN_REPEATS_FOR_TEST: usize = 3;

#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// A relative change (percent) beyond which a metric counts as changed.
    pub threshold_pct: f64,
    /// The same for loss, in percentage points.
    pub loss_threshold_pp: f64,
    /// Significance level of the Mann-Whitney test.
    pub alpha: f64,
    /// Spread above which a side's repeats are flagged noisy; default: the candidate's
    /// `noise.max_spread_pct`, else [`DEFAULT_MAX_SPREAD_PCT`].
    pub max_spread_pct: Option<f64>,
    /// The metrics to compare (empty: all). A nightly gate may leave out the tails, which
    /// need many repeats to judge on a busy machine.
    pub metrics: Vec<Metric>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            threshold_pct: 5.0,
            loss_threshold_pp: 0.5,
            alpha: 0.05,
            max_spread_pct: None,
            metrics: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Worse beyond the threshold, and significant where repeats allow a test.
    Regression,
    /// Better beyond the threshold, and significant where repeats allow a test.
    Improvement,
    /// Beyond the threshold, but the repeats do not show it is more than noise.
    NotSignificant,
    Unchanged,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::NotSignificant => "not-significant",
            Verdict::Unchanged => "unchanged",
        }
    }
}

/// Which side of a comparison a run is.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub path: String,
    pub scenario: String,
    pub started_at: String,
    pub status: String,
}

impl RunInfo {
    pub fn of(path: &str, r: &RunResults) -> RunInfo {
        let status = serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        RunInfo { path: path.to_string(), scenario: r.scenario.clone(), started_at: r.started_at.clone(), status }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    pub field: String,
    pub base: String,
    pub candidate: String,
}

/// One metric of one key, both sides present.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub key: Key,
    #[serde(skip)]
    pub kind: TestKind,
    pub metric: Metric,
    pub base: f64,
    pub candidate: f64,
    pub base_repeats: usize,
    pub candidate_repeats: usize,
    /// Relative change in percent (`None` when the base is 0 or for loss).
    pub delta_pct: Option<f64>,
    /// `candidate - base`, in the metric's unit (percentage points for loss).
    pub delta: f64,
    /// `threshold` or `mann-whitney`.
    pub method: &'static str,
    /// One-sided p-value in the direction of the change, with `mann-whitney`.
    pub p_value: Option<f64>,
    pub base_spread_pct: Option<f64>,
    pub candidate_spread_pct: Option<f64>,
    /// A side's spread across repeats exceeds `max_spread_pct`.
    pub noisy: bool,
    pub verdict: Verdict,
}

impl Row {
    pub fn format_value(&self, v: f64) -> String {
        self.metric.format(v, self.kind)
    }

    /// `+30.0 %` (or `+1.200 pp` for loss).
    pub fn format_delta(&self) -> String {
        match self.delta_pct {
            Some(p) => format!("{p:+.1} %"),
            None if self.metric.is_absolute() => format!("{:+.3} pp", self.delta),
            None => "n/a".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub regressions: usize,
    pub improvements: usize,
    pub not_significant: usize,
    pub unchanged: usize,
    pub noisy: usize,
    pub only_in_base: usize,
    pub only_in_candidate: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: RunInfo,
    pub candidate: RunInfo,
    pub threshold_pct: f64,
    pub loss_threshold_pp: f64,
    pub alpha: f64,
    pub max_spread_pct: f64,
    pub fingerprint_differences: Vec<FieldDiff>,
    pub warnings: Vec<String>,
    pub counts: Counts,
    /// Every compared metric; regressions first.
    pub rows: Vec<Row>,
    pub only_in_base: Vec<String>,
    pub only_in_candidate: Vec<String>,
}

impl Comparison {
    pub fn has_regression(&self) -> bool {
        self.counts.regressions > 0
    }

    /// Rows of the named verdict.
    pub fn rows_with(&self, v: Verdict) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.verdict == v)
    }
}

pub fn compare(base: (&str, &RunResults), candidate: (&str, &RunResults), opts: &CompareOptions) -> Comparison {
    let (base_path, b) = base;
    let (cand_path, c) = candidate;
    let max_spread_pct =
        opts.max_spread_pct.or_else(|| c.noise.as_ref().map(|n| n.max_spread_pct)).unwrap_or(DEFAULT_MAX_SPREAD_PCT);
    let mut warnings = Vec::new();
    for (side, r) in [("base", b), ("candidate", c)] {
        if r.status != crate::model::RunStatus::Complete {
            warnings.push(format!("the {side} run did not complete ({}); it holds fewer measurements", status_str(r)));
        }
    }
    let fingerprint_differences = fingerprint_diff(b, c);

    let base_groups = group(&b.measurements);
    let cand_groups: BTreeMap<Key, Vec<&Measurement>> = group(&c.measurements).into_iter().collect();
    let base_keys: BTreeMap<&Key, ()> = base_groups.iter().map(|(k, _)| (k, ())).collect();

    let mut rows = Vec::new();
    let mut only_in_base = Vec::new();
    let mut windows: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (key, bms) in &base_groups {
        let Some(cms) = cand_groups.get(key) else {
            only_in_base.push(key.to_string());
            continue;
        };
        if let (Some(bw), Some(cw)) = (window_ms(bms), window_ms(cms)) {
            if bw != cw {
                windows.entry(key.name.clone()).or_insert((bw, cw));
            }
        }
        let (bf, cf) = (figures(bms), figures(cms));
        for metric in Metric::ALL.into_iter().filter(|m| opts.metrics.is_empty() || opts.metrics.contains(m)) {
            let (bv, cv) = (metric.values(bms), metric.values(cms));
            let (Some(bm), Some(cm)) = (median(&bv), median(&cv)) else { continue };
            let spread = |f: &Option<BTreeMap<String, crate::model::NoiseFigure>>| {
                f.as_ref().and_then(|f| f.get(metric.as_str())).map(|x| x.spread_pct)
            };
            let (bs, cs) = (spread(&bf), spread(&cf));
            let noisy = bs.is_some_and(|s| s > max_spread_pct) || cs.is_some_and(|s| s > max_spread_pct);
            let (verdict, method, p_value, delta_pct) = decide(metric, &bv, &cv, bm, cm, opts);
            rows.push(Row {
                label: key.to_string(),
                key: key.clone(),
                kind: bms[0].test,
                metric,
                base: bm,
                candidate: cm,
                base_repeats: bv.len(),
                candidate_repeats: cv.len(),
                delta_pct,
                delta: cm - bm,
                method,
                p_value,
                base_spread_pct: bs,
                candidate_spread_pct: cs,
                noisy,
                verdict,
            });
        }
    }
    let only_in_candidate: Vec<String> = group(&c.measurements)
        .into_iter()
        .filter(|(k, _)| !base_keys.contains_key(k))
        .map(|(k, _)| k.to_string())
        .collect();
    for (name, (bw, cw)) in windows {
        warnings.push(format!(
            "{name}: measured windows differ (base {bw} ms, candidate {cw} ms); percentiles of shorter runs are less certain"
        ));
    }
    // Stable sort: verdict order, then the order measurements were taken.
    rows.sort_by_key(|r| r.verdict);
    let mut counts =
        Counts { only_in_base: only_in_base.len(), only_in_candidate: only_in_candidate.len(), ..Default::default() };
    for r in &rows {
        match r.verdict {
            Verdict::Regression => counts.regressions += 1,
            Verdict::Improvement => counts.improvements += 1,
            Verdict::NotSignificant => counts.not_significant += 1,
            Verdict::Unchanged => counts.unchanged += 1,
        }
        counts.noisy += usize::from(r.noisy);
    }
    Comparison {
        base: RunInfo::of(base_path, b),
        candidate: RunInfo::of(cand_path, c),
        threshold_pct: opts.threshold_pct,
        loss_threshold_pp: opts.loss_threshold_pp,
        alpha: opts.alpha,
        max_spread_pct,
        fingerprint_differences,
        warnings,
        counts,
        rows,
        only_in_base,
        only_in_candidate,
    }
}

/// The verdict for one metric: `(verdict, method, p-value, relative delta)`.
fn decide(
    metric: Metric,
    base: &[f64],
    cand: &[f64],
    bm: f64,
    cm: f64,
    opts: &CompareOptions,
) -> (Verdict, &'static str, Option<f64>, Option<f64>) {
    let (change, limit, delta_pct) = if metric.is_absolute() {
        (cm - bm, opts.loss_threshold_pp, None)
    } else if bm == 0.0 {
        // No relative change from zero; a zero baseline only happens for empty figures.
        return (Verdict::Unchanged, "threshold", None, None);
    } else {
        let pct = (cm - bm) / bm.abs() * 100.0;
        (pct, opts.threshold_pct, Some(pct))
    };
    // Positive `worse` means the candidate is worse.
    let worse = if metric.higher_is_worse() { change } else { -change };
    let direction = if worse > limit {
        Some(true)
    } else if -worse > limit {
        Some(false)
    } else {
        None
    };
    let tested = base.len() >= MIN_REPEATS_FOR_TEST && cand.len() >= MIN_REPEATS_FOR_TEST;
    if !tested {
        let v = match direction {
            Some(true) => Verdict::Regression,
            Some(false) => Verdict::Improvement,
            None => Verdict::Unchanged,
        };
        return (v, "threshold", None, delta_pct);
    }
    let Some(mw) = mann_whitney(cand, base) else {
        return (Verdict::Unchanged, "mann-whitney", None, delta_pct);
    };
    // The p-value of "the candidate is worse" and of "the candidate is better".
    let (p_worse, p_better) =
        if metric.higher_is_worse() { (mw.p_greater, mw.p_less) } else { (mw.p_less, mw.p_greater) };
    let (v, p) = match direction {
        Some(true) if p_worse <= opts.alpha => (Verdict::Regression, p_worse),
        Some(true) => (Verdict::NotSignificant, p_worse),
        Some(false) if p_better <= opts.alpha => (Verdict::Improvement, p_better),
        Some(false) => (Verdict::NotSignificant, p_better),
        None => (Verdict::Unchanged, if worse >= 0.0 { p_worse } else { p_better }),
    };
    (v, "mann-whitney", Some(p), delta_pct)
}

/// The measured window of a group, when all its repeats share one.
fn window_ms(ms: &[&Measurement]) -> Option<u64> {
    let w = ms.first()?.params.get("duration_ms")?.as_u64()?;
    ms.iter().all(|m| m.params.get("duration_ms").and_then(serde_json::Value::as_u64) == Some(w)).then_some(w)
}

fn status_str(r: &RunResults) -> String {
    serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Fingerprint fields that name one run's own objects and so differ between any two runs.
const PER_RUN_FIELDS: [&str; 1] = ["extra.lab_id"];

/// Field-by-field differences of the two fingerprints (`extra.*` flattened), ignoring the
/// per-run ids of [`PER_RUN_FIELDS`].
pub fn fingerprint_diff(b: &RunResults, c: &RunResults) -> Vec<FieldDiff> {
    let flat = |r: &RunResults| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&r.fingerprint) {
            for (k, v) in map {
                match v {
                    serde_json::Value::Object(inner) => {
                        for (ik, iv) in inner {
                            out.insert(format!("{k}.{ik}"), plain(&iv));
                        }
                    }
                    v => {
                        out.insert(k, plain(&v));
                    }
                }
            }
        }
        out
    };
    let (fb, fc) = (flat(b), flat(c));
    let mut fields: Vec<&String> = fb.keys().chain(fc.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| !PER_RUN_FIELDS.contains(&f.as_str()) && fb.get(*f) != fc.get(*f))
        .map(|f| FieldDiff {
            field: f.clone(),
            base: fb.get(f).cloned().unwrap_or_else(|| "(absent)".into()),
            candidate: fc.get(f).cloned().unwrap_or_else(|| "(absent)".into()),
        })
        .collect()
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(","),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::fixtures::*;
    use super::*;

    fn rr(cz: &str, sz: &str, repeat: u32, p50_us: u64) -> Measurement {
        let v: Vec<u64> = (0..100).map(|i| p50_us * 1000 + i).collect();
        latency(TestKind::TcpRr, cz, sz, repeat, &v)
    }

    #[test]
    fn a_run_compared_with_itself_has_no_regression() {
        let r = run(vec![rr("a", "a", 0, 50), rr("a", "b", 0, 100), throughput("a", "b", 0, 1e9)]);
        let c = compare(("b", &r), ("c", &r), &CompareOptions::default());
        assert!(!c.has_regression());
        assert_eq!(c.counts.unchanged, c.rows.len());
        assert!(c.fingerprint_differences.is_empty());
        assert!(c.only_in_base.is_empty() && c.only_in_candidate.is_empty());
    }

    #[test]
    fn a_single_repeat_regression_is_decided_by_the_threshold() {
        let b = run(vec![rr("a", "a", 0, 50), rr("a", "b", 0, 100)]);
        let c = run(vec![rr("a", "a", 0, 51), rr("a", "b", 0, 130)]);
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        let reg: Vec<_> = cmp.rows_with(Verdict::Regression).collect();
        assert!(reg.iter().all(|r| r.label == "tcp-rr a→b"), "{reg:?}");
        assert!(reg.iter().any(|r| r.metric == Metric::LatencyP50 && r.method == "threshold"));
        // Throughput (transactions/s) fell too, and counts as a regression.
        assert!(reg.iter().any(|r| r.metric == Metric::Throughput));
        assert!((reg[0].delta_pct.unwrap() - 30.0).abs() < 1.5 || reg[0].metric != Metric::LatencyP50);
    }

    #[test]
    fn lower_throughput_is_a_regression_and_higher_an_improvement() {
        let b = run(vec![throughput("a", "b", 0, 1e9), throughput("b", "a", 0, 1e9)]);
        let c = run(vec![throughput("a", "b", 0, 0.8e9), throughput("b", "a", 0, 1.2e9)]);
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        assert_eq!(cmp.counts.regressions, 1);
        assert_eq!(cmp.counts.improvements, 1);
        assert_eq!(cmp.rows[0].label, "tcp-stream a→b");
    }

    #[test]
    fn with_three_repeats_overlapping_samples_are_not_significant() {
        // Medians differ by 10 %, but the repeats interleave: noise, not a regression.
        let b = run(vec![rr("a", "b", 0, 100), rr("a", "b", 1, 125), rr("a", "b", 2, 90)]);
        let c = run(vec![rr("a", "b", 0, 110), rr("a", "b", 1, 95), rr("a", "b", 2, 120)]);
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        let p50 = cmp.rows.iter().find(|r| r.metric == Metric::LatencyP50).unwrap();
        assert_eq!(p50.method, "mann-whitney");
        assert_eq!(p50.verdict, Verdict::NotSignificant);
        assert!(p50.noisy);
        assert!(!cmp.has_regression());
    }

    #[test]
    fn with_three_repeats_a_separated_shift_is_a_regression() {
        let b = run(vec![rr("a", "b", 0, 100), rr("a", "b", 1, 101), rr("a", "b", 2, 99)]);
        let c = run(vec![rr("a", "b", 0, 130), rr("a", "b", 1, 131), rr("a", "b", 2, 129)]);
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        let p50 = cmp.rows.iter().find(|r| r.metric == Metric::LatencyP50).unwrap();
        assert_eq!(p50.verdict, Verdict::Regression);
        assert!((p50.p_value.unwrap() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn loss_is_compared_in_percentage_points() {
        let mut b1 = throughput("a", "b", 0, 1e9);
        b1.test = TestKind::UdpStream;
        b1.name = "udp-stream".into();
        b1.metrics.loss_pct = Some(0.0);
        let mut c1 = b1.clone();
        c1.metrics.loss_pct = Some(2.0);
        let cmp = compare(("b", &run(vec![b1])), ("c", &run(vec![c1])), &CompareOptions::default());
        let loss = cmp.rows.iter().find(|r| r.metric == Metric::LossPct).unwrap();
        assert_eq!(loss.verdict, Verdict::Regression);
        assert_eq!(loss.format_delta(), "+2.000 pp");
    }

    #[test]
    fn differing_fingerprints_and_one_sided_keys_are_reported() {
        let b = run(vec![rr("a", "a", 0, 50), rr("a", "b", 0, 100)]);
        let mut c = run(vec![rr("a", "a", 0, 50), rr("b", "a", 0, 100)]);
        c.fingerprint.kernel = "6.12".into();
        c.fingerprint.extra.insert("inter_zone_delay".into(), "500us".into());
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        let fields: Vec<_> = cmp.fingerprint_differences.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, vec!["extra.inter_zone_delay", "kernel"]);
        assert_eq!(cmp.only_in_base, vec!["tcp-rr a→b"]);
        assert_eq!(cmp.only_in_candidate, vec!["tcp-rr b→a"]);
    }

    #[test]
    fn only_the_chosen_metrics_are_compared() {
        let b = run(vec![rr("a", "b", 0, 100)]);
        let c = run(vec![rr("a", "b", 0, 130)]);
        let opts = CompareOptions { metrics: vec![Metric::Throughput], ..Default::default() };
        let cmp = compare(("b", &b), ("c", &c), &opts);
        assert!(cmp.rows.iter().all(|r| r.metric == Metric::Throughput));
        assert_eq!(cmp.counts.regressions, 1);
    }

    #[test]
    fn a_per_run_lab_id_is_no_fingerprint_difference() {
        let b = run(vec![rr("a", "b", 0, 100)]);
        let mut c = b.clone();
        c.fingerprint.extra.insert("lab_id".into(), "zb1234".into());
        assert!(compare(("b", &b), ("c", &c), &CompareOptions::default()).fingerprint_differences.is_empty());
    }

    #[test]
    fn differing_measured_windows_are_warned_about_but_still_paired() {
        let b = run(vec![rr("a", "b", 0, 100)]);
        let mut c = b.clone();
        c.measurements[0].params.insert("duration_ms".into(), serde_json::json!(300));
        let cmp = compare(("b", &b), ("c", &c), &CompareOptions::default());
        assert!(cmp.only_in_base.is_empty());
        assert!(cmp.warnings.iter().any(|w| w.contains("measured windows differ")), "{:?}", cmp.warnings);
    }
}
