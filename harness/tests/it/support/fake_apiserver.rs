//! A small Kubernetes API server for tests: real HTTP on 127.0.0.1:0, serving recorded API
//! objects (the fixtures under `tests/fixtures/kube/`) and whatever the client creates, and
//! recording every request kube-rs makes (method, path, query, body) so tests can check them.
//!
//! It implements what zonebench uses: GET /version; list (label and field selectors), get,
//! create, replace, merge-patch, delete and delete-collection of namespaced and cluster-scoped
//! resources; watch (JSON lines from a resourceVersion); pod logs (with `tailLines`); and
//! port-forward over WebSocket (`v4.channel.k8s.io`). Controllers act as a cluster's do:
//!
//! - A "kubelet" gives created pods a status. In [`Kubelet::RunAgents`] mode it really starts
//!   each agent pod's container args with `zonebench agent`, on a pod address of its own (the
//!   args' `0.0.0.0` becomes that address, and the Secret's token goes to a file):
//!   port-forward then reaches a real agent, as on a cluster.
//! - An EndpointSlice controller writes a slice for each selecting Service, and a DaemonSet
//!   controller creates one pod per eligible Node for each DaemonSet created through the API
//!   (see [`daemonset_pods`]).
//! - A kube-proxy forwards TCP to the endpoints of selector-less Services, whose EndpointSlices
//!   the client writes itself, after a programming delay (see [`forward_service`]).
//!
//! ## Addresses
//!
//! Each server leases a /16 of 127.0.0.0/8 for its lifetime, `127.<slot>.0.0/16` with `slot`
//! in 1..=255, by listening on `127.<slot>.0.1:`[`LEASE_PORT`]: the kernel refuses a second
//! listener there, so no two fake servers, in this test process or any other on the machine,
//! share a slot, and a slot frees itself when its holder exits, even on a crash. The search
//! starts at a slot derived from the process id and a per-process counter. Within the slot:
//!
//! | addresses                  | what                                                    |
//! |----------------------------|---------------------------------------------------------|
//! | `127.<slot>.0.1`           | the lease, nothing else                                 |
//! | `127.<slot>.0.2`–`.0.255`  | pod addresses, in creation order (254 pods)             |
//! | `127.<slot>.1–255.1–254`   | ClusterIPs of selector-less Services (64 770 of them)   |
//!
//! Selecting Services keep the address of the first pod they select as ClusterIP (nothing
//! routes a virtual IP for them, so `via = "service"` traffic reaches a real agent), or get
//! `10.96.x.y` when they select none: tests never send traffic there.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Watch events: (api prefix, namespace, resource, `{"type", "object"}`).
type Events = broadcast::Sender<(String, String, String, Value)>;

/// (api prefix, namespace or "", resource).
type Key = (String, String, String);

/// The port of a server's address lease on `127.<slot>.0.1` (see the module docs).
pub const LEASE_PORT: u16 = 7099;

/// How long the fake kube-proxy takes to program a selector-less Service once it has ready
/// endpoints, unless [`FakeApi::set_programming_delay`] says otherwise.
pub const DEFAULT_PROGRAMMING_DELAY: Duration = Duration::from_millis(200);

const SLICE_SERVICE_LABEL: &str = "kubernetes.io/service-name";
const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

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
    /// DaemonSet pods are not agents: they only turn Ready.
    RunAgents { zonebench: PathBuf, dir: PathBuf },
    /// Pods are stuck: their image cannot be pulled.
    ImagePullBackOff,
}

struct State {
    requests: Vec<Recorded>,
    /// (api prefix, namespace or "", resource) → name → object.
    objects: BTreeMap<Key, BTreeMap<String, Value>>,
    rv: u64,
    /// The last octet of the next pod address.
    next_ip: u32,
    /// This server's /16 of 127/8 (see the module docs).
    slot: u8,
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
    /// Every how many-th write (POST, DELETE) is shed with 429, as API Priority and Fairness
    /// sheds a burst; 0: none.
    shed_every: u64,
    writes_seen: u64,
    /// The runtime the server started on: where the kube-proxy's listeners run, also when a
    /// change comes from a test's synchronous call ([`FakeApi::load`]).
    rt: tokio::runtime::Handle,
    proxy: Proxy,
    /// The server was dropped: tasks still finishing (a namespace's removal) start nothing.
    closed: bool,
}

/// The fake kube-proxy's state.
struct Proxy {
    delay: Duration,
    /// Index of the next ClusterIP to give out (see [`cluster_ip`]).
    next_cluster_ip: u32,
    /// (namespace, Service) → its forwarding, pending (in the programming delay) or live.
    rules: BTreeMap<(String, String), Rule>,
    /// (namespace, Service) → when forwarding last started; kept after teardown.
    programmed_at: BTreeMap<(String, String), Instant>,
    generation: u64,
}

/// What to forward for one Service: its ClusterIP and TCP ports (name, port).
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    ip: Ipv4Addr,
    ports: Vec<(String, u16)>,
}

