//! The scenario's `[kube]` table: what agent pods look like on a cluster (image, resources,
//! which addresses their control API may aim tests at). Validated with the scenario, so a
//! bad quantity is reported against `kube.cpu` before anything touches a cluster.

use serde::{Deserialize, Serialize};

/// Private ranges (RFC 1918, CGNAT, IPv6 ULA): where pod and Service addresses live on
/// almost every cluster; and the benchmarking range (RFC 2544, never routed on the
/// internet), where the Kubernetes lab puts its pods and Services. An agent started through
/// the control API may only aim tests at these, so a leaked token still cannot turn it into
/// a load generator against the internet.
pub const DEFAULT_ALLOW_CIDRS: [&str; 6] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15", "fd00::/8"];

/// The `[kube]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    /// Agent image (`--image` overrides); default [`default_image`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `IfNotPresent` (default; what kind's `kind load docker-image` needs), `Always`, `Never`.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// CPU request of each agent (Kubernetes quantity).
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// CPU limit; none by default, since CFS throttling would show up as latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<String>,
    /// Memory request and limit of each agent.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// CIDRs agents may target (`--allow-cidr`); default [`DEFAULT_ALLOW_CIDRS`].
    #[serde(default = "default_allow_cidrs")]
    pub allow_cidrs: Vec<String>,
    /// How long agent pods may take to become ready (image pulls included).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: String,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            image: None,
            image_pull_policy: default_pull_policy(),
            cpu: default_cpu(),
            cpu_limit: None,
            memory: default_memory(),
            allow_cidrs: default_allow_cidrs(),
            ready_timeout: default_ready_timeout(),
        }
    }
}

/// The image `zonebench` pushes for its own version.
pub fn default_image() -> String {
    format!("ghcr.io/zonebench/zonebench-agent:{}", env!("CARGO_PKG_VERSION"))
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_cpu() -> String {
    "500m".into()
}
fn default_memory() -> String {
    "256Mi".into()
}
fn default_allow_cidrs() -> Vec<String> {
    DEFAULT_ALLOW_CIDRS.iter().map(|s| s.to_string()).collect()
}
fn default_ready_timeout() -> String {
    "3m".into()
}

impl KubeSettings {
    /// Checks values; errors name the field under `kube.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("kube.{f}"), m));
        if let Some(image) = &self.image {
            if image.is_empty() || image.chars().any(char::is_whitespace) {
                return bad("image", format!("{image:?} is not an image reference"));
            }
        }
        if !matches!(self.image_pull_policy.as_str(), "IfNotPresent" | "Always" | "Never") {
            return bad("image_pull_policy", "must be IfNotPresent, Always or Never".into());
        }
        if let Err(e) = parse_cpu_millis(&self.cpu) {
            return bad("cpu", e);
        }
        if let Some(l) = &self.cpu_limit {
            let limit = parse_cpu_millis(l).or_else(|e| bad("cpu_limit", e).map(|()| 0))?;
            let request = parse_cpu_millis(&self.cpu).unwrap_or(0);
            if limit < request {
                return bad("cpu_limit", format!("{l} is below the request kube.cpu = {}", self.cpu));
            }
        }
        if let Err(e) = parse_memory_bytes(&self.memory) {
            return bad("memory", e);
        }
        if self.allow_cidrs.is_empty() {
            return bad("allow_cidrs", "name at least one CIDR (agents target other pods' addresses)".into());
        }
        for c in &self.allow_cidrs {
            if let Err(e) = c.parse::<zonebench_agent::control::Cidr>() {
                return bad("allow_cidrs", format!("{c:?}: {e}"));
            }
        }
        match zonebench_agent::units::parse_duration(&self.ready_timeout) {
            Ok(d) if d.as_secs() >= 1 && d.as_secs() <= 3600 => {}
            Ok(_) => return bad("ready_timeout", "must be 1s to 1h".into()),
            Err(e) => return bad("ready_timeout", e),
        }
        Ok(())
    }

    /// The ready timeout as a duration (validated before).
    pub fn ready_timeout(&self) -> std::time::Duration {
        zonebench_agent::units::parse_duration(&self.ready_timeout).unwrap_or(std::time::Duration::from_secs(180))
    }
}

/// A CPU quantity in millicores: `2`, `1.5`, `500m`. (Allocatable CPU on nodes uses the same form.)
pub fn parse_cpu_millis(q: &str) -> Result<u64, String> {
    let err = || format!("{q:?} is not a CPU quantity (e.g. 500m, 1, 1.5)");
    let (num, scale) = match q.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (q, 1000.0),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let v: f64 = num.parse().map_err(|_| err())?;
    let millis = (v * scale).round();
    if millis <= 0.0 || millis > 1e9 {
        return Err(format!("{q:?} must be above zero"));
    }
    Ok(millis as u64)
}

/// A memory quantity in bytes: `256Mi`, `1Gi`, `500M`, `1048576`.
pub fn parse_memory_bytes(q: &str) -> Result<u64, String> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let err = || format!("{q:?} is not a memory quantity (e.g. 256Mi, 1Gi)");
    let (num, mult) = SUFFIXES.iter().find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m))).unwrap_or((q, 1));
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        return Err(err());
    }
    let v: u64 = num.parse().map_err(|_| err())?;
    let bytes = v.checked_mul(mult).ok_or_else(err)?;
    if bytes < (16 << 20) {
        return Err(format!("{q:?} is below 16Mi: the agent would not start"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_parse_to_millicores() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
        assert!(parse_cpu_millis("lots").is_err());
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("").is_err());
    }

    #[test]
    fn memory_quantities_parse_to_bytes() {
        assert_eq!(parse_memory_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert!(parse_memory_bytes("1Mi").is_err());
        assert!(parse_memory_bytes("12XB").is_err());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let s = KubeSettings { cpu: "fast".into(), ..Default::default() };
        assert_eq!(s.validate().unwrap_err().0, "kube.cpu");
        let s = KubeSettings { cpu_limit: Some("100m".into()), ..Default::default() };
        assert_eq!(s.validate().unwrap_err().0, "kube.cpu_limit");
        let s = KubeSettings { allow_cidrs: vec!["10.0.0.0/33".into()], ..Default::default() };
        assert_eq!(s.validate().unwrap_err().0, "kube.allow_cidrs");
        let s = KubeSettings { image_pull_policy: "Sometimes".into(), ..Default::default() };
        assert_eq!(s.validate().unwrap_err().0, "kube.image_pull_policy");
        assert!(KubeSettings::default().validate().is_ok());
    }
}
