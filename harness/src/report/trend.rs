//! `zonebench trend`: the history file's figures over time, one panel per metric, one line
//! per series (test, variant, class of pair), so a drift or a step shows at a glance.

use std::collections::BTreeMap;

use super::chart::{Chart, Kind, Lines, Series, Units};
use crate::results::history::Row;

/// The metrics drawn when none are named.
pub const DEFAULT_METRICS: [&str; 2] = ["p50_ns", "throughput_bps"];

#[derive(Debug, thiserror::Error)]
pub enum TrendError {
    #[error("the history has no rows{0}")]
    Empty(String),
    #[error("{row}: started_at {value:?} is not an RFC 3339 time")]
    BadTime { row: String, value: String },
}

fn units_of(metric: &str) -> Units {
    if metric.ends_with("_ns") {
        Units::Ns
    } else if metric.ends_with("_bps") {
        Units::Bps
    } else if metric.ends_with("_pct") {
        Units::Plain("%")
    } else if metric.ends_with("_per_sec") {
        Units::Plain("/s")
    } else {
        Units::Plain("")
    }
}

/// The trend chart of `rows` (optionally one scenario's) for `metrics`.
pub fn chart(rows: &[Row], scenario: Option<&str>, metrics: &[String]) -> Result<Chart, TrendError> {
    let rows: Vec<&Row> = rows.iter().filter(|r| scenario.is_none_or(|s| r.scenario == s)).collect();
    if rows.is_empty() {
        return Err(TrendError::Empty(scenario.map(|s| format!(" for scenario {s:?}")).unwrap_or_default()));
    }
    let scenarios: Vec<&str> = {
        let mut v: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    let mut panels = Vec::new();
    for metric in metrics {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in rows.iter().filter(|r| &r.metric == metric) {
            let t = humantime::parse_rfc3339_weak(&r.started_at)
                .map_err(|_| TrendError::BadTime { row: r.series(), value: r.started_at.clone() })?;
            let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let name = if scenarios.len() > 1 { format!("{}: {}", r.scenario, r.series()) } else { r.series() };
            series.entry(name).or_default().push((secs, r.value));
        }
        if series.is_empty() {
            continue;
        }
        let series = series
            .into_iter()
            .enumerate()
            .map(|(i, (label, mut points))| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series { label, points, color: i, dashed: i >= super::chart::PALETTE.len() }
            })
            .collect();
        panels.push((
            metric.clone(),
            Kind::Lines(Lines {
                series,
                x_label: "run started (UTC)".into(),
                y_label: metric.clone(),
                x_units: Units::Time,
                y_units: units_of(metric),
                log_x: false,
            }),
        ));
    }
    if panels.is_empty() {
        return Err(TrendError::Empty(format!(" with the metric(s) {}", metrics.join(", "))));
    }
    let title = match scenario {
        Some(s) => format!("zonebench trend: {s}"),
        None => format!("zonebench trend: {}", scenarios.join(", ")),
    };
    let height = 440 * panels.len() as u32;
    Ok(Chart { id: "trend".into(), title, width: 1000, height, kind: Kind::Stack(panels) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, metric: &str, v: f64) -> Row {
        Row {
            started_at: t.into(),
            scenario: "quick".into(),
            status: "complete".into(),
            platform: "lab".into(),
            kernel: "6.1".into(),
            zonebench_version: "0.1.0".into(),
            run: "r".into(),
            test: "tcp-rr".into(),
            variant: String::new(),
            class: "cross-zone".into(),
            metric: metric.into(),
            value: v,
        }
    }

    #[test]
    fn a_trend_has_a_panel_per_metric_and_a_point_per_run() {
        let rows = vec![
            row("2026-01-02T02:00:00Z", "p50_ns", 110_000.0),
            row("2026-01-01T02:00:00Z", "p50_ns", 100_000.0),
            row("2026-01-01T02:00:00Z", "throughput_bps", 1e9),
        ];
        let c = chart(&rows, None, &DEFAULT_METRICS.map(String::from)).unwrap();
        let Kind::Stack(panels) = &c.kind else { panic!("{:?}", c.kind) };
        assert_eq!(panels.len(), 2);
        let Kind::Lines(l) = &panels[0].1 else { panic!() };
        assert_eq!(l.series[0].label, "tcp-rr cross-zone");
        assert_eq!(l.series[0].points.len(), 2);
        assert!(l.series[0].points[0].0 < l.series[0].points[1].0, "sorted by time");
        let svg = c.to_svg().unwrap();
        assert!(roxmltree::Document::parse(&svg).is_ok());
    }

    #[test]
    fn an_unknown_scenario_is_an_error_that_names_it() {
        let rows = vec![row("2026-01-01T02:00:00Z", "p50_ns", 1.0)];
        let e = chart(&rows, Some("nightly"), &["p50_ns".into()]).unwrap_err().to_string();
        assert!(e.contains("\"nightly\""), "{e}");
    }
}
