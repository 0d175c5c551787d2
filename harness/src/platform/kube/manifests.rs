//! Every object the kube platform creates, built by pure functions: a run's namespace, its
//! control-token Secret, agent Pods, Services per routing variant, the selector-less
//! Services and EndpointSlices of service scaling, and the optional node inspector.
//!
//! Pure so that `zonebench render` prints exactly what a run would create without a cluster,
//! and so tests can check each object against the Kubernetes schemas and the `restricted`
//! Pod Security Standard. Everything carries `app.kubernetes.io/managed-by=zonebench` and
//! the run's id, which is how teardown and `zonebench gc` find it again.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, ObjectReference, Pod,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::model::AgentPort;
use crate::scenario::KubeSettings;
use zonebench_agent::ports::{
    DEFAULT_CONTROL_PORT, DEFAULT_HTTP_PORT as AGENT_HTTP_PORT, DEFAULT_TCP_PORT as AGENT_TCP_PORT,
    DEFAULT_UDP_PORT as AGENT_UDP_PORT,
};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "zonebench";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const RUN_LABEL: &str = "zonebench.dev/run";
pub const AGENT_LABEL: &str = "zonebench.dev/agent";
pub const ROLE_LABEL: &str = "zonebench.dev/role";
pub const VARIANT_LABEL: &str = "zonebench.dev/variant";
pub const SCENARIO_ANNOTATION: &str = "zonebench.dev/scenario";
pub const TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our EndpointSlices must not claim the EndpointSlice controller's name, or it would
/// delete them.
pub const SLICE_MANAGER: &str = "service-scaling.zonebench.dev";

/// The agent's control API port inside a pod (its data ports are the lab's).
pub const AGENT_CONTROL_PORT: u16 = DEFAULT_CONTROL_PORT;
pub const SECRET_NAME: &str = "zonebench-control";
pub const TOKEN_DIR: &str = "/var/run/zonebench";
/// The non-root user agents run as (distroless's `nonroot`).
pub const AGENT_UID: i64 = 65532;
pub const INSPECTOR_NAME: &str = "zb-inspect-nodes";

/// What a run names its objects by.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMeta {
    /// Short id, also a label value: `zonebench.dev/run=<id>`.
    pub run_id: String,
    pub scenario: String,
}

impl RunMeta {
    pub fn namespace(&self) -> String {
        format!("zonebench-{}", self.run_id)
    }

    /// The namespace of the node inspector (`--inspect-nodes`): its own, the only one that
    /// allows privileged pods, so the agents' namespace stays `restricted`.
    pub fn inspector_namespace(&self) -> String {
        format!("zonebench-{}-inspect", self.run_id)
    }

    /// The labels every object of the run carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        [(MANAGED_BY.to_string(), MANAGER.to_string()), (RUN_LABEL.to_string(), self.run_id.clone())].into()
    }

    /// `app.kubernetes.io/managed-by=zonebench,zonebench.dev/run=<id>`.
    pub fn selector(&self) -> String {
        format!("{MANAGED_BY}={MANAGER},{RUN_LABEL}={}", self.run_id)
    }

    fn meta(&self, name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
        let mut labels = self.labels();
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace()),
            labels: Some(labels),
            ..Default::default()
        }
    }
}

/// An agent pod to create.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPod {
    /// Agent id (`srv-<zone>-0`): the identity it stamps on answers.
    pub id: String,
    pub node: String,
    pub zone: String,
    /// `--max-answer-qps` (see `AgentRequest`).
    pub max_answer_qps: Option<f64>,
    /// `--relay` (see `AgentRequest`).
    pub relay: bool,
}

impl AgentPod {
    /// Servers are what Services select; the plan names them `srv-…`.
    pub fn role(&self) -> &'static str {
        if self.id.starts_with("srv-") {
            "server"
        } else {
            "client"
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("{what} {value:?} cannot name a Kubernetes object: {why}")]
    BadName { what: &'static str, value: String, why: &'static str },
    #[error("agent ids {0:?} and {1:?} map to the same pod name {2:?}")]
    NameClash(String, String, String),
}

