//! A small Kubernetes API server for tests: real HTTP on 127.0.0.1:0, serving recorded API
//! objects (the fixtures under `tests/fixtures/kube/`) and whatever the client creates, and
//! recording every request kube-rs makes (method, path, query, body) so tests can check them.
//!
//! It implements what zonebench uses: GET /version; list, get, create and delete of
//! namespaced and cluster-scoped resources with label selectors; watch (JSON lines from a
//! resourceVersion); pod logs; and port-forward over WebSocket (`v4.channel.k8s.io`).
//!
//! A "kubelet" gives created pods a status. In [`Kubelet::RunAgents`] mode it really starts
//! each agent pod's container args with `zonebench agent`, on a pod address of its own in
//! 127.0.0.0/8 (the args' `0.0.0.0` becomes that address, and the Secret's token goes to a
//! file): port-forward then reaches a real agent, as on a cluster.
#![allow(clippy::unwrap_used, dead_code)] // test support: a failure here is a failed test

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

impl Recorded {
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

/// What happens to pods after they are created.
#[derive(Debug, Clone)]
pub enum Kubelet {
    /// Pods turn Running and Ready after a moment, with a pod IP; nothing runs.
    Ready,
    /// As Ready, and each agent pod's container really runs (`zonebench agent <args>`).
    RunAgents { zonebench: PathBuf, dir: PathBuf },
    /// Pods are stuck: their image cannot be pulled.
    ImagePullBackOff,
}

struct State {
    requests: Vec<Recorded>,
    /// (api prefix, namespace or "", resource) → name → object.
    objects: BTreeMap<(String, String, String), BTreeMap<String, Value>>,
    rv: u64,
    next_ip: u32,
    kubelet: Kubelet,
    /// Where each pod listens (its pod IP).
    pod_ips: BTreeMap<String, Ipv4Addr>,
    logs: BTreeMap<String, String>,
    children: Vec<Child>,
    version: Value,
    /// How long a namespace stays Terminating after its delete (GETs see it meanwhile).
    terminating_for: Duration,
    /// Answer every request 401, as a server with other credentials would.
    deny_all: bool,
    /// Created pods stay Pending (a slow image pull).
    hold_pods: bool,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, String, String, Value)>,
    task: tokio::task::JoinHandle<()>,
    /// Base of this server's pod addresses: 127.<a>.<b>.x, distinct per process and server.
    ip_base: [u8; 2],
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        let mut st = self.state.lock().unwrap();
        for c in &mut st.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl FakeApi {
    pub async fn start(kubelet: Kubelet) -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            objects: BTreeMap::new(),
            rv: 1000,
            next_ip: 2,
            kubelet,
            pod_ips: BTreeMap::new(),
            logs: BTreeMap::new(),
            children: Vec::new(),
            version: fixture("version.json"),
            terminating_for: Duration::from_millis(300),
            deny_all: false,
            hold_pods: false,
        }));
        // Distinct pod address ranges per process and per server, so agents of parallel
        // tests never contend for a port.
        static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let pid = std::process::id();
        let ip_base = [(pid % 256) as u8, (((pid >> 8) % 64) * 4 + n) as u8];
        let (st, ev) = (state.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                let (st, ev) = (st.clone(), ev.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (st, ev) = (st.clone(), ev.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, ev, ip_base).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApi { addr, state, events, task, ip_base }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds recorded objects: a `…List` (its items) or a single object.
    pub fn load(&self, object: Value) {
        let items = match object.get("items") {
            Some(items) => items.as_array().unwrap().clone(),
            None => vec![object],
        };
        let mut st = self.state.lock().unwrap();
        for mut o in items {
            st.rv += 1;
            o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let key = key_of(&o);
            let name = o["metadata"]["name"].as_str().unwrap().to_string();
            st.objects.entry(key).or_default().insert(name, o);
        }
    }

    pub fn deny_all(&self) {
        self.state.lock().unwrap().deny_all = true;
    }

    pub fn hold_pods(&self) {
        self.state.lock().unwrap().hold_pods = true;
    }

    pub fn set_log(&self, pod: &str, text: &str) {
        self.state.lock().unwrap().logs.insert(pod.to_string(), text.to_string());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests other than reads: what the client changed.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    /// Names of the stored objects of a resource in a namespace ("" for cluster scope).
    pub fn names(&self, namespace: &str, resource: &str) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|((_, ns, r), _)| ns == namespace && r == resource)
            .flat_map(|(_, m)| m.keys().cloned())
            .collect()
    }

    pub fn object(&self, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.objects
            .iter()
            .find(|((_, ns, r), _)| ns == namespace && r == resource)
            .and_then(|(_, m)| m.get(name).cloned())
    }

    /// Replaces a stored object and tells watchers (as a controller would).
    pub fn update(&self, mut object: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = key_of(&object);
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        st.objects.entry(key.clone()).or_default().insert(name, object.clone());
        let _ = self.events.send((key.0, key.1, key.2, json!({"type": "MODIFIED", "object": object})));
    }

    /// Processes the kubelet started (RunAgents).
    pub fn agent_pids(&self) -> Vec<u32> {
        self.state.lock().unwrap().children.iter().map(|c| c.id()).collect()
    }
}

