//! `zonebench lab up --kubernetes` end to end, as a user runs it: a two-zone lab becomes a
//! real cluster (the binaries of `scripts/kube-binaries.sh`); kubectl in the host's
//! namespace reaches it through the printed kubeconfig; the Node objects carry their zones
//! and the CPU `lab.node_cpu` gave them; the EndpointSlice controller and every node's
//! kube-proxy (nftables mode) act on a new Service; and `lab down` leaves no process,
//! namespace, mount or state file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, kube_binaries, kube_lab_lock, lab_lock, run, scratch, zonebench};

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let o = Command::new(kube_binaries().join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn lab_up_kubernetes_is_a_real_cluster_that_kubectl_reaches_and_lab_down_removes() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let tmp = scratch("kube-up");
    let scenario = tmp.join("kube.toml");
    std::fs::write(
        &scenario,
        "name = \"kube-up\"\n[lab]\nzones = \"a,b\"\nnodes_per_zone = 1\nkubernetes = true\n\
         service_dataplane = \"nftables\"\nnode_cpu = { a = \"8\", b = \"2\" }\n[[tests]]\nkind = \"tcp-rr\"\n",
    )
    .unwrap();
    let o = run(zonebench().args(["lab", "up"]).arg(&scenario));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    let id = lines.next().unwrap().to_string();
    let kubeconfig = std::path::PathBuf::from(lines.next().unwrap());
    // Removed however the test ends.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = zonebench().args(["lab", "down", &self.0]).output();
        }
    }
    let down = Down(id.clone());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("zonebench run --backend kube --kubeconfig"), "{err}");
    let again = run(zonebench().args(["lab", "kubeconfig", &id]));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), kubeconfig.to_str().unwrap());

    let nodes: serde_json::Value =
        serde_json::from_str(&kubectl(&kubeconfig, &["get", "nodes", "-o", "json"])).unwrap();
    let seen: Vec<(String, String, String)> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str().unwrap().to_string(),
                n["status"]["allocatable"]["cpu"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen, [("a-1".into(), "a".into(), "8".into()), ("b-1".into(), "b".into(), "2".into())]);

    kubectl(&kubeconfig, &["create", "service", "clusterip", "web", "--tcp=80:7180"]);
    let vip = kubectl(&kubeconfig, &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    eventually("the EndpointSlice controller's slice for web", Duration::from_secs(30), || {
        !kubectl(&kubeconfig, &["get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "name"])
            .trim()
            .is_empty()
    });
    for node in ["a-1", "b-1"] {
        eventually(&format!("kube-proxy on {node} programming {vip}"), Duration::from_secs(30), || {
            let o =
                Command::new("ip").args(["netns", "exec", &format!("{id}-{node}"), "nft", "list", "ruleset"]).output();
            o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&vip))
        });
    }

    let status: serde_json::Value =
        serde_json::from_slice(&run(zonebench().args(["lab", "status", "--json"])).stdout).unwrap();
    let lab = status.as_array().unwrap().iter().find(|l| l["id"] == id.as_str()).unwrap().clone();
    let pids: Vec<i64> = lab["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    let roles: Vec<&str> = lab["processes"].as_array().unwrap().iter().map(|p| p["role"].as_str().unwrap()).collect();
    for role in
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy:a-1", "kube-proxy:b-1"]
            .into_iter()
            .chain(["node-agent:a-1", "node-agent:b-1", "api-forwarder"])
    {
        assert!(roles.contains(&role), "{role} in {roles:?}");
    }
    assert!(lab["processes"].as_array().unwrap().iter().all(|p| p["alive"] == true), "{lab:#}");

    drop(down);
    eventually("every process of the lab gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    let namespaces =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!namespaces.contains(&id), "{namespaces}");
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["link", "show"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains(&id), "the lab's host link is left: {links}");
    let routes =
        String::from_utf8_lossy(&Command::new("ip").args(["route", "show"]).output().unwrap().stdout).into_owned();
    assert!(!routes.contains("198.19.0.0/16"), "the route to the lab's pods is left: {routes}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&format!("/run/zonebench/{id}")), "a mount of the lab is left");
    assert!(!Path::new(&format!("/run/zonebench/{id}")).exists());
    assert!(!Path::new(&format!("/run/zonebench/labs/{id}.json")).exists());
}

/// A `lab up --kubernetes` SIGKILLed while its control plane starts: `lab down` still
/// removes every process (the ones in the lab's namespaces, and the host-side API forwarder
/// if it had started), every namespace, etcd's tmpfs and the state file.
#[test]
fn lab_up_kubernetes_killed_mid_start_is_removed_whole_by_lab_down() {
    let _lock = lab_lock(false);
    let _kube = kube_lab_lock();
    kube_binaries();
    let mut child = zonebench().args(["lab", "up", "--kubernetes"]).spawn().unwrap();
    let pid = child.id();
    // Our lab: the state file whose owner is the child (other tests build labs meanwhile).
    let labs = Path::new("/run/zonebench/labs");
    let mut id = None;
    eventually("the lab's state file", Duration::from_secs(30), || {
        id = std::fs::read_dir(labs).into_iter().flatten().flatten().find_map(|e| {
            let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            (st["owner_pid"] == pid).then(|| st["id"].as_str().map(String::from)).flatten()
        });
        id.is_some()
    });
    let id = id.unwrap();
    // Into the control plane's start: its namespace exists, etcd or the apiserver is coming up.
    eventually("the control-plane namespace", Duration::from_secs(30), || {
        Path::new(&format!("/run/netns/{id}-cp")).exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();

    let o = run(zonebench().args(["lab", "down", &id]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let namespaces =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!namespaces.contains(&id), "{namespaces}");
    let links =
        String::from_utf8_lossy(&Command::new("ip").args(["link", "show"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains(&id), "the lab's host link is left: {links}");
    let cp = format!("{id}-cp");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&cp) || cmdline.contains(&format!("/run/zonebench/{id}/")) {
            left.push(cmdline);
        }
    }
    assert!(left.is_empty(), "processes of lab {id} are left: {left:#?}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&format!("/run/zonebench/{id}")), "a mount of the lab is left");
    assert!(!Path::new(&format!("/run/zonebench/{id}")).exists());
    assert!(!labs.join(format!("{id}.json")).exists());
}
