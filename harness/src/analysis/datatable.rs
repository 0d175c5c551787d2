//! The run's "detailed data table", as benchmark reports print it (the CNI benchmark seed's):
//! one row per test and figure, one column per variant, so two clusters or configurations
//! of a run over several contexts (`--context A=… --context B=…`, each a variant) sit side
//! by side. Rates are the median over the repeats and pairs of a test; latency percentiles
//! come from the merged histogram, never from averaged percentiles. Capacity-search probes
//! are left out: their rates have their own table.

use zonebench_agent::spec::TestKind;
use zonebench_agent::units::{format_bps, format_ns};

use super::metrics::{latency_of, merged};
use super::stats::median;
use crate::model::{Measurement, RunResults};

/// Rows of figures by column.
#[derive(Debug, Clone, PartialEq)]
pub struct DataTable {
    /// The variants, in order of first appearance (`run` for measurements without one).
    pub columns: Vec<String>,
    pub rows: Vec<DataRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataRow {
    /// `tcp-throughput: throughput`.
    pub label: String,
    /// One cell per column; empty where the variant has no such measurement.
    pub cells: Vec<String>,
}

fn column_of(m: &Measurement) -> String {
    if m.variant.is_empty() {
        "run".into()
    } else {
        m.variant.clone()
    }
}

/// The figures one kind of test reports, each a label and how to read it off measurements.
type Figure = (&'static str, fn(&[&Measurement]) -> Option<String>);

fn median_of(ms: &[&Measurement], f: fn(&Measurement) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
    median(&v)
}

fn quantile(ms: &[&Measurement], q: f64) -> Option<String> {
    merged(ms.iter().copied(), latency_of).map(|h| format_ns(h.value_at_quantile(q) as f64))
}

fn figures(kind: TestKind) -> Vec<Figure> {
    let p50: Figure = ("p50", |ms| quantile(ms, 0.5));
    let p99: Figure = ("p99", |ms| quantile(ms, 0.99));
    match kind {
        TestKind::TcpStream => vec![("throughput", |ms| median_of(ms, |m| m.metrics.throughput_bps).map(format_bps))],
        TestKind::UdpStream => vec![
            ("throughput", |ms| median_of(ms, |m| m.metrics.throughput_bps).map(format_bps)),
            ("loss", |ms| median_of(ms, |m| m.metrics.loss_pct).map(|l| format!("{l:.2} %"))),
        ],
        TestKind::Http => vec![
            ("actual QPS", |ms| median_of(ms, |m| m.metrics.requests_per_sec).map(|q| format!("{q:.1}"))),
            p50,
            p99,
        ],
        TestKind::TcpRr | TestKind::UdpRr | TestKind::TcpCrr => vec![
            ("transactions/s", |ms| median_of(ms, |m| m.metrics.transactions_per_sec).map(|q| format!("{q:.0}"))),
            p50,
            p99,
        ],
    }
}

/// The table of `r`, or `None` for a run without measurements (besides search probes).
pub fn table(r: &RunResults) -> Option<DataTable> {
    let probes = r.search_probes();
    let ms: Vec<&Measurement> =
        r.measurements.iter().enumerate().filter(|(i, _)| !probes.contains(i)).map(|(_, m)| m).collect();
    let mut columns: Vec<String> = Vec::new();
    let mut tests: Vec<(String, TestKind)> = Vec::new();
    for m in &ms {
        let c = column_of(m);
        if !columns.contains(&c) {
            columns.push(c);
        }
        if !tests.iter().any(|(n, _)| *n == m.name) {
            tests.push((m.name.clone(), m.test));
        }
    }
    if ms.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for (name, kind) in &tests {
        for (figure, read) in figures(*kind) {
            let cells = columns
                .iter()
                .map(|c| {
                    let of: Vec<&Measurement> =
                        ms.iter().copied().filter(|m| &m.name == name && &column_of(m) == c).collect();
                    if of.is_empty() {
                        String::new()
                    } else {
                        read(&of).unwrap_or_default()
                    }
                })
                .collect();
            rows.push(DataRow { label: format!("{name}: {figure}"), cells });
        }
    }
    Some(DataTable { columns, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics::fixtures;

    #[test]
    fn variants_are_columns_rates_are_medians_and_percentiles_come_from_the_merge() {
        let mut ms = Vec::new();
        for (variant, bps) in [("A", 1e9), ("A", 3e9), ("A", 2e9), ("B", 5e9)] {
            let mut m = fixtures::throughput("a", "b", 0, bps);
            m.name = "tcp-throughput".into();
            m.variant = variant.into();
            ms.push(m);
        }
        let mut rr = fixtures::latency(TestKind::TcpRr, "a", "b", 0, &[1000, 2000, 3000, 4000]);
        rr.variant = "B".into();
        ms.push(rr);
        let t = table(&fixtures::run(ms)).unwrap();
        assert_eq!(t.columns, ["A", "B"]);
        let row = |label: &str| t.rows.iter().find(|r| r.label == label).unwrap().cells.clone();
        assert_eq!(row("tcp-throughput: throughput"), ["2.00 Gbit/s", "5.00 Gbit/s"]);
        assert_eq!(row("tcp-rr: p99")[0], "", "A has no tcp-rr");
        assert!(row("tcp-rr: p99")[1].ends_with("µs"), "{:?}", row("tcp-rr: p99"));
    }
}
