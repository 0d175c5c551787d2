//! `zonebench trend`: the history's figures over time, one SVG panel per metric.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use zonebench::report::trend;
use zonebench::results::history;
use zonebench::results::store::write_atomic;

use super::Exit;

#[derive(Args, Debug)]
pub struct TrendArgs {
    /// The history file.
    #[arg(long, default_value = history::DEFAULT_FILE)]
    pub file: PathBuf,
    /// Where to write the SVG.
    #[arg(long, default_value = "trend.svg")]
    pub out: PathBuf,
    /// Only this scenario's runs.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Metrics to draw, one panel each (p50_ns, p99_ns, connect_p50_ns, throughput_bps,
    /// transactions_per_sec, requests_per_sec, loss_pct).
    #[arg(long = "metric", default_values_t = trend::DEFAULT_METRICS.map(String::from))]
    pub metrics: Vec<String>,
}

pub fn trend(a: TrendArgs) -> anyhow::Result<Exit> {
    let rows = history::read(&a.file)?;
    let chart =
        trend::chart(&rows, a.scenario.as_deref(), &a.metrics).with_context(|| format!("{}", a.file.display()))?;
    let svg = chart.to_svg()?;
    write_atomic(&a.out, svg.as_bytes()).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", a.out.display());
    Ok(Exit::Success)
}
