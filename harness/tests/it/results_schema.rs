//! results.json is checked against the checked-in schema, which refers to the agent's
//! test-result schema for metrics and latency.

use std::collections::BTreeMap;

use crate::support::scratch;
use zonebench::model::Fingerprint;
use zonebench::model::{
    Capacity, CapacityPoint, Endpoint, EndpointLoad, EndpointShare, Failure, Group, Measurement, RunResults, RunStatus,
    SCHEMA_VERSION,
};
use zonebench::results::store;
use zonebench_agent::histogram;
use zonebench_agent::spec::{Metrics, TestKind, Window};

fn schema_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema")
}

pub fn validator() -> jsonschema::Validator {
    let load = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(schema_dir().join(name)).unwrap()).unwrap()
    };
    let agent = load("test-result.schema.json");
    jsonschema::options()
        .with_resource(
            "https://zonebench.dev/schema/test-result.schema.json",
            jsonschema::Resource::from_contents(agent).unwrap(),
        )
        .build(&load("results.schema.json"))
        .unwrap()
}

fn sample() -> RunResults {
    let mut h = histogram::new();
    histogram::record(&mut h, 42_000);
    let ep = |a: &str, z: &str| Endpoint { agent: a.into(), node: format!("{z}-1"), zone: z.into() };
    RunResults {
        schema_version: SCHEMA_VERSION,
        scenario: "quick".into(),
        started_at: "2026-11-22T05:00:00Z".into(),
        finished_at: Some("2026-11-22T05:01:00Z".into()),
        status: RunStatus::Complete,
        fingerprint: Fingerprint {
            platform: "lab".into(),
            kernel: "6.1".into(),
            routing: Some(zonebench::model::Routing::Native),
            mtu: Some(1500),
            zones: vec!["a".into(), "b".into()],
            nodes: 4,
            zonebench_version: "0.1.0".into(),
            extra: BTreeMap::new(),
        },
        measurements: vec![Measurement {
            test: TestKind::TcpRr,
            name: "tcp-rr".into(),
            via: zonebench::model::Via::Pod,
            variant: String::new(),
            repeat: 0,
            client: ep("cli-a-0", "a"),
            server: ep("srv-b-0", "b"),
            params: [("duration_ms".to_string(), serde_json::json!(1000))].into(),
            target: "10.0.0.1:7101".into(),
            duration_ns: 1_000_000_000,
            metrics: Metrics { transactions_per_sec: Some(1.0), errors: Some(0), ..Default::default() },
            latency: histogram::summarize(&h),
            connect: None,
            servers: [("srv-b-0".to_string(), 1)].into(),
            window: Some(Window { start_ns: 1_700_000_000_000_000_000, end_ns: 1_700_000_001_000_000_000 }),
            group: Some("tcp-rr/echo/r0".into()),
            chain: None,
            service_dataplane: None,
            locality: None,
            hints: None,
        }],
        failures: vec![Failure {
            test: TestKind::Http,
            name: "http".into(),
            repeat: 0,
            client: "cli-a-0".into(),
            server: "srv-b-0".into(),
            error: "boom".into(),
            variant: String::new(),
            params: BTreeMap::new(),
            group: Some("tcp-rr/echo/r0".into()),
        }],
        groups: vec![Group {
            id: "tcp-rr/echo/r0".into(),
            test: TestKind::TcpRr,
            name: "tcp-rr".into(),
            via: zonebench::model::Via::Service,
            variant: String::new(),
            repeat: 0,
            target: "echo".into(),
            clients: vec![ep("cli-a-0", "a"), ep("cli-a-1", "a")],
            members: vec![0],
            failed: 1,
            span: Some(Window { start_ns: 1_700_000_000_000_000_000, end_ns: 1_700_000_001_000_000_000 }),
            overlap_pct: Some(100.0),
            elapsed_ns: 1_250_000_000,
            metrics: Metrics { transactions_per_sec: Some(1.0), errors: Some(0), ..Default::default() },
            latency: histogram::summarize(&h),
            connect: None,
            servers: [("srv-b-0".to_string(), 1)].into(),
            load: Some(EndpointLoad {
                threshold: 1.5,
                endpoints: vec![
                    EndpointShare {
                        agent: "srv-b-0".into(),
                        zone: "b".into(),
                        answers: 1,
                        ratio: 2.0,
                        expected_ratio: Some(2.0),
                    },
                    EndpointShare {
                        agent: "srv-a-0".into(),
                        zone: "a".into(),
                        answers: 0,
                        ratio: 0.0,
                        expected_ratio: None,
                    },
                ],
                overloaded: vec!["srv-b-0".into()],
            }),
        }],
        capacities: vec![Capacity {
            id: "http/cli-a-0/srv-b-0/r0".into(),
            test: TestKind::Http,
            name: "http".into(),
            via: zonebench::model::Via::Pod,
            variant: String::new(),
            repeat: 0,
            client: ep("cli-a-0", "a"),
            target: "srv-b-0".into(),
            slo_p99_ns: 10_000_000,
            slo_error_pct: Some(1.0),
            max_qps: Some(1600.0),
            missed_qps: Some(3200.0),
            verdict: "1600 req/s meets the SLO (p99 ≤ 10.00ms); 3200 req/s did not: p99 40ms".into(),
            curve: vec![
                CapacityPoint {
                    asked_qps: 1600.0,
                    achieved_qps: Some(1598.0),
                    p50_ns: Some(100_000),
                    p99_ns: Some(900_000),
                    error_pct: Some(0.0),
                    met: true,
                    why: None,
                    measurement: Some(0),
                },
                CapacityPoint {
                    asked_qps: 3200.0,
                    achieved_qps: None,
                    p50_ns: None,
                    p99_ns: None,
                    error_pct: None,
                    met: false,
                    why: Some("not measured: boom".into()),
                    measurement: None,
                },
            ],
        }],
        error: None,
        noise: None,
        cost: None,
    }
}

