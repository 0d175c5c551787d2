//! What the three TCP load generators share: the client connection ([`Conn`]), bounded
//! waits that notice cancellation ([`Waiter`]), the start gate that starts the clock once
//! every flow is connected ([`Gate`]), per-thread histograms ([`PerThread`]) and the tally of
//! answers per server id ([`Servers`]).
//!
//! A flow that has its thread to itself uses a blocking socket: a ping-pong is then one
//! `send` and one `recv` that sleeps in the kernel, the same two syscalls netperf and sockperf
//! make, where an event loop adds an `epoll_wait` and a scheduler pass per transaction. Flows
//! that share a thread use tokio sockets on that thread's `current_thread` runtime. Blocking
//! sockets wait in slices of [`SLICE`] (`SO_RCVTIMEO`/`SO_SNDTIMEO`), tokio ones race a
//! per-flow ticker of the same period, so either notices cancellation, the end of the test
//! and per-operation timeouts within a slice, at no cost per operation.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::{Phases, TestError};
use crate::spec::{TestSpec, MAX_ID_LEN};
use crate::wire::{self, WireError};

/// How often a waiting operation looks at cancellation, the end of the test and its timeout.
pub(crate) const SLICE: Duration = Duration::from_millis(50);
/// Pause after a failed operation before the next attempt, so an unreachable server or
/// exhausted ephemeral ports (`EADDRNOTAVAIL`) cost a few errors per second, not a hot loop.
pub(crate) const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// Largest receive buffer a flow keeps; larger answers are read in pieces.
pub(crate) const RECV_BUF_MAX: usize = 64 << 10;

/// Why an operation did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error("cancelled")]
    Cancelled,
    /// The test's measured window closed while the operation waited; not an error.
    #[error("the test ended")]
    Ended,
    #[error("no answer within the timeout")]
    TimedOut,
    #[error("the server closed the connection")]
    Closed,
    #[error("the server broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("bad hello: {0}")]
    Hello(WireError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl OpError {
    /// The test error for a flow that could not even be set up.
    pub(crate) fn into_setup_error(self, target: SocketAddr) -> TestError {
        match self {
            OpError::Cancelled | OpError::Ended => TestError::Cancelled,
            OpError::Io(source) => TestError::Connect { target, source },
            OpError::TimedOut => TestError::Connect {
                target,
                source: io::Error::new(io::ErrorKind::TimedOut, "no answer within the timeout"),
            },
            OpError::Closed | OpError::Protocol(_) | OpError::Hello(_) => {
                TestError::Failed(format!("{target} does not answer like a zonebench TCP server: {self}"))
            }
        }
    }
}

/// When a waiting operation gives up: at `timeout_at` (an error) or, if set, at `end` (the
/// measured window closed: not an error).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub timeout_at: Instant,
    pub end: Option<Instant>,
}

impl Limit {
    pub(crate) fn new(start: Instant, timeout: Duration, end: Option<Instant>) -> Limit {
        Limit { timeout_at: start + timeout, end }
    }
}

/// A flow's view of cancellation and time, and (for tokio sockets) its ticker.
pub(crate) struct Waiter {
    cancel: CancellationToken,
    tick: Option<Pin<Box<Sleep>>>,
}

