//! The Service-programming probe behind `POST /v1/probe`: from inside a client pod, try to
//! reach one address (a ClusterIP and port) again and again until an attempt succeeds or time
//! runs out, and say how long it took.
//!
//! Network programming latency is the time from a Service's creation until a client's first
//! connection to it succeeds. On a cluster the coordinator cannot exec into pods, so the
//! agent in the client pod makes the attempts and the coordinator only starts them through
//! the control API.
//!
//! - **TCP**: an attempt is a connect bounded by `attempt_timeout_ms`; connected is success,
//!   and the connection is closed at once.
//! - **UDP**: an attempt sends one zonebench `Request` datagram ([`crate::wire::UdpHeader`]),
//!   which the agent's UDP echo server answers with a `Response` echoing flow and sequence
//!   number; success is that answer arriving within `attempt_timeout_ms`. Anything else that
//!   arrives is ignored (and mentioned in the error), so a stray datagram never counts.
//! - **A fresh source port per attempt, outside the ephemeral range.** Before a Service's
//!   rules exist, a SYN or datagram to its address leaves a conntrack entry without DNAT (a
//!   black-holed SYN's lives 120 s); a later packet of the same 5-tuple follows that entry
//!   even after the rules appear and is never answered. So each attempt binds the next port
//!   of [`SourcePorts`], a range above (else below) `ip_local_port_range`: every attempt
//!   meets the rules as they are at that moment, and the tests that follow, whose ports the
//!   kernel picks from the ephemeral range, never inherit an entry the probe left (with
//!   kube-proxy's iptables mode a reused port hung a tcp-rr connect past its timeout).
//! - **Bounded.** Attempts stop when one succeeds, when `within_ms` has passed (no attempt
//!   runs past it: the last one's wait is cut to the time left), after [`MAX_ATTEMPTS`], or
//!   when the agent shuts down. Between attempts the probe pauses `interval_ms`; with 0 it
//!   still yields to the runtime, so the control API keeps answering.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::spec::SpecError;
use crate::wire::{UdpHeader, UdpKind, UDP_HEADER_LEN};

/// Longest `within_ms`: ten minutes is far past any healthy cluster's programming latency.
pub const MAX_WITHIN_MS: u64 = 600_000;
/// Longest `attempt_timeout_ms`.
pub const MAX_ATTEMPT_TIMEOUT_MS: u64 = 10_000;
/// Longest `interval_ms`.
pub const MAX_INTERVAL_MS: u64 = 1_000;
/// Most attempts one probe makes, whatever the time left: with `interval_ms` 0 and attempts
/// refused in microseconds, this is what bounds the count.
pub const MAX_ATTEMPTS: u64 = 10_000_000;
/// Default `attempt_timeout_ms`.
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 100;
/// Default `interval_ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 5;

/// Large enough for any echo answer (header + server id); a longer datagram is cut, which
/// leaves its header readable.
const ANSWER_BUF: usize = 512;

fn default_attempt() -> u64 {
    DEFAULT_ATTEMPT_TIMEOUT_MS
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_MS
}

/// How an attempt tries the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProtocol {
    Tcp,
    Udp,
}

impl ProbeProtocol {
    pub const ALL: [ProbeProtocol; 2] = [ProbeProtocol::Tcp, ProbeProtocol::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeProtocol::Tcp => "tcp",
            ProbeProtocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for ProbeProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `POST /v1/probe` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// An IP literal and port, e.g. `"10.96.0.10:7101"` or `"[fd00::a]:7101"`.
    pub target: SocketAddr,
    pub protocol: ProbeProtocol,
    /// Give up after this long; 1..=[`MAX_WITHIN_MS`].
    pub within_ms: u64,
    /// Longest wait for one attempt; 1..=[`MAX_ATTEMPT_TIMEOUT_MS`].
    #[serde(default = "default_attempt")]
    pub attempt_timeout_ms: u64,
    /// Pause after a failed attempt; 0..=[`MAX_INTERVAL_MS`].
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

/// What `POST /v1/probe` answers, reached or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub reached: bool,
    /// From the moment the agent accepted the request to the first successful attempt (or to giving up).
    pub elapsed_ns: u64,
    pub attempts: u64,
    /// The last failed attempt's error (e.g. "connection refused", "timed out after 100 ms"), when any.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe was stopped after {attempts} attempts: the agent is shutting down")]
    Cancelled { attempts: u64 },
}

impl ProbeSpec {
    /// A probe with the default attempt timeout and interval.
    pub fn new(target: SocketAddr, protocol: ProbeProtocol, within_ms: u64) -> ProbeSpec {
        ProbeSpec {
            target,
            protocol,
            within_ms,
            attempt_timeout_ms: DEFAULT_ATTEMPT_TIMEOUT_MS,
            interval_ms: DEFAULT_INTERVAL_MS,
        }
    }

