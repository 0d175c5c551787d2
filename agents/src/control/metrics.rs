//! `GET /metrics`: the servers' [`Counters`] and the control API's own counts in the
//! Prometheus text exposition format (version 0.0.4), so an agent can be scraped like any
//! other pod while a run is going on.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::probe::ProbeProtocol;
use crate::servers::Counters;
use crate::spec::{Identity, TestKind};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const KINDS: usize = TestKind::ALL.len();
const PROTOCOLS: usize = ProbeProtocol::ALL.len();
/// Status codes 100..=599, one slot each: lock-free, and the control API is no hot path, so
/// 4 KiB of counters is the simple way.
const STATUS_SLOTS: usize = 500;

/// What the control API counts about itself.
#[derive(Debug)]
pub struct ControlMetrics {
    started: [AtomicU64; KINDS],
    completed: [AtomicU64; KINDS],
    failed: [AtomicU64; KINDS],
    cancelled: [AtomicU64; KINDS],
    probes_started: [AtomicU64; PROTOCOLS],
    probes_reached: [AtomicU64; PROTOCOLS],
    probes_not_reached: [AtomicU64; PROTOCOLS],
    responses: [AtomicU64; STATUS_SLOTS],
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics {
            started: Default::default(),
            completed: Default::default(),
            failed: Default::default(),
            cancelled: Default::default(),
            probes_started: Default::default(),
            probes_reached: Default::default(),
            probes_not_reached: Default::default(),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// How a test ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Failed,
    Cancelled,
}

fn kind_index(kind: TestKind) -> usize {
    match kind {
        TestKind::TcpStream => 0,
        TestKind::UdpStream => 1,
        TestKind::TcpRr => 2,
        TestKind::UdpRr => 3,
        TestKind::TcpCrr => 4,
        TestKind::Http => 5,
    }
}

fn protocol_index(protocol: ProbeProtocol) -> usize {
    match protocol {
        ProbeProtocol::Tcp => 0,
        ProbeProtocol::Udp => 1,
    }
}

impl ControlMetrics {
    pub fn probe_started(&self, protocol: ProbeProtocol) {
        self.probes_started[protocol_index(protocol)].fetch_add(1, Ordering::Relaxed);
    }

    /// A probe that answered (reached or not); one stopped by shutdown is only started.
    pub fn probe_ended(&self, protocol: ProbeProtocol, reached: bool) {
        let set = if reached { &self.probes_reached } else { &self.probes_not_reached };
        set[protocol_index(protocol)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn started(&self, kind: TestKind) {
        self.started[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn ended(&self, kind: TestKind, how: Ending) {
        let set = match how {
            Ending::Completed => &self.completed,
            Ending::Failed => &self.failed,
            Ending::Cancelled => &self.cancelled,
        };
        set[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn response(&self, status: u16) {
        if let Some(slot) = usize::from(status).checked_sub(100).and_then(|i| self.responses.get(i)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The whole exposition. `running` is the number of tests queued or running now,
    /// `probes_running` the number of probes.
    pub fn render(&self, counters: &Counters, identity: &Identity, running: usize, probes_running: usize) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail, hence the ignored results below.
        for (name, help, value) in counters.snapshot() {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n");
        }
        for (name, help, set) in [
            ("zonebench_control_tests_started_total", "Tests accepted by the control API", &self.started),
            ("zonebench_control_tests_completed_total", "Tests that ran to the end", &self.completed),
            ("zonebench_control_tests_failed_total", "Tests that ended in an error", &self.failed),
            ("zonebench_control_tests_cancelled_total", "Tests cancelled before their end", &self.cancelled),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for kind in TestKind::ALL {
                let v = set[kind_index(kind)].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{test=\"{kind}\"}} {v}");
            }
        }
        let name = "zonebench_control_tests_running";
        let _ = write!(out, "# HELP {name} Tests queued or running now\n# TYPE {name} gauge\n{name} {running}\n");
        for (name, help, set) in [
            ("zonebench_control_probes_started_total", "Probes accepted by the control API", &self.probes_started),
            ("zonebench_control_probes_reached_total", "Probes whose target answered in time", &self.probes_reached),
            (
                "zonebench_control_probes_not_reached_total",
                "Probes that gave up without an answer",
                &self.probes_not_reached,
            ),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for protocol in ProbeProtocol::ALL {
                let v = set[protocol_index(protocol)].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{protocol=\"{protocol}\"}} {v}");
            }
        }
        let name = "zonebench_control_probes_running";
        let _ = write!(out, "# HELP {name} Probes running now\n# TYPE {name} gauge\n{name} {probes_running}\n");
        let name = "zonebench_control_requests_total";
        let _ = write!(out, "# HELP {name} Control API responses by status code\n# TYPE {name} counter\n");
        for (i, slot) in self.responses.iter().enumerate() {
            let v = slot.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(out, "{name}{{code=\"{}\"}} {v}", i + 100);
            }
        }
        let name = "zonebench_agent_info";
        let _ = write!(
            out,
            "# HELP {name} Who this agent is\n# TYPE {name} gauge\n\
             {name}{{id=\"{}\",zone=\"{}\",node=\"{}\",version=\"{}\"}} 1\n",
            escape(&identity.id),
            escape(&identity.zone),
            escape(&identity.node),
            escape(env!("CARGO_PKG_VERSION")),
        );
        out
    }
}

/// A label value as the exposition format needs it: `\`, `"` and newline escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(escape("plain-zone-1"), "plain-zone-1");
    }

    #[test]
    fn the_exposition_has_every_family_and_counts() {
        let m = ControlMetrics::default();
        m.started(TestKind::TcpRr);
        m.started(TestKind::TcpRr);
        m.ended(TestKind::TcpRr, Ending::Cancelled);
        m.response(201);
        m.response(401);
        m.response(401);
        m.response(999); // out of range: ignored, never a panic
        m.probe_started(ProbeProtocol::Udp);
        m.probe_ended(ProbeProtocol::Udp, false);
        let counters = Counters::default();
        Counters::add(&counters.udp_rejected, 7);
        let id = Identity { id: "a\"b".into(), zone: "z".into(), node: "n".into() };
        let text = m.render(&counters, &id, 1, 2);
        for line in [
            "zonebench_udp_rejected_total 7",
            "zonebench_control_tests_started_total{test=\"tcp-rr\"} 2",
            "zonebench_control_tests_cancelled_total{test=\"tcp-rr\"} 1",
            "zonebench_control_tests_completed_total{test=\"http\"} 0",
            "zonebench_control_tests_running 1",
            "zonebench_control_probes_started_total{protocol=\"udp\"} 1",
            "zonebench_control_probes_not_reached_total{protocol=\"udp\"} 1",
            "zonebench_control_probes_reached_total{protocol=\"tcp\"} 0",
            "zonebench_control_probes_running 2",
            "zonebench_control_requests_total{code=\"401\"} 2",
            "zonebench_control_requests_total{code=\"201\"} 1",
            "# TYPE zonebench_tcp_connections_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(r#"zonebench_agent_info{id="a\"b",zone="z",node="n",version=""#), "{text}");
        assert!(!text.contains("code=\"999\""));
    }
}
