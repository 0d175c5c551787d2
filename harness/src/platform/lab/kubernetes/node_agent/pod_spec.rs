//! What the node agent runs for a pod: the pod's spec turned into processes, checked
//! against what the lab can do. Pure: nothing here starts anything.
//!
//! The lab's pods are processes in network namespaces, not containers: there is no image
//! to unpack, so an image runs only when the lab knows its program ([`Images`]), and the
//! process sees the host's filesystem with the pod's volumes bind-mounted over their mount
//! paths. What the lab cannot do (another image, a privileged container, a volume type it
//! does not materialise) is an [`Unrunnable`] with the reason and message a kubelet would
//! write into the container's `waiting` state, so `kubectl get pods` says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The last path segment of the image repository the zonebench agent is published as.
pub const AGENT_IMAGE_NAME: &str = "zonebench-agent";
/// The user the agent image runs as when a pod does not say (distroless's `nonroot`).
pub const AGENT_IMAGE_USER: u32 = 65532;
/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The programs images stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// The zonebench agent binary (with arguments before the container's own, e.g. `agent`
    /// when it is the coordinator's embedded agent).
    pub agent: PathBuf,
    pub agent_args: Vec<String>,
}

impl Images {
    /// The program, leading arguments and default user of `image`: the zonebench agent for
    /// any `[registry/][path/]zonebench-agent[:tag][@digest]`, nothing else.
    pub fn program(&self, image: &str) -> Option<(PathBuf, Vec<String>, u32)> {
        let repository = image.split('@').next().unwrap_or(image);
        let last = repository.rsplit('/').next().unwrap_or(repository);
        let name = last.split(':').next().unwrap_or(last);
        (name == AGENT_IMAGE_NAME).then(|| (self.agent.clone(), self.agent_args.clone(), AGENT_IMAGE_USER))
    }
}

/// A pod as the node agent runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRun {
    pub containers: Vec<ContainerRun>,
    pub volumes: Vec<VolumeRun>,
    /// How long a container gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// `fsGroup`: the group the volumes' files belong to.
    pub fs_group: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRun {
    pub name: String,
    pub image: String,
    pub program: PathBuf,
    /// Leading arguments of the image's program, then the container's `args`.
    pub args: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: `supplementalGroups` and `fsGroup`.
    pub groups: Vec<u32>,
    pub mounts: Vec<MountRun>,
    pub readiness: Option<ProbeRun>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MountRun {
    pub volume: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// A volume the node agent materialises as a directory of the pod.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeRun {
    /// A Secret's keys (or `items`) as files of mode `mode`.
    Secret {
        name: String,
        secret: String,
        mode: u32,
        items: Vec<(String, String)>,
        optional: bool,
    },
    ConfigMap {
        name: String,
        config_map: String,
        mode: u32,
        items: Vec<(String, String)>,
        optional: bool,
    },
    EmptyDir {
        name: String,
    },
}

impl VolumeRun {
    pub fn name(&self) -> &str {
        match self {
            VolumeRun::Secret { name, .. } | VolumeRun::ConfigMap { name, .. } | VolumeRun::EmptyDir { name } => name,
        }
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvSource {
    Value(String),
    /// A `fieldRef` path the node agent knows once the pod runs (`status.podIP`, …).
    Field(String),
}

/// The downward-API fields an environment variable may name.
pub const ENV_FIELDS: [&str; 7] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.hostIP",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRun {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// `GET path` on the pod IP; 200–399 is a success, as for the kubelet.
    Http { port: u16, path: String },
    /// A TCP connect to the pod IP.
    Tcp { port: u16 },
}

/// Why a pod cannot run here, as a container's `waiting` reason and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Unrunnable {
    pub reason: &'static str,
    pub message: String,
}

fn image_not_in_lab(image: &str) -> Unrunnable {
    Unrunnable {
        reason: "ImageNotInLab",
        message: format!(
            "image {image:?} cannot run here: the Kubernetes lab runs pods as processes, and only the \
             {AGENT_IMAGE_NAME} image has a program in the lab"
        ),
    }
}

fn config_error(message: impl Into<String>) -> Unrunnable {
    Unrunnable { reason: "CreateContainerConfigError", message: message.into() }
}

/// The pod's run plan, or why the lab cannot run it.
pub fn plan(pod: &Pod, images: &Images) -> Result<PodRun, Unrunnable> {
    let spec = pod.spec.as_ref().ok_or_else(|| config_error("the pod has no spec"))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(config_error("init containers are not supported by the lab's node agent"));
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        return Err(config_error("hostNetwork, hostPID and hostIPC are not supported by the lab's node agent"));
    }
    // What the image is decides first: nothing else matters for one the lab cannot run.
    for c in &spec.containers {
        let image = c.image.clone().unwrap_or_default();
        if images.program(&image).is_none() {
            return Err(image_not_in_lab(&image));
        }
    }
    let volumes = volumes(spec)?;
    let psc = spec.security_context.as_ref();
    let fs_group = psc.and_then(|s| s.fs_group).map(id).transpose()?;
    let mut containers = Vec::new();
    for c in &spec.containers {
        containers.push(container(c, spec, &volumes, images, fs_group)?);
    }
    if containers.is_empty() {
        return Err(config_error("the pod has no containers"));
    }
    let grace = spec.termination_grace_period_seconds.map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64));
    Ok(PodRun { containers, volumes, grace, fs_group })
}

