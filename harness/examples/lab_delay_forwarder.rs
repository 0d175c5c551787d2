//! The lab's delay forwarder as a stand-alone program, for the lab's integration tests (a
//! test binary cannot run it as a child, and the coordinator's `lab delay-forwarder`
//! subcommand lives in its CLI). Takes the same arguments: `--tun NAME --delay 250us
//! [--watch-stdin]`.
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = zonebench::platform::lab::DelayForwarderArgs::parse();
    zonebench::platform::lab::delay::run(&args)
}
