//! `zonebench run`: a scenario (a file, or a built-in by name) on the lab, loopback or a
//! cluster, with a summary table at the end and the exit status of how it went.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use zonebench::model::{AgentProgram, RunStatus};
use zonebench::platform::either::Either;
use zonebench::platform::kube::inspect::NodeAccess;
use zonebench::platform::kube::{ClusterSource, ControlMode, KubeOptions, KubePlatform};
use zonebench::platform::lab::kubernetes::node_access::KubeLabNodes;
use zonebench::platform::lab::{LabOptions, LabPlatform};
use zonebench::platform::local::LocalPlatform;
use zonebench::present;
use zonebench::run::{self, RunOptions, RunOutcome};
use zonebench::scenario::{builtin, LabConfig, PlatformChoice, Scenario};

use super::cluster::{ClusterArgs, DEFAULT_INSPECTOR_IMAGE};
use super::{Exit, Usage};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum PlatformArg {
    Auto,
    Lab,
    Local,
    Kube,
}

/// `--control`: how a kube run reaches its agents.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ControlArg {
    Auto,
    Direct,
    PortForward,
}

impl From<ControlArg> for ControlMode {
    fn from(c: ControlArg) -> ControlMode {
        match c {
            ControlArg::Auto => ControlMode::Auto,
            ControlArg::Direct => ControlMode::Direct,
            ControlArg::PortForward => ControlMode::PortForward,
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A scenario file, or the name of a built-in scenario (`zonebench scenarios` lists them).
    #[arg(default_value = builtin::DEFAULT)]
    scenario: String,
    /// Override a scenario field: `--set lab.inter_zone_delay=500us` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Where to run (overrides the scenario's `platform`); `--platform` is the same flag.
    #[arg(long = "backend", visible_alias = "platform", value_enum)]
    platform: Option<PlatformArg>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Agent image on a cluster (over the scenario's kube.image).
    #[arg(long)]
    image: Option<String>,
    /// On a cluster: deploy a privileged hostNetwork DaemonSet (only then) that reports each
    /// node's iptables/nftables rule counts and kube-proxy's sync durations (a sweep records
    /// them per point). The run's namespace then allows privileged pods.
    #[arg(long)]
    inspect_nodes: bool,
    /// On a cluster, how to reach the agents' control APIs: `direct` to pod IPs (inside the
    /// cluster, or the Kubernetes lab), `port-forward` through the API server (a laptop), or
    /// `auto`: direct where the first agent's pod IP answers, else port-forward.
    #[arg(long, value_enum, default_value = "auto")]
    control: ControlArg,
    /// Image of the node inspector (bash, iptables-save, nft).
    #[arg(long, default_value = DEFAULT_INSPECTOR_IMAGE, requires = "inspect_nodes")]
    inspect_image: String,
    /// Run directory (default results/runs/<time>-<scenario>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The agent binary to launch (default: zonebench-agent beside this binary, then PATH).
    #[arg(long, env = "ZONEBENCH_AGENT")]
    agent_bin: Option<PathBuf>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let scenario = Scenario::resolve(&args.scenario, &args.set).map_err(Usage::of)?;
    let choice = match args.platform {
        Some(PlatformArg::Auto) => PlatformChoice::Auto,
        Some(PlatformArg::Lab) => PlatformChoice::Lab,
        Some(PlatformArg::Local) => PlatformChoice::Local,
        Some(PlatformArg::Kube) => PlatformChoice::Kube,
        // Naming a cluster means running on it.
        None if args.cluster.given() && scenario.platform == PlatformChoice::Auto => PlatformChoice::Kube,
        None => scenario.platform,
    };
    let targets = args.cluster.targets().map_err(Usage)?;
    if choice != PlatformChoice::Kube
        && (args.cluster.given() || args.image.is_some() || args.inspect_nodes || args.control != ControlArg::Auto)
    {
        return Err(Usage(
            "--kubeconfig, --context, --image, --inspect-nodes and --control need --backend kube".into(),
        )
        .into());
    }
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let stamp = zonebench::model::now_rfc3339().replace([':', '-'], "");
        PathBuf::from("results/runs").join(format!("{stamp}-{}", scenario.name))
    });
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let opts = RunOptions { out_dir, progress: true };

    if choice == PlatformChoice::Kube {
        let inspector = args.inspect_nodes.then(|| args.inspect_image.clone());
        if scenario.sweep.as_ref().is_some_and(|s| s.emulated) {
            eprintln!(
                "warning: sweep.emulated applies to the Kubernetes lab; on a cluster its own dataplane is measured"
            );
        }
        let images = Images { agent: args.image.clone(), inspector, control: args.control.into(), nodes: None };
        let outcome = run_kube(&scenario, &args.cluster, targets, images, &opts, &cancel).await?;
        return Ok(report_outcome(&outcome));
    }
    let program = agent_program(args.agent_bin.as_deref())?;
    if scenario.lab.kubernetes {
        // Local has no Kubernetes; auto and lab mean this lab, made a cluster for this run.
        if choice == PlatformChoice::Local {
            return Err(Usage("lab.kubernetes = true needs the lab (root), not --platform local".into()).into());
        }
        lab_available().map_err(|why| anyhow::anyhow!("the Kubernetes lab cannot run here: {why}"))?;
        let outcome = run_on_kube_lab(&scenario, program, args.control.into(), &opts, &cancel).await?;
        return Ok(report_outcome(&outcome));
    }
    let lab_check = lab_available();
    let use_lab = match (choice, &lab_check) {
        (PlatformChoice::Lab, Err(why)) => anyhow::bail!("the lab cannot run here: {why}"),
        (PlatformChoice::Lab, Ok(())) => true,
        (PlatformChoice::Auto, Ok(())) => true,
        (PlatformChoice::Auto, Err(why)) => {
            eprintln!("platform: local (agents on loopback; zones are labels only) — the lab cannot run here: {why}");
            false
        }
        (PlatformChoice::Local, _) => {
            eprintln!("platform: local (agents on loopback; zones are labels only)");
            false
        }
        (PlatformChoice::Kube, _) => unreachable!("the kube platform returned above"),
    };
    let outcome = if use_lab {
        let l = &scenario.lab;
        eprintln!(
            "platform: lab ({} zones × {} nodes in network namespaces, {} routing{}{})",
            l.zones.len(),
            l.nodes_per_zone,
            l.routing.as_str(),
            l.inter_zone_delay.as_ref().map(|d| format!(", +{d} one-way between zones")).unwrap_or_default(),
            l.inter_zone_rate.as_ref().map(|r| format!(", {r} between zones")).unwrap_or_default(),
        );
        let options = LabOptions { agent: Some(program), ..Default::default() };
        let mut p = LabPlatform::new(scenario.lab.clone(), options)?;
        run::run(&mut p, &scenario, &opts, &cancel).await?
    } else {
        let mut p = LocalPlatform::new(scenario.lab.zones.clone(), scenario.lab.nodes_per_zone, program)?;
        run::run(&mut p, &scenario, &opts, &cancel).await?
    };
    Ok(report_outcome(&outcome))
}

/// A scenario with `lab.kubernetes = true`: its lab is built as a Kubernetes cluster, the
/// kube platform runs the scenario on it as on any cluster, and the lab goes at the end
/// (what `lab up --kubernetes` and `run --backend kube` do in two steps, in one). The kube
/// platform reads the lab's nodes directly (their rules, kube-proxy's metrics) and may
/// restart kube-proxy in the other mode; with `sweep.emulated` a plain lab of the same shape
/// sweeps the emulated dataplanes first, into the same results.
async fn run_on_kube_lab(
    scenario: &Scenario,
    program: AgentProgram,
    control: ControlMode,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let options = LabOptions { agent: Some(program.clone()), ..Default::default() };
    let mut lab = LabPlatform::new(scenario.lab.clone(), options)?;
    lab.build()?;
    let kubeconfig = lab.kube().context("the lab has no Kubernetes components")?.kubeconfig.clone();
    let l = &scenario.lab;
    eprintln!(
        "platform: kube on Kubernetes lab {} ({} zones × {} nodes, kube-proxy {}; kubeconfig {})",
        lab.id(),
        l.zones.len(),
        l.nodes_per_zone,
        l.service_dataplane,
        kubeconfig.display()
    );
    let lab = Arc::new(Mutex::new(lab));
    let outcome = async {
        let nodes: Arc<dyn NodeAccess> = Arc::new(KubeLabNodes::new(lab.clone())?);
        let cluster = ClusterArgs { kubeconfig: Some(kubeconfig), contexts: vec![] };
        let images = Images { agent: None, inspector: None, control, nodes: Some(nodes) };
        if !scenario.sweep.as_ref().is_some_and(|s| s.emulated) {
            return run_kube(scenario, &cluster, vec![], images, opts, cancel).await;
        }
        eprintln!(
            "sweep.emulated: the dataplanes emulated on a plain lab of the same shape first, then the real kube-proxy"
        );
        let plain = LabConfig { kubernetes: false, ..scenario.lab.clone() };
        let emulated = LabPlatform::new(plain, LabOptions { agent: Some(program), ..Default::default() })?;
        let real = KubePlatform::new(kube_options(scenario, &cluster, &images, None))?;
        let mut platforms =
            [("emulated".to_string(), Either::Left(emulated)), ("kube-proxy".to_string(), Either::Right(real))];
        run::run_each(&mut platforms, scenario, opts, cancel).await
    }
    .await;
    // The run's own teardown has deleted its namespace; the lab goes now, whatever happened.
    let down = lab.lock().map_err(|_| anyhow::anyhow!("the lab's lock is poisoned"))?.teardown_sync();
    let outcome = outcome?;
    down.context("removing the Kubernetes lab")?;
    Ok(outcome)
}

/// Prints a run's summary and says where its results are; the exit code of its status.
fn report_outcome(outcome: &run::RunOutcome) -> Exit {
    // A sweep's measurements carry their dataplane figures: print its table, not the zone matrix.
    if outcome.results.measurements.iter().any(|m| m.service_dataplane.is_some()) {
        print!("{}", present::sweep::render(&outcome.results));
    } else if outcome.results.measurements.iter().any(|m| m.locality.is_some()) {
        // Through a Service the "server zone" of the matrix is only the busiest answerer:
        // the topology table shows where every answer came from.
        let model = outcome.results.cost.as_ref().map_or_else(Default::default, |c| zonebench::model::CostModel {
            per_gb_cross_zone: c.per_gb_cross_zone,
            requests_per_sec: c.requests_per_sec,
        });
        print!("{}", present::locality::render(&outcome.results, &model));
    } else {
        // A capacity search's rates and the service chains have their own tables below;
        // pooled into the matrix they would read as one latency, or as a last hop's.
        let probes = outcome.results.search_probes();
        let mut rest = outcome.results.clone();
        rest.measurements = rest
            .measurements
            .into_iter()
            .enumerate()
            .filter(|(i, m)| !probes.contains(i) && m.chain.is_none())
            .map(|(_, m)| m)
            .collect();
        let own_tables = !probes.is_empty() || outcome.results.measurements.iter().any(|m| m.chain.is_some());
        if !rest.measurements.is_empty() || !own_tables {
            print!("{}", present::matrix::render(&rest));
            print!("{}", present::datatable::render(&outcome.results));
        }
    }
    print!("{}", present::groups::render(&outcome.results));
    print!("{}", present::capacity::render(&outcome.results));
    print!("{}", present::chains::render(&outcome.results));
    // A run that failed as a whole (before or between steps) says why, not only where.
    if let Some(error) = &outcome.results.error {
        eprintln!("error: {error}");
    }
    eprintln!("results: {}", outcome.dir.join("results.json").display());
    match outcome.status {
        RunStatus::Complete if outcome.results.failures.is_empty() => Exit::Success,
        RunStatus::Complete | RunStatus::Failed => Exit::Failure,
        RunStatus::Interrupted => Exit::Interrupted,
        RunStatus::Running => Exit::Failure,
    }
}

/// SIGINT/SIGTERM cancel the run; a second signal exits at once.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else { return };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("\nstopping: finishing teardown and saving results (signal again to abort)");
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        std::process::exit(130);
    });
}

