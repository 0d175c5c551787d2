//! End to end on loopback: the `http` load generator against the agent's HTTP server, and
//! against small scripted servers for what the agent's server never does (stall, stay
//! silent).
// Test code: a failing unwrap is a failing test (this also covers the shared `common`).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{check_result, start_agent, Which};
use tokio_util::sync::CancellationToken;
use zonebench_agent::histogram;
use zonebench_agent::load::{self, TestError};
use zonebench_agent::spec::{TestKind, TestResult, TestSpec};

const MS: u64 = 1_000_000;

fn spec(target: SocketAddr) -> TestSpec {
    let mut s = TestSpec::new(TestKind::Http, target.to_string());
    s.warmup_ms = 200;
    s.duration_ms = 1000;
    s
}

fn run(s: &TestSpec) -> TestResult {
    let r = load::run(s, &CancellationToken::new()).unwrap_or_else(|e| panic!("http test failed: {e}"));
    check_result(&r);
    r
}

fn one_entry(map: &std::collections::BTreeMap<String, u64>, key: &str) -> u64 {
    assert_eq!(map.len(), 1, "{map:?}");
    *map.get(key).unwrap_or_else(|| panic!("no {key:?} in {map:?}"))
}

/// One request over a fresh connection; returns the head (lowercased) and the body.
fn raw_request(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    (String::from_utf8_lossy(&all[..end]).to_ascii_lowercase(), all[end..].to_vec())
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_closed_loop_run_counts_every_answer_once() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.connections = 4;
    s.threads = Some(2);
    let r = run(&s);
    let m = &r.metrics;
    let latency = r.latency.as_ref().expect("latency");
    let n = latency.count;
    assert!(n > 500, "only {n} requests in 1 s on loopback");
    assert_eq!(one_entry(&r.servers, "web-a"), n);
    assert_eq!(one_entry(m.status_counts.as_ref().unwrap(), "200"), n);
    assert_eq!(m.errors, Some(0));
    let rps = m.requests_per_sec.unwrap();
    assert!((rps - n as f64).abs() < 1.0, "{rps} req/s for {n} requests in 1 s");
    // `ok\n` is 3 bytes = 24 bits per answer.
    assert!((m.throughput_bps.unwrap() - 24.0 * n as f64).abs() < 1.0, "{:?}", m.throughput_bps);
    assert!(latency.p50_ns < 50 * MS && latency.min_ns > 0, "{latency:?}");
    assert!(r.connect.is_none(), "keep-alive connections are made during warm-up");
    assert_eq!(r.duration_ns, 1_000_000_000);
}

#[test]
fn a_size_query_answers_exactly_that_many_bytes() {
    let agent = start_agent("web-a", &[Which::Http]);
    let addr = agent.http.unwrap();
    let (head, body) = raw_request(addr, "GET /x?a=1&size=100000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-zonebench-server: web-a\r\n"), "{head}");
    assert!(head.contains("content-length: 100000\r\n"), "{head}");
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|&b| b == 0));

    let (head, body) = raw_request(addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(head.contains("x-zonebench-server: web-a\r\n") && head.contains("content-length: 3\r\n"), "{head}");
    assert_eq!(body, b"ok\n");

    let (head, body) = raw_request(addr, "GET /?size=lots HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("http/1.1 400") && head.contains("x-zonebench-server: web-a\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("size:"), "{body:?}");

    let (head, _) = raw_request(addr, "DELETE / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("http/1.1 405") && head.contains("x-zonebench-server: web-a\r\n"), "{head}");
    assert!(head.contains("allow: get, head\r\n"), "{head}");

    // The load generator reads and counts whole bodies.
    let mut s = spec(addr);
    s.path = "/?size=65536".into();
    s.duration_ms = 500;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count as f64;
    assert!(n > 50.0, "{n}");
    let bps = r.metrics.throughput_bps.unwrap();
    assert!((bps - n * 65536.0 * 8.0 / 0.5).abs() < 1.0, "{bps} bit/s for {n} answers");
}

#[test]
fn error_statuses_are_counted_by_code() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.path = "/?size=-1".into(); // the server refuses it with a 400
    s.duration_ms = 500;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count;
    assert!(n > 100, "{n}");
    assert_eq!(one_entry(r.metrics.status_counts.as_ref().unwrap(), "400"), n);
    assert_eq!(one_entry(&r.servers, "web-a"), n, "error answers carry the server id too");
    assert_eq!(r.metrics.errors, Some(0), "an HTTP error status is an answer, not a failed request");
}

