//! What both drivers share: one platform's turn of a run up to its first step (discover,
//! plan, check the platform can do what the scenario asks, open the store, deploy), and the
//! step runner that records each step's measurement or failure. A driver (matrix or sweep)
//! only decides which steps run, through which Services, and what a measurement carries.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::progress::{progress_bar, BarProgress};
use super::step::{measurement, run_step, server_down, unanswered, until_cancelled};
use super::{store, RunOptions};
use crate::model::{DeployedAgent, DeployedService, Failure, Measurement};
use crate::plan::{self, Plan, Step};
use crate::platform::{Capability, Platform, Unsupported};
use crate::results::store::RunStore;
use crate::scenario::Scenario;

/// One platform's turn, deployed and ready for its first step.
pub(super) struct Session<'a> {
    pub scenario: &'a Scenario,
    pub cancel: &'a CancellationToken,
    /// The platform's label in a run over several (`--context A=…`).
    pub label: Option<&'a str>,
    pub plan: Plan,
    pub store: &'a mut RunStore,
    pub agents: BTreeMap<String, DeployedAgent>,
    show_progress: bool,
}

/// Whether the runner goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// The run was cancelled: stop at once, keep what is stored.
    Stop,
}

impl<'a> Session<'a> {
    /// Discovers the platform, expands the plan (labelling its steps' variants with `label`),
    /// checks the platform supports what the scenario needs, opens the store and deploys the
    /// agents. Nothing is deployed for a scenario the platform cannot run.
    pub async fn open<P: Platform>(
        platform: &mut P,
        scenario: &'a Scenario,
        opts: &RunOptions,
        cancel: &'a CancellationToken,
        label: Option<&'a str>,
        store_slot: &'a mut Option<RunStore>,
    ) -> anyhow::Result<Session<'a>> {
        let cluster = until_cancelled(cancel, platform.discover()).await?.context("discovering the platform")?;
        let mut plan = plan::expand(scenario, &cluster)?;
        if let Some(label) = label {
            for step in &mut plan.steps {
                step.variant =
                    if step.variant.is_empty() { label.to_string() } else { format!("{label}/{}", step.variant) };
            }
        }
        for capability in needs(scenario, &plan, platform) {
            if !platform.supports(capability) {
                return Err(Unsupported { platform: platform.name(), capability }.into());
            }
        }
        let store = store::open_store(store_slot, scenario, &cluster, opts, label)?;
        let agents =
            until_cancelled(cancel, platform.deploy(&plan.agent_requests())).await?.context("deploying agents")?;
        let agents = agents.into_iter().map(|a| (a.id.clone(), a)).collect();
        Ok(Session { scenario, cancel, label, plan, store, agents, show_progress: opts.progress })
    }

    /// The run's progress bar over `len` steps; the platform reports its own long steps on it.
    pub fn progress<P: Platform>(&self, platform: &mut P, len: u64) -> ProgressBar {
        let bar = progress_bar(self.show_progress, len as usize);
        platform.attach_progress(Arc::new(BarProgress(bar.clone())));
        bar
    }

    /// Runs `step` and records what came of it: its measurement, completed by `complete`
    /// (what only the driver knows), or a failure carrying `failure_params`, with a warning
    /// naming `what`. Results are on disk when this returns.
    pub async fn record(
        &mut self,
        step: &Step,
        services: &BTreeMap<String, DeployedService>,
        bar: &ProgressBar,
        what: impl FnOnce() -> String,
        failure_params: BTreeMap<String, serde_json::Value>,
        complete: impl FnOnce(&mut Measurement, &Plan),
    ) -> anyhow::Result<Flow> {
        let outcome = match run_step(step, &self.agents, services, self.cancel).await {
            Err(e) if self.cancel.is_cancelled() => {
                tracing::debug!("{} stopped by the signal: {e:#}", step.name);
                return Ok(Flow::Stop);
            }
            Err(e) => Err(format!("{e:#}")),
            Ok(result) => Ok(result),
        };
        let outcome = match outcome {
            Ok(result) if result.metrics.errors.unwrap_or(0) == 0 => Ok(result),
            // The step failed or some of its operations did: a result without any answer
            // is no measurement, and a step whose server agent is down is that agent's
            // failure, named, not a figure.
            outcome => match (outcome, server_down(step, &self.agents).await) {
                (Ok(result), None) => unanswered(&result, &step.spec).map_or(Ok(result), Err),
                (Ok(result), Some(down)) => Err(match unanswered(&result, &step.spec) {
                    Some(why) => format!("{why}; {down}"),
                    None => format!("{down} ({} operations failed)", result.metrics.errors.unwrap_or(0)),
                }),
                (Err(e), None) => Err(e),
                (Err(e), Some(down)) => Err(format!("{e}; {down}")),
            },
        };
        match outcome {
            Ok(result) => {
                let mut m = measurement(&self.plan, step, &self.agents, result)?;
                complete(&mut m, &self.plan);
                self.store.push(m).with_context(|| format!("storing the measurement of {}", what()))?;
            }
            Err(e) => {
                bar.suspend(|| eprintln!("warning: {}: {e}", what()));
                self.store.results.failures.push(failure(step, e, failure_params));
                self.store.flush()?;
            }
        }
        bar.inc(1);
        Ok(Flow::Continue)
    }
}

/// The failure a step that did not measure leaves in the results.
pub(super) fn failure(step: &Step, error: String, params: BTreeMap<String, serde_json::Value>) -> Failure {
    Failure {
        test: step.kind,
        name: step.name.clone(),
        repeat: step.repeat,
        client: step.client.clone(),
        server: step.server.clone(),
        error,
        variant: step.variant.clone(),
        params,
    }
}

/// The capabilities `scenario` needs of `platform`: Services for any Service test or sweep,
/// and a sweep over chosen dataplanes where the platform has no fixed one.
fn needs<P: Platform>(scenario: &Scenario, plan: &Plan, platform: &P) -> Vec<Capability> {
    let mut needs = Vec::new();
    if scenario.sweep.is_some() || !plan.services.is_empty() {
        needs.push(Capability::Services);
    }
    if scenario.sweep.is_some() && platform.fixed_service_dataplane().is_none() {
        needs.push(Capability::SwitchDataplane);
    }
    needs
}
