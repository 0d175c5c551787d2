//! `zonebench hints -n NAMESPACE SERVICE` end to end: the real binary against the fake API
//! server (`support/fake_apiserver/`, real HTTP on 127.0.0.1) replaying recorded objects of
//! a kind cluster (`tests/fixtures/kube/kind-nodes.json`, `hints-shop-*.json`): hints that
//! agree with the prediction, a stale slice, hints a running controller keeps,
//! `trafficDistribution`, a feature gate the version explains, missing objects, an
//! unreachable cluster and usage errors. Every JSON output is checked against
//! `results/schema/hints.schema.json`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::fake_apiserver::kubeconfig;
use crate::support::kube_client::{fake_cluster, FakeCluster, Pods};
use crate::support::scratch;
use serde_json::Value;

/// The fake cluster: kind's nodes (zones a, b, c; b has 50m less CPU) and namespace `shop`.
async fn shop(tag: &str) -> FakeCluster {
    let shop = [
        "kind-nodes.json",
        "hints-shop-namespace.json",
        "hints-shop-services.json",
        "hints-shop-endpointslices.json",
        "hints-shop-events.json",
    ];
    fake_cluster(tag, Pods::Ready, &shop).await
}

async fn hints(kubeconfig: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .arg("hints")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn validator() -> jsonschema::Validator {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema/hints.schema.json");
    jsonschema::validator_for(&serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).unwrap()
}

/// `-o json`: expects success, checks the schema, returns the report.
async fn json(kc: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = hints(kc, &a).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "output does not match hints.schema.json: {errors:#?}");
    v
}

async fn table(kc: &Path, args: &[&str]) -> String {
    let out = hints(kc, args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Expects exit `code` and no report; returns stderr.
async fn fails(kc: &Path, args: &[&str], code: i32) -> String {
    let out = hints(kc, args).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(out.stdout.is_empty(), "no report on failure");
    err
}

fn endpoint<'a>(v: &'a Value, address: &str) -> &'a Value {
    v["endpoints"].as_array().unwrap().iter().find(|e| e["address"] == address).unwrap()
}

#[tokio::test]
async fn slices_hinted_as_predicted_agree_in_both_output_formats() {
    let c = shop("hints-live-agree").await;
    let v = json(&c.kubeconfig, &["-n", "shop", "checkout"]).await;
    assert_eq!(v["service"], "shop/checkout");
    assert_eq!((&v["mode"], &v["mode_assumed"]), (&Value::from("auto"), &Value::Bool(false)));
    assert_eq!(v["hints_enabled"], true);
    let live = &v["live"];
    assert_eq!((&live["verdict"], &live["agree"]), (&Value::from("agree"), &Value::Bool(true)), "{live:#}");
    assert_eq!(live["cluster"], format!("{} (context kind-zb)", c.api.url()));
    assert_eq!(live["server_version"], "v1.33.1");
    assert_eq!(live["namespace"], "shop");
    assert_eq!(live["differences"], serde_json::json!([]));
    assert_eq!(live["events"][0]["reason"], "TopologyAwareHintsEnabled");
    assert_eq!(live["events"].as_array().unwrap().len(), 1, "only the Service's topology events");
    assert!(live["routing_now"].as_array().unwrap().iter().all(|r| r["as_predicted"] == true), "{live:#}");
    let eps = v["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 6);
    for e in eps {
        assert_eq!(e["agrees"], true, "{e}");
        assert_eq!(e["current_hints"], e["hints"], "{e}");
        assert_eq!(e["hints"], serde_json::json!([e["zone"]]), "{e}");
    }
    // Read only: the Service, its slices by label, every node, the Service's events.
    let lines: Vec<String> = c.api.requests().iter().map(|r| r.line()).collect();
    for want in [
        "GET /api/v1/namespaces/shop/services/checkout",
        "GET /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dcheckout",
        "GET /api/v1/nodes",
        "GET /api/v1/namespaces/shop/events?&fieldSelector=involvedObject.kind%3DService%2CinvolvedObject.name%3Dcheckout",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "no {want} in {lines:#?}");
    }
    assert!(c.api.writes().is_empty(), "the doctor must not write: {:?}", c.api.writes());

    let t = table(&c.kubeconfig, &["-n", "shop", "checkout"]).await;
    assert!(t.contains("Service shop/checkout (IPv4): mode auto\n"), "{t}");
    assert!(t.contains("ADDRESS      ZONE  NODE        READY  HINT  ACTUAL  SAME  LOAD"), "{t}");
    assert!(
        t.contains(&format!(
            "Hints the controller wrote (cluster {} (context kind-zb), Kubernetes v1.33.1):",
            c.api.url()
        )),
        "{t}"
    );
    assert!(t.contains("verdict: agree — the hints the controller wrote are the predicted ones (6 endpoints)"), "{t}");
    assert!(
        t.contains(
            "event: Normal TopologyAwareHintsEnabled: \"Topology Aware Hints has been enabled, addressType: IPv4\""
        ),
        "{t}"
    );
    assert!(!t.contains("the slices carry no hints now"), "the verdict replaces the file form's note: {t}");
}

