//! The service-scaling sweep: how connection setup, request latency and programming cost
//! change with the number of Services, for each service dataplane. A scenario with a
//! `[sweep]` table runs this instead of the zone matrix.
//!
//! For each dataplane (in the order given) and each Service count `n`, one **point**:
//! 1. `n - 1` filler Services are programmed (untimed), each with the same ports and the
//!    same real endpoints as the measured one, since kube-proxy writes chains only for
//!    Services that have endpoints;
//! 2. the newest Service is created and the whole table programmed again, the way a
//!    Service creation reaches kube-proxy; the sync's duration on the client's node is the
//!    point's programming time, and a connect probe in the client's pod times the
//!    programming latency (creation → first successful connect);
//! 3. every test runs from the client through the newest Service: it comes last in the
//!    table, the worst case for a linear chain such as iptables' `KUBE-SERVICES`.
//!
//! A point that fails (a dataplane not available here, a test that errs) is recorded as
//! failures with its dataplane and count, and the sweep goes on; results are written after
//! every point. Written only against [`Platform`], so a cluster drives it too: there the
//! dataplane is the cluster's own ([`Platform::fixed_service_dataplane`]), so each count is
//! measured once, and the Services are selector-less with EndpointSlices the run writes
//! ([`EndpointsBy::Run`]) in batches, so 10,000 Services need no extra pods.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zonebench_agent::units::format_ns;

use crate::dataplane::DataplaneKind;
use crate::plan::{self, Role, Step};
use crate::platform::{AgentPort, DeployedAgent, DeployedService, EndpointsBy, Platform, ProbeRequest, ServiceRequest};
use crate::results::store::RunStore;
use crate::results::{Failure, RunResults, ServiceDataplaneStats};
use crate::run::{self, RunOptions};
use crate::scenario::{HumanDuration, Scenario, Via};
use crate::topology::RoutingMode;

/// Most Services one point may hold (the lab's VIP range holds 32,766).
pub const MAX_SERVICES: u32 = 30_000;

/// The scenario's `[sweep]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Dataplanes to measure, in this order.
    #[serde(default = "all_dataplanes")]
    pub dataplanes: Vec<DataplaneKind>,
    /// Service counts, one point each, in this order.
    #[serde(default = "default_counts")]
    pub services: Vec<u32>,
    /// How long the probe waits for the newest Service to answer.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: HumanDuration,
}

fn all_dataplanes() -> Vec<DataplaneKind> {
    // eBPF first: the others leave conntrack enabled in the node (legacy x_tables tables
    // cannot be unregistered), which eBPF's socket-level rewrite would otherwise pay for.
    vec![DataplaneKind::Ebpf, DataplaneKind::Nftables, DataplaneKind::Iptables, DataplaneKind::IptablesLegacy]
}
fn default_counts() -> Vec<u32> {
    vec![10, 1000, 5000, 10000]
}
fn default_probe_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl SweepConfig {
    /// Checks the table and what it needs of the tests; `(field, message)` on failure.
    pub fn validate(&self, s: &Scenario) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("sweep.{f}"), m));
        if self.dataplanes.is_empty() {
            return bad("dataplanes", "name at least one dataplane".into());
        }
        let mut seen = self.dataplanes.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.dataplanes.len() {
            return bad("dataplanes", "each dataplane may appear once".into());
        }
        if self.services.is_empty() {
            return bad("services", "name at least one Service count".into());
        }
        if let Some(n) = self.services.iter().find(|&&n| n == 0 || n > MAX_SERVICES) {
            return bad("services", format!("{n} is out of range: each count must be 1 to {MAX_SERVICES}"));
        }
        let t = self.probe_timeout.0;
        if t.is_zero() || t > Duration::from_secs(600) {
            return bad("probe_timeout", "must be above 0 and at most 10m".into());
        }
        for (i, test) in s.tests.iter().enumerate() {
            if test.via.unwrap_or(s.defaults.via) != Via::Service {
                return Err((
                    format!("tests[{i}].via"),
                    "a sweep measures through Services: set via = \"service\" (on the test or in [defaults])".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The name of the `i`-th Service of a sweep (1-based): `svc-00001`.
pub fn service_name(i: u32) -> String {
    format!("svc-{i:05}")
}

/// A point's table: `count` Services with the same backends and ports, the newest last.
pub fn service_table(count: u32, backends: &[String], ports: &[AgentPort]) -> Vec<ServiceRequest> {
    (1..=count)
        .map(|i| ServiceRequest {
            name: service_name(i),
            backends: backends.to_vec(),
            ports: ports.to_vec(),
            routing: RoutingMode::None,
            endpoints: EndpointsBy::Run,
        })
        .collect()
}

/// What stays the same across points.
struct Setup<'a> {
    scenario: &'a Scenario,
    /// The platform's label in a run over several (`--context A=…`): the variant then.
    label: Option<&'a str>,
    sweep: &'a SweepConfig,
    plan: plan::Plan,
    agents: BTreeMap<String, DeployedAgent>,
    client: String,
    client_node: String,
    backends: Vec<String>,
    ports: Vec<AgentPort>,
}

/// A dataplane the sweep measures: one it chooses, or the platform's own (a cluster's).
#[derive(Debug, Clone)]
enum Dataplane {
    Chosen(DataplaneKind),
    Fixed(String),
}

impl std::fmt::Display for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dataplane::Chosen(k) => write!(f, "{k}"),
            Dataplane::Fixed(name) => f.write_str(name),
        }
    }
}

