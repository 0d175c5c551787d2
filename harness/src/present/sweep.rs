//! The table a service-scaling sweep prints: one row per measurement, in run order, then
//! each point that failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use zonebench_agent::units::format_ns;

use crate::model::RunResults;

/// The sweep's table: one row per measurement, in run order; request/response tests show
/// their latency, tcp-crr its connect time too. Then the points that failed.
pub fn render(r: &RunResults) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(
        o,
        "{:<20} {:>8}  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>13}",
        "dataplane", "services", "test", "connect50", "connect99", "p50", "p99", "rules", "program", "first connect"
    );
    let ns = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format_ns(v as f64));
    for m in &r.measurements {
        let Some(d) = &m.service_dataplane else { continue };
        // The variant names the dataplane, under its platform's label in a run over several
        // (`emulated/iptables` beside `kube-proxy/iptables`).
        let _ = writeln!(
            o,
            "{:<20} {:>8}  {:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>13}",
            if m.variant.is_empty() { d.kind.to_string() } else { m.variant.clone() },
            d.services,
            m.name,
            ns(m.connect.as_ref().map(|c| c.p50_ns)),
            ns(m.connect.as_ref().map(|c| c.p99_ns)),
            ns(m.latency.as_ref().map(|l| l.p50_ns)),
            ns(m.latency.as_ref().map(|l| l.p99_ns)),
            d.rules.map_or_else(|| "-".to_string(), |r| r.to_string()),
            ns(d.program_ns),
            ns(d.programming_latency_ns),
        );
    }
    let mut failed: BTreeMap<(String, u64), String> = BTreeMap::new();
    for f in r.failures.iter().filter(|f| !f.variant.is_empty()) {
        let count = f.params.get("services").and_then(|v| v.as_u64()).unwrap_or(0);
        failed.entry((f.variant.clone(), count)).or_insert_with(|| f.error.clone());
    }
    for ((kind, count), error) in failed {
        let _ = writeln!(o, "{kind:<20} {count:>8}  failed: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Failure;

    #[test]
    fn the_table_shows_each_point_and_each_failed_point_once() {
        use crate::model::Fingerprint;
        let mut r = RunResults {
            schema_version: 1,
            scenario: "s".into(),
            started_at: String::new(),
            finished_at: None,
            status: crate::model::RunStatus::Complete,
            fingerprint: Fingerprint::default(),
            measurements: vec![],
            failures: vec![],
            groups: vec![],
            capacities: vec![],
            error: None,
            noise: None,
            cost: None,
        };
        for test in ["tcp-crr", "tcp-rr"] {
            r.failures.push(Failure {
                test: zonebench_agent::spec::TestKind::TcpCrr,
                name: test.into(),
                repeat: 0,
                client: "cli-a-0".into(),
                server: "svc-00010".into(),
                error: "the eBPF dataplane is not available in this build: clang was not found".into(),
                variant: "ebpf".into(),
                params: [("services".to_string(), 10.into())].into(),
                group: None,
            });
        }
        let text = render(&r);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.lines().nth(1).unwrap().contains("ebpf") && text.contains("not available in this build"),
            "{text}"
        );
    }
}
