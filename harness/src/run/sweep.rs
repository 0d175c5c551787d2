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
//! (`EndpointsBy::Run`) in batches, so 10,000 Services need no extra pods.

use std::collections::BTreeMap;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::session::{failure, Flow, Session};
use super::step::until_cancelled;
use crate::model::{
    AgentPort, DataplaneKind, DataplaneName, DeployedService, ProbeRequest, ServiceDataplaneStats, Via,
};
use crate::plan::{self, Role, Step};
use crate::platform::Platform;
use crate::scenario::{self, Scenario, SweepConfig};

/// What stays the same across points.
struct Setup<'a> {
    sweep: &'a SweepConfig,
    client: String,
    client_node: String,
    backends: Vec<String>,
    ports: Vec<AgentPort>,
    /// A cluster's own dataplane: in a run over several platforms its label alone names the
    /// variant; a platform that sweeps several gets `label/dataplane`.
    fixed: bool,
}

/// A dataplane the sweep measures: one it chooses, or the platform's own (a cluster's).
#[derive(Debug, Clone)]
enum Dataplane {
    Chosen(DataplaneKind),
    Fixed(DataplaneName),
}

impl std::fmt::Display for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dataplane::Chosen(k) => write!(f, "{k}"),
            Dataplane::Fixed(name) => write!(f, "{name}"),
        }
    }
}

/// Runs the sweep `config` of the session's scenario; each measurement is labelled with the
/// session's label when it has one (a run over several platforms), else with its dataplane.
pub(super) async fn drive<P: Platform>(
    platform: &mut P,
    mut session: Session<'_>,
    config: &SweepConfig,
) -> anyhow::Result<()> {
    let dataplanes: Vec<Dataplane> = match platform.fixed_service_dataplane() {
        Some(own) => {
            eprintln!(
                "sweep: the {} platform's own service dataplane ({own}) is measured; sweep.dataplanes applies to the lab",
                platform.name()
            );
            vec![Dataplane::Fixed(own)]
        }
        None => config.dataplanes.iter().copied().map(Dataplane::Chosen).collect(),
    };
    let scenario = session.scenario;
    let plan = &session.plan;
    let client = plan.placements.iter().find(|p| p.role == Role::Client).context("the plan places no client")?;
    let setup = Setup {
        sweep: config,
        client: client.id.clone(),
        client_node: client.node.clone(),
        backends: plan.placements.iter().filter(|p| p.role == Role::Server).map(|p| p.id.clone()).collect(),
        ports: plan::service_ports(scenario),
        fixed: matches!(dataplanes.as_slice(), [Dataplane::Fixed(_)]),
    };

    let tests_per_point: u64 =
        scenario.tests.iter().map(|t| u64::from(t.repeat.unwrap_or(scenario.defaults.repeat))).sum();
    let points = (dataplanes.len() * config.services.len()) as u64;
    let bar = session.progress(platform, points * tests_per_point);
    'sweep: for kind in &dataplanes {
        for &count in &config.services {
            if session.cancel.is_cancelled() {
                break 'sweep;
            }
            bar.set_message(format!("{kind} × {count} services: programming"));
            let point = program_point(platform, &setup, kind, count, scenario, session.cancel).await;
            let (stats, service) = match point {
                Ok(p) => p,
                Err(_) if session.cancel.is_cancelled() => break 'sweep,
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: {kind} with {count} services: {e:#}"));
                    // One failure per test the point would have run.
                    for (test_index, _) in scenario.tests.iter().enumerate() {
                        let step = point_step(&session, &setup, test_index, 0, kind.to_string(), count);
                        session.store.results.failures.push(failure(&step, format!("{e:#}"), services_param(count)));
                    }
                    session.store.flush()?;
                    bar.inc(tests_per_point);
                    continue;
                }
            };
            let services: BTreeMap<String, DeployedService> = [(service.name.clone(), service)].into();
            for (test_index, t) in scenario.tests.iter().enumerate() {
                for repeat in 0..t.repeat.unwrap_or(scenario.defaults.repeat) {
                    if session.cancel.is_cancelled() {
                        break 'sweep;
                    }
                    bar.set_message(format!("{kind} × {count} services: {}", t.label()));
                    let step = point_step(&session, &setup, test_index, repeat, stats.kind.to_string(), count);
                    let what = || format!("{kind} with {count} services, {}", t.label());
                    let flow = session
                        .record(&step, &services, &bar, what, services_param(count), |m, _| {
                            m.params.insert("services".into(), count.into());
                            m.service_dataplane = Some(stats.clone());
                        })
                        .await?;
                    if flow == Flow::Stop {
                        break 'sweep;
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The step of test `test_index` at a point: through the point's newest Service, its
/// variant the dataplane, under the session's label when it has one (the label alone for a
/// cluster's own dataplane).
fn point_step(
    session: &Session<'_>,
    setup: &Setup<'_>,
    test_index: usize,
    repeat: u32,
    dataplane: String,
    count: u32,
) -> Step {
    let t = &session.scenario.tests[test_index];
    Step {
        test_index,
        name: t.label(),
        kind: t.kind,
        via: Via::Service,
        variant: match session.label {
            Some(label) if setup.fixed => label.to_string(),
            Some(label) => format!("{label}/{dataplane}"),
            None => dataplane,
        },
        repeat,
        client: setup.client.clone(),
        server: plan::service_name(count),
        spec: scenario::spec_for(session.scenario, t, "0.0.0.0:0"),
        group: None,
        search: None,
        chain: Vec::new(),
    }
}

fn services_param(count: u32) -> BTreeMap<String, serde_json::Value> {
    [("services".to_string(), count.into())].into()
}

/// Programs the fillers, then the newest Service with the probe; returns the point's
/// dataplane figures and the newest Service.
async fn program_point<P: Platform>(
    platform: &mut P,
    setup: &Setup<'_>,
    kind: &Dataplane,
    count: u32,
    scenario: &Scenario,
    cancel: &CancellationToken,
) -> anyhow::Result<(ServiceDataplaneStats, DeployedService)> {
    if let Dataplane::Chosen(kind) = kind {
        until_cancelled(cancel, platform.set_service_dataplane(*kind)).await??;
    }
    let table = plan::service_table(count, &setup.backends, &setup.ports);
    let newest = table.last().context("a point has at least one Service")?.name.clone();
    if count > 1 {
        until_cancelled(cancel, platform.apply_services(&table[..table.len() - 1], None))
            .await?
            .context("programming the filler Services")?;
    }
    let first_test = scenario.tests.first().context("a sweep has tests")?;
    let probe = ProbeRequest {
        from_agent: setup.client.clone(),
        service: newest.clone(),
        port: AgentPort::of_test(first_test.kind),
        within: setup.sweep.probe_timeout.0,
    };
    let applied = until_cancelled(cancel, platform.apply_services(&table, Some(&probe)))
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
