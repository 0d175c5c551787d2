//! The wire contract between the coordinator, the control API and the standalone client:
//! what a test asks for ([`TestSpec`]) and what it reports ([`TestResult`]).
//!
//! The JSON form of [`TestResult`] is the agent's public output (`client -o json`, `GET
//! /v1/tests/{id}`) and is pinned by `results/schema/test-result.schema.json`; units live in
//! field names (`_ns`, `_bps`, `_pct`). A change here is a change to that schema.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Version of the [`TestSpec`]/[`TestResult`] contract, reported by `GET /v1/info`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The test kinds, in netperf/iperf3 vocabulary. The JSON and CLI names use dashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestKind {
    TcpStream,
    UdpStream,
    TcpRr,
    UdpRr,
    TcpCrr,
    Http,
}

impl TestKind {
    pub const ALL: [TestKind; 6] =
        [TestKind::TcpStream, TestKind::UdpStream, TestKind::TcpRr, TestKind::UdpRr, TestKind::TcpCrr, TestKind::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            TestKind::TcpStream => "tcp-stream",
            TestKind::UdpStream => "udp-stream",
            TestKind::TcpRr => "tcp-rr",
            TestKind::UdpRr => "udp-rr",
            TestKind::TcpCrr => "tcp-crr",
            TestKind::Http => "http",
        }
    }
}

impl fmt::Display for TestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TestKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = TestKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown test {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// Default measured duration (iperf3's and wrk's 10 s).
pub const DEFAULT_DURATION_MS: u64 = 10_000;
/// Default warm-up, excluded from every figure.
pub const DEFAULT_WARMUP_MS: u64 = 1_000;

/// One test to run. Every field but `test` and `target` has a default, so a minimal body is
/// `{"test": "tcp-rr", "target": "10.0.0.2:7101"}`. Unknown fields are rejected (a typo
/// must not silently fall back to a default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub test: TestKind,
    /// `HOST:PORT` of the server under test (an IP literal or a name that resolves).
    pub target: String,
    #[serde(default = "default_duration_ms")]
    pub duration_ms: u64,
    #[serde(default = "default_warmup_ms")]
    pub warmup_ms: u64,
    /// tcp-stream: parallel streams.
    #[serde(default = "one")]
    pub parallel: u32,
    /// tcp-stream: the server sends, the client receives (iperf3 `-R`).
    #[serde(default)]
    pub reverse: bool,
    /// tcp-stream: write size; udp-stream: datagram payload size (bytes).
    #[serde(default)]
    pub size: Option<u32>,
    /// udp-stream: target send rate in bits/s; 0 means as fast as possible (iperf3 `-b 0`).
    #[serde(default)]
    pub rate_bps: Option<u64>,
    /// tcp-rr/udp-rr/tcp-crr: request and response sizes (bytes), netperf's 1/1 by default.
    #[serde(default = "one")]
    pub request_size: u32,
    #[serde(default = "one")]
    pub response_size: u32,
    /// http: concurrent connections (wrk `-c`); rr tests: concurrent flows.
    #[serde(default = "one")]
    pub connections: u32,
    /// http, tcp-rr, udp-rr: total requests (transactions) per second for an open-loop run,
    /// shared by the `connections` flows; absent = closed loop at max rate.
    #[serde(default)]
    pub qps: Option<f64>,
    /// http: send `Connection: close` and reconnect for every request.
    #[serde(default)]
    pub connection_close: bool,
    /// http: request path and query.
    #[serde(default = "default_path")]
    pub path: String,
    /// Load-generator threads; absent = chosen from the work and the cores.
    #[serde(default)]
    pub threads: Option<u32>,
    /// Per-operation timeout (connect, request, UDP answer).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Armed start: the test waits until this wall-clock instant (ns since the Unix epoch)
    /// before its warm-up begins. The coordinator arms every client of a concurrent group
    /// with one instant, so they start together; an instant already past starts at once
    /// (the reported [`Window`] shows how late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_unix_ns: Option<u64>,
    /// http: a service chain. The target relays each request to the first of these
    /// `IP:PORT` addresses, which relays it to the next, and so on (each hop an agent under
    /// `serve --relay`); the last one answers, and the answer's `x-zonebench-server` names
    /// every hop, first to last. At most [`MAX_RELAY_HOPS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay: Vec<String>,
}

fn default_duration_ms() -> u64 {
    DEFAULT_DURATION_MS
}
fn default_warmup_ms() -> u64 {
    DEFAULT_WARMUP_MS
}
fn one() -> u32 {
    1
}
fn default_path() -> String {
    "/".to_string()
}
fn default_timeout_ms() -> u64 {
    2_000
}

impl TestSpec {
    /// A spec with every default, for `test` against `target`.
    pub fn new(test: TestKind, target: impl Into<String>) -> Self {
        TestSpec {
            test,
            target: target.into(),
            duration_ms: DEFAULT_DURATION_MS,
            warmup_ms: DEFAULT_WARMUP_MS,
            parallel: 1,
            reverse: false,
            size: None,
            rate_bps: None,
            request_size: 1,
            response_size: 1,
            connections: 1,
            qps: None,
            connection_close: false,
            path: default_path(),
            threads: None,
            timeout_ms: default_timeout_ms(),
            start_at_unix_ns: None,
            relay: Vec::new(),
        }
    }

