//! What the kube tests share besides the fake API server itself: a scratch directory, a
//! connection to a fake, and the platform options a test run uses against one.

use std::path::Path;

use zonebench::platform::kube::{self, ClusterSource, KubeOptions};
use zonebench::scenario::KubeSettings;

use super::fake_apiserver::{kubeconfig, FakeApi};

/// A client of `api`, through a kubeconfig written into `dir`.
pub async fn connect(api: &FakeApi, dir: &Path) -> kube::Cluster {
    let source = ClusterSource { kubeconfig: Some(kubeconfig(dir, &[("kind-zb", &api.url())])), context: None };
    kube::client::connect(&source).await.unwrap()
}

/// The kube platform's options for a test run on `api`: a fixed run id, agents allowed to
/// target loopback (where the fake's pods and ClusterIPs are).
pub fn kube_options(dir: &Path, api: &FakeApi, run_id: &str) -> KubeOptions {
    KubeOptions {
        source: ClusterSource { kubeconfig: Some(kubeconfig(dir, &[("kind-zb", &api.url())])), context: None },
        image: Some("example.com/zonebench-agent:test".into()),
        settings: KubeSettings { allow_cidrs: vec!["127.0.0.0/8".into()], ..Default::default() },
        scenario: "t".into(),
        inspector_image: None,
        run_id: Some(run_id.into()),
        variants: Vec::new(),
    }
}
