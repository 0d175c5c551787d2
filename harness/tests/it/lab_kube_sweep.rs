//! The service-scaling sweep with the real kube-proxy, on the Kubernetes lab, as a user runs
//! it: `zonebench run kube-proxy-sweep` builds the lab, sweeps iptables and nftables mode
//! through the real kube-proxy (restarting it in the other mode between them), and first the
//! same two modes as the plain lab emulates them, into one results.json. Here at 10 and 1000
//! Services (the shipped scenario goes to 10,000). The figures are the real ones: rules
//! counted in the client node's namespace, kube-proxy's sync duration from its own metrics.

use std::collections::BTreeMap;
use std::process::Stdio;

use crate::support::{kube_binaries, kube_lab_lock, lab_lock, scratch, valid_results, zonebench};

#[test]
fn the_real_kube_proxy_sweeps_both_modes_beside_the_emulated_dataplanes() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let tmp = scratch("kube-lab-sweep");
    let out = tmp.join("run");
    let child = zonebench()
        .args(["run", "kube-proxy-sweep", "--set", "sweep.services=[10,1000]", "--set", "defaults.duration=1s"])
        .args(["--set", "defaults.warmup=200ms", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let r = valid_results(&out);
    assert_eq!(r["status"], "complete", "{r:#}");
    assert!(r["failures"].as_array().unwrap().is_empty(), "{:#}", r["failures"]);

    // (variant, services, test) → the point's service_dataplane and the measurement.
    let mut points: BTreeMap<(String, u64, String), serde_json::Value> = BTreeMap::new();
    for m in r["measurements"].as_array().unwrap() {
        let key = (
            m["variant"].as_str().unwrap().to_string(),
            m["params"]["services"].as_u64().unwrap(),
            m["name"].as_str().unwrap().to_string(),
        );
        points.insert(key, m.clone());
    }
    for variant in ["emulated/iptables", "emulated/nftables", "kube-proxy/iptables", "kube-proxy/nftables"] {
        for services in [10, 1000] {
            for test in ["tcp-crr", "tcp-rr"] {
                let m = points
                    .get(&(variant.to_string(), services, test.to_string()))
                    .unwrap_or_else(|| panic!("no {variant} × {services} {test} in {:?}", points.keys()));
                let d = &m["service_dataplane"];
                assert_eq!(d["kind"], variant.split('/').nth(1).unwrap(), "{m:#}");
                assert!(d["rules"].as_u64().is_some_and(|n| n > 0), "{variant} {services}: {d:#}");
                assert!(d["program_ns"].as_u64().is_some_and(|n| n > 0), "{variant} {services}: {d:#}");
                assert!(d["programming_latency_ns"].as_u64().is_some(), "{variant} {services}: {d:#}");
                if test == "tcp-crr" {
                    assert!(m["connect"]["p50_ns"].as_u64().is_some_and(|n| n > 0), "{m:#}");
                }
            }
        }
        // More Services, more rules: at least one of each added Service's own, on the node.
        let rules = |n: u64| {
            points[&(variant.to_string(), n, "tcp-crr".to_string())]["service_dataplane"]["rules"].as_u64().unwrap()
        };
        assert!(rules(1000) >= rules(10) + 990, "{variant}: {} rules at 10, {} at 1000", rules(10), rules(1000));
    }
    // The printed table names each variant.
    for variant in ["emulated/iptables", "kube-proxy/nftables"] {
        assert!(stdout.contains(variant), "{stdout}");
    }
    assert_eq!(r["fingerprint"]["extra"]["kube-proxy.kube_proxy_mode"], "iptables", "{:#}", r["fingerprint"]);
    // Both labs are gone: no lab state file of this run's is left.
    let left: Vec<String> = std::fs::read_dir("/run/zonebench/labs")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (st["owner_pid"] == pid).then(|| st["id"].to_string())
        })
        .collect();
    assert!(left.is_empty(), "labs left by the run: {left:?}");
}
