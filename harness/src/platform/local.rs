//! The local platform: agents as plain processes on loopback, zones by label only. For
//! machines where the lab cannot run (not root, not Linux). Every path is loopback, so it
//! measures the harness, not a network: results say `platform: local`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::Platform;
use crate::control_client::ControlClient;
use crate::model::{AgentProgram, AgentRequest, ClusterTopology, ControlEndpoint, DeployedAgent, Fingerprint, Node};

pub struct LocalPlatform {
    zones: Vec<String>,
    nodes_per_zone: u32,
    program: AgentProgram,
    dir: Option<PathBuf>,
    token: String,
    children: Vec<(String, Child)>,
    /// Agents are forked from this thread: their death signal is tied to it (see `spawn`).
    spawner: Option<super::process::Spawner>,
    nodes: Vec<Node>,
}

impl LocalPlatform {
    pub fn new(zones: Vec<String>, nodes_per_zone: u32, program: AgentProgram) -> anyhow::Result<LocalPlatform> {
        Ok(LocalPlatform {
            zones,
            nodes_per_zone,
            program,
            dir: None,
            token: crate::platform::process::random_token()?,
            children: Vec::new(),
            spawner: None,
            nodes: Vec::new(),
        })
    }

    fn run_dir(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        // One directory per platform, not per process: two local platforms in one process
        // (tests run as threads) must not share agent sockets.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zonebench-local-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::platform::process::write_token(&dir.join("token"), &self.token)?;
        self.dir = Some(dir.clone());
        Ok(dir)
    }
}

impl Platform for LocalPlatform {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn discover(&mut self) -> anyhow::Result<ClusterTopology> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        self.nodes = self
            .zones
            .iter()
            .flat_map(|z| {
                (1..=self.nodes_per_zone).map(move |i| Node {
                    name: format!("{z}-{i}"),
                    zone: z.clone(),
                    cpu_millis: cores * 1000,
                    ready: true,
                })
            })
            .collect();
        let fingerprint = Fingerprint {
            platform: "local".into(),
            kernel: crate::platform::kernel_release(),
            routing: None,
            mtu: None,
            zones: self.zones.clone(),
            nodes: self.nodes.len(),
            zonebench_version: env!("CARGO_PKG_VERSION").into(),
            extra: [("network".to_string(), "loopback; zones are labels only".to_string())].into(),
        };
        Ok(ClusterTopology { nodes: self.nodes.clone(), fingerprint })
    }

    async fn deploy(&mut self, agents: &[AgentRequest]) -> anyhow::Result<Vec<DeployedAgent>> {
        let dir = self.run_dir()?;
        let mut pending = Vec::new();
        for a in agents {
            let node = self.nodes.iter().find(|n| n.name == a.node).with_context(|| format!("no node {}", a.node))?;
            let zone = node.zone.clone();
            let sock = dir.join(format!("{}.sock", a.id));
            let log = std::fs::File::create(dir.join(format!("{}.log", a.id)))?;
            let mut cmd = Command::new(&self.program.path);
            cmd.args(&self.program.args)
                .arg("serve")
                .args(["--listen", "127.0.0.1", "--tcp-port", "0", "--udp-port", "0", "--http-port", "0"])
                .arg("--control")
                .arg(format!("unix:{}", sock.display()))
                .arg("--token-file")
                .arg(dir.join("token"))
                .args(["--id", &a.id, "--zone", &zone, "--node", &a.node])
                .args(a.max_answer_qps.iter().flat_map(|q| ["--max-answer-qps".to_string(), q.to_string()]))
                .args(a.relay.then_some("--relay"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            crate::sys::die_with_parent(&mut cmd);
            if self.spawner.is_none() {
                self.spawner = Some(super::process::Spawner::new("zb-local")?);
            }
            let spawner = self.spawner.as_ref().context("the spawner was just created")?;
            let child = spawner.spawn(cmd).with_context(|| format!("starting agent {}", a.id))?;
            self.children.push((a.id.clone(), child));
            pending.push((a.clone(), zone, sock));
        }
        let mut deployed = Vec::new();
        for (a, zone, sock) in pending {
            let client = ControlClient::new(ControlEndpoint::Unix(sock.clone()), self.token.clone());
            if let Err(e) = client.wait_healthy(Duration::from_secs(10)).await {
                let log = crate::platform::process::log_tail(&dir.join(format!("{}.log", a.id)));
                bail!("agent {} did not start: {e:#}\n{log}", a.id);
            }
            let info = client.info().await?;
            let port = |name: &str| -> anyhow::Result<u16> {
                crate::control_client::info_port(&info, name)
                    .with_context(|| format!("agent {}'s /v1/info has no {name} port", a.id))
            };
            deployed.push(DeployedAgent {
                id: a.id.clone(),
                node: a.node.clone(),
                zone,
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                tcp_port: port("tcp")?,
                udp_port: port("udp")?,
                http_port: port("http")?,
                control: ControlEndpoint::Unix(sock),
                token: self.token.clone(),
            });
        }
        Ok(deployed)
    }

    async fn teardown(&mut self) -> anyhow::Result<()> {
        for (_, child) in &mut self.children {
            crate::platform::process::stop_child(child);
        }
        self.children.clear();
        if let Some(mut s) = self.spawner.take() {
            s.stop();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}
