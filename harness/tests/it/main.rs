//! The harness's integration tests, one test binary (`cargo test -p zonebench --test it`):
//! each module is one area, run through the library and the real `zonebench` binary. Tests
//! that need root (the lab, the dataplanes, eBPF, the agent image, the node inspector) fail
//! rather than skip without it; CI runs as root. Data and fixtures are under `tests/data`
//! and `tests/fixtures`; [`support`] holds what several modules share, among it the fake
//! Kubernetes API server.
#![allow(clippy::unwrap_used)] // tests: a failure here is a failed test

mod support;

mod agent_image;
mod architecture;
mod browser;
mod compare;
mod dataplane;
mod ebpf;
mod faults;
mod golden;
mod hints;
mod hints_live;
mod kube;
mod kube_fake;
mod kube_inspector;
mod kube_manifests;
mod kube_sweep;
mod lab;
mod lab_api_forwarder;
mod lab_capacity;
mod lab_chain;
mod lab_concurrent;
mod lab_kube_control_plane;
mod lab_kube_oracle;
mod lab_kube_pki;
mod lab_kube_run;
mod lab_kube_sweep;
mod lab_kube_up;
mod nightly;
mod probe;
mod report;
mod results_schema;
mod run;
mod service_run;
mod topology_run;