/// The routing variants a Service can be created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutingVariant {
    /// No topology preference: kube-proxy spreads over every endpoint.
    None,
    /// `service.kubernetes.io/topology-mode: Auto` (topology-aware routing with hints).
    TopologyAuto,
    /// `spec.trafficDistribution: PreferClose`.
    PreferClose,
    /// `spec.trafficDistribution: PreferSameZone` (Kubernetes 1.33+).
    PreferSameZone,
}

impl RoutingVariant {
    pub const ALL: [RoutingVariant; 4] = [
        RoutingVariant::None,
        RoutingVariant::TopologyAuto,
        RoutingVariant::PreferClose,
        RoutingVariant::PreferSameZone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoutingVariant::None => "none",
            RoutingVariant::TopologyAuto => "topology-auto",
            RoutingVariant::PreferClose => "prefer-close",
            RoutingVariant::PreferSameZone => "prefer-same-zone",
        }
    }

    pub fn parse(s: &str) -> Option<RoutingVariant> {
        RoutingVariant::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The Service name of this variant in a run's namespace.
    pub fn service_name(self) -> String {
        format!("zb-echo-{}", self.as_str())
    }
}

/// Checks `v` is a valid label value (63 characters, alphanumeric at both ends).
pub fn check_label_value(what: &'static str, v: &str) -> Result<(), ManifestError> {
    let bad = |why| Err(ManifestError::BadName { what, value: v.to_string(), why });
    if v.len() > 63 {
        return bad("longer than 63 characters");
    }
    if !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    let ends_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !ends_ok(v.chars().next()) || !ends_ok(v.chars().last()) {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// The pod name of an agent id: a DNS label (lowercase, digits, '-').
pub fn pod_name(agent_id: &str) -> Result<String, ManifestError> {
    let name: String = agent_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    if name.is_empty() || name.len() > 63 {
        return Err(ManifestError::BadName {
            what: "agent id",
            value: agent_id.to_string(),
            why: "its pod name must be 1-63 letters, digits or '-'",
        });
    }
    Ok(name)
}

/// The run's namespace. `restricted` is enforced on it, so the API server itself refuses
/// any pod of ours that would need more.
pub fn namespace(run: &RunMeta) -> Namespace {
    namespace_enforcing(run, &run.namespace(), "restricted")
}

/// The node inspector's namespace ([`RunMeta::inspector_namespace`]), enforcing
/// `privileged`: its hostNetwork DaemonSet needs it, and nothing else runs there. Labelled
/// as the run's, so teardown and `zonebench gc` find it too.
pub fn inspector_namespace(run: &RunMeta) -> Namespace {
    namespace_enforcing(run, &run.inspector_namespace(), "privileged")
}

fn namespace_enforcing(run: &RunMeta, name: &str, level: &str) -> Namespace {
    let mut meta = run.meta(name, &[]);
    meta.namespace = None;
    let labels = meta.labels.get_or_insert_default();
    labels.insert("pod-security.kubernetes.io/enforce".into(), level.into());
    labels.insert("pod-security.kubernetes.io/enforce-version".into(), "latest".into());
    meta.annotations = Some([(SCENARIO_ANNOTATION.to_string(), run.scenario.clone())].into());
    Namespace { metadata: meta, ..Default::default() }
}

/// The Secret holding the agents' control-API bearer token.
pub fn control_secret(run: &RunMeta, token: &str) -> Secret {
    Secret {
        metadata: run.meta(SECRET_NAME, &[]),
        type_: Some("Opaque".into()),
        string_data: Some([("token".to_string(), token.to_string())].into()),
        immutable: Some(true),
        ..Default::default()
    }
}

/// The container securityContext that passes the `restricted` Pod Security Standard.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

fn port(name: &str, port: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// An agent pod pinned to its node, reachable on the control port through port-forward.
pub fn agent_pod(run: &RunMeta, s: &KubeSettings, image: &str, a: &AgentPod) -> Result<Pod, ManifestError> {
    let name = pod_name(&a.id)?;
    check_label_value("agent id", &a.id)?;
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        "0.0.0.0",
        "--control",
        &format!("tcp:0.0.0.0:{AGENT_CONTROL_PORT}"),
        "--token-file",
        &format!("{TOKEN_DIR}/token"),
        "--id",
        &a.id,
        "--zone",
        &a.zone,
        "--node",
        &a.node,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in &s.allow_cidrs {
        args.push("--allow-cidr".into());
        args.push(c.clone());
    }
    if let Some(q) = a.max_answer_qps {
        args.push("--max-answer-qps".into());
        args.push(q.to_string());
    }
    if a.relay {
        args.push("--relay".into());
    }
    let mut limits = BTreeMap::from([("memory".to_string(), quantity(&s.memory))]);
    if let Some(l) = &s.cpu_limit {
        limits.insert("cpu".into(), quantity(l));
    }
    let container = Container {
        name: "agent".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        args: Some(args),
        ports: Some(vec![
            port("control", AGENT_CONTROL_PORT, "TCP"),
            port("tcp", AGENT_TCP_PORT, "TCP"),
            port("udp", AGENT_UDP_PORT, "UDP"),
            port("http", AGENT_HTTP_PORT, "TCP"),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("control".into()),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            timeout_seconds: Some(2),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&s.cpu)),
                ("memory".to_string(), quantity(&s.memory)),
            ])),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "control-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Ok(Pod {
        metadata: run.meta(&name, &[(NAME_LABEL, "zonebench-agent"), (AGENT_LABEL, &a.id), (ROLE_LABEL, a.role())]),
        spec: Some(PodSpec {
            affinity: Some(pin_to_node(&a.node)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // A crashed agent must fail the run, not come back with fresh counters.
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(AGENT_UID),
                run_as_group: Some(AGENT_UID),
                fs_group: Some(AGENT_UID),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "control-token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(SECRET_NAME.into()),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Required node affinity on the node's name (as the DaemonSet controller pins pods): the
/// scheduler still checks resources and taints, unlike `nodeName`.
fn pin_to_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service_ports() -> Vec<ServicePort> {
    [AgentPort::Tcp, AgentPort::Udp, AgentPort::Http].into_iter().map(service_port).collect()
}

/// An agent port's number in every agent pod (a Service forwards to the same number).
pub fn agent_port(p: AgentPort) -> u16 {
    match p {
        AgentPort::Tcp => AGENT_TCP_PORT,
        AgentPort::Udp => AGENT_UDP_PORT,
        AgentPort::Http => AGENT_HTTP_PORT,
    }
}

/// A Service port named after the agent port, forwarding to the same number on the pods.
pub fn service_port(p: AgentPort) -> ServicePort {
    ServicePort {
        name: Some(p.name().into()),
        port: i32::from(agent_port(p)),
        protocol: Some(protocol(p).into()),
        target_port: Some(IntOrString::Int(i32::from(agent_port(p)))),
        ..Default::default()
    }
}

fn protocol(p: AgentPort) -> &'static str {
    match p {
        AgentPort::Udp => "UDP",
        AgentPort::Tcp | AgentPort::Http => "TCP",
    }
}

/// The echo Service of one routing variant, selecting the run's server agents.
pub fn variant_service(run: &RunMeta, variant: RoutingVariant) -> Service {
    let mut meta = run.meta(&variant.service_name(), &[(VARIANT_LABEL, variant.as_str())]);
    if variant == RoutingVariant::TopologyAuto {
        meta.annotations = Some([(TOPOLOGY_MODE.to_string(), "Auto".to_string())].into());
    }
    let traffic_distribution = match variant {
        RoutingVariant::PreferClose => Some("PreferClose".to_string()),
        RoutingVariant::PreferSameZone => Some("PreferSameZone".to_string()),
        RoutingVariant::None | RoutingVariant::TopologyAuto => None,
    };
    let selector = [(RUN_LABEL.to_string(), run.run_id.clone()), (ROLE_LABEL.to_string(), "server".to_string())];
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.into()),
            ports: Some(service_ports()),
            traffic_distribution,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running echo pod that service-scaling EndpointSlices point at.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoEndpoint {
    pub pod: String,
    pub ip: String,
    pub node: String,
    pub zone: String,
}

/// A selector-less Service whose endpoints the run writes itself ([`run_endpoint_slice`]),
/// so thousands of Services (service scaling) need no extra pods and no pod labels.
pub fn selectorless_service(run: &RunMeta, name: &str, ports: &[AgentPort]) -> Service {
    Service {
        metadata: run.meta(name, &[(ROLE_LABEL, "service-scaling")]),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(ports.iter().map(|&p| service_port(p)).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The one EndpointSlice of a [`selectorless_service`], named after it, pointing at the echo
/// pods. kube-proxy finds it by the `kubernetes.io/service-name` label; our manager label
/// keeps the EndpointSlice controller's hands off it.
pub fn run_endpoint_slice(run: &RunMeta, name: &str, ports: &[AgentPort], echo: &[EchoEndpoint]) -> EndpointSlice {
    let ipv6 = echo.first().is_some_and(|e| e.ip.contains(':'));
    EndpointSlice {
        metadata: run.meta(
            name,
            &[(SERVICE_NAME_LABEL, name), (SLICE_MANAGED_BY, SLICE_MANAGER), (ROLE_LABEL, "service-scaling")],
        ),
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: echo
            .iter()
            .map(|e| Endpoint {
                addresses: vec![e.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(e.node.clone()),
                zone: Some(e.zone.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(e.pod.clone()),
                    namespace: Some(run.namespace()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|&p| EndpointPort {
                    name: Some(p.name().into()),
                    port: Some(i32::from(agent_port(p))),
                    protocol: Some(protocol(p).into()),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The node inspector's script: every 5 s one JSON line with a sequence number, the node's
/// service rule counts (iptables through both backends, all nftables rules, and those of
/// kube-proxy's own nftables tables; `null` where the image lacks the tool, so a missing
/// tool never reads as zero rules) and kube-proxy's sync metrics, read from its metrics port
/// with bash's /dev/tcp (summed over their labels: from 1.36 kube-proxy labels each
/// `ip_family`). The image needs bash, grep, awk and timeout, and for the counts
/// iptables-nft-save, iptables-legacy-save and nft. The Kubernetes lab runs the same script
/// in each node's namespace, once (`ONCE=1`), with kube-proxy's metrics on the node's
/// address (`METRICS_HOST`; default 127.0.0.1, where a cluster's kube-proxy binds them).
pub const INSPECTOR_SCRIPT: &str = r#"set -u
have() { command -v "$1" >/dev/null 2>&1; }
count_rules() { if have "$1"; then "$1" 2>/dev/null | grep -c '^-A' || true; else echo null; fi; }
count_nft() { nft -a "$@" 2>/dev/null | grep '# handle' | grep -cvE '^\s*(table|chain|set|map|flowtable) ' || true; }
metric() { printf '%s' "$METRICS" | awk -v m="$1" -v f="$2" '{ n = $1; sub(/\{.*/, "", n) } n == m { s += $2; found = 1 } END { if (found) printf f, s; else print "null" }'; }
SEQ=0
while true; do
  SEQ=$((SEQ + 1))
  IPT=$(count_rules iptables-nft-save)
  IPT_LEGACY=$(count_rules iptables-legacy-save)
  NFT=null
  KP=null
  if have nft; then
    NFT=$(count_nft list ruleset)
    KP=$(( $(count_nft list table ip kube-proxy) + $(count_nft list table ip6 kube-proxy) ))
  fi
  METRICS=""
  if exec 3<>"/dev/tcp/${METRICS_HOST:-127.0.0.1}/10249" 2>/dev/null; then
    printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    METRICS=$(timeout 5 cat <&3 | tr -d '\r')
    exec 3<&-
  fi
  printf '{"node":"%s","seq":%s,"iptables_rules":%s,"iptables_legacy_rules":%s,"nft_rules":%s,"kube_proxy_nft_rules":%s,"sync_seconds_sum":%s,"sync_count":%s}\n' \
    "$NODE_NAME" "$SEQ" "${IPT:-0}" "${IPT_LEGACY:-0}" "${NFT:-0}" "${KP:-0}" \
    "$(metric kubeproxy_sync_proxy_rules_duration_seconds_sum %.9f)" \
    "$(metric kubeproxy_sync_proxy_rules_duration_seconds_count %d)"
  [ -z "${ONCE:-}" ] || break
  sleep 5
done
"#;

/// The privileged hostNetwork DaemonSet `--inspect-nodes` deploys (and only then): reading a
/// node's rule tables needs the host's network namespace and CAP_NET_ADMIN.
pub fn inspector_daemonset(run: &RunMeta, image: &str) -> DaemonSet {
    let selector: BTreeMap<String, String> =
        [(NAME_LABEL.to_string(), "zonebench-inspector".to_string()), (RUN_LABEL.to_string(), run.run_id.clone())]
            .into();
    let mut pod_labels = run.labels();
    pod_labels.extend(selector.clone());
    let mut metadata = run.meta(INSPECTOR_NAME, &[(NAME_LABEL, "zonebench-inspector")]);
    metadata.namespace = Some(run.inspector_namespace());
    DaemonSet {
        metadata,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    host_network: Some(true),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(2),
                    tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
                    containers: vec![Container {
                        name: "inspect".into(),
                        image: Some(image.to_string()),
                        command: Some(vec!["/bin/bash".into(), "-c".into(), INSPECTOR_SCRIPT.into()]),
                        env: Some(vec![EnvVar {
                            name: "NODE_NAME".into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "spec.nodeName".into(),
                                    api_version: None,
                                }),
                                ..Default::default()
                            }),
                            value: None,
                        }]),
                        security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_string(), quantity("50m")),
                                ("memory".to_string(), quantity("64Mi")),
                            ])),
                            limits: Some(BTreeMap::from([("memory".to_string(), quantity("256Mi"))])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Everything one run creates, in creation order.
#[derive(Debug, Clone)]
pub struct RunManifests {
    pub namespace: Namespace,
    pub secret: Secret,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// With `--inspect-nodes`: the inspector's own namespace and its DaemonSet.
    pub inspector: Option<(Namespace, DaemonSet)>,
}

/// What [`run_manifests`] needs.
#[derive(Debug, Clone)]
pub struct RunInput<'a> {
    pub run: &'a RunMeta,
    pub settings: &'a KubeSettings,
    pub image: &'a str,
    pub token: &'a str,
    pub agents: &'a [AgentPod],
    pub variants: &'a [RoutingVariant],
    /// The inspector's image when `--inspect-nodes` is given.
    pub inspector_image: Option<&'a str>,
}

pub fn run_manifests(input: &RunInput<'_>) -> Result<RunManifests, ManifestError> {
    check_label_value("run id", &input.run.run_id)?;
    let mut pods = Vec::with_capacity(input.agents.len());
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for a in input.agents {
        let pod = agent_pod(input.run, input.settings, input.image, a)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(other) = names.insert(name.clone(), a.id.clone()) {
            return Err(ManifestError::NameClash(other, a.id.clone(), name));
        }
        pods.push(pod);
    }
    Ok(RunManifests {
        namespace: namespace(input.run),
        secret: control_secret(input.run, input.token),
        pods,
        services: input.variants.iter().map(|v| variant_service(input.run, *v)).collect(),
        inspector: input
            .inspector_image
            .map(|image| (inspector_namespace(input.run), inspector_daemonset(input.run, image))),
    })
}

impl RunManifests {
    /// Every object as JSON, in creation order.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let mut out = vec![to_value(&self.namespace), to_value(&self.secret)];
        out.extend(self.pods.iter().map(to_value));
        out.extend(self.services.iter().map(to_value));
        if let Some((ns, ds)) = &self.inspector {
            out.extend([to_value(ns), to_value(ds)]);
        }
        out
    }
}

/// JSON of a Kubernetes object. k8s-openapi's types serialize infallibly to JSON (string
/// keys, no non-finite floats), so an error here would be a bug in them: it shows as null.
pub fn to_value<T: Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

/// Multi-document YAML, one document per object, after a comment `header`.
pub fn to_yaml(header: &str, objects: &[serde_json::Value]) -> Result<String, String> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for o in objects {
        out.push_str("---\n");
        let doc = serde_saphyr::to_string(o).map_err(|e| format!("writing YAML: {e}"))?;
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
