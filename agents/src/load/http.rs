//! The `http` test: an HTTP/1.1 load generator in the manner of wrk (closed loop) and wrk2
//! (open loop).
//!
//! - `connections` keep-alive connections, partitioned over the test's threads (each a
//!   `current_thread` runtime, see [`run_workers`]); every connection sends `GET {path}` with
//!   a `Host` header built once from the spec, and reads each answer's body to the end.
//! - Closed loop (no `qps`): each connection sends its next request when the previous answer
//!   is complete; latency is send → last body byte.
//! - Open loop (`qps`): the connections share the rate on one uniform schedule and latency
//!   is measured from each request's *intended* send time, so a server stall shows in every
//!   request scheduled during it (no coordinated omission); see [`super::schedule`].
//! - `connection_close`: every request carries `Connection: close` on a new TCP connection;
//!   connecting is part of the latency, and connect times are also reported as `connect`.
//! - A kept-alive connection that the server closed while it idled (the request fails before
//!   any answer byte) is reconnected and the request resent once, as browsers and hyper's
//!   pool do; the reconnect is part of that request's latency. Connections the server closes
//!   with `Connection: close` (e.g. nginx every 1000 requests) are simply reopened.
//!
//! Reported over the measured window (warm-up excluded; a request counts if it was due at or
//! after the window's start and completed before its end): `requests_per_sec`,
//! `throughput_bps` (body bits/s), `errors` (refused or failed connects, I/O errors, malformed
//! or truncated answers, answers slower than `timeout_ms`), `status_counts`, `latency`,
//! `connect` and `servers`: answers per `x-zonebench-server` value, answers without that
//! header counted under [`NO_SERVER_HEADER`]. A target that refuses the very first connection
//! fails the test at once with a connect error rather than measuring nothing for its
//! duration.
//!
//! # Why a hand-written HTTP/1.1 client
//! hyper's client (oha's `client::conn::http1` way: `SendRequest` plus a spawned connection
//! task) reached only 0.7–0.8× wrk's requests/s on one core against nginx: every request
//! builds a `Request` and its `HeaderMap`, crosses a channel to the connection task and back,
//! and parses answers into `HeaderMap`s. The load generator must not be the bottleneck it
//! measures, so this module speaks HTTP/1.1 itself, like wrk: a request is one pre-built
//! byte string, answers are parsed in place from a per-thread read buffer (`AnswerParser`,
//! in a module of its own, `http_answer`: httparse for the head, our own body framing), and
//! nothing is allocated per request. No pipelining: one request in flight per connection, as
//! wrk without scripts and every browser.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::http_answer::{AnswerParser, ServerTally};
pub use super::http_answer::{NO_SERVER_HEADER, SERVER_HEADER};
use super::schedule::Schedule;
use super::{per_sec, run_workers, thread_count, until, wait_until, Phases, TestError};
use crate::histogram;
use crate::spec::{Metrics, SpecError, TestKind, TestResult, TestSpec};

