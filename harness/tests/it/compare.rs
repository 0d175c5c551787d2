//! `zonebench compare`, `history`, `trend` and `render` from the command line, on a run
//! recorded on the lab: the exit codes the nightly job relies on, the measurements named in
//! each format, JUnit that parses as JUnit XML.

use std::collections::BTreeSet;

use crate::support::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The recorded run and a copy whose cross-zone tcp-rr latencies are 30 % higher.
fn base_and_slower(tag: &str) -> (Scratch, std::path::PathBuf, std::path::PathBuf, BTreeSet<String>) {
    let dir = scratch(tag);
    let base = write_run(&dir.join("base"), &recorded_run());
    let mut slow = recorded_run();
    let mut named = BTreeSet::new();
    for m in slow["measurements"].as_array_mut().unwrap() {
        if is_cross_zone_tcp_rr(m) {
            scale_latency(m, 1.3);
            named.insert(format!(
                "tcp-rr {}→{}",
                m["client"]["zone"].as_str().unwrap(),
                m["server"]["zone"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(named.len(), 6, "3 zones have 6 cross-zone pairs");
    let cand = write_run(&dir.join("cand"), &slow);
    (dir, base, cand, named)
}

#[test]
fn a_run_compared_with_itself_has_no_regression() {
    let tmp = scratch("self");
    let dir = write_run(&tmp, &recorded_run());
    let o = run(zonebench().args(["compare"]).arg(&dir).arg(&dir));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("OK: 0 regression(s)"), "{text}");
    assert!(!text.contains("warning: fingerprints differ"), "{text}");
}

#[test]
fn a_thirty_percent_slower_cross_zone_tcp_rr_exits_3_and_is_named() {
    let (_tmp, base, cand, named) = base_and_slower("slow");
    let o = run(zonebench().arg("compare").arg(&base).arg(&cand));
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let text = stdout(&o);
    let regressed: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("regression") && l.contains(" p50 "))
        .map(|l| l.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(regressed, named, "{text}");
    // The p50 rows say +30 %.
    for l in text.lines().filter(|l| l.starts_with("regression") && l.contains(" p50 ")) {
        assert!(l.contains("+30.0 %") || l.contains("+29.") || l.contains("+30."), "{l}");
    }
    // Nothing else regressed: same-zone pairs and other tests are untouched.
    assert!(!text.lines().any(|l| l.starts_with("regression") && !l.contains("tcp-rr")), "{text}");
}

#[test]
fn every_format_carries_the_verdict() {
    let (_tmp, base, cand, named) = base_and_slower("formats");
    let o = run(zonebench().arg("compare").arg(&base).arg(&cand).args(["--format", "json"]));
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p50: BTreeSet<String> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verdict"] == "regression" && r["metric"] == "p50")
        .map(|r| r["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(p50, named);
    assert!(v["counts"]["regressions"].as_u64().unwrap() >= 6);

    let o = run(zonebench().arg("compare").arg(&base).arg(&cand).args(["--format", "markdown"]));
    assert_eq!(o.status.code(), Some(3));
    let md = stdout(&o);
    assert!(md.starts_with("## zonebench compare: ❌ REGRESSION"), "{md}");
    for n in &named {
        assert!(md.contains(&format!("| regression | {n} | p50 |")), "{n} missing in\n{md}");
    }
}

#[test]
fn junit_output_parses_as_junit_xml_with_a_failure_per_regressed_measurement() {
    let (_tmp, base, cand, named) = base_and_slower("junit");
    let out_file = cand.join("junit.xml");
    let o =
        run(zonebench().arg("compare").arg(&base).arg(&cand).args(["--format", "junit", "--output"]).arg(&out_file));
    assert_eq!(o.status.code(), Some(3));
    let xml = std::fs::read_to_string(&out_file).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let attr = |n: roxmltree::Node<'_, '_>, a: &str| n.attribute(a).unwrap().parse::<usize>().unwrap();
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    assert_eq!(suites.len(), 4, "one suite per test: tcp-rr, tcp-crr, http, tcp-stream");
    let mut failed = BTreeSet::new();
    let mut total = 0;
    for s in &suites {
        assert!(s.attribute("name").is_some());
        let cases: Vec<_> = s.children().filter(|n| n.has_tag_name("testcase")).collect();
        assert_eq!(attr(*s, "tests"), cases.len());
        let with_failure: Vec<_> = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).collect();
        assert_eq!(attr(*s, "failures"), with_failure.len());
        for c in &cases {
            assert!(c.attribute("classname").unwrap().starts_with("zonebench."));
            assert!(c.attribute("time").is_some());
        }
        for c in with_failure {
            let f = c.children().find(|n| n.has_tag_name("failure")).unwrap();
            assert!(f.attribute("message").unwrap().starts_with("regression: "));
            failed.insert(c.attribute("name").unwrap().to_string());
        }
        total += cases.len();
    }
    assert_eq!(attr(root, "tests"), total);
    assert_eq!(total, 36, "one case per measurement of the recorded run");
    assert_eq!(failed, named);
    assert_eq!(attr(root, "failures"), named.len());
}

#[test]
fn with_repeats_a_shift_inside_the_noise_is_not_a_regression() {
    let dir = scratch("repeats");
    // Two runs of 3 repeats whose repeats interleave: medians 6 % apart, p = 0.5.
    let base = write_run(&dir.join("base"), &repeated(3, &[1.0, 1.12, 0.95]));
    let cand = write_run(&dir.join("cand"), &repeated(3, &[1.06, 0.97, 1.1]));
    let o = run(zonebench().arg("compare").arg(&base).arg(&cand));
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("not-significant"), "{text}");
    assert!(text.contains("noisy"), "spreads of 17 % are flagged: {text}");
    // The same shift with separated repeats is a regression.
    let cand = write_run(&dir.join("cand2"), &repeated(3, &[1.2, 1.21, 1.22]));
    let o = run(zonebench().arg("compare").arg(&base).arg(&cand).args(["--max-spread-pct", "50"]));
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{text}");
    assert!(text.lines().any(|l| l.starts_with("regression") && l.contains("0.050")), "p = 0.05 shown: {text}");
}

#[test]
fn a_baseline_is_found_by_name_and_differences_are_warned_about() {
    let dir = scratch("baseline");
    std::fs::create_dir_all(dir.join("results/baselines")).unwrap();
    let mut base = recorded_run();
    base["fingerprint"]["kernel"] = serde_json::json!("6.1.0");
    let only: serde_json::Value = base["measurements"][0].clone();
    base["measurements"].as_array_mut().unwrap().remove(0);
    std::fs::write(dir.join("results/baselines/quick.json"), serde_json::to_vec(&base).unwrap()).unwrap();
    let mut cand = recorded_run();
    cand["measurements"].as_array_mut().unwrap().push({
        let mut m = only.clone();
        m["params"]["request_size"] = serde_json::json!(512);
        m
    });
    write_run(&dir.join("run"), &cand);
    let o = run(zonebench().current_dir(&dir).args(["compare", "quick", "run"]));
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("results/baselines/quick.json"), "{text}");
    assert!(text.contains("warning: fingerprints differ in kernel: 6.1.0 → 6.18.44-fc-v595"), "{text}");
    let label =
        format!("tcp-rr {}→{}", only["client"]["zone"].as_str().unwrap(), only["server"]["zone"].as_str().unwrap());
    assert!(text.contains(&format!("only in candidate: {label}")), "{text}");
}

#[test]
fn bad_input_gets_exit_1_or_2_and_a_message_naming_it() {
    let o = run(zonebench().args(["compare", "/nonexistent/run"]));
    assert_eq!(o.status.code(), Some(2), "a missing argument is a usage error");
    let dir = scratch("bad");
    let o = run(zonebench().args(["compare", "/nonexistent/run"]).arg(&dir));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/run: no such run directory"));
    std::fs::write(dir.join("results.json"), "{\"schema_version\": 1,\n \"oops\": true}").unwrap();
    let o = run(zonebench().arg("compare").arg(&dir).arg(&dir));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("results.json:") && err.contains("not a zonebench results.json"), "{err}");
    let o = run(zonebench().args(["compare", "a", "b", "--threshold-pct", "-3"]));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn history_collects_runs_and_trend_draws_them() {
    let dir = scratch("history");
    let file = dir.join("h.csv");
    let first = write_run(&dir.join("r1"), &recorded_run());
    let mut later = recorded_run();
    later["started_at"] = serde_json::json!("2026-11-29T02:00:00Z");
    for m in later["measurements"].as_array_mut().unwrap() {
        scale_latency(m, 1.1);
    }
    let second = write_run(&dir.join("r2"), &later);
    for r in [&first, &second, &first] {
        let o = run(zonebench().args(["history", "add"]).arg(r).arg("--file").arg(&file));
        assert_eq!(o.status.code(), Some(0));
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(csv.starts_with(
        "started_at,scenario,status,platform,kernel,zonebench_version,run,test,variant,class,metric,value\n"
    ));
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let of = |run: &str| rows.iter().filter(|l| l.contains(&format!(",{run},"))).count();
    assert_eq!(of("r1"), of("r2"), "the repeated add of r1 added nothing");
    assert!(rows.iter().any(|l| l.contains(",tcp-rr,,cross-zone,p50_ns,")), "{csv}");
    assert!(rows.iter().any(|l| l.contains(",tcp-stream,,same-zone,throughput_bps,")), "{csv}");

    let svg_path = dir.join("trend.svg");
    let o = run(zonebench().arg("trend").arg("--file").arg(&file).arg("--out").arg(&svg_path).args([
        "--metric",
        "p50_ns",
        "--metric",
        "connect_p50_ns",
    ]));
    assert_eq!(o.status.code(), Some(0));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> =
        doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
    assert!(texts.contains(&"tcp-rr cross-zone"), "{texts:?}");
    assert!(texts.contains(&"connect_p50_ns"), "{texts:?}");
    // Each series has two points, one per run: a polyline per series.
    assert!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count() >= 4);

    let o = run(zonebench().arg("trend").arg("--file").arg(dir.join("none.csv")).arg("--out").arg(&svg_path));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the history has no rows"));
}

#[test]
fn render_cronjob_prints_the_cronjob_with_its_rbac_and_plain_render_prints_the_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = run(zonebench().current_dir(&root).args([
        "render",
        "--cronjob",
        "scenarios/nightly.toml",
        "--schedule",
        "30 3 * * *",
    ]));
    assert_eq!(o.status.code(), Some(0));
    let yaml = stdout(&o);
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .filter(|d| d.lines().any(|l| !l.starts_with('#') && !l.trim().is_empty()))
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    assert_eq!(cron["spec"]["schedule"], "30 3 * * *");
    assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount"));
    assert!(docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"));

    // Without --cronjob, render prints the run's own objects instead: no CronJob among them.
    let o = run(zonebench().current_dir(&root).args(["render", "scenarios/nightly.toml"]));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = stdout(&o);
    assert!(yaml.contains("kind: Pod") && !yaml.contains("kind: CronJob"), "{yaml}");
}
