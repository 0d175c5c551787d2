//! udp-stream: iperf3 `-u`. Sends datagrams of `size` bytes at `rate_bps` to a zonebench UDP
//! server, then asks the server what arrived and reports loss as the receiver counted it.
//!
//! - **Sizes and rate.** `size` is the whole UDP payload, header included (default 1460 B,
//!   iperf3's fallback; at least the 40-byte header). `rate_bps` counts those payload bits
//!   (default 1 Mbit/s like iperf3; 0 = as fast as the socket takes them). With several
//!   `parallel` streams, each is its own flow on its own thread and socket, and the rate
//!   applies per stream, as iperf3's `-b` does with `-P` (at most [`MAX_STREAMS`]).
//! - **Pacing.** Datagram `n` is due at `start + n × interval`, scheduled from the start so
//!   timer lateness never accumulates: each wake-up sends every datagram that is due (a
//!   burst when behind), then sleeps until the next one is. High rates are therefore
//!   reachable with coarse timers, and the average rate is exact.
//! - **Warm-up.** Datagrams due before the measured window carry [`FLAG_WARMUP`] and the
//!   server ignores them; measured datagrams are numbered 0, 1, 2… A send that fails (e.g.
//!   `ECONNREFUSED` after an ICMP error, `ENOBUFS`) is counted in `errors`, its slot is
//!   skipped and its sequence number reused, so the numbering stays gap-free on the sender.
//! - **Report.** After the window, the sender waits [`DRAIN`] for stragglers, then sends a
//!   `StatsRequest` (seq = datagrams sent) and waits for the `StatsReply`, retrying
//!   [`STATS_TRIES`] times every [`STATS_TRY_WAIT`] (both within `timeout_ms`). Without a
//!   reply the test fails: loss cannot be reported without the receiver's count.
//!
//! Metrics: `throughput_bps` is the receiver's byte count × 8 over the measured window (what
//! arrived, as iperf3's receiver line reports); `sent_packets` is the sender's count,
//! `received_packets` the receiver's (duplicates excluded); `lost_packets` = sent − received,
//! which, unlike iperf3's sequence-gap count, includes tail loss; `out_of_order_packets`
//! and `jitter_ns` (RFC 3550, the mean over streams as iperf3 sums them) are the receiver's;
//! `servers` maps the answering server's id to the datagrams it received.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::{Phases, TestError};
use crate::spec::{Metrics, SpecError, TestKind, TestResult, TestSpec};
use crate::wire::{FlowStats, UdpHeader, UdpKind, FLAG_WARMUP, UDP_HEADER_LEN};

/// iperf3's datagram size when it cannot learn the path MTU.
pub const DEFAULT_SIZE: u32 = 1460;
/// How far a sender may fall behind its schedule before it stops catching up.
const MAX_LAG: Duration = Duration::from_millis(10);
/// iperf3's default UDP rate.
pub const DEFAULT_RATE_BPS: u64 = 1_000_000;
/// Time allowed after the window for datagrams still in flight before asking for stats.
pub const DRAIN: Duration = Duration::from_millis(200);
pub const STATS_TRIES: u32 = 5;
pub const STATS_TRY_WAIT: Duration = Duration::from_millis(200);
/// Most parallel streams (iperf3 allows 128 too); each one is a thread.
pub const MAX_STREAMS: u32 = 128;
/// Socket buffer asked for: deep enough to absorb a catch-up burst without blocking.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Longest sleep between checks for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(20);
/// Datagrams sent back to back between checks for cancellation (checking takes a lock).
const CANCEL_CHECK_EVERY: u32 = 1024;

pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let size = spec.size.unwrap_or(DEFAULT_SIZE) as usize;
    if size < UDP_HEADER_LEN {
        return Err(SpecError {
            field: "size",
            message: format!("{size} bytes is below the {UDP_HEADER_LEN}-byte zonebench UDP header"),
        }
        .into());
    }
    if spec.parallel > MAX_STREAMS {
        return Err(SpecError {
            field: "parallel",
            message: format!("udp-stream runs one thread per stream: at most {MAX_STREAMS} streams"),
        }
        .into());
    }
    let rate_bps = spec.rate_bps.unwrap_or(DEFAULT_RATE_BPS);
    let sockets = (0..spec.parallel).map(|_| connected_socket(target)).collect::<Result<Vec<_>, _>>()?;
    let phases = Phases::new(spec);
    let timeout = Duration::from_millis(spec.timeout_ms);
    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                std::thread::Builder::new().name(format!("zb-udp-stream-{i}")).spawn_scoped(scope, move || {
                    let sender = Sender::new(socket, size, rate_bps, phases, i);
                    sender.run(cancel, timeout, target)
                })
            })
            .collect::<Result<_, _>>()?;
        let mut all = Vec::with_capacity(spec.parallel as usize);
        for h in handles {
            all.push(h.join().map_err(|_| TestError::Failed("a udp-stream sender thread panicked".into()))??);
        }
        Ok::<_, TestError>(all)
    })?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    Ok(summarize(spec, &phases, &outcomes))
}

