//! A concurrent group's summary from its members' measurements: histograms merged (never
//! percentiles averaged), rates summed, answers counted per server, how far the members'
//! windows overlapped, and for a Service whether an endpoint took more than its share.
//!
//! Overload is judged against the mean of the Service's endpoints: with `n` endpoints and
//! `A` answers, a fair share is `A/n` each; an endpoint above `threshold × A/n` is flagged.
//! Beside the measured ratio stands the expected one, from each node's endpoint choice (the
//! lab's kube-proxy port): every client's answers split evenly over the endpoints its node
//! routes to. Skewed PreferClose (one endpoint in a zone that sends a third of the load) is
//! flagged by both; balanced Auto by neither.

use std::collections::BTreeMap;

use zonebench_agent::histogram;
use zonebench_agent::spec::{Metrics, Window};

use super::metrics::{connect_of, latency_of, merged};
use crate::model::{EndpointLoad, EndpointShare, Group, Measurement};

/// The Service a group went through: its endpoints (agent id, zone) and, when known, the
/// endpoints each node routes to.
pub struct ServiceShape<'a> {
    pub endpoints: Vec<(String, String)>,
    pub routes: &'a BTreeMap<String, Vec<String>>,
    pub threshold: f64,
}

/// Fills `group`'s figures from its `members` (index into the run's measurements, and the
/// measurement).
pub fn summarize(mut group: Group, members: &[(usize, &Measurement)], service: Option<&ServiceShape<'_>>) -> Group {
    let ms: Vec<&Measurement> = members.iter().map(|(_, m)| *m).collect();
    group.members = members.iter().map(|(i, _)| *i).collect();
    group.metrics = sum_metrics(&ms);
    group.latency = merged(ms.iter().copied(), latency_of).and_then(|h| histogram::summarize(&h));
    group.connect = merged(ms.iter().copied(), connect_of).and_then(|h| histogram::summarize(&h));
    group.servers = BTreeMap::new();
    for m in &ms {
        for (id, n) in &m.servers {
            *group.servers.entry(id.clone()).or_default() += n;
        }
    }
    let windows: Vec<Window> = ms.iter().filter_map(|m| m.window).collect();
    if !windows.is_empty() && windows.len() == ms.len() {
        group.span = Some(Window {
            start_ns: windows.iter().map(|w| w.start_ns).min().unwrap_or(0),
            end_ns: windows.iter().map(|w| w.end_ns).max().unwrap_or(0),
        });
        group.overlap_pct = Some(overlap_pct(&windows));
    }
    group.load = service.map(|s| endpoint_load(&group.servers, &ms, s));
    group
}

/// The window all of `windows` share, as a percentage of the longest.
pub fn overlap_pct(windows: &[Window]) -> f64 {
    let latest_start = windows.iter().map(|w| w.start_ns).max().unwrap_or(0);
    let earliest_end = windows.iter().map(|w| w.end_ns).min().unwrap_or(0);
    let longest = windows.iter().map(Window::len_ns).max().unwrap_or(0);
    if longest == 0 {
        return 0.0;
    }
    100.0 * earliest_end.saturating_sub(latest_start) as f64 / longest as f64
}

