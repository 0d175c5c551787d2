//! tcp-stream, iperf3-like bulk throughput: `parallel` streams, each one connection that
//! writes `size`-byte writes (default 128 KiB, iperf3's `-l`) as fast as TCP takes them into
//! the server's sink, or with `reverse` reads what the server's source writes (iperf3 `-R`).
//!
//! What is counted:
//! - `throughput_bps`: the bytes each stream moved between `measure_start` and `end`, summed
//!   over streams, over the measured window. Each stream samples its byte count at its first
//!   write (or read) boundary after `measure_start` and stops at its first one after `end`,
//!   so the window is exact to one write. Forward, the figure is the sender's (as iperf3's
//!   sender line); at the end the client half-closes and the sink reports the bytes it
//!   received, and a mismatch with what was written counts an error. Reverse, it is the
//!   receiver's.
//! - `retransmits`: forward only, the client's `TCP_INFO` `tcpi_total_retrans` delta over the
//!   measured window, summed over streams. In reverse the sender is the server, whose
//!   counters the client cannot read, so the field is absent rather than a misleading 0.
//! - `errors`: streams that failed (reset, timeout, a short sink count). A failed stream
//!   stops; what it moved until then is still counted.
//! - `servers`: for streams this counts *streams* per server id (one per stream that reached
//!   the measured window), not bytes.
//!
//! Connection set-up happens before the clock starts. A stream alone on its thread (the
//! default while streams <= cores) uses a blocking socket, a plain write or read loop like
//! iperf3's; see `tcp_client.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::tcp_client::{Conn, Gate, Limit, OpError, Servers, Waiter};
use super::{run_workers, thread_count, TestError};
use crate::spec::{Metrics, TestKind, TestResult, TestSpec, MAX_ID_LEN};
use crate::wire::{Preamble, TcpMode};

/// iperf3's default TCP write size.
pub const DEFAULT_SIZE: u32 = 128 << 10;

struct Test {
    target: SocketAddr,
    spec: TestSpec,
    cancel: CancellationToken,
    blocking: bool,
    size: usize,
    gate: Gate,
}

#[derive(Default)]
struct StreamOut {
    setup: Option<TestError>,
    /// Bytes moved in the measured window.
    bytes: u64,
    retransmits: Option<u64>,
    errors: u64,
    servers: Servers,
}

pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let flows = spec.parallel.max(1) as usize;
    let threads = thread_count(spec, spec.parallel);
    let test = Arc::new(Test {
        target,
        spec: spec.clone(),
        cancel: cancel.clone(),
        blocking: threads >= flows,
        size: spec.size.unwrap_or(DEFAULT_SIZE).max(1) as usize,
        gate: Gate::new(flows, spec),
    });
    let outs = run_workers(threads, flows, |flow| stream_main(test.clone(), flow))?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    let phases = test.gate.phases();
    let mut bytes = 0u64;
    let mut errors = 0u64;
    let mut retransmits = (!spec.reverse).then_some(0u64);
    let mut servers = BTreeMap::new();
    for out in outs {
        if let Some(e) = out.setup {
            return Err(e);
        }
        bytes += out.bytes;
        errors += out.errors;
        if let (Some(sum), Some(r)) = (retransmits.as_mut(), out.retransmits) {
            *sum += r;
        }
        out.servers.merge_into(&mut servers);
    }
    let phases = phases.ok_or_else(|| TestError::Failed("tcp-stream never started its clock".into()))?;
    let secs = phases.measured_ns() as f64 / 1e9;
    Ok(TestResult {
        test: TestKind::TcpStream,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            throughput_bps: Some(bytes as f64 * 8.0 / secs),
            retransmits,
            errors: Some(errors),
            ..Metrics::default()
        },
        latency: None,
        connect: None,
        servers,
        window: Some(phases.window()),
    })
}