#[test]
fn connection_close_opens_one_connection_per_request() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.connections = 2;
    s.connection_close = true;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count;
    assert!(n > 100, "{n}");
    assert_eq!(one_entry(&r.servers, "web-a"), n);
    assert_eq!(r.metrics.errors, Some(0));
    let connect = r.connect.as_ref().expect("connect times are reported");
    assert_eq!(connect.count, n, "one connect per measured request");
    let latency = r.latency.as_ref().unwrap();
    assert!(latency.min_ns > connect.min_ns, "the latency includes connecting");

    // Server side: one connection per request (plus the probe; a request cut off at the end
    // of the run may have connected without being answered).
    let c = &agent.ctx.counters;
    let conns = c.http_connections.load(Ordering::Relaxed);
    let reqs = c.http_requests.load(Ordering::Relaxed);
    assert!(reqs >= n, "{reqs} served, {n} measured");
    assert!(conns >= reqs && conns <= reqs + 1 + 2, "{conns} connections for {reqs} requests");
}

#[test]
fn an_open_loop_run_keeps_the_asked_rate() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.qps = Some(200.0);
    s.connections = 3;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count;
    assert!((160..=240).contains(&n), "{n} requests at 200/s for 1 s");
    let rps = r.metrics.requests_per_sec.unwrap();
    assert!((rps - n as f64).abs() < 1.0, "{rps}");
    assert_eq!(r.metrics.errors, Some(0));
    // Loopback answers in well under a millisecond; pacing must not add a timer tick (the
    // bound leaves room for a busy test machine).
    assert!(r.latency.unwrap().p50_ns < 10 * MS);
}

#[test]
fn a_server_limited_by_max_answer_qps_answers_at_that_rate_and_queues_the_rest() {
    let limited = |ctx: &mut zonebench_agent::servers::ServerCtx| {
        ctx.pacer = zonebench_agent::servers::pacer::Pacer::new(300.0).map(std::sync::Arc::new);
    };
    let agent = common::start_agent_with("web-slow", &[Which::Http], limited);
    let mut s = spec(agent.http.unwrap());
    s.connections = 16;
    // Below the limit: every request at once, at the asked rate.
    s.qps = Some(150.0);
    let under = run(&s);
    let rps = under.metrics.requests_per_sec.unwrap();
    assert!((120.0..=180.0).contains(&rps), "{rps} of 150/s under a 300/s limit");
    assert!(under.latency.unwrap().p50_ns < 10 * MS);
    // Twice the limit: the server answers at its rate (fewer are measured: a request that
    // began in the window but waits past its end is not counted) and the queue shows in the
    // latency.
    s.qps = Some(600.0);
    let over = run(&s);
    let rps = over.metrics.requests_per_sec.unwrap();
    assert!((180.0..=330.0).contains(&rps), "{rps} at 600/s against a 300/s limit");
    assert!(over.latency.unwrap().p99_ns > 100 * MS, "queued answers wait");
}

/// What a scripted server does differently from answering `200 ok` to every request.
#[derive(Clone, Copy, Default)]
struct Script {
    /// Stall once, `stall` long, before answering the first request after this time.
    stall_from: Option<Instant>,
    stall: Duration,
    /// Never answer.
    silent: bool,
    /// Close the connection after each answer, without saying so (as a server whose
    /// keep-alive idle timeout fired would).
    close_after_answer: bool,
}

