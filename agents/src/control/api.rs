//! The control API's routes: authentication, the checks a test or a probe must pass before
//! it runs (body size, JSON, spec, limits, allowed targets, capacity) and the JSON answers.
//! Every refusal is a JSON `{"error": …}` with a status that says whose fault it was; none
//! of them costs more than the one request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::cidr::{self, Cidr};
use super::metrics::{self, ControlMetrics};
use super::registry::{Registry, SubmitError};
use super::{Limits, Token};
use crate::load::resolve_target;
use crate::probe::{self, ProbeSpec};
use crate::servers::ServerCtx;
use crate::spec::{SpecError, TestSpec};

/// A slow client may take this long to send a test spec; past it the request is dropped.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Api {
    pub token: Token,
    pub ctx: ServerCtx,
    pub limits: Limits,
    pub allow: Vec<Cidr>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ControlMetrics>,
    /// `GET /v1/info`, fixed at start.
    pub info: Bytes,
    /// One permit per probe running; `limits.max_probes` of them.
    pub probes: Arc<Semaphore>,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    match serde_json::to_vec(v) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")),
    }
}

/// `429 Too Many Requests` with `Retry-After: 1`: every slot (tests or probes) is taken.
fn busy(message: String) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    let body = json!({ "error": message.into() });
    respond(status, "application/json", body.to_string())
}

/// `what` is what was invalid: "test spec" or "probe spec".
fn field_error(status: StatusCode, what: &str, e: &SpecError) -> Resp {
    let body = json!({ "error": format!("invalid {what}: {e}"), "field": e.field });
    respond(status, "application/json", body.to_string())
}

fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}; use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

