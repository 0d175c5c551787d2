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
//!   (see [`controllers::daemonset_pods`]).
//! - A kube-proxy forwards TCP to the endpoints of selector-less Services, whose EndpointSlices
//!   the client writes itself, after a programming delay (see [`kube_proxy::forward_service`]).
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
//!
//! ## Parts
//!
//! | file              | what it fakes                                                          |
//! |-------------------|------------------------------------------------------------------------|
//! | `mod.rs`          | [`FakeApi`]: starting a server, its shared state, what tests ask of it |
//! | `router.rs`       | the HTTP front: API paths to verbs, logs, watches, recorded requests   |
//! | `store.rs`        | the object store: selectors, create, replace, patch, delete, GC        |
//! | `kubelet.rs`      | pod lifecycle: pod addresses, Ready or ImagePullBackOff, real agents   |
//! | `controllers.rs`  | the EndpointSlice and DaemonSet controllers                            |
//! | `kube_proxy.rs`   | ClusterIPs and TCP forwarding for selector-less Services               |
//! | `port_forward.rs` | `pods/{name}/portforward` over WebSocket                               |
//!
//! It is a stand-in for a real API server, not one: it serves what zonebench calls, in the
//! shapes kube-rs sends and reads, and each part says what it cannot check. What passes
//! here can still fail on a cluster (validation, admission, RBAC, real controllers and
//! dataplanes); `kube::live_cluster_run` and `kube_sweep::live_cluster_sweep` run against one
//! when `ZONEBENCH_TEST_KUBECONFIG` names it.

mod controllers;
mod kube_proxy;
mod kubelet;
mod port_forward;
mod router;
mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use kube_proxy::{proxied_services, reconcile, Proxy};
use router::handle;
use store::key_of;

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