/// A scripted HTTP/1.1 server (see [`Script`]). Stops accepting when dropped.
struct Scripted {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn scripted(script: Script) -> Scripted {
    let Script { stall_from, stall, silent, close_after_answer } = script;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(2));
                continue;
            };
            let stalled = stalled.clone();
            let stopping = stopping.clone();
            thread::spawn(move || {
                conn.set_nonblocking(false).unwrap();
                conn.set_nodelay(true).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                while !stopping.load(Ordering::Relaxed) {
                    let n = match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            continue
                        }
                        Err(_) => return,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if silent {
                            continue;
                        }
                        if stall_from.is_some_and(|t| Instant::now() >= t) && !stalled.swap(true, Ordering::Relaxed) {
                            thread::sleep(stall);
                        }
                        if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err()
                            || close_after_answer
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    Scripted { addr, stop }
}

/// Latencies at or above `ns` in a result's histogram.
fn slower_than(r: &TestResult, ns: u64) -> u64 {
    let h = histogram::decode(&r.latency.as_ref().unwrap().histogram).unwrap();
    h.iter_recorded().filter(|v| v.value_iterated_to() >= ns).map(|v| v.count_at_value()).sum()
}

#[test]
fn an_open_loop_run_charges_a_stall_to_every_request_scheduled_during_it() {
    // At 100 requests/s a 300 ms stall delays ~30 scheduled requests; an open-loop client
    // measuring from the intended send time must show ~20 of them at >= 100 ms.
    let stall = Duration::from_millis(300);
    let server =
        scripted(Script { stall_from: Some(Instant::now() + Duration::from_millis(600)), stall, ..Script::default() });
    let mut s = spec(server.addr);
    s.qps = Some(100.0);
    s.duration_ms = 1200;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count;
    assert!((100..=130).contains(&n), "{n} requests at 100/s for 1.2 s");
    let slow = slower_than(&r, 100 * MS);
    assert!((15..=25).contains(&slow), "{slow} requests >= 100 ms; the stall hit ~20 scheduled ones");
    let max = r.latency.as_ref().unwrap().max_ns;
    assert!((290 * MS..400 * MS).contains(&max), "max {max} ns for a 300 ms stall");
    assert_eq!(one_entry(&r.servers, "unknown"), n, "answers without the header are counted as unknown");

    // The same stall in a closed loop is seen by the one request that waited for it only:
    // the coordinated omission the open loop corrects.
    let server =
        scripted(Script { stall_from: Some(Instant::now() + Duration::from_millis(600)), stall, ..Script::default() });
    let mut s = spec(server.addr);
    s.duration_ms = 1200;
    let r = run(&s);
    assert_eq!(slower_than(&r, 100 * MS), 1);
}

#[test]
fn answers_slower_than_the_timeout_are_errors() {
    let server = scripted(Script { silent: true, ..Script::default() });
    let mut s = spec(server.addr);
    s.timeout_ms = 100;
    s.duration_ms = 1000;
    s.connections = 2;
    let r = run(&s);
    assert!(r.latency.is_none());
    assert_eq!(r.metrics.status_counts.as_ref().map(|c| c.len()), Some(0));
    // Each connection times out every 100 ms, then reconnects and tries again: ~10 each.
    let errors = r.metrics.errors.unwrap();
    assert!((10..=22).contains(&errors), "{errors} timeouts");
}

#[test]
fn garbage_costs_only_its_connection() {
    let agent = start_agent("web-a", &[Which::Http]);
    let addr = agent.http.unwrap();
    let counters = &agent.ctx.counters;
    let rejected = || counters.http_rejected.load(Ordering::Relaxed);

    // Random bytes: hyper answers 400 and closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = s.write_all(&noise);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink); // the server closes; a reset is fine too
    wait_for("the random bytes to be rejected", || rejected() >= 1);

    // A truncated request: headers cut off, then the client goes away.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ").unwrap();
    drop(s);
    wait_for("the truncated request to be rejected", || rejected() >= 2);

    // A head far beyond any limit.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20)).as_bytes());
    let _ = s.read_to_end(&mut sink);
    wait_for("the oversized head to be rejected", || rejected() >= 3);

    // A client vanishing between requests is not a protocol error.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut answer = [0u8; 64];
    let _ = s.read(&mut answer).unwrap();
    drop(s);

    // The server still serves, keep-alive included.
    let mut s = spec(addr);
    s.duration_ms = 300;
    let r = run(&s);
    assert!(r.latency.unwrap().count > 50);
    assert_eq!(r.metrics.errors, Some(0));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(rejected(), 3);
}

#[test]
fn a_cancelled_test_returns_promptly() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.duration_ms = 30_000;
    s.connections = 4;
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(400));
        canceller.cancel();
    });
    let t0 = Instant::now();
    let r = load::run(&s, &cancel);
    assert!(matches!(r, Err(TestError::Cancelled)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());

    // Cancellation also ends an open-loop run waiting for its next slot.
    s.qps = Some(0.5);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        canceller.cancel();
    });
    let t0 = Instant::now();
    assert!(matches!(load::run(&s, &cancel), Err(TestError::Cancelled)));
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let s = spec(port);
    let t0 = Instant::now();
    match load::run(&s, &CancellationToken::new()) {
        Err(e @ TestError::Connect { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&port.to_string()), "{msg}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "a refused target must fail at once");
}

#[test]
fn a_server_going_away_mid_run_counts_errors() {
    let agent = start_agent("web-a", &[Which::Http]);
    let mut s = spec(agent.http.unwrap());
    s.duration_ms = 800;
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        drop(agent); // stops the server and its connections
    });
    let r = run(&s);
    stopper.join().unwrap();
    let n = r.latency.as_ref().unwrap().count;
    assert!(n > 50, "{n}");
    // After the stop every reconnect is refused, paced by the client's retry pause.
    let errors = r.metrics.errors.unwrap();
    assert!((5..=100).contains(&errors), "{errors} errors after the server went away");
}

