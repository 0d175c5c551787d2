//! `zonebench run` through Services, end to end on the lab with the real binary: a
//! `via = "service"` scenario and a small service-scaling sweep. Needs root (CI runs as
//! root); takes the lab tests' shared lock.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support::{lab_lock, scratch, valid_results};

fn zonebench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zonebench"))
}

fn assert_lab_gone(r: &serde_json::Value) {
    let id = r["fingerprint"]["extra"]["lab_id"].as_str().unwrap();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|n| !n.starts_with(&format!("{id}-"))), "namespaces of {id} left: {left:?}");
    assert!(!Path::new(&format!("/run/zonebench/labs/{id}.json")).exists());
}

fn run(dir: &Path, scenario: &str) -> std::process::Output {
    std::fs::write(dir.join("s.toml"), scenario).unwrap();
    zonebench()
        .args(["run", "--platform", "lab"])
        .arg(dir.join("s.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap()
}

#[test]
fn a_service_test_reaches_the_servers_of_every_zone_through_one_vip() {
    let _lock = lab_lock(false);
    let dir = scratch("svc-via");
    let out = run(
        &dir,
        r#"
name = "via-service"
[lab]
zones = "a,b"
nodes_per_zone = 2
service_dataplane = "nftables"
[defaults]
duration = "1s"
warmup = "100ms"
[[tests]]
kind = "tcp-crr"
via = "service"
[[tests]]
kind = "tcp-rr"
pairs = "same-zone"
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = valid_results(&dir.join("out"));
    assert_eq!(r["fingerprint"]["extra"]["service_dataplane"], "nftables");
    let ms = r["measurements"].as_array().unwrap();
    let via_service: Vec<&serde_json::Value> = ms.iter().filter(|m| m["via"] == "service").collect();
    assert_eq!(via_service.len(), 2, "one tcp-crr per client zone");
    let mut clients = BTreeSet::new();
    for m in &via_service {
        clients.insert(m["client"]["zone"].as_str().unwrap().to_string());
        let servers: Vec<&str> = m["servers"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(servers, ["srv-a-0", "srv-b-0"], "the Service spreads over both zones: {m:#}");
        assert!(m["target"].as_str().unwrap().starts_with("198.18.128."), "{m:#}");
    }
    assert_eq!(clients, BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(ms.iter().filter(|m| m["via"] == "pod").count(), 2);
    assert_lab_gone(&r);
}

#[test]
fn a_small_sweep_measures_every_dataplane_at_every_point() {
    let _lock = lab_lock(false);
    let dir = scratch("svc-sweep");
    let out = run(
        &dir,
        r#"
name = "sweep"
[lab]
zones = "a"
nodes_per_zone = 2
[agents]
servers_per_zone = 2
[defaults]
duration = "500ms"
warmup = "100ms"
via = "service"
[sweep]
dataplanes = ["ebpf", "nftables", "iptables", "iptables-legacy"]
services = [3, 30]
[[tests]]
kind = "tcp-crr"
[[tests]]
kind = "tcp-rr"
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    let r = valid_results(&dir.join("out"));
    assert_eq!(r["status"], "complete", "{stderr}");
    let ms = r["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 4 * 2 * 2, "four dataplanes × two counts × two tests: {stderr}");
    for m in ms {
        let d = &m["service_dataplane"];
        assert_eq!(m["variant"], d["kind"]);
        assert_eq!(m["params"]["services"], d["services"]);
        assert_eq!(m["server"]["agent"].as_str().unwrap()[..6], *"srv-a-", "{m:#}");
        if m["test"] == "tcp-crr" {
            assert_eq!(m["servers"].as_object().unwrap().len(), 2, "both endpoints answer new connections: {m:#}");
        }
        let newest = format!("198.18.128.{}:", d["services"].as_u64().unwrap());
        assert!(m["target"].as_str().unwrap().starts_with(&newest), "the newest Service is measured: {m:#}");
        assert!(d["program_ns"].as_u64().unwrap() > 0 && d["programming_latency_ns"].as_u64().unwrap() > 0);
    }
    for kind in ["ebpf", "nftables", "iptables", "iptables-legacy"] {
        let rules = |n: u64| {
            ms.iter()
                .find(|m| m["variant"] == kind && m["params"]["services"] == n)
                .map(|m| m["service_dataplane"]["rules"].as_u64().unwrap())
                .unwrap()
        };
        assert!(rules(30) > rules(3), "{kind}: more Services, more rules");
    }
    assert_eq!(r["failures"].as_array().unwrap().len(), 0, "{stderr}");
    assert!(stdout.contains("iptables-legacy") && stdout.contains("ebpf"), "{stdout}");
    assert_lab_gone(&r);
}
