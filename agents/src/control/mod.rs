//! The control API: how the coordinator starts tests on an agent and collects their
//! results. HTTP/1.1 + JSON over TCP or a unix socket ([`Endpoint`]); every route but
//! `GET /healthz` needs the run's bearer token ([`Token`]).
//!
//! An agent must never become an open load generator, so a test is refused unless it fits
//! the limits the agent was started with ([`Limits`]) and its target resolves into an
//! allowed CIDR ([`Cidr`]); bodies are capped, and so are the tests running at once and the
//! results kept. A probe ([`crate::probe`]) passes the same target check and has its own cap.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}`, no token needed |
//! | `GET /v1/info` | identity, version, protocol version, data ports, limits, tests |
//! | `POST /v1/tests` | a [`TestSpec`] in, `201 {"id"}` out; the test runs on its own thread |
//! | `GET /v1/tests` | every kept test's id and state |
//! | `GET /v1/tests/{id}` | state, spec, times, and the [`TestResult`] or the error |
//! | `DELETE /v1/tests/{id}` | cancels; the state turns `cancelled` once the test stopped |
//! | `POST /v1/probe` | a [`ProbeSpec`](crate::probe::ProbeSpec) in; the answer waits for the probe: `200` [`ProbeOutcome`](crate::probe::ProbeOutcome), reached or not |
//! | `GET /metrics` | Prometheus text: server counters and the control API's own |

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::load::TestError;
use crate::servers::{Bound, ServerCtx};
use crate::spec::{SpecError, TestResult, TestSpec};

mod api;
mod auth;
mod cidr;
mod endpoint;
mod metrics;
mod registry;

pub use auth::{Token, TokenError};
pub use cidr::{Cidr, CidrError};
pub use endpoint::{Endpoint, EndpointError};
pub use registry::TestState;

use endpoint::Listener;

/// What runs a test: [`crate::load::run`] in the agent; a stand-in in tests of the state
/// machine.
pub type Runner = Arc<dyn Fn(&TestSpec, &CancellationToken) -> Result<TestResult, TestError> + Send + Sync>;

/// Control connections served at once; past it, new ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers (also how long an idle keep-alive
/// connection is kept).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection, which also bounds the size of a request's headers.
const MAX_HEADER_BUF: usize = 64 * 1024;

/// How far ahead a test may be armed (`start_at_unix_ns`): an armed test holds a running
/// slot while it waits, so a far-off instant (a clock mix-up) must not hold it for long.
pub const MAX_ARMED_NS: u64 = 60_000_000_000;

/// The bounds a test started through the control API must stay within.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest warm-up + duration.
    pub max_duration: Duration,
    /// Highest `rate_bps`; 0 (unlimited) is always refused.
    pub max_rate_bps: u64,
    pub max_qps: f64,
    /// Highest `connections` and `parallel`.
    pub max_connections: u32,
    /// Tests queued or running at once; more get 429.
    pub max_running: usize,
    /// Finished tests whose results are kept; the oldest go first.
    pub max_kept: usize,
    /// Probes running at once; more get 429. Probes are a socket each and mostly wait, so
    /// this is a bound on misuse, not on load.
    pub max_probes: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration: Duration::from_secs(3600),
            max_rate_bps: 100_000_000_000,
            max_qps: 1_000_000.0,
            max_connections: 1024,
            max_running: 4,
            max_kept: 256,
            max_probes: 16,
            max_body_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Whether `spec` fits; the error names the field and the limit (and its flag).
    pub fn check(&self, spec: &TestSpec) -> Result<(), SpecError> {
        let bad = |field: &'static str, message: String| Err(SpecError { field, message });
        let max_ms = u64::try_from(self.max_duration.as_millis()).unwrap_or(u64::MAX);
        let total = spec.duration_ms.saturating_add(spec.warmup_ms);
        if total > max_ms {
            return bad(
                "duration_ms",
                format!(
                    "duration_ms + warmup_ms is {total} ms, over this agent's limit of {max_ms} ms (--max-duration)"
                ),
            );
        }
        match spec.rate_bps {
            Some(0) => {
                return bad(
                    "rate_bps",
                    format!(
                        "0 (unlimited) is not allowed through the control API; give a rate up to {} bits/s \
                         (--max-rate)",
                        self.max_rate_bps
                    ),
                )
            }
            Some(r) if r > self.max_rate_bps => {
                return bad(
                    "rate_bps",
                    format!("{r} is over this agent's limit of {} bits/s (--max-rate)", self.max_rate_bps),
                )
            }
            _ => {}
        }
        if let Some(at) = spec.start_at_unix_ns {
            let ahead = at.saturating_sub(crate::spec::unix_now_ns());
            if ahead > MAX_ARMED_NS {
                return bad(
                    "start_at_unix_ns",
                    format!(
                        "is {:.1} s ahead of this agent's clock; a test may be armed at most {} s ahead",
                        ahead as f64 / 1e9,
                        MAX_ARMED_NS / 1_000_000_000
                    ),
                );
            }
        }
        if let Some(q) = spec.qps.filter(|&q| q > self.max_qps) {
            return bad("qps", format!("{q} is over this agent's limit of {} requests/s (--max-qps)", self.max_qps));
        }
        for (field, v) in [("connections", spec.connections), ("parallel", spec.parallel)] {
            if v > self.max_connections {
                return bad(
                    field,
                    format!("{v} is over this agent's limit of {} (--max-connections)", self.max_connections),
                );
            }
        }
        Ok(())
    }

    /// Whether the limits themselves make sense (each must allow something).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_duration.is_zero() {
            return Err("max_duration (--max-duration) must be greater than 0".into());
        }
        if self.max_rate_bps == 0 {
            return Err("max_rate_bps (--max-rate) must be greater than 0".into());
        }
        if !self.max_qps.is_finite() || self.max_qps <= 0.0 {
            return Err("max_qps (--max-qps) must be a positive number".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections (--max-connections) must be greater than 0".into());
        }
        if self.max_running == 0 || self.max_body_bytes == 0 || self.max_probes == 0 {
            return Err("max_running, max_probes and max_body_bytes must be greater than 0".into());
        }
        Ok(())
    }
}

