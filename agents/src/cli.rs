//! The agent's command line: `serve` runs the echo/sink servers and the control API;
//! `client <test>` runs one load generator against a server and prints what it measured.
//! It lives in the library so the coordinator can embed the agent (`zonebench agent …`) and
//! launch itself in lab pods, with no second binary to find.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::control::{self, Cidr, Endpoint, Token};
use crate::ports::{DEFAULT_CONTROL_PORT, DEFAULT_HTTP_PORT, DEFAULT_TCP_PORT, DEFAULT_UDP_PORT};
use crate::spec::{Identity, TestKind, TestSpec};
use crate::{load, report, servers, units};

#[derive(Parser, Debug)]
#[command(name = "zonebench-agent", version, about = "zonebench data plane: servers, load generators, control API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the TCP, UDP and HTTP servers and the control API.
    Serve(ServeArgs),
    /// Run one test against a server and print what it measured.
    Client(ClientArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address the data servers listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    listen: IpAddr,
    #[arg(long, default_value_t = DEFAULT_TCP_PORT)]
    tcp_port: u16,
    #[arg(long, default_value_t = DEFAULT_UDP_PORT)]
    udp_port: u16,
    #[arg(long, default_value_t = DEFAULT_HTTP_PORT)]
    http_port: u16,
    /// Control API endpoint: `tcp:ADDR:PORT` (IPv4, or `[IPv6]:PORT`) or `unix:PATH`.
    #[arg(long, default_value_t = default_control(), value_parser = parse_endpoint)]
    control: Endpoint,
    /// File holding the control API's bearer token; without it the control API stays off.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Identity stamped on every answer (defaults to the host name).
    #[arg(long)]
    id: Option<String>,
    #[arg(long, default_value = "")]
    zone: String,
    #[arg(long, default_value = "")]
    node: String,
    /// CIDRs tests started through the control API may target (repeatable; default
    /// 127.0.0.0/8 and ::1/128).
    #[arg(long = "allow-cidr", value_parser = parse_cidr)]
    allow_cidr: Vec<Cidr>,
    /// Longest test (warm-up + duration) the control API accepts.
    #[arg(long, default_value = "1h", value_parser = units::parse_duration)]
    max_duration: Duration,
    /// Highest UDP send rate (bits/s) the control API accepts; 0 (unlimited) is refused.
    #[arg(long, default_value = "100G", value_parser = units::parse_rate_bps)]
    max_rate: u64,
    /// Highest open-loop rate (http, tcp-rr, udp-rr) the control API accepts.
    #[arg(long, default_value_t = 1_000_000.0)]
    max_qps: f64,
    /// Answer at most this many requests per second in all (HTTP requests, TCP echo and UDP
    /// request transactions), like an application at capacity: answers over the rate wait
    /// their turn (none is refused). Default: no limit.
    #[arg(long, value_parser = parse_positive_rate)]
    max_answer_qps: Option<f64>,
    /// Relay service-chain requests (`x-zonebench-relay`) to their next hop, inside the
    /// `--allow-cidr` blocks only.
    #[arg(long)]
    relay: bool,
    /// Most connections or streams one test may open through the control API.
    #[arg(long, default_value_t = 1024)]
    max_connections: u32,
    /// Server worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// tcp-stream, udp-stream, tcp-rr, udp-rr, tcp-crr or http.
    #[arg(value_parser = parse_test)]
    test: TestKind,
    /// Server to test, HOST:PORT (the agent's TCP, UDP or HTTP port).
    #[arg(long)]
    target: String,
    /// Measured time, after warm-up.
    #[arg(long, short = 't', default_value = "10s", value_parser = units::parse_duration)]
    duration: Duration,
    /// Time before measuring starts; nothing in it is counted.
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    warmup: Duration,
    /// tcp-stream: parallel streams.
    #[arg(long, short = 'P', default_value_t = 1)]
    parallel: u32,
    /// tcp-stream: the server sends and the client receives.
    #[arg(long, short = 'R')]
    reverse: bool,
    /// tcp-stream write size / udp-stream datagram size (e.g. 128K, 1400).
    #[arg(long, short = 'l', value_parser = units::parse_size)]
    size: Option<u32>,
    /// udp-stream send rate in bits/s (e.g. 1G, 500M); 0 = as fast as possible. Default 1M.
    #[arg(long, short = 'b', value_parser = units::parse_rate_bps)]
    rate: Option<u64>,
    /// rr tests: request size in bytes.
    #[arg(long, default_value = "1", value_parser = units::parse_size)]
    request_size: u32,
    /// rr tests: response size in bytes.
    #[arg(long, default_value = "1", value_parser = units::parse_size)]
    response_size: u32,
    /// http: concurrent connections; rr tests: concurrent flows.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: u32,
    /// http, tcp-rr, udp-rr: total requests/s, open loop (latency from the intended send time).
    #[arg(long, short = 'q')]
    qps: Option<f64>,
    /// http: `Connection: close`, one connection per request.
    #[arg(long)]
    connection_close: bool,
    /// http: request path and query (e.g. `/?size=1024`).
    #[arg(long, default_value = "/")]
    path: String,
    /// http: a service chain: the target relays each request to this hop, which relays it
    /// to the next (repeatable, `IP:PORT`, in order; each an agent under `serve --relay`).
    #[arg(long = "relay", value_name = "IP:PORT")]
    relay: Vec<String>,
    /// Load-generator threads (default: one per flow, up to the cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Per-operation timeout (connect, request, UDP answer).
    #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn parse_test(s: &str) -> Result<TestKind, String> {
    s.parse()
}