    /// Whether every field is in range; the error names the first one that is not.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &'static str, message: String| Err(SpecError { field, message });
        if self.target.port() == 0 {
            return bad("target", format!("{} has port 0, which nothing can be reached on", self.target));
        }
        if self.target.ip().is_unspecified() || self.target.ip().is_multicast() {
            return bad("target", format!("{} is not a unicast address a probe can reach", self.target));
        }
        for (field, value, min, max) in [
            ("within_ms", self.within_ms, 1, MAX_WITHIN_MS),
            ("attempt_timeout_ms", self.attempt_timeout_ms, 1, MAX_ATTEMPT_TIMEOUT_MS),
            ("interval_ms", self.interval_ms, 0, MAX_INTERVAL_MS),
        ] {
            if !(min..=max).contains(&value) {
                return bad(field, format!("{value} is outside {min}..={max}"));
            }
        }
        Ok(())
    }
}

/// Runs the probe on the current tokio runtime; its clock starts now. `cancel` stops it
/// between or during attempts (agent shutdown).
pub async fn run(spec: &ProbeSpec, cancel: &CancellationToken) -> Result<ProbeOutcome, ProbeError> {
    run_capped(spec, cancel, MAX_ATTEMPTS).await
}

async fn run_capped(
    spec: &ProbeSpec,
    cancel: &CancellationToken,
    max_attempts: u64,
) -> Result<ProbeOutcome, ProbeError> {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(spec.within_ms);
    let attempt_timeout = Duration::from_millis(spec.attempt_timeout_ms);
    let interval = Duration::from_millis(spec.interval_ms);
    // One flow id per probe; the sequence number tells its attempts apart.
    let flow = crate::load::udp_stream::random_flow_id(usize::from(spec.target.port()));
    let mut attempts = 0u64;
    let mut last_error = None;
    let outcome = |reached, attempts, last_error| ProbeOutcome {
        reached,
        elapsed_ns: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        attempts,
        last_error,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if attempts >= max_attempts {
            let last = last_error.take().unwrap_or_default();
            last_error = Some(format!("gave up after {attempts} attempts, the most one probe makes; the last: {last}"));
            break;
        }
        attempts += 1;
        let wait = attempt_timeout.min(left);
        let tried = tokio::select! {
            _ = cancel.cancelled() => return Err(ProbeError::Cancelled { attempts }),
            r = attempt(spec.protocol, spec.target, wait, flow, attempts) => r,
        };
        match tried {
            Ok(()) => return Ok(outcome(true, attempts, last_error)),
            Err(e) => last_error = Some(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if interval.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return Err(ProbeError::Cancelled { attempts }),
                _ = tokio::time::sleep(interval.min(left)) => {}
            }
        }
    }
    Ok(outcome(false, attempts, last_error))
}

/// One attempt, bounded by `wait`; the error says what went wrong for `last_error`.
async fn attempt(
    protocol: ProbeProtocol,
    target: SocketAddr,
    wait: Duration,
    flow: u64,
    seq: u64,
) -> Result<(), String> {
    match protocol {
        ProbeProtocol::Tcp => match tokio::time::timeout(wait, tcp_connect(target)).await {
            Err(_) => Err(timed_out(wait)),
            Ok(Err(e)) => Err(describe(&e)),
            // Connected is all a probe needs: dropping the stream closes it at once.
            Ok(Ok(stream)) => {
                drop(stream);
                Ok(())
            }
        },
        ProbeProtocol::Udp => udp_attempt(target, wait, flow, seq).await,
    }
}

