//! `zonebench compare BASE CANDIDATE`: a candidate run judged against a base run or a
//! baseline, in a table, Markdown, JSON or JUnit; exit 3 on a significant regression.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use zonebench::analysis::compare::{self, CompareOptions};
use zonebench::analysis::metrics::Metric;
use zonebench::analysis::output::{self, Format};
use zonebench::results::load;
use zonebench::results::store::write_atomic;

use super::Exit;

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
    pub metrics: Vec<Metric>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the output to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

pub fn compare(a: CompareArgs) -> anyhow::Result<Exit> {
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
    let c = compare::compare((&bp, &base.results), (&cp, &cand.results), &opts);
    let text = output::render(&c, a.format);
    match &a.output {
        Some(p) => {
            write_atomic(p, text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("{}", output::headline(&c));
        }
        None => print!("{text}"),
    }
    for d in &c.fingerprint_differences {
        if a.format != Format::Table || a.output.is_some() {
            eprintln!("warning: fingerprints differ in {}: {} → {}", d.field, d.base, d.candidate);
        }
    }
    Ok(if c.has_regression() { Exit::Regression } else { Exit::Success })
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
