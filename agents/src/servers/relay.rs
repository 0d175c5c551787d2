//! The HTTP server's relay mode (`serve --relay`): one hop of a service chain, like a
//! service that calls the next service before it answers.
//!
//! A request carrying `x-zonebench-relay: IP:PORT[,IP:PORT…]` is forwarded to the first
//! address with the rest of the list, as the same method, path and query (source routing:
//! the client's spec names the whole chain, so no agent needs configuring per chain). The
//! last hop gets no relay header and answers as any server does. Every hop prepends its
//! identity to the answer's `x-zonebench-server`, so the client receives the chain's hops
//! first to last (`srv-b-0,srv-c-0,srv-a-0`) and counts answers per path.
//!
//! Safety and loops, since the data port is open to anyone who reaches it:
//! - relaying is off unless the agent runs with `--relay`, and then goes only to addresses
//!   inside the agent's `--allow-cidr` blocks (a 403 naming the hop otherwise);
//! - every hop adds its id to `x-zonebench-via`; a request reaching an agent already in it
//!   is a loop and gets a 508 Loop Detected naming the path (as a mesh's loop check would),
//!   and a chain longer than [`MAX_RELAY_HOPS`] gets a 508 too, so no request circulates.
//!
//! Failures are answers the client counts: a next hop that refuses or breaks the exchange
//! gives a 502, one slower than [`RELAY_TIMEOUT`] a 504, each naming the hop, with only the
//! relays that answered in `x-zonebench-server`.
//!
//! One upstream connection per downstream connection, kept alive while the downstream one
//! is (HTTP/1.1 serves one request at a time per connection, so they pair up): a
//! keep-alive chain reuses every hop's connection and a `Connection: close` client makes
//! each hop reconnect, as sidecar proxies behave. The upstream connection is taken out of
//! its slot for an exchange and put back only after a complete answer, so a request
//! abandoned midway (the client timed out) closes it instead of leaving a stale answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use crate::spec::{MAX_RELAY_HOPS, RELAY_HEADER};
/// The ids of the hops a request went through so far, comma-separated.
pub const VIA_HEADER: &str = "x-zonebench-via";
/// Longest a relay waits for its next hop's whole answer.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer body a relay passes back (the largest `size=N` answer, plus room).
const MAX_RELAYED_BODY: usize = super::http::MAX_BODY + (1 << 16);

/// Relay mode's settings: which next hops are allowed.
pub struct Relay {
    allowed: Box<dyn Fn(IpAddr) -> bool + Send + Sync>,
}

