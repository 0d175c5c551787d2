//! A [`Comparison`] as people and CI systems read it: an aligned text table, Markdown (for
//! a pull request or a nightly summary), JSON (the whole comparison), and JUnit XML (one
//! test case per measurement; a regression is a failure, a measurement on one side only
//! is skipped), which every CI system renders.

use std::fmt::Write as _;

use super::compare::{Comparison, Row, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
    Junit,
}

pub fn render(c: &Comparison, format: Format) -> String {
    match format {
        Format::Table => table(c),
        Format::Markdown => markdown(c),
        Format::Json => serde_json::to_string_pretty(c).unwrap_or_default() + "\n",
        Format::Junit => junit(c),
    }
}

/// One line: the verdict and its counts.
pub fn headline(c: &Comparison) -> String {
    let n = &c.counts;
    let verdict = if c.has_regression() { "REGRESSION" } else { "OK" };
    format!(
        "{verdict}: {} regression(s), {} improvement(s), {} beyond the threshold but not significant, {} unchanged; {} noisy; {} only in base, {} only in candidate",
        n.regressions, n.improvements, n.not_significant, n.unchanged, n.noisy, n.only_in_base, n.only_in_candidate
    )
}

fn p_value(r: &Row) -> String {
    r.p_value.map_or_else(|| "-".to_string(), |p| format!("{p:.3}"))
}

fn notes(r: &Row, max_spread_pct: f64) -> String {
    let mut n = Vec::new();
    if r.noisy {
        let s = r.base_spread_pct.into_iter().chain(r.candidate_spread_pct).fold(0.0f64, f64::max);
        n.push(format!("noisy: spread {s:.0} % > {max_spread_pct:.0} %"));
    }
    if r.base_repeats != r.candidate_repeats {
        n.push(format!("repeats {} vs {}", r.base_repeats, r.candidate_repeats));
    }
    n.join("; ")
}

fn preamble_lines(c: &Comparison) -> Vec<String> {
    let mut out = vec![
        format!("base:      {} ({}, {}, {})", c.base.path, c.base.scenario, c.base.started_at, c.base.status),
        format!(
            "candidate: {} ({}, {}, {})",
            c.candidate.path, c.candidate.scenario, c.candidate.started_at, c.candidate.status
        ),
        format!(
            "threshold {} %, loss {} pp; with ≥3 repeats per side: Mann-Whitney U, alpha {}; noisy above {} % spread",
            c.threshold_pct, c.loss_threshold_pp, c.alpha, c.max_spread_pct
        ),
    ];
    for d in &c.fingerprint_differences {
        out.push(format!("warning: fingerprints differ in {}: {} → {}", d.field, d.base, d.candidate));
    }
    for w in &c.warnings {
        out.push(format!("warning: {w}"));
    }
    out
}