struct Rule {
    /// Tells a superseded task from the current one.
    generation: u64,
    plan: Plan,
    /// Sleeps out the delay, then owns the listeners and spliced connections: aborting it
    /// closes them all.
    task: tokio::task::JoinHandle<()>,
    /// Where it listens (empty while pending).
    listening: Vec<SocketAddr>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: Events,
    task: tokio::task::JoinHandle<()>,
    slot: u8,
    /// Holds the slot (see the module docs); closed with the server.
    _lease: std::net::TcpListener,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        for (_, rule) in std::mem::take(&mut st.proxy.rules) {
            rule.task.abort();
        }
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

/// Leases a free slot: see the module docs.
fn lease_slot() -> (u8, std::net::TcpListener) {
    static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id().wrapping_mul(31)).wrapping_add(n.wrapping_mul(97)) % 255;
    for i in 0..255 {
        let slot = 1 + ((start + i) % 255) as u8;
        if let Ok(l) = std::net::TcpListener::bind((Ipv4Addr::new(127, slot, 0, 1), LEASE_PORT)) {
            return (slot, l);
        }
    }
    panic!("no free address slot for a fake API server: 127.N.0.1:{LEASE_PORT} is taken for every N in 1..=255")
}

impl FakeApi {
    pub async fn start(kubelet: Kubelet) -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(1024);
        let (slot, lease) = lease_slot();
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            objects: BTreeMap::new(),
            rv: 1000,
            next_ip: 2,
            slot,
            kubelet,
            pod_ips: BTreeMap::new(),
            logs: BTreeMap::new(),
            children: Vec::new(),
            version: fixture("version.json"),
            terminating_for: Duration::from_millis(300),
            deny_all: false,
            shed_every: 0,
            writes_seen: 0,
            hold_pods: false,
            rt: tokio::runtime::Handle::current(),
            closed: false,
            proxy: Proxy {
                delay: DEFAULT_PROGRAMMING_DELAY,
                next_cluster_ip: 0,
                rules: BTreeMap::new(),
                programmed_at: BTreeMap::new(),
                generation: 0,
            },
        }));
        let (st, ev) = (state.clone(), events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                let (st, ev) = (st.clone(), ev.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (st, ev) = (st.clone(), ev.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, ev).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApi { addr, state, events, task, slot, _lease: lease }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server's address slot: pods are `127.<slot>.0.n`, selector-less Services'
    /// ClusterIPs `127.<slot>.1–255.n` (see the module docs).
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Adds recorded objects: a `…List` (its items) or a single object. No controller acts
    /// on them (a recorded DaemonSet gets no pods), but the kube-proxy does: a loaded
    /// EndpointSlice of a selector-less Service is forwarded to as a created one is.
    pub fn load(&self, object: Value) {
        let items = match object.get("items") {
            Some(items) => items.as_array().unwrap().clone(),
            None => vec![object],
        };
        let mut st = self.state.lock().unwrap();
        let mut touched = Vec::new();
        for mut o in items {
            st.rv += 1;
            o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let key = key_of(&o);
            let name = o["metadata"]["name"].as_str().unwrap().to_string();
            touched.extend(proxied_services(&key, [&o]));
            st.objects.entry(key).or_default().insert(name, o);
        }
        reconcile(&mut st, &self.state, touched);
    }

    pub fn deny_all(&self) {
        self.state.lock().unwrap().deny_all = true;
    }

    pub fn hold_pods(&self) {
        self.state.lock().unwrap().hold_pods = true;
    }

    /// Sheds every `n`-th write (POST or DELETE) with `429 Too Many Requests` from now on
    /// (0: none), as a loaded API server's priority and fairness does; the request is
    /// recorded but has no effect.
    pub fn shed_every(&self, n: u64) {
        self.state.lock().unwrap().shed_every = n;
    }

    /// The log of the pod named `pod` (in any namespace), as `GET …/pods/{pod}/log` answers it.
    pub fn set_log(&self, pod: &str, text: &str) {
        self.state.lock().unwrap().logs.insert(pod.to_string(), text.to_string());
    }

    /// How long the kube-proxy waits, once a selector-less Service has ready endpoints,
    /// before it forwards (a cluster's rule sync). For Services programmed from now on.
    pub fn set_programming_delay(&self, delay: Duration) {
        self.state.lock().unwrap().proxy.delay = delay;
    }

    /// When the kube-proxy last started forwarding for `namespace/service`: taken just
    /// before its listeners were bound, so no connection through it is older. Kept after
    /// the Service is gone.
    pub fn programmed_at(&self, namespace: &str, service: &str) -> Option<Instant> {
        let st = self.state.lock().unwrap();
        st.proxy.programmed_at.get(&(namespace.to_string(), service.to_string())).copied()
    }

    /// Where the kube-proxy listens for `namespace/service` now (empty: not forwarding).
    pub fn forwarding(&self, namespace: &str, service: &str) -> Vec<SocketAddr> {
        let st = self.state.lock().unwrap();
        st.proxy
            .rules
            .get(&(namespace.to_string(), service.to_string()))
            .map(|r| r.listening.clone())
            .unwrap_or_default()
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
        let old = st.objects.entry(key.clone()).or_default().insert(name, object.clone());
        let touched = proxied_services(&key, old.iter().chain([&object]));
        let _ = self.events.send((key.0, key.1, key.2, json!({"type": "MODIFIED", "object": object})));
        reconcile(&mut st, &self.state, touched);
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
#[derive(Clone)]
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

/// A label selector as the API server takes it: terms joined by commas, each `k=v`, `k==v`,
/// `k!=v`, `k`, `!k`, `k in (a,b)` or `k notin (a,b)` (kube-rs passes `ListParams::labels`
/// through and writes `Selector`s in this syntax).
fn matches_selector(o: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.trim().is_empty()) else { return true };
    let labels = &o["metadata"]["labels"];
    selector_terms(sel).into_iter().all(|term| label_term(labels, term.trim()))
}

/// Splits a selector at the commas outside parentheses (`in (a,b)` holds commas).
fn selector_terms(sel: &str) -> Vec<&str> {
    let (mut out, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&sel[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sel[from..]);
    out
}

fn label_term(labels: &Value, term: &str) -> bool {
    let value = |k: &str| labels[k.trim()].as_str();
    if let Some(k) = term.strip_prefix('!') {
        return value(k).is_none();
    }
    for (op, want) in [(" notin ", false), (" in ", true)] {
        if let Some((k, set)) = term.split_once(op) {
            let set = set.trim().trim_start_matches('(').trim_end_matches(')');
            return value(k).is_some_and(|v| set.split(',').any(|s| s.trim() == v)) == want;
        }
    }
    if let Some((k, v)) = term.split_once("!=") {
        return value(k) != Some(v.trim());
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return value(k) == Some(v.trim());
    }
    value(term).is_some()
}

/// A field selector: `a.b.c=v`, `a.b.c==v` or `a.b.c!=v` terms on the object's JSON (a
/// missing field reads as "").
fn matches_fields(o: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.trim().is_empty()) else { return true };
    sel.split(',').all(|term| {
        let (path, want, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return true;
        };
        let mut field = o;
        for seg in path.trim().split('.') {
            field = &field[seg];
        }
        let got = match field {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        (got == want.trim()) == equal
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

fn emit(ev: &Events, key: &Key, kind: &str, o: &Value) {
    let _ = ev.send((key.0.clone(), key.1.clone(), key.2.clone(), json!({"type": kind, "object": o})));
}

/// The last `n` lines of a log, as `tailLines` asks.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("{l}\n")).collect()
}

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
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
    if matches!(method.as_str(), "POST" | "DELETE") {
        let mut g = st.lock().unwrap();
        g.writes_seen += 1;
        if g.shed_every > 0 && g.writes_seen.is_multiple_of(g.shed_every) {
            return status(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            );
        }
    }
    if path == "/version" {
        let v = st.lock().unwrap().version.clone();
        return json_response(StatusCode::OK, &v);
    }
    let Some(t) = parse_path(&path) else { return status(404, "NotFound", &format!("no route {path}")) };
    let selector = query_param(&query, "labelSelector");
    let fields = query_param(&query, "fieldSelector");
    match (method.as_str(), &t.name, &t.sub) {
        ("GET", None, _) if query_param(&query, "watch").as_deref() == Some("true") => {
            watch(&t, &query, selector, fields, st, ev)
        }
        ("GET", None, _) => {
            let st = st.lock().unwrap();
            let items: Vec<Value> = selected(&st, &t, selector.as_deref(), fields.as_deref()).cloned().collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name), Some(sub)) if sub == "log" => {
            let st = st.lock().unwrap();
            let ns = t.namespace.clone().unwrap_or_default();
            if !st.objects.get(&("/api/v1".into(), ns.clone(), "pods".into())).is_some_and(|m| m.contains_key(name)) {
                return status(404, "NotFound", &format!("pods \"{name}\" not found in namespace {ns}"));
            }
            let log = st.logs.get(name).cloned().unwrap_or_default();
            let log = match query_param(&query, "tailLines").map(|n| n.parse::<usize>()) {
                None => log,
                Some(Ok(n)) => tail(&log, n),
                Some(Err(_)) => return status(400, "BadRequest", "tailLines: not a whole number"),
            };
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
        ("POST", None, None) => create(&t, body, st, ev),
        ("PUT", Some(name), None) => replace(&t, name, body, st, ev),
        ("DELETE", Some(name), None) => delete(&t, name, st, ev),
        ("DELETE", None, None) => delete_collection(&t, selector.as_deref(), fields.as_deref(), st, ev),
        ("PATCH", Some(name), None) => merge_patch(&t, name, body, st, ev),
        _ => status(405, "MethodNotAllowed", &format!("{method} {path} is not served by the fake")),
    }
}

/// The stored objects a list (or watch, or delete-collection) of `t` covers.
fn selected<'a>(
    st: &'a State,
    t: &'a Target,
    labels: Option<&'a str>,
    fields: Option<&'a str>,
) -> impl Iterator<Item = &'a Value> + 'a {
    st.objects
        .iter()
        .filter(move |((p, ns, r), _)| {
            *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|want| want == ns)
        })
        .flat_map(|(_, m)| m.values())
        .filter(move |o| matches_selector(o, labels) && matches_fields(o, fields))
}

fn create(t: &Target, body: Option<Value>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
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
    let pod_ip = if t.resource == "pods" {
        match next_pod_ip(&mut guard) {
            Some(ip) => Some(ip),
            None => return status(500, "InternalError", "the fake's 254 pod addresses are used up"),
        }
    } else {
        None
    };
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
    if t.resource == "services" && o["spec"]["clusterIP"].is_null() && o["spec"]["type"] != "ExternalName" {
        let ip = if is_selectorless(&o) {
            // The kube-proxy forwards this address once the client writes the endpoints.
            match cluster_ip(&mut guard) {
                Some(ip) => ip.to_string(),
                None => return status(500, "InternalError", "the fake's 64770 ClusterIPs are used up"),
            }
        } else {
            // No kube-proxy here to route a virtual IP for a selecting Service: it gets the
            // address of the first pod it selects (by name), so a run's `via = "service"`
            // traffic reaches a real agent; one selecting nothing gets an address from the
            // usual Service range, where nothing is ever sent.
            let selected = o["spec"]["selector"].as_object().and_then(|sel| {
                guard.objects.get(&("/api/v1".to_string(), ns.clone(), "pods".to_string()))?.values().find_map(|p| {
                    let matches = sel.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v);
                    matches.then(|| p["status"]["podIP"].as_str().map(String::from)).flatten()
                })
            });
            selected.unwrap_or_else(|| format!("10.96.{}.{}", rv / 256 % 256, rv % 256))
        };
        o["spec"]["clusterIP"] = json!(ip);
        o["spec"]["clusterIPs"] = json!([ip]);
    }
    guard.objects.entry(key.clone()).or_default().insert(name.clone(), o.clone());
    emit(&ev, &key, "ADDED", &o);
    let touched = proxied_services(&key, [&o]);
    reconcile(&mut guard, &st, touched);
    if t.resource == "services" && !is_selectorless(&o) {
        drop(guard);
        endpoint_slice_controller(st, ev, ns, o.clone());
        return json_response(StatusCode::CREATED, &o);
    }
    if t.resource == "daemonsets" && t.prefix == "/apis/apps/v1" {
        let pods = daemonset_pods(&mut guard, &ev, &ns, &o);
        daemonset_status(&mut guard, &ev, &ns, &name);
        let (kubelet, hold) = (guard.kubelet.clone(), guard.hold_pods);
        drop(guard);
        if !hold {
            for (pod, ip) in pods {
                let key = ("/api/v1".to_string(), ns.clone(), "pods".to_string());
                start_pod(st.clone(), ev.clone(), key, pod, ip, kubelet.clone());
            }
        }
        return json_response(StatusCode::CREATED, &o);
    }
    if let Some(ip) = pod_ip {
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

fn next_pod_ip(g: &mut State) -> Option<Ipv4Addr> {
    let n = u8::try_from(g.next_ip).ok()?;
    g.next_ip += 1;
    Some(Ipv4Addr::new(127, g.slot, 0, n))
}

/// The next ClusterIP for a selector-less Service: `127.<slot>.<1 + i / 254>.<1 + i % 254>`
/// (no .0 or .255, so no address looks like a network or a broadcast address).
fn cluster_ip(g: &mut State) -> Option<Ipv4Addr> {
    let i = g.proxy.next_cluster_ip;
    if i >= 255 * 254 {
        return None;
    }
    g.proxy.next_cluster_ip += 1;
    Some(Ipv4Addr::new(127, g.slot, (1 + i / 254) as u8, (1 + i % 254) as u8))
}

fn is_cluster_ip_of(slot: u8, ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 127 && o[1] == slot && o[2] >= 1 && (1..=254).contains(&o[3])
}

fn is_selectorless(svc: &Value) -> bool {
    svc["spec"]["selector"].as_object().is_none_or(|m| m.is_empty())
}

/// A replace (PUT) of a stored object, as `Api::replace` sends it.
fn replace(t: &Target, name: &str, body: Option<Value>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
    let Some(mut o) = body else { return status(400, "BadRequest", "body is not JSON") };
    let key = (t.prefix.clone(), t.namespace.clone().unwrap_or_default(), t.resource.clone());
    let mut g = st.lock().unwrap();
    let Some(old) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    if o["metadata"]["name"].as_str() != Some(name) {
        return status(400, "BadRequest", &format!("the body's metadata.name is not {name:?}"));
    }
    for field in ["uid", "creationTimestamp", "namespace"] {
        o["metadata"][field] = old["metadata"][field].clone();
    }
    if t.resource == "services" {
        // The ClusterIP is immutable.
        o["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
        o["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
    g.rv += 1;
    o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
    g.objects.get_mut(&key).unwrap().insert(name.to_string(), o.clone());
    emit(&ev, &key, "MODIFIED", &o);
    let touched = proxied_services(&key, [&old, &o]);
    reconcile(&mut g, &st, touched);
    json_response(StatusCode::OK, &o)
}

/// The kubelet: after a moment, a pod is running and ready (or stuck pulling its image).
/// Agent pods really run in [`Kubelet::RunAgents`] mode; DaemonSet pods never do.
fn start_pod(st: Arc<Mutex<State>>, ev: Events, key: Key, name: String, ip: Ipv4Addr, kubelet: Kubelet) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let daemon = {
            let g = st.lock().unwrap();
            // Deleted meanwhile (its DaemonSet or namespace gone): nothing to start.
            let Some(pod) = g.objects.get(&key).and_then(|m| m.get(&name)) else { return };
            daemonset_owner(pod).is_some()
        };
        if let (Kubelet::RunAgents { zonebench, dir }, false) = (&kubelet, daemon) {
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
        if pod["spec"]["nodeName"].is_null() {
            // The scheduler: agent pods name their node in a required node affinity.
            pod["spec"]["nodeName"] = pod["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"]
                [0]
            .clone();
        }
        let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("agent").to_string();
        pod["status"] = match kubelet {
            Kubelet::ImagePullBackOff => json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": container, "ready": false, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": format!("Back-off pulling image {}", pod["spec"]["containers"][0]["image"])}}}]
            }),
            _ => json!({
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": container, "ready": true, "restartCount": 0,
                    "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "state": {"running": {"startedAt": now()}}}]
            }),
        };
        g.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        g.objects.entry(key.clone()).or_default().insert(name, pod.clone());
        emit(&ev, &key, "MODIFIED", &pod);
        if let Some(ds) = daemonset_owner(&pod) {
            daemonset_status(&mut g, &ev, &key.1, &ds);
        }
    });
}

