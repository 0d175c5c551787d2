//! The `http` test: an HTTP/1.1 load generator in the manner of wrk (closed loop) and wrk2
//! (open loop).
//!
//! - `connections` keep-alive connections, partitioned over the test's threads (each a
//!   `current_thread` runtime, see [`run_workers`]); every connection sends `GET {path}` with
//!   a `Host` header built once from the spec, and reads each answer's body to the end.
//! - Closed loop (no `qps`): each connection sends its next request when the previous answer
//!   is complete; latency is send → last body byte.
//! - Open loop (`qps`): the connections share the rate evenly, connection `k` of `n` sending
//!   at `start + (k + i·n)/qps`, so the combined schedule is uniform. Latency is measured
//!   from the *intended* send time: a request that could not go out on time (the previous
//!   answer was late) is sent at once and its wait is part of its latency, so a server stall
//!   shows in every request scheduled during it (no coordinated omission).
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
//! byte string, answers are parsed in place from a per-thread read buffer (status line,
//! `Content-Length`, chunked `Transfer-Encoding`, close-delimited bodies, `Connection`,
//! interim 1xx answers), and nothing is allocated per request. No pipelining: one request in
//! flight per connection, as wrk without scripts and every browser.

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

use super::{per_sec, run_workers, thread_count, until, wait_until, Phases, TestError};
use crate::histogram;
use crate::spec::{Metrics, SpecError, TestKind, TestResult, TestSpec};

/// The header the agent's HTTP server names itself in.
pub const SERVER_HEADER: &[u8] = b"x-zonebench-server";
/// The `servers` key for answers that carried no [`SERVER_HEADER`].
pub const NO_SERVER_HEADER: &str = "unknown";
/// Largest answer head (status line and headers) accepted.
const MAX_HEAD: usize = 64 << 10;
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
        qps: spec.qps,
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
    Ok(format!("GET {} HTTP/1.1\r\nHost: {}\r\n{close}\r\n", spec.path, spec.target).into_bytes().into_boxed_slice())
}

/// What every connection of the test shares.
struct Plan {
    target: SocketAddr,
    request: Box<[u8]>,
    phases: Phases,
    timeout: Duration,
    connection_close: bool,
    connections: usize,
    qps: Option<f64>,
}

