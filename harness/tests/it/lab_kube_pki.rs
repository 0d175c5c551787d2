//! The kube lab's certificates and kubeconfigs (`platform::lab::kubernetes::{pki,
//! kubeconfig}`) used for real: etcd and kube-apiserver from `scripts/kube-binaries.sh`,
//! started on 127.0.0.1 with the generated PKI, and kubectl with the generated kubeconfigs.
//! Without the binaries the test fails (CI builds them); it never skips.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zonebench::platform::lab::kubernetes::kubeconfig::{self, KubeconfigSpec};
use zonebench::platform::lab::kubernetes::pki::{CertKey, Pki};

use crate::support::scratch;

/// How long the apiserver may take to become ready (a cold start on a busy 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process of the test's control plane, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        // KILL when this test's thread dies, so a crashed test leaves no apiserver behind.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name, child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM within 20 s: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd and kube-apiserver; dropping it stops the apiserver first and waits for it, then
/// etcd (an apiserver left without its etcd hangs on shutdown).
struct ControlPlane {
    apiserver: Proc,
    etcd: Proc,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

fn kubectl(bin: &Path, dir: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", dir.join("kubectl-cache").display()))
        .arg("--request-timeout=20s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_kubeconfig(dir: &Path, server: &str, ca: &Path, client: &CertKey, user: &str) -> PathBuf {
    let path = dir.join(format!("{user}.kubeconfig"));
    kubeconfig::write(&path, &KubeconfigSpec { lab_id: "t1", server, ca_cert: ca, client, user }).unwrap();
    path
}

#[test]
fn a_real_apiserver_serves_with_the_lab_pki_and_knows_each_client_by_its_certificate() {
    let bin = crate::support::kube_binaries();
    let dir = scratch("kube-pki");
    let pki_dir = dir.join("pki");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pki = Pki::generate(&pki_dir, &[localhost, "10.96.0.1".parse().unwrap()], &["a-1".into()]).unwrap();

    let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd_args: Vec<String> = [
        "--name=default".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
    ]
    .into();
    let etcd = Proc::spawn("etcd", &bin.join("etcd"), &etcd_args, dir.join("etcd.log"));
    let p = |path: &Path| path.display().to_string();
    let api_args: Vec<String> = vec![
        format!("--etcd-servers={client_url}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        format!("--tls-cert-file={}", p(&pki.apiserver.cert)),
        format!("--tls-private-key-file={}", p(&pki.apiserver.key)),
        format!("--service-account-key-file={}", p(&pki.service_account_pub)),
        format!("--service-account-signing-key-file={}", p(&pki.service_account_key)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=PodSecurity".into(),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
    ];
    let apiserver = Proc::spawn("kube-apiserver", &bin.join("kube-apiserver"), &api_args, dir.join("apiserver.log"));
    let mut cp = ControlPlane { apiserver, etcd };

    let server = format!("https://127.0.0.1:{api_port}");
    let ca = &pki.ca.cert;
    let admin = write_kubeconfig(&dir, &server, ca, &pki.admin, "admin");
    let proxy = write_kubeconfig(&dir, &server, ca, &pki.kube_proxy, "kube-proxy");
    let cm = write_kubeconfig(&dir, &server, ca, &pki.controller_manager, "kube-controller-manager");
    let node = write_kubeconfig(&dir, &server, ca, pki.node("a-1").unwrap(), "node-a-1");

    // Ready: /readyz answers ok to the admin (which also proves TLS both ways).
    let start = Instant::now();
    loop {
        cp.etcd.check_alive();
        cp.apiserver.check_alive();
        let o = kubectl(&bin, &dir, &admin, &["get", "--raw=/readyz"]);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok" {
            break;
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "the apiserver was not ready within {READY_WITHIN:?}: {}\napiserver log:\n{}\netcd log:\n{}",
            text(&o),
            cp.apiserver.log_tail(),
            cp.etcd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("apiserver ready after {:?}", start.elapsed());

    // The admin (system:masters) lists namespaces.
    let o = kubectl(&bin, &dir, &admin, &["get", "ns", "-o", "name"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("namespace/default") && out.contains("namespace/kube-system"), "{out}");

    // Each client is who its certificate says; RBAC's default roles bind those names.
    let whoami = |kc: &Path| {
        let o = kubectl(&bin, &dir, kc, &["auth", "whoami", "-o", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["status"]["userInfo"].clone()
    };
    assert_eq!(whoami(&admin)["username"], "zonebench-admin");
    assert!(whoami(&admin)["groups"].as_array().unwrap().contains(&"system:masters".into()));
    assert_eq!(whoami(&proxy)["username"], "system:kube-proxy");
    assert_eq!(whoami(&cm)["username"], "system:kube-controller-manager");
    let n = whoami(&node);
    assert_eq!(n["username"], "system:node:a-1");
    assert!(n["groups"].as_array().unwrap().contains(&"system:nodes".into()), "{n}");

    // kube-proxy may list EndpointSlices (system:node-proxier), but not read Secrets.
    let o = kubectl(&bin, &dir, &proxy, &["get", "endpointslices", "-A"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = kubectl(&bin, &dir, &proxy, &["get", "secrets", "-A"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Forbidden"), "{}", text(&o));

    // A client certificate from another CA is refused (401, not anonymous), and a client
    // that trusts another CA refuses the apiserver.
    let other = Pki::generate(&dir.join("other-pki"), &[localhost], &[]).unwrap();
    let stranger = write_kubeconfig(&dir, &server, ca, &other.admin, "stranger");
    let o = kubectl(&bin, &dir, &stranger, &["get", "ns"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Unauthorized"), "{}", text(&o));
    let distrustful = write_kubeconfig(&dir, &server, &other.ca.cert, &pki.admin, "distrustful");
    let o = kubectl(&bin, &dir, &distrustful, &["get", "ns"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("certificate signed by unknown authority"),
        "{}",
        text(&o)
    );

    // The apiserver first, then etcd; both exit.
    cp.apiserver.stop();
    cp.etcd.stop();
    for p in [&mut cp.apiserver, &mut cp.etcd] {
        assert!(p.child.try_wait().unwrap().is_some(), "{} is still running", p.name);
    }
}
