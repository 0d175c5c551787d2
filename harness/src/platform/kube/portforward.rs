//! Reaching an agent's control API through the API server, as `kubectl port-forward` does:
//! a listener on 127.0.0.1 per agent, and for each connection accepted there a fresh
//! port-forward stream to the pod, bridged byte for byte. The control client then speaks
//! plain HTTP over TCP to `127.0.0.1:<port>`, exactly as it does to any other agent; the
//! coordinator needs no route to pod addresses, only the API server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::client::error_chain;

/// A local listener forwarding to one pod port; stops when dropped.
pub struct Bridge {
    addr: SocketAddr,
    pod: String,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Bridge {
    /// Starts listening on an ephemeral loopback port for `pod`'s `port`.
    pub async fn start(pods: Api<Pod>, pod: &str, port: u16) -> std::io::Result<Bridge> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = listener.local_addr()?;
        let last_error = Arc::new(Mutex::new(None));
        let task = tokio::spawn(accept_loop(listener, pods, pod.to_string(), port, last_error.clone()));
        Ok(Bridge { addr, pod: pod.to_string(), last_error, task })
    }

    /// The loopback address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Why the most recent forward failed, if one did (a control call only sees its
    /// connection close).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    pods: Api<Pod>,
    pod: String,
    port: u16,
    last_error: Arc<Mutex<Option<String>>>,
) {
    // Connections live in this set so aborting the accept loop also ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let (pods, pod, errors) = (pods.clone(), pod.clone(), last_error.clone());
                conns.spawn(async move {
                    if let Err(e) = forward(conn, &pods, &pod, port).await {
                        tracing::debug!("port-forward to {pod}:{port}: {e}");
                        if let Ok(mut slot) = errors.lock() {
                            *slot = Some(e);
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward(mut conn: TcpStream, pods: &Api<Pod>, pod: &str, port: u16) -> Result<(), String> {
    let _ = conn.set_nodelay(true);
    let mut pf =
        pods.portforward(pod, &[port]).await.map_err(|e| format!("opening the port-forward: {}", error_chain(&e)))?;
    let mut upstream = pf.take_stream(port).ok_or("the port-forward has no stream for the port")?;
    let errors = pf.take_error(port);
    let copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    drop(upstream);
    // The kubelet reports a failed dial (nothing listening in the pod) on the error channel.
    let kubelet_error = match errors {
        Some(e) => tokio::time::timeout(std::time::Duration::from_millis(100), e).await.ok().flatten(),
        None => None,
    };
    let joined = pf.join().await;
    if let Some(msg) = kubelet_error {
        return Err(format!("the kubelet reported: {msg}"));
    }
    copied.map_err(|e| format!("forwarding: {e}"))?;
    joined.map_err(|e| format!("closing the port-forward: {}", error_chain(&e)))
}
