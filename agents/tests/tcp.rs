//! End to end on loopback: tcp-stream, tcp-rr and tcp-crr against the agent's TCP server,
//! garbage on the data port, cancellation, unreachable targets and the `client` CLI.
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{check_result, start_agent, TestAgent, Which};
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use zonebench_agent::load::{self, TestError};
use zonebench_agent::spec::{TestKind, TestResult, TestSpec};
use zonebench_agent::wire::{Preamble, TcpMode};

fn agent() -> TestAgent {
    start_agent("echo-a", &[Which::Tcp])
}

fn tcp(agent: &TestAgent) -> SocketAddr {
    agent.tcp.expect("the agent runs a TCP server")
}

fn spec(kind: TestKind, target: SocketAddr) -> TestSpec {
    let mut spec = TestSpec::new(kind, target.to_string());
    spec.warmup_ms = 200;
    spec.duration_ms = 1000;
    spec
}

fn run(spec: &TestSpec) -> TestResult {
    let r = load::run(spec, &CancellationToken::new()).unwrap_or_else(|e| panic!("{} failed: {e}", spec.test));
    check_result(&r);
    assert_eq!(r.test, spec.test);
    assert_eq!(r.duration_ns, spec.duration_ms * 1_000_000);
    r
}

fn only_echo_a(n: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("echo-a".to_string(), n)])
}

/// Transactions the result reports, from the rate and the measured window.
fn transactions(r: &TestResult) -> u64 {
    let tps = r.metrics.transactions_per_sec.expect("rr tests report transactions/s");
    (tps * r.duration_ns as f64 / 1e9).round() as u64
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tcp_rr_counts_only_measured_transactions_and_who_answered_them() {
    let agent = agent();
    let mut s = spec(TestKind::TcpRr, tcp(&agent));
    s.warmup_ms = 500;
    s.duration_ms = 500;
    let r = run(&s);
    let lat = r.latency.as_ref().expect("tcp-rr has a latency histogram");
    let n = transactions(&r);
    assert!(n > 100, "only {n} transactions in 0.5 s");
    assert_eq!(lat.count, n);
    assert_eq!(r.servers, only_echo_a(n));
    assert_eq!(r.metrics.errors, Some(0));
    assert!(lat.min_ns > 0 && lat.min_ns <= lat.p50_ns && lat.p50_ns <= lat.p99_ns && lat.p99_ns <= lat.max_ns);
    assert!(r.metrics.throughput_bps.is_none() && r.connect.is_none());
    // The server answered the warm-up too (half the run), the result must not include it.
    let served = agent.ctx.counters.tcp_transactions.load(Ordering::Relaxed);
    assert!(served > n, "server answered {served}, client measured {n}");
    let share = n as f64 / served as f64;
    assert!(share < 0.8, "measured {n} of {served} answers: the warm-up was counted");
}

#[test]
fn tcp_rr_with_flows_sharing_a_thread_measures_every_flow() {
    let agent = agent();
    let mut s = spec(TestKind::TcpRr, tcp(&agent));
    s.connections = 3;
    s.threads = Some(1);
    s.request_size = 100;
    s.response_size = 3000;
    let r = run(&s);
    let n = transactions(&r);
    assert!(n > 100, "only {n} transactions");
    assert_eq!(r.latency.as_ref().map(|l| l.count), Some(n));
    assert_eq!(r.servers, only_echo_a(n));
    assert_eq!(r.metrics.errors, Some(0));
}

#[test]
fn tcp_crr_records_a_connect_and_a_transaction_time_per_connection() {
    let agent = agent();
    for (connections, threads) in [(1, None), (2, Some(1))] {
        let mut s = spec(TestKind::TcpCrr, tcp(&agent));
        s.connections = connections;
        s.threads = threads;
        s.response_size = 200;
        let before = agent.ctx.counters.tcp_connections.load(Ordering::Relaxed);
        let r = run(&s);
        let n = transactions(&r);
        assert!(n > 20, "only {n} connections in 1 s");
        let lat = r.latency.as_ref().expect("tcp-crr has a latency histogram");
        let connect = r.connect.as_ref().expect("tcp-crr has a connect histogram");
        assert_eq!(lat.count, n);
        assert_eq!(connect.count, n);
        assert!(connect.p50_ns <= lat.p50_ns && connect.min_ns <= lat.min_ns);
        assert_eq!(r.servers, only_echo_a(n));
        assert_eq!(r.metrics.errors, Some(0));
        // One connection per transaction, warm-up and probe included on the server.
        let opened = agent.ctx.counters.tcp_connections.load(Ordering::Relaxed) - before;
        assert!(opened > n, "server saw {opened} connections, client measured {n}");
    }
    assert_eq!(agent.ctx.counters.tcp_rejected.load(Ordering::Relaxed), 0);
}

#[test]
fn tcp_stream_forward_reports_throughput_and_retransmits() {
    let agent = agent();
    let r = run(&spec(TestKind::TcpStream, tcp(&agent)));
    let bps = r.metrics.throughput_bps.expect("tcp-stream reports throughput");
    assert!(bps > 1e8, "{bps} bit/s on loopback");
    assert!(r.metrics.retransmits.is_some(), "forward streams report the client's retransmits");
    assert_eq!(r.metrics.errors, Some(0));
    assert_eq!(r.servers, only_echo_a(1));
    assert!(r.latency.is_none() && r.metrics.transactions_per_sec.is_none());
    // The sink also received the warm-up, which the result leaves out.
    let measured = (bps / 8.0 * r.duration_ns as f64 / 1e9) as u64;
    let received = agent.ctx.counters.tcp_bytes_received.load(Ordering::Relaxed);
    assert!(received > measured, "sink got {received} bytes, measured {measured}");
}

#[test]
fn tcp_stream_reverse_reads_from_the_source_and_reports_no_retransmits() {
    let agent = agent();
    let mut s = spec(TestKind::TcpStream, tcp(&agent));
    s.reverse = true;
    s.size = Some(64 << 10);
    let r = run(&s);
    let bps = r.metrics.throughput_bps.expect("tcp-stream reports throughput");
    assert!(bps > 1e8, "{bps} bit/s on loopback");
    assert_eq!(r.metrics.retransmits, None, "the client cannot see the server's retransmits");
    assert_eq!(r.metrics.errors, Some(0));
    assert_eq!(r.servers, only_echo_a(1));
    // The source also sent the warm-up; it stops (and counts) once the client has gone.
    let measured = (bps / 8.0 * r.duration_ns as f64 / 1e9) as u64;
    wait_for("the source to count what it sent", || {
        agent.ctx.counters.tcp_bytes_sent.load(Ordering::Relaxed) > measured
    });
    assert_eq!(agent.ctx.counters.tcp_rejected.load(Ordering::Relaxed), 0, "a reverse stream ends cleanly");
}

#[test]
fn tcp_stream_counts_parallel_streams_per_server() {
    let agent = agent();
    for threads in [None, Some(1)] {
        let mut s = spec(TestKind::TcpStream, tcp(&agent));
        s.parallel = 2;
        s.threads = threads;
        let r = run(&s);
        assert!(r.metrics.throughput_bps.is_some_and(|b| b > 1e8));
        assert_eq!(r.metrics.errors, Some(0));
        assert_eq!(r.servers, only_echo_a(2), "servers counts streams for tcp-stream");
    }
}

#[test]
fn a_cancelled_test_returns_promptly() {
    let agent = agent();
    for kind in [TestKind::TcpStream, TestKind::TcpRr, TestKind::TcpCrr] {
        let mut s = spec(kind, tcp(&agent));
        s.duration_ms = 60_000;
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                cancel.cancel();
            })
        };
        let started = Instant::now();
        let r = load::run(&s, &cancel);
        let took = started.elapsed();
        canceller.join().unwrap();
        assert!(matches!(r, Err(TestError::Cancelled)), "{kind}: {r:?}");
        assert!(took < Duration::from_millis(1500), "{kind} took {took:?} to stop");
    }
}