/// A TCP connect from the next probe source port.
async fn tcp_connect(target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // The attempt that succeeds closes first, leaving TIME_WAIT on its port: reusable by
    // the next probe's bind.
    socket.set_reuseaddr(true)?;
    SourcePorts::bind(target.is_ipv4(), |addr| socket.bind(addr))?;
    socket.connect(target).await
}

/// The probe's source ports: a range outside the kernel's ephemeral one, taken in turn by
/// every attempt of every probe of this process, so a port comes back only after the whole
/// range (thousands of attempts) and never is one a load generator's connect gets.
pub struct SourcePorts;

/// How the range is found: `/proc/sys/net/ipv4/ip_local_port_range`, Linux's default
/// 32768–60999 when it cannot be read.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// A range this small is not worth having: use the kernel's choice instead.
const MIN_RANGE: u16 = 512;
/// Ports below this are left alone (privileged, and where servers listen).
const LOWEST: u16 = 10_000;

impl SourcePorts {
    /// The range for an ephemeral range of `lo..=hi`: above it if there is room, else below.
    pub fn range_for(lo: u16, hi: u16) -> Option<(u16, u16)> {
        if u32::from(hi) + u32::from(MIN_RANGE) <= 65_535 {
            return Some((hi + 1, 65_535));
        }
        (lo >= LOWEST + MIN_RANGE).then(|| (LOWEST, lo - 1))
    }

    fn range() -> Option<(u16, u16)> {
        static RANGE: std::sync::OnceLock<Option<(u16, u16)>> = std::sync::OnceLock::new();
        *RANGE.get_or_init(|| {
            let text = std::fs::read_to_string(LOCAL_PORT_RANGE).unwrap_or_default();
            let mut it = text.split_whitespace().filter_map(|w| w.parse::<u16>().ok());
            let (lo, hi) = (it.next().unwrap_or(32_768), it.next().unwrap_or(60_999));
            SourcePorts::range_for(lo, hi)
        })
    }

    fn next(lo: u16, hi: u16) -> u16 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lo + (n % (u32::from(hi - lo) + 1)) as u16
    }

    /// Binds with `bind` to the next free port of the range (skipping ports in use); to
    /// port 0, the kernel's choice, when there is no range or no free port in a few tries.
    fn bind(v4: bool, mut bind: impl FnMut(SocketAddr) -> io::Result<()>) -> io::Result<()> {
        let any = |port| -> SocketAddr {
            if v4 {
                (Ipv4Addr::UNSPECIFIED, port).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, port).into()
            }
        };
        if let Some((lo, hi)) = SourcePorts::range() {
            for _ in 0..16 {
                if bind(any(SourcePorts::next(lo, hi))).is_ok() {
                    return Ok(());
                }
            }
        }
        bind(any(0))
    }

    /// A UDP socket on the next port of the range (see [`SourcePorts::bind`]).
    fn bind_udp(v4: bool) -> io::Result<UdpSocket> {
        let mut bound = None;
        SourcePorts::bind(v4, |addr| {
            let s = std::net::UdpSocket::bind(addr)?;
            bound = Some(s);
            Ok(())
        })?;
        let s = bound.ok_or_else(|| io::Error::other("no UDP socket bound"))?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s)
    }
}

