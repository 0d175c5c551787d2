//! kubectl output as `zonebench hints` reads it (`-o yaml` or `-o json`): Nodes,
//! EndpointSlices and a Service; when the text holds Nodes or slices they go through the
//! EndpointSlice controller's prediction too.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zonebench::topology::hints::{predict, ControllerOptions};
use zonebench::topology::input::{parse_nodes_str, parse_service_str, parse_slices_str};
use zonebench::topology::{RoutingMode, ServiceConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.yaml");
    let nodes = parse_nodes_str(text, path).unwrap_or_default();
    let slices: Vec<_> =
        parse_slices_str(text, path).map(|s| s.into_iter().map(|o| o.slice).collect()).unwrap_or_default();
    let svc =
        parse_service_str(text, path).map(|s| s.config).unwrap_or_else(|_| ServiceConfig::with_mode(RoutingMode::Auto));
    if !nodes.is_empty() || !slices.is_empty() {
        let r = predict(&nodes, &slices, &svc, &ControllerOptions::default());
        assert!(!r.outcomes.is_empty());
    }
});
