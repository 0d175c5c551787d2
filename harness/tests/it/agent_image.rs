//! The agent as its container image runs it, as closely as a machine without docker or the
//! musl target allows. The image (`Dockerfile`) is one static binary on distroless/static,
//! and its pods (`zonebench render`) run it as uid/gid 65532 with every capability dropped,
//! no privilege escalation, a read-only root and the control token from a Secret volume.
//!
//! So this test builds the agent fully static (glibc with `+crt-static`: the gnu target is
//! the one installed), lays out a root like distroless/static's with nothing else in it,
//! and starts the agent there with the server pod's own arguments, identity and Secret
//! mount, confined as its securityContext says, as PID 1 of its own PID namespace, in a
//! fresh network namespace with a pod address. It then checks the agent serves (health,
//! info, a tcp-rr test against its own echo port), stops on SIGTERM, and tried no write
//! anywhere (strace). It cannot check the musl build or the image build itself.
//!
//! Needs root, like the lab tests (CI runs as root): unshare, capsh (libcap2-bin), strace, ip.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zonebench::control_client::ControlClient;
use zonebench::model::ControlEndpoint;
use zonebench::platform::lab::netns;
use zonebench_agent::spec::TestSpec;

/// The pod's address in its network namespace: inside the `--allow-cidr` ranges the pod
/// spec passes, so the agent may run a test against its own echo server.
const POD_IP: &str = "10.244.0.7";

/// What the agent's pod spec says about how it runs, read from `zonebench render`.
struct AgentPod {
    args: Vec<String>,
    uid: u32,
    gid: u32,
    fs_group: u32,
    /// The Secret volume's mount path and file mode, and the token file inside it.
    secret_mount: String,
    secret_mode: u32,
    token_file: String,
    /// containerPorts by name: control, tcp, udp, http.
    ports: BTreeMap<String, u16>,
    grace: Duration,
}

/// The value after `flag` in the agent's arguments.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

#[test]
fn the_static_agent_serves_as_its_pod_spec_runs_it_on_a_read_only_distroless_root() {
    let binary = build_static_agent();
    let found = dynamic_linking(&binary);
    assert!(found.is_empty(), "{} is not static: it has {}", binary.display(), found.join(" and "));
    let pod = server_pod();

    let _lock = crate::support::lab_lock(false);
    let dir = crate::support::scratch("agent-image");
    let root = distroless_root(&dir.join("root"), &binary, &pod);
    let token = format!("image-test-{}", std::process::id());
    let secret = secret_volume(&dir.join("secret"), &pod, &token);
    let trace = dir.join("strace.log");
    let log = dir.join("agent.log");
    let running = launch(&root, &secret, &pod, &trace, &log);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let (port, id) = (pod.ports.clone(), arg(&pod.args, "--id").to_string());
    let served = in_netns(&running.netns, move || exercise(&port, &id, &token)).join().unwrap();
    if let Err(e) = served {
        panic!("the agent did not serve as expected: {e:#}\nagent log:\n{}", agent_log());
    }
    let pid = agent_pid(&running.netns);
    assert_confined(pid, &pod);

    let status = running.stop(pid, pod.grace);
    assert!(status.success(), "the agent exited with {status} on SIGTERM\nagent log:\n{}", agent_log());
    assert_wrote_nothing(&std::fs::read_to_string(&trace).unwrap(), &pod);
}

/// Builds the agent fully static (`+crt-static`) in the dev profile, in its own target dir:
/// other RUSTFLAGS in the outer one would invalidate its cache and fight over its lock.
/// `--target` keeps the flag off build scripts and proc macros, which must stay dynamic.
fn build_static_agent() -> PathBuf {
    // CARGO_BIN_EXE_zonebench is <target dir>/debug/zonebench.
    let outer = Path::new(env!("CARGO_BIN_EXE_zonebench")).parent().unwrap().parent().unwrap();
    let target_dir = outer.join("static");
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--locked", "--offline", "-p", "zonebench-agent", "--bin", "zonebench-agent"])
        .args(["--target", &triple, "--target-dir"])
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "static build of the agent failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("static agent built in {:.1?}", started.elapsed());
    target_dir.join(triple).join("debug/zonebench-agent")
}

