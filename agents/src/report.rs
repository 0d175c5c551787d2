//! The readable table `client` prints by default (`-o json` prints the [`TestResult`] itself).

use std::fmt::Write as _;

use crate::spec::{LatencySummary, TestResult};
use crate::units::{format_bps, format_ns};

pub fn table(r: &TestResult) -> String {
    let mut out = String::new();
    let secs = r.duration_ns as f64 / 1e9;
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{} → {}  ({secs:.2}s measured, warm-up excluded)", r.test, r.target);
    let m = &r.metrics;
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<22} {value}");
    };
    if let Some(v) = m.throughput_bps {
        row("throughput", format_bps(v));
    }
    if let Some(v) = m.transactions_per_sec {
        row("transactions/s", format!("{v:.1}"));
    }
    if let Some(v) = m.requests_per_sec {
        row("requests/s", format!("{v:.1}"));
    }
    if let Some(v) = m.sent_packets {
        row("sent packets", v.to_string());
    }
    if let Some(v) = m.received_packets {
        row("received packets", v.to_string());
    }
    if let (Some(lost), Some(pct)) = (m.lost_packets, m.loss_pct) {
        row("lost packets", format!("{lost} ({pct:.3}%)"));
    }
    if let Some(v) = m.out_of_order_packets {
        row("out of order", v.to_string());
    }
    if let Some(v) = m.jitter_ns {
        row("jitter", format_ns(v as f64));
    }
    if let Some(v) = m.retransmits {
        row("retransmits", v.to_string());
    }
    if let Some(v) = m.errors {
        row("errors", v.to_string());
    }
    if let Some(codes) = &m.status_counts {
        let s: Vec<_> = codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        row("status", s.join(", "));
    }
    if !r.servers.is_empty() {
        let s: Vec<_> = r.servers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        row("answered by", s.join(", "));
    }
    if let Some(l) = &r.latency {
        latency_rows(&mut out, "latency", l);
    }
    if let Some(l) = &r.connect {
        latency_rows(&mut out, "connect", l);
    }
    out
}

fn latency_rows(out: &mut String, name: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {name:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "min", "mean", "p50", "p90", "p99", "p99.9", "max", "count"
    );
    let f = |v: u64| format_ns(v as f64);
    let _ = writeln!(
        out,
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "",
        f(l.min_ns),
        format_ns(l.mean_ns),
        f(l.p50_ns),
        f(l.p90_ns),
        f(l.p99_ns),
        f(l.p999_ns),
        f(l.max_ns),
        l.count
    );
}