impl Plan {
    /// Connection `k`'s `i`-th intended send time in the open loop, `None` in the closed loop.
    #[inline]
    fn scheduled(&self, k: usize, i: u64) -> Option<Instant> {
        let qps = self.qps?;
        let slot = k as f64 + i as f64 * self.connections as f64;
        Some(self.phases.start + Duration::from_nanos((slot * 1e9 / qps) as u64))
    }
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
            let intended = match plan.scheduled(k, i) {
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
            let mut sent = if plan.qps.is_some() { Instant::now() } else { intended };
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
                    if plan.qps.is_none() && matches!(e, Failure::Connect(_) | Failure::ConnectTimeout) {
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

/// Counts answers per server id for one connection without allocating per answer: ids only
/// change when a connection lands on another server, so runs of the same id are counted
/// here and added to the thread's map when the id changes.
#[derive(Default)]
struct ServerTally {
    id: Vec<u8>,
    has_id: bool,
    count: u64,
}

impl ServerTally {
    #[inline]
    fn count(&mut self, answer: &AnswerParser, servers: &mut BTreeMap<String, u64>) {
        if self.count > 0 && self.has_id == answer.has_id && (!self.has_id || self.id == answer.id) {
            self.count += 1;
            return;
        }
        self.flush(servers);
        self.id.clear();
        self.id.extend_from_slice(&answer.id);
        self.has_id = answer.has_id;
        self.count = 1;
    }

    fn flush(&mut self, servers: &mut BTreeMap<String, u64>) {
        if self.count == 0 {
            return;
        }
        let key = if self.has_id { String::from_utf8_lossy(&self.id).into_owned() } else { NO_SERVER_HEADER.into() };
        *servers.entry(key).or_default() += self.count;
        self.count = 0;
    }
}

/// Where an answer's parsing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Head,
    /// `Content-Length` body: bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// No length given: the body ends when the server closes the connection.
    UntilClose,
    Done,
}

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line's hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the line's end.
    Extension {
        value: u64,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
}

/// Incremental HTTP/1.1 answer parser: fed the bytes as they arrive, keeps what the test
/// reports (status, body size, server id) and whether the connection may be reused. A head
/// is parsed in place when it arrives in one read (the usual case); only a head split across
/// reads is copied, into a buffer reused by every answer.
#[derive(Default)]
struct AnswerParser {
    stage: Stage,
    head: Vec<u8>,
    status: u16,
    body_bytes: u64,
    /// The server asked to close (or spoke HTTP/1.0 without keep-alive, or sent a
    /// close-delimited body).
    close: bool,
    /// The last answer's `x-zonebench-server` value; only rewritten when it changes.
    id: Vec<u8>,
    has_id: bool,
}

/// What an answer head says.
struct Head {
    status: u16,
    framing: Stage,
    close: bool,
}

impl AnswerParser {
    fn start(&mut self) {
        self.stage = Stage::Head;
        self.head.clear();
        self.body_bytes = 0;
        self.close = false;
    }

    /// Consumes `data`; `Ok(true)` when the answer is complete. Bytes beyond the answer are
    /// an error: with one request in flight the server has nothing else to say.
    fn feed(&mut self, mut data: &[u8]) -> Result<bool, &'static str> {
        while !data.is_empty() {
            match self.stage {
                Stage::Head => {
                    let used = if self.head.is_empty() {
                        match self.parse_head(data)? {
                            Some(used) => used,
                            None => {
                                self.keep_partial_head(data)?;
                                return Ok(false);
                            }
                        }
                    } else {
                        let before = self.head.len();
                        self.keep_partial_head(data)?;
                        let head = std::mem::take(&mut self.head);
                        let parsed = self.parse_head(&head);
                        self.head = head;
                        match parsed? {
                            // The head ended `used - before` bytes into this read.
                            Some(used) => {
                                self.head.clear();
                                used - before
                            }
                            None => return Ok(false),
                        }
                    };
                    data = &data[used..];
                }
                Stage::Length(left) => {
                    let n = left.min(data.len() as u64);
                    self.body_bytes += n;
                    data = &data[n as usize..];
                    self.stage = if left == n { Stage::Done } else { Stage::Length(left - n) };
                }
                Stage::Chunked(chunk) => data = self.feed_chunked(chunk, data)?,
                Stage::UntilClose => {
                    self.body_bytes += data.len() as u64;
                    data = &[];
                }
                Stage::Done => return Err("bytes after the end of the answer"),
            }
        }
        Ok(self.stage == Stage::Done)
    }

    /// The server closed the connection: fine only for a close-delimited body.
    fn end_of_stream(&mut self) -> Result<(), &'static str> {
        match self.stage {
            Stage::UntilClose => {
                self.stage = Stage::Done;
                Ok(())
            }
            Stage::Head if self.head.is_empty() => Err("connection closed before an answer"),
            _ => Err("connection closed in the middle of an answer"),
        }
    }

