//! Measured zone locality and what crossing zones costs.
//!
//! Through a Service, nothing says in advance which endpoint answers: every answer carries
//! the serving agent's id, the agent counts answers per id (`servers`), and here those counts
//! become counts per *zone*, the fraction that stayed in the client's zone, and the payload
//! bytes that crossed a zone boundary. Locality is measured, never assumed from the hints.
//!
//! Cost follows the cloud providers' inter-zone pricing: a byte that crosses zones is billed
//! once leaving one zone and once entering the other ("0.01 USD per GB in each direction"),
//! so one crossing GB costs twice the per-GB price. Bytes are application payload bytes
//! (requests and responses, or the stream's bytes); TCP/IP headers and handshakes are not
//! counted, so the figure is a lower bound.

use std::collections::BTreeMap;

use crate::model::cost::GB;
use crate::model::{CostLine, CostModel, CostSection, Locality};

const SECONDS_PER_MONTH: f64 = 30.0 * 24.0 * 3600.0;

/// Bytes one answer moves, both directions: what crosses when that answer is cross-zone.
///
/// `total_bytes` is for streams, where answers are connections rather than messages and
/// the bytes are known only in total: they are split across servers by answer share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Volume {
    PerAnswer(u64),
    Total(u64),
}

/// Counts `servers` (answers per server id) by the zone of each server.
pub fn measure(
    client_zone: &str,
    servers: &BTreeMap<String, u64>,
    zone_of: impl Fn(&str) -> Option<String>,
    volume: Volume,
) -> Locality {
    let mut by_zone: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown = 0;
    for (id, &n) in servers {
        match zone_of(id) {
            Some(zone) => *by_zone.entry(zone).or_default() += n,
            None => unknown += n,
        }
    }
    let known: u64 = by_zone.values().sum();
    let in_zone = by_zone.get(client_zone).copied().unwrap_or(0);
    let cross = known - in_zone;
    let cross_zone_bytes = match volume {
        Volume::PerAnswer(b) => cross.saturating_mul(b),
        Volume::Total(total) if known > 0 => {
            // u128: total × cross can exceed u64 for long fast streams.
            (u128::from(total) * u128::from(cross) / u128::from(known)) as u64
        }
        Volume::Total(_) => 0,
    };
    Locality {
        in_zone_fraction: if known == 0 { 0.0 } else { in_zone as f64 / known as f64 },
        answers_by_zone: by_zone,
        cross_zone_bytes,
        unknown_server_answers: unknown,
    }
}

/// What one measurement contributes to the cost section.
pub struct CostInput<'a> {
    pub measurement: usize,
    pub name: &'a str,
    pub variant: &'a str,
    pub client_zone: &'a str,
    pub locality: &'a Locality,
}

pub fn cost_section<'a>(model: &CostModel, inputs: impl IntoIterator<Item = CostInput<'a>>) -> CostSection {
    let mut lines = Vec::new();
    let mut total_bytes = 0u64;
    for input in inputs {
        let loc = input.locality;
        let answers: u64 = loc.answers_by_zone.values().sum();
        let per_request = if answers == 0 { 0.0 } else { loc.cross_zone_bytes as f64 / answers as f64 };
        total_bytes = total_bytes.saturating_add(loc.cross_zone_bytes);
        lines.push(CostLine {
            measurement: input.measurement,
            name: input.name.to_string(),
            variant: input.variant.to_string(),
            client_zone: input.client_zone.to_string(),
            cross_zone_gb: loc.cross_zone_bytes as f64 / GB,
            measured_usd: model.cost_of(loc.cross_zone_bytes),
            cross_zone_bytes_per_request: per_request,
            monthly_usd_at_rate: per_request * model.requests_per_sec * SECONDS_PER_MONTH / GB
                * model.per_gb_cross_zone
                * 2.0,
        });
    }
    CostSection {
        per_gb_cross_zone: model.per_gb_cross_zone,
        requests_per_sec: model.requests_per_sec,
        cross_zone_gb: total_bytes as f64 / GB,
        measured_usd: model.cost_of(total_bytes),
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(id: &str) -> Option<String> {
        // srv-<zone>-<n>, as the plan names agents.
        id.strip_prefix("srv-").and_then(|r| r.rsplit_once('-')).map(|(z, _)| z.to_string())
    }

    fn servers(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn answers_are_counted_by_the_serving_zone() {
        let s = servers(&[("srv-a-1", 30), ("srv-a-2", 30), ("srv-b-1", 20), ("srv-c-1", 20)]);
        let loc = measure("a", &s, zones, Volume::PerAnswer(100));
        assert_eq!(loc.answers_by_zone, servers(&[("a", 60), ("b", 20), ("c", 20)]));
        assert!((loc.in_zone_fraction - 0.6).abs() < 1e-12);
        assert_eq!(loc.cross_zone_bytes, 40 * 100);
    }

    #[test]
    fn unknown_servers_are_kept_apart_rather_than_guessed() {
        let s = servers(&[("srv-a-1", 5), ("stranger", 5)]);
        let loc = measure("a", &s, zones, Volume::PerAnswer(10));
        assert_eq!(loc.unknown_server_answers, 5);
        assert_eq!(loc.in_zone_fraction, 1.0);
        assert_eq!(loc.cross_zone_bytes, 0);
    }

    #[test]
    fn no_answers_mean_zero_fraction_and_no_bytes() {
        let loc = measure("a", &BTreeMap::new(), zones, Volume::Total(1000));
        assert_eq!(loc.in_zone_fraction, 0.0);
        assert_eq!(loc.cross_zone_bytes, 0);
    }

    #[test]
    fn stream_bytes_are_split_by_answer_share() {
        let s = servers(&[("srv-a-1", 1), ("srv-b-1", 3)]);
        let loc = measure("a", &s, zones, Volume::Total(u64::MAX));
        assert_eq!(loc.cross_zone_bytes, (u128::from(u64::MAX) * 3 / 4) as u64);
    }

    #[test]
    fn a_crossing_gigabyte_is_billed_in_both_directions() {
        let model = CostModel::default();
        assert!((model.cost_of(1_000_000_000) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn monthly_cost_scales_bytes_per_request_to_the_stated_rate() {
        let s = servers(&[("srv-a-1", 50), ("srv-b-1", 50)]);
        let loc = measure("a", &s, zones, Volume::PerAnswer(1000));
        let model = CostModel { per_gb_cross_zone: 0.01, requests_per_sec: 1000.0 };
        let section = cost_section(
            &model,
            [CostInput { measurement: 0, name: "rr", variant: "none", client_zone: "a", locality: &loc }],
        );
        let line = &section.lines[0];
        assert_eq!(line.cross_zone_bytes_per_request, 500.0);
        // 500 B × 1000/s × 2,592,000 s = 1296 GB; × 0.01 × 2 = 25.92 USD.
        assert!((line.monthly_usd_at_rate - 25.92).abs() < 1e-9, "{}", line.monthly_usd_at_rate);
        assert!((section.cross_zone_gb - 50_000.0 / 1e9).abs() < 1e-15);
    }

    #[test]
    fn a_negative_price_is_refused_by_name() {
        let model = CostModel { per_gb_cross_zone: -1.0, ..CostModel::default() };
        assert_eq!(model.validate().unwrap_err().0, "per_gb_cross_zone");
    }
}