/// Where an object is stored: (api prefix, namespace, resource).
fn key_of(o: &Value) -> (String, String, String) {
    let api_version = o["apiVersion"].as_str().unwrap_or("v1");
    let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
    let kind = o["kind"].as_str().unwrap();
    let resource = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ns = o["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    (prefix, ns, resource)
}

/// A parsed resource path.
struct Target {
    prefix: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let (prefix, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("/api/v1".to_string(), r)
    } else {
        let r = path.strip_prefix("/apis/")?;
        let mut it = r.splitn(3, '/');
        let (g, v, rest) = (it.next()?, it.next()?, it.next()?);
        (format!("/apis/{g}/{v}"), rest)
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let t = |ns: Option<&str>, res: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        prefix: prefix.clone(),
        namespace: ns.map(String::from),
        resource: res.to_string(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    };
    match segs.as_slice() {
        ["namespaces", ns, res, rest @ ..] => Some(t(Some(ns), res, rest.first(), rest.get(1))),
        [res, rest @ ..] => Some(t(None, res, rest.first(), rest.get(1))),
        [] => None,
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c=d` (equality only, what zonebench sends).
fn matches_selector(o: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => o["metadata"]["labels"][k].as_str() == Some(v),
        None => !o["metadata"]["labels"][term].is_null(),
    })
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    // Days-from-civil inverse, to print RFC 3339 without a date crate.
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
    ip_base: [u8; 2],
) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let is_upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    if is_upgrade {
        st.lock().unwrap().requests.push(Recorded { method, path: path.clone(), query: query.clone(), body: None });
        return port_forward(req, &path, &query, st).await;
    }
    let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&body_bytes).ok();
    st.lock().unwrap().requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    if st.lock().unwrap().deny_all {
        return status(401, "Unauthorized", "Unauthorized");
    }
    if path == "/version" {
        let v = st.lock().unwrap().version.clone();
        return json_response(StatusCode::OK, &v);
    }
    let Some(t) = parse_path(&path) else { return status(404, "NotFound", &format!("no route {path}")) };
    let selector = query_param(&query, "labelSelector");
    match (method.as_str(), &t.name, &t.sub) {
        ("GET", None, _) if query_param(&query, "watch").as_deref() == Some("true") => {
            watch(&t, &query, selector, st, ev)
        }
        ("GET", None, _) => {
            let st = st.lock().unwrap();
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((p, ns, r), _)| {
                    *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|want| want == ns)
                })
                .flat_map(|(_, m)| m.values())
                .filter(|o| matches_selector(o, selector.as_deref()))
                .cloned()
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name), Some(sub)) if sub == "log" => {
            let log = st.lock().unwrap().logs.get(name).cloned().unwrap_or_default();
            Response::builder().status(200).body(Full::new(Bytes::from(log)).boxed()).unwrap()
        }
        ("GET", Some(name), None) => {
            let st = st.lock().unwrap();
            let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
            match st.objects.get(&key).and_then(|m| m.get(name)) {
                Some(o) => json_response(StatusCode::OK, o),
                None => status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource)),
            }
        }
        ("POST", None, None) => create(&t, body, st, ev, ip_base),
        ("DELETE", Some(name), None) => delete(&t, name, st, ev),
        ("PATCH", Some(name), None) => merge_patch(&t, name, body, st, ev),
        _ => status(405, "MethodNotAllowed", &format!("{method} {path} is not served by the fake")),
    }
}

fn create(
    t: &Target,
    body: Option<Value>,
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
    ip_base: [u8; 2],
) -> Response<Body> {
    let Some(mut o) = body else { return status(400, "BadRequest", "body is not JSON") };
    let ns = t.namespace.clone().unwrap_or_default();
    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
    let key = (t.prefix.clone(), ns.clone(), t.resource.clone());
    let mut guard = st.lock().unwrap();
    if !ns.is_empty()
        && !guard
            .objects
            .get(&("/api/v1".into(), String::new(), "namespaces".into()))
            .is_some_and(|m| m.contains_key(&ns))
    {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    if guard.objects.get(&key).is_some_and(|m| m.contains_key(&name)) {
        return status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", t.resource));
    }
    guard.rv += 1;
    let rv = guard.rv;
    o["metadata"]["resourceVersion"] = json!(rv.to_string());
    o["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
    o["metadata"]["creationTimestamp"] = json!(now());
    if !ns.is_empty() {
        o["metadata"]["namespace"] = json!(ns);
    }
    if t.resource == "secrets" {
        if let Some(sd) = o.as_object_mut().unwrap().remove("stringData") {
            use base64::Engine as _;
            let data: serde_json::Map<String, Value> = sd
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap()))))
                .collect();
            o["data"] = Value::Object(data);
        }
    }
    if t.resource == "namespaces" {
        o["status"] = json!({"phase": "Active"});
    }
    if t.resource == "pods" {
        o["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
    }
    if t.resource == "services" && o["spec"]["clusterIP"].is_null() {
        // No kube-proxy here to route a virtual IP: a selecting Service gets the address of
        // the first pod it selects (by name), so a run's `via = "service"` traffic reaches a
        // real agent; others get an address from the usual Service range.
        let selected = o["spec"]["selector"].as_object().and_then(|sel| {
            guard.objects.get(&("/api/v1".to_string(), ns.clone(), "pods".to_string()))?.values().find_map(|p| {
                let matches = sel.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v);
                matches.then(|| p["status"]["podIP"].as_str().map(String::from)).flatten()
            })
        });
        o["spec"]["clusterIP"] = json!(selected.unwrap_or_else(|| format!("10.96.{}.{}", rv / 256 % 256, rv % 256)));
    }
    guard.objects.entry(key.clone()).or_default().insert(name.clone(), o.clone());
    let _ = ev.send((key.0.clone(), key.1.clone(), key.2.clone(), json!({"type": "ADDED", "object": o.clone()})));
    if t.resource == "services" && o["spec"]["selector"].is_object() {
        drop(guard);
        endpoint_slice_controller(st, ns, o.clone());
        return json_response(StatusCode::CREATED, &o);
    }
    if t.resource == "pods" {
        let n = guard.next_ip;
        guard.next_ip += 1;
        let ip = Ipv4Addr::new(127, ip_base[0], ip_base[1], n as u8);
        guard.pod_ips.insert(name.clone(), ip);
        let kubelet = guard.kubelet.clone();
        let hold = guard.hold_pods;
        drop(guard);
        if !hold {
            start_pod(st, ev, key, name, ip, kubelet);
        }
    }
    json_response(StatusCode::CREATED, &o)
}

/// The kubelet: after a moment, a pod is running and ready (or stuck pulling its image).
fn start_pod(
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
    key: (String, String, String),
    name: String,
    ip: Ipv4Addr,
    kubelet: Kubelet,
) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if let Kubelet::RunAgents { zonebench, dir } = &kubelet {
            let (pod, token) = {
                let g = st.lock().unwrap();
                let pod = g.objects.get(&key).and_then(|m| m.get(&name)).cloned().unwrap();
                let secret = g
                    .objects
                    .get(&("/api/v1".to_string(), key.1.clone(), "secrets".to_string()))
                    .and_then(|m| m.get("zonebench-control"))
                    .cloned()
                    .unwrap();
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD
                    .decode(secret["data"]["token"].as_str().unwrap())
                    .unwrap();
                (pod, token)
            };
            let token_file = dir.join(format!("{name}.token"));
            std::fs::write(&token_file, token).unwrap();
            let args: Vec<String> = pod["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    a.as_str()
                        .unwrap()
                        .replace("0.0.0.0", &ip.to_string())
                        .replace("/var/run/zonebench/token", &token_file.display().to_string())
                })
                .collect();
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            let child = Command::new(zonebench)
                .arg("agent")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            st.lock().unwrap().children.push(child);
            // Ready like the readiness probe: when /healthz answers on the control port.
            let control = SocketAddr::from((ip, 7100));
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(control).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let mut g = st.lock().unwrap();
        let Some(pod) = g.objects.get(&key).and_then(|m| m.get(&name)).cloned() else { return };
        let mut pod = pod;
        pod["spec"]["nodeName"] = pod["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
            .clone();
        pod["status"] = match kubelet {
            Kubelet::ImagePullBackOff => json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": format!("Back-off pulling image {}", pod["spec"]["containers"][0]["image"])}}}]
            }),
            _ => json!({
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "agent", "ready": true, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"running": {"startedAt": now()}}}]
            }),
        };
        g.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        g.objects.entry(key.clone()).or_default().insert(name, pod.clone());
        let _ = ev.send((key.0, key.1, key.2, json!({"type": "MODIFIED", "object": pod})));
    });
}

fn delete(
    t: &Target,
    name: &str,
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
) -> Response<Body> {
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(mut o) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    if t.resource == "namespaces" {
        // Terminating for a moment (GETs still find it), then gone with all it held.
        o["metadata"]["deletionTimestamp"] = json!(now());
        o["status"] = json!({"phase": "Terminating"});
        g.objects.get_mut(&key).unwrap().insert(name.to_string(), o.clone());
        let wait = g.terminating_for;
        let (st2, ns) = (st.clone(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut g = st2.lock().unwrap();
            g.objects.retain(|(_, n, _), _| *n != ns);
            if let Some(m) = g.objects.get_mut(&("/api/v1".to_string(), String::new(), "namespaces".to_string())) {
                m.remove(&ns);
            }
        });
        return json_response(StatusCode::OK, &o);
    }
    g.objects.get_mut(&key).unwrap().remove(name);
    if t.resource == "services" {
        // Garbage collection of the slices the controller owns for the Service.
        let slices = ("/apis/discovery.k8s.io/v1".to_string(), key.1.clone(), "endpointslices".to_string());
        if let Some(m) = g.objects.get_mut(&slices) {
            m.retain(|_, s| s["metadata"]["labels"]["kubernetes.io/service-name"].as_str() != Some(name));
        }
    }
    let _ = ev.send((key.0, key.1, key.2, json!({"type": "DELETED", "object": o.clone()})));
    json_response(StatusCode::OK, &o)
}

/// A JSON merge patch (RFC 7386) of a stored object (`kubectl label` and kube-rs `Patch::Merge`).
fn merge_patch(
    t: &Target,
    name: &str,
    body: Option<Value>,
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
) -> Response<Body> {
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }
    let Some(patch) = body else { return status(400, "BadRequest", "body is not JSON") };
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(mut o) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    merge(&mut o, &patch);
    g.rv += 1;
    o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
    g.objects.get_mut(&key).unwrap().insert(name.to_string(), o.clone());
    let _ = ev.send((key.0, key.1, key.2, json!({"type": "MODIFIED", "object": o.clone()})));
    json_response(StatusCode::OK, &o)
}

/// The EndpointSlice controller, minimally: a moment after a Service with a selector is
/// created, one slice lists its selected ready pods with their node and zone, and (when the
/// Service asks for topology) a hint for the endpoint's own zone.
fn endpoint_slice_controller(st: Arc<Mutex<State>>, ns: String, svc: Value) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut g = st.lock().unwrap();
        let name = svc["metadata"]["name"].as_str().unwrap().to_string();
        let selector: Vec<(String, String)> = svc["spec"]["selector"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let topology = !svc["metadata"]["annotations"]["service.kubernetes.io/topology-mode"].is_null()
            || !svc["spec"]["trafficDistribution"].is_null();
        let zone_of = |g: &State, node: &str| -> Option<String> {
            let n = g.objects.get(&("/api/v1".into(), String::new(), "nodes".into()))?.get(node)?;
            n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str().map(String::from)
        };
        let pods: Vec<Value> = g
            .objects
            .get(&("/api/v1".to_string(), ns.clone(), "pods".to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        for p in pods {
            if !selector.iter().all(|(k, v)| p["metadata"]["labels"][k].as_str() == Some(v)) {
                continue;
            }
            let Some(ip) = p["status"]["podIP"].as_str() else { continue };
            let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            let zone = zone_of(&g, &node);
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node, "zone": zone});
            if topology {
                e["hints"] = json!({"forZones": [{"name": zone}]});
            }
            endpoints.push(e);
        }
        g.rv += 1;
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-fake1"), "namespace": ns, "resourceVersion": g.rv.to_string(),
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": svc["spec"]["ports"].as_array().unwrap().iter().map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]})).collect::<Vec<_>>(),
        });
        let key = ("/apis/discovery.k8s.io/v1".to_string(), ns, "endpointslices".to_string());
        g.objects.entry(key).or_default().insert(format!("{name}-fake1"), slice);
    });
}

/// A watch: JSON lines, first the objects changed since `resourceVersion`, then live events,
/// until `timeoutSeconds`.
fn watch(
    t: &Target,
    query: &str,
    selector: Option<String>,
    st: Arc<Mutex<State>>,
    ev: broadcast::Sender<(String, String, String, Value)>,
) -> Response<Body> {
    let since: u64 = query_param(query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = query_param(query, "timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(30u64);
    let mut rx = ev.subscribe();
    let backlog: Vec<Value> = {
        let g = st.lock().unwrap();
        g.objects
            .iter()
            .filter(|((p, ns, r), _)| {
                *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|w| w == ns)
            })
            .flat_map(|(_, m)| m.values())
            .filter(|o| matches_selector(o, selector.as_deref()))
            .filter(|o| {
                o["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) > since
            })
            .map(|o| json!({"type": "MODIFIED", "object": o}))
            .collect()
    };
    let (prefix, ns, resource) = (t.prefix.clone(), t.namespace.clone(), t.resource.clone());
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        for e in backlog {
            if tx.send(Ok(Frame::data(Bytes::from(format!("{e}\n"))))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let next = tokio::time::timeout_at(deadline, rx.recv()).await;
            let Ok(Ok((p, n, r, e))) = next else { return };
            if p != prefix || r != resource || ns.as_ref().is_some_and(|w| *w != n) {
                continue;
            }
            if !matches_selector(&e["object"], selector.as_deref()) {
                continue;
            }
            if tx.send(Ok(Frame::data(Bytes::from(format!("{e}\n"))))).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream_from(out);
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(http_body_util::BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Port-forward over WebSocket, `v4.channel.k8s.io`: channel 0 carries data, channel 1
/// errors; each starts with a frame holding the port. Bridged to the pod's address.
async fn port_forward(req: Request<Incoming>, path: &str, query: &str, st: Arc<Mutex<State>>) -> Response<Body> {
    let Some(t) = parse_path(path) else { return status(404, "NotFound", "no route") };
    let pod = t.name.clone().unwrap_or_default();
    let port: u16 = query_param(query, "ports").and_then(|p| p.parse().ok()).unwrap_or(0);
    let ip = st.lock().unwrap().pod_ips.get(&pod).copied();
    let Some(ip) = ip else { return status(404, "NotFound", &format!("pods \"{pod}\" not found")) };
    let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()).unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut sink, mut stream) = ws.split();
        use tokio_tungstenite::tungstenite::Message;
        let p = port.to_le_bytes();
        let _ = sink.send(Message::binary(vec![0, p[0], p[1]])).await;
        let _ = sink.send(Message::binary(vec![1, p[0], p[1]])).await;
        let conn = match tokio::net::TcpStream::connect((ip, port)).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {pod}: dial tcp {ip}:{port}: {e}");
                let mut frame = vec![1];
                frame.extend(msg.as_bytes());
                let _ = sink.send(Message::binary(frame)).await;
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        };
        let (mut rd, mut wr) = conn.into_split();
        let to_ws = async move {
            let mut buf = vec![0u8; 16384];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(0);
                        frame.extend_from_slice(&buf[..n]);
                        if sink.send(Message::binary(frame)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        let from_ws = async move {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) if b.len() > 1 && b[0] == 0 && wr.write_all(&b[1..]).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        tokio::join!(to_ws, from_ws);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A kubeconfig file with one context per `(context, server URL)`, the first current.
pub fn kubeconfig(dir: &Path, contexts: &[(&str, &str)]) -> PathBuf {
    let mut clusters = String::new();
    let mut ctxs = String::new();
    for (name, server) in contexts {
        clusters.push_str(&format!("- name: {name}\n  cluster:\n    server: {server}\n"));
        ctxs.push_str(&format!("- name: {name}\n  context:\n    cluster: {name}\n    user: tester\n"));
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {}\nclusters:\n{clusters}contexts:\n{ctxs}users:\n- name: tester\n  user:\n    token: test-token\n",
        contexts[0].0
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}
