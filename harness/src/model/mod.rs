//! The records every layer shares, and nothing else: what a run produces
//! ([`results`]), the cluster and what platforms are asked for ([`cluster`]), the hints verdict,
//! noise and cost sections, and the closed sets they name ([`kinds`]).
//!
//! This is the bottom layer: it imports nothing from the rest of the crate, only serde and the
//! agent's contract (`zonebench_agent::spec`), so any module may use it and it can never take
//! part in a cycle (`tests/it/architecture.rs` checks). Behaviour stays with the modules that
//! own it; here are only the types, their serde forms (pinned by `results/schema/`) and small
//! accessors.

pub mod capacity;
pub mod chain;
pub mod cluster;
pub mod cost;
pub mod group;
pub mod hints;
pub mod kinds;
pub mod noise;
pub mod results;

pub use capacity::{Capacity, CapacityPoint};
pub use chain::Chain;
pub use cluster::*;
pub use cost::{CostLine, CostModel, CostSection, Locality};
pub use group::{EndpointLoad, EndpointShare, Group};
pub use hints::{HintsEvent, HintsVerdict, LiveHintsCheck};
pub use kinds::*;
pub use noise::{NoiseFigure, NoiseGroup, NoiseReport};
pub use results::*;