fn id(v: i64) -> Result<u32, Unrunnable> {
    u32::try_from(v).map_err(|_| config_error(format!("{v} is no user or group id")))
}

fn volumes(spec: &PodSpec) -> Result<Vec<VolumeRun>, Unrunnable> {
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let items = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| -> Vec<(String, String)> {
            items.iter().flatten().map(|k| (k.key.clone(), k.path.clone())).collect()
        };
        let mode = |m: Option<i32>| m.map_or(0o644, |m| (m as u32) & 0o777);
        let run = if let Some(s) = &v.secret {
            VolumeRun::Secret {
                name: v.name.clone(),
                secret: s
                    .secret_name
                    .clone()
                    .ok_or_else(|| config_error(format!("volume {}: no secretName", v.name)))?,
                mode: mode(s.default_mode),
                items: items(&s.items),
                optional: s.optional == Some(true),
            }
        } else if let Some(c) = &v.config_map {
            VolumeRun::ConfigMap {
                name: v.name.clone(),
                config_map: c.name.clone(),
                mode: mode(c.default_mode),
                items: items(&c.items),
                optional: c.optional == Some(true),
            }
        } else if v.empty_dir.is_some() {
            VolumeRun::EmptyDir { name: v.name.clone() }
        } else {
            return Err(config_error(format!(
                "volume {}: only secret, configMap and emptyDir volumes are supported by the lab's node agent",
                v.name
            )));
        };
        out.push(run);
    }
    Ok(out)
}

