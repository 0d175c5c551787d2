//! The HTTP/1.1 server: the target of the `http` test, comparable to an nginx
//! `return 200 "ok\n"`.
//!
//! - `GET /` (any path) answers `ok\n`; a `size=N` query parameter (`/?size=1024`) answers
//!   exactly N zero bytes instead, up to [`MAX_BODY`]; a bad N gets a 400 naming `size`.
//! - `HEAD` answers like `GET` without the body; any other method gets a 405.
//! - Every answer, errors included, carries `x-zonebench-server: <id>`, so a client behind a
//!   Service can count which endpoint answered it.
//! - A request with `x-zonebench-relay` is one hop of a service chain: under `serve
//!   --relay` it is forwarded to the next hop (see [`relay`](super::relay)), else refused.
//!
//! Nothing is allocated per request beyond what hyper itself needs: the id header value is
//! built once, `ok\n` and the error messages are static, and size answers are slices of one
//! static zero buffer (it lives in `.bss`: reading it maps the kernel's shared zero page, so
//! it costs no memory).
//!
//! A connection must start a request or receive answer bytes at least once per
//! [`GUARD_PERIOD`] (checked by a per-connection guard), so idle connections and
//! requests trickled byte by byte (slowloris) cannot pile up; at most
//! [`Caps::http`](super::Caps) connections are served at once (past it the server stops
//! accepting until one ends), and a request's headers are held in at most
//! [`MAX_HEADER_BUF`] bytes (larger ones get a 431), so a connection costs a bounded amount
//! of memory whatever a client sends. Request bodies are never read: the answer does not
//! depend on them, and hyper closes a connection whose body was left unread.
//!
//! Counted in [`Counters`](super::Counters): `http_connections` per accepted connection,
//! `http_requests` per answered request, and `http_rejected` per connection that ended in a
//! protocol error: unparsable bytes, a request cut off by the peer, headers too large, or
//! bytes that never became a request within the guard's period. A peer that resets the
//! connection (ECONNRESET/EPIPE, what load generators do when they stop with requests in
//! flight) is a peer leaving, and an idle keep-alive connection closed by the guard is
//! housekeeping: neither is counted. Garbage only ever costs its connection.

use std::convert::Infallible;
use std::future::{poll_fn, ready, Future, Ready};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::relay::{self, Relay, Upstream, RELAY_HEADER, VIA_HEADER};
use super::{Counters, ServerCtx};

/// Largest `size=N` answer (64 MiB).
pub const MAX_BODY: usize = 64 << 20;
/// The guard's period: a connection that neither starts a request nor is sent answer bytes
/// for this long (idle keep-alive time included) is closed.
pub const GUARD_PERIOD: Duration = Duration::from_secs(30);
/// The header that names the answering server.
pub const SERVER_HEADER: &str = "x-zonebench-server";
const SERVER_HEADER_NAME: HeaderName = HeaderName::from_static(SERVER_HEADER);
const RELAY_HEADER_NAME: HeaderName = HeaderName::from_static(RELAY_HEADER);
const VIA_HEADER_NAME: HeaderName = HeaderName::from_static(VIA_HEADER);
/// The body of a plain `GET`.
pub const OK_BODY: &[u8] = b"ok\n";

/// A connection's read buffer, which bounds a request's headers: hyper answers 431 once
/// it holds this much without a whole head (its check runs between reads, so a head may
/// reach twice this). A load generator's request is a few hundred bytes; nginx's default
/// limit is 8 KiB per header line.
pub const MAX_HEADER_BUF: usize = 16 << 10;
const LISTEN_BACKLOG: i32 = 4096;
/// At most one warning per this period while the server is at its connection cap.
const CAP_WARN_EVERY: Duration = Duration::from_secs(10);
/// All zeros, so any prefix is a valid `size=N` body; zero-initialized, so it sits in `.bss`.
static ZEROS: [u8; MAX_BODY] = [0; MAX_BODY];
const BAD_SIZE: &[u8] = b"size: must be a whole number of bytes from 0 to 67108864\n";
const BAD_METHOD: &[u8] = b"method not allowed: this server answers GET and HEAD\n";
const _: () = assert!(MAX_BODY == 67_108_864, "BAD_SIZE names the limit");

/// Binds `addr`, spawns the server on the current runtime and returns the bound address.
/// The accept loop stops when `ctx.shutdown` is cancelled, and so do open connections.
pub async fn start(addr: SocketAddr, ctx: ServerCtx) -> io::Result<SocketAddr> {
    start_guarded(addr, ctx, GUARD_PERIOD).await
}

