//! The kube platform against a fake API server replaying recorded API objects (see
//! `support/fake_apiserver/`): discovery, creating a run's objects, watching pods become
//! ready, port-forward to real agents, EndpointSlice hints, service scaling, teardown, gc,
//! multi-cluster runs, and the failures a user meets first (unreachable cluster, bad
//! kubeconfig, wrong credentials, an image that cannot be pulled). The requests kube-rs makes
//! are checked: paths, label selectors, bodies.
//!
//! `live_cluster_run` runs a scenario on a real cluster, only when `ZONEBENCH_TEST_KUBECONFIG`
//! names a kubeconfig (see the README's kube section).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fake_apiserver::{fixture, kubeconfig};
use crate::support::kube_client::{discovered, fake_api, fake_cluster, Pods, KIND};
use crate::support::scratch;
use serde_json::Value;
use zonebench::model::{AgentPort, AgentRequest};
use zonebench::platform::kube::{self, manifests, services};
use zonebench::platform::Platform as _;

/// A kind cluster's nodes with Cilium as CNI and kube-proxy replacement, as recorded.
const CILIUM: &[&str] = &["kind-nodes.json", "cilium-daemonsets.json", "cilium-config.json"];

fn zonebench() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"))
}

#[tokio::test]
async fn discovery_reads_zones_cpu_readiness_and_the_fingerprint_of_a_kind_cluster() {
    let c = fake_cluster("kube-discover-kind", Pods::Ready, KIND).await;
    let cluster = c.connect().await;
    assert_eq!(cluster.version, "v1.33.1");
    assert_eq!(cluster.context, "kind-zb");
    let t = kube::discovery::discover(&cluster).await.unwrap();
    // The control plane carries no zone (and is tainted): agents never go there.
    assert_eq!(t.nodes.len(), 6);
    assert_eq!(t.zones(), vec!["a", "b", "c"]);
    let w3 = t.nodes.iter().find(|n| n.name == "zb-worker3").unwrap();
    assert_eq!((w3.zone.as_str(), w3.cpu_millis, w3.ready), ("b", 1950, true));
    let fp = &t.fingerprint;
    assert_eq!(fp.platform, "kube");
    assert_eq!(fp.kernel, "6.8.0-45-generic");
    assert_eq!(fp.extra["cni"], "kindnet");
    assert_eq!(fp.extra["kube_proxy_mode"], "iptables");
    assert_eq!(fp.extra["kubernetes_version"], "v1.33.1");
    assert_eq!(fp.extra["control_plane_nodes"], "1");
    assert_eq!(fp.extra["server"], c.api.url());
    let lines: Vec<String> = c.api.requests().iter().map(|r| r.line()).collect();
    for want in [
        "GET /version",
        "GET /api/v1/nodes",
        "GET /apis/apps/v1/daemonsets",
        "GET /api/v1/namespaces/kube-system/configmaps/kube-proxy",
        "GET /api/v1/namespaces/kube-system/configmaps/cilium-config",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "no {want} in {lines:#?}");
    }
    assert!(c.api.writes().is_empty(), "discovery must not write: {:?}", c.api.writes());
}

#[tokio::test]
async fn discovery_tells_eks_vpc_cni_ipvs_and_cilium_without_kube_proxy_apart() {
    let eks = ["eks-nodes.json", "eks-daemonsets.json", "eks-kube-proxy-config.json"];
    let eks = fake_cluster("kube-discover-eks", Pods::Ready, &eks).await;
    let t = kube::discovery::discover(&eks.connect().await).await.unwrap();
    let fp = &t.fingerprint;
    assert_eq!(fp.extra["cni"], "aws-vpc-cni");
    assert_eq!(fp.extra["kube_proxy_mode"], "ipvs");
    assert_eq!(fp.extra["instance_types"], "m5.large×5,m5.xlarge×1");
    assert_eq!(fp.extra["nodes_without_zone"], "1");
    assert_eq!(t.nodes.len(), 5);
    let ready = |name: &str| t.nodes.iter().find(|n| n.name == name).unwrap().ready;
    assert!(ready("ip-10-0-1-15.ec2.internal"));
    assert!(!ready("ip-10-0-3-44.ec2.internal"), "NotReady");
    assert!(!ready("ip-10-0-2-50.ec2.internal"), "cordoned");

    let cilium = fake_cluster("kube-discover-cilium", Pods::Ready, CILIUM).await;
    let t = kube::discovery::discover(&cilium.connect().await).await.unwrap();
    assert_eq!(t.fingerprint.extra["cni"], "cilium");
    assert_eq!(t.fingerprint.extra["kube_proxy_mode"], "none (cilium kube-proxy replacement)");
}