    /// Checks the fields that do not depend on the agent's limits; the message names the
    /// field, as API answers and CLI errors show it to the user.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &'static str, why: String| Err(SpecError { field, message: why });
        if self.duration_ms == 0 {
            return bad("duration_ms", "must be greater than 0".into());
        }
        if self.target.trim().is_empty() {
            return bad("target", "must be HOST:PORT".into());
        }
        if !self.target.contains(':') {
            return bad("target", format!("{:?} has no port; expected HOST:PORT", self.target));
        }
        if self.parallel == 0 || self.parallel > MAX_FLOWS {
            return bad("parallel", format!("must be 1..={MAX_FLOWS}"));
        }
        if self.connections == 0 || self.connections > MAX_FLOWS {
            return bad("connections", format!("must be 1..={MAX_FLOWS}"));
        }
        if let Some(t) = self.threads {
            if t == 0 || t > 256 {
                return bad("threads", "must be 1..=256".into());
            }
        }
        for (field, v) in [("request_size", self.request_size), ("response_size", self.response_size)] {
            if v == 0 || v > MAX_MESSAGE_SIZE {
                return bad(field, format!("must be 1..={MAX_MESSAGE_SIZE} bytes"));
            }
        }
        if let Some(size) = self.size {
            let max = if self.test == TestKind::UdpStream { MAX_UDP_PAYLOAD } else { MAX_MESSAGE_SIZE };
            if size == 0 || size > max {
                return bad("size", format!("must be 1..={max} bytes for {}", self.test));
            }
        }
        if let Some(q) = self.qps {
            if !q.is_finite() || q <= 0.0 {
                return bad("qps", "must be a positive number of requests per second".into());
            }
            if !matches!(self.test, TestKind::Http | TestKind::TcpRr | TestKind::UdpRr) {
                return bad("qps", format!("an open-loop rate is for http, tcp-rr and udp-rr, not {}", self.test));
            }
        }
        if !self.path.starts_with('/') {
            return bad("path", format!("{:?} must start with '/'", self.path));
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be greater than 0".into());
        }
        if !self.relay.is_empty() {
            if self.test != TestKind::Http {
                return bad("relay", format!("service chains are http tests, not {}", self.test));
            }
            if self.relay.len() > MAX_RELAY_HOPS {
                return bad("relay", format!("at most {MAX_RELAY_HOPS} hops after the target"));
            }
            if let Some(a) = self.relay.iter().find(|a| a.parse::<std::net::SocketAddr>().is_err()) {
                return bad("relay", format!("{a:?} is not an IP:PORT address"));
            }
        }
        Ok(())
    }
}

/// Most hops a service chain may add after its target (`relay`).
pub const MAX_RELAY_HOPS: usize = 8;
/// The request header that carries a chain's hops still ahead, `IP:PORT` comma-separated:
/// sent by the http client, read by relays (`servers::relay`).
pub const RELAY_HEADER: &str = "x-zonebench-relay";

/// Most concurrent flows (connections or streams) one test may open.
pub const MAX_FLOWS: u32 = 4096;
/// Largest request, response or write size (16 MiB).
pub const MAX_MESSAGE_SIZE: u32 = 16 << 20;
/// Largest UDP payload a datagram can carry over IPv4.
pub const MAX_UDP_PAYLOAD: u32 = 65_507;

/// A spec field that is out of range, named for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

/// What a test measured. The same object is printed by `client -o json` and returned by
/// `GET /v1/tests/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestResult {
    pub test: TestKind,
    pub target: String,
    /// Length of the measured window (warm-up excluded).
    pub duration_ns: u64,
    pub metrics: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    /// tcp-crr only: time to establish each connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<LatencySummary>,
    /// Answers counted per server id (from the identity every server stamps on its answers).
    pub servers: BTreeMap<String, u64>,
    /// The measured window on this agent's wall clock, so the coordinator can check that
    /// concurrent clients really overlapped instead of assuming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// A measured window in wall-clock ns since the Unix epoch (warm-up excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn len_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Now, in ns since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The counters that apply to a test; those that do not apply are absent from the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Datagrams the sender sent in the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_packets: Option<u64>,
    /// Datagrams the receiver counted in the measured window (the receiver's own count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_order_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// Failed operations (connect, send, receive, timeouts, bad answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// HTTP status code → count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_counts: Option<BTreeMap<String, u64>>,
}

/// A latency distribution: headline figures plus the full HDR histogram, so the coordinator
/// can merge distributions instead of averaging percentiles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// base64 (standard alphabet) of the HdrHistogram V2+DEFLATE encoding, values in ns.
    pub histogram: String,
}

/// Who a server is: set by `serve --id/--zone/--node` and reported by `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: String,
    pub zone: String,
    pub node: String,
}

/// Longest server id; ids travel in every UDP answer, so they stay short.
pub const MAX_ID_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_takes_every_default() {
        let spec: TestSpec = serde_json::from_str(r#"{"test":"tcp-rr","target":"127.0.0.1:7101"}"#).unwrap();
        assert_eq!(spec, TestSpec::new(TestKind::TcpRr, "127.0.0.1:7101"));
        spec.validate().unwrap();
    }

    #[test]
    fn an_unknown_field_is_rejected_by_name() {
        let err = serde_json::from_str::<TestSpec>(r#"{"test":"tcp-rr","target":"127.0.0.1:1","durration_ms":5}"#)
            .unwrap_err();
        assert!(err.to_string().contains("durration_ms"), "{err}");
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let mut spec = TestSpec::new(TestKind::UdpStream, "127.0.0.1:1");
        spec.size = Some(70_000);
        assert_eq!(spec.validate().unwrap_err().field, "size");
        spec.size = Some(1400);
        spec.target = "localhost".into();
        assert_eq!(spec.validate().unwrap_err().field, "target");
    }

    #[test]
    fn test_names_round_trip() {
        for k in TestKind::ALL {
            assert_eq!(k.as_str().parse::<TestKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert!("tcp_rr".parse::<TestKind>().is_err());
    }
}