async fn start_guarded(addr: SocketAddr, ctx: ServerCtx, guard_period: Duration) -> io::Result<SocketAddr> {
    let server_id = HeaderValue::from_str(&ctx.identity.id).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("server id {:?} cannot be sent as an HTTP header value", ctx.identity.id),
        )
    })?;
    let listener = bind(addr).map_err(|e| io::Error::new(e.kind(), format!("http server on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let answers = Answers {
        own_id: ctx.identity.id.clone(),
        server_id,
        counters: ctx.counters.clone(),
        pacer: ctx.pacer.clone(),
        relay: ctx.relay.clone(),
    };
    let mut builder = http1::Builder::new();
    // hyper's own header_read_timeout boxes and registers a new timer for every request; the
    // connection guard (see `serve_connection`) does that job with one timer per period.
    builder.keep_alive(true).header_read_timeout(None).max_buf_size(MAX_HEADER_BUF);
    let shared = Shared {
        builder,
        answers: Arc::new(answers),
        counters: ctx.counters.clone(),
        guard_period,
        cap: ctx.caps.http,
    };
    tokio::spawn(accept_loop(listener, shared, ctx.shutdown.clone()));
    Ok(local)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted agent must be able to rebind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// What the accept loop hands every connection.
struct Shared {
    builder: http1::Builder,
    answers: Arc<Answers>,
    counters: Arc<Counters>,
    guard_period: Duration,
    /// Connections served at once.
    cap: usize,
}

async fn accept_loop(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
    let Shared { builder, answers, counters, guard_period, cap } = shared;
    let slots = Arc::new(Semaphore::new(cap));
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Every slot is taken: leave new connections in the backlog until one ends.
                Counters::add(&counters.connection_cap_reached, 1);
                if last_warning.is_none_or(|t| t.elapsed() >= CAP_WARN_EVERY) {
                    tracing::warn!("http server: {cap} connections open, its most; new ones wait");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    p = Arc::clone(&slots).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return, // never closed
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors or memory: back off so the loop does not spin, and keep
                // serving the connections already open.
                tracing::warn!("http server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Answers are single small writes; Nagle would hold them for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        Counters::add(&counters.http_connections, 1);
        let activity = Arc::new(Activity::default());
        let io = Watched { io: TokioIo::new(stream), activity: activity.clone() };
        // Only a relay needs an upstream slot per connection.
        let upstream = answers.relay.is_some().then(Arc::default);
        let conn = builder.serve_connection(io, Svc { answers: answers.clone(), activity: activity.clone(), upstream });
        tokio::spawn(serve_connection(conn, activity, guard_period, counters.clone(), shutdown.clone(), permit));
    }
}

/// How a connection ended.
enum End {
    Closed(Result<(), hyper::Error>),
    /// The guard found no request and no answer bytes for a whole period; `partial` if
    /// bytes arrived meanwhile (a request that never completes).
    Stalled {
        partial: bool,
    },
    Shutdown,
}

/// Drives one connection, and guards it: every `guard_period` the connection must have
/// started a request or written answer bytes, else it is closed, so idle connections and
/// requests trickled byte by byte cannot pile up. It also ends at shutdown.
///
/// The guard's timer and the shutdown signal register this task's waker once; after that,
/// checking them is an atomic load per wake-up, where a `select!` would poll both futures
/// on every request.
async fn serve_connection(
    conn: http1::Connection<Watched, Svc>,
    activity: Arc<Activity>,
    guard_period: Duration,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let mut conn = pin!(conn);
    let mut guard = pin!(tokio::time::sleep(guard_period));
    let mut cancelled = pin!(shutdown.cancelled());
    let mut registered = false;
    let mut seen = activity.snapshot();
    let end = poll_fn(|cx| {
        if !registered {
            registered = true;
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Shutdown);
            }
            let _ = guard.as_mut().poll(cx);
        }
        if shutdown.is_cancelled() {
            return Poll::Ready(End::Shutdown);
        }
        if guard.is_elapsed() {
            let now = activity.snapshot();
            if now.requests == seen.requests && now.writes == seen.writes {
                return Poll::Ready(End::Stalled { partial: now.reads != seen.reads });
            }
            seen = now;
            guard.as_mut().reset(tokio::time::Instant::now() + guard_period);
            let _ = guard.as_mut().poll(cx);
        }
        conn.as_mut().poll(cx).map(End::Closed)
    })
    .await;
    match end {
        End::Closed(Err(e)) if is_protocol_error(&e, &activity) => {
            Counters::add(&counters.http_rejected, 1);
            tracing::debug!("http server: connection dropped: {e}");
        }
        End::Stalled { partial: true } => {
            Counters::add(&counters.http_rejected, 1);
            tracing::debug!("http server: connection dropped: request incomplete after {guard_period:?}");
        }
        End::Closed(_) | End::Stalled { partial: false } | End::Shutdown => {}
    }
}

/// Whether a connection's end was the peer's fault as a protocol matter (see the module doc).
fn is_protocol_error(e: &hyper::Error, activity: &Activity) -> bool {
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>()) {
        return !matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
        );
    }
    if e.is_incomplete_message() {
        // hyper says the same when a request was cut off and when a complete request was
        // still being answered as the peer closed (every load generator does that at its
        // end). Only in the first case did a read bring bytes after the last request began:
        // one more read than the EOF.
        let now = activity.snapshot();
        return now.reads.wrapping_sub(activity.reads_at_request.load(Ordering::Relaxed)) >= 2;
    }
    true
}