#[tokio::test]
async fn a_cluster_without_zone_labels_is_refused_with_a_hint() {
    let c = fake_cluster("kube-nozones", Pods::Ready, &[]).await;
    let mut nodes = fixture("kind-nodes.json");
    for n in nodes["items"].as_array_mut().unwrap() {
        n["metadata"]["labels"].as_object_mut().unwrap().remove("topology.kubernetes.io/zone");
    }
    c.api.load(nodes);
    let err = kube::discovery::discover(&c.connect().await).await.unwrap_err().to_string();
    assert!(err.contains("topology.kubernetes.io/zone") && err.contains(&c.api.url()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_labelled_objects_reaches_agents_through_port_forward_and_teardown_deletes_them() {
    let c = fake_cluster("kube-deploy", Pods::RunAgents, KIND).await;
    let mut p = c.platform("cafe0001").await;
    let agents = [
        AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false },
        AgentRequest { id: "cli-b-0".into(), node: "zb-worker4".into(), max_answer_qps: None, relay: false },
    ];
    let deployed = p.deploy(&agents).await.unwrap();
    assert_eq!(deployed.len(), 2);
    let srv = deployed.iter().find(|a| a.id == "srv-a-0").unwrap();
    assert_eq!((srv.zone.as_str(), srv.node.as_str()), ("a", "zb-worker"));
    assert_eq!((srv.tcp_port, srv.udp_port, srv.http_port), (7101, 7102, 7180));
    assert!(srv.ip.to_string().starts_with("127."), "{}", srv.ip);
    // The control API answers through the port-forward bridge, with the run's token.
    let client = zonebench::control_client::ControlClient::new(srv.control.clone(), srv.token.clone());
    let info = client.info().await.unwrap();
    assert_eq!(info["identity"]["id"], "srv-a-0", "{info}");

    let writes = c.api.writes();
    let lines: Vec<String> = writes.iter().map(|r| r.line()).collect();
    assert!(lines[0].starts_with("POST /api/v1/namespaces?"), "{lines:#?}");
    let ns_body = writes[0].body.as_ref().unwrap();
    assert_eq!(ns_body["metadata"]["name"], "zonebench-cafe0001");
    assert_eq!(ns_body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "zonebench");
    assert_eq!(ns_body["metadata"]["labels"]["zonebench.dev/run"], "cafe0001");
    assert_eq!(ns_body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    assert!(lines[1].starts_with("POST /api/v1/namespaces/zonebench-cafe0001/secrets"), "{lines:#?}");
    assert_eq!(writes[1].body.as_ref().unwrap()["stringData"]["token"], srv.token.as_str());
    let pods: Vec<&Value> =
        writes.iter().filter(|r| r.path.ends_with("/pods")).map(|r| r.body.as_ref().unwrap()).collect();
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert_eq!(pod["spec"]["containers"][0]["image"], "example.com/zonebench-agent:test");
        for (path, spec) in kube::pss::pod_specs(pod) {
            assert_eq!(kube::pss::restricted_violations(spec), Vec::<String>::new(), "{path}");
        }
    }
    let reqs = c.api.requests();
    let selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dzonebench%2Czonebench.dev%2Frun%3Dcafe0001";
    let pod_reads: Vec<&str> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/namespaces/zonebench-cafe0001/pods")
        .map(|r| r.query.as_str())
        .collect();
    // Readiness: a labelled list, then a labelled watch from its resourceVersion.
    assert!(pod_reads.first().is_some_and(|q| q.contains(selector) && !q.contains("watch")), "{pod_reads:#?}");
    assert!(pod_reads.iter().any(|q| q.contains(selector) && q.contains("watch=true")), "{pod_reads:#?}");
    let forwards: Vec<String> = reqs.iter().filter(|r| r.path.contains("portforward")).map(|r| r.line()).collect();
    assert!(
        forwards.iter().any(|l| l == "GET /api/v1/namespaces/zonebench-cafe0001/pods/srv-a-0/portforward?&ports=7100"),
        "{forwards:?}"
    );

    p.teardown().await.unwrap();
    let deletes: Vec<String> = c.api.writes().iter().filter(|r| r.method == "DELETE").map(|r| r.path.clone()).collect();
    assert_eq!(deletes, vec!["/api/v1/namespaces/zonebench-cafe0001"]);
    assert!(
        !c.api.names("", "namespaces").contains(&"zonebench-cafe0001".to_string()),
        "teardown waits until it is gone"
    );
    assert!(c.api.names("zonebench-cafe0001", "pods").is_empty());
    // Teardown is idempotent: a second call sends nothing.
    let before = c.api.requests().len();
    p.teardown().await.unwrap();
    assert_eq!(c.api.requests().len(), before);
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_deploy_at_once_and_teardown_leaves_nothing() {
    let c = fake_cluster("kube-pullfail", Pods::ImagePullBackOff, KIND).await;
    let mut p = c.platform("cafe0002").await;
    let started = Instant::now();
    let err = p
        .deploy(&[AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false }])
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("srv-a-0") && msg.contains("ImagePullBackOff") && msg.contains(&c.api.url()), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(60), "it must not wait for kube.ready_timeout");
    p.teardown().await.unwrap();
    assert!(c.api.names("zonebench-cafe0002", "pods").is_empty());
    assert!(!c.api.names("", "namespaces").contains(&"zonebench-cafe0002".to_string()));
}

#[tokio::test]
async fn endpoint_slice_hints_are_read_as_the_controller_wrote_them() {
    let fixtures = ["namespace-leftover.json", "service-topology-auto.json", "endpointslices-topology-auto.json"];
    let c = fake_cluster("kube-hints", Pods::Ready, &fixtures).await;
    let cluster = c.connect().await;
    let h = services::live_hints(&cluster, "zonebench-feed0001", "zb-echo-topology-auto").await.unwrap();
    assert_eq!(h.topology_mode.as_deref(), Some("Auto"));
    assert_eq!(h.endpoints.len(), 3);
    for e in &h.endpoints {
        assert_eq!(e.for_zones, vec![e.zone.clone().unwrap()], "{e:?}");
    }
    assert!(c
        .api
        .requests()
        .iter()
        .any(|r| r.path == "/apis/discovery.k8s.io/v1/namespaces/zonebench-feed0001/endpointslices"
            && r.query.contains("labelSelector=kubernetes.io%2Fservice-name%3Dzb-echo-topology-auto")));
    let waited = services::wait_for_endpoints(
        &cluster,
        "zonebench-feed0001",
        "zb-echo-topology-auto",
        3,
        true,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(waited, h);
    // Fewer endpoints than pods after the wait is an error naming the Service.
    let err = services::wait_for_endpoints(
        &cluster,
        "zonebench-feed0001",
        "zb-echo-topology-auto",
        4,
        false,
        Duration::from_millis(600),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("zb-echo-topology-auto") && err.contains("3 of 4"), "{err}");
}

#[tokio::test]
async fn endpoints_published_later_are_waited_for_and_variant_services_carry_their_routing() {
    let c = fake_cluster("kube-variants", Pods::Ready, &["namespace-leftover.json"]).await;
    let cluster = c.connect().await;
    let run = manifests::RunMeta { run_id: "feed0001".into(), scenario: "quick".into() };
    let created = services::create_variant_services(&cluster, &run, &manifests::RoutingVariant::ALL).await.unwrap();
    assert_eq!(created.len(), 4);
    let bodies: Vec<Value> = c
        .api
        .writes()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/zonebench-feed0001/services")
        .map(|r| r.body.clone().unwrap())
        .collect();
    let body = |name: &str| bodies.iter().find(|b| b["metadata"]["name"] == name).unwrap().clone();
    assert_eq!(body("zb-echo-topology-auto")["metadata"]["annotations"]["service.kubernetes.io/topology-mode"], "Auto");
    assert_eq!(body("zb-echo-prefer-close")["spec"]["trafficDistribution"], "PreferClose");
    assert_eq!(body("zb-echo-prefer-same-zone")["spec"]["trafficDistribution"], "PreferSameZone");
    assert!(body("zb-echo-none")["spec"].get("trafficDistribution").is_none());

    // The controller publishes the slice a moment later, first without hints, then with.
    let mut slice = fixture("endpointslices-topology-auto.json")["items"][0].clone();
    let with_hints = slice.clone();
    for e in slice["endpoints"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("hints");
    }
    let publisher = {
        let api = c.api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            api.update(slice);
            tokio::time::sleep(Duration::from_millis(700)).await;
            api.update(with_hints);
        })
    };
    let h = services::wait_for_endpoints(
        &cluster,
        "zonebench-feed0001",
        "zb-echo-topology-auto",
        3,
        true,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    publisher.await.unwrap();
    assert!(h.endpoints.iter().all(|e| !e.for_zones.is_empty()), "{h:?}");
}

#[tokio::test]
async fn service_scaling_creates_and_deletes_selectorless_services_in_batches_with_progress() {
    let c = fake_cluster("kube-scale", Pods::Ready, &["namespace-leftover.json"]).await;
    let cluster = c.connect().await;
    let run = manifests::RunMeta { run_id: "feed0001".into(), scenario: "quick".into() };
    let echo = [
        manifests::EchoEndpoint {
            pod: "srv-a-0".into(),
            ip: "10.244.1.5".into(),
            node: "zb-worker".into(),
            zone: "a".into(),
        },
        manifests::EchoEndpoint {
            pod: "srv-b-0".into(),
            ip: "10.244.3.7".into(),
            node: "zb-worker3".into(),
            zone: "b".into(),
        },
    ];
    let ports = [AgentPort::Tcp, AgentPort::Udp];
    let names: Vec<String> = (1..=5).map(zonebench::plan::service_name).collect();
    let objects = names
        .iter()
        .map(|n| {
            (manifests::selectorless_service(&run, n, &ports), manifests::run_endpoint_slice(&run, n, &ports, &echo))
        })
        .collect();
    let mut seen = Vec::new();
    let created = services::create_written_services(&cluster, &run.namespace(), objects, 2, |d, t| seen.push((d, t)))
        .await
        .unwrap();
    assert_eq!(seen, vec![(2, 5), (4, 5), (5, 5)]);
    assert_eq!(created.len(), 5);
    assert!(created.iter().all(|s| s.spec.as_ref().unwrap().cluster_ip.is_some()), "the server's answers are returned");
    let mut listed = c.api.names("zonebench-feed0001", "services");
    listed.sort();
    assert_eq!(listed, names);
    let slice = c.api.object("zonebench-feed0001", "endpointslices", "svc-00003").unwrap();
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "svc-00003");
    assert_eq!(slice["endpoints"][1]["addresses"][0], "10.244.3.7");
    let svc = c.api.object("zonebench-feed0001", "services", "svc-00003").unwrap();
    assert!(svc["spec"].get("selector").is_none(), "scaling Services select no pods: {svc}");

    let mut seen = Vec::new();
    services::delete_written_services(&cluster, &run.namespace(), &names, 3, |d, t| seen.push((d, t))).await.unwrap();
    assert_eq!(seen, vec![(3, 5), (5, 5)]);
    assert!(c.api.names("zonebench-feed0001", "services").is_empty());
    assert!(c.api.names("zonebench-feed0001", "endpointslices").is_empty());
}