/// The DaemonSet a pod belongs to (its controller owner reference).
fn daemonset_owner(pod: &Value) -> Option<String> {
    pod["metadata"]["ownerReferences"].as_array()?.iter().find_map(|r| {
        (r["kind"] == "DaemonSet" && r["controller"] == true).then(|| r["name"].as_str().map(String::from)).flatten()
    })
}

/// The DaemonSet controller, minimally: one pod per Node in the store that the template
/// lets it onto (its `nodeSelector`, and tolerations for the Node's NoSchedule/NoExecute
/// taints; like the real controller it tolerates the `node.kubernetes.io/*` condition taints
/// and cordons), named `<daemonset>-<node>`, with the template's labels and spec, bound to
/// its node. The kubelet then makes them Running and Ready with a pod address of this
/// server: a hostNetwork pod would show its node's IP on a cluster, but here nothing may be
/// sent off this machine. Returns the pods to start, with their addresses.
fn daemonset_pods(g: &mut State, ev: &Events, ns: &str, ds: &Value) -> Vec<(String, Ipv4Addr)> {
    let ds_name = ds["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let template = &ds["spec"]["template"];
    let nodes: Vec<Value> = g
        .objects
        .get(&("/api/v1".to_string(), String::new(), "nodes".to_string()))
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let key = ("/api/v1".to_string(), ns.to_string(), "pods".to_string());
    let mut out = Vec::new();
    for node in nodes {
        let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
        let selects = template["spec"]["nodeSelector"]
            .as_object()
            .is_none_or(|sel| sel.iter().all(|(k, v)| node["metadata"]["labels"][k] == *v));
        if !selects || !tolerates(&template["spec"]["tolerations"], &node["spec"]["taints"]) {
            continue;
        }
        let name = format!("{ds_name}-{node_name}");
        if g.objects.get(&key).is_some_and(|m| m.contains_key(&name)) {
            continue;
        }
        let Some(ip) = next_pod_ip(g) else {
            eprintln!("fake DaemonSet controller: no pod address left for {ns}/{name}");
            continue;
        };
        g.rv += 1;
        let rv = g.rv;
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!(node_name);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{rv:012}"),
                "resourceVersion": rv.to_string(), "creationTimestamp": now(),
                "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds_name,
                    "uid": ds["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        });
        g.objects.entry(key.clone()).or_default().insert(name.clone(), pod.clone());
        g.pod_ips.insert(name.clone(), ip);
        emit(ev, &key, "ADDED", &pod);
        out.push((name, ip));
    }
    out
}

/// Whether tolerations let a pod onto a node with these taints.
fn tolerates(tolerations: &Value, taints: &Value) -> bool {
    let tolerations = tolerations.as_array().map(Vec::as_slice).unwrap_or_default();
    taints.as_array().map(Vec::as_slice).unwrap_or_default().iter().all(|taint| {
        let key = taint["key"].as_str().unwrap_or_default();
        taint["effect"] == "PreferNoSchedule"
            || key.starts_with("node.kubernetes.io/")
            || tolerations.iter().any(|tol| {
                let exists = tol["operator"] == "Exists";
                let key_ok = match tol["key"].as_str().filter(|k| !k.is_empty()) {
                    None => exists,
                    Some(k) => k == key,
                };
                let value_ok =
                    exists || tol["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
                let effect_ok = tol["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
                key_ok && value_ok && effect_ok
            })
    })
}

/// A DaemonSet's status from its pods, as its controller writes it.
fn daemonset_status(g: &mut State, ev: &Events, ns: &str, ds_name: &str) {
    let pods: Vec<&Value> = g
        .objects
        .get(&("/api/v1".to_string(), ns.to_string(), "pods".to_string()))
        .map(|m| m.values().filter(|p| daemonset_owner(p).as_deref() == Some(ds_name)).collect())
        .unwrap_or_default();
    let ready = pods
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count();
    let desired = pods.len();
    let key = ("/apis/apps/v1".to_string(), ns.to_string(), "daemonsets".to_string());
    g.rv += 1;
    let rv = g.rv;
    let Some(ds) = g.objects.get_mut(&key).and_then(|m| m.get_mut(ds_name)) else { return };
    ds["status"] = json!({"currentNumberScheduled": desired, "desiredNumberScheduled": desired,
        "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
        "updatedNumberScheduled": desired, "observedGeneration": 1});
    ds["metadata"]["resourceVersion"] = json!(rv.to_string());
    let ds = ds.clone();
    emit(ev, &key, "MODIFIED", &ds);
}

fn delete(t: &Target, name: &str, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
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
        let (st2, ns, ev) = (st.clone(), name.to_string(), ev.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut g = st2.lock().unwrap();
            let held: Vec<Key> = g.objects.keys().filter(|(_, n, _)| *n == ns).cloned().collect();
            for k in held {
                for (_, o) in g.objects.remove(&k).unwrap_or_default() {
                    emit(&ev, &k, "DELETED", &o);
                }
            }
            let namespaces = ("/api/v1".to_string(), String::new(), "namespaces".to_string());
            if let Some(o) = g.objects.get_mut(&namespaces).and_then(|m| m.remove(&ns)) {
                emit(&ev, &namespaces, "DELETED", &o);
            }
            let forwarded: Vec<(String, String)> = g.proxy.rules.keys().filter(|(n, _)| *n == ns).cloned().collect();
            reconcile(&mut g, &st2, forwarded);
        });
        return json_response(StatusCode::OK, &o);
    }
    g.objects.get_mut(&key).unwrap().remove(name);
    emit(&ev, &key, "DELETED", &o);
    if t.resource == "services" {
        // Garbage collection of the slices the controller made for the Service (those the
        // client wrote have no owner and stay, as on a cluster).
        let slices = ("/apis/discovery.k8s.io/v1".to_string(), key.1.clone(), "endpointslices".to_string());
        if let Some(m) = g.objects.get_mut(&slices) {
            let owned: Vec<String> = m
                .iter()
                .filter(|(_, s)| {
                    s["metadata"]["labels"][SLICE_SERVICE_LABEL].as_str() == Some(name)
                        && s["metadata"]["labels"][SLICE_MANAGED_BY] == SLICE_CONTROLLER
                })
                .map(|(n, _)| n.clone())
                .collect();
            for n in owned {
                let s = m.remove(&n).unwrap();
                emit(&ev, &slices, "DELETED", &s);
            }
        }
    }
    if t.resource == "daemonsets" {
        // Garbage collection of its pods.
        let pods = ("/api/v1".to_string(), key.1.clone(), "pods".to_string());
        if let Some(m) = g.objects.get_mut(&pods) {
            let owned: Vec<String> =
                m.iter().filter(|(_, p)| daemonset_owner(p).as_deref() == Some(name)).map(|(n, _)| n.clone()).collect();
            for n in owned {
                let p = m.remove(&n).unwrap();
                emit(&ev, &pods, "DELETED", &p);
            }
        }
    }
    let touched = proxied_services(&key, [&o]);
    reconcile(&mut g, &st, touched);
    json_response(StatusCode::OK, &o)
}

/// `DELETE` on a collection (`Api::delete_collection`): every selected object, answered
/// with the list of them.
fn delete_collection(
    t: &Target,
    labels: Option<&str>,
    fields: Option<&str>,
    st: Arc<Mutex<State>>,
    ev: Events,
) -> Response<Body> {
    if t.namespace.is_none() && t.resource == "namespaces" {
        return status(405, "MethodNotAllowed", "the fake deletes namespaces one at a time");
    }
    let chosen: Vec<(Option<String>, Value)> = {
        let g = st.lock().unwrap();
        g.objects
            .iter()
            .filter(|((p, ns, r), _)| {
                *p == t.prefix && *r == t.resource && t.namespace.as_ref().is_none_or(|w| w == ns)
            })
            .flat_map(|((_, ns, _), m)| m.values().map(move |o| ((!ns.is_empty()).then(|| ns.clone()), o)))
            .filter(|(_, o)| matches_selector(o, labels) && matches_fields(o, fields))
            .map(|(ns, o)| (ns, o.clone()))
            .collect()
    };
    let mut items = Vec::new();
    for (ns, o) in chosen {
        let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let one = Target { namespace: ns, name: Some(name.clone()), sub: None, ..t.clone() };
        delete(&one, &name, st.clone(), ev.clone());
        items.push(o);
    }
    json_response(StatusCode::OK, &json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}))
}

