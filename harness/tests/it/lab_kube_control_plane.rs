//! The Kubernetes lab's control plane (`platform::lab::kubernetes::control_plane`) for real:
//! etcd on a tmpfs, kube-apiserver and kube-controller-manager from
//! `scripts/kube-binaries.sh`, in a network namespace of the test's own, with the PKI and
//! kubeconfigs zonebench generates. It checks that RBAC and PodSecurity admission are on,
//! that the controller-manager's controllers work (a namespace gets its `default`
//! ServiceAccount, a Service its EndpointSlice), and that stopping leaves no process and no
//! mount. Without the binaries it fails, naming the script (CI builds them).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use zonebench::platform::lab::kubernetes::control_plane::{ControlPlane, ControlPlaneFiles, ControlPlaneSpec};
use zonebench::platform::lab::kubernetes::kubeconfig::{self, KubeconfigSpec};
use zonebench::platform::lab::kubernetes::pki::Pki;

use crate::support::{kube_binaries, lab_lock, scratch, Scratch};

const IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 10);
const SERVICE_CIDR: &str = "198.18.128.0/17";
/// The `kubernetes` Service's ClusterIP: the range's first address.
const FIRST_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);

/// Deletes the test's namespace however the test ends.
pub(crate) struct Netns(pub(crate) String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

fn kubectl(bin: &std::path::Path, ns: &str, kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap()
}

/// Polls `kubectl get …` until it prints something, up to `within`.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A control plane in a namespace of the test's own, with its kubeconfigs.
/// Fields drop in order: the control plane stops before its namespace goes.
pub(crate) struct Cluster {
    pub(crate) cp: ControlPlane,
    pub(crate) netns: Netns,
    pub(crate) dir: Scratch,
    pub(crate) bin: PathBuf,
    pub(crate) admin: PathBuf,
    pub(crate) kube_proxy: PathBuf,
}

pub(crate) fn cluster(tag: &str) -> Cluster {
    let bin = kube_binaries();
    let dir = scratch(tag);
    let name = format!("zbt-{tag}-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let netns = Netns(name.clone());
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    // No dummy module here; a veth pair with both ends in the namespace carries the address.
    ip(&["-n", &name, "link", "add", "cp0", "type", "veth", "peer", "name", "cp1"]);
    ip(&["-n", &name, "link", "set", "cp1", "up"]);
    ip(&["-n", &name, "addr", "add", &format!("{IP}/24"), "dev", "cp0"]);
    ip(&["-n", &name, "link", "set", "cp0", "up"]);

    let pki = Pki::generate(&dir.join("pki"), &[IpAddr::V4(IP), IpAddr::V4(FIRST_SERVICE_IP)], &[]).unwrap();
    let server = format!("https://{IP}:6443");
    let write = |file: &str, user: &str, client| {
        let path = dir.join(file);
        kubeconfig::write(
            &path,
            &KubeconfigSpec { lab_id: "zbtest", server: &server, ca_cert: &pki.ca.cert, client, user },
        )
        .unwrap();
        path
    };
    let admin = write("admin.kubeconfig", "admin", &pki.admin);
    let kcm = write("kcm.kubeconfig", "kube-controller-manager", &pki.controller_manager);
    let kube_proxy = write("kube-proxy.kubeconfig", "kube-proxy", &pki.kube_proxy);
    let spec = ControlPlaneSpec {
        netns: name.clone(),
        ip: IP,
        dir: dir.join("cp"),
        bin: bin.clone(),
        service_cidr: SERVICE_CIDR.into(),
        files: ControlPlaneFiles::of(&pki, kcm, admin.clone()),
        attached: true,
    };
    let cp = ControlPlane::start(spec).unwrap();
    eprintln!("control plane ready after {:?}", cp.ready_after);
    Cluster { cp, netns, dir, bin, admin, kube_proxy }
}

#[test]
fn the_control_plane_runs_in_a_namespace_with_rbac_admission_and_its_controllers() {
    let _lock = lab_lock(false);
    let Cluster { mut cp, netns, dir: _dir, bin, admin, kube_proxy } = cluster("kube-cp");
    let name = netns.0.clone();
    let pids: Vec<u32> = cp.pids().iter().map(|(_, p)| *p).collect();
    assert_eq!(cp.pids().len(), 3, "{:?}", cp.pids());

    // The `kubernetes` Service got the first address of the range.
    let out = kubectl(&bin, &name, &admin, &["get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), FIRST_SERVICE_IP.to_string());
    // RBAC: kube-proxy reads EndpointSlices but not Secrets.
    let can =
        |what: &[&str]| String::from_utf8_lossy(&kubectl(&bin, &name, &kube_proxy, what).stdout).trim().to_string();
    assert_eq!(can(&["auth", "can-i", "list", "endpointslices.discovery.k8s.io"]), "yes");
    assert_eq!(can(&["auth", "can-i", "list", "secrets"]), "no");
    // The controllers: a new namespace gets its default ServiceAccount, a Service its slice.
    let out = kubectl(&bin, &name, &admin, &["create", "namespace", "bench"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the default ServiceAccount", Duration::from_secs(30), || {
        let o = kubectl(&bin, &name, &admin, &["-n", "bench", "get", "serviceaccount", "default", "-o", "name"]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    let out =
        kubectl(&bin, &name, &admin, &["-n", "bench", "create", "service", "clusterip", "echo", "--tcp=7101:7101"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slice = eventually("the EndpointSlice of Service echo", Duration::from_secs(30), || {
        let o = kubectl(
            &bin,
            &name,
            &admin,
            &["-n", "bench", "get", "endpointslices", "-l", "kubernetes.io/service-name=echo", "-o", "name"],
        );
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    });
    assert!(slice.starts_with("endpointslice.discovery.k8s.io/echo-"), "{slice}");
    // PodSecurity admission: a namespace enforcing `restricted` refuses a privileged pod.
    let out =
        kubectl(&bin, &name, &admin, &["label", "namespace", "bench", "pod-security.kubernetes.io/enforce=restricted"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        kubectl(&bin, &name, &admin, &["-n", "bench", "run", "bad", "--image=x", "--privileged", "--restart=Never"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let etcd_dir = cp.spec().dir.join("etcd");
    cp.stop();
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} outlived stop()");
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(etcd_dir.to_str().unwrap()), "etcd's tmpfs is still mounted");
}

/// A node namespace joined to the control plane's by a veth: `198.18.250.20`.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 20);
const ENDPOINT: &str = "198.19.0.2";

fn apply(c: &Cluster, json: serde_json::Value) {
    let file = c.dir.join(format!("object-{}.json", rand_suffix()));
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = kubectl(&c.bin, &c.netns.0, &c.admin, &["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The real kube-proxy, in each of its modes here, programs the rules of a Service whose
/// EndpointSlice names one endpoint: the Service's ClusterIP and the endpoint appear in the
/// node namespace's ruleset, and `--cleanup` removes them again.
#[test]
fn real_kube_proxy_programs_a_services_endpoint_in_iptables_and_nftables_mode() {
    use zonebench::platform::lab::kubernetes::kube_proxy::{KubeProxy, KubeProxySpec, ProxyMode};
    use zonebench::platform::lab::kubernetes::nodes::{self, LabNode};
    let _lock = lab_lock(false);
    let c = cluster("kube-proxy");
    let node_ns = format!("{}-n", c.netns.0);
    ip(&["netns", "add", &node_ns]);
    let _node_netns = Netns(node_ns.clone());
    ip(&["-n", &node_ns, "link", "set", "lo", "up"]);
    ip(&["-n", &c.netns.0, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", &node_ns]);
    ip(&["-n", &c.netns.0, "link", "set", "up0", "up"]);
    ip(&["-n", &c.netns.0, "addr", "add", "198.18.250.1/32", "dev", "up0"]);
    ip(&["-n", &c.netns.0, "route", "add", &format!("{NODE_IP}/32"), "dev", "up0"]);
    ip(&["-n", &node_ns, "addr", "add", &format!("{NODE_IP}/32"), "dev", "up1"]);
    ip(&["-n", &node_ns, "link", "set", "up1", "up"]);
    ip(&["-n", &node_ns, "route", "add", &format!("{IP}/32"), "dev", "up1"]);

    // The Node as the lab registers it: kube-proxy waits for its InternalIP.
    let node = LabNode { name: "a-1".into(), zone: "a".into(), ip: NODE_IP, cpu_millis: 4000 };
    apply(&c, nodes::object(&node));
    let status = serde_json::to_string(&nodes::status(&node, &zonebench::model::now_rfc3339())).unwrap();
    let out = kubectl(
        &c.bin,
        &c.netns.0,
        &c.admin,
        &["patch", "node", "a-1", "--subresource=status", "--type=merge", "-p", &status],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    apply(
        &c,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"ports": [{"name": "tcp", "port": 7101, "protocol": "TCP"}]},
        }),
    );
    apply(
        &c,
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "echo", "endpointslice.kubernetes.io/managed-by": "test.zonebench.dev"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 7101, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ENDPOINT], "conditions": {"ready": true}, "nodeName": "a-1", "zone": "a"}],
        }),
    );
    let out = kubectl(&c.bin, &c.netns.0, &c.admin, &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let vip = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(vip.starts_with("198.18."), "{vip}");

    let spawner = zonebench::platform::process::Spawner::new("zbt-kp").unwrap();
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        let spec = KubeProxySpec {
            netns: node_ns.clone(),
            node: "a-1".into(),
            node_ip: NODE_IP,
            mode,
            cluster_cidr: "198.19.0.0/16".into(),
            kubeconfig: c.kube_proxy.clone(),
            dir: c.dir.join(mode.as_str()),
            bin: c.bin.clone(),
            attached: true,
        };
        let started = Instant::now();
        let mut kp = KubeProxy::start(spec, &spawner).unwrap();
        let rules = || -> String {
            let argv: &[&str] = match mode {
                ProxyMode::Iptables => &["iptables-save"],
                ProxyMode::Nftables => &["nft", "list", "ruleset"],
            };
            let o = Command::new("ip").args(["netns", "exec", &node_ns]).args(argv).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let programmed = eventually(&format!("{} rules for {vip}", mode.as_str()), Duration::from_secs(60), || {
            if let Err(e) = kp.check_alive() {
                panic!("{e:#}");
            }
            let r = rules();
            (r.contains(&vip) && r.contains(ENDPOINT)).then_some(r)
        });
        assert!(programmed.contains("7101"), "{programmed}");
        eprintln!("kube-proxy {}: the Service's rules after {:?}", mode.as_str(), started.elapsed());
        kp.stop();
        kp.cleanup().unwrap();
        let left = rules();
        assert!(!left.contains(ENDPOINT), "{} rules left after --cleanup:\n{left}", mode.as_str());
    }
}
