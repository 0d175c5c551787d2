//! From a scenario's test entry to the agent's contract: the [`TestSpec`] a step sends, with
//! the scenario's `[defaults]` filled in where the entry is silent.

use zonebench_agent::spec::TestSpec;

use super::{Scenario, TestEntry};

/// The TestSpec an entry asks for, defaults filled from the scenario.
pub fn spec_for(s: &Scenario, t: &TestEntry, target: &str) -> TestSpec {
    let d = &s.defaults;
    let mut spec = TestSpec::new(t.kind, target);
    spec.duration_ms = t.duration.unwrap_or(d.duration).as_millis();
    spec.warmup_ms = t.warmup.unwrap_or(d.warmup).as_millis();
    spec.timeout_ms = t.timeout.unwrap_or(d.timeout).as_millis();
    if let Some(v) = t.parallel {
        spec.parallel = v;
    }
    if let Some(v) = t.reverse {
        spec.reverse = v;
    }
    spec.size = t.size.map(|s| s.0);
    spec.rate_bps = t.rate.map(|r| r.0);
    if let Some(v) = t.request_size {
        spec.request_size = v.0;
    }
    if let Some(v) = t.response_size {
        spec.response_size = v.0;
    }
    if let Some(v) = t.connections {
        spec.connections = v;
    }
    spec.qps = t.rate_qps();
    if let Some(v) = t.connection_close {
        spec.connection_close = v;
    }
    if let Some(v) = &t.path {
        spec.path = v.clone();
    }
    spec.threads = t.threads;
    spec
}