/// A UDP socket connected to `target` (so only its answers arrive, and ICMP errors show up as
/// send/receive errors), with deep buffers.
pub(crate) fn connected_socket(target: SocketAddr) -> Result<UdpSocket, TestError> {
    let err = |source: io::Error| TestError::Connect { target, source };
    let socket = Socket::new(Domain::for_address(target), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Best effort: the kernel caps both at net.core.{w,r}mem_max.
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    socket.connect(&target.into()).map_err(err)?;
    Ok(socket.into())
}

/// A flow id that differs between streams, runs and hosts: std's per-instance random hash
/// keys, mixed with the clock and the stream index.
pub(crate) fn random_flow_id(stream: usize) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(stream);
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// What one stream saw.
#[derive(Debug)]
struct Outcome {
    sent: u64,
    errors: u64,
    stats: FlowStats,
    server: String,
}

struct Sender {
    socket: UdpSocket,
    buf: Vec<u8>,
    /// Time between datagrams; `None` sends as fast as possible.
    interval_ns: Option<f64>,
    phases: Phases,
    flow: u64,
}

impl Sender {
    fn new(socket: UdpSocket, size: usize, rate_bps: u64, phases: Phases, stream: usize) -> Sender {
        let interval_ns = (rate_bps > 0).then(|| (size as f64 * 8.0) * 1e9 / rate_bps as f64);
        Sender { socket, buf: vec![0u8; size], interval_ns, phases, flow: random_flow_id(stream) }
    }

    fn run(mut self, cancel: &CancellationToken, timeout: Duration, target: SocketAddr) -> Result<Outcome, TestError> {
        let (sent, errors) = self.send_all(cancel)?;
        self.pause(DRAIN.min(timeout), cancel)?;
        let (server, stats) = self.ask_for_stats(sent, timeout, cancel, target)?;
        Ok(Outcome { sent, errors, stats, server })
    }

    /// The paced send loop. Returns (measured datagrams sent, measured send errors).
    fn send_all(&mut self, cancel: &CancellationToken) -> Result<(u64, u64), TestError> {
        let p = self.phases;
        let mut slot: u64 = 0;
        let (mut warm_seq, mut seq, mut errors) = (0u64, 0u64, 0u64);
        let mut since_check = 0u32;
        loop {
            let now = Instant::now();
            let mut due = match self.interval_ns {
                Some(interval) => p.start + Duration::from_nanos((slot as f64 * interval) as u64),
                None => now,
            };
            // A sender more than MAX_LAG behind its schedule (a rate above what it can reach,
            // iperf3's `-b 0` asked as 100G) does not chase the backlog: its schedule restarts
            // at now, so it sends as fast as it can and every datagram is counted in the
            // phase it is sent in.
            if let Some(interval) = self.interval_ns {
                if now > due + MAX_LAG {
                    slot = ((now - p.start).as_nanos() as f64 / interval) as u64;
                    due = now;
                }
            }
            if due >= p.end || p.is_over(now) {
                break;
            }
            if due > now {
                if cancel.is_cancelled() {
                    return Err(TestError::Cancelled);
                }
                std::thread::sleep((due - now).min(CANCEL_POLL));
                continue;
            }
            since_check += 1;
            if since_check >= CANCEL_CHECK_EVERY {
                since_check = 0;
                if cancel.is_cancelled() {
                    return Err(TestError::Cancelled);
                }
            }
            let warm = p.in_warmup(now);
            UdpHeader {
                kind: UdpKind::Data,
                flags: if warm { FLAG_WARMUP } else { 0 },
                id_len: 0,
                response_size: 0,
                flow: self.flow,
                seq: if warm { warm_seq } else { seq },
                ts_ns: (now - p.start).as_nanos() as u64,
            }
            .encode_into(&mut self.buf);
            match (self.socket.send(&self.buf), warm) {
                (Ok(_), true) => warm_seq += 1,
                (Ok(_), false) => seq += 1,
                (Err(_), true) => {}
                (Err(_), false) => errors += 1,
            }
            slot += 1;
        }
        Ok((seq, errors))
    }

    fn pause(&self, d: Duration, cancel: &CancellationToken) -> Result<(), TestError> {
        let until = Instant::now() + d;
        loop {
            if cancel.is_cancelled() {
                return Err(TestError::Cancelled);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(CANCEL_POLL));
        }
    }

    /// Asks the server for this flow's [`FlowStats`]; returns the server id with them.
    fn ask_for_stats(
        &self,
        sent: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        target: SocketAddr,
    ) -> Result<(String, FlowStats), TestError> {
        let started = Instant::now();
        let per_try = STATS_TRY_WAIT.min(timeout);
        let mut request = [0u8; UDP_HEADER_LEN];
        let mut answer = [0u8; 2048];
        let mut last_error: Option<io::Error> = None;
        let mut tries = 0;
        while tries < STATS_TRIES && started.elapsed() < timeout {
            tries += 1;
            UdpHeader {
                kind: UdpKind::StatsRequest,
                flags: 0,
                id_len: 0,
                response_size: 0,
                flow: self.flow,
                seq: sent,
                ts_ns: (Instant::now() - self.phases.start).as_nanos() as u64,
            }
            .encode_into(&mut request);
            if let Err(e) = self.socket.send(&request) {
                last_error = Some(e);
            }
            let try_ends = (Instant::now() + per_try).min(started + timeout);
            loop {
                if cancel.is_cancelled() {
                    return Err(TestError::Cancelled);
                }
                let now = Instant::now();
                if now >= try_ends {
                    break;
                }
                self.socket.set_read_timeout(Some((try_ends - now).min(CANCEL_POLL)))?;
                match self.socket.recv(&mut answer) {
                    Ok(n) => {
                        let datagram = &answer[..n];
                        let Ok(h) = UdpHeader::decode(datagram) else { continue };
                        if h.kind != UdpKind::StatsReply || h.flow != self.flow || h.seq != sent {
                            continue; // not a report on this flow (every try asks the same, so any try's answer is)
                        }
                        let Ok(id) = h.server_id(datagram) else { continue };
                        let Ok(stats) = FlowStats::decode(&datagram[UDP_HEADER_LEN + id.len()..]) else { continue };
                        return Ok((id.to_string(), stats));
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // e.g. ECONNREFUSED: nothing listens there. Reported once; keep waiting.
                        last_error = Some(e);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        let why = last_error.map_or_else(String::new, |e| format!(" (last error: {e})"));
        Err(TestError::Failed(format!(
            "no receiver report from {target} after {tries} stats requests over {:?}{why}: loss cannot be \
             reported without the receiver's count; is a zonebench UDP server listening there?",
            started.elapsed()
        )))
    }
}

fn summarize(spec: &TestSpec, phases: &Phases, outcomes: &[Outcome]) -> TestResult {
    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    let received: u64 = outcomes.iter().map(|o| o.stats.received).sum();
    let lost: u64 = outcomes.iter().map(|o| o.sent.saturating_sub(o.stats.received)).sum();
    let bytes: u64 = outcomes.iter().map(|o| o.stats.bytes).sum();
    let jitter = outcomes.iter().map(|o| o.stats.jitter_ns).sum::<u64>() / outcomes.len().max(1) as u64;
    let mut servers = BTreeMap::new();
    for o in outcomes {
        *servers.entry(o.server.clone()).or_insert(0) += o.stats.received;
    }
    let secs = phases.measured_ns() as f64 / 1e9;
    TestResult {
        test: TestKind::UdpStream,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            throughput_bps: Some(bytes as f64 * 8.0 / secs),
            sent_packets: Some(sent),
            received_packets: Some(received),
            lost_packets: Some(lost),
            loss_pct: Some(if sent == 0 { 0.0 } else { (lost as f64 * 100.0 / sent as f64).min(100.0) }),
            out_of_order_packets: Some(outcomes.iter().map(|o| o.stats.out_of_order).sum()),
            jitter_ns: Some(jitter),
            errors: Some(outcomes.iter().map(|o| o.errors).sum()),
            ..Metrics::default()
        },
        latency: None,
        connect: None,
        servers,
        window: Some(phases.window()),
    }
}
