//! The real kube-proxy on a lab node: one process per node namespace, in iptables or
//! nftables mode, watching the lab's apiserver and programming that node's rules, as on a
//! cluster. Its configuration names the node (`hostnameOverride`), binds health and metrics
//! to the node's address, and leaves the host's sysctls alone (conntrack limits and timeouts
//! untouched, no `route_localnet`): every lab node shares one kernel, so a node must not
//! change what the others see.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};

use crate::platform::process::{command_in, log_tail, stop_child, Spawner};

/// kube-proxy's metrics and health ports (its defaults), on the node's address.
pub const METRICS_PORT: u16 = 10249;
pub const HEALTHZ_PORT: u16 = 10256;

/// The kube-proxy modes the lab runs (the kernel here has no IPVS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// One node's kube-proxy.
#[derive(Debug, Clone)]
pub struct KubeProxySpec {
    /// The node's network namespace.
    pub netns: String,
    /// The Node object's name (`hostnameOverride`).
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub mode: ProxyMode,
    /// The pods' range, for kube-proxy's masquerade decisions (`clusterCIDR`).
    pub cluster_cidr: String,
    /// kube-proxy's kubeconfig (its `system:kube-proxy` client certificate).
    pub kubeconfig: PathBuf,
    /// Where its configuration and log go.
    pub dir: PathBuf,
    /// The directory holding the kube-proxy binary.
    pub bin: PathBuf,
    /// Tied to the coordinator (killed when it dies); false for a lab left up by `lab up`.
    pub attached: bool,
}

/// The `KubeProxyConfiguration` for `spec`.
pub fn config_yaml(spec: &KubeProxySpec) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
mode: {mode}
clusterCIDR: {cluster_cidr}
bindAddress: {ip}
metricsBindAddress: {ip}:{METRICS_PORT}
healthzBindAddress: {ip}:{HEALTHZ_PORT}
# NodePorts on the node's own address only, not on every address of the shared kernel.
nodePortAddresses: [primary]
# One kernel for every lab node: change no sysctl.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
",
        kubeconfig = spec.kubeconfig.display(),
        node = spec.node,
        mode = spec.mode.as_str(),
        cluster_cidr = spec.cluster_cidr,
        ip = spec.node_ip,
    )
}

/// A running kube-proxy; stopped on drop. Its rules stay until [`KubeProxy::cleanup`] or
/// the node namespace goes.
pub struct KubeProxy {
    spec: KubeProxySpec,
    child: Child,
    log: PathBuf,
    detached: bool,
}

impl KubeProxy {
    /// Leaves the process running after this handle goes (`lab up`).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Starts kube-proxy in `spec.netns` through `spawner` (so it dies with the coordinator).
    pub fn start(spec: KubeProxySpec, spawner: &Spawner) -> anyhow::Result<KubeProxy> {
        let binary = spec.bin.join("kube-proxy");
        if !binary.is_file() {
            bail!("{} is missing: build the Kubernetes binaries with scripts/kube-binaries.sh", binary.display());
        }
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("creating {}", spec.dir.display()))?;
        let config = spec.dir.join(format!("kube-proxy-{}.yaml", spec.node));
        std::fs::write(&config, config_yaml(&spec)).with_context(|| format!("writing {}", config.display()))?;
        let log = spec.dir.join(format!("kube-proxy-{}.log", spec.node));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = command_in(Some(&spec.netns), &binary, spec.attached);
        cmd.arg(format!("--config={}", config.display()))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        let child = spawner.spawn(cmd).with_context(|| format!("starting kube-proxy on node {}", spec.node))?;
        Ok(KubeProxy { spec, child, log, detached: false })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spec(&self) -> &KubeProxySpec {
        &self.spec
    }

    /// An error with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("kube-proxy on node {} exited ({status}): {}", self.spec.node, log_tail(&self.log));
        }
        Ok(())
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Removes the rules kube-proxy left in its namespace (`kube-proxy --cleanup`).
    pub fn cleanup(&self) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.spec.netns])
            .arg(self.spec.bin.join("kube-proxy"))
            .arg("--cleanup")
            .output()
            .context("running kube-proxy --cleanup")?;
        if !out.status.success() {
            bail!("kube-proxy --cleanup on node {}: {}", self.spec.node, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_the_node_and_changes_no_sysctl() {
        let spec = KubeProxySpec {
            netns: "zb0001-a-1".into(),
            node: "a-1".into(),
            node_ip: Ipv4Addr::new(198, 18, 0, 10),
            mode: ProxyMode::Nftables,
            cluster_cidr: "198.19.0.0/16".into(),
            kubeconfig: "/run/zb/kube-proxy.kubeconfig".into(),
            dir: "/tmp".into(),
            bin: "/bin".into(),
            attached: true,
        };
        let y = config_yaml(&spec);
        let v: serde_json::Value = serde_saphyr::from_str(&y).unwrap_or_default();
        assert_eq!(v["hostnameOverride"], "a-1");
        assert_eq!(v["mode"], "nftables");
        assert_eq!(v["metricsBindAddress"], "198.18.0.10:10249");
        assert_eq!(v["conntrack"]["maxPerCore"], 0);
        assert_eq!(v["iptables"]["localhostNodePorts"], false);
    }
}
