//! The TCP data server behind tcp-stream, tcp-rr and tcp-crr.
//!
//! One event loop per worker of the caller's runtime, each with its own `SO_REUSEPORT`
//! listener (see [`start`]), and one task per connection on the loop that accepted it. On
//! accept the server sets `TCP_NODELAY` and writes its [`Hello`](crate::wire::encode_hello) at
//! once (or, when the preamble and a whole first request were already waiting, as tcp-crr's
//! usually are, in the same write as the first answer), reads the client's 16-byte
//! [`Preamble`] (bounded by [`PREAMBLE_TIMEOUT`], so connections that never speak cannot pile
//! up) and serves the mode it names:
//! - **Sink**: reads and discards until the client's half-close, then writes the payload
//!   bytes it received (preamble excluded) as a u64 BE and closes;
//! - **Source**: writes `response_size`-byte writes until the client goes away (that is the
//!   normal end of a reverse stream, so a failed write is not a rejection);
//! - **Echo**: for every `request_size` bytes received, writes `response_size` bytes, until
//!   EOF. Requests are counted, not parsed, so a client may pipeline.
//!
//! Garbage (bad magic, unknown mode, a silent or truncated preamble, EOF in the middle of a
//! request, a reset) costs only its own connection and is counted in
//! [`Counters::tcp_rejected`]; accept errors such as `EMFILE` back off and never end the loop.
//! At most [`Caps::tcp`](super::Caps) connections are served at once, over all the loops
//! (one semaphore); at the cap the loops stop accepting until a connection ends, so a flood
//! waits in the listen backlog instead of taking every descriptor. A connection moved to a
//! thread of its own (below) gives its slot back: those are at most one per core.
//!
//! Hot paths do no allocation, no formatting and no locking: buffers are allocated once per
//! connection, answers are written from a static zero page, and counters are kept per
//! connection and added to the shared atomics in batches and once at the end.
//!
//! **Long-lived connections move to a thread of their own.** On the event loop a ping-pong
//! costs `epoll_wait` + `recv` + `send` and a scheduler pass; on a blocking socket it is
//! `recv` + `send`, which is what sockperf's and netperf's servers do. On loopback that is
//! ~1 µs of a ~7 µs round trip, and a blocking sink reads ~8% faster than a task. So a
//! connection that proved long-lived (an echo one that answered [`HANDOFF_AFTER`] requests,
//! i.e. a tcp-rr flow and never a tcp-crr one; a sink or source one that moved
//! [`HANDOFF_BYTES`]) is handed to a dedicated blocking thread while fewer than one per core
//! are in use; the rest stay on the runtime, where many connections share a few threads
//! best. Those threads wait in slices of 100 ms so they notice `ctx.shutdown`.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::pacer::Pacer;
use super::{Counters, ServerCtx};
use crate::wire::{self, Preamble, TcpMode, WireError, PREAMBLE_LEN};

/// Listen backlog: tcp-crr opens connections as fast as the client can, and a short queue
/// would turn bursts into SYN retransmits (1 s each) that look like network latency.
const BACKLOG: i32 = 4096;
/// How long a new connection may take to send its preamble (shorter in unit tests, so the
/// timeout itself can be tested).
pub const PREAMBLE_TIMEOUT: Duration = if cfg!(test) { Duration::from_millis(300) } else { Duration::from_secs(10) };
/// Pause after an accept error that will repeat at once (out of descriptors or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per this period while accept keeps failing.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);
/// Dead peers (a host that vanished without a FIN or RST) are found by keepalive probes:
/// idle 60 s, then 3 probes 10 s apart. Set on the listener; Linux copies it to accepted
/// sockets, so it costs no syscall per connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// First-read buffer, also the echo read buffer for small requests. Reading into a buffer
/// larger than what is pending returns a short read, which tells tokio the socket is drained,
/// saving the `EAGAIN` read it would otherwise make before every wait.
const HEAD_LEN: usize = 512;
/// Sink reads: large, so a fast stream costs few syscalls.
const SINK_BUF: usize = 256 << 10;
/// Largest echo read buffer (larger requests take several reads).
const ECHO_BUF_MAX: usize = 64 << 10;
/// Largest source write buffer; a `response_size` above it is written in pieces, so a client
/// cannot make the server hold 16 MiB per connection.
const SOURCE_BUF_MAX: usize = 256 << 10;
/// Echo answers: their content is irrelevant, so they come from one static zero page.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Local counts are added to the shared counters at least this often.
const FLUSH_BYTES: u64 = 16 << 20;
const FLUSH_TRANSACTIONS: u64 = 1024;