/// Why `binary` is not statically linked, from its ELF headers (what `ldd` would say): a
/// program interpreter (PT_INTERP) or needed shared libraries (DT_NEEDED). Empty if static.
fn dynamic_linking(binary: &Path) -> Vec<String> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    let f = File::open(binary).unwrap();
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let header = read(0, 64);
    assert_eq!(&header[..6], b"\x7fELF\x02\x01", "{}: not a 64-bit little-endian ELF file", binary.display());
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    let mut found = vec![];
    for i in 0..u64::from(phnum) {
        let ph = read(phoff + i * u64::from(phentsize), 56);
        match u32::from_le_bytes(ph[..4].try_into().unwrap()) {
            PT_INTERP => found.push("a program interpreter (PT_INTERP)".to_string()),
            // A static PIE keeps a dynamic section for its own relocations, but needs nothing.
            PT_DYNAMIC => {
                let dynamic = read(u64_at(&ph, 8), u64_at(&ph, 32) as usize);
                let needed = dynamic.chunks_exact(16).filter(|e| u64_at(e, 0) == DT_NEEDED).count();
                if needed > 0 {
                    found.push(format!("{needed} shared libraries (DT_NEEDED)"));
                }
            }
            _ => {}
        }
    }
    found
}

#[test]
fn the_static_check_sees_a_dynamically_linked_binary() {
    let found = dynamic_linking(Path::new(env!("CARGO_BIN_EXE_zonebench")));
    assert_eq!(found.len(), 2, "{found:?}");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first server pod of `zonebench render scenarios/quick.toml`, with a check that its
/// securityContext still asks for what this test emulates.
fn server_pod() -> AgentPod {
    let out = crate::support::run(
        crate::support::zonebench().current_dir(workspace()).args(["render", "scenarios/quick.toml"]),
    );
    assert!(out.status.success());
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let pod = docs
        .iter()
        .find(|d| d["kind"] == "Pod" && d["metadata"]["labels"]["zonebench.dev/role"] == "server")
        .expect("render shows no server pod");
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    let number = |v: &Value| u32::try_from(v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))).unwrap();
    let mount = &container["volumeMounts"][0];
    let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let ports = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), number(&p["containerPort"]) as u16))
        .collect();
    let token_file = arg(&args, "--token-file").to_string();
    let secret_mount = mount["mountPath"].as_str().unwrap().to_string();
    assert!(token_file.starts_with(&format!("{secret_mount}/")), "{token_file} is not in the Secret volume");
    AgentPod {
        uid: number(&sc["runAsUser"]),
        gid: number(&sc["runAsGroup"]),
        fs_group: number(&spec["securityContext"]["fsGroup"]),
        secret_mount,
        secret_mode: number(&volume["secret"]["defaultMode"]),
        token_file,
        ports,
        grace: Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap()),
        args,
    }
}

/// What gcr.io/distroless/static-debian12:nonroot holds that a program might look at
/// (passwd and group with nonroot 65532, nsswitch.conf, /tmp, the nonroot home), the agent
/// as /zonebench-agent, and the mount points the runtime creates. No libc, no shell. The
/// CA certificates, tzdata and netbase files are left out: the agent reads none of them.
fn distroless_root(root: &Path, binary: &Path, pod: &AgentPod) -> PathBuf {
    for d in ["etc", "tmp", "home/nonroot", "proc", "sys", "dev", pod.secret_mount.trim_start_matches('/')] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(root.join("home/nonroot"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(root.join("home/nonroot"), Some(65532), Some(65532)).unwrap();
    let files = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
             nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"),
        ("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\nprotocols: files\nservices: files\n"),
    ];
    for (path, text) in files {
        std::fs::write(root.join(path), text).unwrap();
    }
    // A hard link when the build is on the same file system; 0755 root:root either way, as
    // the Dockerfile installs it.
    let agent = root.join("zonebench-agent");
    std::fs::hard_link(binary, &agent).or_else(|_| std::fs::copy(binary, &agent).map(drop)).unwrap();
    root.to_path_buf()
}

/// A Secret volume as the kubelet writes it: the key's file behind `..data`, a symlink to a
/// timestamped directory, with the volume's defaultMode and the pod's fsGroup as its group.
fn secret_volume(dir: &Path, pod: &AgentPod, token: &str) -> PathBuf {
    let name = Path::new(&pod.token_file).file_name().unwrap();
    let version = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join(name), token).unwrap();
    std::os::unix::fs::chown(version.join(name), Some(0), Some(pod.fs_group)).unwrap();
    std::fs::set_permissions(version.join(name), std::fs::Permissions::from_mode(pod.secret_mode)).unwrap();
    std::os::unix::fs::symlink(version.file_name().unwrap(), dir.join("..data")).unwrap();
    std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
    dir.to_path_buf()
}

