use super::*;
use crate::platform::kube::pss;

fn run() -> RunMeta {
    RunMeta { run_id: "ab12cd34".into(), scenario: "quick".into() }
}

fn agents() -> Vec<AgentPod> {
    vec![
        AgentPod {
            id: "srv-us-east-1a-0".into(),
            node: "ip-10-0-1-5.ec2.internal".into(),
            zone: "us-east-1a".into(),
            max_answer_qps: None,
            relay: false,
        },
        AgentPod {
            id: "cli-us-east-1a-0".into(),
            node: "ip-10-0-1-6.ec2.internal".into(),
            zone: "us-east-1a".into(),
            max_answer_qps: None,
            relay: false,
        },
    ]
}

fn all(inspect: bool) -> RunManifests {
    let settings = KubeSettings::default();
    let agents = agents();
    run_manifests(&RunInput {
        run: &run(),
        settings: &settings,
        image: "example.com/zonebench-agent:1",
        token: "secret-token",
        agents: &agents,
        variants: &RoutingVariant::ALL,
        inspector_image: inspect.then_some("example.com/inspector:1"),
    })
    .unwrap()
}

#[test]
fn every_object_carries_the_run_and_manager_labels() {
    for o in all(true).objects() {
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels[MANAGED_BY], "zonebench", "{o}");
        assert_eq!(labels[RUN_LABEL], "ab12cd34", "{o}");
        match o["kind"].as_str() {
            Some("Namespace") => {}
            // The node inspector has a (privileged) namespace of its own.
            Some("DaemonSet") => assert_eq!(o["metadata"]["namespace"], "zonebench-ab12cd34-inspect", "{o}"),
            _ => assert_eq!(o["metadata"]["namespace"], "zonebench-ab12cd34", "{o}"),
        }
    }
}

#[test]
fn agent_pods_pass_the_restricted_pod_security_standard() {
    let m = all(false);
    assert_eq!(m.namespace.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"], "restricted");
    for o in m.objects() {
        for (path, spec) in pss::pod_specs(&o) {
            assert_eq!(pss::restricted_violations(spec), Vec::<String>::new(), "{path}");
        }
    }
}

#[test]
fn the_node_inspector_is_privileged_in_a_namespace_of_its_own_and_the_agents_stay_restricted() {
    let m = all(true);
    let (ns, ds) = m.inspector.as_ref().unwrap();
    let ds = serde_json::to_value(ds).unwrap();
    let specs = pss::pod_specs(&ds);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].1["hostNetwork"], true);
    assert!(!pss::restricted_violations(specs[0].1).is_empty());
    let enforce = |n: &Namespace| n.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"].clone();
    assert_eq!(ds["metadata"]["namespace"], "zonebench-ab12cd34-inspect");
    assert_eq!(ns.metadata.name.as_deref(), Some("zonebench-ab12cd34-inspect"));
    assert_eq!(enforce(ns), "privileged");
    assert_eq!(ns.metadata.labels.as_ref().unwrap()[RUN_LABEL], "ab12cd34", "found by teardown and gc");
    assert_eq!(enforce(&m.namespace), "restricted");
    assert!(all(false).inspector.is_none());
}

#[test]
fn agent_pods_are_pinned_to_their_node_and_told_who_they_are() {
    let m = all(false);
    let pod = serde_json::to_value(&m.pods[0]).unwrap();
    assert_eq!(pod["metadata"]["name"], "srv-us-east-1a-0");
    assert_eq!(pod["metadata"]["labels"][ROLE_LABEL], "server");
    let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(term["key"], "metadata.name");
    assert_eq!(term["values"][0], "ip-10-0-1-5.ec2.internal");
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(args[0], "serve");
    assert_eq!(after("--id"), "srv-us-east-1a-0");
    assert_eq!(after("--zone"), "us-east-1a");
    assert_eq!(after("--node"), "ip-10-0-1-5.ec2.internal");
    assert_eq!(after("--control"), "tcp:0.0.0.0:7100");
    assert_eq!(after("--token-file"), "/var/run/zonebench/token");
    assert_eq!(args.iter().filter(|a| **a == "--allow-cidr").count(), crate::scenario::kube::DEFAULT_ALLOW_CIDRS.len());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["image"], "example.com/zonebench-agent:1");
    assert_eq!(c["resources"]["requests"]["cpu"], "500m");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
}

