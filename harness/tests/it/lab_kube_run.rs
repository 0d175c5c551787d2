//! The kube platform on the Kubernetes lab, as a user runs it: `zonebench lab up
//! --kubernetes`, then `zonebench run … --backend kube --kubeconfig $(zonebench lab
//! kubeconfig ID)`. Everything the run meets is real except the node agents (the kubelet's
//! stand-in): the apiserver's RBAC, Node authorizer and admission, the scheduler, the
//! EndpointSlice controller's hints, kube-proxy's rules. The tests check what users see:
//! valid results with the cluster's fingerprint, pods that ran at real pod IPs, what the
//! node agents refuse and why, and that neither a finished run nor a killed one leaves
//! anything once the lab is down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, kube_binaries, kube_lab_lock, lab_lock, run, scratch, valid_results, zonebench};

/// A Kubernetes lab from `lab up`, removed when dropped.
struct KubeLab {
    id: String,
    kubeconfig: PathBuf,
}

impl KubeLab {
    fn up(scenario: &str, set: &[&str]) -> KubeLab {
        let o = run(zonebench().args(["lab", "up", "--kubernetes", scenario]).args(set));
        assert!(o.status.success(), "lab up: {}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines = out.lines();
        let id = lines.next().unwrap().to_string();
        let kubeconfig = PathBuf::from(lines.next().unwrap());
        KubeLab { id, kubeconfig }
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        kubectl_as(&self.kubeconfig, args)
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `zonebench run SCENARIO --backend kube` on this lab into `out`.
    fn run(&self, scenario: &str, extra: &[&str], out: &Path) -> std::process::Output {
        run(zonebench()
            .args(["run", scenario, "--backend", "kube", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(extra)
            .arg("--out")
            .arg(out))
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        let _ = zonebench().args(["lab", "down", &self.id]).output();
    }
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(kube_binaries().join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap()
}

/// Namespaces whose name starts with `zonebench-` (a run's), on the lab's cluster.
fn run_namespaces(lab: &KubeLab) -> Vec<String> {
    lab.kubectl_ok(&["get", "namespaces", "-o", "name"])
        .lines()
        .filter_map(|l| l.strip_prefix("namespace/"))
        .filter(|n| n.starts_with("zonebench-"))
        .map(String::from)
        .collect()
}

/// Pod namespaces of the lab (its node agents' sandboxes) present on the host.
fn sandboxes(id: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{id}-pod-")))
        .map(String::from)
        .collect()
}

/// quick.toml end to end on the default three-zone Kubernetes lab: a complete, valid run
/// whose fingerprint is the lab cluster's, agents reached directly at their pod IPs, and no
/// pod, namespace or sandbox left once it ends. Then the node agents' refusals and the Node
/// authorizer, as kubectl shows them.
#[test]
fn quick_runs_end_to_end_on_the_kubernetes_lab_and_leaves_the_cluster_clean() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let lab = KubeLab::up("quick", &[]);
    let nodes = lab.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.taints}{\"\\n\"}{end}",
    ]);
    assert_eq!(nodes.lines().count(), 6, "{nodes}");
    assert!(nodes.lines().all(|l| l.split_whitespace().count() == 1), "a node is tainted: {nodes}");

    let tmp = scratch("kube-lab-quick");
    let out = tmp.join("run");
    let o = lab.run("quick", &[], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("control: direct (auto: pod IPs answer from here)"), "{err}");
    let r = valid_results(&out);
    assert_eq!(r["status"], "complete", "{r:#}");
    assert_eq!(r["failures"].as_array().unwrap().len(), 0, "{:#}", r["failures"]);
    let fp = &r["fingerprint"];
    assert_eq!(fp["platform"], "kube", "{fp:#}");
    assert!(fp["extra"]["kube_proxy_mode"] == "iptables", "{fp:#}");
    let ms = r["measurements"].as_array().unwrap();
    let kinds: std::collections::BTreeSet<&str> = ms.iter().filter_map(|m| m["test"].as_str()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["http", "tcp-crr", "tcp-rr", "tcp-stream"]);
    // Every client zone measured against every server zone: 4 tests × 3 × 3.
    assert_eq!(ms.len(), 36);
    assert!(run_namespaces(&lab).is_empty(), "the run's namespace is left");
    eventually("every sandbox removed", Duration::from_secs(10), || sandboxes(&lab.id).is_empty());

    // An image the lab cannot run: Pending, saying why, as kubectl shows it.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"other","namespace":"default"},
        "spec":{"containers":[{"name":"c","image":"nicolaka/netshoot:v0.13"}]}}"#;
    let file = tmp.join("pod.json");
    std::fs::write(&file, pod).unwrap();
    lab.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually("the refused pod's reason", Duration::from_secs(30), || {
        let o = lab.kubectl_ok(&[
            "get",
            "pod",
            "other",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ]);
        o == "ImageNotInLab"
    });
    let node = lab.kubectl_ok(&["get", "pod", "other", "-o", "jsonpath={.spec.nodeName}"]);
    assert!(!node.is_empty(), "the scheduler bound it");
    lab.kubectl_ok(&["delete", "pod", "other", "--wait=true", "--timeout=30s"]);

    // A run whose image the lab cannot run fails at once, saying why, and leaves nothing.
    let o = lab.run("quick", &["--image", "nicolaka/netshoot:v0.13"], &tmp.join("bad-image"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ImageNotInLab") && err.contains("netshoot"), "{err}");
    assert!(run_namespaces(&lab).is_empty(), "the failed run's namespace is left");

    // The Node authorizer: a node reads no Secret that no pod of its own uses.
    lab.kubectl_ok(&["create", "secret", "generic", "s1", "--from-literal=k=v"]);
    let node_kubeconfig = lab.kubeconfig.parent().unwrap().join("node-a-1.kubeconfig");
    let o = kubectl_as(&node_kubeconfig, &["--server", &server_of(&lab.kubeconfig), "get", "secret", "s1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("forbidden") && err.contains("system:node:a-1"), "{err}");
}

/// The server URL of a kubeconfig (the node kubeconfigs name the apiserver as nodes reach
/// it; from the host, the user's forwarder address is the one that answers).
fn server_of(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    text.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().trim().to_string()
}

/// topology-routing.toml on the Kubernetes lab: the hints are the real EndpointSlice
/// controller's, the routing the real kube-proxy's (nftables mode here), and the doctor's
/// verdict sits beside each variant: `agree`, the hints it predicts are the ones the real
/// controller wrote. With hints, every client zone stays in its zone.
#[test]
fn topology_routing_on_the_kubernetes_lab_measures_the_real_controllers_hints() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let tmp = scratch("kube-lab-topology");
    // The scenario's own lab shape, whose service dataplane is nftables: the other
    // kube-proxy mode than quick's.
    let lab = KubeLab::up("topology-routing", &[]);
    let out = tmp.join("run");
    let o = lab.run("topology-routing", &["--set", "defaults.duration=1s"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r = valid_results(&out);
    assert_eq!(r["status"], "complete", "{r:#}");
    let ms = r["measurements"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in ms {
        let variant = m["variant"].as_str().unwrap_or_default().to_string();
        let locality = &m["locality"];
        assert!(locality.is_object(), "{m:#}");
        if matches!(variant.as_str(), "auto" | "prefer-close" | "skewed-prefer-close") {
            assert_eq!(locality["in_zone_fraction"], 1.0, "{variant}: {m:#}");
        }
        // The doctor predicted the hints the real controller wrote, for every variant.
        assert_eq!(m["hints"]["live"]["verdict"], "agree", "{variant}: {:#}", m["hints"]);
        seen.insert(variant);
    }
    assert!(seen.contains("auto") && seen.contains("skewed-auto"), "{seen:?}");
    assert_eq!(r["fingerprint"]["extra"]["kube_proxy_mode"], "nftables");
    assert!(run_namespaces(&lab).is_empty(), "the run's namespace is left");
}

/// A kube run SIGKILLed mid-measurement leaves its namespace and pods on the cluster (no
/// teardown ran): `zonebench gc` removes them, processes and sandboxes included, and
/// `lab down --all` then removes the lab with the host link.
#[test]
fn a_kube_run_killed_mid_run_leaves_nothing_after_lab_down_all() {
    // Exclusive: `lab down --all` removes every lab on the host.
    let _lock = lab_lock(true);
    let _kube = kube_lab_lock();
    kube_binaries();
    let lab = KubeLab::up("quick", &[]);
    let tmp = scratch("kube-lab-killed");
    let mut child = zonebench()
        .args(["run", "quick", "--backend", "kube", "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .arg("--out")
        .arg(tmp.join("run"))
        .spawn()
        .unwrap();
    eventually("agents running in pod sandboxes", Duration::from_secs(60), || sandboxes(&lab.id).len() >= 6);
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    let agents: Vec<i32> = sandboxes(&lab.id)
        .iter()
        .flat_map(|ns| {
            let o = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>()
        })
        .collect();
    assert!(!agents.is_empty(), "the killed run's agents still run");

    // `zonebench gc` on the lab's cluster: the killed run's namespace goes, and with it (the
    // node agents see its pods deleted) every agent process and sandbox.
    assert_eq!(run_namespaces(&lab).len(), 1, "the killed run left its namespace");
    let o = run(zonebench().args(["gc", "--older-than", "0s", "--kubeconfig"]).arg(&lab.kubeconfig));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eventually("the killed run's namespace gone", Duration::from_secs(90), || run_namespaces(&lab).is_empty());
    eventually("its sandboxes removed", Duration::from_secs(30), || sandboxes(&lab.id).is_empty());
    for pid in &agents {
        assert!(!zonebench::platform::lab::netns::alive(*pid), "agent {pid} outlived its pod");
    }

    let o = run(zonebench().args(["lab", "down", "--all"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for pid in agents {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "agent {pid} is left");
    }
    assert!(sandboxes(&lab.id).is_empty());
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["link", "show"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains(&lab.id), "{links}");
    assert!(!Path::new(&format!("/run/zonebench/{}", lab.id)).exists());
}

/// `lab.kubernetes = true` in a scenario: `zonebench run` builds the Kubernetes lab, runs the
/// kube platform on it, and removes it at the end. Interrupted (SIGINT) mid-measurement, it
/// still saves what it measured and removes the run's objects and the whole lab.
#[test]
fn a_kubernetes_lab_scenario_runs_in_one_command_and_sigint_leaves_nothing() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let tmp = scratch("kube-lab-one-command");
    let scenario = tmp.join("kube.toml");
    std::fs::write(
        &scenario,
        "name = \"kube-one\"\n[lab]\nzones = \"a,b\"\nnodes_per_zone = 1\nkubernetes = true\n\
         [defaults]\nduration = \"1s\"\nwarmup = \"100ms\"\n[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"tcp-stream\"\nduration = \"20s\"\n",
    )
    .unwrap();
    let out = tmp.join("run");
    let mut child = zonebench().arg("run").arg(&scenario).arg("--out").arg(&out).spawn().unwrap();
    let pid = child.id();
    // Our lab: the state file this run owns (other tests' labs come and go meanwhile).
    let mut id = None;
    eventually("the run's lab and its first measurements", Duration::from_secs(120), || {
        id = std::fs::read_dir("/run/zonebench/labs").into_iter().flatten().flatten().find_map(|e| {
            let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (st["owner_pid"] == pid).then(|| st["id"].as_str().map(String::from)).flatten()
        });
        let measured = std::fs::read(out.join("results.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|r| r["measurements"].as_array().is_some_and(|m| !m.is_empty()));
        id.is_some() && measured
    });
    let id = id.unwrap();
    assert!(!sandboxes(&id).is_empty(), "the agents run in the lab's pod sandboxes");
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let r = valid_results(&out);
    assert_eq!(r["status"], "interrupted");
    assert!(!r["measurements"].as_array().unwrap().is_empty(), "what was measured is kept");
    let namespaces =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!namespaces.contains(&id), "{namespaces}");
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["link", "show"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains(&id), "{links}");
    assert!(!Path::new(&format!("/run/zonebench/{id}")).exists());
    assert!(!Path::new(&format!("/run/zonebench/labs/{id}.json")).exists());
}

/// The API server killed mid-run and started again once the run is in its teardown:
/// measurements go to the agents directly and carry on; teardown waits for the server and
/// then removes the run's namespace.
#[test]
fn a_kube_run_survives_the_api_server_restarting_and_tears_down_once_it_is_back() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let lab = KubeLab::up("quick", &["--set", "lab.zones=a,b", "--set", "lab.nodes_per_zone=1"]);
    let tmp = scratch("kube-lab-apiserver-restart");
    let scenario = tmp.join("s.toml");
    std::fs::write(
        &scenario,
        "name = \"restart\"\n[lab]\nzones = \"a,b\"\nnodes_per_zone = 1\n[defaults]\nduration = \"1s\"\n\
         warmup = \"100ms\"\n[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"tcp-stream\"\nduration = \"4s\"\n",
    )
    .unwrap();
    let out = tmp.join("run");
    let child = zonebench()
        .arg("run")
        .arg(&scenario)
        .args(["--backend", "kube", "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the first measurement", Duration::from_secs(120), || {
        std::fs::read(out.join("results.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|r| r["measurements"].as_array().is_some_and(|m| !m.is_empty()))
    });

    // Stop the apiserver (its command line kept to start it again, as a supervisor would).
    let status: serde_json::Value =
        serde_json::from_slice(&run(zonebench().args(["lab", "status", "--json"])).stdout).unwrap();
    let me = status.as_array().unwrap().iter().find(|l| l["id"] == lab.id.as_str()).unwrap();
    let pid = me["processes"].as_array().unwrap().iter().find(|p| p["role"] == "kube-apiserver").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let argv: Vec<String> = String::from_utf8(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .unwrap()
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let at = argv.iter().position(|a| a.ends_with("/kube-apiserver")).unwrap();
    // Killed outright, as in a crash (its graceful stop waits out open watches).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Its parent (`lab up`) is gone: it may stay a zombie until init reaps it.
    eventually("the apiserver gone", Duration::from_secs(30), || !zonebench::platform::lab::netns::alive(pid));
    // Down until every measurement is made (2 tests × 2 × 2 zones) and teardown has begun.
    eventually("every measurement without the API server", Duration::from_secs(120), || {
        std::fs::read(out.join("results.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|r| r["measurements"].as_array().is_some_and(|m| m.len() == 8))
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = std::fs::File::create(tmp.join("apiserver-again.log")).unwrap();
    let mut again = Command::new("ip");
    again.args(["netns", "exec", &format!("{}-cp", lab.id)]).args(&argv[at..]);
    again.stdout(log.try_clone().unwrap()).stderr(log).stdin(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut again, 0);
    let mut restarted = again.spawn().unwrap();

    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let r = valid_results(&out);
    // Either it went on (the agents need no API server to measure) or it says what failed.
    match r["status"].as_str() {
        Some("complete") => assert!(o.status.success(), "{err}"),
        Some("failed") => assert!(!r["error"].is_null() || !r["failures"].as_array().unwrap().is_empty(), "{r:#}"),
        other => panic!("status {other:?}: {err}"),
    }
    assert_eq!(r["measurements"].as_array().unwrap().len(), 8, "the measurements around the restart are kept");
    assert!(err.contains("deleting namespace") && err.contains("once it is back"), "{err}");
    assert!(run_namespaces(&lab).is_empty(), "teardown completed once the server was back: {err}");
    // The lab's removal ends the restarted apiserver with every process in its namespaces.
    drop(lab);
    restarted.wait().unwrap();
}
