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
use zonebench_agent::spec::TestResult;

use crate::analysis::capacity;
use crate::analysis::group::{self, ServiceShape};
use crate::control_client::ControlClient;
use crate::model::{Capacity, DeployedAgent, DeployedService, Endpoint, Failure, Group, Measurement, Via};
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
                if step.group.is_some() {
                    step.group = Some(plan::group_id(step));
                }
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
        let outcome = run_step(step, &self.agents, services, self.cancel, None).await;
        let Some(outcome) = self.judge(step, outcome).await else { return Ok(Flow::Stop) };
        self.keep(step, outcome, bar, what(), failure_params, complete)?;
        bar.inc(1);
        Ok(Flow::Continue)
    }

    /// Runs the steps of one concurrent group at once and records each client's measurement
    /// or failure, then the group's summary (see `analysis::group`). Every client is armed
    /// with one start instant before any starts, so they begin together; each reports its
    /// window, and the summary says how far they overlapped.
    pub async fn record_group(
        &mut self,
        steps: &[Step],
        services: &BTreeMap<String, DeployedService>,
        bar: &ProgressBar,
        complete: impl Fn(&mut Measurement, &Plan, &Step),
    ) -> anyhow::Result<Flow> {
        let Some(first) = steps.first() else { return Ok(Flow::Continue) };
        let began = std::time::Instant::now();
        let margin = self.arm_margin(steps).await;
        let start_at = zonebench_agent::spec::unix_now_ns() + margin.as_nanos() as u64;
        let runs = steps.iter().map(|step| run_step(step, &self.agents, services, self.cancel, Some(start_at)));
        let outcomes = futures::future::join_all(runs).await;
        let elapsed_ns = began.elapsed().as_nanos() as u64;
        let mut members = Vec::new();
        let mut failed = 0;
        for (step, outcome) in steps.iter().zip(outcomes) {
            let Some(outcome) = self.judge(step, outcome).await else { return Ok(Flow::Stop) };
            let what = format!("{} {} → {} (group {})", step.name, step.client, step.server, plan::group_id(step));
            match self.keep(step, outcome, bar, what, BTreeMap::new(), |m, plan| complete(m, plan, step))? {
                Some(index) => members.push(index),
                None => failed += 1,
            }
            bar.inc(1);
        }
        let mut group = self.group_summary(first, steps, &members, failed, services);
        group.elapsed_ns = elapsed_ns;
        self.store.results.groups.push(group);
        self.store.flush()?;
        Ok(Flow::Continue)
    }

    /// Runs a capacity search (`step.search`): the step at each open-loop rate the search
    /// picks, each rate's measurement (or failure) stored as it comes, then the search's
    /// record (the highest rate meeting the SLO, and the curve) in `capacities`.
    pub async fn record_search(
        &mut self,
        step: &Step,
        services: &BTreeMap<String, DeployedService>,
        bar: &ProgressBar,
        complete: impl Fn(&mut Measurement, &Plan, &Step),
    ) -> anyhow::Result<Flow> {
        let Some(spec) = step.search.clone() else { return Ok(Flow::Continue) };
        let mut search = capacity::Search::new(spec.clone());
        let mut curve = Vec::new();
        while let Some(rate) = search.next_rate() {
            if self.cancel.is_cancelled() {
                return Ok(Flow::Stop);
            }
            bar.set_message(format!("{} {} → {}: {rate:.0} req/s", step.name, step.client, step.server));
            let mut probe = step.clone();
            probe.spec.qps = Some(rate);
            let outcome = run_step(&probe, &self.agents, services, self.cancel, None).await;
            let Some(outcome) = self.judge(&probe, outcome).await else { return Ok(Flow::Stop) };
            let error = outcome.as_ref().err().cloned();
            let what = format!("{} {} → {} at {rate:.0} req/s", step.name, step.client, step.server);
            let point =
                match self.keep(&probe, outcome, bar, what, BTreeMap::new(), |m, plan| complete(m, plan, &probe))? {
                    Some(i) => capacity::point(&spec, rate, &self.store.results.measurements[i], i),
                    None => capacity::failed_point(rate, error.as_deref().unwrap_or("the step failed")),
                };
            search.record(rate, point.met);
            curve.push(point);
        }
        bar.inc(1);
        let client = self
            .agents
            .get(&step.client)
            .map(|a| Endpoint { agent: a.id.clone(), node: a.node.clone(), zone: a.zone.clone() })
            .unwrap_or_else(|| Endpoint { agent: step.client.clone(), node: String::new(), zone: String::new() });
        let record = Capacity {
            id: plan::search_id(step),
            test: step.kind,
            name: step.name.clone(),
            via: step.via,
            variant: step.variant.clone(),
            repeat: step.repeat,
            client,
            target: step.server.clone(),
            slo_p99_ns: spec.slo_p99_ns,
            slo_error_pct: spec.slo_error_pct,
            max_qps: search.met(),
            missed_qps: search.missed(),
            verdict: search.verdict(&curve),
            curve,
        };
        self.store.results.capacities.push(record);
        self.store.flush()?;
        Ok(Flow::Continue)
    }

    /// How far ahead a group's start instant lies: long enough for every arming call to
    /// reach its agent first, short against a test window. The arming calls go out at once,
    /// so it is measured: a round of health checks to every client at once, its slowest
    /// answer three times over plus 20 ms (a unix socket on the lab: ~25 ms; port-forward
    /// to a cluster: a few hundred). A client that does not answer is left to its test call,
    /// which reports it.
    async fn arm_margin(&self, steps: &[Step]) -> std::time::Duration {
        let checks = steps.iter().filter_map(|s| self.agents.get(&s.client)).map(|a| async move {
            let t = std::time::Instant::now();
            let _ = ControlClient::new(a.control.clone(), a.token.clone()).healthz_within(MAX_ARM_MARGIN).await;
            t.elapsed()
        });
        let slowest = futures::future::join_all(checks).await.into_iter().max().unwrap_or_default();
        (slowest * 3 + MIN_ARM_MARGIN).clamp(MIN_ARM_MARGIN, MAX_ARM_MARGIN)
    }

    /// A step's outcome as it may be recorded: its result, or why it cannot stand as a
    /// measurement. `None` when the run was cancelled meanwhile.
    async fn judge(&self, step: &Step, outcome: anyhow::Result<TestResult>) -> Option<Result<TestResult, String>> {
        let outcome = match outcome {
            Err(e) if self.cancel.is_cancelled() => {
                tracing::debug!("{} stopped by the signal: {e:#}", step.name);
                return None;
            }
            Err(e) => Err(format!("{e:#}")),
            Ok(result) => Ok(result),
        };
        Some(match outcome {
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
        })
    }

    /// Stores a judged outcome: the measurement (its index in the results) or the failure.
    fn keep(
        &mut self,
        step: &Step,
        outcome: Result<TestResult, String>,
        bar: &ProgressBar,
        what: String,
        failure_params: BTreeMap<String, serde_json::Value>,
        complete: impl FnOnce(&mut Measurement, &Plan),
    ) -> anyhow::Result<Option<usize>> {
        match outcome {
            Ok(result) => {
                let mut m = measurement(&self.plan, step, &self.agents, result)?;
                complete(&mut m, &self.plan);
                self.store.push(m).with_context(|| format!("storing the measurement of {what}"))?;
                Ok(Some(self.store.results.measurements.len() - 1))
            }
            Err(e) => {
                bar.suspend(|| eprintln!("warning: {what}: {e}"));
                self.store.results.failures.push(failure(step, e, failure_params));
                self.store.flush()?;
                Ok(None)
            }
        }
    }

    /// The summary of a group whose measured members are at `members` in the results.
    fn group_summary(
        &self,
        first: &Step,
        steps: &[Step],
        members: &[usize],
        failed: u32,
        services: &BTreeMap<String, DeployedService>,
    ) -> Group {
        let clients = steps
            .iter()
            .map(|s| {
                let p = self.plan.placement(&s.client);
                let a = self.agents.get(&s.client);
                Endpoint {
                    agent: s.client.clone(),
                    node: a.map(|a| a.node.clone()).unwrap_or_default(),
                    zone: p.map(|p| p.zone.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let group = Group {
            id: plan::group_id(first),
            test: first.kind,
            name: first.name.clone(),
            via: first.via,
            variant: first.variant.clone(),
            repeat: first.repeat,
            target: first.server.clone(),
            clients,
            members: Vec::new(),
            failed,
            span: None,
            overlap_pct: None,
            elapsed_ns: 0,
            metrics: Default::default(),
            latency: None,
            connect: None,
            servers: BTreeMap::new(),
            load: None,
        };
        let empty = BTreeMap::new();
        let shape = (first.via == Via::Service).then(|| {
            let backends = self.plan.services.iter().find(|s| s.name == first.server);
            ServiceShape {
                endpoints: backends
                    .map(|b| {
                        b.backends
                            .iter()
                            .map(|a| (a.clone(), self.plan.placement(a).map(|p| p.zone.clone()).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default(),
                routes: services.get(&first.server).map_or(&empty, |s| &s.routes),
                threshold: self.scenario.defaults.overload_threshold,
            }
        });
        let ms = &self.store.results.measurements;
        let members: Vec<(usize, &Measurement)> = members.iter().map(|&i| (i, &ms[i])).collect();
        group::summarize(group, &members, shape.as_ref())
    }
}

/// The least and most a group's start instant lies ahead.
const MIN_ARM_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);
const MAX_ARM_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The failure a step that did not measure leaves in the results.
pub(super) fn failure(step: &Step, error: String, params: BTreeMap<String, serde_json::Value>) -> Failure {
    Failure {
        test: step.kind,
        name: step.name.clone(),
        repeat: step.repeat,
        client: step.client.clone(),
        // A chain's failure names its whole route.
        server: if step.chain.is_empty() { step.server.clone() } else { step.chain.join(",") },
        error,
        variant: step.variant.clone(),
        params,
        group: step.group.clone(),
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