/// Per-thread read buffer: answers are parsed in place, so one buffer serves every
/// connection of a thread (wrk's layout).
const READ_BUF: usize = 64 << 10;
/// Pause after a failed connect in the closed loop, so a refusing server is not hammered and
/// `errors` stays a meaningful count.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Runs the test; see the module documentation.
pub fn run(spec: &TestSpec, target: SocketAddr, cancel: &CancellationToken) -> Result<TestResult, TestError> {
    let request = build_request(spec)?;
    let timeout = Duration::from_millis(spec.timeout_ms);
    // One probe connection, so a wrong port fails now with the OS's reason instead of
    // after the full duration with nothing but an error count.
    std::net::TcpStream::connect_timeout(&target, timeout).map_err(|source| TestError::Connect { target, source })?;

    let connections = spec.connections as usize;
    let threads = thread_count(spec, spec.connections);
    let phases = Phases::new(spec);
    let plan = Arc::new(Plan {
        target,
        request,
        phases,
        timeout,
        connection_close: spec.connection_close,
        connections,
        schedule: Schedule::new(spec.qps, connections, phases.start),
    });
    let parts = run_workers(threads, threads, |t| {
        let plan = plan.clone();
        let cancel = cancel.clone();
        async move { run_thread(plan, t, threads, cancel).await }
    })?;

    let mut total = ThreadStats::new();
    for part in parts {
        total.merge(part?);
    }
    if let Some(first) = &total.first_error {
        tracing::warn!("http test against {target}: {} errors in the measured window; first: {first}", total.errors);
    }
    let achieved = per_sec(total.requests, &phases);
    if let Some(qps) = spec.qps {
        // wrk2's caveat: an open loop that cannot keep up reports latency for a rate it did
        // not reach; say so (the achieved rate is in the result).
        if achieved < 0.9 * qps {
            tracing::warn!("http test against {target}: achieved {achieved:.1} of the {qps} requests/s asked");
        }
    }
    let status_counts: BTreeMap<String, u64> =
        total.status.iter().enumerate().filter(|(_, &n)| n > 0).map(|(code, &n)| (format!("{code:03}"), n)).collect();
    let secs = phases.measured_ns() as f64 / 1e9;
    Ok(TestResult {
        test: TestKind::Http,
        target: spec.target.clone(),
        duration_ns: phases.measured_ns(),
        metrics: Metrics {
            requests_per_sec: Some(achieved),
            throughput_bps: Some(total.body_bytes as f64 * 8.0 / secs),
            errors: Some(total.errors),
            status_counts: Some(status_counts),
            ..Metrics::default()
        },
        latency: histogram::summarize(&total.latency),
        connect: histogram::summarize(&total.connect),
        servers: total.servers,
        window: Some(phases.window()),
    })
}

/// The request every connection sends, built once. Refuses a path or target that would
/// break the request line or inject headers.
fn build_request(spec: &TestSpec) -> Result<Box<[u8]>, TestError> {
    let bad = |field: &'static str, value: &str| SpecError {
        field,
        message: format!("{value:?} contains a space or control character, which HTTP/1.1 does not allow there"),
    };
    if spec.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("path", &spec.path).into());
    }
    if spec.target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("target", &spec.target).into());
    }
    let close = if spec.connection_close { "Connection: close\r\n" } else { "" };
    // The hops were checked as IP:PORT literals by the spec's validation.
    let relay = if spec.relay.is_empty() {
        String::new()
    } else {
        format!("{}: {}\r\n", crate::spec::RELAY_HEADER, spec.relay.join(","))
    };
    Ok(format!("GET {} HTTP/1.1\r\nHost: {}\r\n{relay}{close}\r\n", spec.path, spec.target)
        .into_bytes()
        .into_boxed_slice())
}

/// What every connection of the test shares.
struct Plan {
    target: SocketAddr,
    request: Box<[u8]>,
    phases: Phases,
    timeout: Duration,
    connection_close: bool,
    connections: usize,
    /// The open loop's send times; `None` in the closed loop.
    schedule: Option<Schedule>,
}

