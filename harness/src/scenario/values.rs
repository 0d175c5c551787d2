//! Scenario values in the units users type. Each parses during deserialization, so a bad
//! value is reported by the TOML parser with its line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zonebench_agent::units;

/// `"10s"`, `"500ms"`, `"1m"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Bits per second: `"1G"`, `"500mbit"`, or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// Bytes: `"64K"`, `"1400"`, or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u32);

impl HumanDuration {
    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// Accepts a string (parsed by `parse`) or a non-negative number (converted by `from_num`).
struct UnitVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
    from_num: fn(f64) -> Result<T, String>,
}

impl<'de, T> Visitor<'de> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.from_num)(v as f64).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_num)(v as f64).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_num)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            expecting: "a duration like \"10s\" or \"500ms\"",
            parse: |s| units::parse_duration(s).map(HumanDuration),
            from_num: |n| {
                if n.is_finite() && n >= 0.0 {
                    Ok(HumanDuration(Duration::from_secs_f64(n)))
                } else {
                    Err(format!("invalid duration {n}: must be a non-negative number of seconds"))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            expecting: "a rate in bits/s like \"1G\" or \"500mbit\"",
            parse: |s| units::parse_rate_bps(s).map(Rate),
            from_num: |n| {
                if n.is_finite() && n >= 0.0 {
                    Ok(Rate(n as u64))
                } else {
                    Err(format!("invalid rate {n}: must be non-negative bits/s"))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            expecting: "a size in bytes like 1400 or \"64K\"",
            parse: |s| units::parse_size(s).map(Size),
            from_num: |n| {
                if n.is_finite() && n >= 0.0 && n <= u32::MAX as f64 && n.fract() == 0.0 {
                    Ok(Size(n as u32))
                } else {
                    Err(format!("invalid size {n}: must be a whole number of bytes"))
                }
            },
        })
    }
}
