//! The API forwarder: how a user's kubectl, in the host's network namespace, reaches the kube
//! lab's apiserver, which listens only inside a lab namespace (nothing of the lab is put in
//! the host's namespace). It listens on a loopback port of the host and, for each connection
//! accepted there, opens one to the apiserver from inside the lab namespace and copies bytes
//! both ways. It is a plain TCP relay: TLS runs end to end between kubectl and the
//! apiserver, whose certificate names 127.0.0.1 ([`super::pki`]).
//!
//! A socket belongs to the network namespace of the thread that created it, so one dedicated
//! thread enters the lab namespace once (`setns`) and makes every outgoing connection, on
//! request over a channel; the accept loop and the copying run on a small tokio runtime in
//! the host namespace, the connected sockets handed over to it. Connects are made one at a
//! time, which is plenty: the target is in a namespace on this host, so each one succeeds or
//! is refused at once (a target that drops SYNs holds the others up to `CONNECT_TIMEOUT`, 5 s).
//!
//! It runs as a child process (`zonebench lab api-forwarder`), built by
//! [`api_forwarder_command`], writes the port it listens on to `--port-file` once it is
//! ready, and stops on SIGTERM or, with `--watch-stdin`, when its stdin closes (the
//! coordinator that spawned it has gone), as the delay forwarder does.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nix::sched::CloneFlags;
use tokio::sync::oneshot;

use crate::platform::lab::delay::ForwarderProgram;

/// The subcommand, after the executable (for [`ForwarderProgram::with_args`]).
pub const SUBCOMMAND: [&str; 2] = ["lab", "api-forwarder"];
/// How long one connection to the target may take to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The forwarder's command line (`zonebench lab api-forwarder …`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api-forwarder",
    about = "Forward a host loopback port to an address inside a network namespace (lab internals)"
)]
pub struct ApiForwarderArgs {
    /// The network namespace to connect from: a name under /run/netns, or a path.
    #[arg(long)]
    pub netns: String,
    /// Where to connect inside it, e.g. the apiserver's 10.250.0.2:6443.
    #[arg(long)]
    pub target: SocketAddr,
    /// Where to listen in the host's namespace: loopback only; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write the port listened on here (with a newline) once connections are accepted.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// Exit when stdin reaches end of file (the spawning coordinator has gone).
    #[arg(long)]
    pub watch_stdin: bool,
}

/// Runs the forwarder described by `args` (the CLI's entry point); blocks until stopped.
pub fn run(args: &ApiForwarderArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("--listen {} is not a loopback address: the forwarder serves this host only", args.listen);
    }
    let connector = Arc::new(Connector::start(&args.netns)?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args, connector))
}

/// `/run/netns/<name>`, or `netns` itself when it is a path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

type Reply = oneshot::Sender<std::io::Result<std::net::TcpStream>>;

/// The thread inside the target namespace that makes the outgoing connections.
struct Connector {
    requests: mpsc::Sender<(SocketAddr, Reply)>,
    netns: String,
}

impl Connector {
    /// Starts the thread and waits until it has entered `netns`.
    fn start(netns: &str) -> anyhow::Result<Connector> {
        let path = netns_path(netns);
        let ns = std::fs::File::open(&path)
            .with_context(|| format!("opening the network namespace {} (does it exist?)", path.display()))?;
        let (requests, incoming) = mpsc::channel::<(SocketAddr, Reply)>();
        let (entered_tx, entered) = mpsc::channel();
        std::thread::Builder::new()
            .name("netns-connect".into())
            .spawn(move || {
                let outcome = nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET);
                drop(ns);
                let ok = outcome.is_ok();
                let _ = entered_tx.send(outcome);
                if !ok {
                    return;
                }
                // Ends when every sender (the forwarder) is gone.
                while let Ok((target, reply)) = incoming.recv() {
                    let _ = reply.send(std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT));
                }
            })
            .context("starting the connector thread")?;
        entered
            .recv()
            .context("the connector thread stopped before entering the namespace")?
            .with_context(|| format!("entering the network namespace {} (setns)", path.display()))?;
        Ok(Connector { requests, netns: netns.to_string() })
    }

    /// A connection to `target` made inside the namespace, ready for tokio.
    async fn connect(&self, target: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((target, reply)).map_err(|_| anyhow!("the connector thread has stopped"))?;
        let stream = answer
            .await
            .context("the connector thread has stopped")?
            .with_context(|| format!("connecting to {target} in the network namespace {}", self.netns))?;
        stream.set_nonblocking(true).context("making the connection non-blocking")?;
        tokio::net::TcpStream::from_std(stream).context("handing the connection to the runtime")
    }
}

