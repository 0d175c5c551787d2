//! The analysis commands of the CLI (`report`, `compare`, `history`, `trend`, `render`):
//! their arguments and what each does, kept out of `main.rs` so the run and lab commands
//! there stay small. Exit codes follow the project's rule: 0 ok, 1 error, 2 usage,
//! 3 regression.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::analysis::compare::{compare, CompareOptions};
use crate::analysis::output::{self, Format};
use crate::report::{self, trend, ReportOptions};
use crate::results::{history, load};

/// Exit code of a comparison that found a significant regression.
pub const EXIT_REGRESSION: u8 = 3;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run directory (or its results.json).
    pub run_dir: PathBuf,
    /// Also write every chart as PNG in RUN_DIR/charts/.
    #[arg(long)]
    pub png: bool,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The reference: a run directory, a results.json, or a baseline (results/baselines/NAME.json, or NAME).
    pub base: PathBuf,
    /// The run to judge: a run directory or a results.json.
    pub candidate: PathBuf,
    /// Relative change (percent) beyond which a metric counts as changed.
    #[arg(long, default_value_t = 5.0, value_parser = positive_f64)]
    pub threshold_pct: f64,
    /// Change in loss (percentage points) beyond which it counts as changed.
    #[arg(long, default_value_t = 0.5, value_parser = positive_f64)]
    pub loss_threshold_pp: f64,
    /// Significance level of the Mann-Whitney U test (used with ≥ 3 repeats per side).
    #[arg(long, default_value_t = 0.05, value_parser = alpha)]
    pub alpha: f64,
    /// Spread across repeats above which a figure is flagged noisy (default: the
    /// candidate's max_spread_pct, else 10).
    #[arg(long, value_parser = positive_f64)]
    pub max_spread_pct: Option<f64>,
    /// Compare only these metrics (repeatable; default all).
    #[arg(long = "metric", value_enum)]
    pub metrics: Vec<crate::analysis::metrics::Metric>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the output to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// Append a run's key figures to the history file.
    Add {
        /// A run directory (or its results.json).
        run_dir: PathBuf,
        #[arg(long, default_value = history::DEFAULT_FILE)]
        file: PathBuf,
    },
}

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

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

fn alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("{s:?} is not a significance level between 0 and 1")),
    }
}

pub fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let files = report::write_for(&a.run_dir, &ReportOptions { png: a.png })?;
    println!("{}", files.html.display());
    eprintln!("{} chart file(s) in {}", files.charts.len(), files.html.with_file_name("charts").display());
    Ok(ExitCode::SUCCESS)
}

pub fn compare_cmd(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let base = load::load(&a.base)?;
    let cand = load::load(&a.candidate)?;
    let opts = CompareOptions {
        threshold_pct: a.threshold_pct,
        loss_threshold_pp: a.loss_threshold_pp,
        alpha: a.alpha,
        max_spread_pct: a.max_spread_pct,
        metrics: a.metrics,
    };
    let (bp, cp) = (base.path.display().to_string(), cand.path.display().to_string());
    let c = compare((&bp, &base.results), (&cp, &cand.results), &opts);
    let text = output::render(&c, a.format);
    match &a.output {
        Some(p) => {
            crate::results::store::write_atomic(p, text.as_bytes())
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("{}", output::headline(&c));
        }
        None => print!("{text}"),
    }
    for d in &c.fingerprint_differences {
        if a.format != Format::Table || a.output.is_some() {
            eprintln!("warning: fingerprints differ in {}: {} → {}", d.field, d.base, d.candidate);
        }
    }
    Ok(if c.has_regression() { ExitCode::from(EXIT_REGRESSION) } else { ExitCode::SUCCESS })
}

pub fn history_cmd(cmd: HistoryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HistoryCommand::Add { run_dir, file } => {
            let run = load::load(&run_dir)?;
            let label = run
                .path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match history::add(&file, &run.results, &label)? {
                history::Added::Rows(n) => {
                    eprintln!("{}: added {n} figure(s) of {}", file.display(), run.path.display())
                }
                history::Added::AlreadyPresent => {
                    eprintln!(
                        "{}: this run ({} at {}) is already there; nothing added",
                        file.display(),
                        run.results.scenario,
                        run.results.started_at
                    )
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trend_cmd(a: TrendArgs) -> anyhow::Result<ExitCode> {
    let rows = history::read(&a.file)?;
    let chart =
        trend::chart(&rows, a.scenario.as_deref(), &a.metrics).with_context(|| format!("{}", a.file.display()))?;
    let svg = chart.to_svg()?;
    crate::results::store::write_atomic(&a.out, svg.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// `zonebench render --cronjob SCENARIO`: the nightly CronJob with its ServiceAccount and RBAC.
pub fn render_cronjob_cmd(scenario: &Path, opts: crate::render::cronjob::CronJobOptions) -> anyhow::Result<ExitCode> {
    match crate::render::cronjob::render(scenario, &opts) {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (crate::render::cronjob::RenderError::Option { .. } | crate::render::cronjob::RenderError::Scenario(_)),
        ) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