pub fn agent_program(explicit: Option<&std::path::Path>) -> anyhow::Result<AgentProgram> {
    if let Some(p) = explicit {
        return Ok(AgentProgram { path: p.to_path_buf(), args: vec![] });
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(AgentProgram { path: exe, args: vec!["agent".into()] })
}

/// Whether the lab can run here; the reason when not.
pub fn lab_available() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("it needs Linux network namespaces".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("it needs root (network namespaces, veth, tc)".into());
    }
    let ip = std::process::Command::new("ip").arg("-V").output();
    if !ip.is_ok_and(|o| o.status.success()) {
        return Err("the `ip` command (iproute2) is missing".into());
    }
    Ok(())
}

/// The images a kube run uses: `--image` (over the scenario's), and the node inspector's
/// when `--inspect-nodes` is given.
#[derive(Debug, Clone, Default)]
pub struct Images {
    pub agent: Option<String>,
    pub inspector: Option<String>,
    /// `--control` (not an image, but as much a per-run choice of how agents run).
    pub control: ControlMode,
    /// The Kubernetes lab's nodes, read directly (no image: the coordinator reaches them).
    pub nodes: Option<Arc<dyn NodeAccess>>,
}

/// The kube platform's options for one cluster (`context`) of a run.
fn kube_options(scenario: &Scenario, cluster: &ClusterArgs, images: &Images, context: Option<String>) -> KubeOptions {
    KubeOptions {
        source: ClusterSource { kubeconfig: cluster.kubeconfig.clone(), context },
        image: images.agent.clone(),
        settings: scenario.kube.clone(),
        scenario: scenario.name.clone(),
        inspector_image: images.inspector.clone(),
        run_id: None,
        variants: Vec::new(),
        control: images.control,
        nodes: images.nodes.clone(),
    }
}