/// Rates and counts summed over the members; loss recomputed from the sums.
fn sum_metrics(ms: &[&Measurement]) -> Metrics {
    fn sum_f(ms: &[&Measurement], f: fn(&Metrics) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = ms.iter().filter_map(|m| f(&m.metrics)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
    fn sum_u(ms: &[&Measurement], f: fn(&Metrics) -> Option<u64>) -> Option<u64> {
        let v: Vec<u64> = ms.iter().filter_map(|m| f(&m.metrics)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
    let sent = sum_u(ms, |m| m.sent_packets);
    let lost = sum_u(ms, |m| m.lost_packets);
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    for m in ms {
        for (code, n) in m.metrics.status_counts.iter().flatten() {
            *status.entry(code.clone()).or_default() += n;
        }
    }
    Metrics {
        throughput_bps: sum_f(ms, |m| m.throughput_bps),
        transactions_per_sec: sum_f(ms, |m| m.transactions_per_sec),
        requests_per_sec: sum_f(ms, |m| m.requests_per_sec),
        sent_packets: sent,
        received_packets: sum_u(ms, |m| m.received_packets),
        lost_packets: lost,
        loss_pct: match (sent, lost) {
            (Some(s), Some(l)) if s > 0 => Some(100.0 * l as f64 / s as f64),
            _ => None,
        },
        out_of_order_packets: sum_u(ms, |m| m.out_of_order_packets),
        // Jitter is a per-stream figure: it does not add up over streams.
        jitter_ns: None,
        retransmits: sum_u(ms, |m| m.retransmits),
        errors: sum_u(ms, |m| m.errors),
        status_counts: (!status.is_empty()).then_some(status),
    }
}

fn endpoint_load(servers: &BTreeMap<String, u64>, ms: &[&Measurement], s: &ServiceShape<'_>) -> EndpointLoad {
    let n = s.endpoints.len().max(1) as f64;
    let total: u64 = s.endpoints.iter().map(|(a, _)| servers.get(a).copied().unwrap_or(0)).sum();
    let mean = total as f64 / n;
    let expected = expected_shares(ms, s);
    let endpoints: Vec<EndpointShare> = s
        .endpoints
        .iter()
        .map(|(agent, zone)| {
            let answers = servers.get(agent).copied().unwrap_or(0);
            EndpointShare {
                agent: agent.clone(),
                zone: zone.clone(),
                answers,
                ratio: if mean > 0.0 { answers as f64 / mean } else { 0.0 },
                expected_ratio: expected.as_ref().map(|e| e.get(agent).copied().unwrap_or(0.0)),
            }
        })
        .collect();
    let overloaded = endpoints.iter().filter(|e| e.ratio > s.threshold).map(|e| e.agent.clone()).collect();
    EndpointLoad { threshold: s.threshold, endpoints, overloaded }
}

/// Each endpoint's expected load over the mean, from each member's answers split evenly
/// over the endpoints its client's node routes to; `None` when a node's choice is unknown.
fn expected_shares(ms: &[&Measurement], s: &ServiceShape<'_>) -> Option<BTreeMap<String, f64>> {
    let mut load: BTreeMap<String, f64> = s.endpoints.iter().map(|(a, _)| (a.clone(), 0.0)).collect();
    for m in ms {
        let route = s.routes.get(&m.client.node).filter(|r| !r.is_empty())?;
        let answers: u64 = m.servers.values().sum();
        for agent in route {
            *load.entry(agent.clone()).or_default() += answers as f64 / route.len() as f64;
        }
    }
    let mean = load.values().sum::<f64>() / s.endpoints.len().max(1) as f64;
    (mean > 0.0).then(|| load.into_iter().map(|(a, l)| (a, l / mean)).collect())
}

/// The load verdict in words: `fair (max 1.10×)` or `OVERLOADED srv-c-0 2.33× (expected 2.33×)`.
pub fn load_words(load: &EndpointLoad) -> String {
    if load.overloaded.is_empty() {
        let max = load.endpoints.iter().map(|e| e.ratio).fold(0.0, f64::max);
        return format!("fair (max {max:.2}× the mean, threshold {:.2}×)", load.threshold);
    }
    let parts: Vec<String> = load
        .endpoints
        .iter()
        .filter(|e| load.overloaded.contains(&e.agent))
        .map(|e| {
            let expected = e.expected_ratio.map(|x| format!(", expected {x:.2}×")).unwrap_or_default();
            format!("{} in {} at {:.2}× the mean{expected}", e.agent, e.zone, e.ratio)
        })
        .collect();
    format!("OVERLOADED: {} (threshold {:.2}×)", parts.join("; "), load.threshold)
}

/// The group's headline rate in its unit: transactions, requests or bits per second.
pub fn rate_words(g: &Group) -> String {
    let m = &g.metrics;
    if let Some(bps) = m.throughput_bps {
        zonebench_agent::units::format_bps(bps)
    } else if let Some(r) = m.requests_per_sec {
        format!("{r:.0} req/s")
    } else if let Some(t) = m.transactions_per_sec {
        format!("{t:.0} tx/s")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics::fixtures;
    use crate::model::Via;
    use zonebench_agent::spec::TestKind;

    fn member(zone: &str, start_ms: u64, answers: &[(&str, u64)], values: &[u64]) -> Measurement {
        let mut m = fixtures::latency(TestKind::TcpCrr, zone, zone, 0, values);
        m.via = Via::Service;
        m.window = Some(Window { start_ns: start_ms * 1_000_000, end_ns: (start_ms + 1000) * 1_000_000 });
        m.servers = answers.iter().map(|(a, n)| (a.to_string(), *n)).collect();
        m
    }

    fn empty() -> Group {
        Group {
            id: "g".into(),
            test: TestKind::TcpCrr,
            name: "tcp-crr".into(),
            via: Via::Service,
            variant: String::new(),
            repeat: 0,
            target: "echo".into(),
            clients: vec![],
            members: vec![],
            failed: 0,
            span: None,
            overlap_pct: None,
            elapsed_ns: 0,
            metrics: Metrics::default(),
            latency: None,
            connect: None,
            servers: BTreeMap::new(),
            load: None,
        }
    }

    #[test]
    fn overlap_is_the_shared_window_over_the_longest() {
        let w = |s, e| Window { start_ns: s, end_ns: e };
        assert_eq!(overlap_pct(&[w(0, 100), w(0, 100)]), 100.0);
        assert_eq!(overlap_pct(&[w(0, 100), w(10, 110)]), 90.0);
        assert_eq!(overlap_pct(&[w(0, 100), w(200, 300)]), 0.0, "disjoint windows share nothing");
    }

    #[test]
    fn members_add_up_histograms_merged_rates_summed_answers_counted() {
        let a = member("a", 0, &[("srv-a-0", 60)], &[100_000, 200_000]);
        let b = member("b", 5, &[("srv-a-0", 40), ("srv-b-0", 10)], &[300_000]);
        let g = summarize(empty(), &[(3, &a), (4, &b)], None);
        assert_eq!(g.members, [3, 4]);
        assert_eq!(g.latency.as_ref().unwrap().count, 3);
        let rate = a.metrics.transactions_per_sec.unwrap() + b.metrics.transactions_per_sec.unwrap();
        assert_eq!(g.metrics.transactions_per_sec, Some(rate));
        assert_eq!(g.servers, BTreeMap::from([("srv-a-0".into(), 100), ("srv-b-0".into(), 10)]));
        assert_eq!(g.span, Some(Window { start_ns: 0, end_ns: 1_005_000_000 }));
        assert!((g.overlap_pct.unwrap() - 99.5).abs() < 1e-9);
        assert!(g.load.is_none());
    }

    /// Skewed PreferClose: zones a, b, c with 3, 3 and 1 endpoints, each zone's client
    /// routed to its own zone's endpoints with the same load.
    #[test]
    fn a_thin_zones_endpoint_under_in_zone_routing_is_flagged_and_an_even_spread_is_not() {
        let eps: Vec<(String, String)> = [("a", 3), ("b", 3), ("c", 1)]
            .iter()
            .flat_map(|(z, n)| (0..*n).map(move |i| (format!("srv-{z}-{i}"), z.to_string())))
            .collect();
        let mut routes = BTreeMap::new();
        let mut ms = Vec::new();
        for (z, n) in [("a", 3), ("b", 3), ("c", 1)] {
            let route: Vec<String> = (0..n).map(|i| format!("srv-{z}-{i}")).collect();
            routes.insert(format!("{z}-2"), route.clone());
            let answers: Vec<(String, u64)> = route.iter().map(|a| (a.clone(), 693 / n)).collect();
            let answers: Vec<(&str, u64)> = answers.iter().map(|(a, n)| (a.as_str(), *n)).collect();
            ms.push(member(z, 0, &answers, &[100_000]));
        }
        let shape = ServiceShape { endpoints: eps.clone(), routes: &routes, threshold: 1.5 };
        let members: Vec<(usize, &Measurement)> = ms.iter().enumerate().collect();
        let load = summarize(empty(), &members, Some(&shape)).load.unwrap();
        assert_eq!(load.overloaded, ["srv-c-0"]);
        let c = load.endpoints.iter().find(|e| e.agent == "srv-c-0").unwrap();
        assert!((c.ratio - 7.0 / 3.0).abs() < 0.01, "{c:?}");
        assert!((c.expected_ratio.unwrap() - 7.0 / 3.0).abs() < 0.01, "{c:?}");
        assert!(load_words(&load).starts_with("OVERLOADED: srv-c-0 in c at 2.33× the mean, expected 2.33×"));

        // The same clients spread over every endpoint: fair, and predicted so.
        let all: Vec<String> = eps.iter().map(|(a, _)| a.clone()).collect();
        let routes: BTreeMap<String, Vec<String>> =
            ["a-2", "b-2", "c-2"].iter().map(|n| (n.to_string(), all.clone())).collect();
        let even: Vec<Measurement> = ["a", "b", "c"]
            .iter()
            .map(|z| member(z, 0, &all.iter().map(|a| (a.as_str(), 100)).collect::<Vec<_>>(), &[100_000]))
            .collect();
        let members: Vec<(usize, &Measurement)> = even.iter().enumerate().collect();
        let shape = ServiceShape { endpoints: eps, routes: &routes, threshold: 1.5 };
        let load = summarize(empty(), &members, Some(&shape)).load.unwrap();
        assert!(load.overloaded.is_empty(), "{load:?}");
        assert!(load.endpoints.iter().all(|e| e.expected_ratio == Some(1.0) && e.ratio == 1.0));
        assert!(load_words(&load).starts_with("fair"));
    }

    #[test]
    fn without_the_nodes_choices_the_expected_share_is_absent_not_guessed() {
        let ms = [member("a", 0, &[("srv-a-0", 10)], &[1000])];
        let routes = BTreeMap::new();
        let shape = ServiceShape { endpoints: vec![("srv-a-0".into(), "a".into())], routes: &routes, threshold: 1.5 };
        let load = summarize(empty(), &[(0, &ms[0])], Some(&shape)).load.unwrap();
        assert_eq!(load.endpoints[0].expected_ratio, None);
    }
}
