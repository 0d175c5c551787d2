//! The fake's HTTP front: every request recorded (method, path, query, JSON body) for tests
//! to check, the failures a test asks for (every request 401, every n-th write shed with
//! 429), `GET /version`, and the resource paths kube-rs calls — `/api/v1/…` and
//! `/apis/<group>/<version>/…`, cluster-scoped or under `namespaces/<ns>/`, with a name and
//! a subresource — mapped to the store's verbs; pod logs (`tailLines`); watches (JSON lines,
//! first what changed since `resourceVersion`, then live events, until `timeoutSeconds`).
//! Upgrade requests go to port-forward.
//!
//! It cannot check: API discovery (`/api`, `/apis` are not served), authentication and
//! authorization (any bearer token passes), whether a resource exists in a group (any name
//! under any group is stored), protobuf, paged lists (`limit`, `continue`), watch bookmarks
//! or an expired resourceVersion (410 Gone), HTTP/2, or TLS (plain HTTP on loopback).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::port_forward::port_forward;
use super::store::{
    create, delete, delete_collection, matches_fields, matches_selector, merge_patch, replace, selected,
};
use super::{Body, Events, Recorded, State};

/// A parsed resource path.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) prefix: String,
    pub(super) namespace: Option<String>,
    pub(super) resource: String,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
}

pub(super) fn parse_path(path: &str) -> Option<Target> {
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

pub(super) fn query_param(query: &str, key: &str) -> Option<String> {
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

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// The last `n` lines of a log, as `tailLines` asks.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("{l}\n")).collect()
}

pub(super) async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>, ev: Events) -> Response<Body> {
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