#[tokio::test]
async fn a_stale_slice_is_reported_with_the_endpoint_that_differs_and_why() {
    let c = shop("hints-live-stale").await;
    let v = json(&c.kubeconfig, &["--namespace", "shop", "cart"]).await;
    assert_eq!(v["hints_enabled"], true);
    let live = &v["live"];
    assert_eq!((&live["verdict"], &live["agree"]), (&Value::from("not-synced"), &Value::Bool(false)), "{live:#}");
    let diffs = live["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    let d = &diffs[0];
    assert_eq!(d["slice"], "cart-v8c3n");
    assert_eq!(
        (&d["zone"], &d["predicted"], &d["actual"]),
        (&Value::from("b"), &serde_json::json!(["b"]), &serde_json::json!(["c"]))
    );
    assert_eq!(d["reason"], "not-synced");
    let address = d["address"].as_str().unwrap();
    assert_eq!(endpoint(&v, address)["agrees"], false);
    assert_eq!(endpoint(&v, address)["current_hints"], serde_json::json!(["c"]));
    let agreeing = v["endpoints"].as_array().unwrap().iter().filter(|e| e["agrees"] == true).count();
    assert_eq!(agreeing, 5);
    let reasons =
        live["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect::<Vec<_>>().join("\n");
    assert!(reasons.contains("would rewrite these hints, so it has not synced"), "{reasons}");
    assert!(reasons.contains("if they stay like this"), "{reasons}");
    // The stale hint sends zone b's traffic to one endpoint and zone c's to three.
    let now = |zone: &str| live["routing_now"].as_array().unwrap().iter().find(|r| r["zone"] == zone).unwrap().clone();
    assert_eq!(
        (now("b")["as_predicted"].clone(), now("b")["endpoints"].as_array().unwrap().len()),
        (Value::Bool(false), 1)
    );
    assert_eq!(now("c")["endpoints"].as_array().unwrap().len(), 3);
    assert!(now("c")["endpoints"].as_array().unwrap().contains(&Value::from(address)));
    assert_eq!(now("a")["as_predicted"], true);

    let t = table(&c.kubeconfig, &["-n", "shop", "cart"]).await;
    assert!(t.contains("verdict: not-synced — 1 of 6 endpoints differ from the prediction"), "{t}");
    assert!(t.contains(&format!("{address} (slice cart-v8c3n, zone b): predicted b, actual c")), "{t}");
    let row = t.lines().find(|l| l.trim_start().starts_with(address)).unwrap();
    assert!(row.contains(" b     c       NO"), "{row}");
    assert!(t.contains("kube-proxy now, with the hints written, routes otherwise than predicted:"), "{t}");
    assert!(t.contains("with the predicted hints:"), "{t}");
}

#[tokio::test]
async fn older_hints_a_running_controller_keeps_are_told_apart_from_stale_ones() {
    let c = shop("hints-live-kept").await;
    let v = json(&c.kubeconfig, &["-n", "shop", "orders"]).await;
    let live = &v["live"];
    assert_eq!((&live["verdict"], &live["agree"]), (&Value::from("kept"), &Value::Bool(false)), "{live:#}");
    let d = &live["differences"][0];
    assert_eq!(
        (&d["zone"], &d["predicted"], &d["actual"]),
        (&Value::from("a"), &serde_json::json!(["a"]), &serde_json::json!(["b"]))
    );
    // 7 endpoints: every zone's maximum is 3, which b's three hints stay within.
    for z in v["zones"].as_array().unwrap() {
        assert_eq!(z["maximum"], 3, "{z}");
    }
    assert!(live["reasons"][0].as_str().unwrap().contains("a running controller keeps hints that are still valid"));
}

#[tokio::test]
async fn prefer_close_is_taken_from_the_services_traffic_distribution() {
    let c = shop("hints-live-prefer-close").await;
    let v = json(&c.kubeconfig, &["-n", "shop", "web"]).await;
    assert_eq!((&v["mode"], &v["mode_assumed"]), (&Value::from("prefer-close"), &Value::Bool(false)));
    assert_eq!(v["event"], Value::Null);
    assert!(v["mode_reasons"][0].as_str().unwrap().contains("spec.trafficDistribution: PreferClose"));
    assert_eq!(v["live"]["verdict"], "agree", "{:#}", v["live"]);
    assert_eq!(v["live"]["events"], serde_json::json!([]));
    let unready = v["endpoints"].as_array().unwrap().iter().find(|e| e["ready"] == false).unwrap();
    assert_eq!(
        (&unready["hints"], &unready["current_hints"], &unready["agrees"]),
        (&Value::Null, &Value::Null, &Value::Bool(true))
    );
    let b = v["routing"].as_array().unwrap().iter().find(|r| r["zone"] == "b").unwrap();
    assert_eq!((&b["filtered"], b["endpoints"].as_array().unwrap().len()), (&Value::Bool(true), 1), "{b}");
    let t = table(&c.kubeconfig, &["-n", "shop", "web"]).await;
    assert!(t.contains("mode prefer-close\n") && t.contains("verdict: agree"), "{t}");
    assert!(t.contains("events: no topology event recorded"), "{t}");
}

#[tokio::test]
async fn prefer_same_zone_on_1_33_is_explained_by_the_feature_gate_and_the_flag_overrides_it() {
    let c = shop("hints-live-gate").await;
    // v1.33 leaves PreferSameTrafficDistribution off by default, but these slices are hinted.
    let v = json(&c.kubeconfig, &["-n", "shop", "feed"]).await;
    assert_eq!(v["mode"], "none");
    let reasons =
        v["mode_reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect::<Vec<_>>().join("\n");
    assert!(reasons.contains("taken as off, the default of Kubernetes v1.33.1"), "{reasons}");
    let live = &v["live"];
    assert_eq!(
        (&live["verdict"], &live["agree"]),
        (&Value::from("controller-version"), &Value::Bool(false)),
        "{live:#}"
    );
    assert_eq!(live["differences"].as_array().unwrap().len(), 3);
    assert!(
        live["reasons"][0].as_str().unwrap().contains("rerun with --prefer-same-traffic-distribution true"),
        "{live:#}"
    );

    let v = json(&c.kubeconfig, &["-n", "shop", "feed", "--prefer-same-traffic-distribution", "true"]).await;
    assert_eq!(v["mode"], "prefer-same-zone");
    assert_eq!(v["live"]["verdict"], "agree", "{:#}", v["live"]);
}

#[tokio::test]
async fn a_missing_service_namespace_or_endpoint_slice_is_named() {
    let c = shop("hints-live-missing").await;
    let err = fails(&c.kubeconfig, &["-n", "shop", "payments"], 1).await;
    assert!(
        err.contains(
            "no Service \"payments\" in namespace \"shop\" (its Services: cart, checkout, feed, legacy, orders, web)"
        ),
        "{err}"
    );
    assert!(err.contains(&c.api.url()), "the cluster is named: {err}");
    let err = fails(&c.kubeconfig, &["-n", "nowhere", "checkout"], 1).await;
    assert!(err.contains("namespace \"nowhere\" does not exist (looking for Service \"checkout\")"), "{err}");
    let err = fails(&c.kubeconfig, &["-n", "shop", "legacy", "-o", "json"], 1).await;
    assert!(
        err.contains("Service shop/legacy has no EndpointSlice (label kubernetes.io/service-name=legacy): no pod matches its selector app.kubernetes.io/name=legacy"),
        "{err}"
    );
    assert!(c.api.writes().is_empty());
}

#[tokio::test]
async fn the_namespace_defaults_to_the_kubeconfig_contexts_as_kubectl_does() {
    let c = shop("hints-live-default-ns").await;
    let kc = c.dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: shop\nclusters:\n- name: kind\n  cluster:\n    server: {}\ncontexts:\n- name: shop\n  context:\n    cluster: kind\n    user: tester\n    namespace: shop\nusers:\n- name: tester\n  user:\n    token: test-token\n",
            c.api.url()
        ),
    )
    .unwrap();
    let v = json(&kc, &["checkout"]).await;
    assert_eq!((&v["service"], &v["live"]["namespace"]), (&Value::from("shop/checkout"), &Value::from("shop")));
}

#[tokio::test]
async fn an_unreachable_cluster_fails_fast_naming_it() {
    let dir = scratch("hints-live-unreachable");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let kc = kubeconfig(&dir, &[("gone", &server)]);
    let started = Instant::now();
    let err = fails(&kc, &["-n", "shop", "checkout"], 1).await;
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(err.contains(&format!("cannot reach the Kubernetes API at {server} (context gone)")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn mixed_or_incomplete_forms_are_usage_errors() {
    let dir = scratch("hints-live-usage");
    let kc = kubeconfig(&dir, &[("never", "http://127.0.0.1:1")]);
    let nodes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hints/nodes-3zones.yaml");
    let nodes = nodes.to_str().unwrap();
    let err = fails(&kc, &["-n", "shop", "checkout", "--nodes", nodes], 2).await;
    assert!(err.contains("use one form, not both"), "{err}");
    let err = fails(&kc, &["-n", "shop"], 2).await;
    assert!(err.contains("name the Service to read from the cluster"), "{err}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench")).arg("hints").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zonebench hints -n NAMESPACE SERVICE"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zonebench"))
        .args(["hints", "--nodes", nodes])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--slices SLICES.yaml is missing"));
}
