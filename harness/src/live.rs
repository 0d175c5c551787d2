//! `zonebench hints -n NAMESPACE SERVICE`: the hints doctor on a live cluster.
//!
//! It connects through the kube platform (which fails fast naming the cluster), and the
//! platform's [`hints_check`] reads the Service, its EndpointSlices, every Node and the
//! Service's events, runs the same doctor as the file form on them and sets the hints the
//! controller actually wrote beside the prediction. Here the analysis is rendered in the
//! chosen format. (A kube run's Service tests record the same comparison's verdict.)

use crate::platform::kube::hints_check::{self, DiagnoseOptions};
use crate::platform::kube::{self, ClusterSource};
use crate::topology::doctor::{self, OutputFormat};
use crate::topology::AddressType;

pub use crate::platform::kube::hints_check::{to_inputs, LiveError};

/// What to diagnose, and how to print it.
#[derive(Debug, Clone)]
pub struct LiveQuery {
    pub source: ClusterSource,
    pub service: String,
    /// None: the kubeconfig context's namespace.
    pub namespace: Option<String>,
    pub address_type: Option<AddressType>,
    /// The PreferSameTrafficDistribution gate; None: the cluster version's default.
    pub prefer_same_traffic_distribution: Option<bool>,
    pub output: OutputFormat,
}

/// Runs the doctor on `query`'s Service and returns the report in its format.
pub async fn hints(query: &LiveQuery) -> Result<String, LiveError> {
    let cluster = kube::client::connect(&query.source).await?;
    let namespace = query.namespace.clone().unwrap_or_else(|| cluster.client.default_namespace().to_string());
    let options = DiagnoseOptions {
        address_type: query.address_type,
        prefer_same_traffic_distribution: query.prefer_same_traffic_distribution,
    };
    let analysis = hints_check::diagnose(&cluster, &namespace, &query.service, options).await?;
    doctor::render(&analysis.report, query.output).map_err(|source| LiveError::Doctor {
        cluster: cluster.describe(),
        namespace,
        service: query.service.clone(),
        source: Box::new(source),
    })
}