impl Waiter {
    pub(crate) fn new(cancel: CancellationToken) -> Waiter {
        Waiter { cancel, tick: None }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn check(&self, limit: Limit) -> Result<(), OpError> {
        if self.cancel.is_cancelled() {
            return Err(OpError::Cancelled);
        }
        let now = Instant::now();
        if limit.end.is_some_and(|end| now >= end) {
            return Err(OpError::Ended);
        }
        if now >= limit.timeout_at {
            return Err(OpError::TimedOut);
        }
        Ok(())
    }

    /// Awaits `fut`, checking the limits every [`SLICE`]. The ticker is created once per flow
    /// and re-armed only when it fires, so a fast operation pays one poll of an armed timer.
    async fn io<T>(&mut self, fut: impl Future<Output = io::Result<T>>, limit: Limit) -> Result<T, OpError> {
        let mut fut = std::pin::pin!(fut);
        loop {
            let tick = self.tick.get_or_insert_with(|| Box::pin(tokio::time::sleep(SLICE)));
            tokio::select! {
                biased;
                r = &mut fut => return r.map_err(OpError::Io),
                () = tick.as_mut() => tick.as_mut().reset((Instant::now() + SLICE).into()),
            }
            self.check(limit)?;
        }
    }

    /// Waits until `at` (the open loop's next send time), cut short by cancellation:
    /// precisely, by spinning the last moments, as the latency counts from `at`.
    pub(crate) async fn until(&mut self, at: Instant, blocking: bool) {
        if blocking {
            super::schedule::sleep_until(at, &self.cancel);
        } else {
            super::schedule::wait_until(at, &self.cancel).await;
        }
    }

    /// Sleeps `d` (cut short by cancellation).
    pub(crate) async fn pause(&mut self, d: Duration, blocking: bool) {
        if blocking {
            // The flow owns this thread; a few ms of sleep delays nobody else.
            if !self.cancel.is_cancelled() {
                std::thread::sleep(d);
            }
        } else {
            tokio::select! {
                () = self.cancel.cancelled() => {}
                () = tokio::time::sleep(d) => {}
            }
        }
    }
}

/// A client connection: blocking when the flow owns its thread, tokio when flows share one.
pub(crate) enum Conn {
    Blocking(std::net::TcpStream),
    Async(tokio::net::TcpStream),
}

fn retry_blocking(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl Conn {
    /// Connects to `target` within `limit`. A blocking socket gets `SO_SNDTIMEO` before
    /// `connect` (Linux bounds a blocking connect by it) and `SO_RCVTIMEO` = [`SLICE`].
    pub(crate) async fn connect(
        target: SocketAddr,
        blocking: bool,
        w: &mut Waiter,
        limit: Limit,
    ) -> Result<Conn, OpError> {
        if !blocking {
            return w.io(tokio::net::TcpStream::connect(target), limit).await.map(Conn::Async);
        }
        w.check(limit)?;
        let sock = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
        let left = limit.timeout_at.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        sock.set_write_timeout(Some(left))?;
        if let Err(e) = sock.connect(&target.into()) {
            // A connect cut by SO_SNDTIMEO reports EINPROGRESS.
            if e.raw_os_error() == Some(libc::EINPROGRESS) || retry_blocking(&e) {
                return Err(OpError::TimedOut);
            }
            return Err(e.into());
        }
        sock.set_read_timeout(Some(SLICE))?;
        Ok(Conn::Blocking(sock.into()))
    }

    /// For connections that may block on writes (streams, large requests): a blocking socket
    /// then waits in slices too.
    pub(crate) fn slice_writes(&self) -> io::Result<()> {
        match self {
            Conn::Blocking(s) => s.set_write_timeout(Some(SLICE)),
            Conn::Async(_) => Ok(()),
        }
    }

    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Conn::Blocking(s) => s.set_nodelay(true),
            Conn::Async(s) => s.set_nodelay(true),
        }
    }

