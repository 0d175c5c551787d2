//! A service chain's route, judged from its answers: each answer names every hop that
//! relayed it, first to last (`srv-b-0,srv-c-0,srv-a-0`), so the answers per path tell
//! how many went the whole planned way and how many were cut short by a hop that
//! refused or failed (those carry the status that says why). A hop through the Service is
//! whichever agent the dataplane picked, read from the same answers.

use std::collections::BTreeMap;

use crate::model::{Chain, Endpoint};

/// The chain record of a measurement from `client` through `planned`, given its answers per
/// path (`servers`). A `None` hop went through the Service: its agent is the one of the
/// complete path most answers took (`resolve` names that agent's place), unknown (no zone)
/// when no answer went the whole way.
pub fn route(
    client: &Endpoint,
    planned: &[Option<Endpoint>],
    servers: &BTreeMap<String, u64>,
    resolve: impl Fn(&str) -> Endpoint,
) -> Chain {
    // An answer went the whole way when it names as many hops as planned, the planned
    // agents where they were named, and no agent twice (a Service that picked an agent the
    // request had passed: the loop that agent refused with a 508).
    let complete = |path: &str| {
        let ids: Vec<&str> = path.split(',').map(str::trim).collect();
        let distinct = ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id));
        ids.len() == planned.len()
            && distinct
            && ids.iter().zip(planned).all(|(id, p)| p.as_ref().is_none_or(|e| e.agent == *id))
    };
    let total: u64 = servers.values().sum();
    let complete_n: u64 = servers.iter().filter(|(p, _)| complete(p)).map(|(_, n)| *n).sum();
    let taken = servers.iter().filter(|(p, _)| complete(p)).max_by_key(|(_, n)| **n).map(|(p, _)| p.as_str());
    let taken: Option<Vec<&str>> = taken.map(|p| p.split(',').map(str::trim).collect());
    let hops: Vec<Endpoint> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| match (p, &taken) {
            (Some(e), _) => e.clone(),
            (None, Some(ids)) => resolve(ids[i]),
            (None, None) => Endpoint { agent: "(service)".into(), node: String::new(), zone: String::new() },
        })
        .collect();
    let zones: Vec<String> = std::iter::once(&client.zone).chain(hops.iter().map(|h| &h.zone)).cloned().collect();
    // A hop of unknown zone crosses nothing that can be told.
    let zones_crossed =
        zones.windows(2).filter(|w| !w[0].is_empty() && !w[1].is_empty() && w[0] != w[1]).count() as u32;
    let path = hops.iter().map(|h| h.agent.as_str()).collect::<Vec<_>>().join(",");
    let complete_pct = if total == 0 { 0.0 } else { complete_n as f64 * 100.0 / total as f64 };
    let services = planned.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i as u32).collect();
    Chain { hops, zones, zones_crossed, path, complete_pct, services }
}

/// A route's zones as `a → b → c`; a hop through the Service as `svc:b` (the zone of the
/// agent it picked; `svc:?` when no answer went the whole way).
pub fn zones_words(chain: &Chain) -> String {
    let word = |(i, z): (usize, &String)| {
        let z = if z.is_empty() { "?" } else { z.as_str() };
        match i.checked_sub(1).is_some_and(|hop| chain.services.contains(&(hop as u32))) {
            true => format!("svc:{z}"),
            false => z.to_string(),
        }
    };
    chain.zones.iter().enumerate().map(word).collect::<Vec<_>>().join(" → ")
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
        let hops = [at("srv-b-0", "b"), at("srv-c-0", "c"), at("srv-a-0", "a")].map(Some);
        let servers = BTreeMap::from([("srv-b-0,srv-c-0,srv-a-0".to_string(), 90), ("srv-b-0".to_string(), 10)]);
        let none = |_: &str| -> Endpoint { unreachable!("no Service hop") };
        let c = route(&at("cli-a-0", "a"), &hops, &servers, none);
        assert_eq!(c.zones, ["a", "b", "c", "a"]);
        assert_eq!(c.zones_crossed, 3);
        assert_eq!(c.path, "srv-b-0,srv-c-0,srv-a-0");
        assert!((c.complete_pct - 90.0).abs() < 1e-9);
        assert!(c.services.is_empty());
        assert_eq!(zones_words(&c), "a → b → c → a");
        let same =
            route(&at("cli-a-0", "a"), &[Some(at("srv-a-0", "a")), Some(at("srv-a-1", "a"))], &BTreeMap::new(), none);
        assert_eq!((same.zones_crossed, same.complete_pct), (0, 0.0));
    }

    #[test]
    fn a_service_hop_is_the_agent_most_complete_answers_went_through() {
        let planned = [Some(at("srv-a-0", "a")), None];
        // The Service picked b's agent most, c's too; a pick of srv-a-0 looped (the 508
        // that agent answered names it twice).
        let servers = BTreeMap::from([
            ("srv-a-0,srv-b-0".to_string(), 50),
            ("srv-a-0,srv-c-0".to_string(), 30),
            ("srv-a-0,srv-a-0".to_string(), 20),
        ]);
        let resolve = |id: &str| at(id, &id[4..5]);
        let c = route(&at("cli-a-0", "a"), &planned, &servers, resolve);
        assert_eq!(c.path, "srv-a-0,srv-b-0");
        assert_eq!(c.zones, ["a", "a", "b"]);
        assert_eq!(c.zones_crossed, 1);
        assert!((c.complete_pct - 80.0).abs() < 1e-9);
        assert_eq!(c.services, [1]);
        assert_eq!(zones_words(&c), "a → a → svc:b");
        // No complete answer: the Service hop's agent is unknown, and so is its zone.
        let c = route(&at("cli-a-0", "a"), &planned, &BTreeMap::from([("srv-a-0".to_string(), 5)]), resolve);
        assert_eq!((c.zones[2].as_str(), c.zones_crossed, c.complete_pct), ("", 0, 0.0));
        assert_eq!(zones_words(&c), "a → a → svc:?");
    }
}
