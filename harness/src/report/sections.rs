//! What the report shows, computed from a run: per test a zone matrix, a table and a
//! percentile plot; the service-scaling sweep; the topology variants. Pure functions from
//! results to [`Chart`]s and table rows, so tests check the figures without drawing.
//!
//! Repeats and pairs are combined by merging histograms (percentiles are never averaged);
//! throughput and loss, which are rates, by their mean.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use zonebench_agent::spec::{LatencySummary, TestKind};

use super::chart::{Bars, Chart, Heatmap, Kind, Lines, Percentiles, Series, Units};
pub use crate::analysis::metrics::{connect_of, is_throughput, latency_of, merged};
use crate::analysis::metrics::{Key, Metric};
use crate::analysis::noise;
use crate::model::Measurement;
use crate::model::{NoiseReport, Via};
use crate::results::load::{LoadedRun, Locality};

/// A file-name-safe id.
pub fn slug(parts: &[&str]) -> String {
    let joined = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("-");
    let s: String =
        joined.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Points of an HdrHistogram percentile plot: 20 per decade of `1/(1-p)`, up to the
/// percentile the sample count can support, then the maximum.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    let mut pts = Vec::new();
    for k in 0.. {
        let x = 10f64.powf(k as f64 / 20.0);
        if x > n.max(1.0) {
            break;
        }
        let p = 1.0 - 1.0 / x;
        pts.push((p, h.value_at_quantile(p) as f64));
    }
    if n > 1.0 {
        pts.push((1.0 - 1.0 / n, h.max() as f64));
    }
    pts
}

/// One row of a test's table: a (client zone, server zone) pair over its repeats.
#[derive(Debug, Clone)]
pub struct PairRow {
    pub client_zone: String,
    pub server_zone: String,
    pub repeats: usize,
    pub latency: Option<[f64; 4]>,
    pub connect: Option<[f64; 2]>,
    pub throughput: Option<f64>,
    pub loss_pct: Option<f64>,
    pub errors: u64,
    /// Largest spread across repeats of any metric, and the metrics over the limit.
    pub spread_pct: Option<f64>,
    pub flagged: Vec<String>,
}

/// Everything the report shows for one test (one `name`, `via` and `variant`).
#[derive(Debug, Clone)]
pub struct TestSection {
    pub title: String,
    pub kind: TestKind,
    pub heatmap: Chart,
    pub percentiles: Vec<Chart>,
    pub rows: Vec<PairRow>,
}

/// Whether a measurement belongs to the service-scaling sweep.
pub fn is_sweep_point(m: &Measurement) -> bool {
    m.params.get("services").is_some_and(|v| v.as_u64().is_some())
}

pub fn test_sections(run: &LoadedRun, noise: &NoiseReport) -> Vec<TestSection> {
    let r = &run.results;
    let mut zones = r.fingerprint.zones.clone();
    for m in &r.measurements {
        for z in [&m.client.zone, &m.server.zone] {
            if !z.is_empty() && !zones.contains(z) {
                zones.push(z.clone());
            }
        }
    }
    // (name, via, variant) in first-seen order.
    let mut order: Vec<(String, Via, String)> = Vec::new();
    let mut by: BTreeMap<(String, Via, String), Vec<&Measurement>> = BTreeMap::new();
    for m in r.measurements.iter().filter(|m| !is_sweep_point(m)) {
        let k = (m.name.clone(), m.via, m.variant.clone());
        if !by.contains_key(&k) {
            order.push(k.clone());
        }
        by.entry(k).or_default().push(m);
    }
    let mut out = Vec::new();
    for k in order {
        let Some(ms) = by.get(&k) else { continue };
        let (name, via, variant) = &k;
        let kind = ms[0].test;
        let mut title = name.clone();
        if *via != Via::Pod {
            title.push_str(&format!(" via {via}"));
        }
        if !variant.is_empty() {
            title.push_str(&format!(" [{variant}]"));
        }
        let id = slug(&[name, if *via == Via::Pod { "" } else { via.as_str() }, variant]);

        let mut pairs: BTreeMap<(&str, &str), Vec<&Measurement>> = BTreeMap::new();
        for m in ms {
            pairs.entry((m.client.zone.as_str(), m.server.zone.as_str())).or_default().push(m);
        }
        let mut rows = Vec::new();
        let mut cells = vec![vec![None; zones.len()]; zones.len()];
        for cz in &zones {
            for sz in &zones {
                let Some(group) = pairs.get(&(cz.as_str(), sz.as_str())) else { continue };
                let row = pair_row(cz, sz, group, noise);
                let cell = if is_throughput(kind) { row.throughput } else { row.latency.map(|l| l[0]) };
                if let (Some(ri), Some(ci)) = (zones.iter().position(|z| z == cz), zones.iter().position(|z| z == sz)) {
                    cells[ri][ci] = cell;
                }
                rows.push(row);
            }
        }
        let (what, units) = if is_throughput(kind) { ("throughput", Units::Bps) } else { ("p50 latency", Units::Ns) };
        let n = zones.len() as u32;
        let heatmap = Chart {
            id: format!("{id}-matrix"),
            title: format!("{title}: {what}"),
            width: 160 + 110 * n.max(2),
            height: 130 + 80 * n.max(2),
            kind: Kind::Heatmap(Heatmap { zones: zones.clone(), cells, units, higher_is_worse: !is_throughput(kind) }),
        };
        let mut percentiles = Vec::new();
        if let Some(c) =
            same_vs_cross(&format!("{id}-percentiles"), &format!("{title}: latency by percentile"), ms, latency_of)
        {
            percentiles.push(c);
        }
        if let Some(c) =
            same_vs_cross(&format!("{id}-connect"), &format!("{title}: connect time by percentile"), ms, connect_of)
        {
            percentiles.push(c);
        }
        out.push(TestSection { title, kind, heatmap, percentiles, rows });
    }
    out
}

