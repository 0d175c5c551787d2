//! `scripts/nightly.sh` end to end on the lab: a first night makes its run the baseline; a
//! second night, against a baseline whose cross-zone tcp-rr was twice as fast, exits 3 and
//! names those measurements in the summary and the JUnit file; both nights land in the
//! history and the trend. Needs root (the lab), like the other lab tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One night: a short version of scenarios/nightly.toml on two zones with 500 µs between
/// them, so cross-zone latency is steady enough for a 3-repeat verdict.
fn night(dir: &Path, out: &str) -> (Option<i32>, String) {
    let o = run(Command::new("bash")
        .arg(repo().join("scripts/nightly.sh"))
        .arg("scenarios/nightly.toml")
        .args(["--set", "lab.zones=a,b", "--set", "lab.inter_zone_delay=500us"])
        .args(["--set", "defaults.duration=300ms", "--set", "defaults.warmup=100ms", "--set", "defaults.repeat=3"])
        .current_dir(repo())
        .env("ZONEBENCH", env!("CARGO_BIN_EXE_zonebench"))
        .env("OUT", dir.join(out))
        .env("BASELINE", dir.join("baselines/nightly.json"))
        .env("HISTORY", dir.join("history.csv"))
        // The regression below doubles a latency; a wide threshold on p50 alone keeps this
        // shared machine's noise (same-zone p50s of ~25 µs swing by tens of %) from voting.
        .env("THRESHOLD_PCT", "50")
        .env("METRICS", "p50")
        .env_remove("GITHUB_STEP_SUMMARY"));
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

fn junit_failures(path: &Path) -> Vec<String> {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "testsuites");
    doc.descendants()
        .filter(|n| n.has_tag_name("testcase") && n.children().any(|c| c.has_tag_name("failure")))
        .map(|n| n.attribute("name").unwrap().to_string())
        .collect()
}

#[test]
fn the_nightly_job_makes_a_baseline_then_catches_a_regression() {
    let _lock = lab_lock(false);
    let dir = scratch("nightly");

    // Night 1: no baseline yet, so this run becomes it, and the verdict is clean.
    let (code, summary) = night(&dir, "night1");
    assert_eq!(code, Some(0), "{summary}");
    assert!(summary.contains("No baseline existed"), "{summary}");
    assert!(dir.join("baselines/nightly.json").is_file());
    for f in ["results.json", "report.html", "summary.md", "junit.xml", "compare.json", "trend.svg", "run.log"] {
        assert!(dir.join("night1").join(f).is_file(), "night1/{f} missing");
    }
    assert!(junit_failures(&dir.join("night1/junit.xml")).is_empty());

    // The baseline remembers cross-zone tcp-rr at half its latency: tonight is 2× slower.
    let path = dir.join("baselines/nightly.json");
    let mut base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for m in base["measurements"].as_array_mut().unwrap() {
        if is_cross_zone_tcp_rr(m) {
            scale_latency(m, 0.5);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&base).unwrap()).unwrap();

    let (code, summary) = night(&dir, "night2");
    assert_eq!(code, Some(3), "{summary}");
    assert!(summary.contains("REGRESSION"), "{summary}");
    for pair in ["tcp-rr a→b", "tcp-rr b→a"] {
        assert!(summary.contains(&format!("| regression | {pair} | p50 |")), "{pair} not named:\n{summary}");
    }
    let mut failed = junit_failures(&dir.join("night2/junit.xml"));
    failed.sort();
    assert!(failed.contains(&"tcp-rr a→b".to_string()) && failed.contains(&"tcp-rr b→a".to_string()), "{failed:?}");
    // Cross-zone paths carry 500 µs of emulated delay each way, so their noise is small next
    // to a doubling: among them, only tcp-rr may be named.
    let cross = |f: &&String| f.rsplit_once(' ').and_then(|(_, p)| p.split_once('→')).is_some_and(|(a, b)| a != b);
    assert!(failed.iter().filter(cross).all(|f| f.starts_with("tcp-rr")), "only tcp-rr was made slower: {failed:?}");

    // Both nights are in the history, and the trend draws them.
    let history = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    assert!(history.contains(",night1,") && history.contains(",night2,"), "{history}");
    let svg = std::fs::read_to_string(dir.join("night2/trend.svg")).unwrap();
    roxmltree::Document::parse(&svg).unwrap();
}