async fn serve(args: &ApiForwarderArgs, connector: Arc<Connector>) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let port = listener.local_addr().context("reading the port listened on")?.port();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("handling SIGTERM")?;
    let stdin_closed = stdin_closed(args.watch_stdin)?;
    tokio::pin!(stdin_closed);
    // Last: whoever waits for the file may connect as soon as it appears.
    if let Some(p) = &args.port_file {
        write_port_file(p, port)?;
    }
    let target = args.target;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            () = &mut stdin_closed => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let connector = Arc::clone(&connector);
                    tokio::spawn(async move {
                        if let Err(e) = forward(client, &connector, target).await {
                            tracing::warn!("api forwarder: connection from {peer}: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine.
                    tracing::warn!("api forwarder: accepting on {}: {e}", args.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Copies both ways until both directions are done: an end of file from one side is passed
/// on as a shutdown of the other's write half; a reset or error ends both.
async fn forward(mut client: tokio::net::TcpStream, connector: &Connector, target: SocketAddr) -> anyhow::Result<()> {
    let mut upstream = connector.connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await.map(drop).context("copying")
}

/// Completes when stdin reaches end of file (`watch` true), else never.
fn stdin_closed(watch: bool) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let rx = if watch {
        let (tx, rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let mut sink = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                let _ = tx.send(());
            })
            .context("starting the stdin watcher")?;
        Some(rx)
    } else {
        None
    };
    Ok(async move {
        match rx {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    })
}

/// Writes `port` atomically: a reader sees no file or the whole number.
fn write_port_file(path: &Path, port: u16) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{port}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads the port a forwarder wrote with `--port-file`, if it has yet.
pub fn read_port_file(path: &Path) -> anyhow::Result<Option<u16>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).with_context(|| format!("{} holds no port: {s:?}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The command that runs the forwarder: `program` is the coordinator's executable with
/// [`SUBCOMMAND`] (`ForwarderProgram::current_exe()?.with_args(&SUBCOMMAND)`). It runs in the
/// caller's (host) namespace, entering `netns` itself. `attached` ties it to the caller, as
/// for the delay forwarder: SIGKILL when the spawning thread dies (`setpriv --pdeathsig`)
/// and exit when its stdin (to be piped by the caller) closes; otherwise it runs on in its
/// own process group until signalled.
pub fn api_forwarder_command(
    program: &ForwarderProgram,
    netns: &str,
    target: SocketAddr,
    listen: SocketAddr,
    port_file: &Path,
    attached: bool,
) -> Command {
    let mut c = crate::platform::process::command_in(None, &program.path, attached);
    c.args(&program.args);
    c.args(["--netns", netns, "--target", &target.to_string(), "--listen", &listen.to_string(), "--port-file"]);
    c.arg(port_file);
    crate::platform::process::watch_stdin(&mut c, attached);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn the_cli_parses_what_the_command_builder_writes() {
        let p = ForwarderProgram { path: "/bin/zonebench".into(), args: vec![] }.with_args(&SUBCOMMAND);
        let c = api_forwarder_command(
            &p,
            "zb0001-cp",
            "10.250.0.2:6443".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            Path::new("/run/x/port"),
            true,
        );
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(c.get_program(), "setpriv");
        assert_eq!(
            args.join(" "),
            "--pdeathsig KILL -- /bin/zonebench lab api-forwarder --netns zb0001-cp --target 10.250.0.2:6443 \
             --listen 127.0.0.1:0 --port-file /run/x/port --watch-stdin"
        );
        let a =
            ApiForwarderArgs::try_parse_from(std::iter::once("x").chain(args[6..].iter().map(String::as_str))).unwrap();
        assert_eq!(a.target, "10.250.0.2:6443".parse().unwrap());
        assert_eq!(a.port_file.as_deref(), Some(Path::new("/run/x/port")));
        assert!(a.watch_stdin);
        let d = ApiForwarderArgs::try_parse_from(["x", "--netns", "n", "--target", "10.0.0.1:1"]).unwrap();
        assert_eq!(d.listen, "127.0.0.1:0".parse().unwrap());
        assert!(!d.watch_stdin);
        let detached = api_forwarder_command(&p, "n", d.target, d.listen, Path::new("f"), false);
        assert_eq!(detached.get_program(), "/bin/zonebench");
        assert!(!detached.get_args().any(|a| a == "--watch-stdin"));
    }

    #[test]
    fn it_refuses_a_listen_address_off_loopback_and_a_missing_namespace() {
        let args = ApiForwarderArgs::try_parse_from([
            "x",
            "--netns",
            "zbt-none",
            "--target",
            "10.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
        ])
        .unwrap();
        let e = format!("{:#}", run(&args).unwrap_err());
        assert!(e.contains("not a loopback address"), "{e}");
        let args = ApiForwarderArgs { listen: "127.0.0.1:0".parse().unwrap(), ..args };
        let e = format!("{:#}", run(&args).unwrap_err());
        assert!(e.contains("/run/netns/zbt-none") && e.contains("does it exist"), "{e}");
    }

    #[test]
    fn the_port_file_is_read_back_and_absent_until_written() {
        let d = std::env::temp_dir().join(format!("zb-api-fwd-port-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("port");
        assert_eq!(read_port_file(&f).unwrap(), None);
        write_port_file(&f, 40123).unwrap();
        assert_eq!(read_port_file(&f).unwrap(), Some(40123));
        std::fs::write(&f, "x").unwrap();
        assert!(read_port_file(&f).is_err());
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(netns_path("zb1"), Path::new("/run/netns/zb1"));
        assert_eq!(netns_path("/proc/1/ns/net"), Path::new("/proc/1/ns/net"));
    }
}
