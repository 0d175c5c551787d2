//! The data-plane servers an agent runs under `serve`: TCP (sink, source, echo), UDP (sink
//! with per-flow accounting, echo) and HTTP. Each stamps the agent's identity on every
//! answer, and counts what it served and what it refused in [`Counters`] (shown by
//! `GET /metrics`), so garbage costs one connection or datagram and is never silent.
//!
//! **Bounded connections.** An agent sits on a port anyone in the cluster can reach, so no
//! flood may take all its file descriptors: then the control API could not accept the
//! coordinator, and the agent's own tests could not open sockets. The TCP and HTTP servers
//! each serve at most [`Caps`] connections at once (by default [`MAX_TCP_CONNECTIONS`] and
//! [`MAX_HTTP_CONNECTIONS`], and never more than a quarter of the descriptors the process may
//! open each, see [`Caps::for_fd_limit`]); past that they stop accepting until a connection
//! ends, so new ones wait in the listen backlog. Garbage, silent and idle connections end on
//! their own (bad preambles at once, silent ones after the TCP server's preamble timeout, idle
//! HTTP ones after its guard period), so a flood holds slots only while it lasts. The UDP
//! server has one socket and a bounded flow table; the control API has its own small cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::spec::Identity;

pub mod http;
pub mod pacer;
pub mod relay;
pub mod tcp;
pub mod udp;

/// Most TCP data connections served at once. A test opens at most `--max-connections`
/// (1024 by default) and an agent runs at most 4 tests at once, so 4096 connections from
/// one client agent, twice that from two, fit.
pub const MAX_TCP_CONNECTIONS: usize = 8192;
/// Most HTTP connections served at once (as [`MAX_TCP_CONNECTIONS`]).
pub const MAX_HTTP_CONNECTIONS: usize = 8192;
/// Each data server takes at most 1/`FD_SHARE` of the process's descriptor limit, so the two
/// of them together leave half of it for the control API, the load generators and files.
const FD_SHARE: u64 = 4;
/// The least a server is given however low the descriptor limit.
const MIN_CONNECTIONS: usize = 16;

/// How many connections each data server serves at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub tcp: usize,
    pub http: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps { tcp: MAX_TCP_CONNECTIONS, http: MAX_HTTP_CONNECTIONS }
    }
}

impl Caps {
    /// The default caps, lowered to a quarter of `nofile` (the process's `RLIMIT_NOFILE`)
    /// each where that is less.
    pub fn for_fd_limit(nofile: u64) -> Caps {
        let share = usize::try_from(nofile / FD_SHARE).unwrap_or(usize::MAX).max(MIN_CONNECTIONS);
        Caps { tcp: MAX_TCP_CONNECTIONS.min(share), http: MAX_HTTP_CONNECTIONS.min(share) }
    }
}

/// What every server needs: who it is, where to count, when to stop, how many connections
/// it may hold.
#[derive(Clone)]
pub struct ServerCtx {
    pub identity: Arc<Identity>,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    pub caps: Caps,
    /// `--max-answer-qps`: the HTTP, TCP echo and UDP request servers together answer at
    /// most this rate (see [`pacer`]).
    pub pacer: Option<Arc<pacer::Pacer>>,
    /// `--relay`: the HTTP server forwards service-chain requests (see [`relay`]).
    pub relay: Option<Arc<relay::Relay>>,
}

impl ServerCtx {
    pub fn new(identity: Identity) -> ServerCtx {
        ServerCtx {
            identity: Arc::new(identity),
            counters: Arc::new(Counters::default()),
            shutdown: CancellationToken::new(),
            caps: Caps::default(),
            pacer: None,
            relay: None,
        }
    }
}