fn pair_row(cz: &str, sz: &str, group: &[&Measurement], noise: &NoiseReport) -> PairRow {
    let lat = merged(group.iter().copied(), latency_of)
        .map(|h| [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q) as f64));
    let con = merged(group.iter().copied(), connect_of).map(|h| [0.5, 0.99].map(|q| h.value_at_quantile(q) as f64));
    let throughput = mean(group.iter().filter_map(|m| Metric::Throughput.value(m)));
    let loss_pct = mean(group.iter().filter_map(|m| m.metrics.loss_pct));
    let errors = group.iter().filter_map(|m| m.metrics.errors).sum();
    let ng = noise::find(noise, &Key::of(group[0]));
    let spread_pct = ng.and_then(|g| g.metrics.values().map(|f| f.spread_pct).reduce(f64::max));
    PairRow {
        client_zone: cz.to_string(),
        server_zone: sz.to_string(),
        repeats: group.len(),
        latency: lat,
        connect: con,
        throughput,
        loss_pct,
        errors,
        spread_pct,
        flagged: ng.map(|g| g.flagged.clone()).unwrap_or_default(),
    }
}

/// Same-zone and cross-zone pairs merged into one curve each.
fn same_vs_cross(
    id: &str,
    title: &str,
    ms: &[&Measurement],
    pick: fn(&Measurement) -> Option<&LatencySummary>,
) -> Option<Chart> {
    let same = merged(ms.iter().copied().filter(|m| m.client.zone == m.server.zone), pick);
    let cross = merged(ms.iter().copied().filter(|m| m.client.zone != m.server.zone), pick);
    let mut series = Vec::new();
    if let Some(h) = same {
        series.push(Series {
            label: format!("same zone ({} samples)", h.len()),
            points: percentile_curve(&h),
            color: 0,
            dashed: false,
        });
    }
    if let Some(h) = cross {
        series.push(Series {
            label: format!("cross zone ({} samples)", h.len()),
            points: percentile_curve(&h),
            color: 1,
            dashed: false,
        });
    }
    (!series.is_empty()).then(|| Chart {
        id: id.to_string(),
        title: title.to_string(),
        width: 760,
        height: 420,
        kind: Kind::Percentiles(Percentiles { series }),
    })
}

/// One point of the service-scaling sweep.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub name: String,
    pub dataplane: String,
    pub services: u64,
    pub repeats: usize,
    pub connect: Option<[f64; 2]>,
    pub latency: Option<[f64; 2]>,
}

pub struct SweepSection {
    pub charts: Vec<Chart>,
    pub rows: Vec<SweepRow>,
}

