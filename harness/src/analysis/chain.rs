//! A service chain's route, judged from its answers: each answer names every hop that
//! relayed it, first to last (`srv-b-0,srv-c-0,srv-a-0`), so the answers per path tell
//! how many went the whole planned way and how many were cut short by a hop that
//! refused or failed (those carry the status that says why).

use std::collections::BTreeMap;

use crate::model::{Chain, Endpoint};

/// The chain record of a measurement from `client` through `hops`, given its answers per
/// path (`servers`).
pub fn route(client: &Endpoint, hops: Vec<Endpoint>, servers: &BTreeMap<String, u64>) -> Chain {
    let zones: Vec<String> = std::iter::once(&client.zone).chain(hops.iter().map(|h| &h.zone)).cloned().collect();
    let zones_crossed = zones.windows(2).filter(|w| w[0] != w[1]).count() as u32;
    let path = hops.iter().map(|h| h.agent.as_str()).collect::<Vec<_>>().join(",");
    let total: u64 = servers.values().sum();
    let complete = servers.iter().filter(|(p, _)| same_path(p, &path)).map(|(_, n)| *n).sum::<u64>();
    let complete_pct = if total == 0 { 0.0 } else { complete as f64 * 100.0 / total as f64 };
    Chain { hops, zones, zones_crossed, path, complete_pct }
}

/// `srv-a-0, srv-b-0` and `srv-a-0,srv-b-0` are one path.
fn same_path(answered: &str, planned: &str) -> bool {
    answered.split(',').map(str::trim).eq(planned.split(','))
}

/// A route's zones as `a → b → c`.
pub fn zones_words(chain: &Chain) -> String {
    chain.zones.join(" → ")
}

/// What one chain test measured over its repeats: the median p50/p99 and rate.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSummary {
    pub name: String,
    pub zones: String,
    pub hops: usize,
    pub zones_crossed: u32,
    pub repeats: usize,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub requests_per_sec: Option<f64>,
    /// The lowest share of complete answers over the repeats, percent.
    pub complete_pct: f64,
}

/// One summary per chain test (by name, in the run's order), capacity-search probes left out.
pub fn summarize(r: &crate::model::RunResults) -> Vec<ChainSummary> {
    let probes = r.search_probes();
    let mut names: Vec<&str> = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&crate::model::Measurement>> = BTreeMap::new();
    for (i, m) in r.measurements.iter().enumerate() {
        if m.chain.is_none() || probes.contains(&i) {
            continue;
        }
        if !by_name.contains_key(m.name.as_str()) {
            names.push(&m.name);
        }
        by_name.entry(&m.name).or_default().push(m);
    }
    names
        .into_iter()
        .map(|name| {
            let ms = &by_name[name];
            let chain = ms[0].chain.as_ref().expect("kept only chain measurements");
            let median = |f: &dyn Fn(&crate::model::Measurement) -> Option<f64>| {
                let v: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
                super::stats::median(&v)
            };
            ChainSummary {
                name: name.to_string(),
                zones: zones_words(chain),
                hops: chain.hops.len(),
                zones_crossed: chain.zones_crossed,
                repeats: ms.len(),
                p50_ns: median(&|m| m.latency.as_ref().map(|l| l.p50_ns as f64)),
                p99_ns: median(&|m| m.latency.as_ref().map(|l| l.p99_ns as f64)),
                requests_per_sec: median(&|m| m.metrics.requests_per_sec),
                complete_pct: ms.iter().filter_map(|m| m.chain.as_ref()).map(|c| c.complete_pct).fold(100.0, f64::min),
            }
        })
        .collect()
}

/// For each chain that crosses zones, the same-length chain that crosses none (the first
/// such), and what the crossings added to its median p50: `(crossing, same-zone, added ns)`.
pub fn added_by_crossings(summaries: &[ChainSummary]) -> Vec<(&ChainSummary, &ChainSummary, f64)> {
    summaries
        .iter()
        .filter(|c| c.zones_crossed > 0)
        .filter_map(|c| {
            let same = summaries.iter().find(|s| s.zones_crossed == 0 && s.hops == c.hops)?;
            Some((c, same, c.p50_ns? - same.p50_ns?))
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn at(agent: &str, zone: &str) -> Endpoint {
        Endpoint { agent: agent.into(), node: format!("{zone}-1"), zone: zone.into() }
    }

    #[test]
    fn a_route_counts_its_zone_changes_and_its_complete_answers() {
        let hops = vec![at("srv-b-0", "b"), at("srv-c-0", "c"), at("srv-a-0", "a")];
        let servers = BTreeMap::from([("srv-b-0,srv-c-0,srv-a-0".to_string(), 90), ("srv-b-0".to_string(), 10)]);
        let c = route(&at("cli-a-0", "a"), hops, &servers);
        assert_eq!(c.zones, ["a", "b", "c", "a"]);
        assert_eq!(c.zones_crossed, 3);
        assert_eq!(c.path, "srv-b-0,srv-c-0,srv-a-0");
        assert!((c.complete_pct - 90.0).abs() < 1e-9);
        assert_eq!(zones_words(&c), "a → b → c → a");
        let same = route(&at("cli-a-0", "a"), vec![at("srv-a-0", "a"), at("srv-a-1", "a")], &BTreeMap::new());
        assert_eq!((same.zones_crossed, same.complete_pct), (0, 0.0));
    }
}
