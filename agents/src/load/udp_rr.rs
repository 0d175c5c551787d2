//! udp-rr: netperf UDP_RR. Each of `connections` flows is a connected UDP socket doing one
//! transaction at a time: a `Request` of `request_size` bytes, the server's `Response` of
//! `response_size` bytes. The latency of every measured transaction goes into an HDR
//! histogram; `transactions_per_sec` counts the answered ones.
//!
//! - **Sizes.** A request carries the 40-byte zonebench header, so `request_size` below 40
//!   is padded to 40: the smallest request on the wire is 40 bytes (netperf's default 1 byte
//!   is 1 byte there; the comparison holds for the round trip, not the byte count). The
//!   server likewise pads answers to at least header + its id.
//! - **Loss never stalls the run.** An answer not back within `min(timeout_ms,
//!   [ANSWER_WAIT_MAX])` makes the transaction lost: counted in `lost_packets` and `errors`,
//!   and the flow moves on with the next sequence number. An answer that turns up later is
//!   recognised by its sequence number and ignored, never credited to the current
//!   transaction. 200 ms is orders of magnitude above any in-cluster round trip and keeps a
//!   lost datagram from eating a visible part of the window (netperf's UDP_RR instead waits
//!   forever). Near the end of the window the wait is cut to the time left, and a
//!   transaction cut that way is not counted either way, so the run ends on time.
//! - **Open loop.** With `qps`, each transaction goes out at its intended time and its
//!   latency counts from then (see [`super::schedule`]); a lost one still takes its wait.
//! - **Errors.** `errors` counts every failed transaction: timeouts (also `lost_packets`;
//!   an ICMP "port unreachable" only ends the wait early), failed sends, and malformed
//!   answers (which are otherwise ignored). `loss_pct` is lost / (answered + lost).
//! - **Threads.** When every flow has a thread of its own (the default up to the core count),
//!   each flow is a blocking socket on its own thread: send, then one blocking receive, two
//!   system calls per transaction and a direct wake-up, like sockperf's ping-pong. More flows
//!   than threads share per-thread tokio runtimes instead ([`super::run_workers`]).
//!   Cancellation is checked every transaction, so it takes at most one answer wait.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::schedule::{self, Schedule};
use super::udp_stream::{connected_socket, random_flow_id};
use super::{per_sec, thread_count, Phases, TestError};
use crate::histogram;
use crate::spec::{Metrics, TestKind, TestResult, TestSpec, MAX_UDP_PAYLOAD};
use crate::wire::{UdpHeader, UdpKind, UDP_HEADER_LEN};

/// Longest wait for one answer, whatever `timeout_ms` says (see the module docs).
pub const ANSWER_WAIT_MAX: Duration = Duration::from_millis(200);

pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let flows = spec.connections as usize;
    let threads = thread_count(spec, spec.connections);
    let sockets = (0..flows).map(|_| connected_socket(target)).collect::<Result<Vec<_>, _>>()?;
    let phases = Phases::new(spec);
    let cfg = FlowConfig {
        request_size: (spec.request_size as usize).clamp(UDP_HEADER_LEN, MAX_UDP_PAYLOAD as usize),
        response_size: spec.response_size,
        wait: ANSWER_WAIT_MAX.min(Duration::from_millis(spec.timeout_ms)),
        phases,
        schedule: Schedule::new(spec.qps, flows, phases.start),
    };
    let tallies = if threads >= flows {
        run_blocking(&cfg, sockets, cancel)?
    } else {
        let sockets: Mutex<Vec<Option<UdpSocket>>> = Mutex::new(sockets.into_iter().map(Some).collect());
        let (cfg, sockets) = (cfg, &sockets);
        super::run_workers(threads, flows, |flow| {
            // Taken once per flow at start-up; the lock is never on the transaction path.
            let socket = sockets.lock().ok().and_then(|mut s| s.get_mut(flow).and_then(Option::take));
            let cancel = cancel.clone();
            async move {
                let Some(socket) = socket else {
                    return Err(TestError::Failed(format!("udp-rr flow {flow} has no socket")));
                };
                async_flow(&cfg, socket, flow, &cancel).await
            }
        })?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
    };
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    Ok(summarize(spec, &cfg.phases, tallies))
}

#[derive(Clone, Copy)]
struct FlowConfig {
    request_size: usize,
    response_size: u32,
    wait: Duration,
    phases: Phases,
    schedule: Option<Schedule>,
}

