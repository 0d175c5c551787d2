//! The connect probe: how long after a Service is created a pod can first connect to it
//! (the "network programming latency" a client sees).
//!
//! It runs as a child process (`zonebench lab connect-probe`) inside a pod's network
//! namespace and in the pod's node cgroup, so its sockets meet the node's dataplane exactly
//! as an agent's do (the eBPF socket load balancer only sees sockets of processes in the
//! node's cgroup). It waits for a `go` line on stdin, which the coordinator writes right
//! before it starts programming the Service, then starts a new connect every millisecond,
//! each left pending for up to [`ATTEMPT_TIMEOUT`], and prints `connected <ns since go>` at
//! the first that succeeds. Overlapping attempts matter: a SYN sent before the rules exist
//! goes unanswered (the router rate-limits its ICMP errors), and it keeps the conntrack
//! entry it created, untranslated, for its retransmissions; only a new connection meets
//! the new rules, so the resolution is the attempt interval, not the attempt timeout.
//!
//! The lab runs it in a pod of its own on the client's node, not in an agent's: those
//! untranslated conntrack entries would black-hole any later agent connection that
//! happened to reuse one of their source ports.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::delay::ForwarderProgram;

/// How long one attempt stays pending; with one started every [`ATTEMPT_EVERY`], at most
/// 250 sockets are open at once.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// A new attempt starts this often: the probe's resolution.
pub const ATTEMPT_EVERY: Duration = Duration::from_millis(1);

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
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let connected = rt.block_on(first_connect(args.target, args.within))?;
    let ns = connected.duration_since(start).as_nanos();
    let mut out = std::io::stdout().lock();
    writeln!(out, "connected {ns}")?;
    out.flush()?;
    Ok(())
}

/// Starts a connect every [`ATTEMPT_EVERY`] until one succeeds; returns when it did.
async fn first_connect(target: SocketAddr, within: Duration) -> anyhow::Result<Instant> {
    type Attempt = Result<std::io::Result<tokio::net::TcpStream>, tokio::time::error::Elapsed>;
    let mut attempts: tokio::task::JoinSet<Attempt> = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(ATTEMPT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    let mut last_error = String::from("no attempt finished");
    loop {
        tokio::select! {
            () = &mut deadline => {
                bail!("no connect to {target} succeeded within {within:?} (last error: {last_error})")
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(Ok(_stream))) => return Ok(Instant::now()),
                Ok(Ok(Err(e))) => last_error = e.to_string(),
                Ok(Err(_elapsed)) => last_error = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                Err(e) => last_error = e.to_string(),
            },
            _ = tick.tick() => {
                attempts.spawn(tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::net::TcpStream::connect(target)));
            }
        }
    }
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

    #[tokio::test]
    async fn the_probe_keeps_trying_until_a_listener_appears() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        drop(l);
        let start = Instant::now();
        let probe = tokio::spawn(first_connect(target, Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _listener = tokio::net::TcpListener::bind(target).await.unwrap();
        let connected = probe.await.unwrap().unwrap();
        assert!(connected.duration_since(start) >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_probe_that_never_connects_says_why() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        drop(l);
        let e = format!("{:#}", first_connect(target, Duration::from_millis(100)).await.unwrap_err());
        assert!(e.contains("within 100ms") && e.contains("refused"), "{e}");
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
