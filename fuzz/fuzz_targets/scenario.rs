//! Scenario TOML and `--set` overrides: `Scenario::parse` and, when it parses, the plan of
//! a small three-zone cluster. The input is the TOML text; after a NUL byte come the
//! overrides, one per further NUL-separated part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonebench::model::{ClusterTopology, Fingerprint, Node};
use zonebench::scenario::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\0');
    let toml = parts.next().unwrap_or_default();
    let overrides: Vec<String> = parts.map(String::from).collect();
    if let Ok(s) = Scenario::parse(toml, "fuzz.toml", "fuzz", &overrides) {
        let nodes = ["a", "b", "c"]
            .iter()
            .flat_map(|z| {
                (0..2).map(move |i| Node {
                    name: format!("node-{z}-{i}"),
                    zone: z.to_string(),
                    cpu_millis: 4000,
                    ready: true,
                })
            })
            .collect();
        let cluster = ClusterTopology { nodes, fingerprint: Fingerprint::default() };
        let _ = zonebench::plan::expand(&s, &cluster);
    }
});