/// What one connection did, counted by the connection's own task and read by its guard
/// (same task), so plain loads and stores suffice: no locked instructions per request.
#[derive(Default)]
struct Activity {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    /// `reads` when the last request was handed to the service.
    reads_at_request: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    requests: u64,
    reads: u64,
    writes: u64,
}

impl Activity {
    #[inline]
    fn bump(c: &AtomicU64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }
}

/// The connection's socket, counting completed reads and writes that moved bytes, for the
/// guard.
struct Watched {
    io: TokioIo<TcpStream>,
    activity: Arc<Activity>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_ready() {
            Activity::bump(&this.activity.reads);
        }
        polled
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            Activity::bump(&this.activity.writes);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            Activity::bump(&this.activity.writes);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What every answer needs, built once per server.
struct Answers {
    own_id: String,
    server_id: HeaderValue,
    counters: Arc<Counters>,
    pacer: Option<Arc<super::pacer::Pacer>>,
    relay: Option<Arc<Relay>>,
}

impl Answers {
    /// The answer to a request of a service chain (one with a relay or via header): a
    /// refusal now, or its forwarding (see [`relay`](super::relay)); `None` for any other
    /// request.
    fn chain(&self, req: &Request<Incoming>, upstream: Option<&Arc<Upstream>>) -> Option<Answer> {
        let next = req.headers().get(RELAY_HEADER_NAME);
        let via = req.headers().get(VIA_HEADER_NAME);
        if next.is_none() && via.is_none() {
            return None;
        }
        let refuse = |(status, why): relay::Refusal| {
            Counters::add(&self.counters.http_requests, 1);
            Counters::add(&self.counters.http_relay_refused, 1);
            Some(Answer::Now(ready(Ok(self.respond(status, Bytes::from(why))))))
        };
        if let Some(refusal) = relay::check_via(via, &self.own_id) {
            return refuse(refusal);
        }
        let next = next?;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let hop = match relay::next_hop(self.relay.as_deref(), next, via, &self.own_id) {
            Ok(hop) => hop,
            Err(refusal) => return refuse(refusal),
        };
        let upstream = upstream?.clone();
        Counters::add(&self.counters.http_requests, 1);
        Counters::add(&self.counters.http_relayed, 1);
        let own = self.server_id.clone();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        Some(Answer::Relayed(Box::pin(async move {
            Ok(relay::answer(&own, relay::forward(upstream, hop, method, uri).await))
        })))
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        Counters::add(&self.counters.http_requests, 1);
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = self.respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::from_static(BAD_METHOD));
            resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match requested_size(req.uri().query()) {
            Ok(None) => self.respond(StatusCode::OK, Bytes::from_static(OK_BODY)),
            Ok(Some(n)) => self.respond(StatusCode::OK, Bytes::from_static(&ZEROS[..n])),
            Err(()) => self.respond(StatusCode::BAD_REQUEST, Bytes::from_static(BAD_SIZE)),
        }
    }

    #[inline]
    fn respond(&self, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(SERVER_HEADER_NAME, self.server_id.clone());
        resp
    }
}

/// The `size` query parameter: `Ok(None)` when absent, `Err` when not a byte count within
/// [`MAX_BODY`]. Only plain decimal digits are accepted (no sign, no units).
fn requested_size(query: Option<&str>) -> Result<Option<usize>, ()> {
    let Some(query) = query else { return Ok(None) };
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix("size=")) else {
        return if query.split('&').any(|p| p == "size") { Err(()) } else { Ok(None) };
    };
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    match value.parse::<usize>() {
        Ok(n) if n <= MAX_BODY => Ok(Some(n)),
        _ => Err(()),
    }
}

/// One connection's service: the shared answers plus the connection's activity (and, for
/// a relay, its upstream connection).
struct Svc {
    answers: Arc<Answers>,
    activity: Arc<Activity>,
    upstream: Option<Arc<Upstream>>,
}

