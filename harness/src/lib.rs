//! # zonebench
//!
//! The coordinator: it reads a scenario, places agents across zones on a platform, runs the
//! test matrix and writes results. `ARCHITECTURE.md` at the repository root is the map: the
//! layers, what each module owns and may use, the flow of one run, and the invariants (the
//! test `tests/it/architecture.rs` checks the layering).
//!
//! # Layout, bottom up
//! - [`model`]: the records every layer shares (results, cluster, requests, closed sets).
//! - [`scenario`]: scenario files and every configuration table; built-in scenarios.
//! - [`topology`]: EndpointSlice hints and kube-proxy's endpoint choice, as Kubernetes
//!   computes them, and the doctor that explains them. [`analysis`]: noise, comparisons,
//!   verdicts, measured locality and cost. [`dataplane`]: Service dataplanes a lab node
//!   programs. [`control_client`]: the agent control API client.
//! - [`plan`]: a scenario expanded into placements and steps. [`results`]: run files.
//!   [`platform`]: where agents run (`lab`, `local`, `kube`).
//! - [`present`]: the text tables; [`report`]: the HTML report, charts, trends.
//! - [`run`]: the runner; [`render`]: `zonebench render`; [`live`]: the doctor on a cluster.
//! - `sys`: the only unsafe code (child processes die with the coordinator).
#![deny(unsafe_code)]

pub mod analysis;
pub mod control_client;
pub mod dataplane;
pub mod live;
pub mod model;
pub mod plan;
pub mod platform;
pub mod present;
pub mod render;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
mod sys;
pub mod topology;