/// One thread's share of the results; merged across threads at the end.
struct ThreadStats {
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    requests: u64,
    body_bytes: u64,
    errors: u64,
    /// Indexed by status code (always three digits, so below 1000).
    status: Box<[u64]>,
    servers: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            latency: histogram::new(),
            connect: histogram::new(),
            requests: 0,
            body_bytes: 0,
            errors: 0,
            status: vec![0; 1000].into_boxed_slice(),
            servers: BTreeMap::new(),
            first_error: None,
        }
    }

    fn error(&mut self, e: &Failure) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn merge(&mut self, other: ThreadStats) {
        histogram::merge(&mut self.latency, &other.latency);
        histogram::merge(&mut self.connect, &other.connect);
        self.requests += other.requests;
        self.body_bytes += other.body_bytes;
        self.errors += other.errors;
        for (mine, theirs) in self.status.iter_mut().zip(other.status.iter()) {
            *mine += theirs;
        }
        for (id, n) in other.servers {
            *self.servers.entry(id).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// A thread's state shared by its connections. Only borrowed between awaits.
struct Local {
    stats: RefCell<ThreadStats>,
    read_buf: RefCell<Box<[u8]>>,
}

async fn run_thread(
    plan: Arc<Plan>,
    thread: usize,
    threads: usize,
    cancel: CancellationToken,
) -> Result<ThreadStats, TestError> {
    let local = Rc::new(Local {
        stats: RefCell::new(ThreadStats::new()),
        read_buf: RefCell::new(vec![0; READ_BUF].into_boxed_slice()),
    });
    let tasks: Vec<_> = (thread..plan.connections)
        .step_by(threads)
        .map(|k| tokio::task::spawn_local(drive(plan.clone(), k, local.clone(), cancel.clone())))
        .collect();
    for task in tasks {
        task.await.map_err(|e| TestError::Failed(format!("an http connection task failed: {e}")))?;
    }
    let local =
        Rc::try_unwrap(local).map_err(|_| TestError::Failed("http connection tasks outlived their thread".into()))?;
    Ok(local.stats.into_inner())
}

/// Why one request did not get a complete answer; each is one `errors`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection failed or closed before any byte of the answer.
    #[error("connection closed before an answer: {0}")]
    Unanswered(io::Error),
    #[error("I/O: {0}")]
    Io(io::Error),
    #[error("no complete answer within the timeout")]
    Timeout,
    #[error("malformed answer: {0}")]
    Protocol(&'static str),
}

/// One connection's request loop, until the window ends or the test is cancelled.
async fn drive(plan: Arc<Plan>, k: usize, local: Rc<Local>, cancel: CancellationToken) {
    let phases = plan.phases;
    let mut conn: Option<TcpStream> = None;
    let mut answer = AnswerParser::default();
    let mut tally = ServerTally::default();
    // One timer per connection, re-armed only when it fires early (see `within`).
    let mut timer = Box::pin(tokio::time::sleep_until((phases.start + plan.timeout).into()));
    let work = async {
        let mut i: u64 = 0;
        loop {
            let intended = match plan.schedule.map(|s| s.at(k, i)) {
                Some(at) => {
                    wait_until(at).await;
                    at
                }
                None => Instant::now(),
            };
            i += 1;
            if phases.is_over(intended) {
                return;
            }
            let measured = !phases.in_warmup(intended);
            // In the closed loop on an open connection the request goes out now: one clock read
            // serves both as intended and as actual send time.
            let mut sent = if plan.schedule.is_some() { Instant::now() } else { intended };
            // A kept-alive connection the server closed while it idled fails before any answer
            // byte; like browsers and hyper's pool, resend once on a new connection (the
            // reconnect is part of this request's latency).
            let mut reused = conn.is_some();
            // Recorded only with the request it served, so `connect` and `latency` describe
            // the same requests (a connect at the edge of the window belongs to a request
            // that may not count).
            let mut connect_ns = None;
            let outcome = loop {
                let stream = match &mut conn {
                    Some(stream) => stream,
                    None => {
                        let began = Instant::now();
                        let connected =
                            within(&mut timer, began + plan.timeout, connect(plan.target), Failure::ConnectTimeout)
                                .await;
                        let done = Instant::now();
                        match connected {
                            Ok(stream) => {
                                connect_ns = Some(nanos(done - began));
                                sent = done;
                                conn.insert(stream)
                            }
                            Err(e) => break Err(e),
                        }
                    }
                };
                let exchanged = within(
                    &mut timer,
                    sent + plan.timeout,
                    exchange(stream, &plan.request, &mut answer, &local.read_buf),
                    Failure::Timeout,
                )
                .await;
                match exchanged {
                    Err(Failure::Unanswered(_)) if reused => {
                        conn = None;
                        reused = false;
                    }
                    other => break other,
                }
            };
            let done = Instant::now();
            match outcome {
                Ok(()) => {
                    if phases.counts(intended, done) {
                        let mut stats = local.stats.borrow_mut();
                        histogram::record(&mut stats.latency, nanos(done - intended));
                        if let Some(ns) = connect_ns {
                            histogram::record(&mut stats.connect, ns);
                        }
                        stats.requests += 1;
                        stats.body_bytes += answer.body_bytes;
                        stats.status[usize::from(answer.status)] += 1;
                        tally.count(&answer, &mut stats.servers);
                    }
                    if answer.close || plan.connection_close {
                        conn = None;
                    }
                }
                Err(e) => {
                    if measured {
                        local.stats.borrow_mut().error(&e);
                    }
                    conn = None;
                    if plan.schedule.is_none() && matches!(e, Failure::Connect(_) | Failure::ConnectTimeout) {
                        tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                    }
                }
            }
        }
    };
    until(phases.end, &cancel, work).await;
    tally.flush(&mut local.stats.borrow_mut().servers);
}

async fn connect(target: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(target).await.map_err(Failure::Connect)?;
    // Requests are single small writes; Nagle would hold them for the server's delayed ACK.
    stream.set_nodelay(true).map_err(Failure::Connect)?;
    Ok(stream)
}

/// Runs `fut` until `deadline`. The connection's one timer is only re-armed when it fires
/// before the current deadline (deadlines only move forward), so a request costs no timer
/// operation: with a 2 s timeout and 50 µs answers the timer is touched once per 2 s.
async fn within<T>(
    timer: &mut Pin<Box<Sleep>>,
    deadline: Instant,
    fut: impl Future<Output = Result<T, Failure>>,
    on_timeout: Failure,
) -> Result<T, Failure> {
    let mut fut = pin!(fut);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return r,
            () = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return Err(on_timeout);
                }
                timer.as_mut().reset(deadline.into());
            }
        }
    }
}

