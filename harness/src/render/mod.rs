//! What `zonebench render` prints, for review and GitOps: every object a kube run of a
//! scenario would create. The agents' objects are the kube platform's own
//! (`KubePlatform::manifests`); here are the Services a run creates once its agents run
//! ([`services`]) and the nightly CronJob ([`cronjob`]). This sits above `plan` and
//! `platform`, which must not know about rendering.

use crate::model::Node;
use crate::plan::{self, Plan, Role};
use crate::platform::kube::agent_pods;
use crate::platform::kube::manifests::{self, EchoEndpoint, RunMeta};
use crate::platform::kube::run_services::{backend_label, request_service, BACKEND_LABEL_PREFIX, BATCH};
use crate::scenario::Scenario;

pub mod cronjob;

/// What `zonebench render` shows of the Services a run creates once its agents run: the
/// `via = "service"` Services of the plan (selecting pods by the backend label the run sets
/// then), or for a sweep the first Service of its largest point with its EndpointSlice
/// (pod addresses are placeholders from 192.0.2.0/24 until the pods exist). Returns the
/// objects and lines for the header saying what is elided.
pub fn services(
    run: &RunMeta,
    scenario: &Scenario,
    plan: &Plan,
    nodes: &[Node],
) -> anyhow::Result<(Vec<serde_json::Value>, Vec<String>)> {
    let Some(sweep) = &scenario.sweep else {
        let objects: Vec<serde_json::Value> =
            plan.services.iter().map(|r| manifests::to_value(&request_service(run, r))).collect();
        let notes = match plan.services.first() {
            Some(r) => vec![format!(
                "Services select their backend pods by the label {BACKEND_LABEL_PREFIX}<service>=backend (e.g. {}), set on those pods at run time.",
                backend_label(&r.name)
            )],
            None => vec![],
        };
        return Ok((objects, notes));
    };
    let Some(&largest) = sweep.services.iter().max() else { return Ok((vec![], vec![])) };
    let servers: Vec<crate::model::AgentRequest> = plan
        .placements
        .iter()
        .filter(|p| p.role == Role::Server)
        .map(|p| crate::model::AgentRequest {
            id: p.id.clone(),
            node: p.node.clone(),
            max_answer_qps: None,
            relay: p.relay,
        })
        .collect();
    let echo: Vec<EchoEndpoint> = agent_pods(&servers, nodes)?
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(EchoEndpoint {
                pod: manifests::pod_name(&p.id)?,
                ip: format!("192.0.2.{}", i % 254 + 1),
                node: p.node,
                zone: p.zone,
            })
        })
        .collect::<Result<_, manifests::ManifestError>>()?;
    let ports = plan::service_ports(scenario);
    let first = plan::service_name(1);
    let objects = vec![
        manifests::to_value(&manifests::selectorless_service(run, &first, &ports)),
        manifests::to_value(&manifests::run_endpoint_slice(run, &first, &ports, &echo)),
    ];
    let notes = vec![format!(
        "Service sweep: up to {largest} Services like {first} below ({first} … {}), each with its \
         EndpointSlice, created and deleted in batches of {BATCH}; endpoint addresses are the echo \
         pods' IPs at run time.",
        plan::service_name(largest)
    )];
    Ok((objects, notes))
}
