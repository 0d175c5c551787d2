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