#[test]
fn a_stalled_server_is_cut_at_the_timeout_not_waited_for() {
    // A listener that accepts (the kernel does) and never answers: no hello arrives.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = spec(TestKind::TcpRr, silent.local_addr().unwrap());
    s.timeout_ms = 300;
    let started = Instant::now();
    let err = load::run(&s, &CancellationToken::new()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(err, TestError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[test]
fn a_connect_to_a_closed_port_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for kind in [TestKind::TcpStream, TestKind::TcpRr, TestKind::TcpCrr] {
        let started = Instant::now();
        let err = load::run(&spec(kind, closed), &CancellationToken::new()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{kind} took {:?}", started.elapsed());
        assert!(matches!(err, TestError::Connect { .. }), "{kind}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&closed.to_string()) && msg.to_lowercase().contains("refused"), "{kind}: {msg}");
    }
}

#[test]
fn a_target_that_is_not_a_zonebench_server_is_named_as_such() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().take(3) {
            let mut c = c.unwrap();
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            // Close only after the client gave up, so it reads the answer rather than a reset.
            let _ = c.read_to_end(&mut Vec::new());
        }
    });
    for kind in [TestKind::TcpStream, TestKind::TcpRr, TestKind::TcpCrr] {
        let err = load::run(&spec(kind, addr), &CancellationToken::new()).unwrap_err();
        assert!(err.to_string().contains("zonebench TCP server"), "{kind}: {err}");
    }
}

// ---- garbage on the data port ----

/// Opens a raw connection, lets `misbehave` abuse it, then checks the server counted one
/// rejection and still serves a proper tcp-rr.
fn garbage_costs_only_its_connection(misbehave: impl FnOnce(TcpStream)) {
    let agent = agent();
    let rejected = || agent.ctx.counters.tcp_rejected.load(Ordering::Relaxed);
    assert_eq!(rejected(), 0);
    misbehave(TcpStream::connect(tcp(&agent)).expect("connect to the agent"));
    wait_for("the server to reject the connection", || rejected() >= 1);
    let mut s = spec(TestKind::TcpRr, tcp(&agent));
    s.warmup_ms = 50;
    s.duration_ms = 300;
    let r = run(&s);
    assert!(transactions(&r) > 10, "the server stopped answering after garbage");
    assert_eq!(r.metrics.errors, Some(0));
    assert_eq!(rejected(), 1, "the proper test's connection was rejected too");
}

/// Closes with RST, like a process killed with unread data: the peer vanishes abruptly.
fn vanish(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(s);
}

fn preamble(mode: TcpMode, request_size: u32, response_size: u32) -> [u8; 16] {
    Preamble { mode, request_size, response_size }.encode()
}

#[test]
fn random_bytes_cost_only_their_connection() {
    garbage_costs_only_its_connection(|mut s| {
        let mut junk = [0u8; 64];
        rand::rng().fill_bytes(&mut junk);
        junk[0] = b'X'; // never the magic by chance
        s.write_all(&junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
}

#[test]
fn a_wrong_magic_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        let mut p = preamble(TcpMode::Echo, 1, 1);
        p[..4].copy_from_slice(b"ZBT9");
        s.write_all(&p).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
}

#[test]
fn an_unknown_mode_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        let mut p = preamble(TcpMode::Echo, 1, 1);
        p[4] = 42;
        s.write_all(&p).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
}

#[test]
fn an_oversized_answer_request_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        s.write_all(&preamble(TcpMode::Echo, 1, u32::MAX)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
}

#[test]
fn a_truncated_preamble_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        s.write_all(&preamble(TcpMode::Echo, 1, 1)[..9]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
}

#[test]
fn a_client_that_vanishes_mid_echo_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        s.write_all(&preamble(TcpMode::Echo, 100, 10)).unwrap();
        s.write_all(&[1u8; 150]).unwrap(); // one request and half of the next
        let mut answer = [0u8; 10];
        let mut hello = [0u8; 5 + 6];
        s.read_exact(&mut hello).unwrap();
        s.read_exact(&mut answer).unwrap();
        vanish(s);
    });
}

