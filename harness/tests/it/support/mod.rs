//! What several test modules share: the binary, scratch directories (the one helper for
//! them, [`scratch`]), the recorded lab run and edits to a run's measurements that keep the
//! histograms and the figures derived from them consistent, the lab tests' lock, the results
//! schema check; and, for the kube tests, the fake API server ([`fake_apiserver`]) and the
//! fake cluster each of them starts with ([`kube_client::fake_cluster`]).

pub mod fake_apiserver;
pub mod kube_client;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zonebench_agent::histogram;

pub fn zonebench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zonebench"))
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!("$ {cmd:?}\nexit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

/// A fresh, empty directory for one test under the system temp dir, removed when dropped
/// unless the test is failing (then it stays for a look). Bind it: a temporary is dropped at
/// once. Every scratch directory of the harness's tests comes from [`scratch`].
#[must_use]
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `zb-<tag>-<pid>-<n>`, `n` counting this process's scratch directories: all tests share
/// one process (one test binary), so neither a tag used twice nor two tests at once can
/// share a directory, and nextest's one process per test cannot either.
pub fn scratch(tag: &str) -> Scratch {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("zb-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// A lab run of scenario `text` with the real binary, in a scratch directory tagged `tag`:
/// the directory (the run is in `out/`), its results.json checked against the schema, and
/// what the run printed. Fails unless the run succeeded.
pub fn run_on_lab(tag: &str, text: &str) -> (Scratch, serde_json::Value, String) {
    let dir = scratch(tag);
    std::fs::write(dir.join("s.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .args(["run", "--platform", "lab"])
        .arg(dir.join("s.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let results = valid_results(&dir.join("out"));
    (dir, results, stdout)
}

/// A real run recorded on the lab (scenarios/quick.toml: 3 zones, tcp-rr, tcp-crr, http,
/// tcp-stream, one repeat).
pub fn recorded_run() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quick-lab.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Writes `results` as `dir/results.json` and returns `dir`.
pub fn write_run(dir: &Path, results: &serde_json::Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(results).unwrap()).unwrap();
    dir.to_path_buf()
}

/// Multiplies every latency of a measurement by `factor`: the histogram is rebuilt and the
/// summary figures and the transaction rate follow from it, as if the network were slower.
pub fn scale_latency(m: &mut serde_json::Value, factor: f64) {
    for field in ["latency", "connect"] {
        let Some(l) = m.get_mut(field).filter(|l| l.is_object()) else { continue };
        let h = histogram::decode(l["histogram"].as_str().unwrap()).unwrap();
        let mut scaled = histogram::new();
        for v in h.iter_recorded() {
            let value = (v.value_iterated_to() as f64 * factor) as u64;
            scaled.saturating_record_n(value.max(1), v.count_at_value());
        }
        *l = serde_json::to_value(histogram::summarize(&scaled).unwrap()).unwrap();
    }
    if let Some(t) = m["metrics"].get_mut("transactions_per_sec") {
        *t = serde_json::json!(t.as_f64().unwrap() / factor);
    }
}

/// The recorded run with each measurement repeated `n` times (repeat 0..n), each repeat's
/// latencies scaled by a small, fixed jitter: a run with `repeat = n` and a quiet machine.
pub fn repeated(n: u32, jitter: &[f64]) -> serde_json::Value {
    let mut r = recorded_run();
    let base: Vec<serde_json::Value> = r["measurements"].as_array().unwrap().clone();
    let mut out = Vec::new();
    for rep in 0..n {
        for m in &base {
            let mut m = m.clone();
            m["repeat"] = serde_json::json!(rep);
            scale_latency(&mut m, jitter[rep as usize % jitter.len()]);
            out.push(m);
        }
    }
    r["measurements"] = serde_json::Value::Array(out);
    r
}

pub fn is_cross_zone_tcp_rr(m: &serde_json::Value) -> bool {
    m["test"] == "tcp-rr" && m["client"]["zone"] != m["server"]["zone"]
}

/// Every file under `dir` with extension `ext`.
pub fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The lab tests' shared lock: lab, dataplane and eBPF tests run side by side (shared);
/// only the test that removes every lab (`lab down --all`) takes it exclusively. They need
/// root; CI runs as root, so a missing root is a failure, never a skip.
pub fn lab_lock(exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces, cgroups and BPF programs: run them as root (CI does)"
    );
    lock_file("lab-tests.lock", exclusive)
}

/// Held by every test that brings up a whole Kubernetes lab (besides [`lab_lock`]): such a
/// lab routes the pod network from the host, which only one lab at a time can.
pub fn kube_lab_lock() -> nix::fcntl::Flock<std::fs::File> {
    lock_file("kube-lab-tests.lock", true)
}

/// A flock on `/run/zonebench/<name>`, shared or exclusive.
fn lock_file(name: &str, exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    std::fs::create_dir_all("/run/zonebench").unwrap();
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new("/run/zonebench").join(name))
        .unwrap();
    let arg = if exclusive { nix::fcntl::FlockArg::LockExclusive } else { nix::fcntl::FlockArg::LockShared };
    nix::fcntl::Flock::lock(f, arg).map_err(|(_, e)| e).unwrap()
}

/// Waits until `f` holds, checking every 200 ms, and fails naming `what` after `within`.
pub fn eventually(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A run directory's results.json, checked against the checked-in schema.
pub fn valid_results(dir: &Path) -> serde_json::Value {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema");
    let load = |n: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(schemas.join(n)).unwrap()).unwrap()
    };
    let validator = jsonschema::options()
        .with_resource(
            "https://zonebench.dev/schema/test-result.schema.json",
            jsonschema::Resource::from_contents(load("test-result.schema.json")).unwrap(),
        )
        .build(&load("results.schema.json"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "results.json does not match the schema: {errors:#?}");
    v
}

/// The Kubernetes binaries' directory (`scripts/kube-binaries.sh`); a test that needs them
/// fails without them, naming the script (CI builds them), never skips.
pub fn kube_binaries() -> PathBuf {
    let bin = zonebench::platform::lab::kubernetes::bin_dir();
    for b in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"] {
        assert!(
            bin.join(b).is_file(),
            "{} is missing: run scripts/kube-binaries.sh to build the Kubernetes binaries (pinned at {})",
            bin.join(b).display(),
            zonebench::platform::lab::kubernetes::BINARIES_TAG
        );
    }
    bin
}
