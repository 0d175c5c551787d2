//! The table printed at the end of a run: per test, a client zone × server zone matrix of
//! p50 latency (request/response tests) or throughput (stream tests). Repeats are combined
//! by merging histograms (percentiles are never averaged) or averaging throughput.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use zonebench_agent::histogram;
use zonebench_agent::spec::TestKind;
use zonebench_agent::units::{format_bps, format_ns};

use crate::model::{Measurement, RunResults};

/// What a test's matrix shows.
fn is_throughput(kind: TestKind) -> bool {
    matches!(kind, TestKind::TcpStream | TestKind::UdpStream)
}

/// One cell's value: merged p50 in ns, or mean throughput in bit/s.
pub fn cell_value(ms: &[&Measurement]) -> Option<f64> {
    let kind = ms.first()?.test;
    if is_throughput(kind) {
        let v: Vec<f64> = ms.iter().filter_map(|m| m.metrics.throughput_bps).collect();
        return (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    }
    let mut merged = histogram::new();
    for m in ms {
        let h = histogram::decode(&m.latency.as_ref()?.histogram).ok()?;
        histogram::merge(&mut merged, &h);
    }
    (!merged.is_empty()).then(|| merged.value_at_quantile(0.5) as f64)
}

pub fn render(r: &RunResults) -> String {
    let mut out = String::new();
    let zones = &r.fingerprint.zones;
    // Tests (and variants: routing, or the cluster of a multi-cluster run) in the order they first appear.
    let mut names: Vec<(&str, &str, TestKind)> = Vec::new();
    for m in &r.measurements {
        if !names.iter().any(|(n, v, _)| *n == m.name && *v == m.variant) {
            names.push((&m.name, &m.variant, m.test));
        }
    }
    for (name, variant, kind) in names {
        let what = if is_throughput(kind) { "throughput" } else { "p50 latency" };
        let shown = if variant.is_empty() { name.to_string() } else { format!("{name} [{variant}]") };
        let _ = writeln!(out, "\n{shown}: {what} (rows: client zone, columns: server zone that answered)");
        let mut cells: BTreeMap<(&str, &str), Vec<&Measurement>> = BTreeMap::new();
        for m in r.measurements.iter().filter(|m| m.name == name && m.variant == variant) {
            cells.entry((&m.client.zone, &m.server.zone)).or_default().push(m);
        }
        let _ = write!(out, "  {:>8}", "");
        for z in zones {
            let _ = write!(out, " {z:>14}");
        }
        out.push('\n');
        for cz in zones {
            let _ = write!(out, "  {cz:>8}");
            for sz in zones {
                let v = cells.get(&(cz.as_str(), sz.as_str())).and_then(|ms| cell_value(ms));
                let s = match v {
                    None => "-".to_string(),
                    Some(v) if is_throughput(kind) => format_bps(v),
                    Some(v) => format_ns(v),
                };
                let _ = write!(out, " {s:>14}");
            }
            out.push('\n');
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\n{} step(s) failed:", r.failures.len());
        for f in &r.failures {
            let _ = writeln!(out, "  {} {} → {}: {}", f.name, f.client, f.server, f.error);
        }
    }
    out
}
