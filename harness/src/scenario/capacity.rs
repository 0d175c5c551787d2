//! Capacity search: `qps = "max"` with an SLO (`slo_p99`, optional `slo_error_pct`) asks
//! for the highest open-loop rate a path sustains instead of one measurement at one rate.
//! This module owns the scenario side (the `qps` value, the SLO keys and their checks);
//! `analysis::capacity` owns the search and `run` drives it.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zonebench_agent::spec::TestKind;

use super::{HumanDuration, TestEntry};
pub use crate::model::capacity::SearchSpec;

/// Default lowest rate a search tries (requests/s).
pub const DEFAULT_SEARCH_MIN_QPS: f64 = 100.0;
/// Default highest rate a search tries.
pub const DEFAULT_SEARCH_MAX_QPS: f64 = 200_000.0;
/// The search stops once the highest rate met and the lowest missed are this close
/// (percent of the rate met).
pub const DEFAULT_SEARCH_PRECISION_PCT: f64 = 5.0;

/// `qps = 1000` (an open-loop rate) or `qps = "max"` (search for the highest rate that
/// meets the SLO).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Qps {
    Rate(f64),
    Max,
}

impl Serialize for Qps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Qps::Rate(q) => s.serialize_f64(*q),
            Qps::Max => s.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Qps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Qps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate in requests per second, or \"max\" to search for the highest rate meeting slo_p99")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Qps, E> {
                match v {
                    "max" => Ok(Qps::Max),
                    other => other.parse::<f64>().map(Qps::Rate).map_err(|_| {
                        E::custom(format!("{other:?} is neither a rate in requests per second nor \"max\""))
                    }),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Qps, E> {
                Ok(Qps::Rate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Qps, E> {
                Ok(Qps::Rate(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Qps, E> {
                Ok(Qps::Rate(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl TestEntry {
    /// The entry's fixed open-loop rate, if it has one (`qps = "max"` has none).
    pub fn rate_qps(&self) -> Option<f64> {
        match self.qps {
            Some(Qps::Rate(q)) => Some(q),
            _ => None,
        }
    }

    /// The search a `qps = "max"` entry asks for; `None` for any other entry.
    pub fn search(&self) -> Option<SearchSpec> {
        (self.qps == Some(Qps::Max)).then(|| SearchSpec {
            slo_p99_ns: self.slo_p99.map_or(0, |d| d.0.as_nanos() as u64),
            slo_error_pct: self.slo_error_pct,
            min_qps: self.search_min_qps.unwrap_or(DEFAULT_SEARCH_MIN_QPS),
            max_qps: self.search_max_qps.unwrap_or(DEFAULT_SEARCH_MAX_QPS),
            precision_pct: DEFAULT_SEARCH_PRECISION_PCT,
        })
    }
}

/// The checks of one entry's search keys; `(field, message)`, the field relative to it.
pub fn validate(t: &TestEntry) -> Result<(), (String, String)> {
    let bad = |f: &str, m: String| Err((f.to_string(), m));
    let searching = t.qps == Some(Qps::Max);
    if !searching {
        for (field, set) in [
            ("slo_p99", t.slo_p99.is_some()),
            ("slo_error_pct", t.slo_error_pct.is_some()),
            ("search_min_qps", t.search_min_qps.is_some()),
            ("search_max_qps", t.search_max_qps.is_some()),
        ] {
            if set {
                return bad(field, "belongs to a capacity search: set qps = \"max\"".into());
            }
        }
        return Ok(());
    }
    if !matches!(t.kind, TestKind::Http | TestKind::TcpRr | TestKind::UdpRr) {
        return bad(
            "qps",
            format!("\"max\" searches open-loop rates, which http, tcp-rr and udp-rr have ({} has none)", t.kind),
        );
    }
    let Some(slo) = t.slo_p99 else {
        return bad("slo_p99", "qps = \"max\" needs the SLO it searches against, e.g. slo_p99 = \"10ms\"".into());
    };
    if slo.0.is_zero() {
        return bad("slo_p99", "must be above 0".into());
    }
    if let Some(e) = t.slo_error_pct {
        if !(e.is_finite() && (0.0..=100.0).contains(&e)) {
            return bad("slo_error_pct", "must be a percentage, 0 to 100".into());
        }
    }
    let min = t.search_min_qps.unwrap_or(DEFAULT_SEARCH_MIN_QPS);
    let max = t.search_max_qps.unwrap_or(DEFAULT_SEARCH_MAX_QPS);
    for (field, v) in [("search_min_qps", min), ("search_max_qps", max)] {
        if !(v.is_finite() && v > 0.0) {
            return bad(field, "must be a positive number of requests per second".into());
        }
    }
    if min >= max {
        return bad("search_max_qps", format!("must be above search_min_qps ({min})"));
    }
    if t.is_concurrent() {
        return bad("qps", "\"max\" searches from one client; concurrent searches are not supported yet".into());
    }
    Ok(())
}

/// How long the SLO is, in words, for messages.
pub fn slo_words(slo: &HumanDuration) -> String {
    humantime::format_duration(slo.0).to_string()
}