#[test]
fn written_results_match_the_schema() {
    let v = validator();
    let tmp = scratch("schema");
    let dir = tmp.join("run");
    let s = store::RunStore::create(&dir, sample()).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir().join("results.json")).unwrap()).unwrap();
    let errors: Vec<String> = v.iter_errors(&written).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let csv = std::fs::read_to_string(s.dir().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.lines().next().unwrap().starts_with("test,name,via,variant,repeat,client_agent"));
}

#[test]
fn the_noise_section_matches_the_schema() {
    let mut r = sample();
    let mut again = r.measurements[0].clone();
    again.repeat = 1;
    again.latency.as_mut().unwrap().p50_ns = 60_000;
    r.measurements.push(again);
    r.noise = Some(zonebench::analysis::noise::compute(&r.measurements, 10.0));
    assert_eq!(r.noise.as_ref().unwrap().groups[0].flagged, vec!["p50"]);
    let v = serde_json::to_value(&r).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn a_sweep_point_must_carry_its_dataplane_and_count_and_may_lack_node_figures() {
    let mut r = sample();
    r.measurements[0].variant = "nftables".into();
    r.measurements[0].service_dataplane = Some(zonebench::model::ServiceDataplaneStats {
        kind: zonebench::model::DataplaneName::Lab(zonebench::model::DataplaneKind::Nftables),
        services: 1000,
        rules: Some(16580),
        program_ns: Some(17_000_000),
        programming_latency_ns: Some(16_000_000),
    });
    r.failures[0].variant = "ebpf".into();
    r.failures[0].params = [("services".to_string(), serde_json::json!(1000))].into();
    let v = serde_json::to_value(&r).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // A cluster without the node inspector knows neither rules nor sync time.
    let mut cluster = v.clone();
    let d = cluster["measurements"][0]["service_dataplane"].as_object_mut().unwrap();
    d.remove("rules");
    d.remove("program_ns");
    assert!(validator().is_valid(&cluster));
    let mut missing = v.clone();
    missing["measurements"][0]["service_dataplane"].as_object_mut().unwrap().remove("kind");
    assert!(!validator().is_valid(&missing));
    let mut zero = v;
    zero["measurements"][0]["service_dataplane"]["services"] = serde_json::json!(0);
    assert!(!validator().is_valid(&zero));
}

#[test]
fn locality_hints_and_cost_match_the_schema() {
    use zonebench::analysis::locality::{self, CostInput, Volume};
    use zonebench::model::CostModel;
    let mut r = sample();
    let m = &mut r.measurements[0];
    m.via = zonebench::model::Via::Service;
    m.variant = "skewed-auto".into();
    m.servers = [("srv-a-0".to_string(), 40), ("srv-b-0".to_string(), 60)].into();
    let zone_of = |id: &str| id.strip_prefix("srv-").map(|z| z[..1].to_string());
    let loc = locality::measure("a", &m.servers, zone_of, Volume::PerAnswer(2048));
    assert_eq!(loc.cross_zone_bytes, 60 * 2048);
    m.locality = Some(loc.clone());
    m.hints = Some(zonebench::model::HintsVerdict {
        mode: zonebench::model::RoutingMode::Auto,
        enabled: false,
        deterministic: true,
        event: Some(zonebench::model::HintsEvent {
            event_type: zonebench::model::EventType::Warning,
            reason: "TopologyAwareHintsDisabled".into(),
            message: "Insufficient number of endpoints (5 endpoints, 3 zones), addressType: IPv4".into(),
        }),
        explanation: vec!["why".into()],
        live: Some(zonebench::model::LiveHintsCheck {
            verdict: "agree".into(),
            summary: "the hints are the predicted ones".into(),
            differences: 0,
        }),
    });
    r.cost = Some(locality::cost_section(
        &CostModel::default(),
        [CostInput { measurement: 0, name: "tcp-crr", variant: "skewed-auto", client_zone: "a", locality: &loc }],
    ));
    let v = serde_json::to_value(&r).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // What the report reads back: the same names.
    let loaded = zonebench::results::load::parse(&v.to_string(), "r.json").unwrap();
    assert_eq!(loaded.locality[0].as_ref().unwrap().answers_by_zone["b"], 60);
    assert_eq!(loaded.cost_per_gb_cross_zone, Some(0.01));
    assert_eq!(loaded.results, r);
    let mut bad_fraction = v.clone();
    bad_fraction["measurements"][0]["locality"]["in_zone_fraction"] = serde_json::json!(1.5);
    assert!(!validator().is_valid(&bad_fraction));
    let mut no_price = v.clone();
    no_price["cost"].as_object_mut().unwrap().remove("per_gb_cross_zone");
    assert!(!validator().is_valid(&no_price));
    let mut bad_mode = v;
    bad_mode["measurements"][0]["hints"]["mode"] = serde_json::json!("sometimes");
    assert!(!validator().is_valid(&bad_mode));
}

#[test]
fn the_schema_rejects_a_measurement_without_a_server() {
    let mut v = serde_json::to_value(sample()).unwrap();
    v["measurements"][0].as_object_mut().unwrap().remove("server");
    assert!(!validator().is_valid(&v));
    let mut v = serde_json::to_value(sample()).unwrap();
    v["measurements"][0]["metrics"]["loss_pct"] = serde_json::json!(-1);
    assert!(!validator().is_valid(&v));
}