/// Echo requests a connection answers on the runtime before it may move to its own thread.
pub const HANDOFF_AFTER: u64 = 64;
/// Bytes a sink or source connection moves on the runtime before it may move.
pub const HANDOFF_BYTES: u64 = 4 << 20;
/// How often a blocking connection thread looks at the shutdown token while it waits.
const BLOCKING_SLICE: Duration = Duration::from_millis(100);

/// What every connection task needs, behind one `Arc` (one refcount bump per connection).
struct Shared {
    counters: Arc<Counters>,
    hello: Box<[u8]>,
    shutdown: CancellationToken,
    /// Connections currently on a thread of their own, and the most allowed.
    blocking: AtomicUsize,
    blocking_max: usize,
    /// One permit per connection served on the loops; `cap` of them.
    slots: Arc<Semaphore>,
    cap: usize,
    /// `--max-answer-qps`: each echo answer waits for its slot (see [`super::pacer`]).
    pacer: Option<Arc<Pacer>>,
}

/// Binds `addr`, starts the server and returns the bound address. The server stops
/// (listeners closed, connections dropped) when `ctx.shutdown` is cancelled.
///
/// The server runs one event loop per worker thread of the calling runtime (so `serve
/// --workers` sizes it), each on a thread of its own with a `current_thread` runtime and its
/// own `SO_REUSEPORT` listener on the same port: the kernel spreads connections over the
/// loops, and a connection lives and dies on the thread that accepted it. On a work-stealing
/// runtime the accept loop and the connection tasks hop between workers, which costs tcp-crr
/// ~20 µs per connection on loopback. (Linux lets only sockets of the same user join a
/// `SO_REUSEPORT` group.)
pub async fn start(addr: SocketAddr, ctx: ServerCtx) -> io::Result<SocketAddr> {
    let loops = tokio::runtime::Handle::current().metrics().num_workers().max(1);
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second agent of the same user silently share this port;
        // a plain bind first keeps "port in use" an error.
        drop(bind_listener(addr, false)?);
    }
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..loops {
        listeners.push(bind(bound)?);
    }
    // A child token, so that a failed start stops the loops it already started.
    let stop = ctx.shutdown.child_token();
    let shared = Arc::new(Shared {
        counters: ctx.counters.clone(),
        hello: wire::encode_hello(&ctx.identity.id).into_boxed_slice(),
        shutdown: stop.clone(),
        blocking: AtomicUsize::new(0),
        blocking_max: std::thread::available_parallelism().map_or(1, |n| n.get()),
        slots: Arc::new(Semaphore::new(ctx.caps.tcp)),
        cap: ctx.caps.tcp,
        pacer: ctx.pacer.clone(),
    });
    for (i, listener) in listeners.into_iter().enumerate() {
        if let Err(e) = start_loop(i, listener, shared.clone()) {
            stop.cancel();
            return Err(io::Error::new(e.kind(), format!("cannot start TCP event loop {i}: {e}")));
        }
    }
    Ok(bound)
}

