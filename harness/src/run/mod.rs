//! Executes a scenario on a platform: discover, expand the plan, deploy agents, run each
//! step through the client agent's control API, record measurements as they complete, and
//! tear down on every path (success, error, SIGINT/SIGTERM). Written only against
//! [`Platform`]; it never knows which platform it drives.
//!
//! - [`session`]: one platform's turn up to its first step, and the step runner both
//!   drivers record through; [`step`]: one step, start to measurement;
//! - two drivers: [`matrix`] (the plan's steps in order) and [`sweep`] (a `[sweep]` table:
//!   dataplanes × Service counts);
//! - [`store`]: the run directory and its fingerprint; [`progress`]: the bar on stderr.

use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::analysis::noise;
use crate::model::{now_rfc3339, RunResults, RunStatus};
use crate::platform::Platform;
use crate::report::{self, ReportOptions};
use crate::results::load::{self, LoadedRun};
use crate::results::store::RunStore;
use crate::scenario::Scenario;

mod matrix;
mod progress;
mod session;
mod step;
mod store;
pub mod sweep;

use session::Session;

pub struct RunOptions {
    /// The run directory (`results/runs/<time>-<scenario>` unless `--out`).
    pub out_dir: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// How a run ended, for the exit code and the summary.
pub struct RunOutcome {
    pub status: RunStatus,
    pub results: RunResults,
    pub dir: PathBuf,
}

/// Runs `scenario` on `platform`. Teardown always happens; results written so far stay.
pub async fn run<P: Platform>(
    platform: &mut P,
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let mut store: Option<RunStore> = None;
    let outcome = drive(platform, scenario, opts, cancel, None, &mut store).await;
    // Teardown on every path, before anything else can fail.
    let teardown = platform.teardown().await;
    finish(outcome, teardown, store, scenario, cancel)
}

/// Runs `scenario` on each labelled platform in turn (several clusters: `--context A=ctx-a
/// --context B=ctx-b`) into one run, each measurement's `variant` naming its platform. Each
/// platform is torn down when its turn ends; an error or a signal stops the remaining ones.
pub async fn run_each<P: Platform>(
    platforms: &mut [(String, P)],
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let mut store: Option<RunStore> = None;
    let mut outcome = Ok(());
    let mut teardown = Ok(());
    for (label, platform) in platforms.iter_mut() {
        if outcome.is_ok() && !cancel.is_cancelled() {
            let named = Some(label.as_str());
            outcome = drive(platform, scenario, opts, cancel, named, &mut store)
                .await
                .with_context(|| format!("platform {label}"));
        }
        // Every platform is torn down, run or not (teardown is safe before deploy).
        let t = platform.teardown().await.with_context(|| format!("platform {label}"));
        if teardown.is_ok() {
            teardown = t;
        }
    }
    finish(outcome, teardown, store, scenario, cancel)
}

fn finish(
    outcome: anyhow::Result<()>,
    teardown: anyhow::Result<()>,
    store: Option<RunStore>,
    scenario: &Scenario,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let (status, error) = match (&outcome, cancel.is_cancelled()) {
        (_, true) => (RunStatus::Interrupted, Some("interrupted by a signal".to_string())),
        (Ok(()), false) => (RunStatus::Complete, None),
        (Err(e), false) => (RunStatus::Failed, Some(format!("{e:#}"))),
    };
    let Some(mut store) = store else {
        // Nothing was measured and no directory exists yet: report the error itself.
        teardown.context("tearing down the platform")?;
        outcome?;
        anyhow::bail!("interrupted before anything was measured");
    };
    store.results.status = status;
    store.results.error = error;
    store.results.finished_at = Some(now_rfc3339());
    store.results.noise = Some(noise::compute(&store.results.measurements, scenario.defaults.max_spread_pct));
    store.results.cost = step::cost(&scenario.cost, &store.results.measurements);
    if let Err(flush) = store.flush() {
        // Most likely the same full or broken disk that ended the run: then the run's own
        // error says it all (which file, what results.json keeps); else say both.
        let flush = flush.context("writing the final results");
        return Err(match outcome {
            Err(e) if e.root_cause().to_string() == flush.root_cause().to_string() => e,
            Err(e) => anyhow::anyhow!("{e:#}; and {flush:#}"),
            Ok(()) => flush,
        });
    }
    // The results are stored: a report that cannot be drawn is logged, never fatal, and
    // never changes how the run ends.
    let loaded = LoadedRun {
        path: store.dir().join("results.json"),
        locality: vec![None; store.results.measurements.len()],
        results: store.results.clone(),
        cost_per_gb_cross_zone: None,
    };
    let loaded = load::load(store.dir()).unwrap_or(loaded);
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        report::write(store.dir(), &loaded, &ReportOptions::default()).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|_| Err("the chart code panicked".to_string()));
    if let Err(e) = drawn {
        tracing::warn!("the report was not written: {e}");
        eprintln!("warning: the report was not written ({e}); `zonebench report {}` retries", store.dir().display());
    }
    teardown.context("tearing down the platform")?;
    Ok(RunOutcome { status, results: store.results.clone(), dir: store.dir().to_path_buf() })
}

/// One platform's turn: the shared preamble, then the scenario's driver.
async fn drive<P: Platform>(
    platform: &mut P,
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: &CancellationToken,
    label: Option<&str>,
    store_slot: &mut Option<RunStore>,
) -> anyhow::Result<()> {
    let session = Session::open(platform, scenario, opts, cancel, label, store_slot).await?;
    match &scenario.sweep {
        Some(config) => sweep::drive(platform, session, config).await,
        None => matrix::drive(platform, session).await,
    }
}
