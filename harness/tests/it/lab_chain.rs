//! Service chains on the lab with the real binary: every request goes from a client in
//! zone a through three server agents in turn (each relaying to the next, the agents'
//! `serve --relay`), once all in zone a and once crossing a zone at every hop
//! (a → b → c → a), beside the one-hop pair (a → a, a → b). With 1 ms of one-way delay
//! between zones, each crossing adds about 2 ms of round trip, so the three-crossing chain
//! must add about three times what one crossing adds: the relay itself must add no more
//! than noise. Needs root (CI runs as root); takes the lab tests' shared lock.

use crate::support::{lab_lock, run_on_lab};

const SCENARIO: &str = r#"
name = "chain"
[lab]
zones = "a,b,c"
nodes_per_zone = 2
inter_zone_delay = "1ms"
[defaults]
duration = "2s"
warmup = "300ms"
[[tests]]
name = "hop-same"
kind = "http"
hops = ["a"]
[[tests]]
name = "hop-cross"
kind = "http"
hops = ["b"]
[[tests]]
name = "chain-same"
kind = "http"
hops = ["a", "a", "a"]
[[tests]]
name = "chain-cross"
kind = "http"
from = "a"
hops = ["b", "c", "a"]
"#;

#[test]
fn a_three_hop_chain_crossing_zones_adds_three_times_one_crossing() {
    let _lock = lab_lock(false);
    let (dir, r, stdout) = run_on_lab("chain", SCENARIO);
    let ms = r["measurements"].as_array().unwrap();
    let of = |name: &str| ms.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no {name}: {r:#}"));
    let p50 = |name: &str| of(name)["latency"]["p50_ns"].as_f64().unwrap();
    for (name, path, zones, crossed) in [
        ("hop-same", "srv-a-0", vec!["a", "a"], 0),
        ("hop-cross", "srv-b-0", vec!["a", "b"], 1),
        ("chain-same", "srv-a-0,srv-a-1,srv-a-2", vec!["a", "a", "a", "a"], 0),
        ("chain-cross", "srv-b-0,srv-c-0,srv-a-0", vec!["a", "b", "c", "a"], 3),
    ] {
        let m = of(name);
        let c = &m["chain"];
        assert_eq!(c["path"], path, "{m:#}");
        assert_eq!(c["zones"], serde_json::json!(zones));
        assert_eq!(c["zones_crossed"], crossed);
        assert_eq!(c["complete_pct"], 100.0, "every answer named every hop: {m:#}");
        assert_eq!(m["servers"].as_object().unwrap().keys().collect::<Vec<_>>(), [path]);
        assert_eq!(m["metrics"]["errors"], 0);
        // The last hop answered.
        assert_eq!(m["server"]["agent"], path.rsplit(',').next().unwrap());
    }
    let one = p50("hop-cross") - p50("hop-same");
    let three = p50("chain-cross") - p50("chain-same");
    assert!(one > 1.5e6, "one crossing added {one} ns with 1 ms each way");
    let ratio = three / one;
    assert!((2.4..=3.6).contains(&ratio), "three crossings added {three} ns, one {one} ns: {ratio:.2}×");
    assert!(stdout.contains("service chains"), "{stdout}");
    assert!(stdout.contains("chain-cross vs chain-same: +"), "{stdout}");
    assert!(stdout.contains("a → b → c → a"), "{stdout}");
    let report = std::fs::read_to_string(dir.join("out/report.html")).unwrap();
    assert!(report.contains("<h2 id=\"chains\">Service chains</h2>"));
}

/// A chain whose second hop is the Service in front of every server agent (one per zone):
/// the dataplane picks the agent per connection (`connection_close`, so per request), and
/// the record must say which it was from the answers. A pick of the first hop's own agent
/// brings the request back to it: that agent refuses the loop with a 508, and those answers
/// are counted as cut short, never as a path.
const VIA_SERVICE: &str = r#"
name = "chain-service"
[lab]
zones = "a,b,c"
nodes_per_zone = 1
[defaults]
duration = "1s"
warmup = "200ms"
[[tests]]
name = "via-service"
kind = "http"
from = "a"
hops = ["a", "service"]
connections = 4
connection_close = true
"#;

#[test]
fn a_chain_through_the_service_records_the_agents_the_dataplane_picked_and_refuses_loops() {
    let _lock = lab_lock(false);
    let (_dir, r, stdout) = run_on_lab("chain-service", VIA_SERVICE);
    let m = r["measurements"].as_array().unwrap().iter().find(|m| m["name"] == "via-service").unwrap();
    let servers = m["servers"].as_object().unwrap();
    let count = |path: &str| servers.get(path).and_then(|n| n.as_u64()).unwrap_or(0);
    let total: u64 = servers.values().map(|n| n.as_u64().unwrap()).sum();
    assert!(total > 50, "{m:#}");
    let looped = count("srv-a-0,srv-a-0");
    let (to_b, to_c) = (count("srv-a-0,srv-b-0"), count("srv-a-0,srv-c-0"));
    assert_eq!(looped + to_b + to_c, total, "only the three picks: {servers:?}");
    assert!(to_b > 0 && to_c > 0 && looped > 0, "the Service spread the picks: {servers:?}");
    // Every loop was refused as one, and only loops were.
    assert_eq!(m["metrics"]["status_counts"]["508"].as_u64().unwrap_or(0), looped, "{m:#}");
    let c = &m["chain"];
    assert_eq!(c["services"], serde_json::json!([1]), "{c:#}");
    let complete = 100.0 * (to_b + to_c) as f64 / total as f64;
    assert!((c["complete_pct"].as_f64().unwrap() - complete).abs() < 0.01, "{c:#}");
    // The record's route is the complete path most answers took, its zone read from it.
    let (path, zone) = if to_b >= to_c { ("srv-a-0,srv-b-0", "b") } else { ("srv-a-0,srv-c-0", "c") };
    assert_eq!(c["path"], path, "{c:#}");
    assert_eq!(c["zones"], serde_json::json!(["a", "a", zone]));
    assert_eq!(c["zones_crossed"], 1);
    assert!(stdout.contains(&format!("a → a → svc:{zone}")), "{stdout}");
    assert!(stdout.contains("were cut short by a hop"), "{stdout}");
}
