//! Service chains: a `[[tests]]` entry with `hops` sends each request through a chain of
//! server agents, as a request through a line of services that each call the next. This
//! module owns what `hops` and `from` mean, so plan only asks "which agents, in which order".
//!
//! - `hops = ["b", "c", "a"]`: each entry a zone (one of its server agents), an agent id
//!   (`"srv-b-1"`) or `"service"`, the run's Service in front of every server agent. A zone's
//!   entries take its server agents in order (`srv-b-0`, then `srv-b-1`, …), skipping agents
//!   the chain names itself, so `["a", "a", "a"]` is three distinct agents of zone a; the run
//!   places as many server agents per zone as a chain needs.
//! - A `"service"` hop goes to the Service's virtual IP, and the dataplane picks the agent,
//!   as a service calling another through its ClusterIP: which agent (and zone) it was is
//!   read from the answers, never assumed. A pick of an agent the request already passed is
//!   a loop the agents refuse with a 508, counted as failed requests.
//! - `from = "a"`: the client's zone (default: the first zone).
//! - The first hop is the client's target; every other hop is reached through the one
//!   before it (the agents' relay mode), and the last one answers.
//!
//! A chain that names one agent twice would bring a request back to an agent it has
//! passed: a loop, refused here naming both hops (the agents refuse one at run time too,
//! with a 508).

use zonebench_agent::spec::{TestKind, MAX_RELAY_HOPS};

use super::{Scenario, TestEntry, Via};

/// Most hops a chain may have: the target and the relays after it.
pub const MAX_HOPS: usize = MAX_RELAY_HOPS + 1;

/// The hop entry that names the run's Service.
pub const SERVICE_HOP: &str = "service";

/// A hop as written: a zone, one server agent, or the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hop<'a> {
    Zone(&'a str),
    Agent { id: &'a str, zone: &'a str, index: u32 },
    Service,
}

fn hop(entry: &str) -> Hop<'_> {
    if entry == SERVICE_HOP {
        return Hop::Service;
    }
    if let Some(rest) = entry.strip_prefix("srv-") {
        if let Some((zone, n)) = rest.rsplit_once('-') {
            if let (false, Ok(index)) = (zone.is_empty(), n.parse::<u32>()) {
                return Hop::Agent { id: entry, zone, index };
            }
        }
    }
    Hop::Zone(entry)
}

/// Checks a test's `hops` and `from` (against the lab's zones when they are known).
pub fn validate(t: &TestEntry, lab_zones: Option<&[String]>) -> Result<(), (String, String)> {
    let Some(hops) = &t.hops else {
        return match t.from {
            Some(_) => Err(("from".into(), "names a chain's client zone; it needs `hops`".into())),
            None => Ok(()),
        };
    };
    let bad = |f: &str, m: String| Err((f.to_string(), m));
    if t.kind != TestKind::Http {
        return bad("hops", format!("service chains are http tests (each hop relays HTTP), not {}", t.kind));
    }
    if hops.is_empty() || hops.len() > MAX_HOPS {
        return bad("hops", format!("a chain has 1 to {MAX_HOPS} hops"));
    }
    if t.via == Some(Via::Service) {
        return bad(
            "via",
            "a chain's hops are zones, agent ids or \"service\"; via = \"service\" does not apply (make a hop \"service\")"
                .into(),
        );
    }
    if t.is_concurrent() {
        return bad("clients", "a chain runs from one client; concurrent chains are not supported yet".into());
    }
    if t.pairs.is_some() {
        return bad("pairs", "a chain's client zone is `from`, its servers are `hops`; pairs does not apply".into());
    }
    if let Some(zones) = lab_zones {
        let known = |z: &str| zones.iter().any(|k| k == z);
        for (i, h) in hops.iter().enumerate() {
            let zone = match hop(h) {
                Hop::Zone(z) => z,
                Hop::Agent { zone, .. } => zone,
                Hop::Service => continue,
            };
            if !known(zone) {
                return bad(
                    "hops",
                    format!("hop {} ({h:?}): no zone {zone:?}; the lab's zones are {}", i + 1, zones.join(", ")),
                );
            }
        }
        if let Some(from) = &t.from {
            if !known(from) {
                return bad("from", format!("no zone {from:?}; the lab's zones are {}", zones.join(", ")));
            }
        }
    }
    looped(hops).map_or(Ok(()), |m| bad("hops", m))
}

/// The loop in a chain that names one agent twice, in words.
fn looped(hops: &[String]) -> Option<String> {
    let ids: Vec<Option<&str>> = hops
        .iter()
        .map(|h| match hop(h) {
            Hop::Agent { id, .. } => Some(id),
            Hop::Zone(_) | Hop::Service => None,
        })
        .collect();
    for (j, id) in ids.iter().enumerate() {
        if let Some(i) = ids[..j].iter().position(|x| x.is_some() && x == id) {
            return Some(format!(
                "the chain loops: hop {} and hop {} are both {}, so a request would come back to an agent it \
                 has passed; name another agent or a zone",
                i + 1,
                j + 1,
                id.unwrap_or_default()
            ));
        }
    }
    None
}

