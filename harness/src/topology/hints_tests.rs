//! The controller's own cases beyond the reference table: every event, mode precedence,
//! trafficDistribution, kept hints, ties and non-determinism.

use super::*;
