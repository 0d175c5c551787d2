//! The capacity search on the lab with the real binary: an HTTP and a tcp-rr path whose
//! server agents answer at most 1000 requests/s (`agents.max_answer_qps`, the agent's
//! `--max-answer-qps`), searched with `qps = "max"` against a p99 SLO. The search must find
//! the limit by measuring (above it the achieved rate falls short and the queue grows) within
//! 10 %, and an SLO no rate can meet must say so with the lowest rate tried. The limit sits
//! far below what a debug build serves on a busy CI machine, and the SLO far above its
//! noise, so only the limit decides. Needs root (CI runs as root);
//! takes the lab tests' shared lock.

use crate::support::{lab_lock, run_on_lab};

const SCENARIO: &str = r#"
name = "capacity"
[lab]
zones = "a,b"
nodes_per_zone = 2
[agents]
max_answer_qps = 1000
[defaults]
duration = "1s"
warmup = "300ms"
pairs = "same-zone"
[[tests]]
kind = "http"
connections = 64
qps = "max"
slo_p99 = "100ms"
search_min_qps = 125
search_max_qps = 16000
[[tests]]
kind = "tcp-rr"
connections = 4
qps = "max"
slo_p99 = "100ms"
search_min_qps = 125
search_max_qps = 16000
[[tests]]
name = "impossible"
kind = "http"
connections = 4
qps = "max"
slo_p99 = "1us"
search_min_qps = 100
"#;

#[test]
fn a_capacity_search_finds_the_servers_answer_limit_and_an_unmeetable_slo_says_so() {
    let _lock = lab_lock(false);
    let (dir, r, stdout) = run_on_lab("capacity", SCENARIO);
    let caps = r["capacities"].as_array().unwrap();
    assert_eq!(caps.len(), 6, "three tests from each of two zones: {caps:#?}");
    let ms = r["measurements"].as_array().unwrap();
    for c in caps.iter().filter(|c| c["name"] == "http" || c["name"] == "tcp-rr") {
        let found = c["max_qps"].as_f64().unwrap_or_else(|| panic!("{c:#}"));
        assert!((900.0..=1100.0).contains(&found), "found {found} against a 1000/s limit: {c:#}");
        let curve = c["curve"].as_array().unwrap();
        assert!(curve.len() >= 6 && curve.len() <= 16, "{}", curve.len());
        // Every point is its own measurement at the rate asked, and the rates above the
        // limit missed by measurement, not by refusal.
        for p in curve {
            let m = &ms[p["measurement"].as_u64().unwrap() as usize];
            assert_eq!(m["params"]["qps"].as_f64(), p["asked_qps"].as_f64());
            if p["asked_qps"].as_f64().unwrap() > 1150.0 {
                assert_eq!(p["met"], false, "{p:#}");
                let why = p["why"].as_str().unwrap();
                assert!(why.contains("of the rate asked") || why.contains("over the SLO"), "{why}");
            }
        }
        assert!(c["verdict"].as_str().unwrap().contains("meets the SLO"), "{c:#}");
    }
    for c in caps.iter().filter(|c| c["name"] == "impossible") {
        assert!(c.get("max_qps").is_none(), "{c:#}");
        assert_eq!(c["curve"].as_array().unwrap().len(), 1);
        let verdict = c["verdict"].as_str().unwrap();
        assert!(verdict.starts_with("no rate met the SLO") && verdict.contains("lowest tried 100 req/s"), "{verdict}");
    }
    assert_eq!(caps.iter().filter(|c| c["name"] == "tcp-rr").count(), 2, "{caps:#?}");
    assert!(stdout.contains("capacity http/cli-a-0/srv-a-0/r0"), "{stdout}");
    let report = std::fs::read_to_string(dir.join("out/report.html")).unwrap();
    assert!(report.contains("<h2 id=\"capacity\">Capacity</h2>"));
}
