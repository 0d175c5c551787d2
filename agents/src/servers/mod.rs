//! The data-plane servers an agent runs under `serve`: TCP (sink, source, echo), UDP (sink
//! with per-flow accounting, echo) and HTTP. Each stamps the agent's identity on every
//! answer, and counts what it served and what it refused in [`Counters`] (shown by
//! `GET /metrics`), so garbage costs one connection or datagram and is never silent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::spec::Identity;

pub mod http;
pub mod tcp;
pub mod udp;

/// What every server needs: who it is, where to count, when to stop.
#[derive(Clone)]
pub struct ServerCtx {
    pub identity: Arc<Identity>,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
}

impl ServerCtx {
    pub fn new(identity: Identity) -> ServerCtx {
        ServerCtx {
            identity: Arc::new(identity),
            counters: Arc::new(Counters::default()),
            shutdown: CancellationToken::new(),
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