    /// Writes some of `buf`; returns how much.
    pub(crate) async fn write_some(&mut self, buf: &[u8], w: &mut Waiter, limit: Limit) -> Result<usize, OpError> {
        match self {
            Conn::Blocking(s) => loop {
                match s.write(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if retry_blocking(&e) => w.check(limit)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            },
            Conn::Async(s) => w.io(s.write(buf), limit).await,
        }
    }

    pub(crate) async fn write_all(&mut self, mut buf: &[u8], w: &mut Waiter, limit: Limit) -> Result<(), OpError> {
        while !buf.is_empty() {
            let n = self.write_some(buf, w, limit).await?;
            if n == 0 {
                return Err(OpError::Closed);
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Reads what is available into `buf` (waiting for at least one byte); 0 means EOF.
    pub(crate) async fn read_some(&mut self, buf: &mut [u8], w: &mut Waiter, limit: Limit) -> Result<usize, OpError> {
        match self {
            Conn::Blocking(s) => loop {
                match s.read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if retry_blocking(&e) => w.check(limit)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            },
            Conn::Async(s) => w.io(s.read(buf), limit).await,
        }
    }

    pub(crate) async fn read_exact(&mut self, buf: &mut [u8], w: &mut Waiter, limit: Limit) -> Result<(), OpError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_some(&mut buf[got..], w, limit).await?;
            if n == 0 {
                return Err(OpError::Closed);
            }
            got += n;
        }
        Ok(())
    }

    /// Reads exactly `len` answer bytes whose content does not matter, through `buf` (which
    /// may be shorter). `buf` should be longer than a whole answer when it can: a read that
    /// comes back short tells tokio the socket is drained, sparing a read that would fail
    /// with `EAGAIN` before the next wait. A server that sends more than `len` is an error.
    pub(crate) async fn read_answer(
        &mut self,
        len: usize,
        buf: &mut [u8],
        w: &mut Waiter,
        limit: Limit,
    ) -> Result<(), OpError> {
        let mut left = len;
        while left > 0 {
            let n = self.read_some(buf, w, limit).await?;
            if n == 0 {
                return Err(OpError::Closed);
            }
            left = left.checked_sub(n).ok_or(OpError::Protocol("answer longer than asked for"))?;
        }
        Ok(())
    }

    /// Reads the server's hello; returns the id's length, the id being `buf[5..5 + len]`.
    pub(crate) async fn read_hello(
        &mut self,
        buf: &mut [u8; 5 + MAX_ID_LEN],
        w: &mut Waiter,
        limit: Limit,
    ) -> Result<usize, OpError> {
        let (head, rest) = buf.split_at_mut(5);
        self.read_exact(head, w, limit).await?;
        let mut fixed = [0u8; 5];
        fixed.copy_from_slice(head);
        let len = wire::decode_hello_head(&fixed).map_err(OpError::Hello)?;
        self.read_exact(&mut rest[..len], w, limit).await?;
        Ok(len)
    }

    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Blocking(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Async(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
        }
    }

    /// Segments this connection retransmitted so far (TCP_INFO), when the kernel says.
    pub(crate) fn total_retrans(&self) -> Option<u64> {
        match self {
            Conn::Blocking(s) => crate::sys::tcp_total_retrans(s).ok(),
            Conn::Async(s) => crate::sys::tcp_total_retrans(s).ok(),
        }
    }
}

/// Starts the clock once every flow has tried to set up, so connection set-up never eats
/// into the warm-up or the measured window, and all flows share one [`Phases`].
pub(crate) struct Gate {
    barrier: tokio::sync::Barrier,
    failed: AtomicBool,
    phases: OnceLock<Phases>,
    spec: TestSpec,
}

impl Gate {
    pub(crate) fn new(flows: usize, spec: &TestSpec) -> Gate {
        Gate {
            barrier: tokio::sync::Barrier::new(flows.max(1)),
            failed: AtomicBool::new(false),
            phases: OnceLock::new(),
            spec: spec.clone(),
        }
    }

    /// Every flow calls this exactly once, after its set-up (`ok` or not). Returns the shared
    /// clock, or `None` when any flow failed: a test with missing flows would mislead.
    pub(crate) async fn ready(&self, ok: bool) -> Option<Phases> {
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.barrier.wait().await;
        if self.failed.load(Ordering::SeqCst) {
            return None;
        }
        Some(*self.phases.get_or_init(|| Phases::new(&self.spec)))
    }

    /// The clock, once it started.
    pub(crate) fn phases(&self) -> Option<Phases> {
        self.phases.get().copied()
    }
}

/// One `T` per load thread, so thousands of flows share a few histograms (each is ~270 KB).
/// Flows on one thread never run at once, so the locks are uncontended.
pub(crate) struct PerThread<T> {
    slots: Vec<Mutex<T>>,
}

impl<T> PerThread<T> {
    pub(crate) fn new(threads: usize, make: impl Fn() -> T) -> PerThread<T> {
        PerThread { slots: (0..threads.max(1)).map(|_| Mutex::new(make())).collect() }
    }

    /// The slot of `flow`'s thread (`run_workers` puts flow `f` on thread `f % threads`; any
    /// other layout would only add contention, never a wrong count).
    #[inline]
    pub(crate) fn get(&self, flow: usize) -> MutexGuard<'_, T> {
        self.slots[flow % self.slots.len()].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn into_inner(self) -> impl Iterator<Item = T> {
        self.slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Answers counted per server id, without allocating per answer: ids are looked up by bytes
/// (the last one first) and a `String` is made only for a new id.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    ids: Vec<(String, u64)>,
    last: usize,
}

impl Servers {
    /// The index of `id` (added with count 0 if new).
    pub(crate) fn index(&mut self, id: &[u8]) -> Result<usize, OpError> {
        if self.ids.get(self.last).is_some_and(|(s, _)| s.as_bytes() == id) {
            return Ok(self.last);
        }
        let i = match self.ids.iter().position(|(s, _)| s.as_bytes() == id) {
            Some(i) => i,
            None => {
                let s = std::str::from_utf8(id).map_err(|_| OpError::Hello(WireError::BadId))?;
                self.ids.push((s.to_string(), 0));
                self.ids.len() - 1
            }
        };
        self.last = i;
        Ok(i)
    }

    #[inline]
    pub(crate) fn add(&mut self, index: usize, n: u64) {
        if let Some((_, c)) = self.ids.get_mut(index) {
            *c += n;
        }
    }

    /// Adds the non-zero counts into `into`.
    pub(crate) fn merge_into(self, into: &mut BTreeMap<String, u64>) {
        for (id, n) in self.ids {
            if n > 0 {
                *into.entry(id).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_counted_by_id_bytes() {
        let mut s = Servers::default();
        let a = s.index(b"echo-a").unwrap();
        let b = s.index(b"echo-b").unwrap();
        s.add(a, 2);
        s.add(b, 0);
        let again = s.index(b"echo-a").unwrap();
        assert_eq!(again, a);
        s.add(again, 1);
        assert!(s.index(&[0xff, 0xfe]).is_err());
        let mut out = BTreeMap::new();
        s.merge_into(&mut out);
        assert_eq!(out, BTreeMap::from([("echo-a".to_string(), 3)]));
    }

    #[test]
    fn a_refused_connect_is_an_io_error_naming_the_target() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for blocking in [true, false] {
            let mut w = Waiter::new(CancellationToken::new());
            let limit = Limit::new(Instant::now(), Duration::from_secs(1), None);
            let err = rt.block_on(Conn::connect(port, blocking, &mut w, limit)).err().unwrap();
            let err = err.into_setup_error(port);
            assert!(matches!(err, TestError::Connect { .. }), "{err}");
            assert!(err.to_string().contains(&port.to_string()), "{err}");
        }
    }
}

/// What one request/response flow (tcp-rr, tcp-crr) reports back to its test.
#[derive(Default)]
pub(crate) struct FlowOut {
    /// Why the flow could not start; the test fails with the first such error.
    pub(crate) setup: Option<TestError>,
    pub(crate) transactions: u64,
    pub(crate) errors: u64,
    pub(crate) servers: Servers,
}

impl FlowOut {
    /// Transactions, errors and answers per server id over all flows.
    pub(crate) fn sum(outs: Vec<FlowOut>) -> Result<(u64, u64, BTreeMap<String, u64>), TestError> {
        let (mut transactions, mut errors, mut servers) = (0, 0, BTreeMap::new());
        for out in outs {
            if let Some(e) = out.setup {
                return Err(e);
            }
            transactions += out.transactions;
            errors += out.errors;
            out.servers.merge_into(&mut servers);
        }
        Ok((transactions, errors, servers))
    }
}