#[test]
fn a_client_that_vanishes_mid_sink_costs_only_its_connection() {
    garbage_costs_only_its_connection(|mut s| {
        s.write_all(&preamble(TcpMode::Sink, 0, 0)).unwrap();
        s.write_all(&[7u8; 100_000]).unwrap();
        vanish(s);
    });
}

// ---- the CLI ----

#[test]
fn the_client_cli_prints_a_schema_valid_tcp_rr_result() {
    let agent = agent();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zonebench-agent"))
        .args(["client", "tcp-rr", "--target", &tcp(&agent).to_string(), "--duration", "1s", "--warmup", "200ms"])
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::assert_schema_valid(&v);
    assert_eq!(v["test"], "tcp-rr");
    assert_eq!(v["duration_ns"], 1_000_000_000u64);
    let n = v["latency"]["count"].as_u64().unwrap();
    assert!(n > 100, "{v:#}");
    assert_eq!(v["servers"]["echo-a"].as_u64(), Some(n));
}

#[test]
fn the_client_cli_names_an_unreachable_target() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zonebench-agent"))
        .args(["client", "tcp-stream", "--target", &closed.to_string(), "--duration", "1s", "-o", "json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no result is printed for a failed test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&closed.to_string()) && err.contains("refused"), "{err}");
}

#[test]
fn tcp_rr_in_the_open_loop_keeps_the_asked_rate() {
    let agent = agent();
    let mut s = spec(TestKind::TcpRr, tcp(&agent));
    s.qps = Some(400.0);
    s.connections = 2;
    let r = run(&s);
    let n = transactions(&r);
    assert!((340..=460).contains(&n), "{n} transactions at 400/s for 1 s");
    assert_eq!(r.metrics.errors, Some(0));
    // Latency counts from the intended send time; on loopback that is still far below a
    // millisecond (the bound leaves room for a busy test machine).
    assert!(r.latency.unwrap().p50_ns < 10_000_000);
}

#[test]
fn tcp_rr_against_an_echo_server_limited_by_max_answer_qps_is_held_to_that_rate() {
    let limited = |ctx: &mut zonebench_agent::servers::ServerCtx| {
        ctx.pacer = zonebench_agent::servers::pacer::Pacer::new(300.0).map(std::sync::Arc::new);
    };
    let agent = common::start_agent_with("echo-slow", &[Which::Tcp], limited);
    let mut s = spec(TestKind::TcpRr, tcp(&agent));
    // Flows sharing one thread: the tokio path of the open loop.
    s.connections = 4;
    s.threads = Some(1);
    s.qps = Some(150.0);
    let under = run(&s);
    let tps = under.metrics.transactions_per_sec.unwrap();
    assert!((120.0..=180.0).contains(&tps), "{tps} of 150/s under a 300/s limit");
    // Twice the limit: the server answers at its rate and the open loop's lag shows in the
    // latency (from the intended send times), not as a quietly lower rate.
    s.qps = Some(600.0);
    let over = run(&s);
    let tps = over.metrics.transactions_per_sec.unwrap();
    assert!((180.0..=330.0).contains(&tps), "{tps} at 600/s against a 300/s limit");
    assert!(over.latency.unwrap().p99_ns > 100_000_000, "queued answers wait");
}
