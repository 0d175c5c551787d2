//! `zonebench run` end to end, through the real binary: on the lab (root; CI runs as root,
//! so these fail rather than skip without it) and on the local platform; and a run
//! interrupted by SIGINT keeps what it measured and leaves nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::scratch;

fn zonebench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zonebench"))
}

fn validator() -> jsonschema::Validator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema");
    let load = |n: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(n)).unwrap()).unwrap()
    };
    jsonschema::options()
        .with_resource(
            "https://zonebench.dev/schema/test-result.schema.json",
            jsonschema::Resource::from_contents(load("test-result.schema.json")).unwrap(),
        )
        .build(&load("results.schema.json"))
        .unwrap()
}

fn read_results(dir: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "results.json does not match the schema: {errors:#?}");
    v
}

/// Lab namespaces and processes by this run's lab id prefix ("zb" + 4 hex + "-").
fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.len() > 7 && n.starts_with("zb") && n.as_bytes()[6] == b'-')
        .map(String::from)
        .collect()
}

fn lab_id_of(results: &serde_json::Value) -> String {
    results["fingerprint"]["extra"]["lab_id"].as_str().unwrap().to_string()
}

/// Holds the lab tests' shared lock (see tests/lab.rs): their `down_all` test removes every
/// lab on the host and must not run while one of ours is up.
fn require_root() -> nix::fcntl::Flock<std::fs::File> {
    assert!(nix::unistd::geteuid().is_root(), "the lab run tests need root (CI runs as root); run them with sudo");
    std::fs::create_dir_all("/run/zonebench").unwrap();
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/zonebench/lab-tests.lock")
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared).map_err(|(_, e)| e).unwrap()
}

const SMALL: &str = r#"
name = "small"
[lab]
zones = "a,b"
nodes_per_zone = 1
[defaults]
duration = "300ms"
warmup = "100ms"
[[tests]]
kind = "tcp-rr"
[[tests]]
kind = "udp-stream"
pairs = "cross-zone"
rate = "10M"
"#;

#[test]
fn a_small_lab_run_measures_every_pair_and_leaves_nothing_behind() {
    let _lock = require_root();
    let dir = scratch("run-lab");
    std::fs::write(dir.join("small.toml"), SMALL).unwrap();
    let out = zonebench()
        .args(["run", "--platform", "lab"])
        .arg(dir.join("small.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stderr.contains("platform: lab"), "{stderr}");
    assert!(stdout.contains("tcp-rr: p50 latency"), "{stdout}");

    let r = read_results(&dir.join("out"));
    assert_eq!(r["status"], "complete");
    assert_eq!(r["fingerprint"]["platform"], "lab");
    let ms = r["measurements"].as_array().unwrap();
    let pairs = |test: &str| -> Vec<(String, String)> {
        let mut v: Vec<_> = ms
            .iter()
            .filter(|m| m["test"] == test)
            .map(|m| {
                (m["client"]["zone"].as_str().unwrap().to_string(), m["server"]["zone"].as_str().unwrap().to_string())
            })
            .collect();
        v.sort();
        v
    };
    let all = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(pairs("tcp-rr"), all(&[("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]));
    assert_eq!(pairs("udp-stream"), all(&[("a", "b"), ("b", "a")]));
    for m in ms {
        // Who answered comes from the answers, and is the agent that was targeted.
        let server = m["server"]["agent"].as_str().unwrap();
        assert!(m["servers"][server].as_u64().unwrap() > 0, "{m:#}");
        assert_eq!(m["server"]["zone"].as_str().unwrap(), &server[4..5]);
    }
    let csv = std::fs::read_to_string(dir.join("out/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + ms.len());
    assert!(dir.join("out/scenario.toml").exists());
    // Every run ends with its report and the noise section (empty: one repeat).
    assert!(dir.join("out/report.html").exists() && dir.join("out/charts/tcp-rr-matrix.svg").exists());
    assert_eq!(r["noise"]["max_spread_pct"], 10.0);

    let id = lab_id_of(&r);
    assert!(lab_namespaces().iter().all(|n| !n.starts_with(&id)), "namespaces of {id} left: {:?}", lab_namespaces());
    assert!(!Path::new(&format!("/run/zonebench/labs/{id}.json")).exists());
}

#[test]
fn sigint_mid_run_keeps_the_finished_measurements_and_tears_down() {
    let _lock = require_root();
    let dir = scratch("run-sigint");
    std::fs::write(
        dir.join("long.toml"),
        "name = \"long\"\n[lab]\nzones = \"a,b\"\nnodes_per_zone = 1\n[defaults]\nduration = \"1s\"\nwarmup = \"100ms\"\n\
         [[tests]]\nkind = \"tcp-rr\"\n",
    )
    .unwrap();
    let out_dir = dir.join("out");
    let child = zonebench()
        .args(["run", "--platform", "lab"])
        .arg(dir.join("long.toml"))
        .arg("--out")
        .arg(&out_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first measurement, then interrupt the second.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no measurement within 60 s");
        if let Ok(text) = std::fs::read_to_string(out_dir.join("results.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["measurements"].as_array().is_some_and(|m| !m.is_empty()) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted run must exit non-zero\n{stderr}");

    let r = read_results(&out_dir);
    assert_eq!(r["status"], "interrupted", "{stderr}");
    let n = r["measurements"].as_array().unwrap().len();
    assert!((1..4).contains(&n), "{n} measurements");
    assert!(out_dir.join("report.html").exists(), "an interrupted run gets a report of what it measured");
    let id = lab_id_of(&r);
    assert!(lab_namespaces().iter().all(|ns| !ns.starts_with(&id)), "left: {:?}", lab_namespaces());
}

#[test]
fn the_local_platform_runs_a_scenario_on_loopback() {
    let dir = scratch("run-local");
    std::fs::write(dir.join("small.toml"), SMALL).unwrap();
    let out = zonebench()
        .args(["run", "--platform", "local", "--set", "tests.1.pairs=same-zone"])
        .arg(dir.join("small.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("platform: local"), "{stderr}");
    let r = read_results(&dir.join("out"));
    assert_eq!(r["fingerprint"]["platform"], "local");
    assert_eq!(r["measurements"].as_array().unwrap().len(), 4 + 2);
}

#[test]
fn a_report_that_cannot_be_written_is_a_warning_and_the_run_still_succeeds() {
    let dir = scratch("run-noreport");
    std::fs::write(dir.join("small.toml"), SMALL).unwrap();
    // A file where the charts directory should go: the report cannot be written.
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/charts"), "in the way").unwrap();
    let out = zonebench()
        .args(["run", "--platform", "local", "--set", "tests.1.pairs=same-zone"])
        .arg(dir.join("small.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: the report was not written"), "{stderr}");
    let r = read_results(&dir.join("out"));
    assert_eq!(r["status"], "complete");
    assert_eq!(r["measurements"].as_array().unwrap().len(), 4 + 2);
    assert!(!dir.join("out/report.html").exists());
}

#[test]
fn a_bad_scenario_is_a_usage_error_naming_file_line_and_field() {
    let dir = scratch("run-bad");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[lab]\nzones = \"a\"\n\n[[tests]]\nkind = \"tcp-rr\"\npairs = \"cross-zone\"\n").unwrap();
    let out = zonebench().arg("run").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:6: tests[0].pairs", file.display())), "{stderr}");
    let out = zonebench()
        .arg("run")
        .arg(&file)
        .args(["--set", "lab.zones=a,b", "--set", "lab.routing=warp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--set lab.routing=warp"));
}