    fn keep_partial_head(&mut self, data: &[u8]) -> Result<(), &'static str> {
        if self.head.len() + data.len() > MAX_HEAD {
            return Err("answer head larger than 64 KiB");
        }
        self.head.extend_from_slice(data);
        Ok(())
    }

    /// Parses a complete head at the start of `buf`: `Ok(Some(len))` and the parser moved to
    /// the body, `Ok(None)` if the head is not complete yet. Interim (1xx) answers are
    /// skipped and parsing continues with what follows them.
    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut at = 0;
        loop {
            // An interim answer followed by an incomplete head is simply parsed again, with
            // the rest, on the next read.
            let Some((head, used)) = self.parse_one_head(&buf[at..])? else { return Ok(None) };
            at += used;
            if (100..200).contains(&head.status) {
                if head.status == 101 {
                    return Err("unexpected 101 Switching Protocols");
                }
                continue;
            }
            self.status = head.status;
            self.close = head.close;
            self.stage = head.framing;
            return Ok(Some(at));
        }
    }

    fn parse_one_head(&mut self, buf: &[u8]) -> Result<Option<(Head, usize)>, &'static str> {
        let mut lines = Lines { buf, at: 0 };
        let Some(status_line) = lines.next() else {
            return if buf.len() > MAX_HEAD { Err("answer head larger than 64 KiB") } else { Ok(None) };
        };
        let (http10, status) = parse_status_line(status_line)?;
        let mut close = http10;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut other_coding = false;
        let mut id_seen = false;
        loop {
            let Some(line) = lines.next() else {
                return if buf.len() > MAX_HEAD { Err("answer head larger than 64 KiB") } else { Ok(None) };
            };
            if line.is_empty() {
                break;
            }
            let colon = line.iter().position(|&b| b == b':').ok_or("a header line without ':'")?;
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_decimal(value).ok_or("bad Content-Length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding decides the framing (RFC 9112 §6.3).
                let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
                chunked = last.eq_ignore_ascii_case(b"chunked");
                other_coding = !chunked;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            } else if name.eq_ignore_ascii_case(SERVER_HEADER) {
                id_seen = true;
                if !self.has_id || self.id != value {
                    self.id.clear();
                    self.id.extend_from_slice(value);
                }
            }
        }
        let used = lines.at;
        if (100..200).contains(&status) {
            return Ok(Some((Head { status, framing: Stage::Done, close: false }, used)));
        }
        self.has_id = id_seen;
        let framing = if status == 204 || status == 304 {
            Stage::Done
        } else if chunked {
            Stage::Chunked(Chunk::Size { value: 0, digits: 0 })
        } else if other_coding {
            close = true;
            Stage::UntilClose
        } else {
            match length {
                Some(0) => Stage::Done,
                Some(n) => Stage::Length(n),
                None => {
                    close = true;
                    Stage::UntilClose
                }
            }
        };
        Ok(Some((Head { status, framing, close }, used)))
    }

    /// Advances through a chunked body; returns what is left of `data` (empty unless the
    /// body ended inside it).
    fn feed_chunked<'a>(&mut self, mut chunk: Chunk, mut data: &'a [u8]) -> Result<&'a [u8], &'static str> {
        while let Some((&b, rest)) = data.split_first() {
            if let Chunk::Data(left) = chunk {
                let n = left.min(data.len() as u64);
                self.body_bytes += n;
                data = &data[n as usize..];
                chunk = if left == n { Chunk::DataCr } else { Chunk::Data(left - n) };
                continue;
            }
            data = rest;
            chunk = match (chunk, b) {
                (Chunk::Size { value, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).map_or(0, u64::from);
                    Chunk::Size { value: value * 16 + d, digits: digits + 1 }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err("bad chunk size"),
                (Chunk::Size { value, .. }, b';' | b' ' | b'\t') => Chunk::Extension { value },
                (Chunk::Size { value, .. } | Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Size { value, .. } | Chunk::Extension { value } | Chunk::SizeLf { value }, b'\n') => {
                    if value == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(value)
                    }
                }
                (Chunk::Extension { value }, _) => Chunk::Extension { value },
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size { value: 0, digits: 0 },
                (Chunk::TrailerStart, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLf, b'\n') => {
                    self.stage = Stage::Done;
                    return Ok(data);
                }
                (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                _ => return Err("bad chunked framing"),
            };
        }
        self.stage = Stage::Chunked(chunk);
        Ok(data)
    }
}