/// A JSON merge patch (RFC 7386) of a stored object (`kubectl label` and kube-rs `Patch::Merge`).
fn merge_patch(t: &Target, name: &str, body: Option<Value>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
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
    let Some(old) = g.objects.get(&key).and_then(|m| m.get(name)).cloned() else {
        return status(404, "NotFound", &format!("{} \"{name}\" not found", t.resource));
    };
    let mut o = old.clone();
    merge(&mut o, &patch);
    g.rv += 1;
    o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
    g.objects.get_mut(&key).unwrap().insert(name.to_string(), o.clone());
    emit(&ev, &key, "MODIFIED", &o);
    let touched = proxied_services(&key, [&old, &o]);
    reconcile(&mut g, &st, touched);
    json_response(StatusCode::OK, &o)
}

/// The EndpointSlice controller, minimally: a moment after a Service with a selector is
/// created, one slice lists its selected ready pods with their node and zone, and (when the
/// Service asks for topology) a hint for the endpoint's own zone.
fn endpoint_slice_controller(st: Arc<Mutex<State>>, ev: Events, ns: String, svc: Value) {
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
                "labels": {SLICE_SERVICE_LABEL: name, SLICE_MANAGED_BY: SLICE_CONTROLLER}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": svc["spec"]["ports"].as_array().unwrap().iter().map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"]})).collect::<Vec<_>>(),
        });
        let key = ("/apis/discovery.k8s.io/v1".to_string(), ns, "endpointslices".to_string());
        g.objects.entry(key.clone()).or_default().insert(format!("{name}-fake1"), slice.clone());
        emit(&ev, &key, "ADDED", &slice);
    });
}

