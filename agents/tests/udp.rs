//! End to end on loopback: the UDP server's accounting and echo, udp-stream and udp-rr.
// Helpers outside #[test] fns (here and in `common`) unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Which;
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use zonebench_agent::load::{self, TestError};
use zonebench_agent::spec::{TestKind, TestSpec};
use zonebench_agent::wire::{FlowStats, UdpHeader, UdpKind, FLAG_WARMUP, UDP_HEADER_LEN};

fn spec(test: TestKind, target: SocketAddr) -> TestSpec {
    let mut s = TestSpec::new(test, target.to_string());
    s.warmup_ms = 200;
    s.duration_ms = 1000;
    s
}

fn header(kind: UdpKind, flow: u64, seq: u64) -> UdpHeader {
    UdpHeader { kind, flags: 0, id_len: 0, response_size: 0, flow, seq, ts_ns: 0 }
}

fn datagram(h: UdpHeader, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(UDP_HEADER_LEN)];
    h.encode_into(&mut b);
    b
}

/// A client socket on loopback connected to `server`, with a receive timeout.
fn client(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn ask_stats(s: &UdpSocket, flow: u64) -> (String, FlowStats) {
    s.send(&datagram(header(UdpKind::StatsRequest, flow, 0), 0)).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).unwrap();
    let h = UdpHeader::decode(&buf[..n]).unwrap();
    assert_eq!((h.kind, h.flow), (UdpKind::StatsReply, flow));
    let id = h.server_id(&buf[..n]).unwrap().to_string();
    (id.clone(), FlowStats::decode(&buf[UDP_HEADER_LEN + id.len()..n]).unwrap())
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn a_paced_stream_sends_at_its_rate_and_loses_nothing_on_loopback() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpStream, agent.udp.unwrap());
    s.rate_bps = Some(20_000_000);
    s.size = Some(1460);
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let expected = 20e6 * 1.0 / (1460.0 * 8.0); // ≈ 1712 datagrams in the 1 s window
    let sent = m.sent_packets.unwrap();
    assert!((sent as f64 - expected).abs() < expected * 0.1, "sent {sent}, expected ≈ {expected:.0}");
    assert_eq!(m.received_packets, Some(sent), "{m:?}");
    assert_eq!((m.lost_packets, m.loss_pct, m.errors), (Some(0), Some(0.0), Some(0)));
    assert_eq!(m.out_of_order_packets, Some(0));
    let bps = m.throughput_bps.unwrap();
    assert!((bps - 20e6).abs() < 2e6, "throughput {bps}");
    assert!(m.jitter_ns.is_some());
    assert_eq!(r.servers, [("echo-u".to_string(), sent)].into());
    assert_eq!(r.duration_ns, 1_000_000_000);
    // The warm-up datagrams (≈ 342) reached the server but were not counted in the flow.
    let arrived = counter(&agent.ctx.counters.udp_datagrams);
    let warm = arrived - sent - 1; // minus the stats request
    assert!((300..=380).contains(&warm), "{warm} warm-up datagrams arrived");
}

#[test]
fn a_stream_at_full_speed_reports_consistent_counts() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpStream, agent.udp.unwrap());
    s.rate_bps = Some(0);
    s.size = Some(200);
    s.warmup_ms = 100;
    s.duration_ms = 300;
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let (sent, received) = (m.sent_packets.unwrap(), m.received_packets.unwrap());
    assert!(sent > 1000, "as fast as possible sent only {sent}");
    assert_eq!(m.lost_packets, Some(sent - received));
    assert_eq!(r.servers["echo-u"], received);
}

/// A rate far above what the sender reaches (iperf3's `-b 0` asked as 100 Gbit/s through the
/// control API, which takes no 0) sends as fast as it can, and its datagrams count in the
/// window they are sent in: once, they all fell behind into the warm-up and nothing counted.
#[test]
fn a_rate_beyond_the_sender_sends_at_full_speed_and_counts_its_window() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpStream, agent.udp.unwrap());
    s.rate_bps = Some(100_000_000_000);
    s.size = Some(1400);
    s.warmup_ms = 300;
    s.duration_ms = 500;
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let (sent, received) = (m.sent_packets.unwrap(), m.received_packets.unwrap());
    assert!(sent > 1000, "100 Gbit/s asked sent only {sent} in the window");
    assert!(m.throughput_bps.unwrap() > 0.0);
    assert_eq!(m.lost_packets, Some(sent - received));
}

