//! Where agents run. The runner (`run/`) is written only against [`Platform`]:
//! discover the cluster, deploy agents on chosen nodes, reach their control APIs, put
//! Services in front of them, tear down. Platforms depend only downward: on `model`, the
//! scenario's configuration tables, `dataplane`, `topology` and `control_client`; never on
//! the plan, the runner or results.
//!
//! - [`lab`]: a multi-zone cluster emulated with network namespaces on one Linux host (root);
//! - [`local`]: agents as processes on loopback, zones by label only;
//! - [`kube`]: a real cluster through kube-rs;
//! - [`either`]: one of two platforms as one type, for a run that mixes kinds.

use std::future::Future;

use std::sync::Arc;

use crate::model::{
    AgentRequest, ClusterTopology, DataplaneKind, DataplaneName, DeployedAgent, ProbeRequest, ServiceRequest,
    ServicesApplied,
};

pub mod either;
pub mod kube;
pub mod lab;
pub mod local;
pub mod process;

/// What a platform may be unable to do. The runner asks [`Platform::supports`] for each
/// capability a scenario needs before it deploys anything, so a scenario the platform cannot
/// run fails at once with [`Unsupported`], not after agents were started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// ClusterIP Services in front of agents ([`Platform::apply_services`]).
    Services,
    /// Choosing the dataplane nodes program Services with ([`Platform::set_service_dataplane`]).
    SwitchDataplane,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Capability::Services => "Services (via = \"service\", a sweep)",
            Capability::SwitchDataplane => "switching the service dataplane",
        })
    }
}

/// A scenario asked for something its platform cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{capability} is not available on the {platform} platform; run on the lab")]
pub struct Unsupported {
    pub platform: &'static str,
    pub capability: Capability,
}

/// Where a platform reports the progress of its long steps (creating thousands of Services
/// on a cluster, in batches). The runner shows it beside its own progress; a platform never
/// knows how (a terminal bar, a log, nothing).
pub trait Progress: Send + Sync {
    fn message(&self, text: String);
}

/// A place to run agents. Implementations must make `teardown` safe to call more than once
/// and after a partial `deploy`, since it runs on every exit path.
pub trait Platform {
    fn name(&self) -> &'static str;
    /// Brings the platform up if it needs it (the lab builds its namespaces here) and lists
    /// the nodes and the fingerprint.
    fn discover(&mut self) -> impl Future<Output = anyhow::Result<ClusterTopology>>;
    /// Starts the agents and waits until each answers its health check.
    fn deploy(&mut self, agents: &[AgentRequest]) -> impl Future<Output = anyhow::Result<Vec<DeployedAgent>>>;
    /// Removes everything the platform created.
    fn teardown(&mut self) -> impl Future<Output = anyhow::Result<()>>;

    /// Whether this platform can do `capability` (after `discover`). The methods behind a
    /// capability it lacks answer [`Unsupported`].
    fn supports(&self, capability: Capability) -> bool {
        let _ = capability;
        false
    }

    /// Makes the run's Services exactly `services` (creating, changing and deleting as
    /// needed) and returns once every node routes them. With `probe`, also measures the
    /// programming latency a pod sees (see [`ProbeRequest`]).
    fn apply_services(
        &mut self,
        services: &[ServiceRequest],
        probe: Option<&ProbeRequest>,
    ) -> impl Future<Output = anyhow::Result<ServicesApplied>> {
        let _ = (services, probe);
        let err = Unsupported { platform: self.name(), capability: Capability::Services };
        async move { Err(err.into()) }
    }

    /// The service dataplane the platform has and cannot change (a cluster's kube-proxy mode
    /// or CNI), after `discover`; None where [`Platform::set_service_dataplane`] chooses it.
    fn fixed_service_dataplane(&self) -> Option<DataplaneName> {
        None
    }

    /// Where the platform may report the progress of long steps.
    fn attach_progress(&mut self, progress: Arc<dyn Progress>) {
        let _ = progress;
    }

    /// Chooses the dataplane every node programs Services with, replacing the current one.
    fn set_service_dataplane(&mut self, kind: DataplaneKind) -> impl Future<Output = anyhow::Result<()>> {
        let _ = kind;
        let err = Unsupported { platform: self.name(), capability: Capability::SwitchDataplane };
        async move { Err(err.into()) }
    }
}

/// The running kernel's release, for fingerprints.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
