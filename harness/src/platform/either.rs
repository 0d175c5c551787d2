//! One of two platforms behind one type, so a run over several platforms
//! ([`crate::run::run_each`], which takes one type) may mix kinds: the Kubernetes lab's sweep
//! runs the plain lab's emulated dataplanes and then the real kube-proxy through the kube
//! platform, into one results.json. Every method is the chosen platform's.

use std::sync::Arc;

use super::{Capability, Platform, Progress};
use crate::model::{
    AgentRequest, ClusterTopology, DataplaneKind, DataplaneName, DeployedAgent, ProbeRequest, ServiceRequest,
    ServicesApplied,
};

pub enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A: Platform, B: Platform> Platform for Either<A, B> {
    fn name(&self) -> &'static str {
        match self {
            Either::Left(a) => a.name(),
            Either::Right(b) => b.name(),
        }
    }

    async fn discover(&mut self) -> anyhow::Result<ClusterTopology> {
        match self {
            Either::Left(a) => a.discover().await,
            Either::Right(b) => b.discover().await,
        }
    }

    async fn deploy(&mut self, agents: &[AgentRequest]) -> anyhow::Result<Vec<DeployedAgent>> {
        match self {
            Either::Left(a) => a.deploy(agents).await,
            Either::Right(b) => b.deploy(agents).await,
        }
    }

    async fn teardown(&mut self) -> anyhow::Result<()> {
        match self {
            Either::Left(a) => a.teardown().await,
            Either::Right(b) => b.teardown().await,
        }
    }

    fn supports(&self, capability: Capability) -> bool {
        match self {
            Either::Left(a) => a.supports(capability),
            Either::Right(b) => b.supports(capability),
        }
    }

    async fn apply_services(
        &mut self,
        services: &[ServiceRequest],
        probe: Option<&ProbeRequest>,
    ) -> anyhow::Result<ServicesApplied> {
        match self {
            Either::Left(a) => a.apply_services(services, probe).await,
            Either::Right(b) => b.apply_services(services, probe).await,
        }
    }

    fn fixed_service_dataplane(&self) -> Option<DataplaneName> {
        match self {
            Either::Left(a) => a.fixed_service_dataplane(),
            Either::Right(b) => b.fixed_service_dataplane(),
        }
    }

    fn attach_progress(&mut self, progress: Arc<dyn Progress>) {
        match self {
            Either::Left(a) => a.attach_progress(progress),
            Either::Right(b) => b.attach_progress(progress),
        }
    }

    async fn set_service_dataplane(&mut self, kind: DataplaneKind) -> anyhow::Result<()> {
        match self {
            Either::Left(a) => a.set_service_dataplane(kind).await,
            Either::Right(b) => b.set_service_dataplane(kind).await,
        }
    }
}
