//! `zonebench report RUN_DIR`: the run as one self-contained `report.html` (fingerprint,
//! validity, per test a zone matrix, a table and percentile plots; the service-scaling
//! sweep and the topology variants when the run measured them), every chart also as a
//! standalone SVG in `RUN_DIR/charts/`, and as PNG with `--png`. Written at the end of
//! every run as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod chart;
pub mod html;
pub mod sections;
pub mod trend;

use crate::results::load::{self, LoadedRun};
use crate::results::store::write_atomic;

#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Also write each chart as PNG.
    pub png: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Draw(#[from] chart::DrawError),
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
}

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub html: PathBuf,
    pub charts: Vec<PathBuf>,
}

/// Reads `RUN_DIR` (or a results.json) and writes the report beside it.
pub fn write_for(arg: &Path, opts: &ReportOptions) -> Result<ReportFiles, ReportError> {
    let run = load::load(arg)?;
    let dir = run.path.parent().map(Path::to_path_buf).unwrap_or_default();
    write(&dir, &run, opts)
}

/// Writes `dir/report.html` and `dir/charts/*` for `run`.
pub fn write(dir: &Path, run: &LoadedRun, opts: &ReportOptions) -> Result<ReportFiles, ReportError> {
    let noise = sections::noise_of(run);
    let tests = sections::test_sections(run, &noise);
    let sweep = sections::sweep_section(run);
    let topology = sections::topology_section(run);

    let charts_dir = dir.join("charts");
    std::fs::create_dir_all(&charts_dir).map_err(|e| io_err(&charts_dir, e))?;
    let mut svgs = BTreeMap::new();
    let mut written = Vec::new();
    let all = tests
        .iter()
        .flat_map(|t| std::iter::once(&t.heatmap).chain(&t.percentiles))
        .chain(sweep.iter().flat_map(|s| &s.charts))
        .chain(topology.iter().flat_map(|t| &t.charts));
    for c in all {
        let svg = c.to_svg()?;
        let path = charts_dir.join(format!("{}.svg", c.id));
        write_atomic(&path, svg.as_bytes()).map_err(|e| write_err(&path, e))?;
        written.push(path);
        if opts.png {
            let png = charts_dir.join(format!("{}.png", c.id));
            c.write_png(&png)?;
            written.push(png);
        }
        svgs.insert(c.id.clone(), svg);
    }
    let page = html::render(&html::Page {
        run,
        noise: &noise,
        tests: &tests,
        sweep: sweep.as_ref(),
        topology: topology.as_ref(),
        svgs: &svgs,
    });
    let html_path = dir.join("report.html");
    write_atomic(&html_path, page.as_bytes()).map_err(|e| write_err(&html_path, e))?;
    Ok(ReportFiles { html: html_path, charts: written })
}

fn io_err(p: &Path, e: std::io::Error) -> ReportError {
    ReportError::Write { path: p.display().to_string(), message: e.to_string() }
}

fn write_err(p: &Path, e: anyhow::Error) -> ReportError {
    ReportError::Write { path: p.display().to_string(), message: format!("{e:#}") }
}
