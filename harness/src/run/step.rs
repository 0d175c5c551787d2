//! One step, start to record: run it on its client agent's control API (to an agent or
//! through a Service), turn the agent's answer into a [`Measurement`] naming who actually
//! answered, and for Service tests the locality of the answers and the hints verdict beside
//! it. Both drivers (matrix and sweep) run every step through here.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use zonebench_agent::spec::{TestKind, TestResult, TestSpec};

use crate::analysis::locality::{self, CostInput, Volume};
use crate::control_client::ControlClient;
use crate::model::{AgentPort, CostModel, CostSection, DeployedAgent, DeployedService, Endpoint, Measurement, Via};
use crate::plan::{self, Plan, Step};

/// Runs one step (its server is an agent, or a Service for `via = service`), armed to start
/// at `start_at` (Unix ns) when given; on cancellation, cancels the agent's test and returns
/// an error.
pub(super) async fn run_step(
    step: &Step,
    agents: &BTreeMap<String, DeployedAgent>,
    services: &BTreeMap<String, DeployedService>,
    cancel: &CancellationToken,
    start_at: Option<u64>,
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
    // A chain's hops after the first are reached through it: their HTTP addresses (an agent's,
    // or the Service's virtual one), in order.
    let relay = step
        .chain
        .iter()
        .skip(1)
        .map(|id| {
            if let Some(svc) = services.get(id) {
                let addr = svc.address(AgentPort::Http).with_context(|| format!("service {id} has no http port"))?;
                return Ok(addr.to_string());
            }
            let hop = agents.get(id).with_context(|| format!("chain hop {id} was not deployed"))?;
            Ok(std::net::SocketAddr::new(hop.ip, plan::port_for(step.kind, hop)).to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = TestSpec { target: target.to_string(), start_at_unix_ns: start_at, relay, ..step.spec.clone() };
    let control = ControlClient::new(client.control.clone(), client.token.clone());
    let id = control.start_test(&spec).await?;
    if let Some(at) = start_at.filter(|&at| zonebench_agent::spec::unix_now_ns() > at) {
        let late = (zonebench_agent::spec::unix_now_ns() - at) as f64 / 1e6;
        tracing::warn!("{} was armed {late:.1} ms after its group's start instant: it starts late", step.client);
    }
    tokio::select! {
        r = control.wait_for(&id, &spec) => r,
        _ = cancel.cancelled() => {
            let _ = control.cancel_test(&id).await;
            anyhow::bail!("cancelled")
        }
    }
}

/// How long the health check of a step's server agent may take when the step failed or
/// met errors: long enough for a busy agent, short enough that an agent that accepts and
/// never answers does not hold the run.
const SUSPECT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a finished test's result cannot stand as a measurement: its operations failed and no
/// server answered any of them (a server killed before the window, a cut network). Its
/// figures (0 transactions/s, no latency) would pass for a measured collapse. A result with
/// answers stands, its errors counted; so does a UDP stream that lost everything but whose
/// receiver reported (no operation failed: loss is what it measures).
pub(super) fn unanswered(r: &TestResult, spec: &TestSpec) -> Option<String> {
    let errors = r.metrics.errors.unwrap_or(0);
    let answers: u64 = r.servers.values().sum();
    (answers == 0 && errors > 0).then(|| {
        let ops = if errors == 1 { "operation" } else { "operations" };
        format!(
            "no answer from {} in the measured window: {errors} {ops} failed or timed out (timeout {} ms each)",
            r.target, spec.timeout_ms
        )
    })
}

/// For a step that failed or met errors: whether its server agent (a `via = pod` step's)
/// still answers its health check, in words when it does not. It tells a dead or hung
/// server (killed, stopped, its node gone) from a bad network or a bad client.
pub(super) async fn server_down(step: &Step, agents: &BTreeMap<String, DeployedAgent>) -> Option<String> {
    if step.via != Via::Pod {
        return None;
    }
    let server = agents.get(&step.server)?;
    let control = ControlClient::new(server.control.clone(), server.token.clone());
    match control.healthz_within(SUSPECT_HEALTH_TIMEOUT).await {
        Ok(()) => None,
        Err(e) => Some(format!("server agent {} on node {} is not answering: {e:#}", server.id, server.node)),
    }
}

pub(super) fn measurement(
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
    // of this run carries would mean traffic reached something else; record it as is. A
    // chain's answers name every hop: the last one answered.
    let answered = r.servers.iter().max_by_key(|(_, n)| **n).map(|(id, _)| match step.chain.is_empty() {
        true => id.clone(),
        false => id.rsplit(',').next().unwrap_or(id).trim().to_string(),
    });
    let chain = (!step.chain.is_empty()).then(|| {
        // A hop through the Service is not an agent of the plan: the answers tell which it was.
        let planned: Vec<Option<Endpoint>> =
            step.chain.iter().map(|id| (id != plan::SERVICE_NAME).then(|| endpoint(id))).collect();
        crate::analysis::chain::route(&endpoint(&step.client), &planned, &r.servers, endpoint)
    });
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
        via: step.via,
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
        window: r.window,
        group: step.group.clone(),
        chain,
        service_dataplane: None,
        locality: None,
        hints: None,
    })
}

/// For a `via = service` measurement: where its answers came from, counted by the zone of
/// each answering agent (from the run's placements), and the hints verdict of the Service
/// it went through, so prediction and measurement are stored side by side.
pub(super) fn attach_locality(
    m: &mut Measurement,
    plan: &Plan,
    step: &Step,
    services: &BTreeMap<String, DeployedService>,
) {
    // A chain's answers name paths, not agents; its record is the chain's own.
    if step.via != Via::Service || !step.chain.is_empty() {
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
pub(super) fn cost(model: &CostModel, measurements: &[Measurement]) -> Option<CostSection> {
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

/// `fut`, unless cancellation comes first.
pub(super) async fn until_cancelled<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::select! {
        v = fut => Ok(v),
        _ = cancel.cancelled() => anyhow::bail!("interrupted"),
    }
}
