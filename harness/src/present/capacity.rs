//! The table of a run's capacity searches: per search its verdict (the highest rate that
//! met the SLO, or that none did), then the curve it measured: each rate asked, the rate
//! achieved, p50/p99, failed requests, and whether the rate met the SLO (and why not).

use std::fmt::Write as _;

use zonebench_agent::units::format_ns;

use crate::model::RunResults;

/// The tables, or an empty string for a run without searches.
pub fn render(r: &RunResults) -> String {
    let mut out = String::new();
    for c in &r.capacities {
        let _ = writeln!(out, "\ncapacity {}: {}", c.id, c.verdict);
        let _ = writeln!(
            out,
            "  {:>10}  {:>10}  {:>9}  {:>9}  {:>7}  met",
            "asked/s", "achieved/s", "p50", "p99", "errors"
        );
        for p in &c.curve {
            let _ = writeln!(
                out,
                "  {:>10.0}  {:>10}  {:>9}  {:>9}  {:>7}  {}",
                p.asked_qps,
                p.achieved_qps.map(|a| format!("{a:.0}")).unwrap_or_else(|| "-".into()),
                p.p50_ns.map(|n| format_ns(n as f64)).unwrap_or_else(|| "-".into()),
                p.p99_ns.map(|n| format_ns(n as f64)).unwrap_or_else(|| "-".into()),
                p.error_pct.map(|e| format!("{e:.2}%")).unwrap_or_else(|| "-".into()),
                if p.met { "yes".to_string() } else { format!("no: {}", p.why.as_deref().unwrap_or("")) },
            );
        }
    }
    out
}
