//! The connect probe: how long after a Service is created a pod can first connect to it
//! (the "network programming latency" a client sees).
//!
//! It runs as a child process (`zonebench lab connect-probe`) inside a client pod's network
//! namespace and in the pod's node cgroup, so its sockets meet the node's dataplane exactly
//! as an agent's do (the eBPF socket load balancer only sees sockets of processes in the
//! node's cgroup). It waits for a `go` line on stdin, which the coordinator writes right
//! before it starts programming the Service, then tries to connect every millisecond (each
//! attempt bounded, since a SYN to an unprogrammed address may be dropped rather than
//! refused) and prints `connected <ns since go>` at the first success.

use std::io::{BufRead as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::delay::ForwarderProgram;

/// One connect attempt may take this long before the probe gives up on it and tries again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(50);
/// Pause between failed attempts.
pub const RETRY_EVERY: Duration = Duration::from_millis(1);

/// The probe's command line (`zonebench lab connect-probe …`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "connect-probe", about = "Time until a TCP connect first succeeds (lab internals)")]
pub struct ConnectProbeArgs {
    /// The address to connect to, e.g. a Service VIP and port.
    #[arg(long)]
    pub target: SocketAddr,
    /// Give up after this long, e.g. 60s.
    #[arg(long, value_parser = zonebench_agent::units::parse_duration)]
    pub within: Duration,
}

/// Runs the probe (the CLI's entry point): waits for `go`, then connects until it succeeds.
pub fn run(args: &ConnectProbeArgs) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the go line")?;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {:?}", line.trim());
    }
    let start = Instant::now();
    let deadline = start + args.within;
    let mut last_error = String::from("no attempt made");
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&args.target, ATTEMPT_TIMEOUT) {
            Ok(_) => {
                let ns = start.elapsed().as_nanos();
                let mut out = std::io::stdout().lock();
                writeln!(out, "connected {ns}")?;
                out.flush()?;
                return Ok(());
            }
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(RETRY_EVERY);
    }
    bail!("no connect to {} succeeded within {:?} (last error: {last_error})", args.target, args.within)
}

/// A started probe, waiting for `go`; killed if dropped before [`Probe::wait`].
pub struct Probe {
    child: Option<Child>,
}

impl Probe {
    /// Starts the probe in `netns`, moves it into `cgroup` (when there is one) before it can
    /// open a socket, and leaves it waiting for [`Probe::go`].
    pub fn start(
        program: &ForwarderProgram,
        netns: &str,
        cgroup: Option<&Path>,
        target: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<Probe> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "setpriv", "--pdeathsig", "KILL", "--"]);
        cmd.arg(&program.path).args(&program.args);
        cmd.args(["--target", &target.to_string(), "--within", &format!("{}ms", within.as_millis())]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().with_context(|| format!("starting the connect probe {cmd:?}"))?;
        let pid = child.id();
        let probe = Probe { child: Some(child) };
        if let Some(dir) = cgroup {
            // On error the probe is dropped, which kills it.
            super::cgroup::join(dir, pid)?;
        }
        Ok(probe)
    }

    /// Lets the probe start connecting; the moment the measured latency counts from.
    pub fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut()).context("the probe's stdin is gone")?;
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).context("starting the connect probe")
    }

    /// Waits for the probe's answer: the time from `go` to its first successful connect.
    pub fn wait(mut self) -> anyhow::Result<Duration> {
        let mut child = self.child.take().context("the probe was already waited for")?;
        child.stdin = None;
        let out = child.wait_with_output().context("waiting for the probe")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("the connect probe failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        parse_answer(&stdout).with_context(|| format!("the connect probe answered {:?}", stdout.trim()))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_answer(stdout: &str) -> Option<Duration> {
    let ns: u64 = stdout.lines().find_map(|l| l.strip_prefix("connected "))?.trim().parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn the_answer_is_the_nanoseconds_after_go() {
        assert_eq!(parse_answer("connected 1500000\n"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_answer("nothing"), None);
        assert_eq!(parse_answer("connected soon"), None);
    }

    #[test]
    fn the_cli_takes_a_target_and_a_deadline() {
        let a = ConnectProbeArgs::try_parse_from(["connect-probe", "--target", "198.18.128.1:7101", "--within", "30s"])
            .unwrap();
        assert_eq!(a.target, "198.18.128.1:7101".parse().unwrap());
        assert_eq!(a.within, Duration::from_secs(30));
        assert!(ConnectProbeArgs::try_parse_from(["connect-probe", "--target", "nowhere", "--within", "1s"]).is_err());
    }
}