#[test]
fn the_sink_accounts_gaps_reorders_and_duplicates_of_a_hand_made_flow() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let s = client(agent.udp.unwrap());
    let flow = 0xfeed;
    let mut warm = header(UdpKind::Data, flow, 99);
    warm.flags = FLAG_WARMUP;
    s.send(&datagram(warm, 300)).unwrap();
    // 3 is lost, 4 comes late, 4 and 1 come twice.
    for seq in [0u64, 1, 2, 5, 6, 4, 4, 1] {
        s.send(&datagram(header(UdpKind::Data, flow, seq), 100)).unwrap();
    }
    let (id, st) = ask_stats(&s, flow);
    assert_eq!(id, "echo-u");
    assert_eq!(
        st,
        FlowStats { received: 6, bytes: 600, out_of_order: 1, duplicates: 2, next_seq: 7, jitter_ns: st.jitter_ns }
    );
    // A flow the server never saw reports zeros rather than nothing.
    assert_eq!(ask_stats(&s, 0xdead).1, FlowStats::default());
    // The duplicate-free in-order remainder keeps counting on the same flow.
    s.send(&datagram(header(UdpKind::Data, flow, 7), 100)).unwrap();
    let (_, st) = ask_stats(&s, flow);
    assert_eq!((st.received, st.next_seq), (7, 8));
}

#[test]
fn a_request_is_answered_with_the_id_and_padded_to_the_asked_size() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let s = client(agent.udp.unwrap());
    let mut buf = vec![0u8; 70_000];
    for (asked, expected) in [(1u32, UDP_HEADER_LEN + 6), (1000, 1000), (70_000, 65_507)] {
        let mut h = header(UdpKind::Request, 42, u64::from(asked));
        h.response_size = asked;
        h.ts_ns = 777;
        s.send(&datagram(h, 40)).unwrap();
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(n, expected, "answer to a request for {asked} bytes");
        let a = UdpHeader::decode(&buf[..n]).unwrap();
        assert_eq!((a.kind, a.flow, a.seq, a.ts_ns), (UdpKind::Response, 42, u64::from(asked), 777));
        assert_eq!(a.server_id(&buf[..n]).unwrap(), "echo-u");
    }
}

#[test]
fn garbage_datagrams_are_rejected_and_the_server_keeps_answering() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let s = client(agent.udp.unwrap());
    let mut random = vec![0u8; 500];
    rand::rng().fill_bytes(&mut random);
    random[0] = b'X'; // cannot start with the magic by chance
    let mut wrong_magic = datagram(header(UdpKind::Request, 1, 1), 64);
    wrong_magic[0..4].copy_from_slice(b"ZBU9");
    let mut unknown_kind = datagram(header(UdpKind::Data, 1, 1), 64);
    unknown_kind[4] = 9;
    let mut id_past_end = datagram(header(UdpKind::Request, 1, 1), 44);
    id_past_end[6] = 30;
    let stray_answer = datagram(header(UdpKind::Response, 1, 1), 64);
    let garbage: [&[u8]; 7] = [&random, b"ZBU1short", &[], &wrong_magic, &unknown_kind, &id_past_end, &stray_answer];
    for g in garbage {
        s.send(g).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while counter(&agent.ctx.counters.udp_rejected) < garbage.len() as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counter(&agent.ctx.counters.udp_rejected), garbage.len() as u64);
    assert_eq!(counter(&agent.ctx.counters.udp_datagrams), 0);
    let r = load::run(&spec(TestKind::UdpRr, agent.udp.unwrap()), &CancellationToken::new()).unwrap();
    assert!(r.metrics.transactions_per_sec.unwrap() > 100.0, "{:?}", r.metrics);
}

#[test]
fn udp_rr_records_a_histogram_and_counts_answers_per_server() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpRr, agent.udp.unwrap());
    s.request_size = 1; // padded to the 40-byte header
    s.response_size = 512;
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let lat = r.latency.as_ref().expect("a latency histogram");
    assert!(lat.count > 100, "{lat:?}");
    assert!(lat.p50_ns < 10_000_000, "loopback p50 {} ns", lat.p50_ns);
    assert_eq!(r.servers, [("echo-u".to_string(), lat.count)].into());
    assert_eq!((r.metrics.lost_packets, r.metrics.errors), (Some(0), Some(0)));
    let tps = r.metrics.transactions_per_sec.unwrap();
    assert!((tps - lat.count as f64).abs() < 1.0, "1 s window: {tps} tps vs {} samples", lat.count);
    // The 1 s window plus the warm-up: every request arrived, none of the warm-up ones is
    // in the histogram.
    assert!(counter(&agent.ctx.counters.udp_datagrams) > lat.count);
}

