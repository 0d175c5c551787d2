//! tcp-rr, netperf's TCP_RR: `connections` flows, each one persistent connection in echo
//! mode doing one transaction at a time with no think time: write `request_size` bytes, read
//! the `response_size`-byte answer in full.
//!
//! Each transaction's latency runs from just before the write to just after the last answer
//! byte arrived (full round trip, not sockperf's default RTT/2), and is recorded only when
//! it starts after the warm-up and ends inside the measured window. Connection set-up is not
//! counted (netperf's definition): every flow connects, sends its preamble and reads the
//! server's hello before the clock starts.
//!
//! With `qps` the flows run an open loop instead (see [`super::schedule`]): each
//! transaction starts at its intended time, and its latency counts from then.
//!
//! A failed transaction (timeout after `timeout_ms`, reset, a server that closed or broke
//! the protocol) counts one error and the flow reconnects after a short pause; errors are
//! counted when the failed transaction started inside the measured window. `servers` counts
//! measured transactions per server id, learnt from each connection's hello.
//!
//! A flow alone on its thread uses a blocking socket (one `send`, one `recv` per
//! transaction, as netperf and sockperf do); see `tcp_client.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::schedule::Schedule;
use super::tcp_client::{Conn, FlowOut, Gate, Limit, OpError, PerThread, Servers, Waiter, ERROR_BACKOFF, RECV_BUF_MAX};
use super::{per_sec, run_workers, thread_count, Phases, TestError};
use crate::histogram;
use crate::spec::{Metrics, TestKind, TestResult, TestSpec, MAX_ID_LEN};
use crate::wire::{Preamble, TcpMode};

struct Test {
    target: SocketAddr,
    spec: TestSpec,
    cancel: CancellationToken,
    blocking: bool,
    gate: Gate,
    latency: PerThread<Histogram<u64>>,
}

pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let flows = spec.connections.max(1) as usize;
    let threads = thread_count(spec, spec.connections);
    let test = Arc::new(Test {
        target,
        spec: spec.clone(),
        cancel: cancel.clone(),
        blocking: threads >= flows,
        gate: Gate::new(flows, spec),
        latency: PerThread::new(threads, histogram::new),
    });
    let outs = run_workers(threads, flows, |flow| flow_main(test.clone(), flow))?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    let (transactions, errors, servers) = FlowOut::sum(outs)?;
    let test = Arc::into_inner(test).ok_or_else(|| TestError::Failed("a tcp-rr flow outlived its test".into()))?;
    let phases = test.gate.phases().ok_or_else(|| TestError::Failed("tcp-rr never started its clock".into()))?;
    let mut latency = histogram::new();
    for h in test.latency.into_inner() {
        histogram::merge(&mut latency, &h);
    }
    Ok(TestResult {
        test: TestKind::TcpRr,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            transactions_per_sec: Some(per_sec(transactions, &phases)),
            errors: Some(errors),
            ..Metrics::default()
        },
        latency: histogram::summarize(&latency),
        connect: None,
        servers,
        window: Some(phases.window()),
    })
}

/// A connected echo flow: the connection and the index of its server in the flow's tally.
type Open = (Conn, usize);

async fn open(t: &Test, w: &mut Waiter, servers: &mut Servers, end: Option<Instant>) -> Result<Open, OpError> {
    let limit = Limit::new(Instant::now(), Duration::from_millis(t.spec.timeout_ms), end);
    let mut conn = Conn::connect(t.target, t.blocking, w, limit).await?;
    conn.set_nodelay()?;
    if t.spec.request_size as usize > RECV_BUF_MAX {
        conn.slice_writes()?;
    }
    let preamble =
        Preamble { mode: TcpMode::Echo, request_size: t.spec.request_size, response_size: t.spec.response_size };
    conn.write_all(&preamble.encode(), w, limit).await?;
    let mut hello = [0u8; 5 + MAX_ID_LEN];
    let len = conn.read_hello(&mut hello, w, limit).await?;
    let server = servers.index(&hello[5..5 + len])?;
    Ok((conn, server))
}

fn in_window(phases: &Phases, t: Instant) -> bool {
    !phases.in_warmup(t) && !phases.is_over(t)
}

async fn flow_main(t: Arc<Test>, flow: usize) -> FlowOut {
    let mut out = FlowOut::default();
    let mut w = Waiter::new(t.cancel.clone());
    let setup = open(&t, &mut w, &mut out.servers, None).await;
    let Some(phases) = t.gate.ready(setup.is_ok()).await else {
        out.setup = setup.err().map(|e| e.into_setup_error(t.target));
        return out;
    };
    let Ok((mut conn, mut server)) = setup else { return out };

    let timeout = Duration::from_millis(t.spec.timeout_ms);
    let request = vec![0u8; t.spec.request_size as usize];
    let response_size = t.spec.response_size as usize;
    let mut answer = vec![0u8; (response_size + 1).min(RECV_BUF_MAX)];
    let schedule = Schedule::new(t.spec.qps, t.spec.connections.max(1) as usize, phases.start);
    let mut i: u64 = 0;
    loop {
        // The transaction's start: now in the closed loop, its intended time in the open one.
        let t0 = match schedule {
            Some(s) => {
                let at = s.at(flow, i);
                i += 1;
                w.until(at, t.blocking).await;
                at
            }
            None => Instant::now(),
        };
        if phases.is_over(t0) || w.is_cancelled() {
            break;
        }
        // The timeout runs from the actual send (the open loop may be behind its schedule);
        // the closed loop's t0 is that already, so it reads the clock once.
        let sent = if schedule.is_some() { Instant::now() } else { t0 };
        let limit = Limit::new(sent, timeout, Some(phases.end));
        let done = match conn.write_all(&request, &mut w, limit).await {
            Ok(()) => conn.read_answer(response_size, &mut answer, &mut w, limit).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                let t1 = Instant::now();
                if phases.counts(t0, t1) {
                    histogram::record(&mut t.latency.get(flow), (t1 - t0).as_nanos() as u64);
                    out.transactions += 1;
                    out.servers.add(server, 1);
                }
            }
            Err(OpError::Cancelled | OpError::Ended) => break,
            Err(e) => {
                if in_window(&phases, t0) {
                    out.errors += 1;
                }
                tracing::debug!("tcp-rr flow {flow}: {e}; reconnecting");
                match reconnect(&t, &mut w, &mut out, &phases).await {
                    Some((c, s)) => (conn, server) = (c, s),
                    None => break,
                }
            }
        }
    }
    out
}

/// Reconnects after a pause, counting failed attempts; `None` when the test ended meanwhile.
async fn reconnect(t: &Test, w: &mut Waiter, out: &mut FlowOut, phases: &Phases) -> Option<Open> {
    loop {
        w.pause(ERROR_BACKOFF, t.blocking).await;
        let started = Instant::now();
        if phases.is_over(started) || w.is_cancelled() {
            return None;
        }
        match open(t, w, &mut out.servers, Some(phases.end)).await {
            Ok(open) => return Some(open),
            Err(OpError::Cancelled | OpError::Ended) => return None,
            Err(e) => {
                if in_window(phases, started) {
                    out.errors += 1;
                }
                tracing::debug!("tcp-rr reconnect to {}: {e}", t.target);
            }
        }
    }
}
