//! The scenario's `[sweep]` table: a service-scaling sweep's dataplanes and Service counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, Scenario};
use crate::model::{DataplaneKind, Via};

/// Most Services one point may hold (the lab's VIP range holds 32,766).
pub const MAX_SERVICES: u32 = 30_000;

/// The scenario's `[sweep]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Dataplanes to measure, in this order.
    #[serde(default = "all_dataplanes")]
    pub dataplanes: Vec<DataplaneKind>,
    /// Service counts, one point each, in this order.
    #[serde(default = "default_counts")]
    pub services: Vec<u32>,
    /// How long the probe waits for the newest Service to answer.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: HumanDuration,
    /// On the Kubernetes lab (`lab.kubernetes = true`): first sweep the same dataplanes as the
    /// plain lab emulates them, on a plain lab of the same shape, so one run and one report set
    /// the emulation beside the real kube-proxy (variants `emulated/…` and `kube-proxy/…`).
    #[serde(default)]
    pub emulated: bool,
}

fn all_dataplanes() -> Vec<DataplaneKind> {
    // eBPF first: the others leave conntrack enabled in the node (legacy x_tables tables
    // cannot be unregistered), which eBPF's socket-level rewrite would otherwise pay for.
    vec![DataplaneKind::Ebpf, DataplaneKind::Nftables, DataplaneKind::Iptables, DataplaneKind::IptablesLegacy]
}
fn default_counts() -> Vec<u32> {
    vec![10, 1000, 5000, 10000]
}
fn default_probe_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl SweepConfig {
    /// Checks the table and what it needs of the tests; `(field, message)` on failure.
    pub fn validate(&self, s: &Scenario) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("sweep.{f}"), m));
        if self.dataplanes.is_empty() {
            return bad("dataplanes", "name at least one dataplane".into());
        }
        let mut seen = self.dataplanes.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.dataplanes.len() {
            return bad("dataplanes", "each dataplane may appear once".into());
        }
        if self.services.is_empty() {
            return bad("services", "name at least one Service count".into());
        }
        if let Some(n) = self.services.iter().find(|&&n| n == 0 || n > MAX_SERVICES) {
            return bad("services", format!("{n} is out of range: each count must be 1 to {MAX_SERVICES}"));
        }
        if self.emulated && !s.lab.kubernetes {
            return bad(
                "emulated",
                "sets the lab's emulated dataplanes beside the real kube-proxy: it needs lab.kubernetes = true".into(),
            );
        }
        let t = self.probe_timeout.0;
        if t.is_zero() || t > Duration::from_secs(600) {
            return bad("probe_timeout", "must be above 0 and at most 10m".into());
        }
        for (i, test) in s.tests.iter().enumerate() {
            if test.via.unwrap_or(s.defaults.via) != Via::Service {
                return Err((
                    format!("tests[{i}].via"),
                    "a sweep measures through Services: set via = \"service\" (on the test or in [defaults])".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sweep_measures_every_dataplane_at_four_sizes() {
        let c: SweepConfig = toml::from_str("").unwrap();
        assert_eq!(c.services, [10, 1000, 5000, 10000]);
        assert_eq!(c.dataplanes.len(), 4);
        assert_eq!(c.dataplanes[0], DataplaneKind::Ebpf);
    }
}
