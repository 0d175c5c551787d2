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
    /// On a cluster: the hints the controller actually wrote, compared with the prediction
    /// (the comparison of `zonebench hints -n`); absent where no controller ran (the lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveHintsCheck>,
}

/// The live comparison's outcome for one Service, as a measurement records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveHintsCheck {
    /// `agree` (the hints are the canonical prediction), `map-order`, `kept`,
    /// `controller-version` or `not-synced`: see `zonebench hints -n`.
    pub verdict: String,
    /// The verdict in one sentence.
    pub summary: String,
    /// Endpoints whose hints are not the canonical prediction.
    pub differences: u32,
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
