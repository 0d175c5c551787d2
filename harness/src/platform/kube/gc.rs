//! `zonebench gc`: removes what killed runs left. Every run lives in one namespace labelled
//! `app.kubernetes.io/managed-by=zonebench`, and zonebench creates nothing outside it, so
//! deleting those namespaces (older than a threshold, so a run in progress elsewhere is
//! spared) removes every leftover.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use serde::Serialize;

use super::client::Cluster;
use super::manifests::{MANAGED_BY, MANAGER, RUN_LABEL, SCENARIO_ANNOTATION};
use super::KubeError;

/// A run namespace found by gc.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leftover {
    pub namespace: String,
    pub run: String,
    pub scenario: String,
    /// Age at the time of the listing.
    pub age_secs: u64,
    /// Already being deleted (nothing to do).
    pub terminating: bool,
    /// Deleted by this gc.
    pub deleted: bool,
}

/// The run namespaces of a listing older than `older_than`, as of `now` (seconds since the epoch).
pub fn select(namespaces: &[Namespace], older_than: Duration, now: i64) -> Vec<Leftover> {
    let mut out: Vec<Leftover> = namespaces
        .iter()
        .filter_map(|ns| {
            let labels = ns.metadata.labels.as_ref()?;
            // The selector already asked for this; a server ignoring it must not make us delete others'.
            if labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGER) {
                return None;
            }
            let created = ns.metadata.creation_timestamp.as_ref()?.0.as_second();
            let age = u64::try_from(now.saturating_sub(created)).unwrap_or(0);
            if age < older_than.as_secs() {
                return None;
            }
            Some(Leftover {
                namespace: ns.metadata.name.clone()?,
                run: labels.get(RUN_LABEL).cloned().unwrap_or_default(),
                scenario: ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SCENARIO_ANNOTATION))
                    .cloned()
                    .unwrap_or_default(),
                age_secs: age,
                terminating: ns.metadata.deletion_timestamp.is_some(),
                deleted: false,
            })
        })
        .collect();
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    out
}

/// Lists run namespaces older than `older_than` and, unless `dry_run`, deletes them.
pub async fn gc(cluster: &Cluster, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>, KubeError> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER}")))
        .await
        .map_err(|e| cluster.api_error("listing zonebench namespaces", &e))?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut found = select(&list.items, older_than, now);
    if dry_run {
        return Ok(found);
    }
    for l in found.iter_mut().filter(|l| !l.terminating) {
        match api.delete(&l.namespace, &DeleteParams::background()).await {
            Ok(_) => l.deleted = true,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(cluster.api_error(format!("deleting namespace {}", l.namespace), &e)),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, created: &str, managed: bool) -> Namespace {
        let mut labels = json!({"zonebench.dev/run": name.trim_start_matches("zonebench-")});
        if managed {
            labels["app.kubernetes.io/managed-by"] = json!("zonebench");
        }
        serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": created, "labels": labels}}))
            .unwrap()
    }

    #[test]
    fn only_managed_namespaces_older_than_the_threshold_are_selected() {
        // 2025-01-01T12:00:00Z
        let now = 1_735_732_800;
        let list = [
            ns("zonebench-old", "2025-01-01T10:00:00Z", true),
            ns("zonebench-new", "2025-01-01T11:30:00Z", true),
            ns("someone-else", "2024-01-01T00:00:00Z", false),
        ];
        let picked = select(&list, Duration::from_secs(3600), now);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].namespace, "zonebench-old");
        assert_eq!(picked[0].run, "old");
        assert_eq!(picked[0].age_secs, 7200);
        assert_eq!(select(&list, Duration::ZERO, now).len(), 2);
    }
}
