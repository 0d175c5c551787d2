//! Parsing the quantities users type: durations (`10s`, `500ms`), rates in bits/s
//! (`1G`, `500M`, `1gbit`, iperf3 style) and sizes in bytes (`1K`, `64KiB`).

use std::time::Duration;

/// `10s`, `1m30s`, `250ms`; a bare number is seconds (iperf3's `-t 10`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 10s, 500ms, 1m)"))
}

/// Bits per second: `1000000`, `100k`, `500M`, `1G`, `1gbit`, `250mbit`, `1Gbps` (decimal
/// multipliers, as iperf3 and tc use for rates).
pub fn parse_rate_bps(s: &str) -> Result<u64, String> {
    let err = || format!("invalid rate {s:?}: expected bits/s like 1000000, 500M, 1G or 1gbit");
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("bps").or_else(|| t.strip_suffix("bit")).or_else(|| t.strip_suffix("b")).unwrap_or(&t);
    let (num, mult) = split_suffix(t, 1000).ok_or_else(err)?;
    let v = num.parse::<f64>().map_err(|_| err())? * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err());
    }
    Ok(v as u64)
}

/// Bytes: `1400`, `64K`/`64KiB` (binary multipliers, as iperf3's `-l`).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let err = || format!("invalid size {s:?}: expected bytes like 1400, 64K or 1M");
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").or_else(|| t.strip_suffix('b')).unwrap_or(&t);
    let (num, mult) = split_suffix(t, 1024).ok_or_else(err)?;
    let v = num.parse::<u64>().map_err(|_| err())?.checked_mul(mult).ok_or_else(err)?;
    u32::try_from(v).map_err(|_| err())
}

fn split_suffix(t: &str, base: u64) -> Option<(&str, u64)> {
    let last = t.chars().last()?;
    let mult = match last {
        'k' => base,
        'm' => base * base,
        'g' => base * base * base,
        't' => base * base * base * base,
        _ => return Some((t, 1)),
    };
    Some((&t[..t.len() - 1], mult))
}

/// `1.23 Gbit/s` for tables.
pub fn format_bps(bps: f64) -> String {
    let (v, unit) = if bps >= 1e9 {
        (bps / 1e9, "Gbit/s")
    } else if bps >= 1e6 {
        (bps / 1e6, "Mbit/s")
    } else if bps >= 1e3 {
        (bps / 1e3, "kbit/s")
    } else {
        (bps, "bit/s")
    };
    format!("{v:.2} {unit}")
}

/// `12.3µs`, `4.56ms` for tables.
pub fn format_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}µs", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_iperf3() {
        assert_eq!(parse_rate_bps("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate_bps("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate_bps("500M").unwrap(), 500_000_000);
        assert_eq!(parse_rate_bps("2.5mbit").unwrap(), 2_500_000);
        assert_eq!(parse_rate_bps("0").unwrap(), 0);
        assert!(parse_rate_bps("fast").is_err());
        assert!(parse_rate_bps("-1M").is_err());
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("1400").unwrap(), 1400);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("8G").is_err());
    }

    #[test]
    fn durations_accept_bare_seconds() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}
