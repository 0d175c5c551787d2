//! The EndpointSlice controller's verdict on a Service's hints, as a measurement records it
//! beside the locality it measured: the prediction next to what happened.

use serde::{Deserialize, Serialize};

use super::kinds::{EventType, RoutingMode};

/// What the EndpointSlice controller decided for a Service's hints, as `zonebench hints`
/// explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintsVerdict {
    /// The routing the Service asked for.
    pub mode: RoutingMode,
    /// The controller wrote hints.
    pub enabled: bool,
    /// Go's map order cannot change the hints.
    pub deterministic: bool,
    /// The event the controller records on the Service, if any.
    pub event: Option<HintsEvent>,
    /// The decision in words, with its numbers.
    #[serde(default)]
    pub explanation: Vec<String>,
}

/// An event as `kubectl describe service` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintsEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
}
