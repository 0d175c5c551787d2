//! The run's store: made on the first platform's turn, with the scenario as run beside it,
//! and on a later turn (a run over several platforms) given that platform's fingerprint
//! facts under its label.

use std::collections::BTreeMap;

use super::RunOptions;
use crate::model::{now_rfc3339, ClusterTopology, Fingerprint, RunResults, RunStatus, SCHEMA_VERSION};
use crate::results::store::RunStore;
use crate::scenario::Scenario;

/// A labelled platform's facts for a multi-platform run's fingerprint: its `extra`, kernel,
/// zones and node count under `<label>.`.
fn labelled_extra(from: &Fingerprint, label: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> =
        from.extra.iter().map(|(k, v)| (format!("{label}.{k}"), v.clone())).collect();
    out.insert(format!("{label}.kernel"), from.kernel.clone());
    out.insert(format!("{label}.zones"), from.zones.join(","));
    out.insert(format!("{label}.nodes"), from.nodes.to_string());
    out
}

/// Adds a further labelled platform to a run's fingerprint: its facts, zones and nodes.
fn merge_fingerprint(into: &mut Fingerprint, from: &Fingerprint, label: &str) {
    into.extra.extend(labelled_extra(from, label));
    for z in &from.zones {
        if !into.zones.contains(z) {
            into.zones.push(z.clone());
        }
    }
    into.nodes += from.nodes;
}

/// Creates the run directory with empty results and the scenario as run.
/// The run's store: made on the first platform's turn, and on a later one (a run over
/// several platforms) given that platform's fingerprint facts under its label.
pub(super) fn open_store<'a>(
    store_slot: &'a mut Option<RunStore>,
    scenario: &Scenario,
    cluster: &ClusterTopology,
    opts: &RunOptions,
    label: Option<&str>,
) -> anyhow::Result<&'a mut RunStore> {
    match store_slot {
        Some(store) => {
            merge_fingerprint(&mut store.results.fingerprint, &cluster.fingerprint, label.unwrap_or("?"));
            store.flush()?;
            Ok(store)
        }
        None => {
            let store = store_slot.insert(new_store(scenario, cluster, opts)?);
            if let Some(label) = label {
                store.results.fingerprint.extra = labelled_extra(&cluster.fingerprint, label);
                store.flush()?;
            }
            Ok(store)
        }
    }
}

fn new_store(scenario: &Scenario, cluster: &ClusterTopology, opts: &RunOptions) -> anyhow::Result<RunStore> {
    let results = RunResults {
        schema_version: SCHEMA_VERSION,
        scenario: scenario.name.clone(),
        started_at: now_rfc3339(),
        finished_at: None,
        status: RunStatus::Running,
        fingerprint: cluster.fingerprint.clone(),
        measurements: Vec::new(),
        failures: Vec::new(),
        groups: Vec::new(),
        capacities: Vec::new(),
        error: None,
        noise: None,
        cost: None,
    };
    let store = RunStore::create(&opts.out_dir, results)?;
    let scenario_toml = toml::to_string_pretty(scenario).unwrap_or_default();
    store.write_file("scenario.toml", scenario_toml.as_bytes())?;
    Ok(store)
}
