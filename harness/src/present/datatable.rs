//! The detailed data table as text: one row per test and figure, one column per variant
//! (see `analysis::datatable`).

use std::fmt::Write as _;

use crate::analysis::datatable::table;
use crate::model::RunResults;

/// The table, or an empty string for a run without measurements.
pub fn render(r: &RunResults) -> String {
    let Some(t) = table(r) else { return String::new() };
    let label = t.rows.iter().map(|r| r.label.len()).max().unwrap_or(0).max(6);
    let width = t
        .columns
        .iter()
        .map(String::len)
        .chain(t.rows.iter().flat_map(|r| r.cells.iter().map(|c| c.chars().count())))
        .max()
        .unwrap_or(8);
    let mut out =
        String::from("\ndata table (rates: median over repeats and pairs; p50/p99 of the merged histograms)\n");
    let _ = write!(out, "{:label$}", "");
    for c in &t.columns {
        let _ = write!(out, "  {c:>width$}");
    }
    out.push('\n');
    for row in &t.rows {
        let _ = write!(out, "{:label$}", row.label);
        for c in &row.cells {
            let _ = write!(out, "  {c:>width$}");
        }
        out.push('\n');
    }
    out
}