impl Relay {
    /// A relay that forwards only to addresses `allowed` accepts (the agent's allowed CIDRs).
    pub fn new(allowed: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Relay {
        Relay { allowed: Box::new(allowed) }
    }
}

/// One downstream connection's upstream connection, kept for its next request.
#[derive(Default)]
pub(super) struct Upstream(tokio::sync::Mutex<Option<(SocketAddr, SendRequest<Empty<Bytes>>)>>);

/// Where a relayed request goes next. Public, with [`check_via`] and [`next_hop`], for the
/// `relay_headers` fuzz target: both read headers anyone can send.
#[derive(Debug, PartialEq, Eq)]
pub struct Hop {
    pub next: SocketAddr,
    /// The relay header for the next hop; empty when it is the last.
    pub rest: String,
    /// The via header for the next hop: the hops so far, this one included.
    pub via: String,
}

/// A request refused before it was forwarded: its status and why.
pub type Refusal = (StatusCode, String);

/// Checks a request's via list against `own_id` (a loop, or too long a chain): the 508
/// such a request gets. `None` for a request that may be served.
pub fn check_via(via: Option<&HeaderValue>, own_id: &str) -> Option<Refusal> {
    let via = via?.to_str().unwrap_or("");
    let hops: Vec<&str> = via.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if hops.contains(&own_id) {
        return Some((
            StatusCode::LOOP_DETECTED,
            format!("relay loop: {own_id} already served this request (via {})\n", hops.join(", ")),
        ));
    }
    if hops.len() > MAX_RELAY_HOPS {
        return Some((
            StatusCode::LOOP_DETECTED,
            format!("relay: the chain is longer than {MAX_RELAY_HOPS} hops (via {})\n", hops.join(", ")),
        ));
    }
    None
}

/// Parses a relay request's headers into its next hop, checking the relay mode, the list,
/// its length and the allowed CIDRs.
pub fn next_hop(
    relay: Option<&Relay>,
    header: &HeaderValue,
    via: Option<&HeaderValue>,
    own_id: &str,
) -> Result<Hop, Refusal> {
    let Some(relay) = relay else {
        return Err((
            StatusCode::FORBIDDEN,
            "relay: this agent does not relay requests; start it with `serve --relay`\n".into(),
        ));
    };
    let bad = || {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "{RELAY_HEADER}: {:?} is not a comma-separated list of IP:PORT\n",
                String::from_utf8_lossy(header.as_bytes())
            ),
        )
    };
    let list = header.to_str().map_err(|_| bad())?;
    let hops: Vec<&str> = list.split(',').map(str::trim).collect();
    let addrs: Vec<SocketAddr> = hops.iter().map(|h| h.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    if addrs.len() > MAX_RELAY_HOPS {
        return Err((StatusCode::LOOP_DETECTED, format!("relay: more than {MAX_RELAY_HOPS} hops ahead\n")));
    }
    let next = addrs[0];
    if !(relay.allowed)(next.ip()) {
        return Err((StatusCode::FORBIDDEN, format!("relay: next hop {next} is outside this agent's allowed CIDRs\n")));
    }
    let so_far = via.and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    Ok(Hop {
        next,
        rest: hops[1..].join(","),
        via: match so_far {
            Some(v) => format!("{v},{own_id}"),
            None => own_id.to_string(),
        },
    })
}

/// What came back from the next hop: its status, its `x-zonebench-server` and its body;
/// or the status and message a failed exchange answers with.
pub(super) type Relayed = Result<(StatusCode, Option<HeaderValue>, Bytes), Refusal>;

/// Forwards one request to `hop.next` on `upstream`'s kept-alive connection (opening one
/// when there is none, or it goes elsewhere) and reads the whole answer.
pub(super) async fn forward(upstream: Arc<Upstream>, hop: Hop, method: Method, uri: Uri) -> Relayed {
    let next = hop.next;
    let exchange = async {
        let mut slot = upstream.0.lock().await;
        // Out of the slot for the exchange: only a complete answer puts it back.
        let kept = slot.take().filter(|(addr, send)| *addr == next && !send.is_closed());
        let mut send = match kept {
            Some((_, send)) => send,
            None => connect(next).await.map_err(|e| (StatusCode::BAD_GATEWAY, format!("connecting: {e}")))?,
        };
        let failed = |e: hyper::Error| (StatusCode::BAD_GATEWAY, e.to_string());
        send.ready().await.map_err(failed)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder().method(method).uri(path).header(HOST, next.to_string());
        if !hop.rest.is_empty() {
            req = req.header(RELAY_HEADER, &hop.rest);
        }
        let req = req
            .header(VIA_HEADER, &hop.via)
            .body(Empty::new())
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let resp = send.send_request(req).await.map_err(failed)?;
        let status = resp.status();
        let server = resp.headers().get(super::http::SERVER_HEADER).cloned();
        let body = Limited::new(resp.into_body(), MAX_RELAYED_BODY)
            .collect()
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("reading the answer: {e}")))?
            .to_bytes();
        *slot = Some((next, send));
        Ok((status, server, body))
    };
    match tokio::time::timeout(RELAY_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err((status, why))) => Err((status, format!("relay: next hop {next}: {why}\n"))),
        Err(_) => Err((
            StatusCode::GATEWAY_TIMEOUT,
            format!("relay: next hop {next} did not answer within {RELAY_TIMEOUT:?}\n"),
        )),
    }
}

