//! The fake API server's cluster behaviour that the service-scaling sweep and the node
//! inspector rely on, checked through kube-rs as zonebench calls it: its kube-proxy (a
//! selector-less Service's ClusterIP forwards to the endpoints of the EndpointSlice the
//! client wrote, only after the programming delay, and stops with the Service, the slice or
//! the namespace), its DaemonSet controller (one pod per node the template tolerates, with
//! the template's labels and the logs a test sets), and list, get, watch and delete of
//! `endpointslices` and `daemonsets` by label selector. Traffic goes to loopback only: real
//! agents started by the fake's kubelet, behind ClusterIPs in the fake's own address slot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::fake_apiserver::{FakeApi, Kubelet, LEASE_PORT};
use crate::support::kube_client::{fake_cluster, Pods, KIND};
use ::kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zonebench::model::{AgentPort, AgentRequest};
use zonebench::platform::kube::{self, manifests};
use zonebench::platform::lab::{AGENT_HTTP_PORT, AGENT_TCP_PORT};
use zonebench::platform::Platform as _;

/// The ports of the Services these tests create: every agent port.
const ALL_PORTS: [AgentPort; 3] = [AgentPort::Tcp, AgentPort::Udp, AgentPort::Http];

fn post() -> PostParams {
    PostParams::default()
}

