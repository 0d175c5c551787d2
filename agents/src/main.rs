//! `zonebench-agent`: the data plane on its own (see `zonebench_agent::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    zonebench_agent::cli::main_with_args(std::env::args_os())
}