/// Connect p50/p99 (or latency where a test has no connect time) against the Service
/// count, one line pair per dataplane (`variant`); `None` when the run has no sweep.
pub fn sweep_section(run: &LoadedRun) -> Option<SweepSection> {
    let points: Vec<&Measurement> = run.results.measurements.iter().filter(|m| is_sweep_point(m)).collect();
    if points.is_empty() {
        return None;
    }
    let mut groups: BTreeMap<(String, String, u64), Vec<&Measurement>> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    for m in &points {
        let services = m.params.get("services").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let dataplane = if m.variant.is_empty() { "(default)".to_string() } else { m.variant.clone() };
        groups.entry((m.name.clone(), dataplane, services)).or_default().push(m);
        if !names.contains(&m.name) {
            names.push(m.name.clone());
        }
    }
    let rows: Vec<SweepRow> = groups
        .iter()
        .map(|((name, dp, n), ms)| SweepRow {
            name: name.clone(),
            dataplane: dp.clone(),
            services: *n,
            repeats: ms.len(),
            connect: merged(ms.iter().copied(), connect_of).map(|h| [0.5, 0.99].map(|q| h.value_at_quantile(q) as f64)),
            latency: merged(ms.iter().copied(), latency_of).map(|h| [0.5, 0.99].map(|q| h.value_at_quantile(q) as f64)),
        })
        .collect();
    let mut charts = Vec::new();
    for name in &names {
        let mine: Vec<&SweepRow> = rows.iter().filter(|r| &r.name == name).collect();
        let use_connect = mine.iter().any(|r| r.connect.is_some());
        let mut dataplanes: Vec<&str> = mine.iter().map(|r| r.dataplane.as_str()).collect();
        dataplanes.dedup();
        let mut series = Vec::new();
        for (i, dp) in dataplanes.iter().enumerate() {
            for (qi, q) in ["p50", "p99"].iter().enumerate() {
                let pts: Vec<(f64, f64)> = mine
                    .iter()
                    .filter(|r| r.dataplane == *dp)
                    .filter_map(|r| {
                        let v = if use_connect { r.connect } else { r.latency }?;
                        Some((r.services as f64, v[qi]))
                    })
                    .collect();
                if !pts.is_empty() {
                    series.push(Series { label: format!("{dp} {q}"), points: pts, color: i, dashed: qi == 1 });
                }
            }
        }
        let what = if use_connect { "connect time" } else { "latency" };
        let (lo, hi) = mine.iter().fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.services), hi.max(r.services)));
        charts.push(Chart {
            id: slug(&[name, "service-sweep"]),
            title: format!("{name}: {what} against Service count, per dataplane"),
            width: 820,
            height: 460,
            kind: Kind::Lines(Lines {
                series,
                x_label: "Services in the cluster".into(),
                y_label: format!("{what} (solid p50, dashed p99)"),
                x_units: Units::Plain(""),
                y_units: Units::Ns,
                log_x: lo > 0 && hi >= lo.saturating_mul(10),
            }),
        });
    }
    Some(SweepSection { charts, rows })
}

/// One variant's figures for one client zone.
#[derive(Debug, Clone)]
pub struct VariantRow {
    pub name: String,
    pub variant: String,
    pub client_zone: String,
    pub in_zone_fraction: f64,
    pub answers_by_zone: BTreeMap<String, u64>,
    pub latency: Option<[f64; 2]>,
    pub cross_zone_bytes: Option<f64>,
    /// Cross-zone transfer cost per million requests, at the run's price per GB.
    pub usd_per_million: Option<f64>,
}

pub struct TopologySection {
    pub charts: Vec<Chart>,
    pub rows: Vec<VariantRow>,
    pub per_gb: f64,
}

/// The default price of a cross-zone GB (each direction), as the cost section's default.
pub const DEFAULT_PER_GB_CROSS_ZONE: f64 = 0.01;