/// A chain's hops as server agent ids, in order, [`SERVICE_HOP`] for a Service hop; `Err`
/// names a zone the cluster lacks.
pub fn agents(t: &TestEntry, zones: &[String]) -> Result<Option<Vec<String>>, String> {
    let Some(hops) = &t.hops else { return Ok(None) };
    if let Some(m) = looped(hops) {
        return Err(m);
    }
    let named: Vec<(&str, u32)> = hops
        .iter()
        .filter_map(|h| match hop(h) {
            Hop::Agent { zone, index, .. } => Some((zone, index)),
            Hop::Zone(_) | Hop::Service => None,
        })
        .collect();
    let mut next: std::collections::BTreeMap<&str, u32> = Default::default();
    let mut out = Vec::new();
    for (i, h) in hops.iter().enumerate() {
        let (zone, index) = match hop(h) {
            Hop::Service => {
                out.push(SERVICE_HOP.to_string());
                continue;
            }
            Hop::Agent { zone, index, .. } => (zone, index),
            Hop::Zone(zone) => {
                let n = next.entry(zone).or_default();
                while named.contains(&(zone, *n)) {
                    *n += 1;
                }
                *n += 1;
                (zone, *n - 1)
            }
        };
        if !zones.iter().any(|z| z == zone) {
            return Err(format!(
                "hop {} ({h:?}): the cluster has no zone {zone:?} (it has {})",
                i + 1,
                zones.join(", ")
            ));
        }
        out.push(format!("srv-{zone}-{index}"));
    }
    Ok(Some(out))
}

/// The client zone of a chain: `from`, else the first zone.
pub fn client_zone<'a>(t: &'a TestEntry, zones: &'a [String]) -> Option<&'a str> {
    t.from.as_deref().or(zones.first().map(String::as_str))
}

/// Server agents each zone needs for the scenario's chains (0 without chains): one more
/// than the highest index any chain uses in it.
pub fn servers_per_zone(s: &Scenario, zones: &[String]) -> u32 {
    s.tests
        .iter()
        .filter_map(|t| agents(t, zones).ok().flatten())
        .flatten()
        .filter_map(|id| id.rsplit_once('-').and_then(|(_, n)| n.parse::<u32>().ok()))
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

/// Whether the scenario has a chain, so its server agents must relay.
pub fn any(s: &Scenario) -> bool {
    s.tests.iter().any(|t| t.hops.is_some())
}

/// Whether a test's chain goes through the Service (so the run needs it, with its HTTP port).
pub fn uses_service(t: &TestEntry) -> bool {
    t.hops.iter().flatten().any(|h| hop(h) == Hop::Service)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn entry(hops: &[&str]) -> TestEntry {
        let text = format!("[[tests]]\nkind = \"http\"\nhops = {hops:?}\n");
        let s: Scenario = toml::from_str(&text).unwrap();
        s.tests[0].clone()
    }

    fn zones() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn zone_hops_take_distinct_agents_in_order_around_named_ones() {
        let got = agents(&entry(&["a", "a", "a"]), &zones()).unwrap().unwrap();
        assert_eq!(got, ["srv-a-0", "srv-a-1", "srv-a-2"]);
        let got = agents(&entry(&["b", "c", "a"]), &zones()).unwrap().unwrap();
        assert_eq!(got, ["srv-b-0", "srv-c-0", "srv-a-0"]);
        let got = agents(&entry(&["a", "srv-a-0", "b"]), &zones()).unwrap().unwrap();
        assert_eq!(got, ["srv-a-1", "srv-a-0", "srv-b-0"]);
    }

    #[test]
    fn a_chain_naming_one_agent_twice_loops_and_unknown_zones_are_named() {
        let e = entry(&["srv-a-0", "b", "srv-a-0"]);
        let (field, m) = validate(&e, Some(&zones())).unwrap_err();
        assert_eq!(field, "hops");
        assert!(m.contains("loops: hop 1 and hop 3 are both srv-a-0"), "{m}");
        assert!(agents(&e, &zones()).unwrap_err().contains("loops"));
        let (field, m) = validate(&entry(&["a", "x"]), Some(&zones())).unwrap_err();
        assert_eq!(field, "hops");
        assert!(m.contains("hop 2 (\"x\"): no zone \"x\"; the lab's zones are a, b, c"), "{m}");
        assert!(agents(&entry(&["a", "x"]), &zones()).unwrap_err().contains("no zone \"x\""));
    }

    #[test]
    fn a_service_hop_stays_a_service_takes_no_agent_and_never_loops() {
        let e = entry(&["a", "service", "service", "a"]);
        assert!(validate(&e, Some(&zones())).is_ok());
        assert_eq!(agents(&e, &zones()).unwrap().unwrap(), ["srv-a-0", "service", "service", "srv-a-1"]);
        assert!(uses_service(&e) && !uses_service(&entry(&["a", "b"])));
    }

    #[test]
    fn a_chain_needs_as_many_servers_per_zone_as_it_uses() {
        let text = "[[tests]]\nkind = \"http\"\nhops = [\"a\", \"a\", \"b\"]\n[[tests]]\nkind = \"tcp-rr\"\n";
        let s: Scenario = toml::from_str(text).unwrap();
        assert_eq!(servers_per_zone(&s, &zones()), 2);
        assert!(any(&s));
    }
}