fn start_loop(i: usize, listener: std::net::TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = {
        let _in_rt = rt.enter();
        TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name(format!("zb-tcp-{i}"))
        .spawn(move || rt.block_on(accept_loop(listener, shared)))?;
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_listener(addr, true)
}

fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted agent must get its port back while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(reuse_port)?;
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    )?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("cannot bind TCP {addr}: {e}")))?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in a JoinSet so that shutdown (dropping the set) aborts them all,
    // without each connection polling the shutdown token on every read.
    let mut conns = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    let mut last_cap_warning: Option<Instant> = None;
    // The slot the next accepted connection takes.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    loop {
        if slot.is_none() {
            slot = Arc::clone(&shared.slots).try_acquire_owned().ok();
            if slot.is_none() {
                Counters::add(&shared.counters.connection_cap_reached, 1);
                if last_cap_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                    tracing::warn!("TCP server: {} connections open, its most; new ones wait", shared.cap);
                    last_cap_warning = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            p = Arc::clone(&shared.slots).acquire_owned(), if slot.is_none() => slot = p.ok(),
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        Counters::add(&shared.counters.tcp_rejected, 1);
                        tracing::error!("a TCP connection task panicked: {e}");
                    }
                }
            }
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok((stream, _peer)) => {
                    Counters::add(&shared.counters.tcp_connections, 1);
                    conns.spawn(connection(stream, shared.clone(), slot.take()));
                }
                Err(e) if is_per_connection(&e) => {
                    // The peer was gone before we accepted it; nothing to serve or count.
                    tracing::debug!("TCP accept: {e}");
                }
                Err(e) => {
                    if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                        tracing::warn!("TCP accept failed ({e}); backing off {ACCEPT_BACKOFF:?} and retrying");
                        last_warning = Some(Instant::now());
                    }
                    tokio::select! {
                        () = shared.shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
    conns.abort_all();
}

/// Errors accept(2) reports for one pending connection (Linux passes some network errors
/// through); retrying at once is right. Anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) would
/// fail again immediately, so the loop backs off instead.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EINTR
                | libc::EAGAIN
        )
    )
}

/// Why a connection was dropped as garbage.
#[derive(Debug, thiserror::Error)]
enum Reject {
    #[error("bad preamble: {0}")]
    Preamble(#[from] WireError),
    #[error("no preamble within {PREAMBLE_TIMEOUT:?}")]
    Silent,
    #[error("closed after {0} of {PREAMBLE_LEN} preamble bytes")]
    TruncatedPreamble(usize),
    #[error("source mode needs a response_size above 0")]
    EmptySource,
    #[error("closed in the middle of a request ({pending} of {request_size} bytes)")]
    TruncatedRequest { pending: u64, request_size: u32 },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// `_slot`: this connection's place under the cap, given back when it ends.
async fn connection(stream: TcpStream, shared: Arc<Shared>, _slot: Option<OwnedSemaphorePermit>) {
    let mut tally = Tally::new(&shared.counters);
    if let Err(e) = serve(stream, &shared, &mut tally).await {
        reject(&shared, &e);
    }
}

fn reject(shared: &Shared, e: &Reject) {
    Counters::add(&shared.counters.tcp_rejected, 1);
    tracing::debug!("TCP connection dropped: {e}");
}

async fn serve(mut stream: TcpStream, shared: &Arc<Shared>, tally: &mut Tally<'_>) -> Result<(), Reject> {
    stream.set_nodelay(true)?;
    let mut head = [0u8; HEAD_LEN];
    // tcp-crr writes its preamble and request right after connect, so they are usually here
    // by the time the connection is accepted; then the hello rides in the same segment as
    // the first answer (one send, one wake-up of the client). Otherwise it goes out at once,
    // as the wire contract says: the server never waits for anything before its hello.
    let mut got = match stream.try_read(&mut head) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e.into()),
    };
    let mut hello = Some(&shared.hello[..]);
    if got < PREAMBLE_LEN {
        stream.write_all(&shared.hello).await?;
        hello = None;
        let more =
            tokio::time::timeout(PREAMBLE_TIMEOUT, read_at_least(&mut stream, &mut head[got..], PREAMBLE_LEN - got));
        got += more.await.map_err(|_| Reject::Silent)??;
        if got < PREAMBLE_LEN {
            return Err(Reject::TruncatedPreamble(got));
        }
    }
    let preamble = Preamble::decode(&head[..PREAMBLE_LEN])?;
    // Bytes that came with the preamble (tcp-crr sends preamble and request in one write).
    let early = (got - PREAMBLE_LEN) as u64;
    if preamble.mode != TcpMode::Echo {
        if let Some(h) = hello.take() {
            stream.write_all(h).await?;
        }
    }
    match preamble.mode {
        TcpMode::Sink => sink(stream, early, shared, tally).await,
        TcpMode::Source => source(stream, preamble.response_size, early, shared, tally).await,
        TcpMode::Echo => echo(stream, preamble, early, hello, &mut head, shared, tally).await,
    }
}

