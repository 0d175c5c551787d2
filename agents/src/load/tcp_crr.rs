//! tcp-crr, netperf's TCP_CRR: every transaction is a new connection. `connections` flows
//! each loop: connect, write the preamble and the request in one write, read the server's
//! hello and the `response_size`-byte answer, close.
//!
//! - `connect`: time from just before `connect` to its return (the handshake as the client
//!   sees it);
//! - `latency`: the whole transaction, connect to close;
//! - both are recorded for transactions that start after the warm-up and end in the measured
//!   window, so their counts are equal; `transactions_per_sec` counts the same transactions.
//!
//! **Close.** The client closes with a plain `close` (FIN), after it has read every byte, so
//! no RST is sent and the server sees a clean end. The client closes first, so its side of
//! each connection spends TIME_WAIT holding a (source port, target) pair. Linux reuses those
//! for new outgoing connections when `net.ipv4.tcp_tw_reuse` allows (2, the default, allows
//! it on loopback only); otherwise a long fast run can exhaust the ephemeral port range
//! (`net.ipv4.ip_local_port_range`, ~28k ports by default, at 60 s of TIME_WAIT: ~470
//! connections/s sustained). A connect that then fails with `EADDRNOTAVAIL` counts one error
//! and the flow pauses briefly before trying again, so exhaustion shows up as errors and a
//! lower rate, never as a hot loop. `SO_LINGER` 0 (RST close) would avoid TIME_WAIT but
//! measures a close real clients do not do and makes the server see resets.
//!
//! Before the clock starts every flow makes one untimed transaction, which also checks the
//! target is a zonebench TCP server (a refused connect is a clear error at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::tcp_client::{Conn, FlowOut, Gate, Limit, OpError, PerThread, Servers, Waiter, ERROR_BACKOFF, RECV_BUF_MAX};
use super::{per_sec, run_workers, thread_count, TestError};
use crate::histogram;
use crate::spec::{Metrics, TestKind, TestResult, TestSpec, MAX_ID_LEN};
use crate::wire::{self, Preamble, TcpMode, PREAMBLE_LEN};

struct Test {
    target: SocketAddr,
    spec: TestSpec,
    cancel: CancellationToken,
    blocking: bool,
    gate: Gate,
    hists: PerThread<Hists>,
    /// The preamble followed by the request: one write per transaction.
    first_write: Vec<u8>,
}

struct Hists {
    latency: Histogram<u64>,
    connect: Histogram<u64>,
}

pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let flows = spec.connections.max(1) as usize;
    let threads = thread_count(spec, spec.connections);
    let preamble = Preamble { mode: TcpMode::Echo, request_size: spec.request_size, response_size: spec.response_size };
    let mut first_write = Vec::with_capacity(PREAMBLE_LEN + spec.request_size as usize);
    first_write.extend_from_slice(&preamble.encode());
    first_write.resize(PREAMBLE_LEN + spec.request_size as usize, 0);
    let test = Arc::new(Test {
        target,
        spec: spec.clone(),
        cancel: cancel.clone(),
        blocking: threads >= flows,
        gate: Gate::new(flows, spec),
        hists: PerThread::new(threads, || Hists { latency: histogram::new(), connect: histogram::new() }),
        first_write,
    });
    let outs = run_workers(threads, flows, |flow| flow_main(test.clone(), flow))?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    let (transactions, errors, servers) = FlowOut::sum(outs)?;
    let test = Arc::into_inner(test).ok_or_else(|| TestError::Failed("a tcp-crr flow outlived its test".into()))?;
    let phases = test.gate.phases().ok_or_else(|| TestError::Failed("tcp-crr never started its clock".into()))?;
    let mut latency = histogram::new();
    let mut connect = histogram::new();
    for h in test.hists.into_inner() {
        histogram::merge(&mut latency, &h.latency);
        histogram::merge(&mut connect, &h.connect);
    }
    Ok(TestResult {
        test: TestKind::TcpCrr,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            transactions_per_sec: Some(per_sec(transactions, &phases)),
            errors: Some(errors),
            ..Metrics::default()
        },
        latency: histogram::summarize(&latency),
        connect: histogram::summarize(&connect),
        servers,
        window: Some(phases.window()),
    })
}

/// One connect-request-response-close; returns when the connect returned and the server's
/// index in the flow's tally.
async fn transaction(
    t: &Test,
    w: &mut Waiter,
    buf: &mut [u8],
    servers: &mut Servers,
    limit: Limit,
) -> Result<(Instant, usize), OpError> {
    let mut conn = Conn::connect(t.target, t.blocking, w, limit).await?;
    let connected = Instant::now();
    if t.first_write.len() > RECV_BUF_MAX {
        conn.slice_writes()?;
    }
    conn.write_all(&t.first_write, w, limit).await?;
    // The hello and the answer arrive back to back; read them through one buffer.
    let mut got = 0;
    let hello_len = loop {
        let n = conn.read_some(&mut buf[got..], w, limit).await?;
        if n == 0 {
            return Err(OpError::Closed);
        }
        got += n;
        if got >= 5 {
            let mut head = [0u8; 5];
            head.copy_from_slice(&buf[..5]);
            let id_len = wire::decode_hello_head(&head).map_err(OpError::Hello)?;
            if got >= 5 + id_len {
                break 5 + id_len;
            }
        }
    };
    let server = servers.index(&buf[5..hello_len])?;
    let response_size = t.spec.response_size as usize;
    let early = got - hello_len;
    let left = response_size.checked_sub(early).ok_or(OpError::Protocol("answer longer than asked for"))?;
    if left > 0 {
        conn.read_answer(left, buf, w, limit).await?;
    }
    drop(conn);
    Ok((connected, server))
}

async fn flow_main(t: Arc<Test>, flow: usize) -> FlowOut {
    let mut out = FlowOut::default();
    let mut w = Waiter::new(t.cancel.clone());
    let timeout = Duration::from_millis(t.spec.timeout_ms);
    // Room for the longest hello plus one answer (or RECV_BUF_MAX of it), plus a spare byte
    // so reads come back short when the socket is drained.
    let mut buf = vec![0u8; 5 + MAX_ID_LEN + (t.spec.response_size as usize).min(RECV_BUF_MAX) + 1];
    let probe = transaction(&t, &mut w, &mut buf, &mut out.servers, Limit::new(Instant::now(), timeout, None)).await;
    let Some(phases) = t.gate.ready(probe.is_ok()).await else {
        out.setup = probe.err().map(|e| e.into_setup_error(t.target));
        return out;
    };
    loop {
        let t0 = Instant::now();
        if phases.is_over(t0) || w.is_cancelled() {
            break;
        }
        let limit = Limit::new(t0, timeout, Some(phases.end));
        match transaction(&t, &mut w, &mut buf, &mut out.servers, limit).await {
            Ok((connected, server)) => {
                let t1 = Instant::now();
                if phases.counts(t0, t1) {
                    let mut h = t.hists.get(flow);
                    histogram::record(&mut h.latency, (t1 - t0).as_nanos() as u64);
                    histogram::record(&mut h.connect, (connected - t0).as_nanos() as u64);
                    drop(h);
                    out.transactions += 1;
                    out.servers.add(server, 1);
                }
            }
            Err(OpError::Cancelled | OpError::Ended) => break,
            Err(e) => {
                if !phases.in_warmup(t0) {
                    out.errors += 1;
                }
                tracing::debug!("tcp-crr flow {flow}: {e}");
                w.pause(ERROR_BACKOFF, t.blocking).await;
            }
        }
    }
    out
}
