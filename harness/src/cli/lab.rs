//! `zonebench lab up | status | down`: a lab kept up for exploring, the labs on this host,
//! and their removal (leftovers of killed runs too); and the lab's hidden helper commands.

use anyhow::Context as _;
use clap::Subcommand;
use zonebench::platform::lab::{self, LabOptions};
use zonebench::scenario::{builtin, Scenario};

use super::{Exit, Usage};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab from a scenario's [lab] table and leave it running; prints its id.
    Up {
        /// A scenario file, or the name of a built-in scenario.
        #[arg(default_value = builtin::DEFAULT)]
        scenario: String,
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Make it a real Kubernetes cluster (`lab.kubernetes = true`): etcd, kube-apiserver,
        /// kube-controller-manager and a kube-proxy per node (`scripts/kube-binaries.sh`
        /// builds them). Prints the kubeconfig's path too.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Print the kubeconfig of a Kubernetes lab (`lab up --kubernetes`).
    Kubeconfig { id: String },
    /// List labs on this host: namespaces present or missing, processes alive.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab by id, or with --all every lab and leftover (by name prefix).
    Down {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Lab internals: hold every packet of a TUN device for a fixed delay.
    #[command(hide = true)]
    DelayForwarder(zonebench::platform::lab::DelayForwarderArgs),
    /// Lab internals: forward a host loopback port into a lab namespace (the kube lab's apiserver).
    #[command(hide = true)]
    ApiForwarder(zonebench::platform::lab::kubernetes::api_forwarder::ApiForwarderArgs),
    /// Lab internals: the kubelet's stand-in on one node of a Kubernetes lab.
    #[command(hide = true)]
    NodeAgent(zonebench::platform::lab::kubernetes::node_agent::NodeAgentArgs),
    /// Lab internals: time until a connect to a Service first succeeds.
    #[command(hide = true)]
    ConnectProbe(zonebench::platform::lab::ConnectProbeArgs),
}

pub async fn lab(cmd: LabCommand) -> anyhow::Result<Exit> {
    match cmd {
        LabCommand::Up { scenario, mut set, kubernetes } => {
            if kubernetes {
                set.push("lab.kubernetes=true".into());
            }
            let scenario = Scenario::resolve(&scenario, &set).map_err(Usage::of)?;
            super::run::lab_available().map_err(|why| anyhow::anyhow!("the lab cannot run here: {why}"))?;
            let options = LabOptions { agent: Some(super::run::agent_program(None)?), ..Default::default() };
            let kubernetes = scenario.lab.kubernetes;
            let id = tokio::task::spawn_blocking(move || lab::up(scenario.lab, options)).await??;
            println!("{id}");
            if kubernetes {
                println!("{}", lab::kubeconfig(id.as_str())?.display());
                eprintln!(
                    "Kubernetes lab {id} is up: KUBECONFIG=$(zonebench lab kubeconfig {id}) kubectl get nodes; \
                     zonebench run --backend kube --kubeconfig $(zonebench lab kubeconfig {id}) runs a scenario on it"
                );
            }
            eprintln!("lab {id} is up; `zonebench lab status` shows it, `zonebench lab down {id}` removes it");
        }
        LabCommand::Kubeconfig { id } => println!("{}", lab::kubeconfig(&id)?.display()),
        LabCommand::Status { json } => {
            let labs = lab::status();
            if json {
                println!("{}", serde_json::to_string_pretty(&labs)?);
            } else if labs.is_empty() {
                println!("no labs");
            } else {
                for l in &labs {
                    let alive = l.processes.iter().filter(|p| p.alive).count();
                    println!(
                        "{}  zones {}  nodes {}  namespaces {} present, {} missing  processes {}/{} alive{}{}",
                        l.id,
                        l.zones.join(","),
                        l.nodes.len(),
                        l.namespaces_present.len(),
                        l.namespaces_missing.len(),
                        alive,
                        l.processes.len(),
                        if l.detached { "  (left up)" } else { "" },
                        if l.has_state_file { "" } else { "  (leftover: no state file)" },
                    );
                }
            }
        }
        LabCommand::Down { id, all } => match (id, all) {
            (_, true) => {
                let removed = tokio::task::spawn_blocking(lab::down_all).await??;
                if removed.is_empty() {
                    eprintln!("no labs to remove");
                }
                for id in removed {
                    println!("removed {id}");
                }
            }
            (Some(id), false) => {
                let shown = id.clone();
                tokio::task::spawn_blocking(move || lab::down(&id)).await??;
                println!("removed {shown}");
            }
            (None, false) => {
                return Err(Usage("name a lab id (see `zonebench lab status`) or pass --all".into()).into());
            }
        },
        LabCommand::DelayForwarder(_)
        | LabCommand::ApiForwarder(_)
        | LabCommand::NodeAgent(_)
        | LabCommand::ConnectProbe(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(Exit::Success)
}

/// `lab delay-forwarder`: hold every packet of a TUN device for a fixed delay.
pub fn delay_forwarder(a: &lab::DelayForwarderArgs) -> anyhow::Result<Exit> {
    lab::delay::run(a).context("delay forwarder")?;
    Ok(Exit::Success)
}

/// `lab api-forwarder`: forward a host loopback port to an address inside a lab namespace.
pub fn api_forwarder(a: &lab::kubernetes::api_forwarder::ApiForwarderArgs) -> anyhow::Result<Exit> {
    lab::kubernetes::api_forwarder::run(a).context("api forwarder")?;
    Ok(Exit::Success)
}

/// `lab node-agent`: run the pods bound to one node of a Kubernetes lab.
pub fn node_agent(a: &lab::kubernetes::node_agent::NodeAgentArgs) -> anyhow::Result<Exit> {
    lab::kubernetes::node_agent::run(a).with_context(|| format!("node agent of {}", a.node))?;
    Ok(Exit::Success)
}

/// `lab connect-probe`: time until a connect to a Service first succeeds.
pub fn connect_probe(a: &lab::ConnectProbeArgs) -> anyhow::Result<Exit> {
    lab::probe::run(a).context("connect probe")?;
    Ok(Exit::Success)
}