/// Server-side counters. Relaxed atomics: they are statistics, read only by `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub tcp_connections: AtomicU64,
    /// Connections dropped for a bad preamble, an I/O error or a peer that vanished.
    pub tcp_rejected: AtomicU64,
    pub tcp_bytes_received: AtomicU64,
    pub tcp_bytes_sent: AtomicU64,
    pub tcp_transactions: AtomicU64,
    pub udp_datagrams: AtomicU64,
    /// Datagrams dropped for bad magic, a short header or an unknown kind.
    pub udp_rejected: AtomicU64,
    pub udp_bytes_received: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_connections: AtomicU64,
    /// HTTP connections that ended in a protocol error (garbage, truncated request).
    pub http_rejected: AtomicU64,
    /// HTTP requests forwarded to a chain's next hop (`--relay`).
    pub http_relayed: AtomicU64,
    /// Chain requests refused: relaying off, a hop outside the allowed CIDRs, a loop.
    pub http_relay_refused: AtomicU64,
    /// Times a server stopped accepting because it held its [`Caps`] of connections.
    pub connection_cap_reached: AtomicU64,
}

impl Counters {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `(name, help, value)` for each counter, for the Prometheus exposition.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("zonebench_tcp_connections_total", "TCP data connections accepted", v(&self.tcp_connections)),
            ("zonebench_tcp_rejected_total", "TCP connections dropped for bad input or errors", v(&self.tcp_rejected)),
            (
                "zonebench_tcp_received_bytes_total",
                "Bytes received on TCP data connections",
                v(&self.tcp_bytes_received),
            ),
            ("zonebench_tcp_sent_bytes_total", "Bytes sent on TCP data connections", v(&self.tcp_bytes_sent)),
            ("zonebench_tcp_transactions_total", "TCP request/response exchanges answered", v(&self.tcp_transactions)),
            ("zonebench_udp_datagrams_total", "Valid UDP datagrams received", v(&self.udp_datagrams)),
            ("zonebench_udp_rejected_total", "UDP datagrams dropped as malformed", v(&self.udp_rejected)),
            (
                "zonebench_udp_received_bytes_total",
                "Bytes received in valid UDP datagrams",
                v(&self.udp_bytes_received),
            ),
            ("zonebench_http_requests_total", "HTTP requests answered", v(&self.http_requests)),
            ("zonebench_http_connections_total", "HTTP connections accepted", v(&self.http_connections)),
            ("zonebench_http_rejected_total", "HTTP connections ended by a protocol error", v(&self.http_rejected)),
            ("zonebench_http_relayed_total", "HTTP requests relayed to a chain's next hop", v(&self.http_relayed)),
            (
                "zonebench_http_relay_refused_total",
                "HTTP chain requests refused (relay off, hop not allowed, loop)",
                v(&self.http_relay_refused),
            ),
            (
                "zonebench_connection_cap_reached_total",
                "Times a data server held its most connections and stopped accepting",
                v(&self.connection_cap_reached),
            ),
        ]
    }
}

/// Addresses the servers actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub http: SocketAddr,
}

/// Binds and starts all three servers on the current runtime.
pub async fn start_all(ctx: &ServerCtx, tcp: SocketAddr, udp: SocketAddr, http: SocketAddr) -> std::io::Result<Bound> {
    Ok(Bound {
        tcp: tcp::start(tcp, ctx.clone()).await?,
        udp: udp::start(udp, ctx.clone()).await?,
        http: http::start(http, ctx.clone()).await?,
    })
}

#[cfg(test)]
mod caps {
    use super::*;

    #[test]
    fn caps_are_the_defaults_unless_the_descriptor_limit_is_lower() {
        assert_eq!(Caps::for_fd_limit(1 << 20), Caps::default());
        assert_eq!(Caps::for_fd_limit(20_000), Caps { tcp: 5000, http: 5000 });
        assert_eq!(Caps::for_fd_limit(256), Caps { tcp: 64, http: 64 });
        assert_eq!(Caps::for_fd_limit(0), Caps { tcp: MIN_CONNECTIONS, http: MIN_CONNECTIONS });
    }
}
