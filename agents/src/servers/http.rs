//! The HTTP/1.1 server: the target of the `http` test, comparable to an nginx
//! `return 200 "ok\n"`.
//!
//! - `GET /` (any path) answers `ok\n`; a `size=N` query parameter (`/?size=1024`) answers
//!   exactly N zero bytes instead, up to [`MAX_BODY`]; a bad N gets a 400 naming `size`.
//! - `HEAD` answers like `GET` without the body; any other method gets a 405.
//! - Every answer, errors included, carries `x-zonebench-server: <id>`, so a client behind a
//!   Service can count which endpoint answered it.
//!
//! Nothing is allocated per request beyond what hyper itself needs: the id header value is
//! built once, `ok\n` and the error messages are static, and size answers are slices of one
//! static zero buffer (it lives in `.bss`: reading it maps the kernel's shared zero page, so
//! it costs no memory).
//!
//! Counted in [`Counters`](super::Counters): `http_connections` per accepted connection,
//! `http_requests` per answered request, and `http_rejected` per connection that ended in a
//! protocol error: unparsable bytes, a request cut off by the peer, headers too large, or
//! headers not complete within [`HEADER_READ_TIMEOUT`]. A peer that resets the connection
//! (ECONNRESET/EPIPE, what load generators do when they stop with requests in flight) is a
//! peer leaving, not bad input, and is not counted. Garbage only ever costs its connection.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Counters, ServerCtx};

/// Largest `size=N` answer (64 MiB).
pub const MAX_BODY: usize = 64 << 20;
/// How long a connection may take to send a request's headers (idle keep-alive time
/// included), so connections that trickle or send nothing cannot pile up forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The header that names the answering server.
pub const SERVER_HEADER: &str = "x-zonebench-server";
/// The body of a plain `GET`.
pub const OK_BODY: &[u8] = b"ok\n";

const LISTEN_BACKLOG: i32 = 4096;
/// All zeros, so any prefix is a valid `size=N` body; zero-initialized, so it sits in `.bss`.
static ZEROS: [u8; MAX_BODY] = [0; MAX_BODY];
const BAD_SIZE: &[u8] = b"size: must be a whole number of bytes from 0 to 67108864\n";
const BAD_METHOD: &[u8] = b"method not allowed: this server answers GET and HEAD\n";
const _: () = assert!(MAX_BODY == 67_108_864, "BAD_SIZE names the limit");

/// Binds `addr`, spawns the server on the current runtime and returns the bound address.
/// The accept loop stops when `ctx.shutdown` is cancelled, and so do open connections.
pub async fn start(addr: SocketAddr, ctx: ServerCtx) -> io::Result<SocketAddr> {
    let server_id = HeaderValue::from_str(&ctx.identity.id).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("server id {:?} cannot be sent as an HTTP header value", ctx.identity.id),
        )
    })?;
    let listener = bind(addr).map_err(|e| io::Error::new(e.kind(), format!("http server on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let answers = Answers { server_id, counters: ctx.counters.clone() };
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    tokio::spawn(accept_loop(listener, builder, Arc::new(answers), ctx.counters.clone(), ctx.shutdown.clone()));
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

async fn accept_loop(
    listener: TcpListener,
    builder: http1::Builder,
    answers: Arc<Answers>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    loop {
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
        let conn = builder.serve_connection(TokioIo::new(stream), Svc(answers.clone()));
        tokio::spawn(serve_connection(conn, counters.clone(), shutdown.clone()));
    }
}

async fn serve_connection(
    conn: http1::Connection<TokioIo<TcpStream>, Svc>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let result = tokio::select! {
        biased;
        r = conn => r,
        _ = shutdown.cancelled() => return,
    };
    if let Err(e) = result {
        if is_protocol_error(&e) {
            Counters::add(&counters.http_rejected, 1);
            tracing::debug!("http server: connection dropped: {e}");
        }
    }
}

/// Whether a connection's end was the peer's fault as a protocol matter (see the module doc).
fn is_protocol_error(e: &hyper::Error) -> bool {
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>()) {
        return !matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
        );
    }
    true
}

/// What every answer needs, built once per server.
struct Answers {
    server_id: HeaderValue,
    counters: Arc<Counters>,
}

impl Answers {
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
        resp.headers_mut().insert(HeaderName::from_static(SERVER_HEADER), self.server_id.clone());
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

#[derive(Clone)]
struct Svc(Arc<Answers>);

impl Service<Request<Incoming>> for Svc {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        ready(Ok(self.0.answer(&req)))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

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
