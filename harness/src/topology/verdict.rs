//! One Service's hints as the controller writes them and in the doctor's words: the lab
//! (which writes them onto its own Services) and a cluster run (which compares them with what
//! the cluster's controller wrote) both record this [`HintsVerdict`] beside the locality they
//! measure, so both must build it the same way: here.

use super::doctor;
use super::hints::{self, Reconciliation};
use super::input::{ServiceObject, SliceObject};
use super::{Node, ServiceConfig, Slice};
use crate::model::{HintsEvent, HintsVerdict, RoutingMode};

/// The controller's reconciliation of `slice` (one fresh sync of one slice, in its endpoint
/// order) for Service `namespace/service` asking for `mode`, and the verdict a measurement
/// records. The reconciliation's first outcome is what a follower of the controller writes;
/// when Go's map order could break a tie differently, the verdict says it is not
/// `deterministic`.
pub fn verdict(
    namespace: &str,
    service: &str,
    nodes: Vec<Node>,
    slice: Slice,
    mode: RoutingMode,
) -> Result<(Reconciliation, HintsVerdict), doctor::DoctorError> {
    let config = ServiceConfig::with_mode(mode);
    let rec = hints::predict(&nodes, std::slice::from_ref(&slice), &config, &hints::ControllerOptions::default());
    let inputs = doctor::Inputs {
        nodes,
        slices: vec![SliceObject { namespace: Some(namespace.into()), service: Some(service.into()), slice }],
        service: Some(ServiceObject { namespace: Some(namespace.into()), name: service.into(), config }),
    };
    let report = doctor::diagnose(&inputs, &doctor::Settings::default())?;
    let verdict = HintsVerdict {
        mode,
        enabled: rec.hints_enabled(),
        deterministic: rec.deterministic(),
        event: rec.event.as_ref().map(|e| HintsEvent {
            event_type: e.event_type,
            reason: e.reason.clone(),
            message: e.message.clone(),
        }),
        explanation: report.explanation,
        live: None,
    };
    Ok((rec, verdict))
}
