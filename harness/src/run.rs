//! Executes a scenario on a platform: discover, expand the plan, deploy agents, run each
//! step through the client agent's control API, record measurements as they complete, and
//! tear down on every path (success, error, SIGINT/SIGTERM). Written only against
//! [`Platform`]; it never knows which platform it drives. A scenario with a `[sweep]`
//! table is driven by [`crate::sweep`] inside the same frame.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use zonebench_agent::spec::{TestKind, TestResult, TestSpec};

use crate::analysis::noise;
use crate::control_client::ControlClient;
use crate::plan::{self, Plan, Step};
use crate::platform::{AgentPort, ClusterTopology, DeployedAgent, DeployedService, Fingerprint, Platform};
use crate::report::{self, ReportOptions};
use crate::results::load::{self, LoadedRun};
use crate::results::store::RunStore;
use crate::results::{now_rfc3339, Endpoint, Failure, Measurement, RunResults, RunStatus, SCHEMA_VERSION};
use crate::scenario::Scenario;
use crate::scenario::Via;
use crate::topology::locality::{self, CostInput, CostModel, CostSection, Volume};

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
    let outcome = if scenario.sweep.is_some() {
        crate::sweep::drive(platform, scenario, opts, cancel, None, &mut store).await
    } else {
        drive(platform, scenario, opts, cancel, None, &mut store).await
    };
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
            outcome = if scenario.sweep.is_some() {
                crate::sweep::drive(platform, scenario, opts, cancel, named, &mut store).await
            } else {
                drive(platform, scenario, opts, cancel, named, &mut store).await
            };
            outcome = outcome.with_context(|| format!("platform {label}"));
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
    store.results.cost = cost(&scenario.cost, &store.results.measurements);
    store.flush().context("writing the final results")?;
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

