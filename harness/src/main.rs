//! `zonebench`: the coordinator. It reads a scenario, places agents across zones on a
//! platform, runs the test matrix and writes results. Only `--version` exists so far; the
//! subcommands arrive with the coordinator issue and say so until then.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "zonebench", version, about = "Kubernetes network benchmarking harness")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "zonebench {}: the coordinator's subcommands (run, hints, compare, report, lab) are not built yet; \
         use `zonebench-agent` for standalone tests",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