fn container(
    c: &Container,
    spec: &PodSpec,
    volumes: &[VolumeRun],
    images: &Images,
    fs_group: Option<u32>,
) -> Result<ContainerRun, Unrunnable> {
    let image = c.image.clone().unwrap_or_default();
    let Some((program, mut args, image_user)) = images.program(&image) else { return Err(image_not_in_lab(&image)) };
    if let Some(command) = c.command.as_ref().filter(|c| !c.is_empty()) {
        // The image's entrypoint named explicitly is fine; another program is not.
        let first = command[0].rsplit('/').next().unwrap_or_default();
        if first != AGENT_IMAGE_NAME {
            return Err(Unrunnable {
                reason: "CreateContainerError",
                message: format!(
                    "container {}: command {:?} is not the image's program (the lab runs only that)",
                    c.name, command[0]
                ),
            });
        }
        args.extend(command[1..].iter().cloned());
    }
    args.extend(c.args.iter().flatten().cloned());

    let csc = c.security_context.as_ref();
    if csc.and_then(|s| s.privileged) == Some(true) {
        return Err(config_error(format!("container {}: privileged containers are not supported by the lab", c.name)));
    }
    if csc.and_then(|s| s.capabilities.as_ref()).and_then(|k| k.add.as_ref()).is_some_and(|a| !a.is_empty()) {
        return Err(config_error(format!("container {}: added capabilities are not supported by the lab", c.name)));
    }
    let psc = spec.security_context.as_ref();
    let uid = match csc.and_then(|s| s.run_as_user).or_else(|| psc.and_then(|s| s.run_as_user)) {
        Some(u) => id(u)?,
        None => image_user,
    };
    let gid = match csc.and_then(|s| s.run_as_group).or_else(|| psc.and_then(|s| s.run_as_group)) {
        Some(g) => id(g)?,
        None => uid,
    };
    let non_root = csc.and_then(|s| s.run_as_non_root).or_else(|| psc.and_then(|s| s.run_as_non_root));
    if non_root == Some(true) && uid == 0 {
        return Err(config_error(format!(
            "container {}: runAsNonRoot is set and the container would run as root",
            c.name
        )));
    }
    let mut groups: Vec<u32> = Vec::new();
    for g in psc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default() {
        groups.push(id(g)?);
    }
    groups.extend(fs_group);
    groups.sort_unstable();
    groups.dedup();

    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        if !volumes.iter().any(|v| v.name() == m.name) {
            return Err(config_error(format!("container {}: volume mount {}: no such volume", c.name, m.name)));
        }
        if m.sub_path.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(config_error(format!("container {}: subPath mounts are not supported by the lab", c.name)));
        }
        if !m.mount_path.starts_with('/') {
            return Err(config_error(format!("container {}: mount path {:?} is not absolute", c.name, m.mount_path)));
        }
        mounts.push(MountRun {
            volume: m.name.clone(),
            path: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }

    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        let source = match (&e.value, &e.value_from) {
            (_, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some(path) if ENV_FIELDS.contains(&path) => EnvSource::Field(path.to_string()),
                _ => {
                    return Err(config_error(format!(
                        "container {}: env {}: only values and fieldRef to {} are supported by the lab",
                        c.name,
                        e.name,
                        ENV_FIELDS.join(", ")
                    )))
                }
            },
            (v, None) => EnvSource::Value(v.clone().unwrap_or_default()),
        };
        env.push((e.name.clone(), source));
    }
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(config_error(format!("container {}: envFrom is not supported by the lab", c.name)));
    }

    let ports: BTreeMap<String, u16> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let readiness = c.readiness_probe.as_ref().map(|p| probe(p, &ports, &c.name)).transpose()?;

    Ok(ContainerRun { name: c.name.clone(), image, program, args, env, uid, gid, groups, mounts, readiness })
}