/// The (namespace, Service) pairs whose forwarding a change to these objects of `key` may
/// change: a Service itself, or the Service an EndpointSlice names in its label.
fn proxied_services<'a>(key: &Key, objects: impl IntoIterator<Item = &'a Value>) -> Vec<(String, String)> {
    let (prefix, ns, resource) = key;
    objects
        .into_iter()
        .filter_map(|o| match (prefix.as_str(), resource.as_str()) {
            ("/api/v1", "services") => o["metadata"]["name"].as_str(),
            ("/apis/discovery.k8s.io/v1", "endpointslices") => o["metadata"]["labels"][SLICE_SERVICE_LABEL].as_str(),
            _ => None,
        })
        .map(|svc| (ns.clone(), svc.to_string()))
        .collect()
}

/// The ready endpoints of a Service's EndpointSlices, in slice-name order, each with the
/// port its slice gives `port` (a Service port's name; `None`: any port, or none).
fn endpoints(g: &State, ns: &str, svc: &str, port: Option<&str>) -> Vec<(IpAddr, Option<u16>)> {
    let Some(slices) =
        g.objects.get(&("/apis/discovery.k8s.io/v1".to_string(), ns.to_string(), "endpointslices".to_string()))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for slice in slices.values().filter(|s| s["metadata"]["labels"][SLICE_SERVICE_LABEL].as_str() == Some(svc)) {
        let slice_port = port.and_then(|want| {
            slice["ports"].as_array()?.iter().find_map(|p| {
                let tcp = p["protocol"].as_str().unwrap_or("TCP") == "TCP";
                (tcp && p["name"].as_str().unwrap_or("") == want).then(|| p["port"].as_u64()?.try_into().ok()).flatten()
            })
        });
        for e in slice["endpoints"].as_array().map(Vec::as_slice).unwrap_or_default() {
            // An unset `ready` means ready (the API's rule).
            if e["conditions"]["ready"] == false {
                continue;
            }
            if let Some(ip) = e["addresses"][0].as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                out.push((ip, slice_port));
            }
        }
    }
    out
}

