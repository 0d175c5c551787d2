//! Concurrent tests: a `[[tests]]` entry with `clients` or `zone_weights` runs from many
//! client agents at once instead of one. This module owns what those two keys mean, so plan
//! only asks "how many clients in zone z, at what rate each".
//!
//! - `clients = "all"`: every client agent of every zone (`agents.clients_per_zone` each);
//!   `clients = N`: N clients in each zone (the run places that many).
//! - `zone_weights = { a = 3, b = 1 }`: with `qps`, the group's rate split in that ratio
//!   over the zones (each zone's clients share its part evenly; `clients` says how many per
//!   zone, 1 by default); without `qps`, the client count of each zone. A zone left out of
//!   the table gets no clients.
//! - `qps` on a concurrent test is the whole group's rate, split over its clients.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Scenario, TestEntry};

/// Most clients per zone one test may ask for (as `agents.clients_per_zone`).
pub const MAX_CLIENTS_PER_ZONE: u32 = 16;

/// `clients = "all"` or a count per zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    All,
    PerZone(u32),
}

impl Serialize for Clients {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Clients::All => s.serialize_str("all"),
            Clients::PerZone(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Clients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Clients;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\" or a number of clients per zone")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Clients, E> {
                match v {
                    "all" => Ok(Clients::All),
                    other => match other.parse::<u32>() {
                        Ok(n) => Ok(Clients::PerZone(n)),
                        Err(_) => {
                            Err(E::custom(format!("{other:?} is neither \"all\" nor a number of clients per zone")))
                        }
                    },
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Clients, E> {
                u32::try_from(v)
                    .map(Clients::PerZone)
                    .map_err(|_| E::custom(format!("{v} is not a number of clients per zone")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Clients, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
        }
        d.deserialize_any(V)
    }
}

/// One zone's part of a concurrent test.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneShare {
    pub zone: String,
    pub clients: u32,
    /// Each of the zone's clients' rate, when the test is open loop.
    pub qps_per_client: Option<f64>,
}

impl TestEntry {
    /// Whether the entry runs from many clients at once.
    pub fn is_concurrent(&self) -> bool {
        self.clients.is_some() || self.zone_weights.is_some()
    }
}

/// How many client agents the run places in each zone: `agents.clients_per_zone`, raised to
/// what any concurrent test asks for.
pub fn placed_clients(s: &Scenario) -> u32 {
    let asked = s.tests.iter().map(|t| match (t.clients, &t.zone_weights, t.rate_qps()) {
        (Some(Clients::PerZone(n)), _, _) => n,
        (None, Some(w), None) => w.values().copied().max().unwrap_or(0),
        _ => 0,
    });
    asked.fold(s.agents.clients_per_zone, u32::max)
}

/// The zones' parts of concurrent test `t` over `zones` (the cluster's, in order); zones
/// with no clients are left out. `None` for a test that is not concurrent. A weight for a
/// zone not in `zones` is an error naming it.
pub fn zone_shares(s: &Scenario, t: &TestEntry, zones: &[String]) -> Result<Option<Vec<ZoneShare>>, String> {
    if !t.is_concurrent() {
        return Ok(None);
    }
    if let Some(w) = &t.zone_weights {
        if let Some(z) = w.keys().find(|z| !zones.contains(z)) {
            return Err(format!(
                "zone_weights names zone {z:?}, which the cluster does not have (zones: {})",
                zones.join(", ")
            ));
        }
    }
    let per_zone = match t.clients {
        Some(Clients::All) => placed_clients(s),
        Some(Clients::PerZone(n)) => n,
        None => 1,
    };
    let weight = |z: &str| t.zone_weights.as_ref().map_or(1, |w| w.get(z).copied().unwrap_or(0));
    let counts: Vec<(String, u32, u32)> = zones
        .iter()
        .map(|z| {
            let w = weight(z);
            // Without a rate to split, weights are the client counts themselves.
            let n = if t.zone_weights.is_some() && t.rate_qps().is_none() {
                w
            } else if w > 0 {
                per_zone
            } else {
                0
            };
            (z.clone(), w, n)
        })
        .filter(|(_, _, n)| *n > 0)
        .collect();
    let total_weight: u32 = counts.iter().map(|(_, w, _)| w).sum();
    let total_clients: u32 = counts.iter().map(|(_, _, n)| n).sum();
    Ok(Some(
        counts
            .into_iter()
            .map(|(zone, w, n)| {
                let qps_per_client = t.rate_qps().map(|q| match &t.zone_weights {
                    Some(_) => q * f64::from(w) / f64::from(total_weight) / f64::from(n),
                    None => q / f64::from(total_clients),
                });
                ZoneShare { zone, clients: n, qps_per_client }
            })
            .collect(),
    ))
}

/// The checks of one entry's `clients` and `zone_weights`; `lab_zones` when the zones are
/// known from the file. `(field, message)` on failure, the field relative to the entry.
pub fn validate(t: &TestEntry, lab_zones: Option<&[String]>) -> Result<(), (String, String)> {
    let bad = |f: &str, m: String| Err((f.to_string(), m));
    if let Some(Clients::PerZone(n)) = t.clients {
        if n == 0 || n > MAX_CLIENTS_PER_ZONE {
            return bad("clients", format!("must be \"all\" or 1 to {MAX_CLIENTS_PER_ZONE} clients per zone"));
        }
    }
    let Some(weights) = &t.zone_weights else { return Ok(()) };
    if weights.is_empty() || weights.values().all(|&w| w == 0) {
        return bad("zone_weights", "give at least one zone a weight above 0".into());
    }
    if t.rate_qps().is_none() {
        if t.clients.is_some() {
            return bad(
                "zone_weights",
                "without qps the weights are the client counts of each zone: drop `clients`, or set `qps` to split a rate".into(),
            );
        }
        if let Some((z, w)) = weights.iter().find(|(_, &w)| w > MAX_CLIENTS_PER_ZONE) {
            return bad(
                "zone_weights",
                format!("zone {z:?} asks for {w} clients; without qps each weight is a client count, 0 to {MAX_CLIENTS_PER_ZONE}"),
            );
        }
    }
    if let Some(zones) = lab_zones {
        if let Some(z) = weights.keys().find(|z| !zones.contains(z)) {
            return bad("zone_weights", format!("zone {z:?} is not one of the lab's zones ({})", zones.join(", ")));
        }
    }
    Ok(())
}