#[tokio::test]
async fn node_inspector_reports_are_read_from_its_pods_logs() {
    let c = fake_cluster("kube-inspect", Pods::Ready, &["namespace-leftover.json"]).await;
    c.api.load(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "zb-inspect-nodes-x1",
        "namespace": "zonebench-feed0001-inspect", "labels": {"app.kubernetes.io/name": "zonebench-inspector",
        "zonebench.dev/run": "feed0001"}}, "spec": {"containers": [{"name": "inspect"}]}, "status": {"phase": "Running"}}));
    c.api.set_log(
        "zb-inspect-nodes-x1",
        "{\"node\":\"zb-worker\",\"iptables_rules\":1042,\"iptables_legacy_rules\":0,\"nft_rules\":0,\"sync_seconds_sum\":2.5,\"sync_count\":40}\n",
    );
    let cluster = c.connect().await;
    let run = manifests::RunMeta { run_id: "feed0001".into(), scenario: "quick".into() };
    let reports = kube::inspect::node_reports(&cluster, &run).await.unwrap();
    assert_eq!(reports.len(), 1);
    let r = reports["zb-inspect-nodes-x1"].as_ref().expect("a report");
    assert_eq!((r.node.as_str(), r.iptables_rules), ("zb-worker", Some(1042)));
    assert!(c
        .api
        .requests()
        .iter()
        .any(|r| r.path == "/api/v1/namespaces/zonebench-feed0001-inspect/pods/zb-inspect-nodes-x1/log"
            && r.query.contains("tailLines=5")));
}