/// Everything the control API needs.
#[derive(Clone)]
pub struct Config {
    pub endpoint: Endpoint,
    pub token: Token,
    /// Identity, counters (for `/metrics`) and the shutdown signal, shared with the servers.
    pub ctx: ServerCtx,
    /// The data servers' bound addresses, reported by `/v1/info`.
    pub data: Bound,
    pub limits: Limits,
    /// Networks tests may target; empty refuses every target.
    pub allow: Vec<Cidr>,
    pub runner: Runner,
}

impl Config {
    /// Default limits, loopback targets only, tests run by [`crate::load::run`].
    pub fn new(endpoint: Endpoint, token: Token, ctx: ServerCtx, data: Bound) -> Config {
        Config {
            endpoint,
            token,
            ctx,
            data,
            limits: Limits::default(),
            allow: Cidr::loopback(),
            runner: Arc::new(crate::load::run),
        }
    }
}

/// A running control API.
pub struct Control {
    /// Where it listens (with the real port when 0 was asked for).
    pub endpoint: Endpoint,
    task: JoinHandle<()>,
}

impl Control {
    /// Waits for the accept loop to end after shutdown (a unix socket file is removed by
    /// then).
    pub async fn closed(self) {
        let _ = self.task.await;
    }
}

/// Binds the endpoint and serves the control API on the current runtime until
/// `cfg.ctx.shutdown` is cancelled, which also cancels every running test.
pub async fn start(cfg: Config) -> io::Result<Control> {
    cfg.limits.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("control limits: {e}")))?;
    let (listener, endpoint) = Listener::bind(&cfg.endpoint).await?;
    let shutdown = cfg.ctx.shutdown.clone();
    let metrics = Arc::new(metrics::ControlMetrics::default());
    let registry = Arc::new(registry::Registry::new(
        cfg.limits.max_running,
        cfg.limits.max_kept,
        cfg.runner.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let info = api::info(&cfg.ctx, &cfg.data, &cfg.limits, &cfg.allow).to_string().into();
    let api = Arc::new(api::Api {
        probes: Arc::new(Semaphore::new(cfg.limits.max_probes)),
        token: cfg.token,
        ctx: cfg.ctx,
        limits: cfg.limits,
        allow: cfg.allow,
        registry,
        metrics,
        info,
    });
    let task = tokio::spawn(accept_loop(listener, api, shutdown));
    Ok(Control { endpoint, task })
}

async fn accept_loop(listener: Listener, api: Arc<api::Api>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_connection(s, Arc::clone(&api), shutdown.clone(), permit));
            }
            Ok(Accepted::Unix(s)) => {
                tokio::spawn(serve_connection(s, Arc::clone(&api), shutdown.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like pass; back off instead of spinning.
                tracing::warn!("control API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    listener.remove_socket_file();
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

async fn serve_connection<S>(
    stream: S,
    api: Arc<api::Api>,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let api = Arc::clone(&api);
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BUF)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let outcome = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!("control connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TestKind;

    #[test]
    fn specs_within_the_limits_pass() {
        let limits = Limits::default();
        let mut spec = TestSpec::new(TestKind::UdpStream, "127.0.0.1:1");
        spec.rate_bps = Some(limits.max_rate_bps);
        spec.duration_ms = 3_599_000;
        spec.warmup_ms = 1_000;
        spec.connections = 1024;
        limits.check(&spec).unwrap();
    }

    #[test]
    fn each_limit_names_its_field_and_flag() {
        let limits = Limits { max_duration: Duration::from_secs(10), max_qps: 100.0, ..Limits::default() };
        let base = TestSpec::new(TestKind::Http, "127.0.0.1:1");
        type Tweak = Box<dyn Fn(&mut TestSpec)>;
        let cases: Vec<(&str, &str, Tweak)> = vec![
            ("duration_ms", "--max-duration", Box::new(|s| s.warmup_ms = 1_001)),
            ("rate_bps", "unlimited", Box::new(|s| s.rate_bps = Some(0))),
            ("rate_bps", "--max-rate", Box::new(|s| s.rate_bps = Some(100_000_000_001))),
            ("qps", "--max-qps", Box::new(|s| s.qps = Some(100.5))),
            ("connections", "--max-connections", Box::new(|s| s.connections = 1025)),
            ("parallel", "--max-connections", Box::new(|s| s.parallel = 1025)),
            (
                "start_at_unix_ns",
                "armed at most 60 s ahead",
                Box::new(|s| s.start_at_unix_ns = Some(crate::spec::unix_now_ns() + 61_000_000_000)),
            ),
        ];
        for (field, says, tweak) in cases {
            let mut spec = base.clone();
            spec.duration_ms = 9_000; // + 1 s default warm-up: exactly at the limit
            tweak(&mut spec);
            let e = limits.check(&spec).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn a_duration_that_would_overflow_is_refused_not_wrapped() {
        let mut spec = TestSpec::new(TestKind::TcpRr, "127.0.0.1:1");
        spec.duration_ms = u64::MAX;
        spec.warmup_ms = u64::MAX;
        assert_eq!(Limits::default().check(&spec).unwrap_err().field, "duration_ms");
    }
}