async fn drive<P: Platform>(
    platform: &mut P,
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: &CancellationToken,
    label: Option<&str>,
    store_slot: &mut Option<RunStore>,
) -> anyhow::Result<()> {
    let cluster = until_cancelled(cancel, platform.discover()).await?.context("discovering the platform")?;
    let mut plan = plan::expand(scenario, &cluster)?;
    if let Some(label) = label {
        for step in &mut plan.steps {
            step.variant =
                if step.variant.is_empty() { label.to_string() } else { format!("{label}/{}", step.variant) };
        }
    }
    let store = open_store(store_slot, scenario, &cluster, opts, label)?;

    let agents = until_cancelled(cancel, platform.deploy(&plan.agent_requests())).await?.context("deploying agents")?;
    let agents: BTreeMap<String, DeployedAgent> = agents.into_iter().map(|a| (a.id.clone(), a)).collect();
    let services: BTreeMap<String, DeployedService> = if plan.services.is_empty() {
        BTreeMap::new()
    } else {
        let applied = until_cancelled(cancel, platform.apply_services(&plan.services, None))
            .await?
            .context("creating Services")?;
        applied.services.into_iter().map(|s| (s.name.clone(), s)).collect()
    };

    let bar = progress_bar(opts.progress, plan.steps.len());
    for (i, step) in plan.steps.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        bar.set_message(format!("{} {}→{}", step.name, zone_of(&plan, &step.client), zone_of(&plan, &step.server)));
        match run_step(step, &agents, &services, cancel).await {
            Ok(result) => {
                let mut m = measurement(&plan, step, &agents, result)?;
                attach_locality(&mut m, &plan, step, &services);
                store.push(m)?;
            }
            Err(e) if cancel.is_cancelled() => {
                tracing::debug!("step {i} stopped by the signal: {e:#}");
                break;
            }
            Err(e) => {
                bar.suspend(|| eprintln!("warning: {} {} → {}: {e:#}", step.name, step.client, step.server));
                store.results.failures.push(Failure {
                    test: step.kind,
                    name: step.name.clone(),
                    repeat: step.repeat,
                    client: step.client.clone(),
                    server: step.server.clone(),
                    error: format!("{e:#}"),
                    variant: step.variant.clone(),
                    params: BTreeMap::new(),
                });
                store.flush()?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// A labelled platform's facts for a multi-platform run's fingerprint: its `extra`, kernel,
/// zones and node count under `<label>.`.
fn labelled_extra(from: &Fingerprint, label: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> =
        from.extra.iter().map(|(k, v)| (format!("{label}.{k}"), v.clone())).collect();
    out.insert(format!("{label}.kernel"), from.kernel.clone());
    out.insert(format!("{label}.zones"), from.zones.join(","));
    out.insert(format!("{label}.nodes"), from.nodes.to_string());
    out
}

/// Adds a further labelled platform to a run's fingerprint: its facts, zones and nodes.
fn merge_fingerprint(into: &mut Fingerprint, from: &Fingerprint, label: &str) {
    into.extra.extend(labelled_extra(from, label));
    for z in &from.zones {
        if !into.zones.contains(z) {
            into.zones.push(z.clone());
        }
    }
    into.nodes += from.nodes;
}

/// Creates the run directory with empty results and the scenario as run.
/// The run's store: made on the first platform's turn, and on a later one (a run over
/// several platforms) given that platform's fingerprint facts under its label.
pub(crate) fn open_store<'a>(
    store_slot: &'a mut Option<RunStore>,
    scenario: &Scenario,
    cluster: &ClusterTopology,
    opts: &RunOptions,
    label: Option<&str>,
) -> anyhow::Result<&'a mut RunStore> {
    match store_slot {
        Some(store) => {
            merge_fingerprint(&mut store.results.fingerprint, &cluster.fingerprint, label.unwrap_or("?"));
            store.flush()?;
            Ok(store)
        }
        None => {
            let store = store_slot.insert(new_store(scenario, cluster, opts)?);
            if let Some(label) = label {
                store.results.fingerprint.extra = labelled_extra(&cluster.fingerprint, label);
                store.flush()?;
            }
            Ok(store)
        }
    }
}

pub(crate) fn new_store(scenario: &Scenario, cluster: &ClusterTopology, opts: &RunOptions) -> anyhow::Result<RunStore> {
    let results = RunResults {
        schema_version: SCHEMA_VERSION,
        scenario: scenario.name.clone(),
        started_at: now_rfc3339(),
        finished_at: None,
        status: RunStatus::Running,
        fingerprint: cluster.fingerprint.clone(),
        measurements: Vec::new(),
        failures: Vec::new(),
        error: None,
        noise: None,
        cost: None,
    };
    let store = RunStore::create(&opts.out_dir, results)?;
    let scenario_toml = toml::to_string_pretty(scenario).unwrap_or_default();
    store.write_file("scenario.toml", scenario_toml.as_bytes())?;
    Ok(store)
}

/// Runs one step (its server is an agent, or a Service for `via = service`); on
/// cancellation, cancels the agent's test and returns an error.
pub(crate) async fn run_step(
    step: &Step,
    agents: &BTreeMap<String, DeployedAgent>,
    services: &BTreeMap<String, DeployedService>,
    cancel: &CancellationToken,
) -> anyhow::Result<TestResult> {
    let client = agents.get(&step.client).with_context(|| format!("agent {} was not deployed", step.client))?;
    let target = match step.via {
        Via::Pod => {
            let server = agents.get(&step.server).with_context(|| format!("agent {} was not deployed", step.server))?;
            std::net::SocketAddr::new(server.ip, plan::port_for(step.kind, server))
        }
        Via::Service => {
            let svc = services.get(&step.server).with_context(|| format!("service {} was not created", step.server))?;
            let port = AgentPort::of_test(step.kind);
            svc.address(port).with_context(|| format!("service {} has no {} port", step.server, port.name()))?
        }
    };
    let spec = TestSpec { target: target.to_string(), ..step.spec.clone() };
    let control = ControlClient::new(client.control.clone(), client.token.clone());
    let id = control.start_test(&spec).await?;
    tokio::select! {
        r = control.wait_for(&id, &spec) => r,
        _ = cancel.cancelled() => {
            let _ = control.cancel_test(&id).await;
            anyhow::bail!("cancelled")
        }
    }
}

pub(crate) fn measurement(
    plan: &Plan,
    step: &Step,
    agents: &BTreeMap<String, DeployedAgent>,
    r: TestResult,
) -> anyhow::Result<Measurement> {
    let endpoint = |id: &str| -> Endpoint {
        match agents.get(id) {
            Some(a) => Endpoint { agent: a.id.clone(), node: a.node.clone(), zone: a.zone.clone() },
            None => {
                let zone = plan.placement(id).map(|p| p.zone.clone()).unwrap_or_default();
                Endpoint { agent: id.to_string(), node: String::new(), zone }
            }
        }
    };
    // Who answered is read from the answers: the id with the most of them. An id no agent
    // of this run carries would mean traffic reached something else; record it as is.
    let answered = r.servers.iter().max_by_key(|(_, n)| **n).map(|(id, _)| id.clone());
    let server = match answered {
        Some(id) => endpoint(&id),
        None => endpoint(&step.server),
    };
    let mut params: BTreeMap<String, serde_json::Value> = match serde_json::to_value(&step.spec)? {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    params.remove("target");
    params.remove("test");
    Ok(Measurement {
        test: step.kind,
        name: step.name.clone(),
        via: step.via.as_str().to_string(),
        variant: step.variant.clone(),
        repeat: step.repeat,
        client: endpoint(&step.client),
        server,
        params,
        target: r.target,
        duration_ns: r.duration_ns,
        metrics: r.metrics,
        latency: r.latency,
        connect: r.connect,
        servers: r.servers,
        service_dataplane: None,
        locality: None,
        hints: None,
    })
}

/// For a `via = service` measurement: where its answers came from, counted by the zone of
/// each answering agent (from the run's placements), and the hints verdict of the Service
/// it went through, so prediction and measurement are stored side by side.
pub(crate) fn attach_locality(
    m: &mut Measurement,
    plan: &Plan,
    step: &Step,
    services: &BTreeMap<String, DeployedService>,
) {
    if step.via != Via::Service {
        return;
    }
    let zone_of = |id: &str| plan.placement(id).map(|p| p.zone.clone());
    let volume = match step.kind {
        TestKind::TcpStream | TestKind::UdpStream => {
            // The stream's payload over the measured window; split by answer share.
            let bytes = m.metrics.throughput_bps.unwrap_or(0.0) * m.duration_ns as f64 / 8e9;
            Volume::Total(bytes.max(0.0) as u64)
        }
        _ => Volume::PerAnswer(u64::from(step.spec.request_size) + u64::from(step.spec.response_size)),
    };
    m.locality = Some(locality::measure(&m.client.zone, &m.servers, zone_of, volume));
    m.hints = services.get(&step.server).and_then(|s| s.hints.clone());
}

/// The run's `cost` section from the measurements with a `locality`; `None` without any.
pub(crate) fn cost(model: &CostModel, measurements: &[Measurement]) -> Option<CostSection> {
    let inputs: Vec<CostInput<'_>> = measurements
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            m.locality.as_ref().map(|l| CostInput {
                measurement: i,
                name: &m.name,
                variant: &m.variant,
                client_zone: &m.client.zone,
                locality: l,
            })
        })
        .collect();
    (!inputs.is_empty()).then(|| locality::cost_section(model, inputs))
}

fn zone_of<'a>(plan: &'a Plan, id: &str) -> &'a str {
    plan.placement(id).map_or("?", |p| p.zone.as_str())
}

pub(crate) fn progress_bar(enabled: bool, len: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `fut`, unless cancellation comes first.
pub(crate) async fn until_cancelled<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::select! {
        v = fut => Ok(v),
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    }
}
