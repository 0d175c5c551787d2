//! `zonebench`: the coordinator's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use zonebench::platform::local::LocalPlatform;
use zonebench::platform::AgentProgram;
use zonebench::results::RunStatus;
use zonebench::run::{self, RunOptions};
use zonebench::scenario::{PlatformChoice, Scenario};
use zonebench::summary;

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
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum PlatformArg {
    Auto,
    Lab,
    Local,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenario file.
    #[arg(default_value = "scenarios/quick.toml")]
    scenario: PathBuf,
    /// Override a scenario field: `--set lab.inter_zone_delay=500us` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Where to run (overrides the scenario's `platform`).
    #[arg(long, value_enum)]
    platform: Option<PlatformArg>,
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
        None => scenario.platform,
    };
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let stamp = zonebench::results::now_rfc3339().replace([':', '-'], "");
        PathBuf::from("results/runs").join(format!("{stamp}-{}", scenario.name))
    });
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let opts = RunOptions { out_dir, progress: true };

    let program = agent_program(args.agent_bin.as_deref())?;
    let outcome = match choice {
        PlatformChoice::Lab => anyhow::bail!("the lab platform is not built yet; use --platform local"),
        PlatformChoice::Auto | PlatformChoice::Local => {
            if choice == PlatformChoice::Auto {
                eprintln!("platform: local (agents on loopback; zones are labels only) — the lab is not built yet");
            } else {
                eprintln!("platform: local (agents on loopback; zones are labels only)");
            }
            let mut p = LocalPlatform::new(scenario.lab.zones.clone(), scenario.lab.nodes_per_zone, program);
            run::run(&mut p, &scenario, &opts, &cancel).await?
        }
    };
    print!("{}", summary::render(&outcome.results));
    eprintln!("results: {}", outcome.dir.join("results.json").display());
    Ok(match outcome.status {
        RunStatus::Complete if outcome.results.failures.is_empty() => ExitCode::SUCCESS,
        RunStatus::Complete | RunStatus::Failed => ExitCode::FAILURE,
        RunStatus::Interrupted => ExitCode::from(130),
        RunStatus::Running => ExitCode::FAILURE,
    })
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
    let sibling = exe.with_file_name("zonebench-agent");
    if sibling.is_file() {
        return Ok(AgentProgram { path: sibling, args: vec![] });
    }
    anyhow::bail!(
        "zonebench-agent not found beside {}; build it (cargo build --release) or pass --agent-bin",
        exe.display()
    )
}
