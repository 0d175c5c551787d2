//! The table a topology-routing run prints: per test, variant and client zone, the measured
//! in-zone fraction, latency p50/p99 and the cross-zone cost, then each variant's hints
//! verdict (what the EndpointSlice controller decided), so the prediction sits beside the
//! measurement. Repeats are pooled: answers and bytes are summed, histograms merged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use zonebench_agent::histogram;
use zonebench_agent::units::format_ns;

use crate::model::CostModel;
use crate::model::{HintsVerdict, Measurement, RunResults};

/// One row: a test and variant seen from one client zone, all repeats pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub test: String,
    pub variant: String,
    pub client_zone: String,
    pub repeats: usize,
    pub in_zone_fraction: f64,
    pub answers_by_zone: BTreeMap<String, u64>,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Cross-zone bytes per request, measured.
    pub cross_zone_bytes_per_request: f64,
    /// A month at the scenario's request rate with this locality.
    pub monthly_usd: f64,
}

/// (test, variant, client zone).
type GroupKey<'a> = (&'a str, &'a str, &'a str);

/// Rows in the order variants and zones first appear; only measurements with a `locality`.
pub fn rows(r: &RunResults, model: &CostModel) -> Vec<Row> {
    let mut groups: Vec<(GroupKey<'_>, Vec<&Measurement>)> = Vec::new();
    for m in r.measurements.iter().filter(|m| m.locality.is_some()) {
        let key = (m.name.as_str(), m.variant.as_str(), m.client.zone.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(m),
            None => groups.push((key, vec![m])),
        }
    }
    let per_gb = model.per_gb_cross_zone;
    groups
        .into_iter()
        .map(|((test, variant, zone), ms)| {
            let mut answers_by_zone: BTreeMap<String, u64> = BTreeMap::new();
            let mut cross_bytes = 0u64;
            let mut merged = histogram::new();
            let mut have_latency = false;
            for m in &ms {
                // Filtered on `locality.is_some()` above.
                let Some(l) = &m.locality else { continue };
                for (z, n) in &l.answers_by_zone {
                    *answers_by_zone.entry(z.clone()).or_default() += n;
                }
                cross_bytes = cross_bytes.saturating_add(l.cross_zone_bytes);
                if let Some(h) = m.latency.as_ref().and_then(|s| histogram::decode(&s.histogram).ok()) {
                    histogram::merge(&mut merged, &h);
                    have_latency = true;
                }
            }
            let answers: u64 = answers_by_zone.values().sum();
            let in_zone = answers_by_zone.get(zone).copied().unwrap_or(0);
            let per_request = if answers == 0 { 0.0 } else { cross_bytes as f64 / answers as f64 };
            Row {
                test: test.to_string(),
                variant: variant.to_string(),
                client_zone: zone.to_string(),
                repeats: ms.len(),
                in_zone_fraction: if answers == 0 { 0.0 } else { in_zone as f64 / answers as f64 },
                answers_by_zone,
                p50_ns: have_latency.then(|| merged.value_at_quantile(0.50)),
                p99_ns: have_latency.then(|| merged.value_at_quantile(0.99)),
                cross_zone_bytes_per_request: per_request,
                monthly_usd: per_request * model.requests_per_sec * 30.0 * 24.0 * 3600.0 / 1e9 * per_gb * 2.0,
            }
        })
        .collect()
}

/// The verdict in one line: `hints written`, or why not with the controller's event.
pub fn verdict_line(v: &HintsVerdict) -> String {
    let mut s = if v.enabled { "hints written".to_string() } else { "no hints".to_string() };
    if let Some(e) = &v.event {
        let _ = write!(s, "; event {} {}: {}", e.event_type, e.reason, e.message);
    }
    if !v.deterministic {
        s.push_str("; not deterministic (Go's map order decides a tie)");
    }
    if let Some(l) = &v.live {
        let _ = write!(s, "; the cluster's hints: {} ({})", l.verdict, l.summary);
    }
    s
}

/// The printed table; empty when no measurement has a `locality`.
pub fn render(r: &RunResults, model: &CostModel) -> String {
    let rows = rows(r, model);
    if rows.is_empty() {
        return String::new();
    }
    let zones = &r.fingerprint.zones;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ntopology routing: in-zone fraction of answers by client zone, latency, cross-zone cost \
         (at {} req/s, {} USD/GB each way; payload bytes only)",
        model.requests_per_sec, model.per_gb_cross_zone
    );
    let answers_head = format!("answers {}", zones.join("/"));
    let _ = writeln!(
        out,
        "  {:<10} {:<22} {:<6} {:>7} {:<20} {:>10} {:>10} {:>12}",
        "test", "variant", "client", "in-zone", answers_head, "p50", "p99", "USD/month"
    );
    for row in &rows {
        let answers: Vec<String> =
            zones.iter().map(|z| row.answers_by_zone.get(z).copied().unwrap_or(0).to_string()).collect();
        let _ = writeln!(
            out,
            "  {:<10} {:<22} {:<6} {:>7.3} {:<20} {:>10} {:>10} {:>12.2}",
            row.test,
            if row.variant.is_empty() { "-" } else { &row.variant },
            row.client_zone,
            row.in_zone_fraction,
            answers.join("/"),
            row.p50_ns.map_or("-".into(), |v| format_ns(v as f64)),
            row.p99_ns.map_or("-".into(), |v| format_ns(v as f64)),
            row.monthly_usd,
        );
    }
    let mut verdicts: Vec<(&str, &HintsVerdict)> = Vec::new();
    for m in &r.measurements {
        if let Some(v) = &m.hints {
            if !verdicts.iter().any(|(name, _)| *name == m.variant) {
                verdicts.push((&m.variant, v));
            }
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(out, "\nhints verdict (the EndpointSlice controller, as `zonebench hints` explains it):");
        for (variant, v) in verdicts {
            let _ = writeln!(out, "  {:<22} mode {:<14} {}", variant, v.mode, verdict_line(v));
        }
    }
    if let Some(c) = &r.cost {
        let _ = writeln!(
            out,
            "\nmeasured cross-zone traffic: {:.6} GB, {:.6} USD at {} USD/GB each way",
            c.cross_zone_gb, c.measured_usd, c.per_gb_cross_zone
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\n{} step(s) failed:", r.failures.len());
        for f in &r.failures {
            let _ = writeln!(out, "  {} [{}] {} → {}: {}", f.name, f.variant, f.client, f.server, f.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::locality::{measure, Volume};
    use crate::analysis::metrics::fixtures;

    fn service_measurement(variant: &str, cz: &str, servers: &[(&str, u64)]) -> Measurement {
        let mut m = fixtures::latency(zonebench_agent::spec::TestKind::TcpCrr, cz, cz, 0, &[100_000, 200_000]);
        m.variant = variant.into();
        m.servers = servers.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let zone_of = |id: &str| id.strip_prefix("srv-").map(|r| r[..1].to_string());
        m.locality = Some(measure(cz, &m.servers, zone_of, Volume::PerAnswer(100)));
        m
    }

    #[test]
    fn repeats_pool_their_answers_and_cost_follows_the_crossing_share() {
        let r = fixtures::run(vec![
            service_measurement("none", "a", &[("srv-a-0", 10), ("srv-b-0", 30)]),
            service_measurement("none", "a", &[("srv-a-0", 30), ("srv-b-0", 30)]),
            service_measurement("auto", "a", &[("srv-a-0", 50)]),
        ]);
        let rows = rows(&r, &CostModel { per_gb_cross_zone: 0.01, requests_per_sec: 1000.0 });
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].variant, "none");
        assert_eq!(rows[0].repeats, 2);
        assert!((rows[0].in_zone_fraction - 0.4).abs() < 1e-12);
        assert!((rows[0].cross_zone_bytes_per_request - 60.0).abs() < 1e-12);
        assert_eq!(rows[1].in_zone_fraction, 1.0);
        assert_eq!(rows[1].monthly_usd, 0.0);
        assert!(rows[0].p50_ns.is_some());
    }

    #[test]
    fn a_refused_variant_prints_the_controllers_event() {
        let v = HintsVerdict {
            mode: crate::model::RoutingMode::Auto,
            enabled: false,
            deterministic: true,
            event: Some(crate::model::HintsEvent {
                event_type: crate::model::EventType::Warning,
                reason: "TopologyAwareHintsDisabled".into(),
                message: "Insufficient number of endpoints".into(),
            }),
            explanation: vec![],
            live: None,
        };
        let mut m = service_measurement("skewed-auto", "c", &[("srv-a-0", 1)]);
        m.hints = Some(v);
        let text = render(&fixtures::run(vec![m]), &CostModel::default());
        assert!(text.contains("skewed-auto"), "{text}");
        assert!(text.contains("no hints; event Warning TopologyAwareHintsDisabled"), "{text}");
        let mut m = m_with_live();
        m.variant = "auto".into();
        let text = render(&fixtures::run(vec![m]), &CostModel::default());
        assert!(text.contains("the cluster's hints: agree (as predicted)"), "{text}");
    }

    fn m_with_live() -> Measurement {
        let mut m = service_measurement("auto", "a", &[("srv-a-0", 1)]);
        m.hints = Some(HintsVerdict {
            mode: crate::model::RoutingMode::Auto,
            enabled: true,
            deterministic: true,
            event: None,
            explanation: vec![],
            live: Some(crate::model::LiveHintsCheck {
                verdict: "agree".into(),
                summary: "as predicted".into(),
                differences: 0,
            }),
        });
        m
    }
}
