//! The inter-zone delay forwarder. The kernel here has no netem, so the lab's router sends
//! every inter-zone packet into a TUN device; this forwarder reads each one, holds it for
//! the configured one-way delay and writes it back, whence the router forwards it on.
//!
//! Precision: tokio timers tick in milliseconds, far too coarse for a 250 µs delay, so the
//! forwarder runs on two plain threads. The reader stamps each packet's due time and queues
//! it; the writer sleeps until shortly before the head's due time (with the thread's timer
//! slack cut to 1 ns, so the kernel does not round the wake-up 50 µs late) and spins the
//! rest, the margin adapting to how late this host wakes sleepers ([`Waiter`]). Every packet gets the same delay, so due times are monotonic and a FIFO keeps
//! packet order. Buffers cycle between the two threads: nothing is allocated per packet.
//!
//! It runs as a child process in the router namespace (`zonebench lab delay-forwarder`),
//! built by [`forwarder_command`], and stops on SIGTERM (the default action) or, with
//! `--watch-stdin`, when its stdin closes, i.e. when the coordinator that spawned it exits.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// With offloads a read is a 10-byte virtio-net header and an IP packet of up to 64 KiB.
const OFFLOAD_BUF: usize = 65536 + 64;
/// Without, one packet of at most the TUN's MTU (the underlay's 1500), with room to spare.
const PLAIN_BUF: usize = 4096;
/// Packets in flight inside the forwarder; beyond this the reader blocks and the TUN's own
/// queue (txqueuelen 1000) fills and drops, like a router's buffer. Buffers are allocated
/// as needed up to this, so memory follows the rate × delay actually in flight.
const QUEUE: usize = 2048;

/// The forwarder's command line (`zonebench lab delay-forwarder …`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "delay-forwarder", about = "Hold every packet of a TUN device for a fixed delay (lab internals)")]
pub struct DelayForwarderArgs {
    /// The TUN device to attach to (it must exist, e.g. from `ip tuntap add`).
    #[arg(long)]
    pub tun: String,
    /// One-way delay added to every packet, e.g. 250us.
    #[arg(long, value_parser = zonebench_agent::units::parse_duration)]
    pub delay: Duration,
    /// Exit when stdin reaches end of file (the spawning coordinator has gone).
    #[arg(long)]
    pub watch_stdin: bool,
}

/// When the forwarder stops, besides SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOn {
    /// Only a signal stops it (a lab left up by `zonebench lab up`).
    Signal,
    /// Also the end of stdin (a lab owned by a running coordinator).
    SignalOrStdinEof,
}

/// Runs the forwarder described by `args` (the CLI's entry point).
pub fn run(args: &DelayForwarderArgs) -> anyhow::Result<()> {
    let stop = if args.watch_stdin { StopOn::SignalOrStdinEof } else { StopOn::Signal };
    run_delay_forwarder(&args.tun, args.delay, stop)
}

struct Packet {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

/// Attaches to `tun_name` (in the caller's network namespace) and forwards its packets back
/// into it after `delay`; blocks until stopped.
pub fn run_delay_forwarder(tun_name: &str, delay: Duration, stop: StopOn) -> anyhow::Result<()> {
    // Best effort: without it sleeps overshoot by up to 50 µs and the spin absorbs less.
    let _ = nix::sys::prctl::set_timerslack(1);
    // With offloads on, GSO super-packets (up to 64 KiB) cross the TUN whole, with a
    // virtio-net header the forwarder writes back untouched: one read and one write per
    // 64 KiB instead of per 1500 bytes. Kernels without TUN offloads get plain packets.
    let attach = |offload: bool| tun_rs::DeviceBuilder::new().name(tun_name).offload(offload).build_sync();
    let (dev, buf_size) = match attach(true) {
        Ok(dev) => (dev, OFFLOAD_BUF),
        Err(_) => (
            attach(false)
                .with_context(|| format!("attaching to TUN device {tun_name} (does it exist in this namespace?)"))?,
            PLAIN_BUF,
        ),
    };
    let dev = Arc::new(dev);
    if stop == StopOn::SignalOrStdinEof {
        std::thread::Builder::new().name("stdin-watch".into()).spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        })?;
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<Packet>(QUEUE);
    let (free_tx, free_rx) = mpsc::channel::<Box<[u8]>>();
    for _ in 0..64 {
        let _ = free_tx.send(vec![0u8; buf_size].into_boxed_slice());
    }
    let writer_dev = Arc::clone(&dev);
    let writer = std::thread::Builder::new().name("delay-writer".into()).spawn(move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let mut waiter = Waiter::default();
        while let Ok(p) = full_rx.recv() {
            waiter.wait_until(p.due);
            // A full TUN receive path drops the packet, as a congested link would.
            let _ = writer_dev.send(&p.buf[..p.len]);
            if free_tx.send(p.buf).is_err() {
                break;
            }
        }
    })?;
    let outcome = loop {
        let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; buf_size].into_boxed_slice());
        let len = match dev.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e).with_context(|| format!("reading from TUN device {tun_name}")),
        };
        let due = Instant::now() + delay;
        if full_tx.send(Packet { due, len, buf }).is_err() {
            break Err(anyhow::anyhow!("the delay writer thread stopped"));
        }
    };
    drop(full_tx);
    let _ = writer.join();
    outcome
}

