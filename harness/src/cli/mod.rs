//! The command line, one file per command (mini-redis style): each file holds its
//! command's arguments and what it does, on top of the library. The library exports no clap
//! `Args`/`Subcommand` types and no exit codes: how a command ends is an [`Exit`], and
//! `main` maps it (and errors) to the process status in one place.

use clap::{Parser, Subcommand};

pub mod cluster;
pub mod compare;
pub mod gc;
pub mod hints;
pub mod history;
pub mod lab;
pub mod render;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod trend;

#[derive(Parser, Debug)]
#[command(name = "zonebench", version, about = "Kubernetes network benchmarking harness: measures zone locality")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scenario and write results (default: the built-in quick scenario, on the lab
    /// when it can run here).
    Run(run::RunArgs),
    /// List the built-in scenarios (`zonebench run NAME` runs one).
    Scenarios,
    /// Predict the topology hints the EndpointSlice controller writes and where kube-proxy
    /// routes in each zone, from kubectl output or a live Service (`-n NAMESPACE SERVICE`,
    /// beside the hints actually written); explains why hints are refused.
    Hints(hints::HintsArgs),
    /// Keep a lab up for exploring, show labs, remove them (and leftovers of killed runs).
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Print every manifest a kube run would create (multi-document YAML), for review and GitOps.
    Render(render::RenderArgs),
    /// Delete what killed kube runs left on a cluster (namespaces labelled managed-by=zonebench).
    Gc(gc::GcArgs),
    /// Write RUN_DIR/report.html (zone matrices, percentile plots, tables) and charts/*.svg.
    Report(report::ReportArgs),
    /// Compare a candidate run with a base run or baseline; exit 3 on a significant regression.
    Compare(compare::CompareArgs),
    /// The nightly history file (results/history.csv).
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Draw the history's figures over time as SVG.
    Trend(trend::TrendArgs),
    /// The embedded agent (`zonebench agent serve …`, `zonebench agent client …`), the same
    /// as the `zonebench-agent` binary; the coordinator launches itself this way in pods.
    #[command(disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// How a command ended, as the process exit status: 0 success, 1 failure (an error, or a run
/// with failed steps), 2 usage, 3 a significant regression, 130 interrupted by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Usage,
    Regression,
    Interrupted,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(match e {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Regression => 3,
            Exit::Interrupted => 130,
        })
    }
}

/// A usage error (bad flags, a scenario that does not validate): `error: …`, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

impl Usage {
    pub fn of(e: impl std::fmt::Display) -> Usage {
        Usage(e.to_string())
    }
}

/// The exit status of a command's result, printing the error if there is one: a usage
/// error as it is, any other with its chain of causes.
pub fn exit(result: anyhow::Result<Exit>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {e}");
            Exit::Usage
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failure
        }
    }
}
