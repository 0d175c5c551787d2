//! `zonebench hints`: the hints doctor, on kubectl output files (no runtime needed) or on a
//! live Service (`-n NAMESPACE SERVICE`, through `zonebench::live`).

use std::path::PathBuf;

use clap::Args;
use zonebench::live::{self, LiveQuery};
use zonebench::platform::kube::ClusterSource;
use zonebench::topology::doctor::{self, DoctorError, Inputs, OutputFormat, Settings};
use zonebench::topology::{input, AddressType};

use super::{Exit, Usage};

/// `zonebench hints` arguments: a Service on a live cluster (`-n NAMESPACE SERVICE`), or
/// kubectl output files (`--nodes … --slices … [--service …]`).
#[derive(Args, Debug, Clone)]
pub struct HintsArgs {
    /// A Service on a live cluster: its nodes, EndpointSlices and annotations are read
    /// through the Kubernetes API, and the hints the controller wrote are compared.
    #[arg(value_name = "SERVICE")]
    pub service_name: Option<String>,
    /// Namespace of SERVICE (default: the kubeconfig context's namespace, else "default").
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// kubeconfig file for SERVICE (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context for SERVICE (default: the current one).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Nodes: the output of `kubectl get nodes -o yaml` (or -o json).
    #[arg(long, value_name = "NODES.yaml")]
    pub nodes: Option<PathBuf>,
    /// EndpointSlices: the output of `kubectl get endpointslices -o yaml` (-l kubernetes.io/service-name=NAME).
    #[arg(long, value_name = "SLICES.yaml")]
    pub slices: Option<PathBuf>,
    /// The Service: `kubectl get service NAME -o yaml`. Without it, topology-mode: Auto is assumed.
    #[arg(long, value_name = "SERVICE.yaml")]
    pub service: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// The address family to predict (the controller allocates each separately). Default:
    /// the only one the slices have, else IPv4.
    #[arg(long, value_enum)]
    pub address_type: Option<AddressTypeArg>,
    /// The PreferSameTrafficDistribution feature gate (alpha 1.33, on by default from 1.34).
    /// Default: on; on a live cluster, its version's default.
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub prefer_same_traffic_distribution: Option<bool>,
}

/// Which of the two forms a `zonebench hints` command line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// kubectl output files.
    Files { nodes: PathBuf, slices: PathBuf, service: Option<PathBuf> },
    /// A Service on a cluster; `namespace` None: the context's namespace.
    Live { service: String, namespace: Option<String> },
}

impl HintsArgs {
    /// The form asked for, or a usage error when both, neither or half of one are given.
    pub fn form(&self) -> Result<Form, String> {
        let live = self.service_name.is_some()
            || self.namespace.is_some()
            || self.kubeconfig.is_some()
            || self.context.is_some();
        let files = self.nodes.is_some() || self.slices.is_some() || self.service.is_some();
        match (live, files) {
            (true, true) => Err("SERVICE, -n, --kubeconfig and --context read a live cluster; --nodes, --slices and --service read kubectl output files: use one form, not both".into()),
            (false, false) => Err("name a Service on a cluster (`zonebench hints -n NAMESPACE SERVICE`) or give kubectl output (`zonebench hints --nodes NODES.yaml --slices SLICES.yaml [--service SERVICE.yaml]`)".into()),
            (true, false) => match &self.service_name {
                Some(s) if !s.is_empty() => Ok(Form::Live { service: s.clone(), namespace: self.namespace.clone() }),
                _ => Err("name the Service to read from the cluster: zonebench hints -n NAMESPACE SERVICE".into()),
            },
            (false, true) => match (&self.nodes, &self.slices) {
                (Some(nodes), Some(slices)) => {
                    Ok(Form::Files { nodes: nodes.clone(), slices: slices.clone(), service: self.service.clone() })
                }
                (None, _) => Err("--nodes NODES.yaml is missing (the output of `kubectl get nodes -o yaml`)".into()),
                (_, None) => Err(
                    "--slices SLICES.yaml is missing (the output of `kubectl get endpointslices -o yaml`)".into(),
                ),
            },
        }
    }

    /// Whether this is a well-formed live form (which needs the async runtime).
    pub fn is_live(&self) -> bool {
        matches!(self.form(), Ok(Form::Live { .. }))
    }

    pub fn address_type(&self) -> Option<AddressType> {
        self.address_type.map(|a| match a {
            AddressTypeArg::IPv4 => AddressType::IPv4,
            AddressTypeArg::IPv6 => AddressType::IPv6,
        })
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressTypeArg {
    #[value(name = "IPv4", alias = "ipv4")]
    IPv4,
    #[value(name = "IPv6", alias = "ipv6")]
    IPv6,
}

/// The file form: kubectl output in, the report on stdout.
pub fn files(args: &HintsArgs) -> anyhow::Result<Exit> {
    let (nodes, slices, service) = match args.form().map_err(Usage)? {
        Form::Files { nodes, slices, service } => (nodes, slices, service),
        Form::Live { .. } => unreachable!("main runs the live form on the runtime"),
    };
    let report = (|| -> Result<String, DoctorError> {
        let inputs = Inputs {
            nodes: input::load_nodes(&nodes)?,
            slices: input::load_slices(&slices)?,
            service: service.as_deref().map(input::load_service).transpose()?,
        };
        let settings = Settings {
            address_type: args.address_type(),
            prefer_same_traffic_distribution: args.prefer_same_traffic_distribution.unwrap_or(true),
            live: false,
        };
        doctor::render(&doctor::diagnose(&inputs, &settings)?, args.output)
    })();
    match report {
        Ok(out) => {
            print!("{out}");
            Ok(Exit::Success)
        }
        Err(DoctorError::Usage(m)) => Err(Usage(m).into()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The live form: the Service read from its cluster, the controller's hints beside the prediction.
pub async fn live(args: &HintsArgs) -> anyhow::Result<Exit> {
    let (service, namespace) = match args.form().map_err(Usage)? {
        Form::Live { service, namespace } => (service, namespace),
        Form::Files { .. } => unreachable!("main runs the file form without a runtime"),
    };
    let query = LiveQuery {
        source: ClusterSource { kubeconfig: args.kubeconfig.clone(), context: args.context.clone() },
        service,
        namespace,
        address_type: args.address_type(),
        prefer_same_traffic_distribution: args.prefer_same_traffic_distribution,
        output: args.output,
    };
    match live::hints(&query).await {
        Ok(out) => {
            print!("{out}");
            Ok(Exit::Success)
        }
        // A doctor usage error needs a flag (e.g. --address-type): still a usage error.
        Err(e) if e.is_usage() => Err(Usage(e.to_string()).into()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