async fn udp_attempt(target: SocketAddr, wait: Duration, flow: u64, seq: u64) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let socket =
        SourcePorts::bind_udp(target.is_ipv4()).map_err(|e| format!("cannot open a UDP socket: {}", describe(&e)))?;
    // Connected, so an ICMP port unreachable comes back as an error on the receive and ends
    // the attempt early, and only the target's datagrams are delivered.
    socket.connect(target).await.map_err(|e| format!("connect: {}", describe(&e)))?;
    let mut request = [0u8; UDP_HEADER_LEN];
    // response_size 0: the server answers with the smallest Response (header + its id).
    UdpHeader { kind: UdpKind::Request, flags: 0, id_len: 0, response_size: 0, flow, seq, ts_ns: 0 }
        .encode_into(&mut request);
    socket.send(&request).await.map_err(|e| format!("send: {}", describe(&e)))?;
    let mut buf = [0u8; ANSWER_BUF];
    let mut ignored = 0u64;
    // Bounded by the deadline: every pass waits on it.
    loop {
        match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => {
                let mut e = timed_out(wait);
                if ignored > 0 {
                    e.push_str(&format!(" ({ignored} datagrams that were not this probe's echo were ignored)"));
                }
                return Err(e);
            }
            Ok(Err(e)) => return Err(describe(&e)),
            Ok(Ok(n)) => match UdpHeader::decode(&buf[..n]) {
                Ok(h) if h.kind == UdpKind::Response && h.flow == flow && h.seq == seq => return Ok(()),
                _ => ignored += 1,
            },
        }
    }
}

fn timed_out(wait: Duration) -> String {
    // Sub-millisecond waits happen when the last attempt is cut to the time left.
    if wait.as_millis() == 0 {
        format!("timed out after {} µs", wait.as_micros())
    } else {
        format!("timed out after {} ms", wait.as_millis())
    }
}