/// Runs in the new mount and PID namespaces, as root, before the agent: what the container
/// runtime does. Arguments: root, Secret directory, its mount path, pod IP, then capsh's.
const RUNTIME: &str = r#"set -eu
root=$1 secret=$2 secret_at=$3 pod_ip=$4
shift 4
ip link set lo up
ip addr add "$pod_ip/32" dev lo
# readOnlyRootFilesystem
mount --bind -o ro "$root" "$root"
# What every OCI runtime mounts: /proc of the pod's PID namespace, a read-only /sys, a small /dev.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs "$root/dev"
for d in null zero full random urandom tty; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
# The Secret volume, read-only.
mount --bind -o ro "$secret" "$root$secret_at"
exec capsh "$@"
"#;

/// The agent running in its own network namespace, traced by strace.
struct Running {
    netns: String,
    child: Child,
}

/// Starts the agent as the pod would: `unshare` makes the mount and PID namespaces (the
/// agent is PID 1 there), [`RUNTIME`] mounts, and capsh confines in order — no new
/// privileges, an empty bounding set, chroot, gid, fsGroup as the only supplementary
/// group, uid (which clears the remaining sets) — then executes the image's entrypoint
/// with the pod's args. strace outside records every file system call.
fn launch(root: &Path, secret: &Path, pod: &AgentPod, trace: &Path, log: &Path) -> Running {
    let name = format!("zbimage-{}", std::process::id());
    let _ = netns::delete(&name);
    netns::run_argv(&["ip", "netns", "add", &name].map(String::from)).unwrap();
    let capsh = [
        "--no-new-privs".to_string(),
        "--drop=all".into(),
        format!("--chroot={}", root.display()),
        format!("--gid={}", pod.gid),
        format!("--groups={}", pod.fs_group),
        format!("--uid={}", pod.uid),
        "--inh=".into(),
        "--noamb".into(),
        "--shell=/zonebench-agent".into(),
        "--".into(),
    ];
    let out = File::create(log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &name, "strace", "-f", "-qq", "-e", "trace=%file", "-o"])
        .arg(trace)
        .args(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", RUNTIME, "sh"])
        .args([root, secret])
        .args([&pod.secret_mount, POD_IP])
        .args(capsh)
        .args(&pod.args)
        // A container starts with the image's environment, not the test's.
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start ip netns exec … strace … unshare (iproute2, strace): {e}"));
    Running { netns: name, child }
}

