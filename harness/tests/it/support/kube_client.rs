//! The kube tests' fake cluster: [`fake_cluster`] is how each kube test starts (a scratch
//! directory, a fake API server with recorded objects loaded, a kubeconfig naming it), and a
//! [`FakeCluster`] gives what the test does next: a client of it, the kube platform's options
//! for a run on it, or the platform itself, discovered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zonebench::platform::kube::{self, ClusterSource, KubeOptions, KubePlatform};
use zonebench::platform::Platform as _;
use zonebench::scenario::KubeSettings;

use super::fake_apiserver::{fixture, kubeconfig, FakeApi, Kubelet};
use super::{scratch, Scratch};

/// A kind cluster's objects as recorded (`tests/fixtures/kube/`): its nodes (two workers in
/// each of zones a, b and c, and a tainted control plane without a zone), its DaemonSets
/// (kindnet, kube-proxy) and kube-proxy's ConfigMap (iptables mode).
pub const KIND: &[&str] = &["kind-nodes.json", "kind-daemonsets.json", "kind-kube-proxy-configmap.json"];

/// What the fake's kubelet does with created pods (see [`Kubelet`]).
#[derive(Debug, Clone, Copy)]
pub enum Pods {
    /// They turn Running and Ready after a moment; nothing runs.
    Ready,
    /// As `Ready`, and agent pods really run (`zonebench agent`), with their tokens and logs in
    /// the scratch directory.
    RunAgents,
    /// They are stuck: their image cannot be pulled.
    ImagePullBackOff,
}

/// A fake cluster for one test. Fields drop in order: the server (and the agents its kubelet
/// started) goes before the directory they write to.
pub struct FakeCluster {
    pub api: Arc<FakeApi>,
    /// `dir/kubeconfig`: one context, `kind-zb`, on `api`.
    pub kubeconfig: PathBuf,
    /// The test's scratch directory: the kubeconfig, and the agents' tokens and logs.
    pub dir: Scratch,
}

/// A scratch directory `tag` names, a fake API server whose kubelet does `pods`, with the
/// fixtures `fixtures` loaded, and a kubeconfig for it in the directory.
pub async fn fake_cluster(tag: &str, pods: Pods, fixtures: &[&str]) -> FakeCluster {
    let dir = scratch(tag);
    let api = fake_api(&dir, pods, fixtures).await;
    let kubeconfig = kubeconfig(&dir, &[("kind-zb", &api.url())]);
    FakeCluster { api: Arc::new(api), kubeconfig, dir }
}

/// A fake API server whose kubelet does `pods` (running agents write into `dir`), with the
/// fixtures `fixtures` loaded: [`fake_cluster`]'s, or a second cluster's for a test that
/// has one.
pub async fn fake_api(dir: &Path, pods: Pods, fixtures: &[&str]) -> FakeApi {
    let kubelet = match pods {
        Pods::Ready => Kubelet::Ready,
        Pods::RunAgents => {
            Kubelet::RunAgents { zonebench: env!("CARGO_BIN_EXE_zonebench").into(), dir: dir.to_path_buf() }
        }
        Pods::ImagePullBackOff => Kubelet::ImagePullBackOff,
    };
    let api = FakeApi::start(kubelet).await;
    for name in fixtures {
        api.load(fixture(name));
    }
    api
}

impl FakeCluster {
    fn source(&self) -> ClusterSource {
        ClusterSource { kubeconfig: Some(self.kubeconfig.clone()), context: None }
    }

    /// A client of the fake, through the kubeconfig.
    pub async fn connect(&self) -> kube::Cluster {
        kube::client::connect(&self.source()).await.unwrap()
    }

    /// The kube platform's options for a test run on the fake: a fixed run id, agents
    /// allowed to target loopback (where the fake's pods and ClusterIPs are).
    pub fn options(&self, run_id: &str) -> KubeOptions {
        KubeOptions {
            source: self.source(),
            image: Some("example.com/zonebench-agent:test".into()),
            settings: KubeSettings { allow_cidrs: vec!["127.0.0.0/8".into()], ..Default::default() },
            scenario: "t".into(),
            inspector_image: None,
            run_id: Some(run_id.into()),
            variants: Vec::new(),
            // The fake serves port-forward; its pod IPs are not where its agents listen.
            control: zonebench::platform::kube::ControlMode::PortForward,
            nodes: None,
        }
    }

    /// The kube platform for a run with `run_id` on the fake ([`FakeCluster::options`]),
    /// after its discovery.
    pub async fn platform(&self, run_id: &str) -> KubePlatform {
        discovered(self.options(run_id)).await
    }
}

/// The kube platform with `options`, after its discovery.
pub async fn discovered(options: KubeOptions) -> KubePlatform {
    let mut p = KubePlatform::new(options).unwrap();
    p.discover().await.unwrap();
    p
}
