//! The run directory: `results.json` and `results.csv` rewritten atomically (temp file +
//! rename) after each measurement, so a crash, an error or Ctrl-C never leaves a torn or
//! missing file, and what was measured survives.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::model::{Measurement, RunResults};

pub struct RunStore {
    dir: PathBuf,
    pub results: RunResults,
    /// Measurements in the results.json on disk (the last write that succeeded), for the
    /// error that says what survives a write that did not.
    stored: usize,
}

impl RunStore {
    /// Creates the run directory (and its parents) and writes the initial, empty results.
    pub fn create(dir: &Path, results: RunResults) -> anyhow::Result<RunStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the run directory {}", dir.display()))?;
        let mut store = RunStore { dir: dir.to_path_buf(), results, stored: 0 };
        store.flush()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn push(&mut self, m: Measurement) -> anyhow::Result<()> {
        self.results.measurements.push(m);
        self.flush()
    }

    /// Writes both files atomically. A write that fails (a full disk) leaves the previous
    /// file whole and no temporary file behind; the error names the file and says how many
    /// measurements the results.json on disk still holds.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(&self.results)?;
        let path = self.dir.join("results.json");
        write_atomic(&path, &json).with_context(|| self.kept(&path))?;
        self.stored = self.results.measurements.len();
        let path = self.dir.join("results.csv");
        write_atomic(&path, &to_csv(&self.results.measurements)?).with_context(|| self.kept(&path))?;
        Ok(())
    }

    fn kept(&self, path: &Path) -> String {
        let n = self.stored;
        let what = if n == 1 { "measurement" } else { "measurements" };
        format!("writing {} (results.json keeps the {n} {what} stored before)", path.display())
    }

    /// Writes another file of the run (the scenario as run, a report) atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        write_atomic(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`: readers see
/// the old file or the new one, never half of one. On failure (a full disk) the temporary
/// file is removed, so a failed write costs no space and leaves no stray file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("writing {}", tmp.display())));
    }
    Ok(())
}

/// The CSV columns: one row per measurement, latency in ns, empty where a figure does not apply.
pub const CSV_HEADER: [&str; 24] = [
    "test",
    "name",
    "via",
    "variant",
    "repeat",
    "client_agent",
    "client_node",
    "client_zone",
    "server_agent",
    "server_node",
    "server_zone",
    "duration_ns",
    "throughput_bps",
    "transactions_per_sec",
    "requests_per_sec",
    "latency_p50_ns",
    "latency_p90_ns",
    "latency_p99_ns",
    "latency_p999_ns",
    "latency_mean_ns",
    "connect_p50_ns",
    "connect_p99_ns",
    "loss_pct",
    "errors",
];

pub fn to_csv(ms: &[Measurement]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for m in ms {
        let l = m.latency.as_ref();
        let c = m.connect.as_ref();
        w.write_record([
            m.test.to_string(),
            m.name.clone(),
            m.via.to_string(),
            m.variant.clone(),
            m.repeat.to_string(),
            m.client.agent.clone(),
            m.client.node.clone(),
            m.client.zone.clone(),
            m.server.agent.clone(),
            m.server.node.clone(),
            m.server.zone.clone(),
            m.duration_ns.to_string(),
            opt(m.metrics.throughput_bps.map(|v| format!("{v:.0}"))),
            opt(m.metrics.transactions_per_sec.map(|v| format!("{v:.2}"))),
            opt(m.metrics.requests_per_sec.map(|v| format!("{v:.2}"))),
            opt(l.map(|l| l.p50_ns.to_string())),
            opt(l.map(|l| l.p90_ns.to_string())),
            opt(l.map(|l| l.p99_ns.to_string())),
            opt(l.map(|l| l.p999_ns.to_string())),
            opt(l.map(|l| format!("{:.0}", l.mean_ns))),
            opt(c.map(|c| c.p50_ns.to_string())),
            opt(c.map(|c| c.p99_ns.to_string())),
            opt(m.metrics.loss_pct.map(|v| format!("{v:.4}"))),
            opt(m.metrics.errors.map(|v| v.to_string())),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("finishing the CSV: {e}"))
}