/// What the kube-proxy should forward for a Service now: only a selector-less Service with
/// a ClusterIP this server gave out, TCP ports, and at least one ready endpoint (without
/// endpoints a cluster rejects connections too).
fn forwarding_plan(g: &State, ns: &str, name: &str) -> Option<Plan> {
    let svc = g.objects.get(&("/api/v1".to_string(), ns.to_string(), "services".to_string()))?.get(name)?;
    if !is_selectorless(svc) {
        return None;
    }
    let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str()?.parse().ok()?;
    if !is_cluster_ip_of(g.slot, ip) {
        return None;
    }
    let ports: Vec<(String, u16)> = svc["spec"]["ports"]
        .as_array()?
        .iter()
        .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p["name"].as_str().unwrap_or("").to_string(), p["port"].as_u64()?.try_into().ok()?)))
        .collect();
    (!ports.is_empty() && !endpoints(g, ns, name, None).is_empty()).then_some(Plan { ip, ports })
}

/// Brings the kube-proxy's forwarding for these Services in line with the store: starts
/// (after the programming delay) what should forward, tears down what should not, restarts
/// what changed address or ports. Endpoint changes need nothing: each connection picks its
/// endpoint from the store.
fn reconcile(g: &mut State, st: &Arc<Mutex<State>>, services: Vec<(String, String)>) {
    if g.closed {
        return;
    }
    for key in services {
        let plan = forwarding_plan(g, &key.0, &key.1);
        if g.proxy.rules.get(&key).map(|r| &r.plan) == plan.as_ref() {
            continue;
        }
        if let Some(old) = g.proxy.rules.remove(&key) {
            old.task.abort();
        }
        let Some(plan) = plan else { continue };
        g.proxy.generation += 1;
        let generation = g.proxy.generation;
        let task = g.rt.spawn(forward_service(st.clone(), key.clone(), generation, plan.clone(), g.proxy.delay));
        g.proxy.rules.insert(key, Rule { generation, plan, task, listening: Vec::new() });
    }
}

