//! # zonebench-agent
//!
//! The data plane of zonebench: every measurement passes through it, so it is built to cost
//! far less than the network it measures, and to be usable on its own like iperf3.
//!
//! One binary, two roles:
//! - `serve`: the echo/sink servers ([`servers`]: TCP, UDP, HTTP) that stamp the agent's
//!   identity on every answer, and the authenticated control API ([`control`]) through which
//!   the coordinator starts tests on this agent;
//! - `client <test>`: one load generator ([`load`]) run from the command line.
//!
//! # Layout
//! - [`spec`]: the contract: `TestSpec` in, `TestResult` out (JSON, schema-checked).
//! - [`wire`]: data-plane framing (TCP preamble and hello, UDP header).
//! - [`histogram`]: HDR recording and the V2+DEFLATE+base64 form results carry.
//! - [`servers`], [`load`], [`control`]: as above.
//! - [`ports`]: the default data and control ports.
//! - [`probe`]: the Service-programming probe behind `POST /v1/probe`.
//! - [`cli`]: the command line (shared with the coordinator's `zonebench agent`).
//! - [`report`]: the readable table; [`units`]: parsing `10s`, `1G`, `64K`.
//! - [`sys`]: the only unsafe code (TCP_INFO).
#![deny(unsafe_code)]

pub mod cli;
pub mod control;
pub mod histogram;
pub mod load;
pub mod ports;
pub mod probe;
pub mod report;
pub mod servers;
pub mod spec;
pub mod sys;
pub mod units;
pub mod wire;