#[tokio::test]
async fn gc_deletes_old_run_namespaces_found_by_label_and_spares_the_rest() {
    let c = fake_cluster("kube-gc", Pods::Ready, &["namespace-leftover.json"]).await;
    let mut young = fixture("namespace-leftover.json");
    young["metadata"]["name"] = "zonebench-young001".into();
    young["metadata"]["creationTimestamp"] = serde_json::json!(zonebench::model::now_rfc3339());
    c.api.load(young);
    let cluster = c.connect().await;

    let dry = kube::gc::gc(&cluster, Duration::from_secs(3600), true).await.unwrap();
    assert_eq!(dry.len(), 1);
    assert!(c.api.writes().is_empty(), "a dry run deletes nothing");

    let found = kube::gc::gc(&cluster, Duration::from_secs(3600), false).await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].deleted);
    assert_eq!((found[0].namespace.as_str(), found[0].scenario.as_str()), ("zonebench-feed0001", "quick"));
    let list = c.api.requests().into_iter().find(|r| r.path == "/api/v1/namespaces").unwrap();
    assert!(list.query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dzonebench"), "{}", list.query);
    let deletes: Vec<String> = c.api.writes().iter().map(|r| r.line()).collect();
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].starts_with("DELETE /api/v1/namespaces/zonebench-feed0001"), "{deletes:?}");

    // The command line says what it did.
    let out = zonebench()
        .arg("gc")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--older-than")
        .arg("0s")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("zonebench-young001"), "{stdout}");
}

const SMALL: &str = r#"
name = "kubesmall"
[kube]
allow_cidrs = ["127.0.0.0/8"]
[defaults]
duration = "300ms"
warmup = "100ms"
[[tests]]
kind = "tcp-rr"
pairs = "same-zone"
[[tests]]
kind = "http"
pairs = "cross-zone"
connections = 2
"#;

