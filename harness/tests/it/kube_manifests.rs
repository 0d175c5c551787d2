//! Every manifest zonebench creates on a cluster, checked by an independent validator:
//! `kubernetes-validate` (PyPI; `.ci/run` installs it) against the Kubernetes 1.33 OpenAPI
//! schemas, strictly (unknown fields rejected), and every pod spec or pod template against
//! the `restricted` Pod Security Standard. Covers `zonebench render` of each scenario in
//! `scenarios/` (with and without the node inspector) and the objects a run creates later
//! (Services of every routing variant, `via = "service"` Services, service-scaling Services and EndpointSlices).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::scratch;
use zonebench::platform::kube::manifests::{self, EchoEndpoint, RoutingVariant, RunMeta};
use zonebench::platform::kube::pss;
use zonebench::scenario::KubeSettings;

const KUBERNETES_VERSION: &str = "1.33.0";

fn render(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .arg("render")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "render {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `kubernetes-validate --strict` on files: Ok, or its report.
fn validate(files: &[PathBuf]) -> Result<(), String> {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubernetes-validate is not installed ({e}): `pip install 'kubernetes-validate>=1.33'` (.ci/run does)"
            )
        });
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(report)
    }
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// What a run creates after deploy: Services of every variant, scaling Services and slices.
fn later_objects() -> Vec<Value> {
    let run = RunMeta { run_id: "ab12cd34".into(), scenario: "quick".into() };
    let echo = [
        EchoEndpoint { pod: "srv-a-0".into(), ip: "10.244.1.5".into(), node: "n1".into(), zone: "a".into() },
        EchoEndpoint { pod: "srv-b-0".into(), ip: "10.244.2.5".into(), node: "n2".into(), zone: "b".into() },
    ];
    let mut v: Vec<Value> =
        RoutingVariant::ALL.iter().map(|r| manifests::to_value(&manifests::variant_service(&run, *r))).collect();
    v.push(manifests::to_value(&manifests::selectorless_service(
        &run,
        "svc-00001",
        &[zonebench::model::AgentPort::Tcp, zonebench::model::AgentPort::Udp],
    )));
    // `via = "service"` Services (apply_services), one per routing mode.
    use zonebench::model::RoutingMode;
    for (i, routing) in [
        RoutingMode::None,
        RoutingMode::Auto,
        RoutingMode::PreferClose,
        RoutingMode::PreferSameZone,
        RoutingMode::PreferSameNode,
    ]
    .into_iter()
    .enumerate()
    {
        let request = zonebench::model::ServiceRequest {
            name: format!("echo-{i}"),
            backends: vec!["srv-a-0".into()],
            ports: vec![zonebench::model::AgentPort::Tcp, zonebench::model::AgentPort::Udp],
            routing,
            endpoints: Default::default(),
        };
        v.push(manifests::to_value(&zonebench::platform::kube::run_services::request_service(&run, &request)));
    }
    v.push(manifests::to_value(&manifests::run_endpoint_slice(
        &run,
        "svc-00001",
        &[zonebench::model::AgentPort::Tcp, zonebench::model::AgentPort::Udp],
        &echo,
    )));
    let settings = KubeSettings { cpu_limit: Some("2".into()), ..Default::default() };
    let agents = [manifests::AgentPod {
        id: "srv-a-0".into(),
        node: "n1".into(),
        zone: "a".into(),
        max_answer_qps: None,
        relay: false,
    }];
    let m = manifests::run_manifests(&manifests::RunInput {
        run: &run,
        settings: &settings,
        image: "example.com/zonebench-agent:1",
        token: "t",
        agents: &agents,
        variants: &RoutingVariant::ALL,
        inspector_image: Some("example.com/inspector:1"),
    })
    .unwrap();
    v.extend(m.objects());
    v
}

#[test]
fn rendered_and_run_time_manifests_validate_against_the_kubernetes_schemas() {
    let dir = scratch("kube-manifests-validate");
    let mut files = Vec::new();
    for (i, s) in scenarios().iter().enumerate() {
        let path = dir.join(format!("render-{i}.yaml"));
        std::fs::write(&path, render(&[s.to_str().unwrap()])).unwrap();
        files.push(path);
    }
    let inspect = dir.join("render-inspect.yaml");
    std::fs::write(&inspect, render(&["scenarios/quick.toml", "--inspect-nodes", "--image", "example.com/a:1"]))
        .unwrap();
    files.push(inspect);
    let later = dir.join("later.yaml");
    std::fs::write(&later, manifests::to_yaml("run-time objects", &later_objects()).unwrap()).unwrap();
    files.push(later);
    if let Err(report) = validate(&files) {
        panic!("manifests fail the Kubernetes {KUBERNETES_VERSION} schemas:\n{report}");
    }
}