fn table(c: &Comparison) -> String {
    let mut out = String::new();
    for l in preamble_lines(c) {
        let _ = writeln!(out, "{l}");
    }
    let header = ["verdict", "measurement", "metric", "base", "candidate", "delta", "p", "notes"];
    let mut cells: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in &c.rows {
        cells.push([
            r.verdict.as_str().to_string(),
            r.label.clone(),
            r.metric.to_string(),
            r.format_value(r.base),
            r.format_value(r.candidate),
            r.format_delta(),
            p_value(r),
            notes(r, c.max_spread_pct),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push('\n');
    for row in &cells {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            // Numbers right-aligned, text left-aligned.
            if (3..=6).contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            line.push_str("  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for k in &c.only_in_base {
        let _ = writeln!(out, "only in base:      {k}");
    }
    for k in &c.only_in_candidate {
        let _ = writeln!(out, "only in candidate: {k}");
    }
    let _ = writeln!(out, "\n{}", headline(c));
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let icon = if c.has_regression() { "❌" } else { "✅" };
    let _ = writeln!(out, "## zonebench compare: {icon} {}\n", md_escape(&headline(c)));
    for l in preamble_lines(c) {
        let _ = writeln!(out, "- {}", md_escape(&l));
    }
    let changed: Vec<&Row> = c.rows.iter().filter(|r| r.verdict != Verdict::Unchanged || r.noisy).collect();
    if changed.is_empty() {
        let _ = writeln!(out, "\nNo metric changed beyond the threshold ({} metrics compared).", c.rows.len());
    } else {
        let _ = writeln!(out, "\n| verdict | measurement | metric | base | candidate | delta | p | notes |");
        let _ = writeln!(out, "|---|---|---|--:|--:|--:|--:|---|");
        for r in changed {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.verdict.as_str(),
                md_escape(&r.label),
                r.metric,
                r.format_value(r.base),
                r.format_value(r.candidate),
                r.format_delta(),
                p_value(r),
                md_escape(&notes(r, c.max_spread_pct)),
            );
        }
        let quiet = c.rows.iter().filter(|r| r.verdict == Verdict::Unchanged && !r.noisy).count();
        let _ = writeln!(out, "\n{quiet} other metric(s) unchanged.");
    }
    if !c.only_in_base.is_empty() || !c.only_in_candidate.is_empty() {
        let _ = writeln!(out, "\n### Measured on one side only\n");
        for k in &c.only_in_base {
            let _ = writeln!(out, "- only in base: {}", md_escape(k));
        }
        for k in &c.only_in_candidate {
            let _ = writeln!(out, "- only in candidate: {}", md_escape(k));
        }
    }
    out
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn junit(c: &Comparison) -> String {
    // One suite per test name, one case per measurement key; suites in first-seen order.
    struct Case {
        name: String,
        failures: Vec<String>,
        details: Vec<String>,
        skipped: Option<String>,
    }
    let mut suites: Vec<(String, Vec<Case>)> = Vec::new();
    fn case_of(suites: &mut Vec<(String, Vec<Case>)>, suite: &str, name: &str) -> (usize, usize) {
        let si = match suites.iter().position(|(s, _)| s == suite) {
            Some(i) => i,
            None => {
                suites.push((suite.to_string(), Vec::new()));
                suites.len() - 1
            }
        };
        let cases = &mut suites[si].1;
        let ci = match cases.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                cases.push(Case { name: name.to_string(), failures: vec![], details: vec![], skipped: None });
                cases.len() - 1
            }
        };
        (si, ci)
    }
    let mut rows: Vec<&Row> = c.rows.iter().collect();
    rows.sort_by(|a, b| a.label.cmp(&b.label).then(a.metric.cmp(&b.metric)));
    for r in rows {
        let (si, ci) = case_of(&mut suites, &r.key.name, &r.label);
        let line = format!(
            "{} {}: {} → {} ({}{}) {}{}",
            r.metric,
            r.verdict.as_str(),
            r.format_value(r.base),
            r.format_value(r.candidate),
            r.format_delta(),
            r.p_value.map(|p| format!(", p = {p:.3}")).unwrap_or_default(),
            r.method,
            if r.noisy { ", noisy" } else { "" },
        );
        let case = &mut suites[si].1[ci];
        if r.verdict == Verdict::Regression {
            case.failures.push(format!("{} {} ({})", r.metric, r.format_delta(), r.format_value(r.candidate)));
        }
        case.details.push(line);
    }
    for (label, side) in
        c.only_in_base.iter().map(|l| (l, "base")).chain(c.only_in_candidate.iter().map(|l| (l, "candidate")))
    {
        let suite = label.split(' ').next().unwrap_or(label).to_string();
        let (si, ci) = case_of(&mut suites, &suite, label);
        suites[si].1[ci].skipped = Some(format!("measured only in the {side} run"));
    }

    let total: usize = suites.iter().map(|(_, cs)| cs.len()).sum();
    let failed: usize = suites.iter().flat_map(|(_, cs)| cs).filter(|c| !c.failures.is_empty()).count();
    let skipped: usize = suites.iter().flat_map(|(_, cs)| cs).filter(|c| c.skipped.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"zonebench compare\" tests=\"{total}\" failures=\"{failed}\" errors=\"0\" skipped=\"{skipped}\">"
    );
    for (suite, cases) in &suites {
        let f = cases.iter().filter(|c| !c.failures.is_empty()).count();
        let s = cases.iter().filter(|c| c.skipped.is_some()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"0\" skipped=\"{s}\" timestamp=\"{}\">",
            xml_escape(suite),
            cases.len(),
            xml_escape(&c.candidate.started_at),
        );
        let _ = writeln!(out, "    <properties>");
        for (k, v) in [
            ("base", &c.base.path),
            ("candidate", &c.candidate.path),
            ("threshold_pct", &c.threshold_pct.to_string()),
            ("alpha", &c.alpha.to_string()),
        ] {
            let _ = writeln!(out, "      <property name=\"{k}\" value=\"{}\"/>", xml_escape(v));
        }
        for d in &c.fingerprint_differences {
            let _ = writeln!(
                out,
                "      <property name=\"fingerprint_differs.{}\" value=\"{} → {}\"/>",
                xml_escape(&d.field),
                xml_escape(&d.base),
                xml_escape(&d.candidate)
            );
        }
        let _ = writeln!(out, "    </properties>");
        for case in cases {
            let _ = write!(
                out,
                "    <testcase classname=\"zonebench.{}\" name=\"{}\" time=\"0\">",
                xml_escape(suite),
                xml_escape(&case.name)
            );
            if let Some(why) = &case.skipped {
                let _ = write!(out, "<skipped message=\"{}\"/>", xml_escape(why));
            }
            if !case.failures.is_empty() {
                let _ = write!(
                    out,
                    "\n      <failure type=\"regression\" message=\"{}\">{}</failure>",
                    xml_escape(&format!("regression: {}", case.failures.join(", "))),
                    xml_escape(&case.details.join("\n"))
                );
            }
            if !case.details.is_empty() {
                let _ = write!(out, "\n      <system-out>{}</system-out>\n    ", xml_escape(&case.details.join("\n")));
            }
            let _ = writeln!(out, "</testcase>");
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}