#[test]
fn udp_rr_with_more_flows_than_threads_shares_runtimes() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpRr, agent.udp.unwrap());
    s.connections = 4;
    s.threads = Some(1);
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let lat = r.latency.as_ref().expect("a latency histogram");
    assert!(lat.count > 100);
    assert_eq!(r.servers["echo-u"], lat.count);
    assert_eq!(r.metrics.lost_packets, Some(0));
}

#[test]
fn udp_rr_against_a_silent_port_counts_timeouts_as_loss_and_ends_on_time() {
    // A socket that never answers: every request times out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A closed port: the kernel answers with ICMP port unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (target, threads) in [(silent.local_addr().unwrap(), None), (closed, None), (closed, Some(1))] {
        let mut s = spec(TestKind::UdpRr, target);
        s.connections = 2;
        s.threads = threads;
        let t0 = Instant::now();
        let r = load::run(&s, &CancellationToken::new()).unwrap();
        let took = t0.elapsed();
        common::check_result(&r);
        assert!(took < Duration::from_millis(1200 + 300), "took {took:?}");
        let m = &r.metrics;
        // 2 flows × (1 s / 200 ms wait) ≈ 10 timeouts, minus the one cut by the end.
        let lost = m.lost_packets.unwrap();
        assert!((6..=12).contains(&lost), "{target} threads {threads:?}: lost {lost}");
        assert_eq!(m.errors, Some(lost));
        assert_eq!(m.loss_pct, Some(100.0));
        assert_eq!(m.transactions_per_sec, Some(0.0));
        assert!(r.latency.is_none() && r.servers.is_empty());
    }
}

#[test]
fn udp_stream_without_a_receiver_fails_saying_why() {
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut s = spec(TestKind::UdpStream, closed);
    s.duration_ms = 200;
    s.warmup_ms = 0;
    s.timeout_ms = 500;
    let t0 = Instant::now();
    let err = load::run(&s, &CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("no receiver report"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
}

#[test]
fn a_datagram_smaller_than_the_header_is_refused_by_field_name() {
    let mut s = spec(TestKind::UdpStream, "127.0.0.1:9".parse().unwrap());
    s.size = Some(20);
    match load::run(&s, &CancellationToken::new()) {
        Err(TestError::Spec(e)) => assert_eq!(e.field, "size"),
        other => panic!("expected a size error, got {other:?}"),
    }
}

#[test]
fn cancelled_tests_return_promptly() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    for (test, rate) in
        [(TestKind::UdpStream, Some(0)), (TestKind::UdpStream, Some(1_000_000)), (TestKind::UdpRr, None)]
    {
        let mut s = spec(test, agent.udp.unwrap());
        s.duration_ms = 10_000;
        s.rate_bps = rate;
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                cancel.cancel();
            })
        };
        let t0 = Instant::now();
        let r = load::run(&s, &cancel);
        assert!(matches!(r, Err(TestError::Cancelled)), "{test} {rate:?}: {r:?}");
        assert!(t0.elapsed() < Duration::from_millis(800), "{test} {rate:?} took {:?}", t0.elapsed());
        canceller.join().unwrap();
    }
    assert!(counter(&agent.ctx.counters.udp_datagrams) > 0);
}

/// A relay between a client and `server` that drops every `nth` measured data datagram and
/// forwards everything else both ways. Returns its address, a stop flag and its drop count.
fn lossy_relay(
    server: SocketAddr,
    nth: u64,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<u64>) {
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let addr = relay.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let (mut client, mut data, mut dropped) = (None, 0u64, 0u64);
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, from)) = relay.recv_from(&mut buf) else { continue };
            if from == server {
                if let Some(c) = client {
                    relay.send_to(&buf[..n], c).unwrap();
                }
                continue;
            }
            client = Some(from);
            let h = UdpHeader::decode(&buf[..n]).unwrap();
            if h.kind == UdpKind::Data && h.flags & FLAG_WARMUP == 0 {
                data += 1;
                if data % nth == 0 {
                    dropped += 1;
                    continue;
                }
            }
            relay.send_to(&buf[..n], server).unwrap();
        }
        dropped
    });
    (addr, stop, handle)
}