/// Sends the request and reads the whole answer into `answer`.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    answer: &mut AnswerParser,
    read_buf: &RefCell<Box<[u8]>>,
) -> Result<(), Failure> {
    stream.write_all(request).await.map_err(Failure::Unanswered)?;
    answer.start();
    let mut got_bytes = false;
    poll_fn(|cx| loop {
        // Borrowed only within this poll: the buffer is free again whenever this task waits.
        let mut buf = read_buf.borrow_mut();
        let mut rb = ReadBuf::new(&mut buf[..]);
        // `poll_read` (unlike `try_read`) clears the socket's readiness after a short read,
        // which saves the EAGAIN read syscall per answer.
        if let Err(e) = ready!(Pin::new(&mut *stream).poll_read(cx, &mut rb)) {
            return Poll::Ready(Err(if got_bytes { Failure::Io(e) } else { Failure::Unanswered(e) }));
        }
        let data = rb.filled();
        if data.is_empty() {
            return Poll::Ready(match answer.end_of_stream() {
                Ok(()) => Ok(()),
                Err(_) if !got_bytes => Err(Failure::Unanswered(io::ErrorKind::UnexpectedEof.into())),
                Err(e) => Err(Failure::Protocol(e)),
            });
        }
        got_bytes = true;
        if answer.feed(data).map_err(Failure::Protocol)? {
            return Poll::Ready(Ok(()));
        }
    })
    .await
}

#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_request_is_built_once_and_refuses_injection() {
        let mut spec = TestSpec::new(TestKind::Http, "web:8080");
        spec.path = "/?size=10".into();
        assert_eq!(&*build_request(&spec).unwrap(), b"GET /?size=10 HTTP/1.1\r\nHost: web:8080\r\n\r\n");
        spec.connection_close = true;
        assert!(build_request(&spec).unwrap().ends_with(b"Connection: close\r\n\r\n"));
        spec.path = "/ HTTP/1.1\r\nX-Evil: 1".into();
        assert!(matches!(build_request(&spec), Err(TestError::Spec(e)) if e.field == "path"));
    }
}