fn read_results(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_run_measures_every_pair_through_port_forward_and_deletes_its_namespace() {
    let c = fake_cluster("kube-run", Pods::RunAgents, KIND).await;
    std::fs::write(c.dir.join("small.toml"), SMALL).unwrap();
    let out = zonebench()
        .args(["run", "--backend", "kube", "--image", "example.com/agent:t", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .arg(c.dir.join("small.toml"))
        .arg("--out")
        .arg(c.dir.join("out"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("platform: kube"), "{stderr}");
    let r = read_results(&c.dir.join("out"));
    assert_eq!(r["status"], "complete");
    assert_eq!(r["fingerprint"]["platform"], "kube");
    assert_eq!(r["fingerprint"]["extra"]["cni"], "kindnet");
    let ms = r["measurements"].as_array().unwrap();
    assert_eq!(ms.iter().filter(|m| m["test"] == "tcp-rr").count(), 3);
    assert_eq!(ms.iter().filter(|m| m["test"] == "http").count(), 6);
    for m in ms {
        let server = m["server"]["agent"].as_str().unwrap();
        assert!(m["servers"][server].as_u64().unwrap() > 0, "{m:#}");
        assert_eq!(m["server"]["zone"].as_str().unwrap(), &server[4..5]);
    }
    // Six pods (server and client per zone), all gone with the namespace.
    let created: Vec<String> = c
        .api
        .writes()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(created.len(), 6);
    let ns = created[0].split('/').nth(4).unwrap().to_string();
    assert!(c.api.writes().iter().any(|r| r.method == "DELETE" && r.path == format!("/api/v1/namespaces/{ns}")));
    assert!(!c.api.names("", "namespaces").contains(&ns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_contexts_run_each_cluster_into_one_run_with_the_label_as_variant() {
    let a = fake_cluster("kube-multi", Pods::RunAgents, KIND).await;
    let b = fake_api(&a.dir, Pods::RunAgents, CILIUM).await;
    let dir = &a.dir;
    let kc = kubeconfig(dir, &[("ctx-a", &a.api.url()), ("ctx-b", &b.url())]);
    std::fs::write(dir.join("small.toml"), SMALL.replace("pairs = \"cross-zone\"", "pairs = \"same-zone\"")).unwrap();
    let out = zonebench()
        .args(["run", "--backend", "kube", "--context", "A=ctx-a", "--context", "B=ctx-b", "--kubeconfig"])
        .arg(&kc)
        .arg(dir.join("small.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The summary keeps the clusters apart.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tcp-rr [A]: p50 latency") && stdout.contains("tcp-rr [B]: p50 latency"), "{stdout}");
    let r = read_results(&dir.join("out"));
    let ms = r["measurements"].as_array().unwrap();
    let variants = |v: &str| ms.iter().filter(|m| m["variant"] == v).count();
    assert_eq!((variants("A"), variants("B")), (6, 6), "{r:#}");
    let extra = &r["fingerprint"]["extra"];
    assert_eq!(extra["A.cni"], "kindnet");
    assert_eq!(extra["B.cni"], "cilium");
    assert_eq!(extra["B.kube_proxy_mode"], "none (cilium kube-proxy replacement)");
    assert_eq!(r["fingerprint"]["nodes"], 12);
    for api in [&*a.api, &b] {
        assert!(
            api.names("", "namespaces").iter().all(|n| !n.starts_with("zonebench-")),
            "{:?}",
            api.names("", "namespaces")
        );
        assert!(api.writes().iter().any(|w| w.method == "DELETE"));
    }
}

/// Runs `zonebench run --backend kube --kubeconfig <kc>` and returns (stderr, elapsed), after
/// checking it failed, quickly, and wrote no run directory.
async fn failing_run(dir: &Path, kc: &Path, extra: &[&str]) -> String {
    std::fs::write(dir.join("small.toml"), SMALL).unwrap();
    let started = Instant::now();
    let out = zonebench()
        .args(["run", "--backend", "kube", "--kubeconfig"])
        .arg(kc)
        .args(extra)
        .arg(dir.join("small.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}: {stderr}");
    assert!(!dir.join("out").exists(), "a run that reached no cluster writes no results");
    stderr
}

#[tokio::test]
async fn an_unreachable_cluster_fails_fast_naming_server_context_and_cause() {
    let dir = scratch("kube-unreachable");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let kc = kubeconfig(&dir, &[("gone", &server)]);
    let stderr = failing_run(&dir, &kc, &[]).await;
    assert!(stderr.contains(&server) && stderr.contains("context gone"), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_deadline() {
    let dir = scratch("kube-silent");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", l.local_addr().unwrap());
    // Accepts and holds connections, never answers.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            held.push(c);
        }
    });
    let kc = kubeconfig(&dir, &[("silent", &server)]);
    let stderr = failing_run(&dir, &kc, &[]).await;
    assert!(stderr.contains(&server) && stderr.contains("no answer"), "{stderr}");
    hold.abort();
}

#[tokio::test]
async fn a_malformed_kubeconfig_or_unknown_context_is_named_with_the_cause() {
    let dir = scratch("kube-malformed");
    let kc = dir.join("broken-kubeconfig");
    std::fs::write(&kc, "apiVersion: v1\nclusters: [ {name: x\n").unwrap();
    let stderr = failing_run(&dir, &kc, &[]).await;
    assert!(stderr.contains(&kc.display().to_string()), "{stderr}");

    let good = kubeconfig(&dir, &[("only", "http://127.0.0.1:1")]);
    let stderr = failing_run(&dir, &good, &["--context", "other"]).await;
    assert!(stderr.contains("no context \"other\"") && stderr.contains("only"), "{stderr}");

    let missing = dir.join("no-such-file");
    let stderr = failing_run(&dir, &missing, &[]).await;
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn wrong_credentials_fail_before_anything_is_created() {
    let c = fake_cluster("kube-unauthorized", Pods::Ready, KIND).await;
    c.api.deny_all();
    let stderr = failing_run(&c.dir, &c.kubeconfig, &[]).await;
    assert!(stderr.contains(&c.api.url()) && stderr.contains("Unauthorized"), "{stderr}");
    assert!(c.api.writes().is_empty(), "created: {:?}", c.api.writes());
}

#[tokio::test]
async fn bad_cluster_flags_are_usage_errors() {
    for args in [
        vec!["run", "--backend", "kube", "--context", "A=x", "--context", "y"],
        vec!["run", "--backend", "kube", "--context", "A=x", "--context", "A=y"],
        vec!["run", "--backend", "local", "--context", "x"],
    ] {
        let out = zonebench().args(&args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A real cluster, only when `ZONEBENCH_TEST_KUBECONFIG` names its kubeconfig (optionally
/// `ZONEBENCH_TEST_CONTEXT`, and `ZONEBENCH_TEST_IMAGE` for the agent image the cluster can
/// pull): runs scenarios/quick.toml shortened, and checks the run's namespace is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_cluster_run() {
    let Ok(kc) = std::env::var("ZONEBENCH_TEST_KUBECONFIG") else {
        eprintln!("skipped: ZONEBENCH_TEST_KUBECONFIG is not set");
        return;
    };
    let dir = scratch("kube-live");
    let mut cmd = zonebench();
    cmd.args(["run", "--backend", "kube", "--kubeconfig", &kc, "--set", "defaults.duration=1s"]);
    if let Ok(ctx) = std::env::var("ZONEBENCH_TEST_CONTEXT") {
        cmd.args(["--context", &ctx]);
    }
    if let Ok(image) = std::env::var("ZONEBENCH_TEST_IMAGE") {
        cmd.args(["--image", &image]);
    }
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quick.toml");
    let out = cmd.arg(scenario).arg("--out").arg(dir.join("out")).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = read_results(&dir.join("out"));
    assert_eq!(r["fingerprint"]["platform"], "kube");
    assert!(!r["measurements"].as_array().unwrap().is_empty());
    let gc = zonebench().args(["gc", "--dry-run", "--older-than", "0s", "--kubeconfig", &kc]).output().await.unwrap();
    let listed = String::from_utf8_lossy(&gc.stdout);
    let ns = stderr.split("namespace ").nth(1).and_then(|s| s.split(')').next()).unwrap_or("?").to_string();
    assert!(!listed.contains(&format!("would delete {ns}")), "the run left {ns}: {listed}");
}

fn signal(child: &tokio::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_keeps_the_measurements_and_deletes_the_namespace() {
    let c = fake_cluster("kube-sigterm", Pods::RunAgents, KIND).await;
    std::fs::write(c.dir.join("long.toml"), SMALL.replace("duration = \"300ms\"", "duration = \"1s\"")).unwrap();
    let out_dir = c.dir.join("out");
    let child = zonebench()
        .args(["run", "--backend", "kube", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .arg(c.dir.join("long.toml"))
        .arg("--out")
        .arg(&out_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no measurement within 60 s");
        let measured = std::fs::read_to_string(out_dir.join("results.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["measurements"].as_array().is_some_and(|m| !m.is_empty()));
        if measured {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let r = read_results(&out_dir);
    assert_eq!(r["status"], "interrupted", "{stderr}");
    assert!(!r["measurements"].as_array().unwrap().is_empty());
    assert!(c.api.writes().iter().any(|w| w.method == "DELETE" && w.path.starts_with("/api/v1/namespaces/zonebench-")));
    assert!(c.api.names("", "namespaces").iter().all(|n| !n.starts_with("zonebench-")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_while_pods_start_still_deletes_the_namespace() {
    let c = fake_cluster("kube-sigint-deploy", Pods::Ready, KIND).await;
    // Pods never become ready here: the signal lands while the run waits for them.
    c.api.hold_pods();
    std::fs::write(c.dir.join("small.toml"), SMALL).unwrap();
    let child = zonebench()
        .args(["run", "--backend", "kube", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .arg(c.dir.join("small.toml"))
        .arg("--out")
        .arg(c.dir.join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.api.writes().iter().any(|w| w.path.ends_with("/pods")) {
        assert!(Instant::now() < deadline, "no pod created within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        c.api.writes().iter().any(|w| w.method == "DELETE" && w.path.starts_with("/api/v1/namespaces/zonebench-")),
        "{stderr}"
    );
    assert!(c.api.names("", "namespaces").iter().all(|n| !n.starts_with("zonebench-")), "{stderr}");
}

#[tokio::test]
async fn render_discover_places_agents_on_the_clusters_nodes_and_writes_nothing() {
    let c = fake_cluster("kube-render-discover", Pods::Ready, KIND).await;
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quick.toml");
    let out = zonebench()
        .arg("render")
        .arg(&scenario)
        .arg("--discover")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let node_of = |pod: &str| -> String {
        let p = docs.iter().find(|d| d["kind"] == "Pod" && d["metadata"]["name"] == pod).unwrap();
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchFields"][0]["values"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Servers on each zone's first ready node, clients on its second; never the control plane.
    assert_eq!(node_of("srv-a-0"), "zb-worker");
    assert_eq!(node_of("cli-a-0"), "zb-worker2");
    assert_eq!(node_of("srv-c-0"), "zb-worker5");
    assert!(c.api.writes().is_empty(), "render wrote: {:?}", c.api.writes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_services_are_deployed_with_the_agents_and_their_hints_read_back() {
    let c = fake_cluster("kube-variant-deploy", Pods::RunAgents, KIND).await;
    let mut options = c.options("feed0001");
    options.variants = vec![manifests::RoutingVariant::TopologyAuto];
    let mut p = discovered(options).await;
    p.deploy(&[AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false }])
        .await
        .unwrap();
    let svc = c.api.object("zonebench-feed0001", "services", "zb-echo-topology-auto").unwrap();
    assert_eq!(svc["metadata"]["annotations"]["service.kubernetes.io/topology-mode"], "Auto");
    // The EndpointSlice controller's work, as recorded.
    c.api.load(fixture("endpointslices-topology-auto.json"));
    let hints = p.variant_hints(3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(hints.len(), 1);
    assert_eq!(hints[0].service, "zb-echo-topology-auto");
    assert!(hints[0].endpoints.iter().all(|e| e.for_zones.len() == 1));
    p.teardown().await.unwrap();
    assert!(c.api.names("zonebench-feed0001", "services").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_services_creates_a_routed_clusterip_service_per_request_over_labelled_backends_and_deletes_dropped_ones()
{
    use zonebench::model::RoutingMode;
    use zonebench::model::ServiceRequest;
    let c = fake_cluster("kube-apply-services", Pods::RunAgents, KIND).await;
    let mut p = c.platform("feed0002").await;
    let deployed = p
        .deploy(&[
            AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false },
            AgentRequest { id: "srv-b-0".into(), node: "zb-worker3".into(), max_answer_qps: None, relay: false },
            AgentRequest { id: "cli-a-0".into(), node: "zb-worker2".into(), max_answer_qps: None, relay: false },
        ])
        .await
        .unwrap();
    let ip_of = |id: &str| deployed.iter().find(|a| a.id == id).unwrap().ip.to_string();
    let echo = ServiceRequest {
        name: "echo".into(),
        backends: vec!["srv-a-0".into(), "srv-b-0".into()],
        ports: vec![AgentPort::Tcp, AgentPort::Http],
        routing: RoutingMode::PreferClose,
        endpoints: Default::default(),
    };
    let applied = p.apply_services(std::slice::from_ref(&echo), None).await.unwrap();
    let ns = "zonebench-feed0002";
    let svc = c.api.object(ns, "services", "echo").unwrap();
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["trafficDistribution"], "PreferClose");
    assert!(svc["metadata"]["annotations"].is_null(), "{svc}");
    assert_eq!(svc["spec"]["selector"]["zonebench.dev/run"], "feed0002");
    assert_eq!(svc["spec"]["selector"]["svc.zonebench.dev/echo"], "backend");
    let ports: Vec<(String, i64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["port"].as_i64().unwrap()))
        .collect();
    assert_eq!(ports, vec![("tcp".to_string(), 7101), ("http".to_string(), 7180)]);
    // Exactly the backends carry the Service's label; the client does not.
    let labelled = |pod: &str, svc: &str| {
        !c.api.object(ns, "pods", pod).unwrap()["metadata"]["labels"][format!("svc.zonebench.dev/{svc}")].is_null()
    };
    assert!(labelled("srv-a-0", "echo") && labelled("srv-b-0", "echo") && !labelled("cli-a-0", "echo"));
    // The answer: the Service's ClusterIP and ports, and the doctor's verdict beside what the
    // controller wrote (the fake's controller writes each endpoint's own zone).
    assert_eq!(applied.dataplane.as_str(), "iptables");
    assert_eq!(applied.probe, None);
    let d = &applied.services[0];
    assert_eq!(d.ip.to_string(), svc["spec"]["clusterIP"].as_str().unwrap());
    assert_eq!(d.address(AgentPort::Http).unwrap().port(), 7180);
    assert_eq!(d.address(AgentPort::Udp), None);
    let h = d.hints.as_ref().unwrap();
    assert_eq!(h.mode, RoutingMode::PreferClose);
    assert!(h.enabled, "{h:?}");
    let written = h.explanation.last().unwrap();
    assert!(written.contains("hints on 2 of 2"), "{written}");
    assert!(written.contains(&format!("{}→a", ip_of("srv-a-0"))), "{written}");
    assert!(written.contains(&format!("{}→b", ip_of("srv-b-0"))), "{written}");
    // The EndpointSlices were read, by the Service's name.
    assert!(c
        .api
        .requests()
        .iter()
        .any(|r| r.path == format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
            && r.query.contains("kubernetes.io%2Fservice-name%3Decho")));

    // A second call with another Service: the dropped one and its labels go.
    let auto = ServiceRequest {
        name: "echo-auto".into(),
        backends: vec!["srv-b-0".into()],
        ports: vec![AgentPort::Udp],
        routing: RoutingMode::Auto,
        endpoints: Default::default(),
    };
    let applied = p.apply_services(std::slice::from_ref(&auto), None).await.unwrap();
    assert_eq!(c.api.names(ns, "services"), vec!["echo-auto".to_string()]);
    let svc = c.api.object(ns, "services", "echo-auto").unwrap();
    assert_eq!(svc["metadata"]["annotations"]["service.kubernetes.io/topology-mode"], "Auto");
    assert!(svc["spec"]["trafficDistribution"].is_null());
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
    assert!(!labelled("srv-a-0", "echo") && !labelled("srv-b-0", "echo") && labelled("srv-b-0", "echo-auto"));
    assert_eq!(applied.services[0].hints.as_ref().unwrap().mode, RoutingMode::Auto);
    // The same Service again without routing: replaced, so the annotation is gone too.
    let plain = ServiceRequest { routing: RoutingMode::None, ..auto.clone() };
    let applied = p.apply_services(std::slice::from_ref(&plain), None).await.unwrap();
    let svc = c.api.object(ns, "services", "echo-auto").unwrap();
    assert!(svc["metadata"]["annotations"].is_null(), "{svc}");
    let h = applied.services[0].hints.as_ref().unwrap();
    assert_eq!((h.mode.as_str(), h.enabled), ("none", false));
    assert!(h.explanation.last().unwrap().contains("hints on 0 of 1"), "{h:?}");

    // Bad requests are named.
    let err = p
        .apply_services(&[ServiceRequest { backends: vec!["srv-z-9".into()], ..auto.clone() }], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("srv-z-9") && err.contains("not deployed"), "{err}");
    let err = p.set_service_dataplane(zonebench::model::DataplaneKind::Nftables).await.unwrap_err().to_string();
    assert!(err.contains("cluster's"), "{err}");
    p.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_run_with_a_routing_variant_measures_via_the_service_it_created() {
    let c = fake_cluster("kube-run-service", Pods::RunAgents, KIND).await;
    let scenario = r#"
name = "kubesvc"
[kube]
allow_cidrs = ["127.0.0.0/8"]
[defaults]
duration = "300ms"
warmup = "100ms"
[topology]
modes = ["prefer-close"]
[[topology.placements]]
endpoints_per_zone = [1, 1, 1]
[[tests]]
kind = "tcp-crr"
via = "service"
"#;
    std::fs::write(c.dir.join("svc.toml"), scenario).unwrap();
    let out = zonebench()
        .args(["run", "--backend", "kube", "--image", "example.com/agent:t", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .arg(c.dir.join("svc.toml"))
        .arg("--out")
        .arg(c.dir.join("out"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    // The Service as created: its routing and its selector on the per-Service backend label.
    let created: Vec<Value> = c
        .api
        .writes()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/services"))
        .map(|r| r.body.unwrap())
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    let svc = &created[0];
    let name = svc["metadata"]["name"].as_str().unwrap();
    assert_eq!(svc["spec"]["trafficDistribution"], "PreferClose");
    assert_eq!(svc["spec"]["selector"][format!("svc.zonebench.dev/{name}")], "backend");
    let labelled: Vec<String> = c
        .api
        .writes()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!labelled.is_empty() && labelled.iter().all(|p| p.starts_with("srv-")), "{labelled:?}");
    // Measured through it: the fake gives the Service its first backend's address (it has no
    // kube-proxy to route a virtual IP), which the measurements target and are answered from.
    let r = read_results(&c.dir.join("out"));
    assert_eq!(r["status"], "complete");
    let ms: Vec<&Value> = r["measurements"].as_array().unwrap().iter().filter(|m| m["via"] == "service").collect();
    assert!(!ms.is_empty(), "{r:#}");
    for m in &ms {
        assert!(m["target"].as_str().unwrap().starts_with("127."), "{m:#}");
        assert!(!m["servers"].as_object().unwrap().is_empty(), "{m:#}");
    }
    let text = r.to_string();
    assert!(text.contains("EndpointSlice controller wrote zone hints on"), "the verdict is recorded: {text}");
}