async fn connect(next: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(next).await?;
    // Requests are single small writes; Nagle would hold them for the delayed ACK.
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when `send` is dropped (the downstream connection went).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// The answer a relay gives: the next hop's, its id before the next hop's in
/// `x-zonebench-server`; or its own error.
pub(super) fn answer(own_id: &HeaderValue, relayed: Relayed) -> Response<Full<Bytes>> {
    let (status, server, body) = match relayed {
        Ok((status, Some(next), body)) => {
            let mut path = Vec::with_capacity(own_id.len() + 1 + next.len());
            path.extend_from_slice(own_id.as_bytes());
            path.push(b',');
            path.extend_from_slice(next.as_bytes());
            (status, HeaderValue::from_bytes(&path).unwrap_or_else(|_| own_id.clone()), body)
        }
        Ok((status, None, body)) => (status, own_id.clone(), body),
        Err((status, why)) => (status, own_id.clone(), Bytes::from(why)),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(super::http::SERVER_HEADER, server);
    resp
}

#[cfg(test)]
mod unit {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn the_next_hop_is_the_first_address_and_the_via_list_grows() {
        let relay = Relay::new(|_| true);
        let hop = next_hop(Some(&relay), &hv("10.0.0.2:8080, 10.0.0.3:8080"), Some(&hv("srv-a-0")), "srv-b-0").unwrap();
        assert_eq!(
            hop,
            Hop { next: "10.0.0.2:8080".parse().unwrap(), rest: "10.0.0.3:8080".into(), via: "srv-a-0,srv-b-0".into() }
        );
        let last = next_hop(Some(&relay), &hv("10.0.0.3:8080"), None, "srv-a-0").unwrap();
        assert_eq!((last.rest.as_str(), last.via.as_str()), ("", "srv-a-0"));
    }

    #[test]
    fn relaying_is_refused_when_off_outside_the_cidrs_or_garbled() {
        let h = hv("10.0.0.2:8080");
        let (status, why) = next_hop(None, &h, None, "s").unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(why.contains("serve --relay"), "{why}");
        let only_loopback = Relay::new(|ip| ip.is_loopback());
        let (status, why) = next_hop(Some(&only_loopback), &h, None, "s").unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(why.contains("10.0.0.2:8080"), "{why}");
        let any = Relay::new(|_| true);
        let (status, why) = next_hop(Some(&any), &hv("web:80"), None, "s").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("\"web:80\""), "{why}");
        let long = ["10.0.0.2:1"; MAX_RELAY_HOPS + 1].join(",");
        assert_eq!(next_hop(Some(&any), &hv(&long), None, "s").unwrap_err().0, StatusCode::LOOP_DETECTED);
    }

    #[test]
    fn a_request_that_comes_back_to_a_hop_is_a_loop() {
        assert_eq!(check_via(None, "srv-a-0"), None);
        assert_eq!(check_via(Some(&hv("srv-b-0,srv-c-0")), "srv-a-0"), None);
        let (status, why) = check_via(Some(&hv("srv-a-0,srv-b-0")), "srv-a-0").unwrap();
        assert_eq!(status, StatusCode::LOOP_DETECTED);
        assert!(why.contains("srv-a-0 already served") && why.contains("via srv-a-0, srv-b-0"), "{why}");
        let long = (0..=MAX_RELAY_HOPS).map(|i| format!("s{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(check_via(Some(&hv(&long)), "x").unwrap().0, StatusCode::LOOP_DETECTED);
    }

    #[test]
    fn a_relay_names_itself_before_the_hops_behind_it() {
        let resp =
            answer(&hv("srv-a-0"), Ok((StatusCode::OK, Some(hv("srv-b-0,srv-c-0")), Bytes::from_static(b"ok\n"))));
        assert_eq!(resp.headers()[super::super::http::SERVER_HEADER], "srv-a-0,srv-b-0,srv-c-0");
        let failed = answer(&hv("srv-a-0"), Err((StatusCode::BAD_GATEWAY, "relay: next hop x: refused\n".into())));
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(failed.headers()[super::super::http::SERVER_HEADER], "srv-a-0");
    }
}