#[test]
fn datagrams_dropped_on_the_way_are_reported_as_lost() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let (relay, stop, handle) = lossy_relay(agent.udp.unwrap(), 10);
    let mut s = spec(TestKind::UdpStream, relay);
    s.rate_bps = Some(10_000_000);
    s.size = Some(1000);
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    stop.store(true, Ordering::Relaxed);
    let dropped = handle.join().unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let sent = m.sent_packets.unwrap();
    assert!(dropped > 100, "{dropped}");
    assert_eq!(m.lost_packets, Some(dropped), "{m:?}");
    assert_eq!(m.received_packets, Some(sent - dropped));
    let pct = m.loss_pct.unwrap();
    assert!((pct - 10.0).abs() < 0.2, "loss {pct}%");
    assert_eq!(m.out_of_order_packets, Some(0));
    assert_eq!(r.servers["echo-u"], sent - dropped);
}

#[test]
fn parallel_streams_are_separate_flows_whose_counts_add_up() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpStream, agent.udp.unwrap());
    s.parallel = 3;
    s.rate_bps = Some(2_000_000);
    s.size = Some(500);
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let expected = 3.0 * 2e6 / (500.0 * 8.0); // 1500: the rate applies per stream
    let sent = m.sent_packets.unwrap();
    assert!((sent as f64 - expected).abs() < expected * 0.1, "sent {sent}");
    assert_eq!((m.received_packets, m.lost_packets), (Some(sent), Some(0)));
    assert_eq!(r.servers["echo-u"], sent);
    s.parallel = 1000;
    match load::run(&s, &CancellationToken::new()) {
        Err(TestError::Spec(e)) => assert_eq!(e.field, "parallel"),
        other => panic!("expected a parallel error, got {other:?}"),
    }
}

#[test]
fn a_late_answer_is_never_credited_to_the_next_transaction() {
    // A fake server that answers even requests at once and odd ones only when the next
    // request arrives, long after the client gave up on them (and under another id).
    let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
    fake.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let target = fake.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut held: Option<(UdpHeader, SocketAddr)> = None;
        let answer = |h: UdpHeader, id: &[u8], to: SocketAddr| {
            let mut b = vec![0u8; UDP_HEADER_LEN + id.len()];
            UdpHeader { kind: UdpKind::Response, id_len: id.len() as u8, ..h }.encode_into(&mut b);
            b[UDP_HEADER_LEN..].copy_from_slice(id);
            fake.send_to(&b, to).unwrap();
        };
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, from)) = fake.recv_from(&mut buf) else { continue };
            let h = UdpHeader::decode(&buf[..n]).unwrap();
            if let Some((late, to)) = held.take() {
                answer(late, b"late", to);
            }
            if h.seq.is_multiple_of(2) {
                answer(h, b"prompt", from);
            } else {
                held = Some((h, from));
            }
        }
    });
    let r = load::run(&spec(TestKind::UdpRr, target), &CancellationToken::new()).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    common::check_result(&r);
    let m = &r.metrics;
    let answered = r.latency.as_ref().unwrap().count;
    let lost = m.lost_packets.unwrap();
    // Each odd transaction waits 200 ms: about 5 of them in the 1 s window, each followed by
    // one prompt even transaction.
    assert!((3..=6).contains(&lost), "lost {lost}");
    assert!(answered.abs_diff(lost) <= 1, "answered {answered}, lost {lost}");
    assert_eq!(r.servers, [("prompt".to_string(), answered)].into());
}

#[test]
fn udp_rr_in_the_open_loop_keeps_the_asked_rate_and_a_limited_server_caps_it() {
    let agent = common::start_agent("echo-u", &[Which::Udp]);
    let mut s = spec(TestKind::UdpRr, agent.udp.unwrap());
    s.qps = Some(400.0);
    let r = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&r);
    let tps = r.metrics.transactions_per_sec.unwrap();
    assert!((340.0..=460.0).contains(&tps), "{tps} of 400/s");
    assert!(r.latency.unwrap().p50_ns < 10_000_000);

    let limited = |ctx: &mut zonebench_agent::servers::ServerCtx| {
        ctx.pacer = zonebench_agent::servers::pacer::Pacer::new(300.0).map(std::sync::Arc::new);
    };
    let slow = common::start_agent_with("echo-slow", &[Which::Udp], limited);
    let mut s = spec(TestKind::UdpRr, slow.udp.unwrap());
    s.connections = 2;
    s.threads = Some(1);
    s.qps = Some(600.0);
    let over = load::run(&s, &CancellationToken::new()).unwrap();
    common::check_result(&over);
    let tps = over.metrics.transactions_per_sec.unwrap();
    assert!((180.0..=330.0).contains(&tps), "{tps} at 600/s against a 300/s limit");
    assert!(over.latency.unwrap().p99_ns > 50_000_000, "queued answers wait");
}