/// `zonebench run --backend kube`: one cluster, or each labelled `--context` in turn.
pub async fn run_kube(
    scenario: &Scenario,
    cluster: &ClusterArgs,
    targets: Vec<(Option<String>, String)>,
    images: Images,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<RunOutcome> {
    let options = |context: Option<String>| kube_options(scenario, cluster, &images, context);
    let kubeconfig =
        cluster.kubeconfig.as_ref().map_or("the default kubeconfig".to_string(), |p| p.display().to_string());
    let mut image_shown = options(None).image();
    if let Some(i) = &images.inspector {
        image_shown.push_str(&format!("; node inspector {i}, privileged"));
    }
    if targets.iter().all(|(l, _)| l.is_none()) {
        let context = targets.into_iter().next().map(|(_, c)| c);
        let mut p = KubePlatform::new(options(context.clone()))?;
        eprintln!(
            "platform: kube (context {}, {kubeconfig}; image {image_shown}; namespace {})",
            context.as_deref().unwrap_or("current"),
            p.run().namespace()
        );
        return run::run(&mut p, scenario, opts, cancel).await;
    }
    let mut platforms = Vec::new();
    for (label, context) in targets {
        let label = label.context("labelled contexts were checked")?;
        platforms.push((label, KubePlatform::new(options(Some(context)))?));
    }
    let shown: Vec<String> =
        platforms.iter().map(|(l, p)| format!("{l}={} ({})", cluster_context(p), p.run().namespace())).collect();
    eprintln!(
        "platform: kube on {} clusters in turn: {} ({kubeconfig}; image {image_shown})",
        shown.len(),
        shown.join(", ")
    );
    run::run_each(&mut platforms, scenario, opts, cancel).await
}

fn cluster_context(p: &KubePlatform) -> String {
    p.source().context.clone().unwrap_or_else(|| "current".into())
}
