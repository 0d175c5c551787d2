//! The topology-routing A/B end to end on the lab with the real binary: one Service per
//! variant (balanced and skewed endpoints under none, topology-mode Auto and
//! trafficDistribution PreferClose), hints computed as the EndpointSlice controller does,
//! routing as kube-proxy does on them, and locality measured from who answered. Needs root
//! (CI runs as root); takes the lab tests' shared lock.

use std::collections::BTreeMap;

use crate::support::{lab_lock, run_on_lab};

const SCENARIO: &str = r#"
name = "topology-ab"
[lab]
zones = "a,b,c"
nodes_per_zone = 2
service_dataplane = "iptables"
[defaults]
duration = "1s"
warmup = "100ms"
via = "service"
[topology]
modes = ["none", "auto", "prefer-close"]
[[topology.placements]]
endpoints_per_zone = [3, 3, 3]
[[topology.placements]]
prefix = "skewed-"
endpoints_per_zone = [2, 2, 1]
[[tests]]
kind = "tcp-crr"
request_size = 100
response_size = 100
"#;

#[test]
fn hints_keep_traffic_in_zone_where_the_controller_writes_them_and_skewed_auto_falls_back_to_cluster_wide() {
    let _lock = lab_lock(false);
    let (_dir, r, stdout) = run_on_lab("topo-ab", SCENARIO);

    // (variant, client zone) → (in-zone fraction, measurement).
    let mut by: BTreeMap<(String, String), (f64, &serde_json::Value)> = BTreeMap::new();
    for m in r["measurements"].as_array().unwrap() {
        let key = (m["variant"].as_str().unwrap().to_string(), m["client"]["zone"].as_str().unwrap().to_string());
        let f = m["locality"]["in_zone_fraction"].as_f64().unwrap();
        assert!(
            m["locality"]["answers_by_zone"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>()
                > 50,
            "{m:#}"
        );
        by.insert(key, (f, m));
    }
    assert_eq!(by.len(), 6 * 3, "every variant from every zone: {:?}", by.keys());
    let frac = |v: &str, z: &str| by[&(v.to_string(), z.to_string())].0;
    let verdict = |v: &str| &by[&(v.to_string(), "a".to_string())].1["hints"];

    for z in ["a", "b", "c"] {
        // Cluster-wide routing over 3 + 3 + 3 endpoints: about a third stays.
        assert!((0.15..0.55).contains(&frac("none", z)), "none from {z}: {}", frac("none", z));
        for v in ["auto", "prefer-close", "skewed-prefer-close"] {
            assert!(frac(v, z) >= 0.95, "{v} from {z}: {}", frac(v, z));
        }
    }
    // Skewed Auto is refused with the controller's own event, and routes cluster-wide:
    // the share of endpoints in the client's zone (2/5, 2/5, 1/5).
    let refused = verdict("skewed-auto");
    assert_eq!(refused["enabled"], false, "{refused:#}");
    assert_eq!(refused["event"]["reason"], "TopologyAwareHintsDisabled", "{refused:#}");
    let message = refused["event"]["message"].as_str().unwrap();
    assert!(message.starts_with("Unable to allocate minimum required endpoints"), "{message}");
    for (z, share) in [("a", 0.4), ("b", 0.4), ("c", 0.2)] {
        let f = frac("skewed-auto", z);
        assert!((f - share).abs() < 0.15, "skewed-auto from {z}: {f}, cluster-wide share {share}");
    }
    assert_eq!(verdict("auto")["enabled"], true);
    assert_eq!(verdict("skewed-prefer-close")["enabled"], true);
    assert_eq!(verdict("none")["enabled"], false);

    // Cost: only what crossed is priced.
    let cost = &r["cost"];
    assert_eq!(cost["per_gb_cross_zone"], 0.01);
    let lines = cost["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 18);
    for l in lines {
        let usd = l["monthly_usd_at_rate"].as_f64().unwrap();
        match l["variant"].as_str().unwrap() {
            "none" | "skewed-none" | "skewed-auto" => assert!(usd > 0.0, "{l:#}"),
            _ => assert!(usd < 0.05 * 200.0 * 1000.0 * 2.592e6 / 1e9 * 0.02, "{l:#}"),
        }
    }
    assert!(stdout.contains("hints verdict"), "{stdout}");
    assert!(stdout.contains("TopologyAwareHintsDisabled"), "{stdout}");
}