/// `tcp:0.0.0.0:7100`: every address, the default control port.
fn default_control() -> Endpoint {
    Endpoint::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_CONTROL_PORT))
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse().map_err(|e: control::EndpointError| e.to_string())
}

fn parse_positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 => Ok(q),
        _ => Err(format!("{s:?} is not a positive number of requests per second")),
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse().map_err(|e: control::CidrError| e.to_string())
}

/// Runs the agent CLI on `args` (the first is the program name, as in `std::env::args`).
/// Usage errors print clap's message and exit 2, like any clap program.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // A second initialisation (the coordinator already set one up) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "zonebench_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse_from(args);
    let outcome = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(args) => client(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(a: ClientArgs) -> anyhow::Result<ExitCode> {
    let ms = |d: Duration| d.as_millis() as u64;
    let spec = TestSpec {
        test: a.test,
        target: a.target,
        duration_ms: ms(a.duration),
        warmup_ms: ms(a.warmup),
        parallel: a.parallel,
        reverse: a.reverse,
        size: a.size,
        rate_bps: a.rate,
        request_size: a.request_size,
        response_size: a.response_size,
        connections: a.connections,
        qps: a.qps,
        connection_close: a.connection_close,
        path: a.path,
        threads: a.threads,
        timeout_ms: ms(a.timeout),
        start_at_unix_ns: None,
        relay: a.relay,
    };
    if let Err(e) = spec.validate() {
        eprintln!("error: --{}: {}", e.field.replace('_', "-").trim_end_matches("-ms"), e.message);
        return Ok(ExitCode::from(2));
    }
    // Ctrl-C stops the test early; what was measured so far is not reported (a cut window
    // would be mislabelled), matching iperf3's behaviour of reporting only complete runs.
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                });
            }
        });
    }
    let result = load::run(&spec, &cancel).with_context(|| format!("{} against {}", spec.test, spec.target))?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Table => print!("{}", report::table(&result)),
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let workers = a.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .thread_name("zb-serve")
        .build()
        .context("starting the server runtime")?;
    // A bad token file is a start-up error, found before anything binds.
    let token = match &a.token_file {
        Some(path) => Some(Token::from_file(path)?),
        None => None,
    };
    let limits = control::Limits {
        max_duration: a.max_duration,
        max_rate_bps: a.max_rate,
        max_qps: a.max_qps,
        max_connections: a.max_connections,
        ..control::Limits::default()
    };
    limits.validate().map_err(anyhow::Error::msg)?;
    let allow = if a.allow_cidr.is_empty() { Cidr::loopback() } else { a.allow_cidr.clone() };
    let id = match a.id {
        Some(id) => id,
        None => hostname(),
    };
    let mut ctx = servers::ServerCtx::new(Identity { id, zone: a.zone, node: a.node });
    // No flood may take every descriptor: each data server gets a bounded share.
    let nofile = crate::sys::raise_fd_limit().context("reading the descriptor limit (RLIMIT_NOFILE)")?;
    ctx.caps = servers::Caps::for_fd_limit(nofile);
    ctx.pacer = a.max_answer_qps.and_then(servers::pacer::Pacer::new).map(std::sync::Arc::new);
    if a.relay {
        let blocks = allow.clone();
        ctx.relay =
            Some(std::sync::Arc::new(servers::relay::Relay::new(move |ip| blocks.iter().any(|c| c.contains(ip)))));
    }
    rt.block_on(async {
        let bound = servers::start_all(
            &ctx,
            SocketAddr::new(a.listen, a.tcp_port),
            SocketAddr::new(a.listen, a.udp_port),
            SocketAddr::new(a.listen, a.http_port),
        )
        .await
        .context("starting the data servers")?;
        eprintln!(
            "zonebench-agent {} serving as {:?}: tcp {}, udp {}, http {} (at most {} tcp and {} http \
             connections at once; descriptor limit {nofile})",
            env!("CARGO_PKG_VERSION"),
            ctx.identity.id,
            bound.tcp,
            bound.udp,
            bound.http,
            ctx.caps.tcp,
            ctx.caps.http,
        );
        if let Some(q) = a.max_answer_qps {
            eprintln!("zonebench-agent: answering at most {q} requests/s (--max-answer-qps)");
        }
        if a.relay {
            let blocks: Vec<String> = allow.iter().map(ToString::to_string).collect();
            eprintln!("zonebench-agent: relaying service-chain requests to {} (--relay)", blocks.join(", "));
        }
        let control = match token {
            None => {
                eprintln!("control API off: start with --token-file to enable it");
                None
            }
            Some(token) => {
                let mut cfg = control::Config::new(a.control.clone(), token, ctx.clone(), bound);
                cfg.limits = limits;
                cfg.allow = allow;
                let allowed: Vec<String> = cfg.allow.iter().map(ToString::to_string).collect();
                let control =
                    control::start(cfg).await.with_context(|| format!("starting the control API on {}", a.control))?;
                eprintln!("control API listening on {} (tests may target {})", control.endpoint, allowed.join(", "));
                Some(control)
            }
        };
        shutdown_signal().await;
        ctx.shutdown.cancel();
        if let Some(control) = control {
            // Lets the accept loop remove its unix socket file before the runtime goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), control.closed()).await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn serve_listens_on_the_default_ports_without_flags() {
        let Command::Serve(a) = Cli::try_parse_from(["zonebench-agent", "serve"]).unwrap().command else {
            panic!("not serve")
        };
        assert_eq!((a.tcp_port, a.udp_port, a.http_port), (7101, 7102, 7180));
        assert_eq!(a.control.to_string(), "tcp:0.0.0.0:7100");
    }
}