impl Service<Request<Incoming>> for Svc {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Activity::bump(&self.activity.requests);
        self.activity.reads_at_request.store(self.activity.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(answer) = self.answers.chain(&req, self.upstream.as_ref()) {
            return answer;
        }
        let resp = self.answers.answer(&req);
        match self.answers.pacer.as_ref().and_then(|p| p.slot()) {
            None => Answer::Now(ready(Ok(resp))),
            Some(at) => Answer::Later(Box::pin(tokio::time::sleep_until(at.into())), Some(resp)),
        }
    }
}

/// An answer now (the hot path: no allocation, no timer), at its pacer slot, or once the
/// next hop of a chain answered.
enum Answer {
    Now(Ready<Result<Response<Full<Bytes>>, Infallible>>),
    Later(Pin<Box<tokio::time::Sleep>>, Option<Response<Full<Bytes>>>),
    Relayed(Pin<Box<dyn Future<Output = Answered> + Send>>),
}

/// What the service's future yields.
type Answered = Result<Response<Full<Bytes>>, Infallible>;

impl Future for Answer {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(r) => Pin::new(r).poll(cx),
            Answer::Later(sleep, resp) => {
                std::task::ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Ok(resp.take().expect("an answer is polled to completion once")))
            }
            Answer::Relayed(fut) => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::spec::Identity;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the server closes; `None` if it is still open after `wait`.
    async fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        tokio::time::timeout(wait, async {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|()| all)
    }

    #[tokio::test]
    async fn a_peer_closing_with_a_whole_request_in_flight_is_not_a_protocol_error() {
        let ctx = ServerCtx::new(Identity { id: "g".into(), zone: String::new(), node: String::new() });
        let addr = start("127.0.0.1:0".parse().unwrap(), ctx.clone()).await.unwrap();
        for _ in 0..200 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        }
        let mut cut = TcpStream::connect(addr).await.unwrap();
        cut.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        drop(cut);
        let c = &ctx.counters;
        for _ in 0..200 {
            if c.http_requests.load(Ordering::Relaxed) == 200 && c.http_rejected.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(c.http_requests.load(Ordering::Relaxed), 200);
        assert_eq!(c.http_rejected.load(Ordering::Relaxed), 1, "only the cut-off request is an error");
    }

    #[tokio::test]
    async fn the_guard_closes_idle_and_trickling_connections_and_shutdown_closes_the_rest() {
        let ctx = ServerCtx::new(Identity { id: "g".into(), zone: String::new(), node: String::new() });
        let period = Duration::from_millis(200);
        let addr = start_guarded("127.0.0.1:0".parse().unwrap(), ctx.clone(), period).await.unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        // The busy connection sends a request every 50 ms for 3 guard periods.
        let mut answers = Vec::new();
        for _ in 0..12 {
            busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let n = busy.read(&mut buf).await.unwrap();
            answers.push(buf[..n].to_vec());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answers.iter().all(|a| a.starts_with(b"HTTP/1.1 200")), "the busy connection kept being served");
        assert!(closed_within(&mut idle, Duration::from_millis(100)).await.is_some(), "idle connection still open");
        assert!(closed_within(&mut trickle, Duration::from_millis(100)).await.is_some(), "trickle still open");
        assert_eq!(ctx.counters.http_rejected.load(Ordering::Relaxed), 1, "only the trickled request is an error");
        assert_eq!(ctx.counters.http_requests.load(Ordering::Relaxed), 12);

        ctx.shutdown.cancel();
        assert!(closed_within(&mut busy, Duration::from_millis(500)).await.is_some(), "shutdown left it open");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed at shutdown");
    }

    #[test]
    fn the_size_parameter_is_found_among_others() {
        assert_eq!(requested_size(None), Ok(None));
        assert_eq!(requested_size(Some("a=1")), Ok(None));
        assert_eq!(requested_size(Some("size=1024")), Ok(Some(1024)));
        assert_eq!(requested_size(Some("a=1&size=0&b=2")), Ok(Some(0)));
        assert_eq!(requested_size(Some("size=67108864")), Ok(Some(MAX_BODY)));
    }

    #[test]
    fn a_bad_size_is_refused() {
        for q in ["size=", "size", "size=-1", "size=1k", "size=67108865", "size=99999999999999999999", "size=+5"] {
            assert_eq!(requested_size(Some(q)), Err(()), "{q}");
        }
    }

    #[test]
    fn the_error_message_names_the_limit() {
        let msg = std::str::from_utf8(BAD_SIZE).unwrap();
        assert!(msg.contains(&MAX_BODY.to_string()) && msg.starts_with("size"), "{msg}");
    }
}