/// The common network errors in plain words ("connection refused"); anything else as the
/// OS put it.
fn describe(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::AddrNotAvailable
        | K::PermissionDenied => e.kind().to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ports_lie_outside_the_ephemeral_range() {
        assert_eq!(SourcePorts::range_for(32_768, 60_999), Some((61_000, 65_535)));
        // A range reaching the top leaves room below it, above the servers' ports.
        assert_eq!(SourcePorts::range_for(20_000, 65_535), Some((10_000, 19_999)));
        assert_eq!(SourcePorts::range_for(1_024, 65_535), None);
        // Successive ports are distinct and stay in the range.
        let ports: Vec<u16> = (0..100).map(|_| SourcePorts::next(61_000, 61_049)).collect();
        assert!(ports.iter().all(|p| (61_000..=61_049).contains(p)));
        assert!(ports.windows(2).all(|w| w[0] != w[1]));
    }

    #[tokio::test]
    async fn a_tcp_attempt_comes_from_a_probe_port_not_an_ephemeral_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let stream = tcp_connect(target).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        if let Some((lo, hi)) = SourcePorts::range() {
            assert!((lo..=hi).contains(&port), "{port} outside {lo}..={hi}");
        }
        let udp = SourcePorts::bind_udp(true).unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Some((lo, hi)) = SourcePorts::range() {
            assert!((lo..=hi).contains(&port), "{port} outside {lo}..={hi}");
        }
    }

    fn spec(json: &str) -> Result<ProbeSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_minimal_spec_gets_the_default_timeout_and_interval() {
        let s = spec(r#"{"target": "10.96.0.10:7101", "protocol": "tcp", "within_ms": 5000}"#).unwrap();
        assert_eq!(s, ProbeSpec::new("10.96.0.10:7101".parse().unwrap(), ProbeProtocol::Tcp, 5000));
        assert_eq!((s.attempt_timeout_ms, s.interval_ms), (100, 5));
        s.validate().unwrap();
        let s = spec(r#"{"target": "[fd00::a]:53", "protocol": "udp", "within_ms": 1, "interval_ms": 0}"#).unwrap();
        assert_eq!(s.protocol, ProbeProtocol::Udp);
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_protocols_and_bad_targets_are_refused_by_name() {
        for (json, names) in [
            (r#"{"target": "127.0.0.1:1", "protocol": "tcp", "within_ms": 1, "retries": 3}"#, "retries"),
            (r#"{"target": "127.0.0.1:1", "protocol": "sctp", "within_ms": 1}"#, "sctp"),
            (r#"{"target": "localhost:1", "protocol": "tcp", "within_ms": 1}"#, "socket address"),
            (r#"{"target": "127.0.0.1:1", "protocol": "tcp"}"#, "within_ms"),
        ] {
            let e = spec(json).unwrap_err().to_string();
            assert!(e.contains(names), "{json}: {e}");
        }
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let base = ProbeSpec::new("127.0.0.1:9".parse().unwrap(), ProbeProtocol::Tcp, 1000);
        type Tweak = fn(&mut ProbeSpec);
        let cases: [(&str, Tweak); 7] = [
            ("within_ms", |s| s.within_ms = 0),
            ("within_ms", |s| s.within_ms = MAX_WITHIN_MS + 1),
            ("attempt_timeout_ms", |s| s.attempt_timeout_ms = 0),
            ("attempt_timeout_ms", |s| s.attempt_timeout_ms = 10_001),
            ("interval_ms", |s| s.interval_ms = 1_001),
            ("target", |s| s.target.set_port(0)),
            ("target", |s| s.target = "0.0.0.0:9".parse().unwrap()),
        ];
        for (field, tweak) in cases {
            let mut s = base.clone();
            tweak(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut edge = base;
        edge.within_ms = MAX_WITHIN_MS;
        edge.attempt_timeout_ms = MAX_ATTEMPT_TIMEOUT_MS;
        edge.interval_ms = 0;
        edge.validate().unwrap();
    }

    #[test]
    fn the_outcome_serializes_with_every_field() {
        let o =
            ProbeOutcome { reached: false, elapsed_ns: 7, attempts: 2, last_error: Some("connection refused".into()) };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"reached": false, "elapsed_ns": 7, "attempts": 2, "last_error": "connection refused"})
        );
        assert_eq!(serde_json::from_value::<ProbeOutcome>(v).unwrap(), o);
    }

    /// A port on loopback nothing listens on (bound, then closed).
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn the_attempt_cap_ends_a_probe_before_its_time_is_up() {
        let mut s = ProbeSpec::new(closed_port(), ProbeProtocol::Tcp, 30_000);
        s.interval_ms = 0;
        let o = run_capped(&s, &CancellationToken::new(), 3).await.unwrap();
        assert!(!o.reached);
        assert_eq!(o.attempts, 3);
        let e = o.last_error.unwrap();
        assert!(e.contains("gave up after 3 attempts") && e.contains("connection refused"), "{e}");
    }

    #[tokio::test]
    async fn a_cancelled_probe_says_so() {
        let s = ProbeSpec::new(closed_port(), ProbeProtocol::Tcp, 30_000);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(matches!(run(&s, &cancel).await, Err(ProbeError::Cancelled { .. })));
    }

    #[tokio::test]
    async fn a_udp_port_nothing_answers_on_is_refused_not_reached() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut s = ProbeSpec::new(port, ProbeProtocol::Udp, 300);
        s.attempt_timeout_ms = 50;
        let o = run(&s, &CancellationToken::new()).await.unwrap();
        assert!(!o.reached);
        assert!(o.attempts >= 1);
        // Loopback answers with ICMP port unreachable, which a connected socket reports.
        assert_eq!(o.last_error.as_deref(), Some("connection refused"), "{o:?}");
    }

    #[tokio::test]
    async fn a_udp_answer_that_is_not_the_echo_does_not_count() {
        // A UDP socket that answers every datagram with junk.
        let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        junk.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let target = junk.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let answerer = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < end {
                if let Ok((_, peer)) = junk.recv_from(&mut buf) {
                    let _ = junk.send_to(b"not a zonebench answer", peer);
                }
            }
        });
        let mut s = ProbeSpec::new(target, ProbeProtocol::Udp, 250);
        s.attempt_timeout_ms = 100;
        let o = run(&s, &CancellationToken::new()).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        answerer.join().unwrap();
        assert!(!o.reached, "{o:?}");
        let e = o.last_error.unwrap();
        assert!(e.contains("timed out") && e.contains("not this probe's echo"), "{e}");
    }
}
