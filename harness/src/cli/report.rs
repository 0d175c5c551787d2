//! `zonebench report RUN_DIR`: report.html (zone matrices, percentile plots, tables) and
//! charts/*.svg, from a run's results.

use std::path::PathBuf;

use clap::Args;
use zonebench::report::{self, ReportOptions};

use super::Exit;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run directory (or its results.json).
    pub run_dir: PathBuf,
    /// Also write every chart as PNG in RUN_DIR/charts/.
    #[arg(long)]
    pub png: bool,
}

pub fn report(a: ReportArgs) -> anyhow::Result<Exit> {
    let files = report::write_for(&a.run_dir, &ReportOptions { png: a.png })?;
    println!("{}", files.html.display());
    eprintln!("{} chart file(s) in {}", files.charts.len(), files.html.with_file_name("charts").display());
    Ok(Exit::Success)
}
