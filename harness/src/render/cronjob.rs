//! `zonebench render --cronjob SCENARIO`: the manifests that run a scenario nightly inside a
//! cluster, as multi-document YAML for `kubectl apply -f -`: a Namespace, the ServiceAccount
//! the job runs as, the minimal RBAC for the kube platform, a ConfigMap holding the scenario
//! (and optionally a baseline results.json), and the CronJob.
//!
//! The RBAC follows the calls the kube platform makes: it reads nodes, creates and deletes
//! one labelled namespace per run (and lists them for `gc`), and in that namespace creates
//! agent pods (watching them, port-forwarding to their control API), a token Secret,
//! Services and EndpointSlices, and DaemonSets. Because run namespaces do not exist until a
//! run creates them, Kubernetes RBAC can only grant rights in them cluster-wide (a
//! ClusterRole bound by a ClusterRoleBinding); everything else is narrowed: the
//! fingerprint's reads in kube-system (kube-proxy's and Cilium's ConfigMaps, by name, and
//! the DaemonSets there) are a Role in kube-system only.
//!
//! With a baseline the job also compares the run with it, so the Job fails (exit 3) on a
//! regression and cluster monitoring sees a failed Job.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Namespace,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::scenario::{builtin, Scenario};

/// The image the job runs: the coordinator's own image for this version.
pub fn default_image() -> String {
    format!("ghcr.io/zonebench/zonebench:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone)]
pub struct CronJobOptions {
    /// Cron schedule (default nightly at 02:00).
    pub schedule: String,
    /// IANA time zone of the schedule (default: the controller's, usually UTC).
    pub time_zone: Option<String>,
    /// Namespace of the CronJob and its ServiceAccount.
    pub namespace: String,
    pub image: String,
    /// A results.json to compare each run with (put in the ConfigMap).
    pub baseline: Option<std::path::PathBuf>,
    /// A PersistentVolumeClaim to keep run directories in (else an emptyDir: logs only).
    pub results_pvc: Option<String>,
}

impl Default for CronJobOptions {
    fn default() -> Self {
        CronJobOptions {
            schedule: "0 2 * * *".into(),
            time_zone: None,
            namespace: "zonebench".into(),
            image: default_image(),
            baseline: None,
            results_pvc: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("--{field}: {message}")]
    Option { field: &'static str, message: String },
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// ConfigMaps are capped at 1 MiB; leave room for the scenario and metadata.
const MAX_BASELINE_BYTES: u64 = 900 * 1024;

/// A DNS-1123 label from a scenario name (which may hold `_` and capitals).
fn dns_name(s: &str) -> String {
    let n: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    // CronJob names are limited to 52 characters (the controller appends 11 for Jobs).
    n.trim_matches('-').chars().take(52 - "zonebench-".len()).collect::<String>().trim_end_matches('-').to_string()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule { api_groups: Some(v(groups)), resources: Some(v(resources)), verbs: v(verbs), ..Default::default() }
}

/// The manifests, as YAML documents.
pub fn render(scenario_arg: &str, opts: &CronJobOptions) -> Result<String, RenderError> {
    let source = builtin::source(scenario_arg)?;
    let scenario = Scenario::parse(&source.text, &source.file, &source.stem, &[])?;
    let text = source.text;
    if !is_dns_label(&opts.namespace) {
        return Err(RenderError::Option {
            field: "namespace",
            message: format!(
                "{:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63)",
                opts.namespace
            ),
        });
    }
    if opts.schedule.split_whitespace().count() != 5 && !opts.schedule.starts_with('@') {
        return Err(RenderError::Option {
            field: "schedule",
            message: format!("{:?} is not a cron schedule (five fields, e.g. \"0 2 * * *\", or @daily)", opts.schedule),
        });
    }
    if let Some(pvc) = &opts.results_pvc {
        if !is_dns_label(pvc) {
            return Err(RenderError::Option {
                field: "results-pvc",
                message: format!("{pvc:?} is not a valid claim name"),
            });
        }
    }
    let baseline = match &opts.baseline {
        None => None,
        Some(p) => {
            let shown = p.display().to_string();
            let file_err = |message: String| RenderError::File { path: shown.clone(), message };
            let len = std::fs::metadata(p).map_err(|e| file_err(e.to_string()))?.len();
            if len > MAX_BASELINE_BYTES {
                return Err(file_err(format!(
                    "{len} bytes is too large for a ConfigMap (at most {MAX_BASELINE_BYTES}); keep the baseline on the results volume instead"
                )));
            }
            let loaded = crate::results::load::load(p).map_err(|e| file_err(e.to_string()))?;
            let json = std::fs::read_to_string(&loaded.path).map_err(|e| file_err(e.to_string()))?;
            Some(json)
        }
    };

    let name = format!("zonebench-{}", dns_name(&scenario.name));
    let ns = opts.namespace.clone();
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), "zonebench".to_string()),
        ("app.kubernetes.io/component".to_string(), "nightly".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        ("app.kubernetes.io/managed-by".to_string(), "zonebench-render".to_string()),
    ]
    .into();
    let meta = |n: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(n.to_string()),
        namespace: namespace.map(String::from),
        labels: Some(labels.clone()),
        ..Default::default()
    };

    let namespace = Namespace { metadata: meta(&ns, None), ..Default::default() };
    let sa = ServiceAccount { metadata: meta(&name, Some(&ns)), ..Default::default() };
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: name.clone(),
        namespace: Some(ns.clone()),
        ..Default::default()
    };

    let cluster_role = ClusterRole {
        metadata: meta(&name, None),
        rules: Some(vec![
            // Discovery: nodes, zones, CPU.
            rule(&[""], &["nodes"], &["get", "list"]),
            // One labelled namespace per run; `gc` lists them to remove leftovers.
            rule(&[""], &["namespaces"], &["get", "list", "create", "delete"]),
            // In the run namespace (granted cluster-wide: it does not exist in advance).
            // patch: `via = "service"` labels backend pods for their Service's selector.
            rule(&[""], &["pods"], &["get", "list", "watch", "create", "delete", "patch"]),
            rule(&[""], &["pods/portforward"], &["get", "create"]),
            rule(&[""], &["secrets"], &["get", "create", "delete"]),
            rule(&[""], &["services"], &["get", "list", "create", "delete"]),
            rule(&["discovery.k8s.io"], &["endpointslices"], &["get", "list", "watch", "create", "delete"]),
            // `--inspect-nodes`: its DaemonSet, and its pods' logs (the reports).
            rule(&["apps"], &["daemonsets"], &["get", "create", "delete"]),
            rule(&[""], &["pods/log"], &["get"]),
        ]),
        ..Default::default()
    };
    let cluster_binding = ClusterRoleBinding {
        metadata: meta(&name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.clone(),
        },
        subjects: Some(vec![subject.clone()]),
    };
    let mut cm_rule = rule(&[""], &["configmaps"], &["get"]);
    cm_rule.resource_names = Some(vec!["kube-proxy".into(), "kube-proxy-config".into(), "cilium-config".into()]);
    let system_role = Role {
        metadata: meta(&name, Some("kube-system")),
        rules: Some(vec![cm_rule, rule(&["apps"], &["daemonsets"], &["list"])]),
    };
    let system_binding = RoleBinding {
        metadata: meta(&name, Some("kube-system")),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![subject]),
    };

    let mut data = BTreeMap::from([("scenario.toml".to_string(), text)]);
    if let Some(b) = baseline {
        data.insert("baseline.json".to_string(), b);
    }
    let config =
        ConfigMap { metadata: meta(&format!("{name}-scenario"), Some(&ns)), data: Some(data), ..Default::default() };

    // A shell names the run directory by date; with a baseline the verdict is compare's
    // exit code, so a regression (3) fails the Job.
    let mut script = format!(
        "set -eu\nRUN=/results/$(date -u +%Y%m%dT%H%M%SZ)-{}\nzonebench run /etc/zonebench/scenario.toml --platform kube --out \"$RUN\"\n",
        scenario.name
    );
    if opts.baseline.is_some() {
        script.push_str("zonebench compare /etc/zonebench/baseline.json \"$RUN\" --format markdown\n");
    }
    let results_volume = match &opts.results_pvc {
        Some(claim) => Volume {
            name: "results".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        None => {
            Volume { name: "results".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
        }
    };
    let container = Container {
        name: "zonebench".into(),
        image: Some(opts.image.clone()),
        command: Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
        args: Some(vec![script]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "scenario".into(),
                mount_path: "/etc/zonebench".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "results".into(), mount_path: "/results".into(), ..Default::default() },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("200m".into())),
                ("memory".to_string(), Quantity("256Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
        // The coordinator only talks to the API server: it needs no privilege at all.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        service_account_name: Some(name.clone()),
        restart_policy: Some("Never".into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "scenario".into(),
                config_map: Some(ConfigMapVolumeSource { name: format!("{name}-scenario"), ..Default::default() }),
                ..Default::default()
            },
            results_volume,
        ]),
        ..Default::default()
    };
    let cron = CronJob {
        metadata: meta(&name, Some(&ns)),
        spec: Some(CronJobSpec {
            schedule: opts.schedule.clone(),
            time_zone: opts.time_zone.clone(),
            // A run that overlaps the next would measure itself.
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(5),
            starting_deadline_seconds: Some(3600),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..Default::default() }),
                spec: Some(JobSpec {
                    // A retried benchmark hides a failure; the next night runs anyway.
                    backoff_limit: Some(0),
                    active_deadline_seconds: Some(3 * 3600),
                    ttl_seconds_after_finished: Some(7 * 24 * 3600),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..Default::default() }),
                        spec: Some(pod),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    let docs: Vec<serde_json::Value> = [
        serde_json::to_value(&namespace),
        serde_json::to_value(&sa),
        serde_json::to_value(&cluster_role),
        serde_json::to_value(&cluster_binding),
        serde_json::to_value(&system_role),
        serde_json::to_value(&system_binding),
        serde_json::to_value(&config),
        serde_json::to_value(&cron),
    ]
    .into_iter()
    .collect::<Result<_, _>>()
    .map_err(|e| RenderError::Yaml(e.to_string()))?;
    let yaml = serde_saphyr::to_string_multiple(&docs).map_err(|e| RenderError::Yaml(e.to_string()))?;
    Ok(format!(
        "# zonebench nightly for scenario {:?}: kubectl apply -f <this file>\n# Generated by zonebench {}; the run needs the kube platform in the image.\n---\n{yaml}",
        scenario.name,
        env!("CARGO_PKG_VERSION")
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;

    fn scenario_file(dir: &Path, name: &str) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, "# nightly\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap();
        p
    }

    fn docs(yaml: &str) -> Vec<serde_json::Value> {
        yaml.split("\n---\n")
            .filter(|d| !d.trim().is_empty() && !d.trim_start().starts_with('#'))
            .map(|d| serde_saphyr::from_str::<serde_json::Value>(d).unwrap())
            .collect()
    }

    #[test]
    fn the_cronjob_comes_with_its_service_account_and_rbac() {
        let dir = std::env::temp_dir().join(format!("zb-cron-{}", std::process::id()));
        let p = scenario_file(&dir, "My_Nightly");
        let yaml = render(p.to_str().unwrap(), &CronJobOptions::default()).unwrap();
        let d = docs(&yaml);
        let kinds: Vec<&str> = d.iter().map(|v| v["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "CronJob"
            ]
        );
        let cron = &d[7];
        assert_eq!(cron["apiVersion"], "batch/v1");
        assert_eq!(cron["metadata"]["name"], "zonebench-my-nightly");
        assert_eq!(cron["spec"]["schedule"], "0 2 * * *");
        let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "zonebench-my-nightly");
        assert_eq!(d[1]["metadata"]["name"], "zonebench-my-nightly");
        // Both bindings name the job's ServiceAccount.
        for b in [&d[3], &d[5]] {
            assert_eq!(b["subjects"][0]["name"], "zonebench-my-nightly");
            assert_eq!(b["subjects"][0]["namespace"], "zonebench");
        }
        assert_eq!(d[4]["metadata"]["namespace"], "kube-system");
        assert_eq!(d[6]["data"]["scenario.toml"], "# nightly\n[[tests]]\nkind = \"tcp-rr\"\n");
        // Nothing broader than needed: no wildcard anywhere.
        assert!(!yaml.contains("'*'") && !yaml.contains("\"*\""), "{yaml}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_scenario_or_option_is_named() {
        let dir = std::env::temp_dir().join(format!("zb-cron-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[tests]]\nkind = \"tcp-xx\"\n").unwrap();
        let e = render(bad.to_str().unwrap(), &CronJobOptions::default()).unwrap_err().to_string();
        assert!(e.contains("bad.toml:2"), "{e}");
        let good = scenario_file(&dir, "ok");
        let e = render(good.to_str().unwrap(), &CronJobOptions { schedule: "nightly".into(), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--schedule"), "{e}");
        let e = render(good.to_str().unwrap(), &CronJobOptions { namespace: "Bad_NS".into(), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--namespace"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
