//! The node inspector's script (`manifests::INSPECTOR_SCRIPT`), run for real with bash in a
//! network namespace of its own (as the DaemonSet runs it in a node's): the rule counts it
//! reports are those of real iptables (both backends) and nftables rules put there, and the
//! sync metrics those of an HTTP server on 127.0.0.1:10249 serving kube-proxy's metric
//! names. Its line is read back with the same reader the run uses. Needs root, iptables,
//! nftables and python3 (`.ci/run` installs what is missing).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::scratch;
use zonebench::platform::kube::inspect::{last_report, NodeReport};
use zonebench::platform::kube::manifests::INSPECTOR_SCRIPT;

/// A network namespace deleted (with everything in it) on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("zb-insp-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the script in `ns` with `path` as PATH until it printed its first line.
fn first_report(ns: &Netns, path: &str) -> NodeReport {
    let mut child = Kill(
        ns.command("env")
            .args(["-i", &format!("PATH={path}"), "NODE_NAME=node-a1", "bash", "-c", INSPECTOR_SCRIPT])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("the script printed a line within 20 s");
    last_report(&line).unwrap_or_else(|| panic!("not a report: {line:?}"))
}

/// A PATH directory holding only `tools` (links to the real ones): an image without the rest.
fn path_with(dir: &Path, tools: &[&str]) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for t in tools {
        let out = Command::new("bash").args(["-c", &format!("command -v {t}")]).output().unwrap();
        let real = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{t} is not installed (.ci/run installs it)");
        std::os::unix::fs::symlink(real.trim(), bin.join(t)).unwrap();
    }
    bin.display().to_string()
}

/// What the script needs besides the counting tools.
const BASICS: [&str; 7] = ["bash", "grep", "awk", "timeout", "cat", "tr", "sleep"];

#[test]
fn the_inspector_script_counts_a_nodes_real_rules_and_reads_kube_proxys_metrics() {
    let dir = scratch("inspector-counts");
    let ns = Netns::new("counts");
    // kube-proxy's nftables table with 3 rules, one more nftables table of someone else's
    // with 1, 2 rules through iptables-legacy and 1 through iptables-nft.
    ns.exec(&["nft", "add", "table", "ip", "kube-proxy"]);
    ns.exec(&["nft", "add", "chain", "ip", "kube-proxy", "services"]);
    for port in ["80", "443", "8080"] {
        ns.exec(&["nft", "add", "rule", "ip", "kube-proxy", "services", "tcp", "dport", port, "counter"]);
    }
    ns.exec(&["nft", "add", "table", "inet", "other"]);
    ns.exec(&["nft", "add", "chain", "inet", "other", "c"]);
    ns.exec(&["nft", "add", "rule", "inet", "other", "c", "counter"]);
    ns.exec(&["iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"]);
    ns.exec(&["iptables-legacy", "-t", "nat", "-A", "KUBE-SERVICES", "-p", "tcp", "--dport", "80", "-j", "RETURN"]);
    ns.exec(&["iptables-legacy", "-t", "nat", "-A", "KUBE-SERVICES", "-p", "tcp", "--dport", "81", "-j", "RETURN"]);
    ns.exec(&["iptables-nft", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"]);
    // kube-proxy's metrics endpoint, as its text exposition format has them: from 1.36 each
    // series is labelled with its IP family, and a dual-stack node has both (summed).
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("metrics"),
        "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds\n\
         # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
         kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 0\n\
         kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 12\n\
         kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 240\n\
         kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv6\"} 0.5\n\
         kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 10\n",
    )
    .unwrap();
    let _server = Kill(
        ns.command("python3")
            .args(["-m", "http.server", "10249", "--bind", "127.0.0.1", "--directory"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready once a connect from inside the namespace succeeds (bounded).
    let up = Instant::now();
    while !ns.command("bash").args(["-c", "exec 3<>/dev/tcp/127.0.0.1/10249"]).status().unwrap().success() {
        assert!(up.elapsed() < Duration::from_secs(10), "the metrics server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let all: Vec<&str> = BASICS.iter().copied().chain(["iptables-nft-save", "iptables-legacy-save", "nft"]).collect();
    let r = first_report(&ns, &path_with(&dir.join("all"), &all));
    assert_eq!(r.node, "node-a1");
    assert_eq!(r.seq, 1);
    assert_eq!(r.kube_proxy_nft_rules, Some(3), "{r:?}");
    assert_eq!(r.iptables_legacy_rules, Some(2), "{r:?}");
    assert_eq!(r.iptables_rules, Some(1), "{r:?}");
    // Every nftables rule: kube-proxy's 3, the other table's 1, and iptables-nft's 1.
    assert_eq!(r.nft_rules, Some(5), "{r:?}");
    assert_eq!((r.sync_seconds_sum, r.sync_count), (Some(12.5), Some(250)), "{r:?}");
    assert_eq!(r.service_rules("nftables"), Some(3));
    assert_eq!(r.service_rules("iptables"), Some(3));

    // An image without nft and iptables-legacy-save: those counts are unknown, not zero.
    let r = first_report(&ns, &path_with(&dir.join("some"), &[&BASICS[..], &["iptables-nft-save"]].concat()));
    assert_eq!((r.nft_rules, r.kube_proxy_nft_rules, r.iptables_legacy_rules), (None, None, None), "{r:?}");
    assert_eq!(r.iptables_rules, Some(1));
    assert_eq!(r.missing_tools(), ["iptables-legacy-save", "nft"]);
    drop(ns);
}

#[test]
fn without_kube_proxys_metrics_the_sync_figures_are_unknown() {
    let dir = scratch("inspector-nometrics");
    let ns = Netns::new("nometrics");
    let all: Vec<&str> = BASICS.iter().copied().chain(["iptables-nft-save", "iptables-legacy-save", "nft"]).collect();
    let r = first_report(&ns, &path_with(&dir, &all));
    assert_eq!((r.sync_seconds_sum, r.sync_count), (None, None), "{r:?}");
    assert_eq!((r.iptables_rules, r.iptables_legacy_rules, r.kube_proxy_nft_rules), (Some(0), Some(0), Some(0)));
    drop(ns);
}