/// In-zone fraction, latency and cost per topology variant; `None` without measured locality.
pub fn topology_section(run: &LoadedRun) -> Option<TopologySection> {
    let per_gb = run.cost_per_gb_cross_zone.unwrap_or(DEFAULT_PER_GB_CROSS_ZONE);
    let measured: Vec<(&Measurement, &Locality)> = run
        .results
        .measurements
        .iter()
        .zip(&run.locality)
        .filter(|(m, _)| !is_sweep_point(m))
        .filter_map(|(m, l)| Some((m, l.as_ref()?)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    let mut variants: Vec<String> = Vec::new();
    let mut zones: Vec<String> = Vec::new();
    type Group<'a> = Vec<(&'a Measurement, &'a Locality)>;
    let mut groups: BTreeMap<(String, String, String), Group<'_>> = BTreeMap::new();
    for (m, l) in &measured {
        let variant = if m.variant.is_empty() { "(none)".to_string() } else { m.variant.clone() };
        for (list, v) in [(&mut names, &m.name), (&mut variants, &variant), (&mut zones, &m.client.zone)] {
            if !list.contains(v) {
                list.push(v.clone());
            }
        }
        groups.entry((m.name.clone(), variant, m.client.zone.clone())).or_default().push((m, l));
    }
    let mut rows = Vec::new();
    for ((name, variant, cz), items) in &groups {
        let mut answers: BTreeMap<String, u64> = BTreeMap::new();
        for (_, l) in items {
            for (z, n) in &l.answers_by_zone {
                *answers.entry(z.clone()).or_default() += n;
            }
        }
        let total: u64 = answers.values().sum();
        // Weighted by answers when they are known, else the mean of the fractions.
        let in_zone_fraction = if total > 0 {
            answers.get(cz).copied().unwrap_or(0) as f64 / total as f64
        } else {
            items.iter().map(|(_, l)| l.in_zone_fraction).sum::<f64>() / items.len() as f64
        };
        let bytes: Option<f64> = items.iter().map(|(_, l)| l.cross_zone_bytes).sum();
        let requests: u64 = items
            .iter()
            .map(|(m, l)| {
                let a: u64 = l.answers_by_zone.values().sum();
                if a > 0 {
                    a
                } else {
                    m.servers.values().sum()
                }
            })
            .sum();
        let usd_per_million = bytes.filter(|_| requests > 0).map(|b| b / requests as f64 * 1e6 / 1e9 * per_gb);
        rows.push(VariantRow {
            name: name.clone(),
            variant: variant.clone(),
            client_zone: cz.clone(),
            in_zone_fraction,
            answers_by_zone: answers,
            latency: merged(items.iter().map(|(m, _)| *m), latency_of)
                .map(|h| [0.5, 0.99].map(|q| h.value_at_quantile(q) as f64)),
            cross_zone_bytes: bytes,
            usd_per_million,
        });
    }
    let mut charts = Vec::new();
    for name in &names {
        let vs: Vec<&String> =
            variants.iter().filter(|v| rows.iter().any(|r| &r.name == name && &r.variant == *v)).collect();
        let cats: Vec<String> = vs.iter().map(|v| (*v).clone()).collect();
        let find = |v: &str, z: &str| rows.iter().find(|r| &r.name == name && r.variant == v && r.client_zone == z);
        let fraction_series = zones
            .iter()
            .map(|z| (format!("client zone {z}"), vs.iter().map(|v| find(v, z).map(|r| r.in_zone_fraction)).collect()))
            .collect();
        charts.push(Chart {
            id: slug(&[name, "in-zone-fraction"]),
            title: format!("{name}: answers from the client's own zone, per variant"),
            width: 330 + 150 * cats.len() as u32,
            height: 420,
            kind: Kind::Bars(Bars {
                categories: cats.clone(),
                series: fraction_series,
                y_label: "in-zone fraction".into(),
                y_units: Units::Fraction,
                y_max: Some(1.1),
            }),
        });
        // Latency and cost per variant over all client zones.
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut cost = Vec::new();
        for v in &vs {
            let ms = measured
                .iter()
                .filter(|(m, _)| &m.name == name && (m.variant == **v || (m.variant.is_empty() && *v == "(none)")));
            let h = merged(ms.clone().map(|(m, _)| *m), latency_of);
            p50.push(h.as_ref().map(|h| h.value_at_quantile(0.5) as f64));
            p99.push(h.as_ref().map(|h| h.value_at_quantile(0.99) as f64));
            let mine: Vec<&VariantRow> = rows.iter().filter(|r| &r.name == name && &r.variant == *v).collect();
            let bytes: Option<f64> = mine.iter().map(|r| r.cross_zone_bytes).sum();
            let reqs: u64 = mine.iter().map(|r| r.answers_by_zone.values().sum::<u64>()).sum();
            let reqs = if reqs > 0 { reqs } else { ms.map(|(m, _)| m.servers.values().sum::<u64>()).sum() };
            cost.push(bytes.filter(|_| reqs > 0).map(|b| b / reqs as f64 * 1e6 / 1e9 * per_gb));
        }
        charts.push(Chart {
            id: slug(&[name, "variant-latency"]),
            title: format!("{name}: latency per variant"),
            width: 200 + 150 * cats.len() as u32,
            height: 420,
            kind: Kind::Bars(Bars {
                categories: cats.clone(),
                series: vec![("p50".into(), p50), ("p99".into(), p99)],
                y_label: "latency".into(),
                y_units: Units::Ns,
                y_max: None,
            }),
        });
        if cost.iter().any(Option::is_some) {
            charts.push(Chart {
                id: slug(&[name, "variant-cost"]),
                title: format!("{name}: cross-zone cost per million requests (${per_gb}/GB)"),
                width: 200 + 150 * cats.len() as u32,
                height: 420,
                kind: Kind::Bars(Bars {
                    categories: cats,
                    series: vec![("USD per 1M requests".into(), cost)],
                    y_label: "USD per million requests".into(),
                    y_units: Units::Usd,
                    y_max: None,
                }),
            });
        }
    }
    Some(TopologySection { charts, rows, per_gb })
}

/// The noise section to show: the run's own, else computed now (older results).
pub fn noise_of(run: &LoadedRun) -> NoiseReport {
    run.results
        .noise
        .clone()
        .unwrap_or_else(|| noise::compute(&run.results.measurements, noise::DEFAULT_MAX_SPREAD_PCT))
}
