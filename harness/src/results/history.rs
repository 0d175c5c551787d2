//! The nightly history: `zonebench history add RUN_DIR` appends a run's key figures to a CSV
//! (`results/history.csv` by default), one row per figure, so runs with different tests
//! share one file and `zonebench trend` can draw any figure over time.
//!
//! Key figures per test, variant and class of pair (`same-zone`, `cross-zone`, `service`,
//! or `services=N` for the sweep): latency and connect p50/p99 from the merged histograms of
//! the class, throughput and loss as means.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use crate::analysis::metrics::{connect_of, is_throughput, latency_of, merged, Metric};
use crate::model::{Measurement, RunResults, Via};

pub const DEFAULT_FILE: &str = "results/history.csv";

pub const HEADER: [&str; 12] = [
    "started_at",
    "scenario",
    "status",
    "platform",
    "kernel",
    "zonebench_version",
    "run",
    "test",
    "variant",
    "class",
    "metric",
    "value",
];

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Row { path: String, line: u64, message: String },
}

/// One figure of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub started_at: String,
    pub scenario: String,
    pub status: String,
    pub platform: String,
    pub kernel: String,
    pub zonebench_version: String,
    pub run: String,
    pub test: String,
    pub variant: String,
    pub class: String,
    pub metric: String,
    pub value: f64,
}

impl Row {
    /// The series this figure belongs to, across runs.
    pub fn series(&self) -> String {
        let mut s = format!("{} {}", self.test, self.class);
        if !self.variant.is_empty() {
            s = format!("{} [{}] {}", self.test, self.variant, self.class);
        }
        s
    }
}

fn class_of(m: &Measurement) -> String {
    if let Some(n) = m.params.get("services").and_then(serde_json::Value::as_u64) {
        return format!("services={n}");
    }
    if m.via == Via::Service {
        return "service".into();
    }
    if m.client.zone == m.server.zone { "same-zone" } else { "cross-zone" }.into()
}

/// The key figures of a run.
pub fn figures(r: &RunResults, run_label: &str) -> Vec<Row> {
    let status = serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<&Measurement>> = BTreeMap::new();
    for m in &r.measurements {
        let k = (m.name.clone(), m.variant.clone(), class_of(m));
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(m);
    }
    let mut rows = Vec::new();
    for k in order {
        let Some(ms) = groups.get(&k) else { continue };
        let mut figs: Vec<(String, f64)> = Vec::new();
        if let Some(h) = merged(ms.iter().copied(), latency_of) {
            figs.push(("p50_ns".into(), h.value_at_quantile(0.5) as f64));
            figs.push(("p99_ns".into(), h.value_at_quantile(0.99) as f64));
        }
        if let Some(h) = merged(ms.iter().copied(), connect_of) {
            figs.push(("connect_p50_ns".into(), h.value_at_quantile(0.5) as f64));
            figs.push(("connect_p99_ns".into(), h.value_at_quantile(0.99) as f64));
        }
        let tput: Vec<f64> = Metric::Throughput.values(ms);
        if !tput.is_empty() {
            let name = if is_throughput(ms[0].test) {
                "throughput_bps"
            } else if ms[0].metrics.requests_per_sec.is_some() {
                "requests_per_sec"
            } else {
                "transactions_per_sec"
            };
            figs.push((name.into(), tput.iter().sum::<f64>() / tput.len() as f64));
        }
        let loss: Vec<f64> = Metric::LossPct.values(ms);
        if !loss.is_empty() {
            figs.push(("loss_pct".into(), loss.iter().sum::<f64>() / loss.len() as f64));
        }
        for (metric, value) in figs {
            rows.push(Row {
                started_at: r.started_at.clone(),
                scenario: r.scenario.clone(),
                status: status.clone(),
                platform: r.fingerprint.platform.clone(),
                kernel: r.fingerprint.kernel.clone(),
                zonebench_version: r.fingerprint.zonebench_version.clone(),
                run: run_label.to_string(),
                test: k.0.clone(),
                variant: k.1.clone(),
                class: k.2.clone(),
                metric,
                value,
            });
        }
    }
    rows
}