fn probe(p: &Probe, ports: &BTreeMap<String, u16>, container: &str) -> Result<ProbeRun, Unrunnable> {
    let port = |p: &IntOrString| -> Result<u16, Unrunnable> {
        match p {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| config_error(format!("probe port {n} is out of range")))
            }
            IntOrString::String(name) => ports.get(name).copied().ok_or_else(|| {
                config_error(format!("container {container}: readiness probe names port {name:?}, which it lacks"))
            }),
        }
    };
    let action = if let Some(h) = &p.http_get {
        if h.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
            return Err(config_error(format!("container {container}: only HTTP (not HTTPS) probes are supported")));
        }
        ProbeAction::Http { port: port(&h.port)?, path: h.path.clone().unwrap_or_else(|| "/".into()) }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp { port: port(&t.port)? }
    } else {
        return Err(config_error(format!(
            "container {container}: only httpGet and tcpSocket readiness probes are supported by the lab"
        )));
    };
    let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Ok(ProbeRun {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::kube::manifests::{agent_pod, AgentPod, RunMeta, AGENT_CONTROL_PORT, TOKEN_DIR};
    use crate::scenario::KubeSettings;

    fn images() -> Images {
        Images { agent: "/usr/bin/zonebench-agent".into(), agent_args: vec![] }
    }

    fn the_kube_platforms_agent_pod() -> Pod {
        let run = RunMeta { run_id: "abcd1234".into(), scenario: "quick".into() };
        let a =
            AgentPod { id: "s-a-1".into(), node: "a-1".into(), zone: "a".into(), max_answer_qps: None, relay: false };
        agent_pod(&run, &KubeSettings::default(), &crate::scenario::kube::default_image(), &a).unwrap()
    }

    #[test]
    fn the_agent_image_is_known_by_its_name_whatever_its_registry_and_tag() {
        let i = images();
        for image in [
            "ghcr.io/zonebench/zonebench-agent:0.1.0",
            "zonebench-agent",
            "localhost:5000/zonebench-agent@sha256:abc",
            "registry.example:443/a/b/zonebench-agent:dev",
        ] {
            assert!(i.program(image).is_some(), "{image}");
        }
        for image in ["nicolaka/netshoot:v0.13", "zonebench-agent-debug:1", "ghcr.io/zonebench-agent/other:1"] {
            assert!(i.program(image).is_none(), "{image}");
        }
    }

    #[test]
    fn the_kube_platforms_agent_pod_runs_as_its_user_with_its_token_and_probe() {
        let run = plan(&the_kube_platforms_agent_pod(), &images()).unwrap();
        assert_eq!(run.grace, Duration::from_secs(5));
        assert_eq!(run.fs_group, Some(65532));
        let c = &run.containers[0];
        assert_eq!(c.program, PathBuf::from("/usr/bin/zonebench-agent"));
        assert_eq!(c.args[0], "serve");
        assert_eq!((c.uid, c.gid, c.groups.as_slice()), (65532, 65532, &[65532][..]));
        assert_eq!(
            c.mounts,
            vec![MountRun { volume: "control-token".into(), path: TOKEN_DIR.into(), read_only: true }]
        );
        assert!(matches!(&run.volumes[0], VolumeRun::Secret { mode: 0o440, .. }));
        let p = c.readiness.as_ref().unwrap();
        assert_eq!(p.action, ProbeAction::Http { port: AGENT_CONTROL_PORT, path: "/healthz".into() });
        assert_eq!((p.period, p.failure_threshold), (Duration::from_secs(2), 3));
    }

    #[test]
    fn what_the_lab_cannot_run_says_why() {
        let mut pod = the_kube_platforms_agent_pod();
        pod.spec.as_mut().unwrap().containers[0].image = Some("nicolaka/netshoot:v0.13".into());
        let e = plan(&pod, &images()).unwrap_err();
        assert_eq!(e.reason, "ImageNotInLab");
        assert!(e.message.contains("netshoot"), "{e}");

        let mut pod = the_kube_platforms_agent_pod();
        pod.spec.as_mut().unwrap().containers[0].security_context.as_mut().unwrap().privileged = Some(true);
        assert!(plan(&pod, &images()).unwrap_err().message.contains("privileged"));

        let mut pod = the_kube_platforms_agent_pod();
        pod.spec.as_mut().unwrap().containers[0].command = Some(vec!["/bin/sh".into()]);
        assert_eq!(plan(&pod, &images()).unwrap_err().reason, "CreateContainerError");

        let mut pod = the_kube_platforms_agent_pod();
        let spec = pod.spec.as_mut().unwrap();
        spec.security_context.as_mut().unwrap().run_as_user = Some(0);
        spec.containers[0].security_context.as_mut().unwrap().run_as_user = None;
        assert!(plan(&pod, &images()).unwrap_err().message.contains("runAsNonRoot"));

        let mut pod = the_kube_platforms_agent_pod();
        let volumes = pod.spec.as_mut().unwrap().volumes.as_mut().unwrap();
        volumes[0].secret = None;
        volumes[0].host_path = Some(Default::default());
        assert!(plan(&pod, &images()).unwrap_err().message.contains("only secret, configMap and emptyDir"));
    }
}
