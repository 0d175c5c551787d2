//! The checked-in schema accepts what the agent writes and rejects what it must not.
mod common;

use serde_json::json;

#[test]
fn the_schema_rejects_a_result_without_metrics() {
    let v = json!({"test": "tcp-rr", "target": "127.0.0.1:1", "duration_ns": 5, "servers": {}});
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/schema/test-result.schema.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(!jsonschema::is_valid(&schema, &v));
}

#[test]
fn the_schema_accepts_a_full_result() {
    let mut h = zonebench_agent::histogram::new();
    zonebench_agent::histogram::record(&mut h, 12_345);
    let lat = zonebench_agent::histogram::summarize(&h).unwrap();
    let r = zonebench_agent::spec::TestResult {
        test: zonebench_agent::spec::TestKind::TcpCrr,
        target: "127.0.0.1:7101".into(),
        duration_ns: 1_000_000_000,
        metrics: zonebench_agent::spec::Metrics {
            transactions_per_sec: Some(10.0),
            errors: Some(0),
            ..Default::default()
        },
        latency: Some(lat.clone()),
        connect: Some(lat),
        servers: [("echo-a".to_string(), 10u64)].into(),
        window: Some(zonebench_agent::spec::Window {
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
        }),
    };
    common::check_result(&r);
}