fn is_refused(r: &std::io::Result<TcpStream>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Connects as the sweep's probe does: attempts of at most 100 ms, every 5 ms, until one is
/// accepted (or `within` passes: a failure). Returns the connection and when it was made.
async fn probe(addr: SocketAddr, within: Duration) -> (TcpStream, Instant) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            return (s, Instant::now());
        }
        assert!(Instant::now() < deadline, "{addr} accepted no connection within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until connects to `addr` are refused (teardown is asynchronous, as on a cluster).
async fn refused_within(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = TcpStream::connect(addr).await;
        if is_refused(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} still answers {within:?} after its teardown: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP GET on a fresh connection through `addr`: the id of the agent that answered.
async fn served_by(addr: SocketAddr) -> String {
    let (mut s, _) = probe(addr, Duration::from_secs(5)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: zb\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-zonebench-server: "))
        .unwrap_or_else(|| panic!("no server id in {answer}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selectorless_services_clusterip_forwards_to_its_slices_agents_only_after_the_programming_delay_and_stops_when_deleted(
) {
    let c = fake_cluster("kube-fake-proxy", Pods::RunAgents, KIND).await;
    let delay = Duration::from_millis(800);
    c.api.set_programming_delay(delay);
    let mut p = c.platform("feed0003").await;
    let deployed = p
        .deploy(&[
            AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false },
            AgentRequest { id: "srv-b-0".into(), node: "zb-worker3".into(), max_answer_qps: None, relay: false },
        ])
        .await
        .unwrap();
    let echo: Vec<manifests::EchoEndpoint> = deployed
        .iter()
        .map(|a| manifests::EchoEndpoint {
            pod: manifests::pod_name(&a.id).unwrap(),
            ip: a.ip.to_string(),
            node: a.node.clone(),
            zone: a.zone.clone(),
        })
        .collect();
    let run = p.run().clone();
    let ns = run.namespace();
    let client = p.cluster().unwrap().client.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);

    let svc = services
        .create(&post(), &manifests::selectorless_service(&run, &format!("zb-scale-{}", 0), &ALL_PORTS))
        .await
        .unwrap();
    let ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    // In this server's slot, apart from its pod addresses.
    let [a, slot, third, _] = ip.octets();
    assert_eq!((a, slot), (127, c.api.slot()), "{ip}");
    assert!(third >= 1, "{ip} is in the pod range 127.{slot}.0.0/24");
    assert!(deployed.iter().all(|d| d.ip != IpAddr::V4(ip)));
    let http = SocketAddr::from((ip, AGENT_HTTP_PORT));
    // No endpoints yet: nothing listens.
    assert!(is_refused(&TcpStream::connect(http).await));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_refused(&TcpStream::connect(http).await));

    let written = Instant::now();
    slices
        .create(&post(), &manifests::run_endpoint_slice(&run, &format!("zb-scale-{}", 0), &ALL_PORTS, &echo))
        .await
        .unwrap();
    // Within the programming delay connects are still refused (unless this machine stalled
    // past the delay, when forwarding may rightly have begun).
    let early = TcpStream::connect(http).await;
    assert!(is_refused(&early) || written.elapsed() >= delay, "forwarded before the delay: {early:?}");
    let (_, connected) = probe(http, Duration::from_secs(10)).await;
    let programmed = c.api.programmed_at(&ns, "zb-scale-0").unwrap();
    assert!(programmed >= written + delay, "programmed {:?} after the slice", programmed - written);
    assert!(connected >= programmed);
    // TCP ports only, on the ClusterIP.
    let mut listening = c.api.forwarding(&ns, "zb-scale-0");
    listening.sort();
    let tcp = SocketAddr::from((ip, AGENT_TCP_PORT));
    assert_eq!(listening, vec![tcp, http]);
    assert!(is_refused(&TcpStream::connect(SocketAddr::from((ip, manifests::AGENT_CONTROL_PORT))).await));
    // Each connection reaches a real agent, round-robin over the slice's endpoints.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(served_by(http).await);
    }
    assert_eq!(ids.iter().filter(|id| *id == "srv-a-0").count(), 2, "{ids:?}");
    assert_eq!(ids.iter().filter(|id| *id == "srv-b-0").count(), 2, "{ids:?}");

    // Two more, sooner programmed: one loses its slice, one goes with the namespace.
    c.api.set_programming_delay(Duration::from_millis(50));
    let mut addr_of = Vec::new();
    for i in 1..3 {
        let svc = services
            .create(&post(), &manifests::selectorless_service(&run, &format!("zb-scale-{}", i), &ALL_PORTS))
            .await
            .unwrap();
        let ip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        slices
            .create(&post(), &manifests::run_endpoint_slice(&run, &format!("zb-scale-{}", i), &ALL_PORTS, &echo))
            .await
            .unwrap();
        let addr = SocketAddr::from((ip, AGENT_HTTP_PORT));
        assert!(["srv-a-0", "srv-b-0"].contains(&served_by(addr).await.as_str()));
        addr_of.push(addr);
    }
    assert_eq!(
        addr_of.iter().map(|a| a.ip()).chain([IpAddr::V4(ip)]).collect::<std::collections::BTreeSet<_>>().len(),
        3
    );

    // Deleting the Service stops its forwarding; its slice, which the client wrote, stays
    // (as on a cluster: it has no owner).
    services.delete("zb-scale-0", &DeleteParams::default()).await.unwrap();
    assert!(c.api.forwarding(&ns, "zb-scale-0").is_empty());
    refused_within(http, Duration::from_secs(5)).await;
    refused_within(tcp, Duration::from_secs(5)).await;
    assert!(c.api.object(&ns, "endpointslices", "zb-scale-0").is_some());
    assert!(c.api.programmed_at(&ns, "zb-scale-0").is_some(), "kept after the teardown");
    // Deleting the slice of a live Service stops it too: without endpoints it is refused.
    slices.delete("zb-scale-1", &DeleteParams::default()).await.unwrap();
    refused_within(addr_of[0], Duration::from_secs(5)).await;
    assert!(c.api.object(&ns, "services", "zb-scale-1").is_some());
    assert!(["srv-a-0", "srv-b-0"].contains(&served_by(addr_of[1]).await.as_str()));
    // Deleting the namespace stops the rest.
    p.teardown().await.unwrap();
    refused_within(addr_of[1], Duration::from_secs(5)).await;
    assert!(c.api.forwarding(&ns, "zb-scale-2").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_gets_a_ready_pod_per_node_it_tolerates_with_its_template_labels_and_logs_the_test_sets() {
    let c = fake_cluster("kube-fake-daemonset", Pods::Ready, &["kind-nodes.json"]).await;
    let cluster = c.connect().await;
    let run = manifests::RunMeta { run_id: "feed0004".into(), scenario: "quick".into() };
    // The inspector's own (privileged) namespace, where it runs.
    let ns = run.inspector_namespace();
    Api::<Namespace>::all(cluster.client.clone()).create(&post(), &manifests::inspector_namespace(&run)).await.unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let inspector = manifests::inspector_daemonset(&run, "example.com/inspector:test");
    let template_labels = inspector.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let events = daemonsets.watch(&WatchParams::default().timeout(20), "0").await.unwrap();
    daemonsets.create(&post(), &inspector).await.unwrap();
    // Its status, watched as a client would, reaches every node ready; the control plane's
    // NoSchedule taint is tolerated by the inspector's `operator: Exists`.
    let ready = events
        .try_filter_map(|e| async move {
            Ok(match e {
                WatchEvent::Modified(ds) | WatchEvent::Added(ds) => ds.status.filter(|s| s.number_ready == 7),
                _ => None,
            })
        })
        .boxed()
        .next()
        .await;
    let status = ready.unwrap().unwrap();
    assert_eq!((status.desired_number_scheduled, status.number_available), (7, Some(7)));

    let selector = format!("{}=zonebench-inspector,{}={}", manifests::NAME_LABEL, manifests::RUN_LABEL, run.run_id);
    let list = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    let mut nodes: Vec<String> = Vec::new();
    for pod in &list {
        let spec = pod.spec.as_ref().unwrap();
        let node = spec.node_name.clone().unwrap();
        assert_eq!(pod.metadata.name.as_deref().unwrap(), format!("{}-{node}", manifests::INSPECTOR_NAME));
        assert_eq!(pod.metadata.labels.as_ref().unwrap(), &template_labels);
        assert_eq!(spec.containers[0].name, "inspect");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("DaemonSet", manifests::INSPECTOR_NAME));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.conditions.as_ref().unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip: Ipv4Addr = status.pod_ip.as_deref().unwrap().parse().unwrap();
        assert_eq!(&ip.octets()[..3], &[127, c.api.slot(), 0], "{ip}");
        nodes.push(node);
    }
    nodes.sort();
    let mut all: Vec<String> = c.api.names("", "nodes");
    all.sort();
    assert_eq!(nodes, all);
    // Not started as agents: nothing ran.
    assert!(c.api.agent_pids().is_empty());

    // Logs as set, cut to `tailLines`: the inspector reader asks for 5, so a report followed
    // by five other lines is not seen.
    let report = |node: &str, rules: u32| {
        format!(
            "{{\"node\":\"{node}\",\"iptables_rules\":{rules},\"iptables_legacy_rules\":0,\"nft_rules\":0,\"sync_seconds_sum\":1.5,\"sync_count\":30}}\n"
        )
    };
    let pod_of = |node: &str| format!("{}-{node}", manifests::INSPECTOR_NAME);
    c.api.set_log(&pod_of("zb-worker"), &format!("starting\n{}{}", report("zb-worker", 10), report("zb-worker", 12)));
    c.api.set_log(&pod_of("zb-worker2"), &format!("{}{}", report("zb-worker2", 7), "bash: noise\n".repeat(5)));
    let reports = kube::inspect::node_reports(&cluster, &run).await.unwrap();
    let seen: Vec<(&str, Option<u64>)> =
        reports.values().flatten().map(|r| (r.node.as_str(), r.iptables_rules)).collect();
    assert_eq!(seen, vec![("zb-worker", Some(12))]);
    let log = pods.logs(&pod_of("zb-worker"), &LogParams { tail_lines: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(log, format!("{}{}", report("zb-worker", 10), report("zb-worker", 12)));
    let whole = pods.logs(&pod_of("zb-worker"), &LogParams::default()).await.unwrap();
    assert!(whole.starts_with("starting\n"), "{whole}");
    let missing = pods.logs("no-such-pod", &LogParams::default()).await.unwrap_err();
    assert!(matches!(missing, ::kube::Error::Api(ref s) if s.code == 404), "{missing:?}");

    // A DaemonSet without tolerations stays off the tainted control plane; its pods go with it.
    let mut plain = inspector.clone();
    plain.metadata.name = Some("plain".into());
    plain.spec.as_mut().unwrap().template.spec.as_mut().unwrap().tolerations = None;
    daemonsets.create(&post(), &plain).await.unwrap();
    let plain_pods = || {
        let mut v: Vec<String> = c.api.names(&ns, "pods").into_iter().filter(|n| n.starts_with("plain-")).collect();
        v.sort();
        v
    };
    assert_eq!(plain_pods().len(), 6);
    assert!(!plain_pods().contains(&"plain-zb-control-plane".to_string()));
    daemonsets.delete("plain", &DeleteParams::default()).await.unwrap();
    assert!(plain_pods().is_empty());
    assert_eq!(c.api.names(&ns, "pods").len(), 7);

    // Deleting the namespace removes the DaemonSet and its pods.
    kube::delete_namespace(&cluster, &ns, Duration::from_secs(10)).await.unwrap();
    assert!(c.api.names(&ns, "pods").is_empty());
    assert!(c.api.names(&ns, "daemonsets").is_empty());
}

#[tokio::test]
async fn endpointslices_and_daemonsets_are_listed_by_selector_got_watched_and_deleted_as_kube_rs_calls_them() {
    let fake = fake_cluster("kube-fake-resources", Pods::Ready, &["kind-nodes.json"]).await;
    fake.api.set_programming_delay(Duration::from_millis(50));
    let cluster = fake.connect().await;
    let run = manifests::RunMeta { run_id: "feed0005".into(), scenario: "quick".into() };
    let ns = run.namespace();
    let ins = run.inspector_namespace();
    let c = cluster.client.clone();
    Api::<Namespace>::all(c.clone()).create(&post(), &manifests::namespace(&run)).await.unwrap();
    Api::<Namespace>::all(c.clone()).create(&post(), &manifests::inspector_namespace(&run)).await.unwrap();
    let services: Api<Service> = Api::namespaced(c.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), &ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(c.clone(), &ins);
    // Endpoints off this machine, as on a cluster: the fake never dials them.
    let echo = [manifests::EchoEndpoint {
        pod: "srv-a-0".into(),
        ip: "10.244.1.5".into(),
        node: "zb-worker".into(),
        zone: "a".into(),
    }];
    let watch = slices.watch(&WatchParams::default().labels(&run.selector()).timeout(20), "0").await.unwrap().boxed();
    for i in 0..3 {
        services
            .create(&post(), &manifests::selectorless_service(&run, &format!("zb-scale-{}", i), &ALL_PORTS))
            .await
            .unwrap();
        slices
            .create(&post(), &manifests::run_endpoint_slice(&run, &format!("zb-scale-{}", i), &ALL_PORTS, &echo))
            .await
            .unwrap();
    }
    let names = |l: Vec<EndpointSlice>| {
        let mut v: Vec<String> = l.into_iter().map(|s| s.metadata.name.unwrap()).collect();
        v.sort();
        v
    };
    let list = |sel: String| {
        let slices = slices.clone();
        async move { names(slices.list(&ListParams::default().labels(&sel)).await.unwrap().items) }
    };
    let one = format!(
        "{}=zb-scale-1,{}={}",
        manifests::SERVICE_NAME_LABEL,
        manifests::SLICE_MANAGED_BY,
        manifests::SLICE_MANAGER
    );
    assert_eq!(list(one).await, vec!["zb-scale-1"]);
    let set = format!("{} in (zb-scale-0, zb-scale-2)", manifests::SERVICE_NAME_LABEL);
    assert_eq!(list(set).await, vec!["zb-scale-0", "zb-scale-2"]);
    assert_eq!(
        list(format!("{} notin (zb-scale-0)", manifests::SERVICE_NAME_LABEL)).await,
        vec!["zb-scale-1", "zb-scale-2"]
    );
    assert_eq!(list(format!("{}!=zb-scale-0,!nothing", manifests::SERVICE_NAME_LABEL)).await.len(), 2);
    assert!(list(format!("{}=someone-else", manifests::SLICE_MANAGED_BY)).await.is_empty());
    let got = slices.get("zb-scale-2").await.unwrap();
    assert_eq!(got.endpoints[0].addresses, vec!["10.244.1.5"]);
    // Watched as created.
    let added: Vec<String> = watch
        .take(3)
        .map(|e| match e.unwrap() {
            WatchEvent::Added(s) | WatchEvent::Modified(s) => s.metadata.name.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
        .await;
    assert_eq!(added, vec!["zb-scale-0", "zb-scale-1", "zb-scale-2"]);

    // Forwarded, but to no endpoint off this machine: the connection is closed at once.
    let ip: Ipv4Addr = services.get("zb-scale-0").await.unwrap().spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let (mut s, _) = probe(SocketAddr::from((ip, AGENT_HTTP_PORT)), Duration::from_secs(5)).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);

    // A watch sees the delete; a collection delete by label takes the rest.
    let watch = slices.watch(&WatchParams::default().labels(&run.selector()).timeout(20), "0").await.unwrap().boxed();
    slices.delete("zb-scale-0", &DeleteParams::default()).await.unwrap();
    let deleted = watch
        .try_filter_map(|e| async move { Ok(if let WatchEvent::Deleted(s) = e { s.metadata.name } else { None }) })
        .boxed()
        .next()
        .await;
    assert_eq!(deleted.unwrap().unwrap(), "zb-scale-0");
    let sel = format!("{}={}", manifests::SLICE_MANAGED_BY, manifests::SLICE_MANAGER);
    slices.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&sel)).await.unwrap();
    assert!(fake.api.names(&ns, "endpointslices").is_empty());
    assert!(fake.api.forwarding(&ns, "zb-scale-0").is_empty());

    // DaemonSets: created, listed by label, got, deleted.
    daemonsets.create(&post(), &manifests::inspector_daemonset(&run, "example.com/inspector:test")).await.unwrap();
    let listed = daemonsets.list(&ListParams::default().labels(&run.selector())).await.unwrap().items;
    assert_eq!(listed.len(), 1);
    assert!(daemonsets.list(&ListParams::default().labels("zonebench.dev/run=other")).await.unwrap().items.is_empty());
    assert_eq!(
        daemonsets.get(manifests::INSPECTOR_NAME).await.unwrap().metadata.namespace.as_deref(),
        Some(ins.as_str())
    );
    daemonsets.delete(manifests::INSPECTOR_NAME, &DeleteParams::default()).await.unwrap();
    assert!(daemonsets.get_opt(manifests::INSPECTOR_NAME).await.unwrap().is_none());
    assert!(fake.api.names(&ins, "pods").is_empty(), "its pods are collected");

    let paths: Vec<String> = fake.api.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    for want in [
        format!("GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        format!("DELETE /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        format!("POST /apis/apps/v1/namespaces/{ins}/daemonsets"),
        format!("DELETE /apis/apps/v1/namespaces/{ins}/daemonsets/{}", manifests::INSPECTOR_NAME),
    ] {
        assert!(paths.contains(&want), "no {want} in {paths:#?}");
    }
}

#[tokio::test]
async fn fake_servers_in_one_process_lease_distinct_address_slots_held_until_they_drop() {
    let a = FakeApi::start(Kubelet::Ready).await;
    let b = FakeApi::start(Kubelet::Ready).await;
    assert_ne!(a.slot(), b.slot());
    let lease = |slot: u8| std::net::TcpListener::bind((Ipv4Addr::new(127, slot, 0, 1), LEASE_PORT));
    assert!(lease(a.slot()).is_err(), "a's slot is held");
    let freed = b.slot();
    drop(b);
    drop(lease(freed).unwrap());
}

/// A label value the real apiserver refuses (found by the Kubernetes lab: a '/' in the
/// sweep's `endpointslice.kubernetes.io/managed-by`) is refused by the fake too, and the
/// run's own labels pass.
#[tokio::test]
async fn a_label_value_the_real_apiserver_refuses_is_refused_naming_it() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let fake = fake_cluster("kube-fake-labels", Pods::Ready, &["kind-nodes.json"]).await;
    let cluster = fake.connect().await;
    let run = manifests::RunMeta { run_id: "feed0006".into(), scenario: "quick".into() };
    let c = cluster.client.clone();
    Api::<Namespace>::all(c.clone()).create(&post(), &manifests::namespace(&run)).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), &run.namespace());
    let mut bad = ConfigMap::default();
    bad.metadata.name = Some("bad".into());
    bad.metadata.labels = Some([(manifests::SLICE_MANAGED_BY.to_string(), "zonebench.dev/x".to_string())].into());
    let e = maps.create(&post(), &bad).await.unwrap_err().to_string();
    assert!(e.contains("Invalid value: \"zonebench.dev/x\""), "{e}");
    let slices: Api<EndpointSlice> = Api::namespaced(c, &run.namespace());
    let slice = manifests::run_endpoint_slice(&run, "zb-scale-0", &ALL_PORTS, &[]);
    slices.create(&post(), &slice).await.unwrap();
    // A patch is validated like a create, and a refused one changes nothing.
    let bad = serde_json::json!({"metadata": {"labels": {"tier": "a/b"}}});
    let params = ::kube::api::PatchParams::default();
    let e = slices.patch("zb-scale-0", &params, &::kube::api::Patch::Merge(&bad)).await.unwrap_err().to_string();
    assert!(e.contains("Invalid value: \"a/b\""), "{e}");
    let kept = slices.get("zb-scale-0").await.unwrap();
    assert!(!kept.metadata.labels.unwrap_or_default().contains_key("tier"));
}