/// What one flow measured.
struct Tally {
    latency: Histogram<u64>,
    answered: u64,
    lost: u64,
    errors: u64,
    /// Answers per server id; a handful of entries, searched linearly, so counting an answer
    /// never allocates (only a new id does).
    servers: Vec<(String, u64)>,
}

impl Tally {
    fn new() -> Tally {
        Tally { latency: histogram::new(), answered: 0, lost: 0, errors: 0, servers: Vec::new() }
    }

    /// An answer to the transaction that began at `began` (its intended time in the open loop).
    #[inline]
    fn answered(&mut self, p: &Phases, began: Instant, done: Instant, id: &str) {
        if !p.counts(began, done) {
            return;
        }
        histogram::record(&mut self.latency, (done - began).as_nanos() as u64);
        self.answered += 1;
        match self.servers.iter_mut().find(|(s, _)| s == id) {
            Some((_, n)) => *n += 1,
            None => self.servers.push((id.to_string(), 1)),
        }
    }

    /// A transaction that got no answer within its full wait (a wait cut by the end of the
    /// window is not a verdict, and warm-up is never counted).
    #[inline]
    fn failed(&mut self, p: &Phases, sent: Instant, wait: Duration, lost: bool) {
        if p.in_warmup(sent) || sent + wait > p.end {
            return;
        }
        self.errors += 1;
        if lost {
            self.lost += 1;
        }
    }

    fn bad_answer(&mut self, p: &Phases, at: Instant) {
        if !p.in_warmup(at) && !p.is_over(at) {
            self.errors += 1;
        }
    }
}

/// What a received datagram is to the transaction waiting for `seq`.
enum Answer<'a> {
    /// Its answer, from the server with this id.
    Ours(&'a str),
    /// An answer to an earlier, already lost transaction (or to another flow).
    Late,
    Malformed,
}

#[inline]
fn classify(datagram: &[u8], flow: u64, seq: u64) -> Answer<'_> {
    let Ok(h) = UdpHeader::decode(datagram) else { return Answer::Malformed };
    if h.kind != UdpKind::Response {
        return Answer::Malformed;
    }
    if h.flow != flow || h.seq != seq {
        return Answer::Late;
    }
    match h.server_id(datagram) {
        Ok(id) => Answer::Ours(id),
        Err(_) => Answer::Malformed,
    }
}

fn request_buffer(cfg: &FlowConfig) -> Vec<u8> {
    vec![0u8; cfg.request_size]
}

#[inline]
fn encode_request(buf: &mut [u8], cfg: &FlowConfig, flow: u64, seq: u64, now: Instant) {
    UdpHeader {
        kind: UdpKind::Request,
        flags: 0,
        id_len: 0,
        response_size: cfg.response_size,
        flow,
        seq,
        ts_ns: (now - cfg.phases.start).as_nanos() as u64,
    }
    .encode_into(buf);
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// One thread per flow, blocking sockets.
fn run_blocking(
    cfg: &FlowConfig,
    sockets: Vec<UdpSocket>,
    cancel: &CancellationToken,
) -> Result<Vec<Tally>, TestError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                std::thread::Builder::new()
                    .name(format!("zb-udp-rr-{i}"))
                    .spawn_scoped(scope, move || blocking_flow(cfg, &socket, i, cancel))
            })
            .collect::<Result<_, _>>()?;
        let mut all = Vec::new();
        for h in handles {
            all.push(h.join().map_err(|_| TestError::Failed("a udp-rr thread panicked".into()))??);
        }
        Ok(all)
    })
}