/// Reads a history file; a missing file is an empty history.
pub fn read(path: &Path) -> Result<Vec<Row>, HistoryError> {
    let shown = path.display().to_string();
    let file_err = |message: String| HistoryError::File { path: shown.clone(), message };
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rdr = csv::Reader::from_path(path).map_err(|e| file_err(e.to_string()))?;
    let header = rdr.headers().map_err(|e| file_err(e.to_string()))?.clone();
    if header.iter().collect::<Vec<_>>() != HEADER {
        return Err(file_err(format!(
            "not a zonebench history file: the header is {:?}, expected {:?}",
            header.iter().collect::<Vec<_>>().join(","),
            HEADER.join(",")
        )));
    }
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| file_err(e.to_string()))?;
        let line = rec.position().map_or(0, |p| p.line());
        let get = |i: usize| rec.get(i).unwrap_or_default().to_string();
        let value = get(11).parse::<f64>().map_err(|_| HistoryError::Row {
            path: shown.clone(),
            line,
            message: format!("value {:?} is not a number", get(11)),
        })?;
        rows.push(Row {
            started_at: get(0),
            scenario: get(1),
            status: get(2),
            platform: get(3),
            kernel: get(4),
            zonebench_version: get(5),
            run: get(6),
            test: get(7),
            variant: get(8),
            class: get(9),
            metric: get(10),
            value,
        });
    }
    Ok(rows)
}

/// What `add` did.
#[derive(Debug, PartialEq)]
pub enum Added {
    Rows(usize),
    /// The run (same scenario and start time) is already in the file.
    AlreadyPresent,
}

/// Appends a run's figures to `path` (created with its header when missing).
pub fn add(path: &Path, r: &RunResults, run_label: &str) -> Result<Added, HistoryError> {
    let shown = path.display().to_string();
    let file_err = |message: String| HistoryError::File { path: shown.clone(), message };
    let existing = read(path)?;
    if existing.iter().any(|row| row.started_at == r.started_at && row.scenario == r.scenario) {
        return Ok(Added::AlreadyPresent);
    }
    let rows = figures(r, run_label);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| file_err(e.to_string()))?;
    }
    let fresh = !path.exists() || std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if fresh {
        w.write_record(HEADER).map_err(|e| file_err(e.to_string()))?;
    }
    for row in &rows {
        w.write_record([
            row.started_at.as_str(),
            &row.scenario,
            &row.status,
            &row.platform,
            &row.kernel,
            &row.zonebench_version,
            &row.run,
            &row.test,
            &row.variant,
            &row.class,
            &row.metric,
            &format!("{}", row.value),
        ])
        .map_err(|e| file_err(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| file_err(e.to_string()))?;
    // One append of whole rows: a concurrent reader sees the old or the new file, and a
    // crash mid-write can at worst leave a partial last line, which `read` reports.
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| file_err(e.to_string()))?;
    f.write_all(&bytes).map_err(|e| file_err(e.to_string()))?;
    f.sync_all().map_err(|e| file_err(e.to_string()))?;
    Ok(Added::Rows(rows.len()))
}

#[cfg(test)]
mod tests {
    use zonebench_agent::spec::TestKind;

    use super::*;
    use crate::analysis::metrics::fixtures::*;

    fn sample(started: &str, p50_us: u64) -> RunResults {
        let mut r = run(vec![
            latency(TestKind::TcpRr, "a", "a", 0, &[p50_us * 1000]),
            latency(TestKind::TcpRr, "a", "b", 0, &[p50_us * 2000]),
            throughput("a", "b", 0, 2e9),
        ]);
        r.started_at = started.into();
        r
    }

    #[test]
    fn figures_are_per_test_and_class_of_pair() {
        let rows = figures(&sample("2026-01-01T00:00:00Z", 50), "r1");
        let find = |class: &str, metric: &str| {
            rows.iter().find(|r| r.test == "tcp-rr" && r.class == class && r.metric == metric).map(|r| r.value)
        };
        let same = find("same-zone", "p50_ns").unwrap();
        let cross = find("cross-zone", "p50_ns").unwrap();
        assert!((same - 50_000.0).abs() / 50_000.0 < 0.01, "{same}");
        assert!((cross - 100_000.0).abs() / 100_000.0 < 0.01, "{cross}");
        assert!(rows.iter().any(|r| r.test == "tcp-stream" && r.metric == "throughput_bps" && r.value == 2e9));
    }

    #[test]
    fn adding_appends_once_per_run_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("zb-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.csv");
        let Added::Rows(n1) = add(&path, &sample("2026-01-01T00:00:00Z", 50), "r1").unwrap() else { panic!() };
        assert_eq!(add(&path, &sample("2026-01-01T00:00:00Z", 50), "r1").unwrap(), Added::AlreadyPresent);
        let Added::Rows(n2) = add(&path, &sample("2026-01-02T00:00:00Z", 60), "r2").unwrap() else { panic!() };
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), n1 + n2);
        assert_eq!(rows[0].run, "r1");
        assert_eq!(rows.last().unwrap().run, "r2");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("started_at").count(), 1, "one header");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_foreign_csv_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("zb-history-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("other.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("other.csv") && e.contains("not a zonebench history file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
