//! Hostile clients of a real `zonebench-agent serve` process on loopback: targets that try
//! to slip past `--allow-cidr`, oversized headers, slowloris on the control and HTTP ports,
//! and a garbage flood on every port (shorter here than the 60 s of
//! `scripts/garbage-flood.sh`, which gives the figures). The agent runs under a low
//! descriptor limit (`prlimit`), so a server without a connection cap would run out of
//! descriptors within the flood; the bounds checked are what the caps allow, and after the
//! flood real tests through the control API must still succeed.
#![allow(clippy::unwrap_used)]

#[path = "common/flood.rs"]
mod flood;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use flood::{http, real_test, start_agent, usage, Agent};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zonebench-agent"))
}

fn post_test(agent: &Agent, target: &str) -> (u16, serde_json::Value) {
    let spec = serde_json::json!({"test": "tcp-rr", "target": target, "duration_ms": 100, "warmup_ms": 0});
    let (status, body) =
        http(agent.ports.control, "POST", "/v1/tests", Some(&agent.token), Some(&spec.to_string())).unwrap();
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn allow_cidr_holds_against_mapped_unspecified_named_and_odd_targets() {
    // Allowed: 10.0.0.0/8 only (a pod network), given in IPv4-mapped form too.
    let agent = start_agent(bin(), None, &["--allow-cidr", "10.0.0.0/8", "--allow-cidr", "::ffff:192.0.2.0/120"]);
    let p = agent.ports.tcp;
    let forbidden = [
        // IPv4-mapped IPv6 of loopback: reaches 127.0.0.1, so it is checked as that.
        format!("[::ffff:127.0.0.1]:{p}"),
        // Names and the spellings getaddrinfo accepts for 127.0.0.1.
        format!("localhost:{p}"),
        format!("0x7f000001:{p}"),
        format!("2130706433:{p}"),
        format!("127.1:{p}"),
        format!("[::1]:{p}"),
        // Outside the mapped block.
        format!("192.0.3.1:{p}"),
    ];
    for target in &forbidden {
        let (status, body) = post_test(&agent, target);
        assert_eq!(status, 403, "{target}: {body}");
        let e = body["error"].as_str().unwrap();
        assert!(e.contains(target.as_str()) && e.contains("--allow-cidr"), "{target}: {e}");
    }
    // A name is named with the address it resolved to.
    let (_, body) = post_test(&agent, &format!("localhost:{p}"));
    assert!(body["error"].as_str().unwrap().contains(&format!("(127.0.0.1:{p})")), "{body}");
    // Unspecified, broadcast and multicast reach more than one server (0.0.0.0 and :: the
    // local host): never a target, whatever is allowed. Port 0 and ports out of range are
    // no port.
    for target in [
        format!("0.0.0.0:{p}"),
        format!("[::]:{p}"),
        format!("[::ffff:0.0.0.0]:{p}"),
        format!("255.255.255.255:{p}"),
        format!("224.0.0.1:{p}"),
        "10.0.0.1:0".to_string(),
        "10.0.0.1:65536".to_string(),
        "10.0.0.1:-1".to_string(),
        "10.0.0.1".to_string(),
    ] {
        let (status, body) = post_test(&agent, &target);
        assert!(status == 400 || status == 403, "{target}: {status} {body}");
        if status == 400 {
            assert_eq!(body["field"], "target", "{target}: {body}");
        }
    }
    let (status, body) = post_test(&agent, "10.0.0.1:0");
    assert_eq!(status, 400, "port 0: {body}");
    assert!(body["error"].as_str().unwrap().contains("port 0"), "{body}");
    // Inside the blocks, as written and IPv4-mapped (nothing listens there: the test is
    // accepted, then fails to connect, which is fine).
    for target in ["10.255.0.1:7", "[::ffff:10.1.2.3]:7", "192.0.2.7:7", "[::ffff:192.0.2.8]:7"] {
        let (status, body) = post_test(&agent, target);
        assert_eq!(status, 201, "{target} is inside the allowed blocks: {body}");
    }
    // The probe route holds the same line.
    let probe = r#"{"target":"[::ffff:127.0.0.1]:7","protocol":"tcp","within_ms":100}"#;
    let (status, body) = http(agent.ports.control, "POST", "/v1/probe", Some(&agent.token), Some(probe)).unwrap();
    assert_eq!(status, 403, "{body}");
}

/// Sends `head` and reads the status line of the answer (or what ended the connection).
fn answer_to(port: u16, head: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it read everything: a failed write is fine.
    let _ = s.write_all(head);
    let mut buf = vec![0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string(),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn oversized_headers_get_431_and_cost_only_their_connection() {
    let agent = start_agent(bin(), None, &[]);
    let big = |n: usize| [b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".as_slice(), &vec![b'a'; n], b"\r\n\r\n"].concat();
    // The HTTP data server holds at most 16 KiB of head (hyper may read up to twice that
    // before it checks): 64 KiB is refused, a normal request is not.
    for (port, n) in [(agent.ports.http, 64 << 10), (agent.ports.http, 1 << 20), (agent.ports.control, 1 << 20)] {
        let status = answer_to(port, &big(n));
        assert!(status.starts_with("HTTP/1.1 431"), "{n}-byte header on port {port}: {status:?}");
    }
    assert!(answer_to(agent.ports.http, &big(1000)).starts_with("HTTP/1.1 200"));
    // A huge body, declared: the control API refuses it before reading it.
    let head = format!(
        "POST /v1/tests HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000000\r\n\r\n",
        agent.token
    );
    assert!(answer_to(agent.ports.control, head.as_bytes()).starts_with("HTTP/1.1 413"));
    assert_eq!(http(agent.ports.control, "GET", "/healthz", None, None).map(|r| r.0), Some(200));
    assert_eq!(http(agent.ports.http, "GET", "/", None, None).map(|r| r.0), Some(200));
}

/// Opens `n` connections to `port` that trickle a request head, one byte per 200 ms, from
/// one thread; returns how long each stayed open (None: still open at `until`).
fn slowloris(port: u16, n: usize, until: Duration) -> Vec<Option<Duration>> {
    let start = Instant::now();
    let mut conns: Vec<(TcpStream, Option<Duration>)> = Vec::new();
    for _ in 0..n {
        // Past the server's cap a connect waits in the backlog: it still counts, open.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push((s, None));
    }
    let mut b = [0u8; 256];
    while start.elapsed() < until && conns.iter().any(|(_, closed)| closed.is_none()) {
        for (s, closed) in conns.iter_mut().filter(|(_, c)| c.is_none()) {
            let gone = matches!(s.read(&mut b), Ok(0)) || s.write(b"x").is_err();
            if gone {
                *closed = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    conns.into_iter().map(|(_, c)| c).collect()
}

#[test]
fn slowloris_on_the_control_and_http_ports_is_bounded_and_timed_out() {
    // 256 descriptors: the HTTP server may hold 64 connections, the control API 64.
    let agent = start_agent(bin(), Some(256), &[]);
    let pid = agent.child.id();
    let (_, fds_before) = usage(pid);
    let sampler = std::thread::spawn(move || {
        let mut max = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(14) {
            max = max.max(usage(pid).1);
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    });
    let control = std::thread::spawn({
        let port = agent.ports.control;
        move || slowloris(port, 100, Duration::from_secs(14))
    });
    let data = std::thread::spawn({
        let port = agent.ports.http;
        move || slowloris(port, 100, Duration::from_secs(14))
    });
    let control = control.join().unwrap();
    let data = data.join().unwrap();
    let fds_max = sampler.join().unwrap();
    eprintln!("fds before {fds_before}, max {fds_max} under 200 slowloris connections");
    // Accepted connections are the caps' worth; the rest waited in the backlog.
    assert!(fds_max <= fds_before + 64 + 64 + 4, "fds {fds_before} → {fds_max}: more than the caps allow");
    // The control API closes a head not finished within its 10 s header timeout, each
    // connection counted from when it was accepted (the last ones waited for a slot).
    let closed: Vec<Duration> = control.iter().flatten().copied().collect();
    assert!(
        closed.len() >= 64,
        "the control API closed only {} of 100 trickling connections: {control:?}",
        closed.len()
    );
    assert!(closed.iter().all(|d| *d >= Duration::from_secs(9)), "closed before the header timeout: {closed:?}");
    // The HTTP server's guard closes them after its 30 s period (its unit tests check that
    // with a short period): here they are only held to its cap, checked above.
    drop(data);
    // Right after, both ports answer.
    assert_eq!(http(agent.ports.control, "GET", "/healthz", None, None).map(|r| r.0), Some(200));
    let r = real_test(&agent, "http", agent.ports.http);
    assert!(r["servers"]["flooded"].as_u64().unwrap() > 0, "{r:#}");
}

#[test]
fn a_garbage_flood_on_every_port_keeps_rss_and_fds_bounded_and_a_real_test_succeeds_right_after() {
    // 400 descriptors: each data server holds at most 100 connections, the control API 64.
    let agent = start_agent(bin(), Some(400), &[]);
    let f = flood::flood(&agent, 8.0, 32, 16);
    eprintln!("{f}");
    assert!(f.connections > 1000 && f.datagrams > 10_000, "the flood was a flood: {f:?}");
    // Descriptors: what the agent had, plus its caps (100 + 100 + 64), plus a few for
    // load-generator threads and files.
    let bound = f.fds_before + 100 + 100 + 64 + 16;
    assert!(f.fds_max <= bound, "open descriptors reached {} (bound {bound}): {f:?}", f.fds_max);
    // Memory: a bounded buffer per connection (16 KiB head, 64 KiB body cap pieces).
    assert!(f.rss_max_kb < 256 * 1024, "RSS reached {} kB: {f:?}", f.rss_max_kb);
    let alive = agent.child.id();
    assert!(Path::new(&format!("/proc/{alive}")).exists(), "the agent survived");
    for (kind, port) in [("tcp-rr", agent.ports.tcp), ("http", agent.ports.http), ("udp-rr", agent.ports.udp)] {
        let r = real_test(&agent, kind, port);
        assert!(r["servers"]["flooded"].as_u64().unwrap_or(0) > 0, "{kind} after the flood: {r:#}");
        assert_eq!(r["metrics"]["errors"].as_u64().unwrap_or(0), 0, "{kind} after the flood: {r:#}");
    }
}