/// Writes `a` then `b`, in one `writev` when the socket takes both.
async fn write_both(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = stream.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    stream.write_all(b).await
}

/// Reads until at least `need` bytes are in `buf`; returns fewer only at EOF.
async fn read_at_least(stream: &mut TcpStream, buf: &mut [u8], need: usize) -> io::Result<usize> {
    let mut got = 0;
    while got < need {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

async fn sink(mut stream: TcpStream, early: u64, shared: &Arc<Shared>, tally: &mut Tally<'_>) -> Result<(), Reject> {
    let mut buf = vec![0u8; SINK_BUF];
    let mut total = early;
    let mut handoff_tried = false;
    tally.received(early);
    loop {
        if !handoff_tried && total >= HANDOFF_BYTES {
            handoff_tried = true;
            tally.flush();
            match hand_off(stream, Handoff::Sink { total, buf }, shared) {
                Ok(()) => return Ok(()),
                Err((back, Handoff::Sink { buf: b, .. })) => (stream, buf) = (back, b),
                Err((back, _)) => (stream, buf) = (back, vec![0u8; SINK_BUF]),
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        tally.received(n as u64);
    }
    stream.write_all(&total.to_be_bytes()).await?;
    Ok(())
}

async fn source(
    mut stream: TcpStream,
    response_size: u32,
    early: u64,
    shared: &Arc<Shared>,
    tally: &mut Tally<'_>,
) -> Result<(), Reject> {
    if response_size == 0 {
        return Err(Reject::EmptySource);
    }
    tally.received(early);
    let write_size = response_size as usize;
    // Real (written) pages rather than the zero page, so the kernel copies from ordinary
    // memory as a real sender's would.
    let mut buf = vec![0x5a_u8; write_size.min(SOURCE_BUF_MAX)];
    let mut sent = 0u64;
    let mut handoff_tried = false;
    loop {
        if !handoff_tried && sent >= HANDOFF_BYTES {
            handoff_tried = true;
            tally.flush();
            match hand_off(stream, Handoff::Source { write_size, buf }, shared) {
                Ok(()) => return Ok(()),
                Err((back, Handoff::Source { buf: b, .. })) => (stream, buf) = (back, b),
                Err((back, _)) => (stream, buf) = (back, vec![0x5a_u8; write_size.min(SOURCE_BUF_MAX)]),
            }
        }
        let mut left = write_size;
        while left > 0 {
            let chunk = left.min(buf.len());
            if stream.write_all(&buf[..chunk]).await.is_err() {
                // The client closing is how a reverse stream ends.
                return Ok(());
            }
            tally.sent(chunk as u64);
            sent += chunk as u64;
            left -= chunk;
        }
    }
}

/// `hello`: the server's hello if it is still to be sent (with the first answer).
async fn echo(
    mut stream: TcpStream,
    p: Preamble,
    early: u64,
    mut hello: Option<&[u8]>,
    head: &mut [u8; HEAD_LEN],
    shared: &Arc<Shared>,
    tally: &mut Tally<'_>,
) -> Result<(), Reject> {
    let request_size = u64::from(p.request_size);
    let response_size = p.response_size as usize;
    // Small requests reuse the head buffer; larger ones get their own, once.
    let mut owned;
    let buf: &mut [u8] = if (p.request_size as usize) < HEAD_LEN {
        head
    } else {
        owned = vec![0u8; echo_buf_len(p)];
        &mut owned
    };
    let mut pending = early;
    let mut answered = 0u64;
    tally.received(early);
    loop {
        while pending >= request_size {
            pending -= request_size;
            if let Some(at) = shared.pacer.as_ref().and_then(|p| p.slot()) {
                tokio::time::sleep_until(at.into()).await;
            }
            let mut left = response_size;
            while left > 0 {
                let chunk = left.min(ZEROS.len());
                match hello.take() {
                    Some(h) => write_both(&mut stream, h, &ZEROS[..chunk]).await?,
                    None => stream.write_all(&ZEROS[..chunk]).await?,
                }
                left -= chunk;
            }
            tally.transaction(response_size as u64);
            answered += 1;
        }
        if let Some(h) = hello.take() {
            // The first request is not complete yet: never wait with the hello unsent.
            stream.write_all(h).await?;
        }
        if answered == HANDOFF_AFTER {
            answered += 1; // one attempt per connection
            tally.flush();
            match hand_off(stream, Handoff::Echo { p, pending }, shared) {
                Ok(()) => return Ok(()),
                Err((back, _)) => stream = back,
            }
        }
        let n = stream.read(buf).await?;
        if n == 0 {
            if pending == 0 {
                return Ok(());
            }
            return Err(Reject::TruncatedRequest { pending, request_size: p.request_size });
        }
        pending += n as u64;
        tally.received(n as u64);
    }
}

fn echo_buf_len(p: Preamble) -> usize {
    (p.request_size as usize + 1).clamp(HEAD_LEN, ECHO_BUF_MAX)
}

/// Where a connection's service stands when it moves to a thread of its own.
enum Handoff {
    Echo { p: Preamble, pending: u64 },
    Sink { total: u64, buf: Vec<u8> },
    Source { write_size: usize, buf: Vec<u8> },
}

/// Moves a connection to a thread of its own if a slot is free; gives the stream (and the
/// state) back otherwise, or if the thread cannot be started.
fn hand_off(stream: TcpStream, state: Handoff, shared: &Arc<Shared>) -> Result<(), (TcpStream, Handoff)> {
    let slots = &shared.blocking;
    if slots.fetch_add(1, Ordering::AcqRel) >= shared.blocking_max {
        slots.fetch_sub(1, Ordering::AcqRel);
        return Err((stream, state));
    }
    let slot = Slot(shared.clone());
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        // into_std only fails if leaving the reactor fails; the stream is gone by then.
        Err(e) => {
            reject(shared, &Reject::Io(e));
            return Ok(());
        }
    };
    // The thread takes the stream out of the cell; if it never starts, it is taken back.
    let cell = Arc::new(Mutex::new(Some((std_stream, state))));
    let theirs = cell.clone();
    let spawned = std::thread::Builder::new().name("zb-tcp-conn".into()).spawn(move || {
        let Some((stream, state)) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        if let Err(e) = blocking_serve(stream, state, &slot.0) {
            reject(&slot.0, &e);
        }
        drop(slot);
    });
    if spawned.is_ok() {
        return Ok(());
    }
    let back = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
    match back.map(|(s, state)| (TcpStream::from_std(s), state)) {
        Some((Ok(s), state)) => Err((s, state)),
        Some((Err(e), _)) => {
            reject(shared, &Reject::Io(e));
            Ok(())
        }
        None => Ok(()),
    }
}

/// A taken blocking-thread slot, given back when the thread (or a failed hand-off) ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.blocking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A blocking socket that waits in slices and gives up quietly at shutdown.
struct Blocking<'a> {
    stream: std::net::TcpStream,
    shutdown: &'a CancellationToken,
}

fn waiting(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

impl Blocking<'_> {
    /// `None` at shutdown.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if waiting(&e) => {
                    if self.shutdown.is_cancelled() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `false` at shutdown.
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<bool> {
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if waiting(&e) => {
                    if self.shutdown.is_cancelled() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The same services on a blocking socket: a ping-pong is one `recv` and one `send`, a
/// stream a plain read or write loop.
fn blocking_serve(stream: std::net::TcpStream, state: Handoff, shared: &Shared) -> Result<(), Reject> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(BLOCKING_SLICE))?;
    stream.set_write_timeout(Some(BLOCKING_SLICE))?;
    let mut s = Blocking { stream, shutdown: &shared.shutdown };
    let mut tally = Tally::new(&shared.counters);
    match state {
        Handoff::Sink { mut total, mut buf } => {
            loop {
                match s.read(&mut buf)? {
                    None => return Ok(()),
                    Some(0) => break,
                    Some(n) => {
                        total += n as u64;
                        tally.received(n as u64);
                    }
                }
            }
            s.write_all(&total.to_be_bytes())?;
            Ok(())
        }
        Handoff::Source { write_size, buf } => loop {
            let mut left = write_size;
            while left > 0 {
                let chunk = left.min(buf.len());
                match s.write_all(&buf[..chunk]) {
                    Ok(true) => {}
                    // Shutdown, or the client left: how a reverse stream ends.
                    Ok(false) | Err(_) => return Ok(()),
                }
                tally.sent(chunk as u64);
                left -= chunk;
            }
        },
        Handoff::Echo { p, mut pending } => {
            let request_size = u64::from(p.request_size);
            let response_size = p.response_size as usize;
            let mut buf = vec![0u8; echo_buf_len(p)];
            loop {
                while pending >= request_size {
                    pending -= request_size;
                    if let Some(at) = shared.pacer.as_ref().and_then(|p| p.slot()) {
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    }
                    let mut left = response_size;
                    while left > 0 {
                        let chunk = left.min(ZEROS.len());
                        if !s.write_all(&ZEROS[..chunk])? {
                            return Ok(());
                        }
                        left -= chunk;
                    }
                    tally.transaction(response_size as u64);
                }
                match s.read(&mut buf)? {
                    None => return Ok(()),
                    Some(0) if pending == 0 => return Ok(()),
                    Some(0) => return Err(Reject::TruncatedRequest { pending, request_size: p.request_size }),
                    Some(n) => {
                        pending += n as u64;
                        tally.received(n as u64);
                    }
                }
            }
        }
    }
}

/// Per-connection counts, added to the shared atomics in batches and when dropped (which
/// also covers errors and aborted tasks).
struct Tally<'a> {
    counters: &'a Counters,
    received: u64,
    sent: u64,
    transactions: u64,
}

impl<'a> Tally<'a> {
    fn new(counters: &'a Counters) -> Self {
        Tally { counters, received: 0, sent: 0, transactions: 0 }
    }

    #[inline]
    fn received(&mut self, n: u64) {
        self.received += n;
        if self.received >= FLUSH_BYTES {
            self.flush();
        }
    }

    #[inline]
    fn sent(&mut self, n: u64) {
        self.sent += n;
        if self.sent >= FLUSH_BYTES {
            self.flush();
        }
    }

    #[inline]
    fn transaction(&mut self, sent: u64) {
        self.transactions += 1;
        self.sent += sent;
        if self.transactions >= FLUSH_TRANSACTIONS || self.sent >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let c = self.counters;
        for (counter, n) in [
            (&c.tcp_bytes_received, &mut self.received),
            (&c.tcp_bytes_sent, &mut self.sent),
            (&c.tcp_transactions, &mut self.transactions),
        ] {
            if *n > 0 {
                Counters::add(counter, *n);
                *n = 0;
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Identity;
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;

    fn ctx() -> ServerCtx {
        ServerCtx::new(Identity { id: "unit".into(), zone: "z".into(), node: "n".into() })
    }

    fn read_hello(s: &mut std::net::TcpStream) -> String {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = wire::decode_hello_head(&head).unwrap();
        let mut id = vec![0u8; len];
        s.read_exact(&mut id).unwrap();
        String::from_utf8(id).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_echo_connection_answers_pipelined_requests_and_counts_them() {
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        let counters = ctx.counters.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let p = Preamble { mode: TcpMode::Echo, request_size: 3, response_size: 70_000 };
            // Preamble and two requests in one write.
            let mut first = p.encode().to_vec();
            first.extend_from_slice(&[1; 6]);
            s.write_all(&first).unwrap();
            assert_eq!(read_hello(&mut s), "unit");
            let mut answers = vec![0u8; 140_000];
            s.read_exact(&mut answers).unwrap();
            drop(s);
        })
        .await
        .unwrap();
        for _ in 0..100 {
            if counters.tcp_transactions.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.tcp_transactions.load(Ordering::Relaxed), 2);
        assert_eq!(counters.tcp_bytes_sent.load(Ordering::Relaxed), 140_000);
        assert_eq!(counters.tcp_rejected.load(Ordering::Relaxed), 0);
        ctx.shutdown.cancel();
    }

    /// Tests that look for connection threads (or start them) run one at a time, so each
    /// sees only its own.
    static THREAD_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Threads of this process named like the blocking connection threads.
    fn conn_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.trim() == "zb-tcp-conn"
            })
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_echo_connection_moves_to_its_own_thread_and_keeps_answering() {
        let _serial = THREAD_TESTS.lock().await;
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        let counters = ctx.counters.clone();
        let rounds = HANDOFF_AFTER * 3;
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            let p = Preamble { mode: TcpMode::Echo, request_size: 600, response_size: 2 };
            s.write_all(&p.encode()).unwrap();
            assert_eq!(read_hello(&mut s), "unit");
            let mut answer = [0u8; 2];
            for _ in 0..rounds {
                s.write_all(&[1; 600]).unwrap();
                s.read_exact(&mut answer).unwrap();
            }
            assert!(conn_threads() >= 1, "no zb-tcp-conn thread serves the connection");
        })
        .await
        .unwrap();
        for _ in 0..100 {
            if counters.tcp_transactions.load(Ordering::Relaxed) == rounds {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.tcp_transactions.load(Ordering::Relaxed), rounds);
        assert_eq!(counters.tcp_bytes_received.load(Ordering::Relaxed), rounds * 600);
        assert_eq!(counters.tcp_rejected.load(Ordering::Relaxed), 0);
        ctx.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_reports_the_payload_bytes_it_received() {
        let _serial = THREAD_TESTS.lock().await;
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        let total = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let p = Preamble { mode: TcpMode::Sink, request_size: 0, response_size: 0 };
            s.write_all(&p.encode()).unwrap();
            read_hello(&mut s);
            // Past HANDOFF_BYTES, so the end is served by a thread of its own.
            let chunk = vec![7u8; 200_000];
            for _ in 0..30 {
                s.write_all(&chunk).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while conn_threads() == 0 {
                assert!(Instant::now() < deadline, "the sink did not move to its own thread");
                std::thread::sleep(Duration::from_millis(5));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut total = [0u8; 8];
            s.read_exact(&mut total).unwrap();
            u64::from_be_bytes(total)
        })
        .await
        .unwrap();
        assert_eq!(total, 6_000_000);
        ctx.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_connections_served_on_their_own_threads() {
        let _serial = THREAD_TESTS.lock().await;
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&Preamble { mode: TcpMode::Echo, request_size: 1, response_size: 1 }.encode()).unwrap();
            read_hello(&mut s);
            for _ in 0..HANDOFF_AFTER * 2 {
                s.write_all(&[1]).unwrap();
                s.read_exact(&mut [0u8; 1]).unwrap();
            }
            tx.send(()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let started = Instant::now();
            // The server closes the idle connection at shutdown: EOF, not a timeout.
            assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
            started.elapsed()
        });
        tokio::task::spawn_blocking(move || rx.recv().unwrap()).await.unwrap();
        ctx.shutdown.cancel();
        let took = client.await.unwrap();
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_never_sends_a_preamble_is_closed_and_counted() {
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        let took = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(PREAMBLE_TIMEOUT * 10)).unwrap();
            let started = Instant::now();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            assert_eq!(&all[..4], b"ZBH1", "the hello comes at once, then the close");
            started.elapsed()
        })
        .await
        .unwrap();
        assert!(took >= PREAMBLE_TIMEOUT && took < PREAMBLE_TIMEOUT * 5, "{took:?}");
        // The count follows the close by a moment.
        for _ in 0..100 {
            if ctx.counters.tcp_rejected.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ctx.counters.tcp_rejected.load(Ordering::Relaxed), 1);
        ctx.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_in_use_is_an_error_not_a_shared_listener() {
        let first = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), first.clone()).await.unwrap();
        let err = start(addr, ctx()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        first.shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_the_listener() {
        let ctx = ctx();
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        ctx.shutdown.cancel();
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the listener still accepts after shutdown");
    }
}
