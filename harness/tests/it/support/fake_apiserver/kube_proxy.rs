//! The fake's kube-proxy, for selector-less Services (whose EndpointSlices the client writes,
//! as the service-scaling sweep does): their ClusterIPs, from this server's slot of 127/8,
//! and, a programming delay after a Service has a ready endpoint, a listener on
//! ClusterIP:port for each TCP port, splicing each connection to the next ready loopback
//! endpoint, round-robin, at the port its slice gives; torn down when the Service, its
//! slices or its namespace go, or the server drops.
//!
//! It cannot check a real dataplane (iptables, IPVS or nftables rules: the `dataplane` and
//! `lab` tests program real ones in real namespaces), UDP, session affinity, routing by
//! topology hints, or NAT: connections are proxied, so a backend sees the proxy's address, not
//! the client's. Selecting Services get no virtual IP at all (see the module docs).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Key, State, SLICE_SERVICE_LABEL};

/// The fake kube-proxy's state.
pub(super) struct Proxy {
    pub(super) delay: Duration,
    /// Index of the next ClusterIP to give out (see [`cluster_ip`]).
    pub(super) next_cluster_ip: u32,
    /// (namespace, Service) → its forwarding, pending (in the programming delay) or live.
    pub(super) rules: BTreeMap<(String, String), Rule>,
    /// (namespace, Service) → when forwarding last started; kept after teardown.
    pub(super) programmed_at: BTreeMap<(String, String), Instant>,
    pub(super) generation: u64,
}

/// What to forward for one Service: its ClusterIP and TCP ports (name, port).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) ip: Ipv4Addr,
    pub(super) ports: Vec<(String, u16)>,
}

pub(super) struct Rule {
    /// Tells a superseded task from the current one.
    pub(super) generation: u64,
    pub(super) plan: Plan,
    /// Sleeps out the delay, then owns the listeners and spliced connections: aborting it
    /// closes them all.
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Where it listens (empty while pending).
    pub(super) listening: Vec<SocketAddr>,
}

/// The next ClusterIP for a selector-less Service: `127.<slot>.<1 + i / 254>.<1 + i % 254>`
/// (no .0 or .255, so no address looks like a network or a broadcast address).
pub(super) fn cluster_ip(g: &mut State) -> Option<Ipv4Addr> {
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

pub(super) fn is_selectorless(svc: &Value) -> bool {
    svc["spec"]["selector"].as_object().is_none_or(|m| m.is_empty())
}

/// The (namespace, Service) pairs whose forwarding a change to these objects of `key` may
/// change: a Service itself, or the Service an EndpointSlice names in its label.
pub(super) fn proxied_services<'a>(key: &Key, objects: impl IntoIterator<Item = &'a Value>) -> Vec<(String, String)> {
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
pub(super) fn reconcile(g: &mut State, st: &Arc<Mutex<State>>, services: Vec<(String, String)>) {
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
