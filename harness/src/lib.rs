//! # zonebench
//!
//! The coordinator: it reads a scenario, places agents across zones on a platform, runs the
//! test matrix and writes results. See `DESIGN.md` for the flow of one run.
//!
//! # Layout
//! - [`control_client`]: the agent control API client.
//! - [`scenario`]: scenario files, validation with file/line errors, `--set` overrides.
//! - [`plan`]: a scenario expanded into agent placements and ordered steps.
//! - [`platform`]: where agents run (`lab` network namespaces, `local` loopback processes,
//!   `kube` a cluster through kube-rs).
//! - [`dataplane`]: Service VIP dataplanes a lab node programs (iptables, nftables, eBPF).
//! - [`topology`]: EndpointSlice hints and kube-proxy's endpoint choice, as Kubernetes computes them;
//!   `zonebench hints` explains them on kubectl output or live objects; measured locality and cost.
//! - [`run`]: the orchestrator; [`results`]: results.json/csv, reading runs back, history;
//!   [`summary`]: the zone matrix.
//! - [`analysis`]: noise figures, comparisons and regression verdicts; [`report`]: the
//!   HTML report and its charts, trends; [`render_cronjob`]: the nightly CronJob;
//!   [`commands`]: those CLI commands.
//! - [`sweep`]: the service-scaling sweep (dataplanes × Service counts).
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