#[test]
fn services_carry_their_routing_variant() {
    let m = all(false);
    let by_name = |n: &str| m.services.iter().find(|s| s.metadata.name.as_deref() == Some(n)).unwrap();
    let auto = by_name("zb-echo-topology-auto");
    assert_eq!(auto.metadata.annotations.as_ref().unwrap()[TOPOLOGY_MODE], "Auto");
    let close = by_name("zb-echo-prefer-close");
    assert_eq!(close.spec.as_ref().unwrap().traffic_distribution.as_deref(), Some("PreferClose"));
    assert!(close.metadata.annotations.is_none());
    let same = by_name("zb-echo-prefer-same-zone");
    assert_eq!(same.spec.as_ref().unwrap().traffic_distribution.as_deref(), Some("PreferSameZone"));
    let none = by_name("zb-echo-none");
    assert!(none.spec.as_ref().unwrap().traffic_distribution.is_none());
    let selector = none.spec.as_ref().unwrap().selector.as_ref().unwrap();
    assert_eq!(selector[ROLE_LABEL], "server");
    assert_eq!(selector[RUN_LABEL], "ab12cd34");
}

#[test]
fn scaling_slices_point_at_the_echo_pods_under_our_own_manager() {
    let echo = [EchoEndpoint { pod: "srv-a-0".into(), ip: "10.1.2.3".into(), node: "n1".into(), zone: "a".into() }];
    let ports = [AgentPort::Tcp, AgentPort::Udp];
    let svc = selectorless_service(&run(), "svc-00007", &ports);
    assert!(svc.spec.as_ref().unwrap().selector.is_none());
    let slice = serde_json::to_value(run_endpoint_slice(&run(), "svc-00007", &ports, &echo)).unwrap();
    assert_eq!(slice["metadata"]["name"], "svc-00007");
    assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "svc-00007");
    assert_eq!(slice["metadata"]["labels"][SLICE_MANAGED_BY], SLICE_MANAGER);
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.1.2.3");
    assert_eq!(slice["endpoints"][0]["zone"], "a");
    // Slice port names must match the Service's for kube-proxy to use them.
    let svc_ports: Vec<_> = svc.spec.unwrap().ports.unwrap().into_iter().map(|p| p.name).collect();
    let slice_ports: Vec<_> =
        slice["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().map(String::from)).collect();
    assert_eq!(svc_ports, slice_ports);
}

#[test]
fn agent_ids_become_dns_names_and_clashes_are_refused() {
    assert_eq!(pod_name("srv-Zone_A-0").unwrap(), "srv-zone-a-0");
    let settings = KubeSettings::default();
    let clash = [
        AgentPod { id: "srv-a_b-0".into(), node: "n".into(), zone: "a_b".into(), max_answer_qps: None, relay: false },
        AgentPod { id: "srv-a.b-0".into(), node: "n".into(), zone: "a.b".into(), max_answer_qps: None, relay: false },
    ];
    let err = run_manifests(&RunInput {
        run: &run(),
        settings: &settings,
        image: "i",
        token: "t",
        agents: &clash,
        variants: &[],
        inspector_image: None,
    })
    .unwrap_err();
    assert!(matches!(err, ManifestError::NameClash(..)), "{err}");
    assert!(check_label_value("zone", "-bad").is_err());
    assert!(check_label_value("zone", &"x".repeat(64)).is_err());
}

#[test]
fn yaml_rendering_is_one_document_per_object_and_reads_back_the_same() {
    let objects = all(true).objects();
    let text = to_yaml("zonebench render\nsecond line", &objects).unwrap();
    assert!(text.starts_with("# zonebench render\n# second line\n---\n"));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(docs, objects);
}