impl Running {
    /// SIGTERM to the agent, as the kubelet stops a pod; it must exit within the pod's grace.
    fn stop(mut self, pid: i32, grace: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + grace;
        loop {
            // strace exits with unshare's status, which is the agent's.
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent (PID 1 of its pod) did not stop within {grace:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        netns::kill_all_in(std::slice::from_ref(&self.netns), Duration::from_secs(2));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = netns::delete(&self.netns);
    }
}

/// Runs `f` on a thread inside network namespace `name`.
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("{}/{name}", netns::NETNS_DIR);
    std::thread::spawn(move || {
        nix::sched::setns(File::open(&path).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// What the coordinator does with an agent, from inside its network namespace: health,
/// info (only with the token), and a short tcp-rr test against its own echo port.
fn exercise(ports: &BTreeMap<String, u16>, id: &str, token: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let endpoint = ControlEndpoint::Tcp(format!("{POD_IP}:{}", ports["control"]).parse()?);
        let agent = ControlClient::new(endpoint.clone(), token);
        agent.wait_healthy(Duration::from_secs(20)).await?;
        match ControlClient::new(endpoint, "not-the-token").info().await {
            Err(e) if e.to_string().contains("401") => {}
            other => anyhow::bail!("GET /v1/info with a wrong token: {other:?}"),
        }
        let info = agent.info().await?;
        anyhow::ensure!(info["identity"]["id"] == id, "/v1/info identity: {}", info["identity"]);
        for name in ["tcp", "udp", "http"] {
            anyhow::ensure!(info["ports"][name] == ports[name], "/v1/info {name} port differs from the pod's: {info}");
        }
        let spec: TestSpec = serde_json::from_value(json!({
            "test": "tcp-rr", "target": format!("{POD_IP}:{}", ports["tcp"]), "duration_ms": 500, "warmup_ms": 100,
        }))?;
        let test = agent.start_test(&spec).await?;
        let result = agent.wait_for(&test, &spec).await?;
        let count = result.latency.as_ref().map_or(0, |l| l.count);
        anyhow::ensure!(count > 0 && result.metrics.errors == Some(0), "tcp-rr: {count} answers, {result:?}");
        anyhow::ensure!(result.servers.keys().eq([id]), "tcp-rr answered by {:?}, not {id}", result.servers);
        Ok(())
    })
}

/// The agent's pid on the host: the process of the pod's network namespace running its binary.
fn agent_pid(netns_name: &str) -> i32 {
    let pids = netns::pids(netns_name);
    let comm = |p: &i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    *pids.iter().find(|p| comm(p).trim() == "zonebench-agent").unwrap_or_else(|| panic!("no agent in {pids:?}"))
}

/// The kernel's view of the running agent matches the pod's securityContext: its ids, no
/// capability in any set, no new privileges, PID 1, and a read-only root.
fn assert_confined(pid: i32, pod: &AgentPod) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap();
        line[name.len() + 1..].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let (uid, gid) = (pod.uid.to_string(), pod.gid.to_string());
    assert_eq!(field("Uid"), [uid.as_str(); 4].join(" "));
    assert_eq!(field("Gid"), [gid.as_str(); 4].join(" "));
    assert_eq!(field("Groups"), pod.fs_group.to_string());
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{set}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert!(field("NSpid").ends_with(" 1"), "the agent is not PID 1 of its PID namespace: {}", field("NSpid"));
    // mountinfo shows mounts as the agent sees them: field 5 is the mount point, 6 its options.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // The last mount on / is the one on top, which the agent sees.
    let root = mounts.lines().rev().map(|l| l.split(' ').collect::<Vec<_>>()).find(|f| f[4] == "/").unwrap();
    assert!(root[5].split(',').any(|o| o == "ro"), "the agent's root is not read-only: {}", root.join(" "));
}

/// No call in the agent's part of the trace opened a file for writing, made, removed or
/// changed one, or met a read-only file system (which the agent might have shrugged off).
/// `/dev` is exempt: the runtime's /dev is a writable tmpfs in a pod too.
fn assert_wrote_nothing(trace: &str, pod: &AgentPod) {
    // Everything after the entrypoint's execve is the agent's: the namespace set-up has
    // finished, and unshare (also traced) only waits.
    let start = trace.lines().position(|l| l.contains(r#"execve("/zonebench-agent""#) && l.ends_with("= 0"));
    let agent: Vec<&str> =
        trace.lines().skip(start.expect("the trace has no execve of /zonebench-agent") + 1).collect();
    // The trace does cover the agent: it shows the token being read.
    assert!(
        agent.iter().any(|l| l.contains(&format!("\"{}\", O_RDONLY", pod.token_file))),
        "the trace shows no read of {}:\n{}",
        pod.token_file,
        agent.join("\n")
    );
    const CHANGES: &str = "creat mkdir mkdirat mknod mknodat unlink unlinkat rmdir rename renameat renameat2 \
        link linkat symlink symlinkat chmod fchmodat chown lchown fchownat truncate utimensat";
    let writes: Vec<&&str> = agent
        .iter()
        .filter(|l| !l.contains("\"/dev/"))
        .filter(|l| {
            let call = l.split_once(' ').map_or("", |(_, rest)| rest.split('(').next().unwrap_or(""));
            CHANGES.split_whitespace().any(|c| c == call)
                || ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_TMPFILE", "EROFS"].iter().any(|f| l.contains(f))
        })
        .collect();
    assert!(writes.is_empty(), "the agent tried to write to its file system:\n{writes:#?}");
}