/// `HTTP/1.x SSS reason` → (is HTTP/1.0, status).
fn parse_status_line(line: &[u8]) -> Result<(bool, u16), &'static str> {
    if line.len() < 12 || !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return Err("not an HTTP/1.x status line");
    }
    let http10 = line[7] == b'0';
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' || line.get(12).is_some_and(|&b| b != b' ') {
        return Err("bad status code");
    }
    let status = code.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    Ok((http10, status))
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_space(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_space(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Lines of a head, ending in LF with an optional CR before it; `None` when no complete
/// line is left.
struct Lines<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.buf[self.at..];
        let lf = rest.iter().position(|&b| b == b'\n')?;
        self.at += lf + 1;
        let line = &rest[..lf];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    const PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nx-zonebench-server: web-a\r\ncontent-length: 3\r\ndate: x\r\n\r\nok\n";
    const CHUNKED: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n";

    /// Feeds `bytes` in pieces of `step`; returns the parser once the answer is complete.
    fn parse_in_steps(bytes: &[u8], step: usize) -> AnswerParser {
        let mut p = AnswerParser::default();
        p.start();
        let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let done = p.feed(piece).unwrap();
            assert_eq!(done, i == pieces.len() - 1, "step {step}, piece {i}");
        }
        p
    }

    #[test]
    fn an_answer_split_anywhere_parses_the_same() {
        for step in 1..=PLAIN.len() {
            let p = parse_in_steps(PLAIN, step);
            assert_eq!((p.status, p.body_bytes, p.close, p.has_id), (200, 3, false, true));
            assert_eq!(p.id, b"web-a");
        }
        for step in 1..=CHUNKED.len() {
            let p = parse_in_steps(CHUNKED, step);
            assert_eq!((p.status, p.body_bytes, p.has_id), (404, 21, false), "step {step}");
        }
    }

    #[test]
    fn interim_answers_are_skipped() {
        let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n".to_vec();
        bytes.extend_from_slice(PLAIN);
        for step in [1, 7, bytes.len()] {
            let p = parse_in_steps(&bytes, step);
            assert_eq!((p.status, p.body_bytes), (200, 3));
        }
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let mut p = AnswerParser::default();
        p.start();
        assert!(!p.feed(b"HTTP/1.0 200 OK\r\n\r\nsome body").unwrap());
        p.end_of_stream().unwrap();
        assert_eq!((p.body_bytes, p.close), (9, true));
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        let mut p = AnswerParser::default();
        p.start();
        assert!(!p.feed(&PLAIN[..PLAIN.len() - 1]).unwrap());
        assert!(p.end_of_stream().is_err());
        p.start();
        assert_eq!(p.end_of_stream(), Err("connection closed before an answer"));
    }

    #[test]
    fn close_and_keep_alive_are_read_from_the_head() {
        let cases: [(&[u8], bool); 4] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", false),
        ];
        for (bytes, close) in cases {
            let mut p = AnswerParser::default();
            p.start();
            assert!(p.feed(bytes).unwrap());
            assert_eq!(p.close, close, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        let bad: [&[u8]; 7] = [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
        ];
        for bytes in bad {
            let mut p = AnswerParser::default();
            p.start();
            assert!(p.feed(bytes).is_err(), "{}", String::from_utf8_lossy(bytes));
        }
        let mut p = AnswerParser::default();
        p.start();
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert!(!p.feed(b"HTTP/1.1 200 OK\r\nx: ").unwrap());
        assert!(p.feed(&huge).is_err());
    }

    #[test]
    fn answers_are_tallied_per_server_id() {
        let mut servers = BTreeMap::new();
        let mut tally = ServerTally::default();
        let a = b"HTTP/1.1 200 OK\r\nx-zonebench-server: a\r\ncontent-length: 0\r\n\r\n";
        let b = b"HTTP/1.1 200 OK\r\nX-Zonebench-Server:  b \r\ncontent-length: 0\r\n\r\n";
        let none = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let mut p = AnswerParser::default();
        for bytes in [&a[..], a, b, none, none, a] {
            p.start();
            assert!(p.feed(bytes).unwrap());
            tally.count(&p, &mut servers);
        }
        tally.flush(&mut servers);
        let want: BTreeMap<String, u64> = [("a".into(), 3), ("b".into(), 1), (NO_SERVER_HEADER.into(), 2)].into();
        assert_eq!(servers, want);
    }

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

    #[test]
    fn open_loop_connections_interleave_into_one_uniform_schedule() {
        let mut spec = TestSpec::new(TestKind::Http, "127.0.0.1:1");
        spec.qps = Some(1000.0);
        let phases = Phases::new(&spec);
        let plan = Plan {
            target: "127.0.0.1:1".parse().unwrap(),
            request: Box::new([]),
            phases,
            timeout: Duration::from_secs(1),
            connection_close: false,
            connections: 4,
            qps: spec.qps,
        };
        let mut times: Vec<Duration> = (0..4)
            .flat_map(|k| (0..25).map(move |i| (k, i)))
            .map(|(k, i)| plan.scheduled(k, i).unwrap() - phases.start)
            .collect();
        times.sort();
        for (n, t) in times.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(n as u64), "slot {n}");
        }
    }
}
