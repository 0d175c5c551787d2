//! The agent's control API bodies: a TestSpec (`POST /v1/tests`) and a ProbeSpec
//! (`POST /v1/probe`), deserialized from JSON and validated, as the control server does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonebench_agent::probe::ProbeSpec;
use zonebench_agent::spec::TestSpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<TestSpec>(data) {
        let _ = spec.validate();
    }
    if let Ok(probe) = serde_json::from_slice::<ProbeSpec>(data) {
        let _ = probe.validate();
    }
});
