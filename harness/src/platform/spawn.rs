//! Starting a platform's long-lived processes (agents, the lab's delay forwarder) from one
//! dedicated thread. `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, not the
//! process, so children spawned from a tokio blocking-pool thread would be killed when that
//! idle thread retires. A thread owned by the platform lives exactly as long as its handle:
//! children die with the coordinator (crash included), never earlier.

use std::process::{Child, Command};
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
