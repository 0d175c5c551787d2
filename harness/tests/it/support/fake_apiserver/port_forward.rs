//! The fake's port-forward endpoint: `GET …/pods/{name}/portforward?ports=N` upgraded to a
//! WebSocket speaking `v4.channel.k8s.io`, as kube-rs's `Api::portforward` does: a data and
//! an error channel, each opened with a frame holding the port, bridged to a TCP connection
//! to the pod's address; a failed dial is told on the error channel, then the socket closes.
//!
//! It cannot check: more than one port per request (`ports` is read as one), SPDY (older
//! kubectl), the subprotocol negotiation (it answers `v4.channel.k8s.io` whatever was asked),
//! or the real path through the API server to the node's kubelet.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::router::{parse_path, query_param, status};
use super::{Body, State};

/// Port-forward over WebSocket, `v4.channel.k8s.io`: channel 0 carries data, channel 1
/// errors; each starts with a frame holding the port. Bridged to the pod's address.
pub(super) async fn port_forward(
    req: Request<Incoming>,
    path: &str,
    query: &str,
    st: Arc<Mutex<State>>,
) -> Response<Body> {
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
