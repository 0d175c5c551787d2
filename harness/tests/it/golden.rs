//! Golden outputs of a recorded run: the same inputs must give byte-identical files. The
//! fixture `tests/data/quick-lab.json` goes through load → store (results.json, results.csv),
//! compare against a copy whose cross-zone tcp-rr is 30 % slower (every output format),
//! report (report.html and every chart SVG), and `hints -o json` on the hints fixtures.
//! The golden files were written by the code before the layering change (ARCHITECTURE.md);
//! a change that alters any output on purpose regenerates them with `UPDATE_GOLDEN=1` and
//! says so in its commit.

use std::path::{Path, PathBuf};

use crate::support::*;
use zonebench::model::RunResults;
use zonebench::results::store::RunStore;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

/// Compares `actual` with the golden file `name` (or writes it under `UPDATE_GOLDEN=1`).
fn check(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != actual {
        let (w, a) = (String::from_utf8_lossy(&want), String::from_utf8_lossy(actual));
        let line =
            w.lines().zip(a.lines()).position(|(x, y)| x != y).unwrap_or(w.lines().count().min(a.lines().count()));
        panic!(
            "{name} differs from its golden file at line {}:\n  golden: {:?}\n  actual: {:?}",
            line + 1,
            w.lines().nth(line).unwrap_or("<end>"),
            a.lines().nth(line).unwrap_or("<end>")
        );
    }
}

fn slower_copy() -> serde_json::Value {
    let mut slow = recorded_run();
    for m in slow["measurements"].as_array_mut().unwrap() {
        if is_cross_zone_tcp_rr(m) {
            scale_latency(m, 1.3);
        }
    }
    slow
}

#[test]
fn results_files_are_rewritten_byte_for_byte() {
    let tmp = scratch("golden-store");
    let results: RunResults = serde_json::from_value(recorded_run()).unwrap();
    let mut store = RunStore::create(&tmp.join("run"), results).unwrap();
    store.flush().unwrap();
    check("results.json", &std::fs::read(tmp.join("run/results.json")).unwrap());
    check("results.csv", &std::fs::read(tmp.join("run/results.csv")).unwrap());
}

#[test]
fn compare_outputs_are_unchanged_in_every_format() {
    let tmp = scratch("golden-compare");
    let base = write_run(&tmp.join("base"), &recorded_run());
    let cand = write_run(&tmp.join("cand"), &slower_copy());
    for format in ["table", "markdown", "json", "junit"] {
        let o = run(zonebench().arg("compare").arg(&base).arg(&cand).args(["--format", format]));
        assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).replace(tmp.to_str().unwrap(), "<tmp>");
        check(&format!("compare.{format}"), text.as_bytes());
    }
}

#[test]
fn the_report_and_its_charts_are_unchanged() {
    let tmp = scratch("golden-report");
    let dir = write_run(&tmp.join("run"), &recorded_run());
    let o = run(zonebench().arg("report").arg(&dir));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap().replace(tmp.to_str().unwrap(), "<tmp>");
    check("report.html", html.as_bytes());
    let charts = files_with(&dir.join("charts"), "svg");
    assert!(!charts.is_empty());
    for chart in charts {
        let name = chart.file_name().unwrap().to_str().unwrap().to_string();
        check(&format!("charts/{name}"), &std::fs::read(&chart).unwrap());
    }
}

#[test]
fn hints_json_is_unchanged() {
    let fixture = |n: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hints").join(n);
    for (name, slices, service) in [
        ("balanced", "slices-balanced.yaml", None),
        ("skewed", "slices-skewed.yaml", None),
        ("prefer-close", "slices-skewed.yaml", Some("service-cart-prefer-close.yaml")),
        ("tie", "slices-tie.yaml", None),
    ] {
        let mut cmd = zonebench();
        cmd.args(["hints", "-o", "json", "--nodes"])
            .arg(fixture("nodes-3zones.yaml"))
            .arg("--slices")
            .arg(fixture(slices));
        if let Some(s) = service {
            cmd.arg("--service").arg(fixture(s));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).replace(env!("CARGO_MANIFEST_DIR"), "<manifest>");
        check(&format!("hints-{name}.json"), text.as_bytes());
    }
}
