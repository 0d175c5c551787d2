//! `zonebench hints` end to end, through the real binary, on kubectl-style fixtures
//! (`tests/fixtures/hints/`): both output formats, the JSON checked against
//! `results/schema/hints.schema.json`, bad input and usage errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::scratch;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hints").join(name)
}

fn hints(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zonebench")).arg("hints").args(args).output().unwrap()
}

/// `--nodes N --slices S [--service V]` with fixture names.
fn fixture_args(nodes: &str, slices: &str, service: Option<&str>) -> Vec<String> {
    let mut v = vec!["--nodes".into(), path_str(&fixture(nodes)), "--slices".into(), path_str(&fixture(slices))];
    if let Some(s) = service {
        v.extend(["--service".into(), path_str(&fixture(s))]);
    }
    v
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn validator() -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema/hints.schema.json");
    jsonschema::validator_for(&serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).unwrap()
}

/// Runs with `-o json`, expects success, checks the schema, returns the object.
fn json(args: &[String]) -> Value {
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["-o", "json"]);
    let out = hints(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "output does not match hints.schema.json: {errors:#?}");
    v
}

fn table(args: &[String]) -> String {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hints(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn routing_of<'a>(v: &'a Value, zone: &str) -> &'a Value {
    v["routing"].as_array().unwrap().iter().find(|r| r["zone"] == zone).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_balanced_three_zone_service_gets_same_zone_hints_and_every_zone_filters() {
    let args = fixture_args("nodes-3zones.yaml", "slices-balanced.yaml", Some("service-checkout-auto.yaml"));
    let v = json(&args);
    assert_eq!(v["service"], "shop/checkout");
    assert_eq!(v["mode"], "auto");
    assert_eq!(v["mode_assumed"], false);
    assert_eq!(v["hints_enabled"], true);
    assert_eq!(v["deterministic"], true);
    assert_eq!(v["event"]["type"], "Normal");
    assert_eq!(v["event"]["reason"], "TopologyAwareHintsEnabled");
    assert_eq!(v["event"]["message"], "Topology Aware Hints has been enabled, addressType: IPv4");
    for z in v["zones"].as_array().unwrap() {
        assert_eq!((z["ready_endpoints"].as_u64(), z["hinted_endpoints"].as_u64()), (Some(2), Some(2)), "{z}");
        assert_eq!((z["minimum"].as_u64(), z["maximum"].as_u64()), (Some(2), Some(2)), "{z}");
    }
    for e in v["endpoints"].as_array().unwrap() {
        assert_eq!(e["hints"], serde_json::json!([e["zone"]]), "{e}");
        assert_eq!(e["expected_load"], 1.0);
    }
    let a = routing_of(&v, "us-east-1a");
    assert_eq!(a["filtered"], true);
    assert_eq!(a["reason"], "filtered-to-zone");
    assert_eq!(strings(&a["endpoints"]), ["10.0.4.41", "10.0.5.42"]);

    let t = table(&args);
    assert!(t.contains("Service shop/checkout (IPv4): mode auto"), "{t}");
    assert!(t.contains("event: Normal TopologyAwareHintsEnabled"), "{t}");
    assert!(t.contains("Σ minimum = 2 (us-east-1a) + 2 (us-east-1b) + 2 (us-east-1c) = 6 ≤ 6"), "{t}");
    assert!(t.contains("us-east-1a   filtered — 2 of 6 ready endpoints"), "{t}");
    assert!(t.contains("the slices carry no hints now"), "{t}");
}

#[test]
fn skewed_endpoints_on_equal_zones_are_refused_with_the_failing_inequality() {
    let args = fixture_args("nodes-3zones.yaml", "slices-skewed.yaml", None);
    let v = json(&args);
    assert_eq!(v["mode"], "auto");
    assert_eq!(v["mode_assumed"], true);
    assert_eq!(v["hints_enabled"], false);
    assert_eq!(v["event"]["type"], "Warning");
    assert_eq!(v["event"]["reason"], "TopologyAwareHintsDisabled");
    assert_eq!(
        v["event"]["message"],
        "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold (5 endpoints, 3 zones), addressType: IPv4"
    );
    let explanation = strings(&v["explanation"]).join("\n");
    assert!(
        explanation.contains("Σ minimum = 2 (us-east-1a) + 2 (us-east-1b) + 2 (us-east-1c) = 6 > 5"),
        "{explanation}"
    );
    assert!(explanation.contains("6 ready endpoints would be the next count the controller accepts"), "{explanation}");
    for z in v["zones"].as_array().unwrap() {
        assert_eq!(z["minimum"], 2, "{z}");
        assert_eq!(z["maximum"], Value::Null, "{z}");
    }
    assert!(v["endpoints"].as_array().unwrap().iter().all(|e| e["hints"].is_null()));
    for r in v["routing"].as_array().unwrap() {
        assert_eq!((&r["filtered"], &r["reason"]), (&Value::Bool(false), &Value::from("no-hints")), "{r}");
        assert_eq!(r["endpoints"].as_array().unwrap().len(), 5);
    }
    let t = table(&args);
    assert!(t.contains("mode auto (assumed)"), "{t}");
    assert!(t.contains("= 6 > 5 ready endpoints"), "{t}");
    assert!(t.contains("cluster-wide — all 5 ready endpoints: no endpoint has a zone hint"), "{t}");
}

#[test]
fn prefer_close_keeps_the_skewed_service_in_zone_where_auto_refuses() {
    let v = json(&fixture_args("nodes-3zones.yaml", "slices-skewed.yaml", Some("service-cart-prefer-close.yaml")));
    assert_eq!(v["mode"], "prefer-close");
    assert_eq!(v["hints_enabled"], true);
    assert_eq!(v["event"], Value::Null);
    let c = routing_of(&v, "us-east-1c");
    assert_eq!(c["filtered"], true);
    assert_eq!(strings(&c["endpoints"]), ["10.0.68.61"]);
    // One endpoint serves all of zone c's traffic: 5 × (1/3) / 1.
    let last = v["endpoints"].as_array().unwrap().last().unwrap();
    assert_eq!(last["expected_load"], 1.667);
}

#[test]
fn a_node_without_a_zone_label_is_named_as_the_reason_hints_are_refused() {
    let args = fixture_args("nodes-unlabelled.yaml", "slices-balanced.yaml", Some("service-checkout-auto.yaml"));
    let v = json(&args);
    assert_eq!(
        v["event"]["message"],
        "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes, addressType: IPv4"
    );
    let explanation = strings(&v["explanation"]).join("\n");
    assert!(explanation.contains("node ip-10-0-99-7.ec2.internal is Ready and not a control-plane node but has no topology.kubernetes.io/zone label"), "{explanation}");
    let last = v["routing"].as_array().unwrap().last().unwrap();
    assert_eq!(last["zone"], Value::Null, "nodes without a zone label come last");
    assert!(v["zones"].as_array().unwrap().iter().all(|z| z["cpu_ratio"].is_null()));
    let t = table(&args);
    assert!(t.contains("nodes without a topology.kubernetes.io/zone label: ip-10-0-99-7.ec2.internal"), "{t}");
    assert!(t.contains("(no zone)"), "{t}");
}

#[test]
fn a_json_node_list_gives_the_same_answer_as_the_yaml_one() {
    let yaml = json(&fixture_args("nodes-3zones.yaml", "slices-tie.yaml", None));
    let from_json = json(&fixture_args("nodes-3zones.json", "slices-tie.yaml", None));
    assert_eq!(yaml, from_json);
}

#[test]
fn a_tie_is_reported_as_not_deterministic_with_every_possible_count() {
    let args = fixture_args("nodes-3zones.yaml", "slices-tie.yaml", None);
    let v = json(&args);
    assert_eq!(v["deterministic"], false);
    let possible = |zone: &str| -> Value {
        v["zones"].as_array().unwrap().iter().find(|z| z["zone"] == zone).unwrap()["hinted_endpoints_possible"].clone()
    };
    assert_eq!(possible("us-east-1a"), serde_json::json!([2]));
    assert_eq!(possible("us-east-1b"), serde_json::json!([2, 3]));
    assert_eq!(possible("us-east-1c"), serde_json::json!([2, 3]));
    let first_b = v["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == "10.0.36.81").unwrap();
    assert_eq!(first_b["hints_possible"], serde_json::json!([["us-east-1a"], ["us-east-1b"]]));
    let a = routing_of(&v, "us-east-1a");
    assert_eq!(strings(&a["endpoints_possible"]), ["10.0.4.81", "10.0.36.81", "10.0.68.81"]);
    let t = table(&args);
    assert!(t.contains("not deterministic: Go's random map order"), "{t}");
    assert!(t.contains("2 or 3"), "{t}");
}

/// Writes `text` to `dir/name`.
fn temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs, expects `code`, returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = hints(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(out.stdout.is_empty(), "no report on failure");
    err
}

#[test]
fn a_slice_without_address_type_is_refused_naming_the_slice_and_the_field() {
    let dir = scratch("hints-address-type");
    let text = std::fs::read_to_string(fixture("slices-balanced.yaml"))
        .unwrap()
        .replace("- addressType: IPv4\n  apiVersion", "- apiVersion");
    let p = temp(&dir, "no-address-type.yaml", &text);
    let nodes = path_str(&fixture("nodes-3zones.yaml"));
    let err = fails(&["--nodes", &nodes, "--slices", p.to_str().unwrap()], 1);
    assert!(err.contains("no-address-type.yaml: EndpointSlice/checkout-x7k2p: addressType: missing"), "{err}");
}

#[test]
fn a_node_without_a_name_or_with_a_bad_field_is_refused_naming_it() {
    let dir = scratch("hints-nodes");
    let text = std::fs::read_to_string(fixture("nodes-3zones.yaml")).unwrap();
    let nameless = text.replacen("    name: ip-10-0-33-10.ec2.internal\n", "", 1);
    let p = temp(&dir, "nameless.yaml", &nameless);
    let slices = path_str(&fixture("slices-balanced.yaml"));
    let err = fails(&["--nodes", p.to_str().unwrap(), "--slices", &slices], 1);
    assert!(err.contains("nameless.yaml: Node #3: metadata.name: missing"), "{err}");

    let bad_cpu = text.replacen("cpu: 3920m", "cpu: lots", 1);
    let p = temp(&dir, "badcpu.yaml", &bad_cpu);
    let err = fails(&["--nodes", p.to_str().unwrap(), "--slices", &slices], 1);
    assert!(err.contains("Node/ip-10-0-1-10.ec2.internal: status.allocatable.cpu: invalid quantity \"lots\""), "{err}");

    let bad_type = std::fs::read_to_string(fixture("slices-balanced.yaml")).unwrap().replacen(
        "ready: true",
        "ready: sometimes",
        1,
    );
    let p = temp(&dir, "badtype.yaml", &bad_type);
    let nodes = path_str(&fixture("nodes-3zones.yaml"));
    let err = fails(&["--nodes", &nodes, "--slices", p.to_str().unwrap()], 1);
    assert!(err.contains("EndpointSlice/checkout-x7k2p: endpoints[0].conditions.ready: invalid type"), "{err}");
}

#[test]
fn the_wrong_kind_of_object_is_refused_naming_it_and_the_expected_kind() {
    let slices = path_str(&fixture("slices-balanced.yaml"));
    let service = path_str(&fixture("service-checkout-auto.yaml"));
    let err = fails(&["--nodes", &slices, "--slices", &slices], 1);
    assert!(err.contains("EndpointSlice/checkout-x7k2p: kind is EndpointSlice, expected Node (use the output of `kubectl get nodes -o yaml`)"), "{err}");
    let nodes = path_str(&fixture("nodes-3zones.yaml"));
    let err = fails(&["--nodes", &nodes, "--slices", &slices, "--service", &nodes], 1);
    assert!(err.contains("Node/ip-10-0-1-10.ec2.internal: kind is Node, expected Service"), "{err}");
    let err = fails(&["--nodes", &nodes, "--slices", &service], 1);
    assert!(err.contains("Service/checkout: kind is Service, expected EndpointSlice"), "{err}");
    let err = fails(&["--nodes", "/nonexistent/nodes.yaml", "--slices", &slices], 1);
    assert!(err.contains("/nonexistent/nodes.yaml"), "{err}");
}

#[test]
fn ambiguous_or_incomplete_invocations_are_usage_errors() {
    let dir = scratch("hints-usage");
    let nodes = path_str(&fixture("nodes-3zones.yaml"));
    let both = format!(
        "{}---\n{}",
        std::fs::read_to_string(fixture("slices-balanced.yaml")).unwrap(),
        std::fs::read_to_string(fixture("slices-skewed.yaml")).unwrap()
    );
    let p = temp(&dir, "two-services.yaml", &both);
    let err = fails(&["--nodes", &nodes, "--slices", p.to_str().unwrap()], 2);
    assert!(err.contains("the slices belong to 2 Services (shop/cart, shop/checkout): pass --service"), "{err}");
    // The same file with --service picks that Service's slices.
    let svc = path_str(&fixture("service-checkout-auto.yaml"));
    let out = hints(&["--nodes", &nodes, "--slices", p.to_str().unwrap(), "--service", &svc]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let skewed = path_str(&fixture("slices-skewed.yaml"));
    let err = fails(&["--nodes", &nodes, "--slices", &skewed, "--service", &svc], 2);
    assert!(
        err.contains("no EndpointSlice is labelled kubernetes.io/service-name=checkout (found: shop/cart)"),
        "{err}"
    );
    fails(&["--slices", &skewed], 2);
    fails(&["--nodes", &nodes, "--slices", &skewed, "-o", "xml"], 2);
}

#[test]
fn the_schema_rejects_a_report_without_a_mode_or_with_an_unknown_reason() {
    let mut v = json(&fixture_args("nodes-3zones.yaml", "slices-balanced.yaml", None));
    v.as_object_mut().unwrap().remove("mode");
    assert!(!validator().is_valid(&v));
    let mut v = json(&fixture_args("nodes-3zones.yaml", "slices-balanced.yaml", None));
    v["routing"][0]["reason"] = "because".into();
    assert!(!validator().is_valid(&v));
}
