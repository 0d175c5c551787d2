//! The service-scaling sweep on the kube platform, against the fake API server: its
//! "kube-proxy" starts forwarding a selector-less Service's ClusterIP (a loopback address of
//! its own) to the Service's EndpointSlice a set delay after the slice appears, so the
//! programming-latency probe, run by the real client agent through its control API, has a
//! real first connect to find; its "DaemonSet controller" gives the node inspector one pod
//! per node, whose log lines the test writes as the inspector script would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::fake_apiserver::{kubeconfig, FakeApi};
use crate::support::kube_client::{fake_api, fake_cluster, FakeCluster, Pods, KIND};
use crate::support::scratch;
use serde_json::Value;

const DELAY: Duration = Duration::from_millis(400);

fn scenario(services: &str) -> String {
    format!(
        r#"
name = "kube-sweep"
[kube]
allow_cidrs = ["127.0.0.0/8"]
[agents]
servers_per_zone = 1
clients_per_zone = 1
[defaults]
duration = "300ms"
warmup = "100ms"
via = "service"
[sweep]
dataplanes = ["nftables", "ebpf"]
services = {services}
probe_timeout = "20s"
[[tests]]
kind = "tcp-crr"
"#
    )
}

/// A kind cluster whose agents really run and whose kube-proxy programs a Service [`DELAY`]
/// after its slice appears.
async fn fake(tag: &str) -> FakeCluster {
    let c = fake_cluster(tag, Pods::RunAgents, KIND).await;
    c.api.set_programming_delay(DELAY);
    c
}