/// The kube-proxy for one selector-less Service: after the programming delay, a listener on
/// ClusterIP:port for each TCP port of the Service (UDP ports are not forwarded: connects
/// are what the service-scaling probe measures), each splicing accepted connections to the
/// Service's ready endpoints round-robin, at the port their slice gives the Service port's
/// name. Before that, nothing listens: connects are refused, as they are before a cluster's
/// rules exist. Only loopback endpoints are dialled (tests send nothing off this machine); a
/// connection with no such endpoint is closed at once. Runs until aborted (the Service, its
/// slices or its namespace deleted, or the server dropped), which closes the listeners and
/// the spliced connections. Each forwarding Service holds a socket per TCP port: thousands of
/// Services need an open-file limit to match (`ulimit -n`).
async fn forward_service(st: Arc<Mutex<State>>, key: (String, String), generation: u64, plan: Plan, delay: Duration) {
    tokio::time::sleep(delay).await;
    let at = Instant::now();
    let mut listeners = Vec::new();
    for (name, port) in &plan.ports {
        match tokio::net::TcpListener::bind((plan.ip, *port)).await {
            Ok(l) => listeners.push((name.clone(), l)),
            Err(e) => {
                eprintln!("fake kube-proxy: Service {}/{}: cannot listen on {}:{port}: {e}", key.0, key.1, plan.ip)
            }
        }
    }
    {
        let mut g = st.lock().unwrap();
        let Some(rule) = g.proxy.rules.get_mut(&key).filter(|r| r.generation == generation) else { return };
        rule.listening = listeners.iter().filter_map(|(_, l)| l.local_addr().ok()).collect();
        g.proxy.programmed_at.insert(key.clone(), at);
    }
    futures::future::join_all(listeners.into_iter().map(|(name, l)| serve_port(st.clone(), key.clone(), name, l)))
        .await;
}

