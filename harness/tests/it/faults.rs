//! Injected faults on the lab, through the real `zonebench` binary: a server agent killed or
//! stopped mid-test, a node's namespace deleted mid-run, a zone cut off mid-test, the
//! coordinator SIGKILLed (then `lab down --all`), the results directory full. Each test
//! checks what the run recorded (results.json valid against the schema, the failure naming
//! the agent, the partial results kept), that it ended within its bound, and that nothing is
//! left behind: no process, namespace, cgroup, mount, state file, run directory, and no
//! change to the host's iptables or nftables rules.
//!
//! Faults are injected from outside, as an operator or a broken network would: signals to
//! the agents' pids (from the lab's state file), `ip netns delete`, `ip route del` in the
//! router, a tmpfs filled up. The moment "mid-test" is read from the server agent's own
//! counters (`GET /metrics` on its control socket), so the fault hits a step that is running.
//! These need root (CI runs as root) and fail without it.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{lab_lock, scratch, valid_results, zonebench, Scratch};

// ---------------------------------------------------------------------------------------
// What the host looks like, and what a lab may leave.

/// The host's firewall rules, which no plain lab may touch.
#[derive(Debug, PartialEq)]
struct HostRules {
    iptables: String,
    nft: String,
}

fn host_rules() -> HostRules {
    let text = |argv: &[&str]| -> String {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    // Comments carry times and counters change; the rules themselves must not.
    let rules = |s: String| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(
                |l| if l.starts_with(':') { l.split(' ').take(2).collect::<Vec<_>>().join(" ") } else { l.to_string() },
            )
            .collect::<Vec<_>>()
            .join("\n")
    };
    HostRules { iptables: rules(text(&["iptables-save"])), nft: text(&["nft", "list", "ruleset"]) }
}

