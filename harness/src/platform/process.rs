//! What the platforms that run agents as local processes (lab and local) share: starting
//! them, stopping them, the tail of their logs, and their control tokens.
//!
//! Long-lived processes (agents, the lab's delay forwarder) start from one
//! dedicated thread. `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, not the
//! process, so children spawned from a tokio blocking-pool thread would be killed when that
//! idle thread retires. A thread owned by the platform lives exactly as long as its handle:
//! children die with the coordinator (crash included), never earlier.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use anyhow::Context as _;

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

pub struct Spawner {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    pub fn new(name: &str) -> anyhow::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-spawn"))
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    let _ = answer.send(cmd.spawn());
                }
            })
            .context("starting the process-spawning thread")?;
        Ok(Spawner { tx: Some(tx), thread: Some(thread) })
    }

    /// Spawns `cmd` on the spawner thread.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<Child> {
        let what = format!("{cmd:?}");
        let (atx, arx) = mpsc::channel();
        let tx = self.tx.as_ref().context("the spawner thread is stopped")?;
        tx.send((cmd, atx)).ok().context("the spawner thread is gone")?;
        arx.recv().context("the spawner thread is gone")?.with_context(|| format!("starting {what}"))
    }

    /// Ends the thread: children still attached to it get their death signal.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 2000;
    let Ok(mut f) = File::open(path) else { return "(no log)".into() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "(empty log)".into()
    } else {
        s.to_string()
    }
}

/// A fresh control token: 64 hex digits from the kernel's random source.
pub fn random_token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| anyhow::anyhow!("reading /dev/urandom for a control token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a token file readable by its owner only.
pub fn write_token(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing the token file {}: {e}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

/// SIGTERM, a short grace period, then SIGKILL; always reaps.
pub fn stop_child(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    crate::sys::terminate(child);
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `ip netns exec NETNS [setpriv --pdeathsig KILL --] PROGRAM`, or PROGRAM in the host's
/// namespace when `netns` is None. `attached` ties the process to the coordinator: SIGKILL
/// when the spawning thread dies (pdeathsig fires per thread: see [`Spawner`]); a lab left
/// up (`lab up`) starts its processes detached.
pub fn command_in(netns: Option<&str>, program: &Path, attached: bool) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            if attached {
                c.args(["setpriv", "--pdeathsig", "KILL", "--"]);
            }
            c.arg(program);
            c
        }
        None if attached => {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    c.stdin(Stdio::null());
    c
}

/// For a lab helper that takes `--watch-stdin`: attached, it gets a piped stdin and exits
/// when the coordinator closes it; detached, it runs in its own process group with no stdin,
/// so the shell that ran `lab up` does not signal it.
pub fn watch_stdin(c: &mut Command, attached: bool) {
    if attached {
        c.arg("--watch-stdin").stdin(Stdio::piped());
    } else {
        use std::os::unix::process::CommandExt as _;
        c.stdin(Stdio::null()).process_group(0);
    }
}