fn blocking_flow(
    cfg: &FlowConfig,
    socket: &UdpSocket,
    index: usize,
    cancel: &CancellationToken,
) -> Result<Tally, TestError> {
    let p = &cfg.phases;
    let flow = random_flow_id(index);
    let mut tally = Tally::new();
    let mut request = request_buffer(cfg);
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD as usize + 1];
    // The receive timeout is a socket option: set only when it has to change (at the end of
    // the window, or after a stray datagram), not once per transaction.
    let mut armed = cfg.wait;
    socket.set_read_timeout(Some(armed))?;
    let mut seq: u64 = 0;
    loop {
        // The open loop's intended send time, which the latency counts from.
        let intended = cfg.schedule.map(|s| s.at(index, seq));
        if let Some(at) = intended {
            schedule::sleep_until(at, cancel);
        }
        if cancel.is_cancelled() {
            return Err(TestError::Cancelled);
        }
        let now = Instant::now();
        if p.is_over(intended.unwrap_or(now)) {
            break;
        }
        // Never wait past the end of the window (1 µs floor: a zero timeout means "forever").
        let wait = cfg.wait.min(p.end.saturating_duration_since(now)).max(Duration::from_micros(1));
        if wait != armed {
            socket.set_read_timeout(Some(wait))?;
            armed = wait;
        }
        encode_request(&mut request, cfg, flow, seq, now);
        let sent = Instant::now();
        let began = intended.unwrap_or(sent);
        let deadline = sent + wait;
        if socket.send(&request).is_err() {
            // Nothing is in flight: wait out the slot rather than spin on a failing socket.
            tally.failed(p, sent, wait, false);
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            seq += 1;
            continue;
        }
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => match classify(&buf[..n], flow, seq) {
                    Answer::Ours(id) => {
                        tally.answered(p, began, Instant::now(), id);
                        break;
                    }
                    other => {
                        let now = Instant::now();
                        if let Answer::Malformed = other {
                            tally.bad_answer(p, now);
                        }
                        if now >= deadline {
                            tally.failed(p, sent, wait, true);
                            break;
                        }
                        armed = (deadline - now).max(Duration::from_micros(1));
                        socket.set_read_timeout(Some(armed))?;
                    }
                },
                Err(e) if is_timeout(&e) => {
                    tally.failed(p, sent, wait, true);
                    break;
                }
                Err(_) => {
                    // ECONNREFUSED (nothing listens) or EINTR: no answer yet; keep waiting
                    // for the rest of the slot so a dead port is not hammered.
                    let now = Instant::now();
                    if now >= deadline {
                        tally.failed(p, sent, wait, true);
                        break;
                    }
                    armed = (deadline - now).max(Duration::from_micros(1));
                    socket.set_read_timeout(Some(armed))?;
                }
            }
        }
        seq += 1;
    }
    Ok(tally)
}

/// A flow on a shared per-thread tokio runtime (more flows than threads).
async fn async_flow(
    cfg: &FlowConfig,
    socket: UdpSocket,
    index: usize,
    cancel: &CancellationToken,
) -> Result<Tally, TestError> {
    let p = &cfg.phases;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let flow = random_flow_id(index);
    let mut tally = Tally::new();
    let mut request = request_buffer(cfg);
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD as usize + 1];
    let mut seq: u64 = 0;
    loop {
        let intended = cfg.schedule.map(|s| s.at(index, seq));
        if let Some(at) = intended {
            schedule::wait_until(at, cancel).await;
        }
        if cancel.is_cancelled() {
            return Err(TestError::Cancelled);
        }
        let now = Instant::now();
        if p.is_over(intended.unwrap_or(now)) {
            break;
        }
        let wait = cfg.wait.min(p.end.saturating_duration_since(now));
        encode_request(&mut request, cfg, flow, seq, now);
        let sent = Instant::now();
        let began = intended.unwrap_or(sent);
        let deadline = sent + wait;
        if socket.send(&request).await.is_err() {
            tally.failed(p, sent, wait, false);
            tokio::time::sleep_until(deadline.into()).await;
            seq += 1;
            continue;
        }
        loop {
            match tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await {
                Ok(Ok(n)) => match classify(&buf[..n], flow, seq) {
                    Answer::Ours(id) => {
                        tally.answered(p, began, Instant::now(), id);
                        break;
                    }
                    Answer::Late => {}
                    Answer::Malformed => tally.bad_answer(p, Instant::now()),
                },
                // ECONNREFUSED and the like: no answer yet; the deadline still bounds the wait.
                Ok(Err(_)) => {}
                Err(_elapsed) => {
                    tally.failed(p, sent, wait, true);
                    break;
                }
            }
        }
        seq += 1;
    }
    Ok(tally)
}

fn summarize(spec: &TestSpec, phases: &Phases, tallies: Vec<Tally>) -> TestResult {
    let mut latency = histogram::new();
    let (mut answered, mut lost, mut errors) = (0u64, 0u64, 0u64);
    let mut servers = BTreeMap::new();
    for t in tallies {
        histogram::merge(&mut latency, &t.latency);
        answered += t.answered;
        lost += t.lost;
        errors += t.errors;
        for (id, n) in t.servers {
            *servers.entry(id).or_insert(0) += n;
        }
    }
    TestResult {
        test: TestKind::UdpRr,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            transactions_per_sec: Some(per_sec(answered, phases)),
            lost_packets: Some(lost),
            loss_pct: Some(if answered + lost == 0 { 0.0 } else { lost as f64 * 100.0 / (answered + lost) as f64 }),
            errors: Some(errors),
            ..Metrics::default()
        },
        latency: histogram::summarize(&latency),
        connect: None,
        servers,
        window: Some(phases.window()),
    }
}