async fn serve_port(st: Arc<Mutex<State>>, key: (String, String), port: String, listener: tokio::net::TcpListener) {
    let mut connections = tokio::task::JoinSet::new();
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let client = match accepted {
                    Ok((c, _)) => c,
                    Err(_) => {
                        // Out of descriptors, say: wait instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let backends: Vec<SocketAddr> = {
                    let g = st.lock().unwrap();
                    endpoints(&g, &key.0, &key.1, Some(&port))
                        .into_iter()
                        .filter_map(|(ip, p)| Some(SocketAddr::new(ip, p?)))
                        .collect()
                };
                let local: Vec<SocketAddr> = backends.iter().copied().filter(|a| a.ip().is_loopback()).collect();
                if local.len() < backends.len() {
                    eprintln!("fake kube-proxy: Service {}/{} port {port:?}: not dialling non-loopback endpoints", key.0, key.1);
                }
                let Some(&backend) = local.get(next % local.len().max(1)) else { continue };
                next = next.wrapping_add(1);
                connections.spawn(async move {
                    let mut client = client;
                    let connect = tokio::net::TcpStream::connect(backend);
                    if let Ok(Ok(mut server)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A watch: JSON lines, first the objects changed since `resourceVersion`, then live events,
/// until `timeoutSeconds`.
fn watch(
    t: &Target,
    query: &str,
    selector: Option<String>,
    fields: Option<String>,
    st: Arc<Mutex<State>>,
    ev: Events,
) -> Response<Body> {
    let since: u64 = query_param(query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = query_param(query, "timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(30u64);
    let mut rx = ev.subscribe();
    let backlog: Vec<Value> = {
        let g = st.lock().unwrap();
        selected(&g, t, selector.as_deref(), fields.as_deref())
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
            if !matches_selector(&e["object"], selector.as_deref()) || !matches_fields(&e["object"], fields.as_deref())
            {
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