#[test]
fn the_validator_rejects_a_manifest_that_breaks_the_schema() {
    // The control: the validator used above can fail, on a misspelt field and a wrong type.
    let dir = scratch("kube-manifests-negative");
    let mut pod = later_objects().into_iter().find(|o| o["kind"] == "Pod").unwrap();
    pod["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    let typo = dir.join("typo.yaml");
    std::fs::write(&typo, manifests::to_yaml("typo", &[pod.clone()]).unwrap()).unwrap();
    assert!(validate(&[typo]).is_err(), "an unknown field must fail --strict validation");
    pod["spec"]["containers"][0].as_object_mut().unwrap().remove("imagePullPolicyy");
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "seventy-one hundred".into();
    let wrong = dir.join("wrong-type.yaml");
    std::fs::write(&wrong, manifests::to_yaml("wrong type", &[pod]).unwrap()).unwrap();
    assert!(validate(&[wrong]).is_err(), "a string port must fail validation");
}

#[test]
fn every_rendered_pod_passes_the_restricted_pod_security_standard() {
    let mut checked = 0;
    for s in scenarios() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&render(&[s.to_str().unwrap()])).unwrap();
        for d in &docs {
            for (path, spec) in pss::pod_specs(d) {
                assert_eq!(pss::restricted_violations(spec), Vec::<String>::new(), "{}: {path}", s.display());
                checked += 1;
            }
        }
        let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
        assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    }
    assert!(checked >= 6, "only {checked} pod specs rendered");
    // With the node inspector, its DaemonSet is the one (deliberate) exception.
    let docs: Vec<Value> = serde_saphyr::from_multiple(&render(&["scenarios/quick.toml", "--inspect-nodes"])).unwrap();
    let failing: Vec<String> = docs
        .iter()
        .flat_map(|d| pss::pod_specs(d).into_iter().map(|(p, s)| (p, pss::restricted_violations(s))))
        .filter(|(_, v)| !v.is_empty())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(failing, vec![format!("DaemonSet/{}.spec.template.spec", manifests::INSPECTOR_NAME)]);
    // It lives in a privileged namespace of its own; the agents' stays restricted.
    let levels: Vec<(&str, &str)> = docs
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap(),
                d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(levels, [("zonebench-render", "restricted"), ("zonebench-render-inspect", "privileged")]);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(ds["metadata"]["namespace"], "zonebench-render-inspect");
}

#[test]
fn render_without_a_cluster_places_agents_on_placeholder_nodes_and_hides_the_token() {
    let text = render(&["scenarios/quick.toml", "--set", "lab.zones=x,y", "--image", "example.com/a:1"]);
    assert!(text.starts_with("# zonebench render"), "{text}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["Namespace", "Secret", "Pod", "Pod", "Pod", "Pod"]);
    let secret = &docs[1];
    assert_eq!(secret["stringData"]["token"], "GENERATED-PER-RUN");
    let nodes: Vec<&str> = docs[2..]
        .iter()
        .map(|p| {
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0]["values"][0]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(nodes, vec!["x-node-1", "x-node-2", "y-node-1", "y-node-2"]);
    assert!(docs[2..].iter().all(|p| p["spec"]["containers"][0]["image"] == "example.com/a:1"));
}

#[test]
fn render_shows_the_services_a_run_creates_once_its_agents_run() {
    let kinds = |yaml: &str| -> Vec<(String, String)> {
        yaml.split("\n---\n")
            .skip(1)
            .map(|d| {
                let v: Value = serde_saphyr::from_str(d).unwrap();
                (v["kind"].as_str().unwrap().to_string(), v["metadata"]["name"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let topology = render(&["scenarios/topology-routing.toml"]);
    let services: Vec<String> = kinds(&topology).into_iter().filter(|(k, _)| k == "Service").map(|(_, n)| n).collect();
    assert_eq!(services.len(), 6, "one Service per topology variant: {services:?}");
    assert!(topology.contains("svc.zonebench.dev/echo-auto: backend"), "the selector on the backend label");
    assert!(topology.contains("# Services select their backend pods by the label"));

    let sweep = render(&["scenarios/service-scaling.toml"]);
    let objects = kinds(&sweep);
    assert!(objects.contains(&("Service".into(), "svc-00001".into())), "{objects:?}");
    assert!(objects.contains(&("EndpointSlice".into(), "svc-00001".into())), "{objects:?}");
    assert!(sweep.contains("# Service sweep: up to 10000 Services like svc-00001"), "{sweep}");
}
