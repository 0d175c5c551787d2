//! A garbage flood against a running `zonebench-agent serve` on loopback, shared by the
//! hostile-client test (`tests/hostile.rs`, a short flood) and `examples/garbage_flood.rs`
//! (`scripts/garbage-flood.sh`, 60 s): every port (TCP data, UDP, HTTP, TCP control) gets
//! random bytes, valid magic followed by garbage, oversized headers and bodies, slowloris
//! (headers trickled a byte at a time), idle connections and resets, from many threads at
//! once, while the agent's RSS and open descriptors are sampled from `/proc`. Everything
//! goes to 127.0.0.1 and stops at its deadline.
#![allow(dead_code)] // the test and the example use different parts

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The agent's ports, all on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub tcp: u16,
    pub udp: u16,
    pub http: u16,
    pub control: u16,
}

/// A `serve` process on loopback with a TCP control API, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub ports: Ports,
    pub token: String,
    pub dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `bin serve` on 127.0.0.1 with `extra` flags (under `prlimit --nofile=N:N` when
/// `nofile` is given) and waits until its control API answers.
pub fn start_agent(bin: &std::path::Path, nofile: Option<u64>, extra: &[&str]) -> Agent {
    let dir = std::env::temp_dir().join(format!("zb-flood-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "flood-token-0123456789abcdef".to_string();
    std::fs::write(dir.join("token"), &token).unwrap();
    let ports = Ports { tcp: free_port(), udp: free_port(), http: free_port(), control: free_port() };
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["serve", "--listen", "127.0.0.1", "--id", "flooded"])
        .args(["--tcp-port", &ports.tcp.to_string(), "--udp-port", &ports.udp.to_string()])
        .args(["--http-port", &ports.http.to_string()])
        .arg("--control")
        .arg(format!("tcp:127.0.0.1:{}", ports.control))
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    let agent = Agent { child, ports, token, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(agent.ports.control, "GET", "/healthz", None, None).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "the agent did not answer /healthz within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// One HTTP/1.1 request with `Connection: close`; the status and body, None on any error.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A real test through the control API against the agent's own `kind` port: started,
/// waited for, its result's JSON. Panics, naming what failed, if it does not complete.
pub fn real_test(agent: &Agent, kind: &str, port: u16) -> serde_json::Value {
    let spec = format!(r#"{{"test":"{kind}","target":"127.0.0.1:{port}","duration_ms":1000,"warmup_ms":200}}"#);
    let (status, body) = http(agent.ports.control, "POST", "/v1/tests", Some(&agent.token), Some(&spec))
        .unwrap_or_else(|| panic!("POST /v1/tests ({kind}) got no answer"));
    assert_eq!(status, 201, "POST /v1/tests ({kind}): {body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(agent.ports.control, "GET", &format!("/v1/tests/{id}"), Some(&agent.token), None)
            .unwrap_or_else(|| panic!("GET /v1/tests/{id} got no answer"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        match v["state"].as_str() {
            Some("done") => return v["result"].clone(),
            Some("failed" | "cancelled") => panic!("the {kind} test after the flood failed: {v:#}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the {kind} test did not finish: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's resident set (kB) and open descriptors, from `/proc`.
pub fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    (rss, fds)
}

/// What a flood did and what the agent used meanwhile.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub seconds: f64,
    pub connections: u64,
    pub datagrams: u64,
    pub bytes_sent: u64,
    pub rss_before_kb: u64,
    pub rss_max_kb: u64,
    pub rss_after_kb: u64,
    pub fds_before: u64,
    pub fds_max: u64,
    pub fds_after: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} s of garbage: {} connections, {} datagrams, {:.1} MB sent\n\
             RSS  before {:>7} kB   max {:>7} kB   after {:>7} kB\n\
             fds  before {:>7}      max {:>7}      after {:>7}",
            self.seconds,
            self.connections,
            self.datagrams,
            self.bytes_sent as f64 / 1e6,
            self.rss_before_kb,
            self.rss_max_kb,
            self.rss_after_kb,
            self.fds_before,
            self.fds_max,
            self.fds_after
        )
    }
}

/// xorshift64*: garbage need not be good randomness, only cheap and varied.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

struct Tally {
    connections: AtomicU64,
    datagrams: AtomicU64,
    bytes: AtomicU64,
}

/// One attack on a TCP port: connect, misbehave one way, close. Slow ones (slowloris, idle)
/// hold `hold` connections until the server closes them or `until`.
fn attack(port: u16, rng: &mut Rng, until: Instant, hold: usize, tally: &Tally) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        // At the server's cap the backlog fills and connects time out: that is the bound.
        std::thread::sleep(Duration::from_millis(20));
        return;
    };
    tally.connections.fetch_add(1, Ordering::Relaxed);
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let send = |s: &mut TcpStream, b: &[u8]| {
        if s.write_all(b).is_ok() {
            tally.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            true
        } else {
            false
        }
    };
    let mut buf = vec![0u8; 1 + rng.below(16 << 10) as usize];
    match rng.below(8) {
        0 => {
            rng.fill(&mut buf);
            send(&mut s, &buf);
        }
        1 => {
            // Valid magic, then garbage: past the first check, into the parsers.
            rng.fill(&mut buf);
            for (i, m) in [b"ZBT1", b"GET ", b"POST"][rng.below(3) as usize].iter().enumerate() {
                if let Some(b) = buf.get_mut(i) {
                    *b = *m;
                }
            }
            send(&mut s, &buf);
        }
        2 => {
            // An oversized header.
            send(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
            let big = vec![b'a'; 1 << 20];
            send(&mut s, &big);
        }
        3 => {
            // An oversized body, declared and streamed.
            send(&mut s, b"POST /v1/tests HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\nContent-Length: 100000000\r\n\r\n");
            let chunk = vec![b'{'; 64 << 10];
            for _ in 0..64 {
                if Instant::now() >= until || !send(&mut s, &chunk) {
                    break;
                }
            }
        }
        4..=6 => {
            // Slowloris (a request head one byte every 200 ms, never finished) or idle
            // (connected, silent), on `hold` connections at once, until the server closes
            // them or the flood ends.
            let slow = rng.below(3) != 2;
            let mut held = vec![s];
            for _ in 1..hold {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(c) => {
                        tally.connections.fetch_add(1, Ordering::Relaxed);
                        let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                        let _ = c.set_nonblocking(true);
                        held.push(c);
                    }
                    Err(_) => break,
                }
            }
            let _ = held[0].set_nonblocking(true);
            if slow {
                for c in &mut held {
                    send(c, b"GET / HTTP/1.1\r\nHost: a\r\n");
                }
            }
            let mut b = [0u8; 512];
            while !held.is_empty() && Instant::now() < until {
                held.retain_mut(|c| {
                    let open = loop {
                        match c.read(&mut b) {
                            Ok(0) => break false,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                            Err(_) => break false,
                        }
                    };
                    open && (!slow || send(c, b"x") || c.take_error().ok().flatten().is_none())
                });
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        _ => {
            // A reset straight away.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Floods the agent's four ports for `seconds` from `threads` threads per TCP port (a slow
/// attack holds `hold` connections) and two UDP senders (each at most ~20,000 datagrams/s),
/// sampling the agent's usage every 100 ms.
pub fn flood(agent: &Agent, seconds: f64, threads: usize, hold: usize) -> Figures {
    let pid = agent.child.id();
    let (rss_before_kb, fds_before) = usage(pid);
    let tally =
        Arc::new(Tally { connections: AtomicU64::new(0), datagrams: AtomicU64::new(0), bytes: AtomicU64::new(0) });
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut handles = vec![];
    let p = agent.ports;
    for (i, port) in [p.tcp, p.http, p.control].into_iter().enumerate() {
        for t in 0..threads {
            let tally = Arc::clone(&tally);
            let seed = 0x9E37_79B9_7F4A_7C15 ^ ((i * 1000 + t) as u64 + 1);
            handles.push(std::thread::spawn(move || {
                let mut rng = Rng(seed);
                while Instant::now() < until {
                    attack(port, &mut rng, until, hold, &tally);
                }
            }));
        }
    }
    for u in 0..2u64 {
        let tally = Arc::clone(&tally);
        let to = SocketAddr::from(([127, 0, 0, 1], p.udp));
        handles.push(std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (u + 1));
            let mut buf = vec![0u8; 1472];
            let mut sent = 0u64;
            while Instant::now() < until {
                let n = 1 + rng.below(1472) as usize;
                rng.fill(&mut buf[..n]);
                if rng.below(2) == 0 && n >= 4 {
                    buf[..4].copy_from_slice(b"ZBU1"); // past the magic check
                }
                if sock.send_to(&buf[..n], to).is_ok() {
                    tally.datagrams.fetch_add(1, Ordering::Relaxed);
                    tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                sent += 1;
                // Paced: at most ~20,000 a second each.
                let due = start + Duration::from_micros(sent * 50);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut rss_max, mut fds_max) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let (rss, fds) = usage(pid);
                rss_max = rss_max.max(rss);
                fds_max = fds_max.max(fds);
                std::thread::sleep(Duration::from_millis(100));
            }
            (rss_max, fds_max)
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (rss_max_kb, fds_max) = sampler.join().unwrap();
    // The flood's connections are closed; give the agent a moment to notice.
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after_kb, fds_after) = usage(pid);
    Figures {
        seconds,
        connections: tally.connections.load(Ordering::Relaxed),
        datagrams: tally.datagrams.load(Ordering::Relaxed),
        bytes_sent: tally.bytes.load(Ordering::Relaxed),
        rss_before_kb,
        rss_max_kb,
        rss_after_kb,
        fds_before,
        fds_max,
        fds_after,
    }
}