async fn open(t: &Test, w: &mut Waiter, servers: &mut Servers) -> Result<(Conn, usize), OpError> {
    let limit = Limit::new(Instant::now(), Duration::from_millis(t.spec.timeout_ms), None);
    let mut conn = Conn::connect(t.target, t.blocking, w, limit).await?;
    conn.slice_writes()?;
    let preamble = if t.spec.reverse {
        Preamble { mode: TcpMode::Source, request_size: 0, response_size: t.size as u32 }
    } else {
        Preamble { mode: TcpMode::Sink, request_size: 0, response_size: 0 }
    };
    conn.write_all(&preamble.encode(), w, limit).await?;
    let mut hello = [0u8; 5 + MAX_ID_LEN];
    let len = conn.read_hello(&mut hello, w, limit).await?;
    let server = servers.index(&hello[5..5 + len])?;
    Ok((conn, server))
}

async fn stream_main(t: Arc<Test>, flow: usize) -> StreamOut {
    let mut out = StreamOut::default();
    let mut w = Waiter::new(t.cancel.clone());
    let setup = open(&t, &mut w, &mut out.servers).await;
    let Some(phases) = t.gate.ready(setup.is_ok()).await else {
        out.setup = setup.err().map(|e| e.into_setup_error(t.target));
        return out;
    };
    let Ok((mut conn, server)) = setup else { return out };

    let timeout = Duration::from_millis(t.spec.timeout_ms);
    // Written pages, not the zero page, so the kernel copies from ordinary memory.
    let mut buf = vec![0x5a_u8; t.size];
    // Everything moved since the connection opened, and its value (and the retransmit count)
    // when the measured window opened.
    let mut total = 0u64;
    let mut at_start: Option<(u64, Option<u64>)> = None;
    let mut failed: Option<OpError> = None;
    let mut pos = 0usize;
    loop {
        let now = Instant::now();
        if at_start.is_none() && !phases.in_warmup(now) {
            at_start = Some((total, conn.total_retrans()));
        }
        if phases.is_over(now) || w.is_cancelled() {
            break;
        }
        let limit = Limit::new(now, timeout, Some(phases.end));
        let moved = if t.spec.reverse {
            match conn.read_some(&mut buf, &mut w, limit).await {
                Ok(0) => Err(OpError::Closed),
                r => r,
            }
        } else {
            // Partial writes are counted as they happen, so the sink's total must match.
            let r = conn.write_some(&buf[pos..], &mut w, limit).await;
            if let Ok(n) = r {
                pos = (pos + n) % buf.len();
            }
            r
        };
        match moved {
            Ok(n) => total += n as u64,
            Err(OpError::Ended | OpError::Cancelled) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some((base, base_retrans)) = at_start {
        out.bytes = total - base;
        out.servers.add(server, 1);
        if !t.spec.reverse {
            out.retransmits = conn.total_retrans().zip(base_retrans).map(|(now, then)| now.saturating_sub(then));
        }
    }
    if let Some(e) = failed {
        tracing::debug!("tcp-stream {flow} failed: {e}");
        out.errors += 1;
        return out;
    }
    if !t.spec.reverse && !w.is_cancelled() {
        if let Err(e) = confirm_sink(&mut conn, total, &mut w, timeout).await {
            tracing::debug!("tcp-stream {flow}: {e}");
            out.errors += 1;
        }
    }
    // Reverse: dropping the connection is how the client tells the source to stop.
    out
}

/// Half-closes and checks that the sink received every byte written.
async fn confirm_sink(conn: &mut Conn, written: u64, w: &mut Waiter, timeout: Duration) -> Result<(), OpError> {
    conn.shutdown_write()?;
    let mut total = [0u8; 8];
    conn.read_exact(&mut total, w, Limit::new(Instant::now(), timeout, None)).await?;
    if u64::from_be_bytes(total) != written {
        return Err(OpError::Protocol("the sink received a different byte count than was written"));
    }
    Ok(())
}