impl Api {
    /// Answers one request and counts the answer's status.
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let resp = self.route(req).await;
        self.metrics.response(resp.status().as_u16());
        resp
    }

    async fn route<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path == "/healthz" {
            return match method {
                Method::GET => json(StatusCode::OK, &json!({"status": "ok"})),
                _ => method_not_allowed(&method, &path, "GET"),
            };
        }
        let auth = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        if !self.token.authorizes(auth) {
            let why =
                if auth.is_some() { "the bearer token is wrong" } else { "missing Authorization: Bearer <token>" };
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        match path.as_str() {
            "/metrics" => match method {
                Method::GET => {
                    let probes = self.limits.max_probes.saturating_sub(self.probes.available_permits());
                    let text =
                        self.metrics.render(&self.ctx.counters, &self.ctx.identity, self.registry.active(), probes);
                    respond(StatusCode::OK, metrics::CONTENT_TYPE, text)
                }
                _ => method_not_allowed(&method, &path, "GET"),
            },
            "/v1/info" => match method {
                Method::GET => respond(StatusCode::OK, "application/json", self.info.clone()),
                _ => method_not_allowed(&method, &path, "GET"),
            },
            "/v1/tests" => match method {
                Method::GET => json(StatusCode::OK, &json!({ "tests": self.registry.list() })),
                Method::POST => self.create(req).await,
                _ => method_not_allowed(&method, &path, "GET, POST"),
            },
            "/v1/probe" => match method {
                Method::POST => self.probe(req).await,
                _ => method_not_allowed(&method, &path, "POST"),
            },
            _ => match path.strip_prefix("/v1/tests/").filter(|id| !id.is_empty() && !id.contains('/')) {
                Some(id) => match method {
                    Method::GET => match self.registry.view(id) {
                        Some(v) => json(StatusCode::OK, &v),
                        None => unknown_test(id),
                    },
                    Method::DELETE => match self.registry.cancel(id) {
                        // Read back after cancelling: a queued or running test reports its
                        // state until its thread has stopped, which the caller polls for.
                        Some(before) => match self.registry.view(id) {
                            Some(v) => {
                                let status = if before.is_finished() { StatusCode::OK } else { StatusCode::ACCEPTED };
                                json(status, &v)
                            }
                            None => unknown_test(id),
                        },
                        None => unknown_test(id),
                    },
                    _ => method_not_allowed(&method, &path, "GET, DELETE"),
                },
                None => error(StatusCode::NOT_FOUND, format!("no route {path}")),
            },
        }
    }

    /// The whole request body, within `max_body_bytes` and [`BODY_TIMEOUT`].
    async fn read_body<B>(&self, req: Request<B>) -> Result<Bytes, Resp>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max = self.limits.max_body_bytes;
        let too_large = |size: String| {
            let mut r =
                error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body ({size}) is over the {max}-byte limit"));
            // The unread rest of the body makes the connection useless; say so.
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        };
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(len) = declared.filter(|&len| len > max as u64) {
            return Err(too_large(format!("{len} bytes")));
        }
        // A chunked body declares no length: cap it while reading.
        let body = Limited::new(req.into_body(), max);
        match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
            Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large("chunked".into())),
            Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    /// `POST /v1/tests`: every check, cheapest first, then the test's thread.
    async fn create<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let bytes = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let spec: TestSpec = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid test spec: {e}")),
        };
        if let Err(e) = spec.validate() {
            return field_error(StatusCode::BAD_REQUEST, "test spec", &e);
        }
        if let Err(e) = self.limits.check(&spec) {
            return field_error(StatusCode::BAD_REQUEST, "test spec", &e);
        }
        let pinned = match self.check_target(&spec.target).await {
            Ok(addr) => addr,
            Err(r) => return r,
        };
        match self.registry.submit(spec, pinned) {
            Ok(id) => {
                let mut r = json(StatusCode::CREATED, &json!({ "id": id, "state": "queued" }));
                if let Ok(loc) = HeaderValue::from_str(&format!("/v1/tests/{id}")) {
                    r.headers_mut().insert(header::LOCATION, loc);
                }
                r
            }
            Err(e @ SubmitError::Busy { .. }) => busy(e.to_string()),
            Err(e @ SubmitError::Spawn(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    /// `POST /v1/probe`: the checks a test gets (body, JSON, ranges, allowed target), then a
    /// free probe slot, then the probe itself on this task, so the answer is its outcome.
    /// Other requests are served meanwhile: each connection is a task of its own. A client
    /// that hangs up drops this future, which stops the probe.
    async fn probe<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let bytes = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let spec: ProbeSpec = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid probe spec: {e}")),
        };
        if let Err(e) = spec.validate() {
            return field_error(StatusCode::BAD_REQUEST, "probe spec", &e);
        }
        if let Some(r) = self.forbidden(&spec.target.to_string(), spec.target) {
            return r;
        }
        let Ok(_permit) = Arc::clone(&self.probes).try_acquire_owned() else {
            let max = self.limits.max_probes;
            return busy(format!(
                "{max} probes are already running, the most this agent runs at once; retry when one ends"
            ));
        };
        self.metrics.probe_started(spec.protocol);
        match probe::run(&spec, &self.ctx.shutdown).await {
            Ok(outcome) => {
                self.metrics.probe_ended(spec.protocol, outcome.reached);
                json(StatusCode::OK, &outcome)
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    /// Resolves the target as the load generator would and requires the address to be in
    /// an allowed CIDR; the address is what the test will then use.
    async fn check_target(&self, target: &str) -> Result<SocketAddr, Resp> {
        let owned = target.to_string();
        // Name resolution blocks; keep it off the runtime's workers.
        let resolved = tokio::task::spawn_blocking(move || resolve_target(&owned)).await;
        let addr = match resolved {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let e = SpecError { field: "target", message: e.to_string() };
                return Err(field_error(StatusCode::BAD_REQUEST, "test spec", &e));
            }
            Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("resolving {target:?}: {e}"))),
        };
        // What the address is, not how it was written: `127.0.0.1:0`, `0x7f000001:0`.
        let shown = if addr.to_string() == target { target.to_string() } else { format!("{target} ({addr})") };
        let unusable = if addr.port() == 0 {
            Some(format!("{shown} has port 0, which nothing can be reached on"))
        } else if !is_unicast(addr.ip()) {
            // 0.0.0.0 and :: reach the local host; multicast and broadcast reach every host
            // on a network: neither is one server a test measures.
            Some(format!("{shown} is not a unicast address a test can target"))
        } else {
            None
        };
        if let Some(message) = unusable {
            return Err(field_error(StatusCode::BAD_REQUEST, "test spec", &SpecError { field: "target", message }));
        }
        match self.forbidden(target, addr) {
            Some(r) => Err(r),
            None => Ok(addr),
        }
    }

    /// The 403 for `addr` (what `target` resolved to) outside every allowed CIDR; `None`
    /// when it is inside one.
    fn forbidden(&self, target: &str, addr: SocketAddr) -> Option<Resp> {
        if self.allow.iter().any(|c| c.contains(addr.ip())) {
            return None;
        }
        let shown = if addr.to_string() == target { String::new() } else { format!(" ({addr})") };
        let allowed = if self.allow.is_empty() { "none".to_string() } else { cidr::list(&self.allow) };
        Some(error(
            StatusCode::FORBIDDEN,
            format!("target {target}{shown} is outside the CIDRs this agent may send to: {allowed} (--allow-cidr)"),
        ))
    }
}

/// Neither unspecified (`0.0.0.0`, `::`), multicast nor the IPv4 broadcast address, as
/// written or IPv4-mapped.
fn is_unicast(ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || broadcast)
}

fn unknown_test(id: &str) -> Resp {
    error(StatusCode::NOT_FOUND, format!("no test {id:?} (unknown, or its result was evicted)"))
}

/// The `GET /v1/info` body.
pub(crate) fn info(ctx: &ServerCtx, data: &crate::servers::Bound, limits: &Limits, allow: &[Cidr]) -> Value {
    json!({
        "identity": &*ctx.identity,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": crate::spec::PROTOCOL_VERSION,
        "ports": { "tcp": data.tcp.port(), "udp": data.udp.port(), "http": data.http.port() },
        "limits": {
            "max_duration_ms": u64::try_from(limits.max_duration.as_millis()).unwrap_or(u64::MAX),
            "max_rate_bps": limits.max_rate_bps,
            "max_qps": limits.max_qps,
            "max_connections": limits.max_connections,
            "max_running_tests": limits.max_running,
            "max_kept_results": limits.max_kept,
            "max_running_probes": limits.max_probes,
            "max_body_bytes": limits.max_body_bytes,
            "allow_cidrs": allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "tests": crate::spec::TestKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
    })
}
