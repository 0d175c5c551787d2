//! The table of a run's service chains: per chain test its route's zones, the zones it
//! crosses, the median p50/p99 and rate over its repeats and the share of answers that
//! went the whole way; then, for each chain that crosses zones, what the crossings added
//! to p50 against the same-length chain that stays in one zone.

use std::fmt::Write as _;

use zonebench_agent::units::format_ns;

use crate::analysis::chain;
use crate::model::RunResults;

/// The table, or an empty string for a run without chains.
pub fn render(r: &RunResults) -> String {
    let chains = chain::summarize(r);
    if chains.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nservice chains (client → hops, the last answering; medians over repeats)\n");
    let width = chains.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    let route = chains.iter().map(|c| c.zones.chars().count()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "  {:<width$}  {:<route$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>8}",
        "test", "zones", "crossed", "p50", "p99", "req/s", "complete"
    );
    let ns = |v: Option<f64>| v.map_or_else(|| "-".to_string(), format_ns);
    for c in &chains {
        let _ = writeln!(
            out,
            "  {:<width$}  {:<route$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>7.1}%",
            c.name,
            c.zones,
            c.zones_crossed,
            ns(c.p50_ns),
            ns(c.p99_ns),
            c.requests_per_sec.map_or_else(|| "-".to_string(), |q| format!("{q:.0}")),
            c.complete_pct,
        );
    }
    for (cross, same, added) in chain::added_by_crossings(&chains) {
        let per = added / f64::from(cross.zones_crossed);
        let sign = if added < 0.0 { "-" } else { "+" };
        let _ = writeln!(
            out,
            "  {} vs {}: {sign}{} p50 over {} zone crossing{} ({sign}{} each)",
            cross.name,
            same.name,
            format_ns(added.abs()),
            cross.zones_crossed,
            if cross.zones_crossed == 1 { "" } else { "s" },
            format_ns(per.abs()),
        );
    }
    let answered = |c: &&chain::ChainSummary| c.requests_per_sec.is_some_and(|q| q > 0.0);
    for c in chains.iter().filter(|c| !answered(c)) {
        let _ = writeln!(out, "  {}: no answer within the measured window (a hop that never answers?)", c.name);
    }
    for c in chains.iter().filter(answered).filter(|c| c.complete_pct < 100.0) {
        let _ = writeln!(
            out,
            "  {}: {:.1}% of answers were cut short by a hop (see the measurement's status_counts)",
            c.name,
            100.0 - c.complete_pct
        );
    }
    out
}
