//! `zonebench`: the coordinator's command line. The commands live in `cli/`, one file each;
//! this file parses, picks the runtime each needs, and turns the outcome into the exit status.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::{exit, Cli, Command, Exit};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "zonebench=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The embedded agent and the lab's helpers own their process: no coordinator runtime.
    let command = match cli.command {
        Command::Agent { args } => {
            let argv = std::iter::once(std::ffi::OsString::from("zonebench agent")).chain(args);
            return zonebench_agent::cli::main_with_args(argv);
        }
        // The file form needs no runtime; the live form talks to a cluster.
        Command::Hints(a) if !a.is_live() => return exit(cli::hints::files(&a)).into(),
        Command::Lab(cli::lab::LabCommand::DelayForwarder(a)) => return exit(cli::lab::delay_forwarder(&a)).into(),
        Command::Lab(cli::lab::LabCommand::ApiForwarder(a)) => return exit(cli::lab::api_forwarder(&a)).into(),
        Command::Lab(cli::lab::LabCommand::NodeAgent(a)) => return exit(cli::lab::node_agent(&a)).into(),
        Command::Lab(cli::lab::LabCommand::ConnectProbe(a)) => return exit(cli::lab::connect_probe(&a)).into(),
        Command::Scenarios => return exit(cli::scenarios::list()).into(),
        Command::Report(a) => return exit(cli::report::report(a)).into(),
        Command::Compare(a) => return exit(cli::compare::compare(a)).into(),
        Command::History(c) => return exit(cli::history::history(c)).into(),
        Command::Trend(a) => return exit(cli::trend::trend(a)).into(),
        other => other,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let result = rt.block_on(async {
        match command {
            Command::Run(args) => cli::run::run(args).await,
            Command::Lab(cmd) => cli::lab::lab(cmd).await,
            Command::Render(args) => cli::render::render(args).await,
            Command::Gc(args) => cli::gc::gc(args).await,
            Command::Hints(args) => cli::hints::live(&args).await,
            _ => unreachable!("handled before the runtime starts"),
        }
    });
    exit(result).into()
}
