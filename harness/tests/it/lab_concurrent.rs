//! Concurrent tests on the lab with the real binary: clients of one test armed with one
//! start instant and released together, each client's measurement kept under its group,
//! the group summary (merged histogram, summed rates, answers per server, the members'
//! window overlap), and the endpoint load verdict: skewed PreferClose sends a third of the
//! load to zone c's one endpoint and is flagged; balanced Auto, and skewed Auto (where the
//! controller donates endpoints of a and b to zone c, so its load is shared), are not. Needs root (CI runs as root); takes the lab
//! tests' shared lock.

use crate::support::{lab_lock, run_on_lab};

const SCENARIO: &str = r#"
name = "concurrent"
[lab]
zones = "a,b,c"
nodes_per_zone = 2
service_dataplane = "iptables"
[agents]
clients_per_zone = 2
[defaults]
duration = "2s"
warmup = "200ms"
[topology]
modes = ["auto", "prefer-close"]
[[topology.placements]]
endpoints_per_zone = [2, 2, 2]
[[topology.placements]]
prefix = "skewed-"
endpoints_per_zone = [3, 3, 1]
[[tests]]
# A new connection per transaction: each one re-picks an endpoint, so the answers per
# endpoint measure the routing, not one connection's luck.
kind = "tcp-crr"
via = "service"
clients = "all"
[[tests]]
name = "rr-weighted"
kind = "tcp-rr"
via = "pod"
pairs = "cross-zone"
zone_weights = { a = 2, b = 1, c = 1 }
"#;

#[test]
fn concurrent_clients_start_together_and_skewed_prefer_close_is_flagged_as_overloaded() {
    let _lock = lab_lock(false);
    let (dir, r, stdout) = run_on_lab("concurrent", SCENARIO);
    let ms = r["measurements"].as_array().unwrap();
    let groups = r["groups"].as_array().unwrap();
    let group =
        |id: &str| groups.iter().find(|g| g["id"] == id).unwrap_or_else(|| panic!("no group {id}: {groups:#?}"));

    // Four Service variants with 6 clients each, and the pod test: one group per server
    // zone, its clients from the other zones (a has 2, b and c one each).
    assert_eq!(groups.len(), 4 + 3, "{:?}", groups.iter().map(|g| &g["id"]).collect::<Vec<_>>());
    for g in groups {
        let members = g["members"].as_array().unwrap();
        assert_eq!(g["failed"], 0, "{g:#}");
        assert_eq!(members.len(), g["clients"].as_array().unwrap().len(), "{g:#}");
        let overlap = g["overlap_pct"].as_f64().unwrap();
        assert!(overlap >= 90.0, "group {} overlapped only {overlap:.1} %", g["id"]);
        // The summary adds up its members: rates summed, answers summed, histogram merged.
        let rate = |m: &serde_json::Value| m["metrics"]["transactions_per_sec"].as_f64().unwrap();
        let members: Vec<&serde_json::Value> = members.iter().map(|i| &ms[i.as_u64().unwrap() as usize]).collect();
        for m in &members {
            assert_eq!(m["group"], g["id"], "{m:#}");
            assert!(m["window"]["end_ns"].as_u64().unwrap() > m["window"]["start_ns"].as_u64().unwrap());
        }
        let summed: f64 = members.iter().map(|m| rate(m)).sum();
        assert!((rate(g) - summed).abs() < 1e-6 * summed, "{} vs {summed}", rate(g));
        let answers: u64 =
            members.iter().flat_map(|m| m["servers"].as_object().unwrap().values()).map(|n| n.as_u64().unwrap()).sum();
        let group_answers: u64 = g["servers"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(answers, group_answers);
        let counts: u64 = members.iter().map(|m| m["latency"]["count"].as_u64().unwrap()).sum();
        assert_eq!(g["latency"]["count"].as_u64().unwrap(), counts, "merged, not averaged");
    }
    let zones = |g: &serde_json::Value| -> Vec<String> {
        let mut z: Vec<String> =
            g["clients"].as_array().unwrap().iter().map(|c| c["zone"].as_str().unwrap().into()).collect();
        z.sort();
        z
    };
    assert_eq!(zones(group("tcp-crr/auto/echo-auto/r0")), ["a", "a", "b", "b", "c", "c"]);
    assert_eq!(zones(group("rr-weighted/srv-a-0/r0")), ["b", "c"]);
    assert_eq!(zones(group("rr-weighted/srv-b-0/r0")), ["a", "a", "c"]);

    // The load verdicts: only skewed PreferClose overloads, and only zone c's endpoint.
    for id in [
        "tcp-crr/auto/echo-auto/r0",
        "tcp-crr/prefer-close/echo-prefer-close/r0",
        "tcp-crr/skewed-auto/echo-skewed-auto/r0",
    ] {
        let load = &group(id)["load"];
        assert_eq!(load["overloaded"], serde_json::json!([]), "{id}: {load:#}");
        assert_eq!(load["threshold"], 1.5);
    }
    let skewed = &group("tcp-crr/skewed-prefer-close/echo-skewed-prefer-close/r0")["load"];
    assert_eq!(skewed["overloaded"], serde_json::json!(["srv-c-0"]), "{skewed:#}");
    let c = skewed["endpoints"].as_array().unwrap().iter().find(|e| e["agent"] == "srv-c-0").unwrap();
    // A third of the load on one of 7 endpoints: 7/3 of the mean, measured and expected.
    let (ratio, expected) = (c["ratio"].as_f64().unwrap(), c["expected_ratio"].as_f64().unwrap());
    assert!((1.8..2.9).contains(&ratio), "{c:#}");
    assert!((expected - 7.0 / 3.0).abs() < 0.35, "{c:#}");
    assert!(stdout.contains("concurrent groups"), "{stdout}");
    assert!(stdout.contains("OVERLOADED: srv-c-0"), "{stdout}");
    let report = std::fs::read_to_string(dir.join("out/report.html")).unwrap();
    assert!(report.contains("Concurrent groups") && report.contains("OVERLOADED"), "the report shows the groups");
}