/// Runs the sweep of `scenario` on a discovered platform; results go to `store_slot`, each
/// measurement labelled `label` when given (a run over several platforms), else with its
/// dataplane. Called by [`run::run`] and [`run::run_each`], which tear the platform down on
/// every path.
pub(crate) async fn drive<P: Platform>(
    platform: &mut P,
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: &CancellationToken,
    label: Option<&str>,
    store_slot: &mut Option<RunStore>,
) -> anyhow::Result<()> {
    let sweep = scenario.sweep.as_ref().context("the scenario has no [sweep] table")?;
    let cluster = run::until_cancelled(cancel, platform.discover()).await?.context("discovering the platform")?;
    let plan = plan::expand(scenario, &cluster)?;
    let store = run::open_store(store_slot, scenario, &cluster, opts, label)?;
    let dataplanes: Vec<Dataplane> = match platform.fixed_service_dataplane() {
        Some(own) => {
            eprintln!(
                "sweep: the {} platform's own service dataplane ({own}) is measured; sweep.dataplanes applies to the lab",
                platform.name()
            );
            vec![Dataplane::Fixed(own)]
        }
        None => sweep.dataplanes.iter().copied().map(Dataplane::Chosen).collect(),
    };
    let deployed =
        run::until_cancelled(cancel, platform.deploy(&plan.agent_requests())).await?.context("deploying agents")?;
    let agents: BTreeMap<String, DeployedAgent> = deployed.into_iter().map(|a| (a.id.clone(), a)).collect();
    let client = plan.placements.iter().find(|p| p.role == Role::Client).context("the plan places no client")?;
    let setup = Setup {
        scenario,
        label,
        sweep,
        client: client.id.clone(),
        client_node: client.node.clone(),
        backends: plan.placements.iter().filter(|p| p.role == Role::Server).map(|p| p.id.clone()).collect(),
        ports: plan::service_ports(scenario),
        agents,
        plan,
    };

    let tests_per_point: u64 =
        scenario.tests.iter().map(|t| u64::from(t.repeat.unwrap_or(scenario.defaults.repeat))).sum();
    let points = (dataplanes.len() * sweep.services.len()) as u64;
    let bar = run::progress_bar(opts.progress, (points * tests_per_point) as usize);
    platform.attach_progress(&bar);
    'sweep: for kind in &dataplanes {
        for &count in &sweep.services {
            if cancel.is_cancelled() {
                break 'sweep;
            }
            bar.set_message(format!("{kind} × {count} services: programming"));
            let point = program_point(platform, &setup, kind, count, cancel).await;
            let (stats, service) = match point {
                Ok(p) => p,
                Err(_) if cancel.is_cancelled() => break 'sweep,
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: {kind} with {count} services: {e:#}"));
                    record_point_failure(&mut store.results, &setup, kind, count, &format!("{e:#}"));
                    store.flush()?;
                    bar.inc(tests_per_point);
                    continue;
                }
            };
            measure_point(&setup, kind, stats, service, store, &bar, cancel).await?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Programs the fillers, then the newest Service with the probe; returns the point's
/// dataplane figures and the newest Service.
async fn program_point<P: Platform>(
    platform: &mut P,
    setup: &Setup<'_>,
    kind: &Dataplane,
    count: u32,
    cancel: &CancellationToken,
) -> anyhow::Result<(ServiceDataplaneStats, DeployedService)> {
    if let Dataplane::Chosen(kind) = kind {
        run::until_cancelled(cancel, platform.set_service_dataplane(*kind)).await??;
    }
    let table = service_table(count, &setup.backends, &setup.ports);
    let newest = table.last().context("a point has at least one Service")?.name.clone();
    if count > 1 {
        run::until_cancelled(cancel, platform.apply_services(&table[..table.len() - 1], None))
            .await?
            .context("programming the filler Services")?;
    }
    let first_test = setup.scenario.tests.first().context("a sweep has tests")?;
    let probe = ProbeRequest {
        from_agent: setup.client.clone(),
        service: newest.clone(),
        port: AgentPort::of_test(first_test.kind),
        within: setup.sweep.probe_timeout.0,
    };
    let applied = run::until_cancelled(cancel, platform.apply_services(&table, Some(&probe)))
        .await?
        .context("programming the newest Service")?;
    // The client's node, whose dataplane translates the measured connections; a cluster
    // without the node inspector reports no node.
    let node = applied.nodes.iter().find(|n| n.node == setup.client_node).or(applied.nodes.first());
    let stats = ServiceDataplaneStats {
        kind: applied.dataplane.clone(),
        services: count,
        rules: node.and_then(|n| n.rules),
        program_ns: node.and_then(|n| n.elapsed).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        programming_latency_ns: applied.probe.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    let service = applied.services.into_iter().find(|s| s.name == newest).context("the newest Service is missing")?;
    Ok((stats, service))
}

/// Runs every test through the newest Service and records each measurement or failure.
async fn measure_point(
    setup: &Setup<'_>,
    kind: &Dataplane,
    stats: ServiceDataplaneStats,
    service: DeployedService,
    store: &mut RunStore,
    bar: &indicatif::ProgressBar,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let s = setup.scenario;
    let count = stats.services;
    let services: BTreeMap<String, DeployedService> = [(service.name.clone(), service)].into();
    for (test_index, t) in s.tests.iter().enumerate() {
        for repeat in 0..t.repeat.unwrap_or(s.defaults.repeat) {
            if cancel.is_cancelled() {
                return Ok(());
            }
            bar.set_message(format!("{kind} × {count} services: {}", t.label()));
            let step = Step {
                test_index,
                name: t.label(),
                kind: t.kind,
                via: Via::Service,
                variant: setup.label.map_or_else(|| stats.kind.clone(), String::from),
                repeat,
                client: setup.client.clone(),
                server: service_name(count),
                spec: plan::spec_for(s, t, "0.0.0.0:0"),
            };
            match run::run_step(&step, &setup.agents, &services, cancel).await {
                Ok(r) => {
                    let mut m = run::measurement(&setup.plan, &step, &setup.agents, r)?;
                    m.params.insert("services".into(), count.into());
                    m.service_dataplane = Some(stats.clone());
                    store.push(m)?;
                }
                Err(_) if cancel.is_cancelled() => return Ok(()),
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: {kind} with {count} services, {}: {e:#}", t.label()));
                    store.results.failures.push(failure(setup, &step, count, format!("{e:#}")));
                    store.flush()?;
                }
            }
            bar.inc(1);
        }
    }
    Ok(())
}

fn failure(setup: &Setup<'_>, step: &Step, count: u32, error: String) -> Failure {
    Failure {
        test: step.kind,
        name: step.name.clone(),
        repeat: step.repeat,
        client: setup.client.clone(),
        server: step.server.clone(),
        error,
        variant: step.variant.clone(),
        params: [("services".to_string(), count.into())].into(),
    }
}

/// A point that could not be programmed: one failure per test it would have run.
fn record_point_failure(results: &mut RunResults, setup: &Setup<'_>, kind: &Dataplane, count: u32, error: &str) {
    for (test_index, t) in setup.scenario.tests.iter().enumerate() {
        let step = Step {
            test_index,
            name: t.label(),
            kind: t.kind,
            via: Via::Service,
            variant: setup.label.map_or_else(|| kind.to_string(), String::from),
            repeat: 0,
            client: setup.client.clone(),
            server: service_name(count),
            spec: plan::spec_for(setup.scenario, t, "0.0.0.0:0"),
        };
        results.failures.push(failure(setup, &step, count, error.to_string()));
    }
}

/// The sweep's table: one row per measurement, in run order; request/response tests show
/// their latency, tcp-crr its connect time too. Then the points that failed.
pub fn render(r: &RunResults) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(
        o,
        "{:<16} {:>8}  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>13}",
        "dataplane", "services", "test", "connect50", "connect99", "p50", "p99", "rules", "program", "first connect"
    );
    let ns = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format_ns(v as f64));
    for m in &r.measurements {
        let Some(d) = &m.service_dataplane else { continue };
        let _ = writeln!(
            o,
            "{:<16} {:>8}  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>13}",
            d.kind,
            d.services,
            m.name,
            ns(m.connect.as_ref().map(|c| c.p50_ns)),
            ns(m.connect.as_ref().map(|c| c.p99_ns)),
            ns(m.latency.as_ref().map(|l| l.p50_ns)),
            ns(m.latency.as_ref().map(|l| l.p99_ns)),
            d.rules.map_or_else(|| "-".to_string(), |r| r.to_string()),
            ns(d.program_ns),
            ns(d.programming_latency_ns),
        );
    }
    let mut failed: BTreeMap<(String, u64), String> = BTreeMap::new();
    for f in r.failures.iter().filter(|f| !f.variant.is_empty()) {
        let count = f.params.get("services").and_then(|v| v.as_u64()).unwrap_or(0);
        failed.entry((f.variant.clone(), count)).or_insert_with(|| f.error.clone());
    }
    for ((kind, count), error) in failed {
        let _ = writeln!(o, "{kind:<16} {count:>8}  failed: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_service_comes_last_and_every_service_has_the_same_endpoints() {
        let backends = vec!["srv-a-0".to_string(), "srv-a-1".to_string()];
        let t = service_table(3, &backends, &[AgentPort::Tcp]);
        let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["svc-00001", "svc-00002", "svc-00003"]);
        assert!(t.iter().all(|s| s.backends == backends && s.ports == [AgentPort::Tcp]));
        assert_eq!(service_name(10_000), "svc-10000");
    }

    #[test]
    fn the_default_sweep_measures_every_dataplane_at_four_sizes() {
        let c: SweepConfig = toml::from_str("").unwrap();
        assert_eq!(c.services, [10, 1000, 5000, 10000]);
        assert_eq!(c.dataplanes.len(), 4);
        assert_eq!(c.dataplanes[0], DataplaneKind::Ebpf);
    }

    #[test]
    fn the_table_shows_each_point_and_each_failed_point_once() {
        use crate::platform::Fingerprint;
        let mut r = RunResults {
            schema_version: 1,
            scenario: "s".into(),
            started_at: String::new(),
            finished_at: None,
            status: crate::results::RunStatus::Complete,
            fingerprint: Fingerprint::default(),
            measurements: vec![],
            failures: vec![],
            error: None,
            noise: None,
            cost: None,
        };
        for test in ["tcp-crr", "tcp-rr"] {
            r.failures.push(Failure {
                test: zonebench_agent::spec::TestKind::TcpCrr,
                name: test.into(),
                repeat: 0,
                client: "cli-a-0".into(),
                server: "svc-00010".into(),
                error: "the eBPF dataplane is not available in this build: clang was not found".into(),
                variant: "ebpf".into(),
                params: [("services".to_string(), 10.into())].into(),
            });
        }
        let text = render(&r);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.lines().nth(1).unwrap().contains("ebpf") && text.contains("not available in this build"),
            "{text}"
        );
    }
}