async fn run(dir: &Path, kc: &Path, extra: &[&str]) -> (std::process::Output, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .args(["run", "--backend", "kube", "--image", "example.com/agent:t", "--kubeconfig"])
        .arg(kc)
        .args(extra)
        .arg(dir.join("sweep.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .await
        .unwrap();
    let results = std::fs::read_to_string(dir.join("out/results.json"))
        .map_or(Value::Null, |t| serde_json::from_str(&t).unwrap());
    (out, results)
}

/// The run's namespace, from the first namespace it created.
fn run_namespace(api: &FakeApi) -> String {
    let w = api.writes();
    let ns = w.iter().find(|r| r.method == "POST" && r.path == "/api/v1/namespaces").expect("a namespace was created");
    ns.body.as_ref().unwrap()["metadata"]["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_on_a_cluster_adds_only_new_selectorless_services_and_probes_each_newest_from_the_client_pod() {
    let c = fake("kube-sweep-probe").await;
    std::fs::write(c.dir.join("sweep.toml"), scenario("[3, 8]")).unwrap();
    let (out, r) = run(&c.dir, &c.kubeconfig, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("own service dataplane (iptables) is measured"), "{stderr}");
    assert_eq!(r["status"], "complete");

    // One point per count (the cluster's dataplane only), each through its newest Service.
    let ms = r["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{r:#}");
    for (m, count) in ms.iter().zip([3u64, 8]) {
        assert_eq!(m["variant"], "iptables");
        assert_eq!(m["params"]["services"], count);
        let d = &m["service_dataplane"];
        assert_eq!((d["kind"].as_str(), d["services"].as_u64()), (Some("iptables"), Some(count)));
        assert!(d.get("rules").is_none() && d.get("program_ns").is_none(), "no inspector, no node figures: {d}");
        // The fake programs a Service DELAY after its slice appears: the probe cannot have
        // connected sooner, and a probe that saw it at once would be measuring nothing. The
        // probe request's one-way trip to the agent is not counted (run_services documents
        // it): milliseconds, a few more on a loaded machine, hence the slack.
        let latency = Duration::from_nanos(d["programming_latency_ns"].as_u64().unwrap());
        let slack = Duration::from_millis(50);
        assert!(latency >= DELAY - slack && latency < Duration::from_secs(10), "{latency:?}");
        // Through the ClusterIP (the fake's loopback range), spread over the slice's three
        // echo servers by its round-robin forwarding.
        assert!(m["target"].as_str().unwrap().starts_with("127."), "{m:#}");
        assert_eq!(m["servers"].as_object().unwrap().len(), 3, "{m:#}");
    }

    // Eight selector-less Services and eight slices, none created twice, no pod labelled.
    let w = c.api.writes();
    let posted = |suffix: &str| -> Vec<Value> {
        w.iter().filter(|r| r.method == "POST" && r.path.ends_with(suffix)).map(|r| r.body.clone().unwrap()).collect()
    };
    let services = posted("/services");
    let mut names: Vec<&str> = services.iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, (1..=8).map(|i| format!("svc-{i:05}")).collect::<Vec<_>>());
    assert!(services.iter().all(|s| s["spec"].get("selector").is_none()), "{services:#?}");
    let slices = posted("/endpointslices");
    assert_eq!(slices.len(), 8);
    assert!(slices.iter().all(|s| s["endpoints"].as_array().unwrap().len() == 3), "three echo servers each");
    assert!(!w.iter().any(|r| r.method == "PATCH"), "selector-less Services label no pod");
    // Nothing left: the namespace went, with the Services in it.
    let ns = run_namespace(&c.api);
    assert!(!c.api.names("", "namespaces").contains(&ns));
}

/// Writes inspector log lines for every inspector pod once a second, as the script would:
/// the iptables rules grow with the Services in the run's namespace and kube-proxy syncs
/// once per report, 50 ms each.
fn emulate_inspector(api: Arc<FakeApi>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let namespaces: Vec<String> =
                api.names("", "namespaces").into_iter().filter(|n| n.ends_with("-inspect")).collect();
            for ns in namespaces {
                // The Services are in the run's namespace, the inspector in its own.
                let services = api.names(ns.trim_end_matches("-inspect"), "services").len() as u64;
                for pod in api.names(&ns, "pods").into_iter().filter(|p| p.starts_with("zb-inspect-nodes-")) {
                    let node = pod.trim_start_matches("zb-inspect-nodes-");
                    let line = serde_json::json!({
                        "node": node, "seq": seq, "iptables_rules": 100 + 10 * services,
                        "iptables_legacy_rules": 0, "nft_rules": 0, "kube_proxy_nft_rules": 0,
                        "sync_seconds_sum": 0.05 * seq as f64, "sync_count": seq,
                    });
                    api.set_log(&pod, &format!("{line}\n"));
                }
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inspect_nodes_each_point_records_the_client_nodes_rules_and_kube_proxys_sync_time() {
    let c = fake("kube-sweep-inspect").await;
    let stop = Arc::new(AtomicBool::new(false));
    let inspector = emulate_inspector(c.api.clone(), stop.clone());
    std::fs::write(c.dir.join("sweep.toml"), scenario("[2, 5]")).unwrap();
    let (out, r) = run(&c.dir, &c.kubeconfig, &["--inspect-nodes", "--inspect-image", "example.com/inspect:t"]).await;
    stop.store(true, Ordering::Relaxed);
    inspector.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("node inspector example.com/inspect:t, privileged"), "{stderr}");

    let ms = r["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{r:#}");
    for (m, count) in ms.iter().zip([2u64, 5]) {
        let d = &m["service_dataplane"];
        // Reports measured after the point's Services all exist: 100 + 10 per Service.
        assert_eq!(d["rules"].as_u64(), Some(100 + 10 * count), "{d}");
        let sync = d["program_ns"].as_u64().unwrap();
        assert!((49_000_000..=51_000_000).contains(&sync), "kube-proxy's mean sync: {sync}");
        assert!(d["programming_latency_ns"].as_u64().is_some());
    }
    // The DaemonSet was created (and only with the flag), in a namespace that allows it.
    let w = c.api.writes();
    let ds: Vec<&Value> = w
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/daemonsets"))
        .filter_map(|r| r.body.as_ref())
        .collect();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["spec"]["template"]["spec"]["containers"][0]["image"], "example.com/inspect:t");
    // The DaemonSet has a privileged namespace of its own; the agents' stays restricted.
    let levels: Vec<(String, String)> = w
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces")
        .map(|r| {
            let m = &r.body.as_ref().unwrap()["metadata"];
            (
                m["name"].as_str().unwrap().into(),
                m["labels"]["pod-security.kubernetes.io/enforce"].as_str().unwrap().into(),
            )
        })
        .collect();
    let ns = run_namespace(&c.api);
    assert_eq!(levels, [(ns.clone(), "restricted".into()), (format!("{ns}-inspect"), "privileged".into())]);
    assert_eq!(ds[0]["metadata"]["namespace"].as_str(), Some(format!("{ns}-inspect").as_str()));
    // Both are gone at the end.
    let left = c.api.names("", "namespaces");
    assert!(!left.contains(&ns) && !left.contains(&format!("{ns}-inspect")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_over_two_clusters_labels_each_clusters_points_with_its_context_label() {
    let a = fake("kube-sweep-multi").await;
    let b = fake_api(&a.dir, Pods::RunAgents, KIND).await;
    b.set_programming_delay(DELAY);
    let kc = kubeconfig(&a.dir, &[("ctx-a", &a.api.url()), ("ctx-b", &b.url())]);
    std::fs::write(a.dir.join("sweep.toml"), scenario("[2]")).unwrap();
    let (out, r) = run(&a.dir, &kc, &["--context", "A=ctx-a", "--context", "B=ctx-b"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ms = r["measurements"].as_array().unwrap();
    let variants: Vec<&str> = ms.iter().map(|m| m["variant"].as_str().unwrap()).collect();
    assert_eq!(variants, ["A", "B"], "{r:#}");
    assert!(ms.iter().all(|m| m["service_dataplane"]["kind"] == "iptables"));
    assert_eq!(r["fingerprint"]["extra"]["B.kube_proxy_mode"], "iptables");
}

#[tokio::test]
async fn inspect_nodes_without_a_cluster_is_a_usage_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .args(["run", "--backend", "local", "--inspect-nodes", "scenarios/quick.toml"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inspect-nodes and --control need --backend kube"));
}

/// A real cluster, only when `ZONEBENCH_TEST_KUBECONFIG` names its kubeconfig (with
/// `ZONEBENCH_TEST_CONTEXT` and `ZONEBENCH_TEST_IMAGE` as for `live_cluster_run`): a short
/// service-scaling sweep (10 and 200 Services), each point with its programming latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_cluster_sweep() {
    let Ok(kc) = std::env::var("ZONEBENCH_TEST_KUBECONFIG") else {
        eprintln!("skipped: ZONEBENCH_TEST_KUBECONFIG is not set");
        return;
    };
    let dir = scratch("kube-sweep-live");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"));
    cmd.args(["run", "--backend", "kube", "--kubeconfig", &kc, "--set", "sweep.services=[10,200]"]);
    if let Ok(ctx) = std::env::var("ZONEBENCH_TEST_CONTEXT") {
        cmd.args(["--context", &ctx]);
    }
    if let Ok(image) = std::env::var("ZONEBENCH_TEST_IMAGE") {
        cmd.args(["--image", &image]);
    }
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/service-scaling.toml");
    let out = cmd.arg(scenario).arg("--out").arg(dir.join("out")).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap()).unwrap();
    let ms = r["measurements"].as_array().unwrap();
    assert!(!ms.is_empty());
    assert!(ms.iter().all(|m| m["service_dataplane"]["programming_latency_ns"].as_u64().is_some()), "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_table_adds_only_what_is_new_recovers_from_failures_and_deletes_what_is_dropped() {
    use zonebench::model::{AgentPort, AgentRequest, ProbeRequest};
    use zonebench::plan::service_table;
    use zonebench::platform::Platform as _;
    let c = fake("kube-sweep-apply").await;
    let ns = "zonebench-feed0005";
    let mut p = c.platform("feed0005").await;
    p.deploy(&[
        AgentRequest { id: "srv-a-0".into(), node: "zb-worker".into(), max_answer_qps: None, relay: false },
        AgentRequest { id: "cli-a-0".into(), node: "zb-worker2".into(), max_answer_qps: None, relay: false },
    ])
    .await
    .unwrap();
    let table = |n: u32| service_table(n, &["srv-a-0".to_string()], &[AgentPort::Tcp]);
    let service_posts =
        || c.api.writes().iter().filter(|w| w.method == "POST" && w.path.ends_with("/services")).count();
    let names = || {
        let mut v = c.api.names(ns, "services");
        v.sort();
        v
    };

    // Fillers, then the newest with a probe: only the newest is created the second time.
    p.apply_services(&table(5)[..4], None).await.unwrap();
    assert_eq!(service_posts(), 4);
    let probe = ProbeRequest {
        from_agent: "cli-a-0".into(),
        service: "svc-00005".into(),
        port: AgentPort::Tcp,
        within: Duration::from_secs(20),
    };
    let applied = p.apply_services(&table(5), Some(&probe)).await.unwrap();
    assert_eq!(service_posts(), 5, "the four fillers stay");
    assert_eq!(applied.services.len(), 5);
    let latency = applied.probe.expect("the probe's answer");
    let programmed = c.api.programmed_at(ns, "svc-00005").unwrap();
    // Less the probe request's uncounted one-way trip (see the first sweep test).
    assert!(latency >= DELAY - Duration::from_millis(50), "{latency:?}");
    assert!(programmed.elapsed() < Duration::from_secs(20));

    // Something else holds svc-00007: the apply fails naming it, and the next one clears what
    // the failed one may have left (svc-00006 … svc-00008) before creating them again.
    c.api.load(serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc-00007", "namespace": ns}, "spec": {"ports": [{"port": 1}]}}));
    let err = format!("{:#}", p.apply_services(&table(8), None).await.unwrap_err());
    assert!(err.contains("svc-00007") && err.contains("already exists"), "{err}");
    p.apply_services(&table(8), None).await.unwrap();
    assert_eq!(names(), (1..=8).map(|i| format!("svc-{i:05}")).collect::<Vec<_>>());
    let slice = c.api.object(ns, "endpointslices", "svc-00007").unwrap();
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "svc-00007");

    // Fewer: the dropped Services go with their slices.
    p.apply_services(&table(2), None).await.unwrap();
    assert_eq!(names(), ["svc-00001", "svc-00002"]);
    let mut slices = c.api.names(ns, "endpointslices");
    slices.sort();
    assert_eq!(slices, ["svc-00001", "svc-00002"]);

    // A loaded API server sheds every third write with 429 (priority and fairness does under
    // a burst like ours): kube-rs's default retry policy (429, 503, 504) sends them again,
    // and nothing is lost either way. This fails if that policy is ever turned off.
    c.api.shed_every(3);
    p.apply_services(&table(12), None).await.unwrap();
    assert_eq!(names().len(), 12);
    p.apply_services(&table(1), None).await.unwrap();
    assert_eq!(names(), ["svc-00001"]);
    assert_eq!(c.api.names(ns, "endpointslices"), ["svc-00001"]);
    c.api.shed_every(0);
    p.teardown().await.unwrap();
}
