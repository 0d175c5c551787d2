//! # zonebench
//!
//! The coordinator: it reads a scenario, places agents across zones on a platform, runs the
//! test matrix and writes results. See `DESIGN.md` for the flow of one run.
//!
//! # Layout
//! - [`control_client`]: the agent control API client.
//! - [`platform`]: where agents run (`lab` network namespaces, `local` loopback processes).
#![forbid(unsafe_code)]

pub mod control_client;
pub mod platform;