/// Waits for due times: sleeps until shortly before, then spins. How much shorter adapts to
/// how late this host actually wakes sleepers (tens of microseconds on a busy VM, even with
/// 1 ns timer slack): the margin jumps up to a larger overshoot at once and decays slowly,
/// so waits stay precise without spinning more than the host needs.
#[derive(Debug)]
pub struct Waiter {
    margin: Duration,
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter { margin: Duration::from_micros(50) }
    }
}

impl Waiter {
    const MIN: Duration = Duration::from_micros(20);
    const MAX: Duration = Duration::from_micros(300);
    /// Kept above the overshoot seen, for the wake-ups that take a little longer.
    const EXTRA: Duration = Duration::from_micros(10);

    pub fn wait_until(&mut self, due: Instant) {
        let now = Instant::now();
        if due > now + self.margin {
            let want = due - now - self.margin;
            std::thread::sleep(want);
            let need = (now.elapsed().saturating_sub(want) + Self::EXTRA).clamp(Self::MIN, Self::MAX);
            self.margin = if need > self.margin { need } else { self.margin - (self.margin - need) / 16 };
        } else {
            // No sleep, no measurement: drift down so a margin raised by one stall does not
            // leave every short wait spinning for good.
            self.margin = (self.margin - (self.margin - Self::MIN) / 64).max(Self::MIN);
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }
}

/// How to start the forwarder: a program and the arguments before `--tun` (by default the
/// coordinator itself, `zonebench lab delay-forwarder`).
#[derive(Debug, Clone)]
pub struct ForwarderProgram {
    pub path: PathBuf,
    pub args: Vec<String>,
}

impl ForwarderProgram {
    /// The running coordinator's own `lab delay-forwarder` subcommand.
    pub fn current_exe() -> anyhow::Result<ForwarderProgram> {
        let path = std::env::current_exe().context("finding the coordinator's own executable")?;
        Ok(ForwarderProgram { path, args: vec!["lab".into(), "delay-forwarder".into()] })
    }

    /// The same executable with other leading arguments (`lab connect-probe`).
    pub fn with_args(&self, args: &[&str]) -> ForwarderProgram {
        ForwarderProgram { path: self.path.clone(), args: args.iter().map(|a| a.to_string()).collect() }
    }
}

/// The command that runs the forwarder inside `netns`. `attached` ties it to the caller: it
/// gets SIGKILL when the spawning thread dies (`setpriv --pdeathsig`) and exits when its
/// stdin (to be piped by the caller) closes; otherwise it runs on in its own process group
/// until signalled, as a lab left up needs.
pub fn forwarder_command(
    program: &ForwarderProgram,
    netns: &str,
    tun: &str,
    delay: Duration,
    attached: bool,
) -> Command {
    let mut c = crate::platform::process::command_in(Some(netns), &program.path, attached);
    c.args(&program.args);
    c.args(["--tun", tun, "--delay", &format!("{}ns", delay.as_nanos())]);
    crate::platform::process::watch_stdin(&mut c, attached);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn waiting_for_a_due_time_is_precise_to_tens_of_microseconds() {
        // As the forwarder's threads do; the default slack alone is 50 µs.
        nix::sys::prctl::set_timerslack(1).unwrap();
        let mut waiter = Waiter::default();
        let mut late = vec![];
        for _ in 0..50 {
            let due = Instant::now() + Duration::from_micros(300);
            waiter.wait_until(due);
            late.push(Instant::now() - due);
        }
        late.sort();
        // The median, since a 2-core CI box may preempt any single wait.
        assert!(late[late.len() / 2] < Duration::from_micros(20), "median lateness {:?}", late[late.len() / 2]);
    }

    #[test]
    fn the_command_runs_in_the_namespace_and_passes_the_delay_in_nanoseconds() {
        let p = ForwarderProgram { path: "/bin/zonebench".into(), args: vec!["lab".into(), "delay-forwarder".into()] };
        let c = forwarder_command(&p, "zb0001-router", "zb0001-dly", Duration::from_micros(250), true);
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(c.get_program(), "ip");
        assert_eq!(
            args.join(" "),
            "netns exec zb0001-router setpriv --pdeathsig KILL -- /bin/zonebench lab delay-forwarder \
             --tun zb0001-dly --delay 250000ns --watch-stdin"
        );
        let detached = forwarder_command(&p, "ns", "t", Duration::from_millis(2), false);
        assert!(!detached.get_args().any(|a| a == "setpriv" || a == "--watch-stdin"));
    }

    #[test]
    fn the_cli_parses_what_the_command_builder_writes() {
        let a =
            DelayForwarderArgs::try_parse_from(["x", "--tun", "t", "--delay", "250000ns", "--watch-stdin"]).unwrap();
        assert_eq!(a.delay, Duration::from_micros(250));
        assert!(a.watch_stdin);
        assert!(DelayForwarderArgs::try_parse_from(["x", "--tun", "t", "--delay", "soon"]).is_err());
    }
}
