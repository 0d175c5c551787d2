//! The table of a run's concurrent groups: per group its clients, how far their windows
//! overlapped, the summed rate, the merged latency and, through a Service, the endpoint
//! load verdict (an overloaded endpoint is named with its share against the mean).

use std::fmt::Write as _;

use zonebench_agent::units::format_ns;

use crate::analysis::group::{load_words, rate_words};
use crate::model::RunResults;

/// The table, or an empty string for a run without groups.
pub fn render(r: &RunResults) -> String {
    if r.groups.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nconcurrent groups\n");
    let width = r.groups.iter().map(|g| g.id.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:width$}  {:>7}  {:>7}  {:>14}  {:>9}  {:>9}  load",
        "group", "clients", "overlap", "rate", "p50", "p99"
    );
    for g in &r.groups {
        let clients =
            if g.failed > 0 { format!("{}/{}", g.members.len(), g.clients.len()) } else { g.clients.len().to_string() };
        let _ = writeln!(
            out,
            "{:width$}  {:>7}  {:>7}  {:>14}  {:>9}  {:>9}  {}",
            g.id,
            clients,
            g.overlap_pct.map(|o| format!("{o:.1}%")).unwrap_or_else(|| "?".into()),
            rate_words(g),
            g.latency.as_ref().map(|l| format_ns(l.p50_ns as f64)).unwrap_or_default(),
            g.latency.as_ref().map(|l| format_ns(l.p99_ns as f64)).unwrap_or_default(),
            g.load.as_ref().map(load_words).unwrap_or_else(|| "-".into()),
        );
    }
    out
}