#[test]
fn a_kept_alive_connection_the_server_closed_is_retried_not_failed() {
    let server = scripted(Script { close_after_answer: true, ..Script::default() });
    let mut s = spec(server.addr);
    s.duration_ms = 500;
    let r = run(&s);
    let n = r.latency.as_ref().unwrap().count;
    assert!(n > 20, "{n}");
    assert_eq!(r.metrics.errors, Some(0), "each request found its connection closed and resent once");
    let connects = r.connect.as_ref().unwrap().count;
    assert!(connects >= n, "{connects} connects for {n} requests");
}

/// Answers with `code` in `r`.
fn status(r: &TestResult, code: &str) -> u64 {
    r.metrics.status_counts.as_ref().and_then(|c| c.get(code)).copied().unwrap_or(0)
}

/// Relays on loopback: every hop may forward only inside 127.0.0.0/8.
fn relay_agent(id: &str) -> common::TestAgent {
    common::start_agent_with(id, &[Which::Http], |ctx| {
        ctx.relay = Some(Arc::new(zonebench_agent::servers::relay::Relay::new(|ip| ip.is_loopback())));
    })
}

#[test]
fn a_chain_of_relays_answers_with_every_hop_first_to_last() {
    let hops = [relay_agent("hop-a"), relay_agent("hop-b"), relay_agent("hop-c")];
    let addr = |i: usize| hops[i].http.unwrap().to_string();
    let mut s = spec(hops[0].http.unwrap());
    s.relay = vec![addr(1), addr(2)];
    s.connections = 4;
    s.path = "/?size=100".into();
    let r = run(&s);
    assert_eq!(r.metrics.errors, Some(0), "{:?}", r.metrics);
    assert_eq!(r.servers.keys().collect::<Vec<_>>(), ["hop-a,hop-b,hop-c"], "{:?}", r.servers);
    assert_eq!(status(&r, "200"), one_entry(&r.servers, "hop-a,hop-b,hop-c"));
    // The last hop's answer comes back whole: 100 bytes per request.
    let rps = r.metrics.requests_per_sec.unwrap();
    let bits_per_request = r.metrics.throughput_bps.unwrap() / rps;
    assert!((bits_per_request - 800.0).abs() < 1.0, "{bits_per_request} bits per request");
    // Each relay kept one upstream connection per downstream one: 4, not one per request.
    let relayed = hops[1].ctx.counters.http_connections.load(Ordering::Relaxed);
    assert!(relayed <= 8, "hop-b accepted {relayed} connections for 4 kept-alive client connections");
    // Connection: close on the client: every hop reconnects, and the chain still answers.
    s.connection_close = true;
    let r = run(&s);
    assert_eq!(r.metrics.errors, Some(0));
    assert!(one_entry(&r.servers, "hop-a,hop-b,hop-c") > 0);
}

#[test]
fn a_chain_that_loops_is_refused_with_508_naming_the_path() {
    let a = relay_agent("hop-a");
    let b = relay_agent("hop-b");
    let mut s = spec(a.http.unwrap());
    s.relay = vec![b.http.unwrap().to_string(), a.http.unwrap().to_string()];
    let r = run(&s);
    let looped = status(&r, "508");
    assert!(looped > 0, "{:?}", r.metrics.status_counts);
    assert_eq!(r.metrics.status_counts.as_ref().map_or(0, |c| c.len()), 1, "only 508s: {:?}", r.metrics.status_counts);
    // The answer names the relays it went through, the looping one refusing.
    assert!(r.servers.contains_key("hop-a,hop-b,hop-a"), "{:?}", r.servers);
    let refused = a.ctx.counters.http_relay_refused.load(Ordering::Relaxed);
    assert!(refused > 0);
}

#[test]
fn a_server_without_relay_mode_refuses_chains_and_a_dead_hop_is_a_502() {
    let plain = start_agent("plain", &[Which::Http]);
    let relay = relay_agent("hop-a");
    let mut s = spec(plain.http.unwrap());
    s.relay = vec![relay.http.unwrap().to_string()];
    s.duration_ms = 300;
    let r = run(&s);
    assert!(status(&r, "403") > 0, "{:?}", r.metrics.status_counts);
    // A next hop nobody listens on: the relay answers 502 itself.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut s = spec(relay.http.unwrap());
    s.relay = vec![dead.to_string()];
    s.duration_ms = 300;
    let r = run(&s);
    assert!(status(&r, "502") > 0, "{:?}", r.metrics.status_counts);
    assert_eq!(r.servers.keys().collect::<Vec<_>>(), ["hop-a"]);
}