/// Live processes whose command line mentions `s`.
fn processes_mentioning(s: &str) -> Vec<String> {
    let mut found = vec![];
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().into_string().unwrap_or_default();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(s) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

/// Everything a lab could leave, named; empty when it left nothing.
fn leftovers(id: &str, rules_before: &HostRules) -> Vec<String> {
    let prefix = format!("{id}-");
    let mut left = vec![];
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with(&prefix)).collect()
        })
        .unwrap_or_default();
    if !namespaces.is_empty() {
        left.push(format!("namespaces {namespaces:?}"));
    }
    for p in processes_mentioning(id) {
        left.push(format!("process {p}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines().filter(|l| l.contains(id)) {
        left.push(format!("mount {m}"));
    }
    if let Some(cg) = cgroup2_mount() {
        for e in std::fs::read_dir(&cg).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    for f in [format!("/run/zonebench/labs/{id}.json"), format!("/run/zonebench/{id}")] {
        if Path::new(&f).exists() {
            left.push(f);
        }
    }
    let rules_now = host_rules();
    if &rules_now != rules_before {
        left.push(format!("host rules changed: before {rules_before:#?}\nafter {rules_now:#?}"));
    }
    left
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

fn assert_nothing_left(id: &str, rules_before: &HostRules) {
    // Teardown has finished when the run exits; give the kernel a moment to reap.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(id, rules_before);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "lab {id} left behind:\n{}", left.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// A run of the real binary, and the lab it builds.

struct LabRun {
    child: Option<Child>,
    out: PathBuf,
    started: Instant,
    _dir: Scratch,
}

impl Drop for LabRun {
    fn drop(&mut self) {
        // A failing test must not leave a run going.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_run(tag: &str, scenario: &str, out: Option<PathBuf>) -> LabRun {
    let dir = scratch(tag);
    let file = dir.join(format!("{tag}.toml"));
    std::fs::write(&file, scenario).unwrap();
    let out = out.unwrap_or_else(|| dir.join("out"));
    let child = zonebench()
        .args(["run", "--platform", "lab"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    LabRun { child: Some(child), out, started: Instant::now(), _dir: dir }
}

impl LabRun {
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Waits for the run to end within `within` (killing it past that, as a failure).
    fn finish(&mut self, within: Duration) -> (Output, Duration) {
        let mut child = self.child.take().unwrap();
        let deadline = self.started + within;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("the run did not end within {within:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = self.started.elapsed();
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "run ended after {took:?} with {:?}\nstderr:\n{}\nstdout:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        (out, took)
    }

    fn results(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.out.join("results.json")).ok()?).ok()
    }

    /// The lab id, from the results' fingerprint (written before the agents start).
    fn lab_id(&self) -> String {
        wait_for("the run's lab id in results.json", Duration::from_secs(60), || {
            self.results()?["fingerprint"]["extra"]["lab_id"].as_str().map(String::from)
        })
    }

    fn measurements(&self) -> usize {
        self.results().and_then(|r| r["measurements"].as_array().map(Vec::len)).unwrap_or(0)
    }
}

/// Polls `f` every 20 ms until it gives a value; fails naming `what` after `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lab's state file.
fn lab_state(id: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(format!("/run/zonebench/labs/{id}.json")).ok()?).ok()
}

/// The pid of `agent` of lab `id`, once it runs.
fn agent_pid(id: &str, agent: &str) -> i32 {
    let role = format!("agent:{agent}");
    wait_for(&format!("process of {agent}"), Duration::from_secs(60), || {
        let st = lab_state(id)?;
        st["processes"].as_array()?.iter().find(|p| p["role"] == role.as_str())?["pid"].as_i64().map(|p| p as i32)
    })
}

/// One counter of `agent`'s `GET /metrics`, over its control socket with the lab's token;
/// None while the agent is not up (or not answering).
fn agent_metric(id: &str, agent: &str, series: &str) -> Option<f64> {
    let st = lab_state(id)?;
    let run_dir = PathBuf::from(st["run_dir"].as_str()?);
    let token = std::fs::read_to_string(run_dir.join("token")).ok()?;
    let mut s = UnixStream::connect(run_dir.join(format!("{agent}.sock"))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| l.starts_with(series) && matches!(l.as_bytes().get(series.len()), Some(b' ' | b'{')))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until `agent` has served traffic of a running step (`series` above zero).
fn wait_serving(id: &str, agent: &str, series: &str) {
    wait_for(&format!("{series} on {agent}"), Duration::from_secs(60), || {
        agent_metric(id, agent, series).filter(|&v| v > 0.0)
    });
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("{sig} to {pid}: {e}"));
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn failures(r: &serde_json::Value) -> Vec<serde_json::Value> {
    r["failures"].as_array().cloned().unwrap_or_default()
}

fn measurements(r: &serde_json::Value) -> Vec<serde_json::Value> {
    r["measurements"].as_array().cloned().unwrap_or_default()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Two zones of one node each; tcp-rr over the zone matrix (4 steps); short steps and a
/// 1 s operation timeout.
const TCP_RR: &str = r#"
name = "fault"
[lab]
zones = "a,b"
nodes_per_zone = 1
[defaults]
duration = "2s"
warmup = "200ms"
timeout = "1s"
[[tests]]
kind = "tcp-rr"
"#;

/// The longest a run of `steps` steps of `step` each may take: every step at most its
/// window, its operation timeout and the coordinator's grace, plus build and teardown.
fn bound(steps: u32, step: Duration) -> Duration {
    Duration::from_secs(30) + steps * (step + Duration::from_secs(1) + Duration::from_secs(5))
}

// ---------------------------------------------------------------------------------------
// The faults.

#[test]
fn a_server_agent_killed_mid_test_is_a_failure_naming_it_and_the_run_goes_on() {
    let _lock = lab_lock(false);
    let rules = host_rules();
    let mut run = start_run("fault-kill", TCP_RR, None);
    let id = run.lab_id();
    let pid = agent_pid(&id, "srv-b-0");
    wait_serving(&id, "srv-b-0", "zonebench_tcp_transactions_total");
    signal(pid, Signal::SIGKILL);
    let (out, _) = run.finish(bound(4, Duration::from_millis(2200)));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a run with a failed step exits 1\n{err}");
    let r = valid_results(&run.out);
    assert_eq!(r["status"], "complete", "the run went on past the dead agent");
    let fs = failures(&r);
    assert!(!fs.is_empty(), "no failure recorded\n{err}");
    for f in &fs {
        assert_eq!(f["server"], "srv-b-0", "only steps to the killed agent fail: {f:#}");
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("srv-b-0"), "the failure's error names the agent: {e}");
        assert!(e.contains("not answering") || e.contains("not running"), "and says it is down: {e}");
    }
    let ms = measurements(&r);
    assert_eq!(ms.len() + fs.len(), 4, "every step is a measurement or a failure");
    assert!(ms.iter().all(|m| m["server"]["agent"] == "srv-a-0"), "{ms:#?}");
    assert!(err.contains("srv-b-0"), "the warning names the agent\n{err}");
    assert_nothing_left(&id, &rules);
}

#[test]
fn a_server_agent_that_accepts_and_never_answers_times_the_step_out_within_its_bound() {
    let _lock = lab_lock(false);
    let rules = host_rules();
    let mut run = start_run("fault-stop", TCP_RR, None);
    let id = run.lab_id();
    let pid = agent_pid(&id, "srv-b-0");
    wait_serving(&id, "srv-b-0", "zonebench_tcp_transactions_total");
    // Stopped, the agent's sockets stay open: the kernel still accepts connections for it
    // and nothing ever answers.
    signal(pid, Signal::SIGSTOP);
    let (out, _) = run.finish(bound(4, Duration::from_millis(2200)));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let r = valid_results(&run.out);
    assert_eq!(r["status"], "complete");
    let fs = failures(&r);
    let ms = measurements(&r);
    assert_eq!(ms.len() + fs.len(), 4);
    // The step that was running and every later one to the stopped agent: timed out.
    let to_b: Vec<&serde_json::Value> = fs.iter().filter(|f| f["server"] == "srv-b-0").collect();
    assert!(to_b.len() >= 2, "both steps to srv-b-0 fail: {fs:#?}");
    for f in &to_b {
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("timed out") || e.contains("timeout"), "the failure says it timed out: {e}");
        assert!(e.contains("srv-b-0"), "and names the agent: {e}");
    }
    assert!(ms.iter().all(|m| m["server"]["agent"] == "srv-a-0"), "{ms:#?}");
    assert_nothing_left(&id, &rules);
}

#[test]
fn a_node_namespace_deleted_mid_run_fails_its_steps_and_teardown_still_removes_everything() {
    let _lock = lab_lock(false);
    let rules = host_rules();
    let mut run = start_run("fault-netns", TCP_RR, None);
    let id = run.lab_id();
    wait_serving(&id, "srv-b-0", "zonebench_tcp_transactions_total");
    ip(&["netns", "delete", &format!("{id}-b-1")]);
    let (out, _) = run.finish(bound(4, Duration::from_millis(2200)));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let r = valid_results(&run.out);
    assert_eq!(r["status"], "complete");
    let fs = failures(&r);
    let ms = measurements(&r);
    assert_eq!(ms.len() + fs.len(), 4);
    // Zone b's node is gone: every step to or from it fails; a→a still measures.
    assert!(fs.iter().all(|f| f["server"] == "srv-b-0" || f["client"] == "cli-b-0"), "{fs:#?}");
    assert!(fs.len() >= 2, "{fs:#?}");
    assert!(ms.iter().any(|m| m["client"]["agent"] == "cli-a-0" && m["server"]["agent"] == "srv-a-0"), "{ms:#?}");
    assert_nothing_left(&id, &rules);
}

/// A udp-stream from a to b, then tcp-rr between the zones.
const CUT: &str = r#"
name = "cut"
[lab]
zones = "a,b"
nodes_per_zone = 1
[agents]
clients_per_zone = 1
[defaults]
warmup = "100ms"
timeout = "1s"
[[tests]]
kind = "udp-stream"
pairs = "cross-zone"
duration = "4s"
rate = "20M"
size = 1000
[[tests]]
kind = "tcp-rr"
pairs = "cross-zone"
duration = "2s"
"#;

/// The router's routes to zone `zone_index`'s pod network (native routing: one per node).
fn routes_to_zone(id: &str, zone_index: u8) -> Vec<String> {
    let out = Command::new("ip").args(["-n", &format!("{id}-router"), "route", "show"]).output().unwrap();
    let lo = 16 * u16::from(zone_index);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.strip_prefix("198.19.")
                .and_then(|r| r.split('.').next()?.parse::<u16>().ok())
                .is_some_and(|third| (lo..lo + 16).contains(&third))
        })
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn a_zone_cut_off_mid_test_records_udp_loss_and_times_tcp_steps_out_cleanly() {
    let _lock = lab_lock(false);
    let rules = host_rules();
    let mut run = start_run("fault-cut", CUT, None);
    let id = run.lab_id();
    let router = format!("{id}-router");
    // The stream into zone b is running: cut zone b off for 1.5 s of its 4, then restore.
    wait_serving(&id, "srv-b-0", "zonebench_udp_datagrams_total");
    let routes = wait_for("routes to zone b in the router", Duration::from_secs(5), || {
        Some(routes_to_zone(&id, 1)).filter(|r| !r.is_empty())
    });
    for r in &routes {
        let mut args = vec!["-n", &router, "route", "del"];
        args.extend(r.split_whitespace());
        ip(&args);
    }
    std::thread::sleep(Duration::from_millis(1500));
    for r in &routes {
        let mut args = vec!["-n", &router, "route", "add"];
        args.extend(r.split_whitespace());
        ip(&args);
    }
    // Then, once tcp-rr reaches zone b, cut it off for good.
    wait_serving(&id, "srv-b-0", "zonebench_tcp_transactions_total");
    for r in &routes {
        let mut args = vec!["-n", &router, "route", "del"];
        args.extend(r.split_whitespace());
        ip(&args);
    }
    let (out, _) = run.finish(bound(4, Duration::from_millis(4100)));
    let err = stderr(&out);
    let r = valid_results(&run.out);
    assert_eq!(r["status"], "complete", "{err}");
    let ms = measurements(&r);
    let fs = failures(&r);
    let udp_to_b = ms
        .iter()
        .find(|m| m["test"] == "udp-stream" && m["server"]["agent"] == "srv-b-0")
        .unwrap_or_else(|| panic!("the udp-stream into zone b was measured: {ms:#?}\n{fs:#?}"));
    let loss = udp_to_b["metrics"]["loss_pct"].as_f64().unwrap();
    // 1.5 s of the 4 s window: about 37 %, with room for scheduling on a busy machine.
    assert!((15.0..=70.0).contains(&loss), "loss {loss} % for a 1.5 s cut in a 4 s stream");
    // Both tcp-rr steps cross the cut: each fails, saying it timed out, within its bound.
    let tcp: Vec<&serde_json::Value> = fs.iter().filter(|f| f["test"] == "tcp-rr").collect();
    assert_eq!(tcp.len(), 2, "{fs:#?}\n{ms:#?}");
    for f in tcp {
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("timed out") || e.contains("timeout") || e.contains("unreachable"), "{e}");
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_nothing_left(&id, &rules);
}

#[test]
fn a_coordinator_killed_mid_run_leaves_a_lab_that_lab_down_all_removes_whole() {
    let _lock = lab_lock(true);
    let rules = host_rules();
    // The delay forwarder and a Service (rules in every node, a cgroup per node) too.
    let scenario = format!("{TCP_RR}[[tests]]\nkind = \"tcp-crr\"\nvia = \"service\"\n")
        .replace("nodes_per_zone = 1", "nodes_per_zone = 1\ninter_zone_delay = \"100us\"");
    let mut run = start_run("fault-sigkill", &scenario, None);
    let id = run.lab_id();
    wait_for("a first measurement", Duration::from_secs(60), || (run.measurements() > 0).then_some(()));
    signal(run.pid(), Signal::SIGKILL);
    let (out, _) = run.finish(Duration::from_secs(120));
    assert_eq!(out.status.code(), None, "killed by the signal");
    let r = valid_results(&run.out);
    assert_eq!(r["status"], "running", "nothing could mark the run finished");
    assert!(!measurements(&r).is_empty());
    let down = zonebench().args(["lab", "down", "--all"]).output().unwrap();
    let down_err = stderr(&down);
    assert!(down.status.success(), "lab down --all: {down_err}");
    assert!(
        String::from_utf8_lossy(&down.stdout).contains(&id) || down_err.contains(&id),
        "lab down --all names the lab it removed\n{down_err}"
    );
    assert_nothing_left(&id, &rules);
}

/// A tmpfs mounted at a directory for one test, unmounted (and its directory removed) when
/// dropped, so a failing test leaves no mount either.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "zb-fault-full"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_results_directory_is_a_clear_error_and_every_earlier_measurement_stays_valid() {
    let _lock = lab_lock(false);
    let rules = host_rules();
    let dir = scratch("fault-full-mnt");
    let mnt = dir.join("results");
    let tmpfs = Tmpfs::mount(&mnt, "1m");
    let out_dir = mnt.join("run");
    let mut run = start_run("fault-full", TCP_RR, Some(out_dir.clone()));
    let id = run.lab_id();
    wait_for("a first measurement", Duration::from_secs(60), || (run.measurements() > 0).then_some(()));
    let stored = valid_results(&out_dir);
    // Fill what is left of the tmpfs.
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![0u8; 64 << 10];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
    drop(filler);
    let (out, _) = run.finish(bound(4, Duration::from_millis(2200)));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "the error says why: {err}");
    assert!(err.contains(&out_dir.join("results.json").display().to_string()), "and names the file: {err}");
    let r = valid_results(&out_dir);
    let ms = measurements(&r);
    assert!(ms.len() >= measurements(&stored).len(), "every measurement stored before stays");
    assert!(err.contains(&format!("{} measurement", ms.len())), "the error says what results.json holds: {err}");
    let stray: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "half-written temporary files left in the run directory: {stray:?}");
    drop(tmpfs);
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&mnt.display().to_string()));
    assert_nothing_left(&id, &rules);
}
