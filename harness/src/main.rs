//! `zonebench`: the coordinator's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use zonebench::model::AgentProgram;
use zonebench::model::RunStatus;
use zonebench::platform::lab::{self, LabOptions, LabPlatform};
use zonebench::platform::local::LocalPlatform;
use zonebench::present;
use zonebench::run::{self, RunOptions};
use zonebench::scenario::{PlatformChoice, Scenario};

mod cli_kube;

#[derive(Parser, Debug)]
#[command(name = "zonebench", version, about = "Kubernetes network benchmarking harness: measures zone locality")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario and write results (default: scenarios/quick.toml on the lab when it can run here).
    Run(RunArgs),
    /// Predict the topology hints the EndpointSlice controller writes and where kube-proxy
    /// routes in each zone, from kubectl output or a live Service (`-n NAMESPACE SERVICE`,
    /// beside the hints actually written); explains why hints are refused.
    Hints(zonebench::topology::doctor::HintsArgs),
    /// Keep a lab up for exploring, show labs, remove them (and leftovers of killed runs).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Print every manifest a kube run would create (multi-document YAML), for review and GitOps.
    Render(cli_kube::RenderArgs),
    /// Delete what killed kube runs left on a cluster (namespaces labelled managed-by=zonebench).
    Gc(cli_kube::GcArgs),
    /// Write RUN_DIR/report.html (zone matrices, percentile plots, tables) and charts/*.svg.
    Report(zonebench::commands::ReportArgs),
    /// Compare a candidate run with a base run or baseline; exit 3 on a significant regression.
    Compare(zonebench::commands::CompareArgs),
    /// The nightly history file (results/history.csv).
    #[command(subcommand)]
    History(zonebench::commands::HistoryCommand),
    /// Draw the history's figures over time as SVG.
    Trend(zonebench::commands::TrendArgs),
    /// The embedded agent (`zonebench agent serve …`, `zonebench agent client …`), the same
    /// as the `zonebench-agent` binary; the coordinator launches itself this way in pods.
    #[command(disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build a lab from a scenario's [lab] table and leave it running; prints its id.
    Up {
        #[arg(default_value = "scenarios/quick.toml")]
        scenario: PathBuf,
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
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
    /// Lab internals: time until a connect to a Service first succeeds.
    #[command(hide = true)]
    ConnectProbe(zonebench::platform::lab::ConnectProbeArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum PlatformArg {
    Auto,
    Lab,
    Local,
    Kube,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenario file.
    #[arg(default_value = "scenarios/quick.toml")]
    scenario: PathBuf,
    /// Override a scenario field: `--set lab.inter_zone_delay=500us` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Where to run (overrides the scenario's `platform`); `--platform` is the same flag.
    #[arg(long = "backend", visible_alias = "platform", value_enum)]
    platform: Option<PlatformArg>,
    #[command(flatten)]
    cluster: cli_kube::ClusterArgs,
    /// Agent image on a cluster (over the scenario's kube.image).
    #[arg(long)]
    image: Option<String>,
    /// On a cluster: deploy a privileged hostNetwork DaemonSet (only then) that reports each
    /// node's iptables/nftables rule counts and kube-proxy's sync durations (a sweep records
    /// them per point). The run's namespace then allows privileged pods.
    #[arg(long)]
    inspect_nodes: bool,
    /// Image of the node inspector (bash, iptables-save, nft).
    #[arg(long, default_value = cli_kube::DEFAULT_INSPECTOR_IMAGE, requires = "inspect_nodes")]
    inspect_image: String,
    /// Run directory (default results/runs/<time>-<scenario>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The agent binary to launch (default: zonebench-agent beside this binary, then PATH).
    #[arg(long, env = "ZONEBENCH_AGENT")]
    agent_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "zonebench=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The embedded agent and the forwarder own their process: no coordinator runtime.
    match cli.command {
        Command::Agent { args } => {
            let argv = std::iter::once(std::ffi::OsString::from("zonebench agent")).chain(args);
            return zonebench_agent::cli::main_with_args(argv);
        }
        // The file form needs no runtime; the live form talks to a cluster.
        Command::Hints(a) if !a.is_live() => return zonebench::topology::doctor::run(&a),
        Command::Lab(LabCommand::DelayForwarder(a)) => {
            return match zonebench::platform::lab::delay::run(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: delay forwarder: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Lab(LabCommand::ConnectProbe(a)) => {
            return match zonebench::platform::lab::probe::run(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: connect probe: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        match cli.command {
            Command::Run(args) => cmd_run(args).await,
            Command::Lab(cmd) => cmd_lab(cmd).await,
            Command::Render(args) => cli_kube::cmd_render(args).await,
            Command::Gc(args) => cli_kube::cmd_gc(args).await,
            Command::Hints(args) => Ok(zonebench::topology::live::run(&args).await),
            Command::Agent { .. } => unreachable!("handled before the runtime starts"),
            Command::Report(a) => zonebench::commands::report(a),
            Command::Compare(a) => zonebench::commands::compare_cmd(a),
            Command::History(c) => zonebench::commands::history_cmd(c),
            Command::Trend(a) => zonebench::commands::trend_cmd(a),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn cmd_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = match Scenario::load(&args.scenario, &args.set) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let choice = match args.platform {
        Some(PlatformArg::Auto) => PlatformChoice::Auto,
        Some(PlatformArg::Lab) => PlatformChoice::Lab,
        Some(PlatformArg::Local) => PlatformChoice::Local,
        Some(PlatformArg::Kube) => PlatformChoice::Kube,
        // Naming a cluster means running on it.
        None if args.cluster.given() && scenario.platform == PlatformChoice::Auto => PlatformChoice::Kube,
        None => scenario.platform,
    };
    let targets = match args.cluster.targets() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if choice != PlatformChoice::Kube && (args.cluster.given() || args.image.is_some() || args.inspect_nodes) {
        eprintln!("error: --kubeconfig, --context, --image and --inspect-nodes need --backend kube");
        return Ok(ExitCode::from(2));
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
        let images = cli_kube::Images { agent: args.image.clone(), inspector };
        let outcome = cli_kube::run_kube(&scenario, &args.cluster, targets, images, &opts, &cancel).await?;
        return Ok(report_outcome(&outcome));
    }
    let program = agent_program(args.agent_bin.as_deref())?;
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

/// Prints a run's summary and says where its results are; the exit code of its status.
fn report_outcome(outcome: &run::RunOutcome) -> ExitCode {
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
        print!("{}", present::matrix::render(&outcome.results));
    }
    eprintln!("results: {}", outcome.dir.join("results.json").display());
    match outcome.status {
        RunStatus::Complete if outcome.results.failures.is_empty() => ExitCode::SUCCESS,
        RunStatus::Complete | RunStatus::Failed => ExitCode::FAILURE,
        RunStatus::Interrupted => ExitCode::from(130),
        RunStatus::Running => ExitCode::FAILURE,
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

fn agent_program(explicit: Option<&std::path::Path>) -> anyhow::Result<AgentProgram> {
    if let Some(p) = explicit {
        return Ok(AgentProgram { path: p.to_path_buf(), args: vec![] });
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(AgentProgram { path: exe, args: vec!["agent".into()] })
}

/// Whether the lab can run here; the reason when not.
fn lab_available() -> Result<(), String> {
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

async fn cmd_lab(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up { scenario, set } => {
            let scenario = match Scenario::load(&scenario, &set) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            lab_available().map_err(|why| anyhow::anyhow!("the lab cannot run here: {why}"))?;
            let options = LabOptions { agent: Some(agent_program(None)?), ..Default::default() };
            let id = tokio::task::spawn_blocking(move || lab::up(scenario.lab, options)).await??;
            println!("{id}");
            eprintln!("lab {id} is up; `zonebench lab status` shows it, `zonebench lab down {id}` removes it");
        }
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
                eprintln!("error: name a lab id (see `zonebench lab status`) or pass --all");
                return Ok(ExitCode::from(2));
            }
        },
        LabCommand::DelayForwarder(_) | LabCommand::ConnectProbe(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(ExitCode::SUCCESS)
}
